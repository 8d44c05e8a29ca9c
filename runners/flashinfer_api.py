"""FlashInfer's decorated APIs, reached by their dotted names: importing flashinfer (so every API and
its trace template is registered), resolving ``flashinfer.x.y`` to the traced callable, and calling
``.fi_trace()`` without FlashInfer's dumper writing files meanwhile."""
from __future__ import annotations

import importlib
import inspect
import os

from defc.compiler.dotted import DottedNameError, locate
from defc.compiler.errors import DefcError


def import_flashinfer():
    try:
        import flashinfer  # noqa: F401  (registers the decorated APIs and their templates)
    except ImportError as e:
        raise DefcError(f"--backend replay needs flashinfer-python (and torch) in this environment: {e}") from None
    for mod in ("flashinfer.gdn_decode", "flashinfer.gdn_prefill"):   # register late-loading templates
        try:
            importlib.import_module(mod)
        except Exception:
            pass


class NoDumpEnv:
    """.fi_trace() writes into $FLASHINFER_TRACE_DUMP_DIR whenever it is set: unset it meanwhile."""

    KEYS = ("FLASHINFER_TRACE_DUMP_DIR", "FLASHINFER_TRACE_DUMP")

    def __enter__(self):
        self.saved = {k: os.environ.pop(k) for k in self.KEYS if k in os.environ}
        return self

    def __exit__(self, *exc):
        os.environ.update(self.saved)
        return False


def resolve_api(path: str):
    """'flashinfer.norm.rmsnorm' or 'flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper.run'.

    A class resolves to its ``run`` (the traced method of FlashInfer's wrappers)."""
    try:
        obj = locate(path)[1]
    except DottedNameError as e:
        msg = str(e)
        raise DefcError(f"FlashInfer has {msg}" if msg.startswith("no '") else msg) from None
    if inspect.isclass(obj) and hasattr(obj, "run"):
        obj = getattr(obj, "run")
    return obj
