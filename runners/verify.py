"""``defc verify``: each compiled definition's reference against FlashInfer on the same inputs.

For every definition ``defc compile`` would emit for a model (nothing is written):

1. **inputs** that satisfy its axes and constraints, small var sizes: a *sequence layout* gives
   consistent indptr / page indices / last-page lengths / positions / page tables, other tensors
   come from named builders (uniform, normal, fill, randint, softmax, bytes; fp8 by casting, scales
   positive); whatever the spec's ``verify:`` block does not say comes from defaults
   (``runners/verify.yaml``) and ``authoring.validate.choose_axes`` (runners/verify_inputs.py);
2. the definition's own ``reference`` (the text of the emitted JSON, exactly what users get) runs on
   them;
3. the other side:

   * ``--device cuda``: the FlashInfer API its ``fi_api`` names, called on the same inputs (a wrapper
     class is constructed and planned as the ``verify.kernel`` block says); where that kernel cannot
     run (GPU architecture, cubins that are downloaded at first use, a missing package) the report
     says why, and a ``verify.kernel.alternative`` of the same math runs instead when the spec names one;
   * ``--device cpu``: FlashInfer's *template reference*, reached through the API's ``.fi_trace``
     (its JSON carries the reference source): exec'd and called with the same inputs, parameters
     filled by name (``verify.template.args`` maps the rest);

   (runners/verify_sides.py; the call arguments: runners/verify_calls.py)
4. outputs are compared with per-dtype tolerances (mismatch fraction and, for low precision, cosine
   similarity), per output; named, explained differences (``verify.differences``) are applied and
   listed in the report (runners/verify_compare.py, runners/verify_report.py).

This module checks the ``verify:`` block (free-form for the spec schema; documented in docs/gpu.md) and
runs those steps for each definition of a model.  Nothing here knows an op: what differs between ops is in the specs and ``runners/verify.yaml``.
"""
from __future__ import annotations

import concurrent.futures as cf
import fnmatch
import inspect
import json
import multiprocessing as mp
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from defc.compiler.predictions import compile_predictions

from .verify_calls import api_object, arg_after_call, device_copies, kernel_call_args, resolve_args
from .verify_compare import OutputCheck, compare, tolerance_for
from .verify_inputs import NotRun, RecipeError, build_case, defaults, truth
from .verify_report import Result
from .verify_sides import (alternative_for, as_outputs, call_template, explain_failure, gpu_sm, kernel_side,
                           run_reference_text, skip_reason)


# ---------------------------------------------------------------------------------------------
# the verify: block

VERIFY_KEYS = {"vars", "sequences", "inputs", "kernel", "template", "tolerance", "differences", "seed", "note",
               "notes", "skip"}
KERNEL_KEYS = {"api", "init", "plan", "args", "positional", "returns", "from_args", "requires_sm", "why", "alternative",
               "skip"}
ALTERNATIVE_KEYS = (KERNEL_KEYS - {"alternative"}) | {"when"}
TEMPLATE_KEYS = {"call", "args", "returns", "skip", "sequences", "vars", "inputs"}


def check_block(vb) -> None:
    if not isinstance(vb, dict):
        raise RecipeError("verify must be a mapping")
    bad = sorted(set(vb) - VERIFY_KEYS)
    if bad:
        raise RecipeError(f"unknown verify field '{bad[0]}' (allowed: {', '.join(sorted(VERIFY_KEYS))})")
    kb = vb.get("kernel") or {}
    bad = sorted(set(kb) - KERNEL_KEYS)
    if bad:
        raise RecipeError(f"unknown verify.kernel field '{bad[0]}' (allowed: {', '.join(sorted(KERNEL_KEYS))})")
    alt = kb.get("alternative") or {}
    bad = sorted(set(alt) - ALTERNATIVE_KEYS)
    if bad:
        raise RecipeError(f"unknown verify.kernel.alternative field '{bad[0]}' "
                          f"(allowed: {', '.join(sorted(ALTERNATIVE_KEYS))})")
    tb = vb.get("template") or {}
    bad = sorted(set(tb) - TEMPLATE_KEYS)
    if bad:
        raise RecipeError(f"unknown verify.template field '{bad[0]}' (allowed: {', '.join(sorted(TEMPLATE_KEYS))})")


def _differences(vb: Dict[str, Any], side: str, env: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """The named differences that apply to this side (and whose when: holds)."""
    out = []
    for i, d in enumerate(vb.get("differences") or []):
        if not isinstance(d, dict) or not d.get("name") or not d.get("why"):
            raise RecipeError(f"verify.differences[{i}] needs a name and a why")
        bad = sorted(set(d) - {"name", "why", "sides", "when", "skip_outputs", "tolerance", "outputs", "inputs"})
        if bad:
            raise RecipeError(f"verify.differences[{i}]: unknown field '{bad[0]}'")
        sides = d.get("sides") or ["kernel", "alternative", "template"]
        if side not in sides:
            continue
        if "when" in d and env is not None and not truth(d["when"], env, f"verify.differences[{i}].when"):
            continue
        out.append(d)
    return out


# ---------------------------------------------------------------------------------------------
# one definition

def verify_one(defn: Dict[str, Any], inst, device: str, cfg: Dict[str, Any], seed: int = 0,
               max_numel: Optional[int] = None) -> Result:
    import torch
    res = Result(defn["name"], defn.get("op_type", ""), _fi_api_of(defn))
    t0 = time.time()
    try:
        _verify_into(res, defn, inst, device, cfg, seed, max_numel)
    except RecipeError as e:
        res.status, res.why = "error", f"verify recipe: {e}"
    except NotRun as e:
        res.status, res.why = "not-run", str(e)
    except Exception as e:  # the reference or a FlashInfer call raised
        res.status, res.why = "error", explain_failure(e, cfg)
    finally:
        res.seconds = time.time() - t0
        if device.startswith("cuda"):
            try:
                torch.cuda.empty_cache()
            except Exception:
                pass
    return res


def _verify_into(res: Result, defn, inst, device: str, cfg, seed: int, max_numel: Optional[int]) -> None:
    import torch
    vb = (inst.verify if inst is not None else None) or {}
    check_block(vb)
    kb = vb.get("kernel") or {}
    tb = vb.get("template") or {}
    cuda = device.startswith("cuda")
    if not res.fi_api and not kb.get("api") and not kb.get("alternative"):
        raise NotRun("no FlashInfer API (the spec's fi_api is null)")
    senv = dict(inst.env) if inst is not None else {}
    senv.update({k: a["value"] for k, a in (defn.get("axes") or {}).items() if a.get("type") == "const"})
    why = skip_reason(vb.get("skip"), senv, "verify.skip")
    if why:
        raise NotRun(why)
    if not cuda:
        why = skip_reason(tb.get("skip"), senv, "verify.template.skip")
        if why:
            raise NotRun(why)
    if cuda:
        req, sm = kb.get("requires_sm"), gpu_sm()
        if req and sm is not None and sm not in [int(x) for x in req] and not alternative_for(kb, senv):
            raise NotRun(f"needs SM {', '.join(str(x) for x in req)}, this GPU is SM {sm}"
                         + (f": {kb['why']}" if kb.get("why") else ""))
    seed = int(vb.get("seed", seed))
    side_diffs = _differences(vb, "kernel" if cuda else "template", senv)
    if any(d.get("inputs") for d in side_diffs):
        # a named difference gives this side other inputs (e.g. a sink of weight zero): merged in
        vb = dict(vb)
        vb["inputs"] = dict(vb.get("inputs") or {})
        for d in side_diffs:
            vb["inputs"].update(d.get("inputs") or {})
    if not cuda and any(k in tb for k in ("sequences", "vars", "inputs")):
        # the template reference needs other inputs (a named difference says why): they replace the block's
        vb_case = dict(vb)
        for k in ("sequences", "vars"):
            if k in tb:
                vb_case[k] = tb[k]
        if "inputs" in tb:
            vb_case["inputs"] = {**(vb.get("inputs") or {}), **tb["inputs"]}
    else:
        vb_case = vb
    limit = max_numel or int(cfg.get("max_numel_cpu", 1 << 26)) * (16 if cuda else 1)
    case = build_case(defn, inst, vb_case, seed, cfg, limit, f" on {'CUDA' if cuda else 'CPU'}")
    res.sizes = case.var_sizes(defn)
    # the other side first: when it cannot run, the reference need not either
    if cuda:
        theirs = kernel_side(res, kb, inst, case, device, defn, cfg)
    else:
        res.side = "template"
        res.ran, theirs = call_template(tb, kb, inst, case, defn)
    ref_device = device if cuda else "cpu"
    args = [v.to(ref_device) if isinstance(v, torch.Tensor) else v for v in case.inputs.values()]
    ours = as_outputs(run_reference_text(defn["reference"], defn["name"], args), list(defn.get("outputs") or {}))
    diffs = _differences(vb, res.side, senv)
    skip_outputs = set()
    for d in diffs:
        res.differences.append(d["name"])
        for o in d.get("skip_outputs") or []:
            skip_outputs.add(o)
    ok, compared = True, 0
    for name, t in (defn.get("outputs") or {}).items():
        if name in skip_outputs:
            res.outputs.append(OutputCheck(name, True, note="not compared: " + ", ".join(
                d["name"] for d in diffs if name in (d.get("skip_outputs") or []))))
            continue
        if name not in theirs:
            res.outputs.append(OutputCheck(name, True, note="not compared: the other side does not return it"))
            continue
        tol = tolerance_for(name, t["dtype"], vb, cfg)
        for d in diffs:
            if isinstance(d.get("tolerance"), dict) and name in (d.get("outputs") or [name]):
                tol.update(d["tolerance"])
        chk = compare(name, ours.get(name), theirs[name], tol)
        res.outputs.append(chk)
        compared += 1
        ok = ok and chk.ok
    if not compared:
        if skip_outputs and all(o.note.startswith("not compared") for o in res.outputs):
            res.status = "not-run"
            res.why = "every output differs for a named reason: " + "; ".join(f"{d['name']}: {' '.join(str(d['why']).split())}"
                                                                         for d in diffs if d.get("skip_outputs"))
            return
        res.status, res.why = "error", "no output was compared"
        return
    res.status = "pass" if ok else "fail"
    if not ok:
        res.why = "; ".join(f"{o.name}: {o.note}" for o in res.outputs if not o.ok)


# ---------------------------------------------------------------------------------------------
# a model

@dataclass
class VerifyOptions:
    model: str
    tp: Optional[List[int]] = None
    ep: Optional[List[int]] = None
    dp: Optional[List[int]] = None
    quantization: Optional[List[str]] = None
    op_types: Optional[List[str]] = None
    specs: Sequence[str] = ()
    names: Optional[List[str]] = None
    device: str = "cpu"
    seed: int = 0
    max_numel: Optional[int] = None
    jobs: int = 1


def compile_for(opts: VerifyOptions):
    """The definitions defc compile would emit (nothing written): [(doc, instance)] in compile order."""
    r = compile_predictions(opts.model, opts.tp, opts.ep, opts.quantization, opts.specs, dp=opts.dp,
                            op_types=opts.op_types)
    items = []
    for p in r.planned:
        name = p.doc["name"]
        if opts.names and name not in opts.names:
            continue
        items.append((p.doc, r.instances[name][0]))
    return r, items


_WORKER_CACHE: Dict[str, Any] = {}


def _worker(payload: Dict[str, Any]) -> Dict[str, Any]:
    """Process-pool entry: verify one definition by name (compiles once per worker)."""
    opts = VerifyOptions(**payload["opts"])
    key = json.dumps(payload["opts"], sort_keys=True, default=str)
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = {d["name"]: (d, i) for d, i in compile_for(opts)[1]}
    doc, inst = _WORKER_CACHE[key][payload["name"]]
    return verify_one(doc, inst, opts.device, defaults(), opts.seed, opts.max_numel).as_dict()


def _order_for_pool(items, start_first: Sequence[str] = ()):
    """Round-robin over fi_api, so the first tasks the workers take build different JIT modules; APIs
    matching a start_first glob (long JIT builds, runners/verify.yaml) lead."""
    groups: Dict[str, List] = {}
    for it in items:
        groups.setdefault(_fi_api_of(it[0]), []).append(it)
    out = []

    def rank(api):
        for i, g in enumerate(start_first):
            if fnmatch.fnmatch(api, g):
                return i
        return len(start_first)
    queues = [groups[k] for k in sorted(groups, key=rank)]
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def _fi_api_of(doc) -> str:
    return next((t.split(":", 1)[1] for t in doc.get("tags") or [] if t.startswith("fi_api:")), "")


def verify_model(opts: VerifyOptions, on_result: Optional[Callable[[Result, int, int], None]] = None,
                 on_start: Optional[Callable[[str, int, int], None]] = None) -> Tuple[Any, List[Result]]:
    cfg = defaults()
    compiled, items = compile_for(opts)
    results: List[Result] = []
    total = len(items)
    if opts.jobs <= 1 or total <= 1:
        for i, (doc, inst) in enumerate(items):
            if on_start:
                on_start(doc["name"], i, total)
            r = verify_one(doc, inst, opts.device, cfg, opts.seed, opts.max_numel)
            results.append(r)
            if on_result:
                on_result(r, len(results), total)
        return compiled, results
    payload_opts = {k: v for k, v in opts.__dict__.items()}
    payload_opts["specs"] = list(opts.specs)
    ordered = _order_for_pool(items, cfg.get("start_first") or [])
    by_name = {d["name"]: d for d, _ in items}
    pending = [d["name"] for d, _ in ordered]
    ctx = mp.get_context("spawn")

    def record(r: Result) -> None:
        results.append(r)
        if r.definition in pending:
            pending.remove(r.definition)
        if on_result:
            on_result(r, len(results), total)
    try:
        with cf.ProcessPoolExecutor(max_workers=opts.jobs, mp_context=ctx) as ex:
            futs = {ex.submit(_worker, {"opts": payload_opts, "name": n}): n for n in list(pending)}
            for fut in cf.as_completed(futs):
                record(Result.from_dict(fut.result()))
    except BrokenProcessPool:
        pass      # a kernel took its worker down: the rest run one at a time, so the culprit is known
    for n in list(pending):
        d = by_name[n]
        try:
            with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
                r = Result.from_dict(ex.submit(_worker, {"opts": payload_opts, "name": n}).result())
        except Exception as e:
            r = Result(n, d.get("op_type", ""), _fi_api_of(d), "error",
                       why=f"the worker process died running it: {type(e).__name__}: {e}"[:300])
        record(r)
    order = {d["name"]: i for i, (d, _) in enumerate(items)}
    results.sort(key=lambda r: order.get(r.definition, 0))
    return compiled, results


# ---------------------------------------------------------------------------------------------
# the GPU side without a GPU

def check_kernel_call(defn: Dict[str, Any], inst, cfg: Optional[Dict[str, Any]] = None) -> List[str]:
    """Without a GPU: the verify.kernel call (and its alternative) resolved on CPU inputs and bound to the
    API's signature (constructor, plan() and the call itself).  Problems as one-line strings."""
    cfg = cfg or defaults()
    vb = (inst.verify if inst is not None else None) or {}
    problems: List[str] = []
    try:
        check_block(vb)
        case = build_case(defn, inst, vb, 0, cfg, int(cfg.get("max_numel_cpu", 1 << 26)))
    except NotRun:
        return problems
    except RecipeError as e:
        return [f"{defn['name']}: {e}"]
    blocks = [("kernel", vb.get("kernel") or {})]
    alt = alternative_for(vb.get("kernel") or {}, case.env)
    if alt:
        blocks.append(("kernel.alternative", alt))
    for label, kb in blocks:
        tensors = device_copies(case, "cpu")
        try:
            if not (kb.get("api") or (inst.trace or {}).get("api") or inst.fi_api):
                continue
            api, positional, args = kernel_call_args(kb, inst, case, "cpu", tensors, label)
            owner, attr, fn = api_object(api)
            if owner is not None:
                init = resolve_args(kb.get("init") or {}, case, "cpu", f"verify.{label}.init", tensors)
                inspect.signature(owner.__init__).bind(None, **init)
                if "plan" in kb:
                    plan = resolve_args(kb["plan"], case, "cpu", f"verify.{label}.plan", tensors)
                    inspect.signature(owner.plan).bind(None, **plan)
                inspect.signature(getattr(owner, attr)).bind(None, *positional, **args)
            else:
                inspect.signature(fn).bind(*positional, **args)
            for out_name, path in (kb.get("from_args") or {}).items():
                arg_after_call(args, path, f"verify.{label}.from_args.{out_name}")
                if out_name not in (defn.get("outputs") or {}):
                    problems.append(f"{defn['name']}: verify.{label}.from_args: no output '{out_name}'")
            for n in kb.get("returns") or []:
                if n and n not in (defn.get("outputs") or {}):
                    problems.append(f"{defn['name']}: verify.{label}.returns: no output '{n}'")
        except NotRun as e:
            problems.append(f"{defn['name']}: {label}: {e}")
        except (RecipeError, TypeError) as e:
            problems.append(f"{defn['name']}: verify.{label}: {e}")
    return problems
