"""FlashInfer as an oracle: call a decorated API's .fi_trace() on meta tensors and compare.

Tests import this module (it imports flashinfer, ~5 s, once per test session).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Dict, Optional

os.environ.pop("FLASHINFER_TRACE_DUMP_DIR", None)   # .fi_trace() writes there whenever it is set


@functools.lru_cache(maxsize=1)
def flashinfer():
    from defc.runners.flashinfer_api import import_flashinfer
    import_flashinfer()
    import flashinfer
    return flashinfer


def meta(shape, dtype):
    import torch
    return torch.empty(tuple(shape), dtype=getattr(torch, dtype), device="meta")


def resolve(api_path: str):
    """'flashinfer.norm.rmsnorm' or 'flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper.run'."""
    from defc.compiler.dotted import locate
    flashinfer()
    return locate(api_path)[1]


def fi_trace(api_path: str, **kwargs) -> Dict[str, Any]:
    return resolve(api_path).fi_trace(**kwargs)


def template(obj, label: str):
    """The TraceTemplate named ``label`` (its name_prefix, else its op_type) behind a public attribute of a
    ``flashinfer.trace.templates`` module: the attribute itself when it is a template, else one of the
    templates a dispatching callable lists in its public ``.templates`` (FlashInfer turned some single
    templates into dispatchers over several, e.g. GDN prefill in 0.7.4)."""
    from flashinfer.trace import TraceTemplate
    found = [obj] if isinstance(obj, TraceTemplate) else list(getattr(obj, "templates", None) or ())
    for t in found:
        if (t.name_prefix or t.op_type) == label:
            return t
    raise LookupError(f"no trace template {label!r} among {[t.name_prefix or t.op_type for t in found]}")


def const_axes(defn) -> Dict[str, int]:
    return {k: v.get("value") for k, v in defn["axes"].items() if v.get("type") == "const"}


def concrete_shape(defn, tensor: Dict[str, Any], var_values: Optional[Dict[str, int]] = None):
    vals = dict(const_axes(defn))
    vals.update(var_values or {})
    if tensor.get("shape") is None:
        return None
    return tuple(vals.get(a, a) for a in tensor["shape"])
