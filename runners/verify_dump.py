"""``defc trace --backend flashinfer``: real FlashInfer kernel calls with the compiled shapes, dumped by
FlashInfer's own dumper (``FLASHINFER_TRACE_DUMP=1``) into the usual pass-folder layout.

The parent (:func:`run_flashinfer_pass`, which ``defc trace --backend flashinfer`` calls) prepares
the pass folder and starts ``python -m runners.verify_dump REQUEST.json`` with the dump variables already
in its environment (so they exist before anything imports flashinfer).  The child compiles the model
at the pass's TP/EP, and for every definition with an fi_api at the pass's page size builds the same
inputs ``defc verify`` builds (small var sizes, consistent page tables) and calls the API as the
spec's ``verify.kernel`` block says (wrapper constructed and planned; else the ``trace:`` recipe).
The dumper writes each JSON before the kernel runs, so a kernel that then fails (no kernel for this
GPU, cubins that cannot be downloaded) still leaves its dump; the marker's per-definition records say
what happened.  A TP/EP > 1 pass runs single-GPU kernels with that rank's shapes.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

from defc.compiler.paths import PROJECT_ROOT
from defc.compiler.predictions import compile_predictions

from .common import LOG, MARKER, REQUEST, now, write_json
from .trace import PassResult, count_dumps, run_pass_process, start_pass
from .verify_inputs import NotRun, RecipeError, build_case, defaults
from .verify_sides import call_kernel, explain_failure

RECORDS = "_defc_records.json"


def _dumps(folder: str) -> List[str]:
    try:
        return sorted(e for e in os.listdir(folder) if e.endswith(".json") and not e.startswith("_"))
    except OSError:
        return []


def child(request_path: str) -> int:
    with open(request_path, encoding="utf-8") as fh:
        req = json.load(fh)
    folder = req["folder"]
    if os.environ.get("FLASHINFER_TRACE_DUMP") != "1" or os.environ.get("FLASHINFER_TRACE_DUMP_DIR") != folder:
        print("[defc verify_dump] the dump variables are not set for this folder", flush=True)
        return 5
    if "flashinfer" in sys.modules:
        print("[defc verify_dump] flashinfer was imported before the dump variables were read", flush=True)
        return 5
    import torch
    device = req.get("device", "cuda")
    if device != "cpu" and not torch.cuda.is_available():
        print("[defc verify_dump] no CUDA GPU is visible", flush=True)
        return 4
    cfg = defaults()
    result = compile_predictions(req["model"], [req["tp"]], [req["ep"]], req.get("quantization"),
                                 req.get("specs") or ())
    records: List[Dict[str, Any]] = []
    names = sorted(result.instances)
    for i, name in enumerate(names):
        inst = result.instances[name][0]
        doc = next(p.doc for p in result.planned if p.doc["name"] == name)
        rec: Dict[str, Any] = {"definition": name, "op_type": inst.op_type}
        ps = inst.env.get("page_size")
        if ps is not None and ps != req["page_size"]:
            rec.update(status="other-page-size", detail=f"page_size {ps}")
            records.append(rec)
            continue
        vb = inst.verify or {}
        kb = vb.get("kernel") or {}
        api = kb.get("api") or (inst.trace or {}).get("api") or inst.fi_api
        if not api:
            rec.update(status="no-fi-api", detail="the spec names no FlashInfer API")
            records.append(rec)
            continue
        rec["api"] = api
        before = set(_dumps(folder))
        t0 = time.time()
        print(f"[defc verify_dump] {i + 1}/{len(names)} {name}: {api}", flush=True)
        try:
            case = build_case(doc, inst, vb, 0, cfg)
            call_kernel(kb, inst, case, device, doc)
            rec["kernel"] = "ran"
        except NotRun as e:
            rec["kernel"] = f"not called: {e}"
        except RecipeError as e:
            rec["kernel"] = f"not called: verify recipe: {e}"
        except Exception as e:   # the kernel (or its JIT build) failed after the dumper wrote
            rec["kernel"] = f"failed: {explain_failure(e, cfg)}"
        new = [d[:-5] for d in _dumps(folder) if d not in before]
        kernels = [n for n in new if "_plan_" not in n]
        if new:
            rec.update(status="dumped", dumped_as=(kernels or new)[0])
            if len(new) > 1:
                rec["also_dumped"] = [n for n in new if n != rec["dumped_as"]]
        elif rec["kernel"].startswith("not called"):
            rec.update(status="failed", detail=rec["kernel"])
        elif rec["kernel"].startswith("failed"):
            # the call raised before FlashInfer's dumper wrote (an argument or backend check ahead of it)
            rec.update(status="failed", detail=f"the call raised before the dumper wrote: {rec['kernel'][8:]}")
        else:
            rec.update(status="duplicate", detail="no new dump (the dumper writes the first call per name)")
        rec["seconds"] = round(time.time() - t0, 2)
        records.append(rec)
        with open(os.path.join(folder, RECORDS), "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=1)
        if device != "cpu":
            try:
                torch.cuda.synchronize()
            except Exception:   # a failed kernel may leave the context unusable: stop here
                print("[defc verify_dump] CUDA context lost; stopping", flush=True)
                return 6
    print("[defc verify_dump] done", flush=True)
    return 0


def run_flashinfer_pass(p, model: str, quantization: Optional[str], specs=(), timeout: float = 1800.0,
                        progress=None, index: str = "", device: str = "cuda"):
    """One pass: the child under FLASHINFER_TRACE_DUMP=1, then the marker (with per-definition records)."""
    folder, started, marker = start_pass(p, model, progress, index)
    req = {"folder": folder, "model": model, "tp": p.tp, "ep": p.ep, "page_size": p.page_size,
           "quantization": [quantization] if quantization else None, "specs": list(specs),
           "device": device}
    req_path = os.path.join(folder, REQUEST)
    write_json(req_path, req)
    describe = lambda elapsed: f"{index}{p.label()}  flashinfer  {int(elapsed)}s  {count_dumps(folder)} dumps"
    status, detail, rc, log_path = run_pass_process(
        folder, "defc.runners.verify_dump", req_path, sys.executable, timeout, 10.0, marker, started,
        progress=progress, describe=describe, cwd=PROJECT_ROOT)
    records = []
    rp = os.path.join(folder, RECORDS)
    if os.path.exists(rp):
        try:
            with open(rp, encoding="utf-8") as fh:
                records = json.load(fh)
        except (OSError, ValueError):
            records = []
        os.unlink(rp)
    if status != "timeout":
        if rc == 0:
            status = "ok"
        else:
            status = "partial" if records else "failed"
            detail = {4: "no CUDA GPU is visible (--backend flashinfer calls real kernels)",
                      5: "the pass process could not set up the dumper"}.get(rc, f"the pass exited with code {rc}")
    elif records:
        status = "partial"
    failed = [r for r in records if r.get("status") == "failed"]
    if failed and not detail:
        detail = f"{len(failed)} call(s) failed: " + "; ".join(f"{r['definition']}: {r.get('detail', '')}"
                                                             for r in failed[:3])
    dumps = count_dumps(folder)
    marker.update({"status": status, "detail": detail, "exit_code": rc, "seconds": round(time.time() - started, 1),
                   "dumps": dumps, "finished": now(), "log": LOG, "definitions": records})
    write_json(os.path.join(folder, MARKER), marker)

    class _Rec:
        def __init__(self, d):
            self.__dict__.update(d)
            self.status = d.get("status", "")
            self.definition = d.get("definition", "")
            self.dumped_as = d.get("dumped_as", "")
            self.api = d.get("api", "")
            self.detail = d.get("detail", "")

        def as_dict(self):
            return {k: v for k, v in self.__dict__.items()}
    return PassResult(p, status, detail, "done" if status in ("ok", "partial") else "", dumps,
                      time.time() - started, [_Rec(r) for r in records])


if __name__ == "__main__":
    sys.exit(child(sys.argv[1]))
