"""``defc trace --backend replay``: FlashInfer's own templates on meta tensors, no GPU.

For every compiled definition whose spec names an ``fi_api`` and gives a ``trace:`` recipe,
the decorated API's ``.fi_trace()`` is called with meta tensors of the compiled shapes (and the
API's signature defaults bound, as the real auto-dump does), and the JSON FlashInfer's template
produces is written into the pass folder under the template's own name, first call wins —
the same layout and the same content a real ``FLASHINFER_TRACE_DUMP=1`` pass would give for
those shapes.

``FlashInferBackend`` is the hook for ``--backend flashinfer`` (issue 8): the same recipes with
real device tensors, calling the API itself under ``FLASHINFER_TRACE_DUMP=1``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from compiler.errors import DefcError
from compiler.write import atomic_write_text, check_component

from .recipes import Call, NoRecipe, bind_like_dumper, calls_for, materialize, resolve_api


@dataclass
class ReplayRecord:
    definition: str
    op_type: str
    status: str                 # dumped | duplicate | no-fi-api | no-recipe | failed | other-page-size
    api: str = ""
    dumped_as: str = ""
    detail: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v != ""}


def import_flashinfer():
    try:
        import flashinfer  # noqa: F401  (registers the decorated APIs and their templates)
    except ImportError as e:
        raise DefcError(f"--backend replay needs flashinfer-python (and torch) in this environment: {e}") from None
    import importlib
    for mod in ("flashinfer.gdn_decode", "flashinfer.gdn_prefill"):   # register late-loading templates
        try:
            importlib.import_module(mod)
        except Exception:
            pass


class _NoDumpEnv:
    """.fi_trace() writes into $FLASHINFER_TRACE_DUMP_DIR whenever it is set: unset it meanwhile."""

    KEYS = ("FLASHINFER_TRACE_DUMP_DIR", "FLASHINFER_TRACE_DUMP")

    def __enter__(self):
        self.saved = {k: os.environ.pop(k) for k in self.KEYS if k in os.environ}
        return self

    def __exit__(self, *exc):
        os.environ.update(self.saved)
        return False


def trace_call(call: Call, device: str = "meta") -> Dict[str, Any]:
    api = resolve_api(call.api)
    fn = getattr(api, "fi_trace", None)
    if fn is None:
        raise DefcError(f"{call.api} has no FlashInfer trace template (.fi_trace)")
    kwargs = {k: materialize(v, device) for k, v in call.kwargs.items()}
    kwargs = bind_like_dumper(api, kwargs, call.defaults)
    with _NoDumpEnv():
        doc = fn(**kwargs)
    if not isinstance(doc, dict) or not doc.get("name"):
        raise DefcError(f"{call.api}.fi_trace returned no definition for these arguments")
    return doc


def replay(instances: Dict[str, List[Any]], folder: str, page_size: Optional[int] = None,
           progress: Optional[Callable[[str], None]] = None) -> List[ReplayRecord]:
    """Replay every definition of a compile result into ``folder`` (which must be prepared)."""
    import_flashinfer()
    records: List[ReplayRecord] = []
    written: Dict[str, str] = {}
    for name in sorted(instances):
        inst = instances[name][0]
        rec = ReplayRecord(name, inst.op_type, "")
        if page_size is not None and inst.env.get("page_size") not in (None, page_size):
            rec.status, rec.detail = "other-page-size", f"page_size {inst.env.get('page_size')}"
            records.append(rec)
            continue
        if not inst.fi_api and not (inst.trace or {}).get("api"):
            rec.status, rec.detail = "no-fi-api", "the spec names no FlashInfer API"
            records.append(rec)
            continue
        try:
            calls = calls_for(inst)
        except NoRecipe as e:
            rec.status, rec.detail, rec.api = "no-recipe", str(e), inst.fi_api or ""
            records.append(rec)
            continue
        for call in calls:
            r = ReplayRecord(name, inst.op_type, "", api=call.api)
            try:
                doc = trace_call(call)
            except DefcError as e:
                r.status, r.detail = "failed", e.message
                records.append(r)
                continue
            except Exception as e:  # FlashInfer's template raised
                r.status, r.detail = "failed", f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
                records.append(r)
                continue
            dn = check_component(doc["name"], "dumped definition name")
            r.dumped_as = dn
            if dn in written:
                r.status, r.detail = "duplicate", f"already dumped for {written[dn]} (first call wins, as in the dumper)"
            else:
                atomic_write_text(os.path.join(folder, f"{dn}.json"), json.dumps(doc, indent=2))
                written[dn] = name
                r.status = "dumped"
            if progress:
                progress(f"{name} -> {dn}")
            records.append(r)
    return records


class FlashInferBackend:
    """``--backend flashinfer`` (issue 8): real kernel calls under FLASHINFER_TRACE_DUMP=1.

    A child process whose environment sets FLASHINFER_TRACE_DUMP=1 and FLASHINFER_TRACE_DUMP_DIR
    before flashinfer is imported builds each definition's inputs as ``defc verify`` does (valid
    index data: indptr ramps, in-range page ids) and calls the API, a wrapper constructed and planned
    as the spec's ``verify.kernel`` block says; the dumper writes the JSON before the kernel runs, so a
    kernel failure still leaves the dump (runners/verify_dump.py).
    """

    name = "flashinfer"

    def run_pass(self, p, model: str, quantization=None, specs=(), timeout: float = 1800.0, progress=None,
                 index: str = ""):
        from .verify_dump import run_flashinfer_pass
        return run_flashinfer_pass(p, model, quantization, specs, timeout, progress, index)
