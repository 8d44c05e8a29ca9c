"""The two sides ``defc verify`` compares: the definition's own reference, and the other side — the
FlashInfer kernel (or its named alternative) on CUDA, FlashInfer's template reference (through the API's
``.fi_trace``) on CPU."""
from __future__ import annotations

import ast
import builtins
import inspect
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from defc.compiler.errors import DefcError

from .flashinfer_api import NoDumpEnv, import_flashinfer, resolve_api
from .verify_calls import api_object, arg_after_call, device_copies, kernel_call_args, recipe_args, resolve_args
from .verify_inputs import Case, NotRun, RecipeError, truth
from .verify_report import Result


# ---------------------------------------------------------------------------------------------
# the reference

def run_reference_text(source: str, name: str, args: List[Any]):
    import torch
    ns: Dict[str, Any] = {"__name__": f"defc_reference_{name}"}
    # the definition's own reference: defc's output, the code users get
    exec(compile(source, f"<reference of {name}>", "exec"), ns)  # noqa: S102
    with torch.no_grad():
        return ns["run"](*args)


def as_outputs(result, names: Sequence[Optional[str]]) -> Dict[str, Any]:
    vals = list(result) if isinstance(result, (tuple, list)) else [result]
    out = {}
    for n, v in zip(names, vals):
        if n:
            out[n] = v
    return out


# ---------------------------------------------------------------------------------------------
# the kernel

def call_kernel(kb: Dict[str, Any], inst, case: Case, device: str, defn) -> Tuple[str, Dict[str, Any]]:
    """Call the FlashInfer API as kb (a verify.kernel block, or its alternative) says; outputs by name."""
    import torch
    tensors = device_copies(case, device)
    api, positional, args = kernel_call_args(kb, inst, case, device, tensors, "kernel")
    owner, attr, fn = api_object(api)
    shown = api
    if owner is not None:
        init = resolve_args(kb.get("init") or {}, case, device, "verify.kernel.init", tensors)
        try:
            obj = owner(**init)
        except TypeError as e:
            raise RecipeError(f"verify.kernel.init: {e}") from None
        if "plan" in kb:
            plan = resolve_args(kb["plan"], case, device, "verify.kernel.plan", tensors)
            obj.plan(**plan)
        fn = getattr(obj, attr)
    with torch.no_grad():
        result = fn(*positional, **args)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    names = kb.get("returns")
    if names is None:
        names = list(defn.get("outputs") or {})
    outs = as_outputs(result, names) if names else {}
    for out_name, arg_path in (kb.get("from_args") or {}).items():
        outs[out_name] = arg_after_call(args, arg_path, f"verify.kernel.from_args.{out_name}")
    return shown, outs


def skip_reason(skip, env, what) -> Optional[str]:
    """skip: 'why' (always) or {when: formula, why: text}."""
    if not skip:
        return None
    if isinstance(skip, str):
        return skip
    if not isinstance(skip, dict) or not skip.get("why"):
        raise RecipeError(f"{what} is a reason, or {{when: formula, why: reason}}")
    if "when" in skip and not truth(skip["when"], env, f"{what}.when"):
        return None
    return str(skip["why"])


def gpu_sm() -> Optional[int]:
    try:
        import torch
        if torch.cuda.is_available():
            a, b = torch.cuda.get_device_capability()
            return a * 10 + b
    except Exception:
        pass
    return None


def explain_failure(e: BaseException, cfg: Dict[str, Any]) -> str:
    text = f"{type(e).__name__}: {' '.join(str(e).split())}"
    for r in cfg.get("failure_reasons") or []:
        if r.get("match") and r["match"] in text:
            return f"{r['why']} ({text[:160]})"
    return text[:300]


def alternative_for(kb: Dict[str, Any], env: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The kernel block's alternative when it applies to this definition (its optional when: holds)."""
    alt = kb.get("alternative")
    if not alt:
        return None
    if "when" in alt and not truth(alt["when"], env, "verify.kernel.alternative.when"):
        return None
    return alt


def kernel_side(res: Result, kb, inst, case: Case, device: str, defn, cfg):
    sm = gpu_sm()
    named_why = ""
    req = kb.get("requires_sm")
    kskip = skip_reason(kb.get("skip"), case.env, "verify.kernel.skip")
    if kskip:
        named_why = kskip
    elif req and sm is not None and sm not in [int(x) for x in req]:
        named_why = (f"needs SM {', '.join(str(x) for x in req)}, this GPU is SM {sm}"
                     + (f": {kb['why']}" if kb.get("why") else ""))
    if not named_why:
        try:
            res.side = "kernel"
            shown, outs = call_kernel(kb, inst, case, device, defn)
            res.ran = f"kernel {shown}"
            return outs
        except (RecipeError, NotRun):
            raise
        except Exception as e:
            named_why = explain_failure(e, cfg)
    alt = alternative_for(kb, case.env)
    if not alt:
        raise NotRun(named_why)
    res.not_run_kernel = named_why
    areq = alt.get("requires_sm")
    if areq and sm is not None and sm not in [int(x) for x in areq]:
        raise NotRun(f"{named_why}; the alternative {alt.get('api')} needs SM {', '.join(map(str, areq))}")
    res.side = "alternative"
    try:
        shown, outs = call_kernel(alt, inst, case, device, defn)
    except (RecipeError, NotRun):
        raise
    except Exception as e:
        raise NotRun(f"{named_why}; the alternative {alt.get('api')} failed too: {explain_failure(e, cfg)}") from None
    res.ran = f"alternative kernel {shown} (same math{': ' + alt['why'] if alt.get('why') else ''})"
    return outs


# ---------------------------------------------------------------------------------------------
# FlashInfer's template reference

def template_reference(kb_args: Dict[str, Any], api: str) -> Tuple[Dict[str, Any], Callable]:
    """FlashInfer's template for this call (via .fi_trace) and its reference function."""
    import_flashinfer()
    try:
        fn = resolve_api(api)
    except DefcError as e:
        raise NotRun(e.message) from None
    tr = getattr(fn, "fi_trace", None)
    if tr is None:
        raise NotRun(f"{api} has no FlashInfer trace template (.fi_trace)")
    with NoDumpEnv():
        try:
            doc = tr(**kb_args)
        except Exception as e:
            raise NotRun(f"{api}.fi_trace raised {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None
    if not isinstance(doc, dict) or not doc.get("reference"):
        raise NotRun(f"FlashInfer's template {doc.get('name') if isinstance(doc, dict) else ''} for {api} "
                     f"carries no reference")
    src = doc["reference"]
    tree = ast.parse(src)
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.endswith("_reference")]
    if not names:
        raise NotRun(f"FlashInfer's template {doc['name']} has no _…_reference function")
    ns: Dict[str, Any] = {"__name__": f"fi_template_{doc['name']}"}
    # FlashInfer's own template source, as its .fi_trace returns it (the installed package)
    exec(compile(src, f"<template reference {doc['name']}>", "exec"), ns)  # noqa: S102
    missing = sorted(_free_names(tree) - set(ns) - set(dir(__builtins__ if isinstance(__builtins__, dict) else
                                                             __builtins__)) - _builtin_names())
    if missing:
        # the JSON's reference is not self-contained (a helper of its template module is missing): the
        # helpers come from the module that defines the reference, and the report says so
        ref = _template_reference(names[-1])
        if ref is None:
            raise NotRun(f"FlashInfer's template reference {names[-1]} ({doc['name']}) is not self-contained: "
                         f"it uses {', '.join(missing)}, which its JSON does not define")
        doc = dict(doc)
        doc["_defc_note"] = (f"the template JSON's reference is not self-contained ({', '.join(missing)} missing); "
                             f"taken from {ref.__module__}")
        return doc, ref
    return doc, ns[names[-1]]


def _builtin_names():
    return set(dir(builtins))


def _free_names(tree) -> set:
    """Names a module's functions read that nothing in the module binds (a rough, safe over-approximation)."""
    bound, used = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            for a in getattr(node, "args", None) and (node.args.args + node.args.kwonlyargs + node.args.posonlyargs
                                                       + [x for x in (node.args.vararg, node.args.kwarg) if x]) or []:
                bound.add(a.arg)
        elif isinstance(node, ast.Name):
            (bound if isinstance(node.ctx, (ast.Store, ast.Del)) else used).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                bound.add((a.asname or a.name).split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.comprehension):
            for n in ast.walk(node.target):
                if isinstance(n, ast.Name):
                    bound.add(n.id)
    ann = {n.id for sub in _annotations(tree) for n in ast.walk(sub) if isinstance(n, ast.Name)}
    return (used - bound) - (ann - _loads_outside_annotations(tree))


def _annotations(tree):
    """Every annotation subtree (return, argument and variable annotations) of a module."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            yield node.returns
        if isinstance(node, ast.arg) and node.annotation is not None:
            yield node.annotation
        if isinstance(node, ast.AnnAssign) and node.annotation is not None:
            yield node.annotation


def _loads_outside_annotations(tree) -> set:
    skip = {id(n) for sub in _annotations(tree) for n in ast.walk(sub)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
            and id(n) not in skip}


def _template_reference(func_name: str) -> Optional[Callable]:
    """The public ``.reference`` of a FlashInfer TraceTemplate (a public attribute of a public
    ``flashinfer.trace.templates`` module) whose function has that name: it runs in its own module,
    with the helpers the template JSON's copy of it lacks."""
    from flashinfer.trace import TraceTemplate
    for name in sorted(sys.modules):
        mod = sys.modules.get(name)
        if mod is None or not name.startswith("flashinfer.trace.templates.") or \
                any(part.startswith("_") for part in name.split(".")):
            continue
        for attr, obj in sorted(vars(mod).items()):
            if not attr.startswith("_") and isinstance(obj, TraceTemplate) and \
                    getattr(obj.reference, "__name__", None) == func_name:
                return obj.reference
    return None


def call_template(tb: Dict[str, Any], kb: Dict[str, Any], inst, case: Case, defn) -> Tuple[str, Dict[str, Any]]:
    import torch
    tensors = device_copies(case, "cpu")
    call = tb.get("call") or {}
    api = call.get("api") or kb.get("api") or (inst.trace or {}).get("api") or inst.fi_api
    if not api:
        raise NotRun("the spec names no FlashInfer API (so there is no template)")
    if "args" in call:
        args = resolve_args(call["args"], case, "cpu", "verify.template.call.args", tensors)
    elif "args" in kb and not kb.get("plan"):
        args = resolve_args(kb["args"], case, "cpu", "verify.kernel.args", tensors)
    else:
        try:
            api_r, args = recipe_args(inst, case, "cpu", tensors)
            api = call.get("api") or api_r
        except NotRun:
            if "args" not in kb:
                raise
            args = resolve_args(kb["args"], case, "cpu", "verify.kernel.args", tensors)
    doc, fn = template_reference(args, api)
    explicit = resolve_args(tb.get("args") or {}, case, "cpu", "verify.template.args", tensors)
    pool_layout = {k: torch.tensor(v, dtype=torch.int32) for k, v in case.arrays.items()
                   if v and not isinstance(v[0], list)}
    kwargs = {}
    params = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        # a reference with **kwargs reads optional call arguments from it (e.g. bmm1_scale)
        kwargs.update({k: v for k, v in explicit.items() if k not in params})
    for p in params.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.name in explicit:
            kwargs[p.name] = explicit[p.name]
        elif p.name in tensors:
            kwargs[p.name] = tensors[p.name]
        elif p.name in args:
            kwargs[p.name] = args[p.name]
        elif p.name in pool_layout:
            kwargs[p.name] = pool_layout[p.name]
        elif p.default is p.empty:
            raise RecipeError(f"verify.template.args: FlashInfer's {fn.__name__} needs '{p.name}', which is "
                              f"neither an input of the definition nor an argument of the call")
    with torch.no_grad():
        result = fn(**kwargs)
    names = tb.get("returns")
    if names is None:
        names = list(defn.get("outputs") or {})
    note = f"; {doc['_defc_note']}" if doc.get("_defc_note") else ""
    return f"template reference {fn.__name__} ({doc['name']}){note}", as_outputs(result, names)
