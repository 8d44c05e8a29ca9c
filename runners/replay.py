"""``defc trace --backend replay``: FlashInfer's own templates on meta tensors, no GPU.

For every compiled definition whose spec names an ``fi_api`` and gives a ``trace:`` recipe,
the decorated API's ``.fi_trace()`` is called with meta tensors of the compiled shapes (and the
API's signature defaults bound, as the real auto-dump does), and the JSON FlashInfer's template
produces is written into the pass folder under the template's own name, first call wins —
the same layout and the same content a real ``FLASHINFER_TRACE_DUMP=1`` pass would give for
those shapes.  ``--backend flashinfer`` (real device tensors, the API itself called under
``FLASHINFER_TRACE_DUMP=1``) is runners/verify_dump.py.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from defc.compiler.errors import DefcError
from defc.compiler.write import atomic_write_text, check_component

from .flashinfer_api import NoDumpEnv, import_flashinfer, resolve_api
from .recipes import Call, NoRecipe, bind_like_dumper, calls_for, materialize


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


def trace_call(call: Call, device: str = "meta") -> Dict[str, Any]:
    api = resolve_api(call.api)
    fn = getattr(api, "fi_trace", None)
    if fn is None:
        raise DefcError(f"{call.api} has no FlashInfer trace template (.fi_trace)")
    kwargs = {k: materialize(v, device) for k, v in call.kwargs.items()}
    kwargs = bind_like_dumper(api, kwargs, call.defaults)
    with NoDumpEnv():
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
