"""Call arguments for ``defc verify``: the ``verify:`` argument syntax (inputs, layout arrays, formulas,
new tensors, elementwise expressions), the spec's ``trace:`` recipe at a case's sizes, and the dotted API
a kernel block names, resolved to what is called."""
from __future__ import annotations

import ast
import copy
import importlib
import inspect
import math
import re
from typing import Any, Dict, List, Tuple

from defc.compiler.errors import DefcError

from .recipes import NoRecipe, SeqArg, TensorArg, calls_for
from .verify_inputs import Case, NotRun, RecipeError, formula_value, int_value, torch_dtype, truth


def resolve_arg(spec, case: Case, device: str, what: str, tensors: Dict[str, Any]):
    """A value in the verify: argument syntax → a Python/torch object on ``device``.

    ``name`` an input (its tensor, a fresh copy on device); ``{tensor: name, dtype: d}`` cast;
    ``{layout: array, dtype: int32}`` a layout array; ``{value: formula}``; ``{dtype: bfloat16}``
    (spelled ``{torch_dtype: …}``) a torch dtype; ``{tuple|list: [...]}``; ``{zeros|empty: [sizes],
    dtype: d}`` a new tensor; ``{full: [sizes], fill: formula, dtype: d}``;
    ``{expr: "exp(-exp(A_log) * softplus(a + dt_bias))", dtype: d}`` an elementwise expression of inputs;
    ``{tensor: x, column_major: true}`` a 2-D input stored column-major;
    ``{workspace: bytes}`` a zeroed uint8 buffer; ``{cat: [a, b], dim: -1,
    shape: [...]}`` tensors concatenated (then viewed); ``{pack_e2m1: x, scale: s}`` an input of FP4-grid
    values (the e2m1 builder) divided by s and packed two per byte along the last dimension (low nibble
    first, FlashInfer's packed FP4 layout) as uint8; null is None."""
    import torch
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"tensor": spec}
    if not isinstance(spec, dict):
        if isinstance(spec, (int, float, bool)):
            return spec
        raise RecipeError(f"{what}: an argument is an input name or a mapping")
    kinds = [k for k in ("tensor", "layout", "value", "torch_dtype", "tuple", "list", "zeros", "empty", "workspace",
                         "output", "cat", "full", "expr", "pack_e2m1") if k in spec]
    if len(kinds) != 1:
        raise RecipeError(f"{what}: an argument needs exactly one of tensor/layout/value/torch_dtype/tuple/list/"
                          f"zeros/empty/full/workspace/cat/expr")
    kind = kinds[0]
    extra = set(spec) - {kind, "dtype", "when", "shape"} - {"cat": {"dim"}, "full": {"fill"},
                                                            "tensor": {"column_major"},
                                                            "pack_e2m1": {"scale"}}.get(kind, set())
    if extra:
        raise RecipeError(f"{what}: unknown argument field '{sorted(extra)[0]}'")
    if kind == "value":
        return formula_value(spec["value"], case.env, what)
    if kind == "torch_dtype":
        return torch_dtype(spec["torch_dtype"])
    if kind in ("tuple", "list"):
        items = [resolve_arg(x, case, device, f"{what}[{i}]", tensors) for i, x in enumerate(spec[kind])]
        return tuple(items) if kind == "tuple" else items
    if kind == "workspace":
        n = int_value(spec["workspace"], case.env, what)
        return torch.zeros(n, dtype=torch.uint8, device=device)
    if kind == "expr":
        # an elementwise expression over the inputs, for APIs that take a derived tensor (e.g. the
        # GDN gates exp(-exp(A_log) * softplus(a + dt_bias)) where the definition has a, A_log, dt_bias)
        v = tensor_expr(spec["expr"], tensors, case.env, what)
        if isinstance(v, torch.Tensor):
            if "dtype" in spec:
                v = v.to(torch_dtype(spec["dtype"]))
            v = v.to(device).contiguous()
        return v
    if kind == "pack_e2m1":
        src = resolve_arg(spec["pack_e2m1"], case, "cpu", what, tensors)
        return pack_e2m1(src, float(formula_value(spec.get("scale", 1.0), case.env, what)), what).to(device)
    if kind == "full":
        dims = tuple(int_value(x, case.env, what) for x in spec["full"])
        return torch.full(dims, formula_value(spec.get("fill", 0), case.env, what),
                          dtype=torch_dtype(spec.get("dtype", "float32")), device=device)
    if kind in ("zeros", "empty"):
        dims = tuple(int_value(x, case.env, what) for x in spec[kind])
        dt = torch_dtype(spec.get("dtype", "float32"))
        return torch.zeros(dims, dtype=dt, device=device)
    if kind == "cat":
        # tensors joined along dim (default -1), then viewed as shape: e.g. the [q_nope | q_pe] query
        # and [ckv | kpe] cache that FlashInfer's MLA calls take concatenated
        parts = [resolve_arg(x, case, device, f"{what}.cat[{i}]", tensors) for i, x in enumerate(spec["cat"])]
        if len(parts) < 2 or not all(isinstance(t, torch.Tensor) for t in parts):
            raise RecipeError(f"{what}: cat takes a list of at least two tensors")
        try:
            v = torch.cat(parts, dim=int(spec.get("dim", -1)))
        except RuntimeError as e:
            raise RecipeError(f"{what}: cannot concatenate: {str(e).splitlines()[0]}") from None
        if "dtype" in spec:
            v = v.to(torch_dtype(spec["dtype"]))
        if "shape" in spec:
            v = v.reshape(tuple(int_value(x, case.env, what) for x in spec["shape"]))
        return v
    if kind == "layout":
        arr = case.arrays.get(spec["layout"])
        if arr is None:
            raise RecipeError(f"{what}: no layout array '{spec['layout']}'")
        return torch.tensor(arr, dtype=torch_dtype(spec.get("dtype", "int32")), device=device)
    name = spec["tensor"]
    if name not in tensors:
        raise RecipeError(f"{what}: no input named '{name}' (has: {', '.join(tensors)})")
    v = tensors[name]
    if isinstance(v, torch.Tensor):
        if "dtype" in spec:
            v = v.to(torch_dtype(spec["dtype"]))
        if "shape" in spec:
            v = v.reshape(tuple(int_value(x, case.env, what) for x in spec["shape"]))
        if spec.get("column_major"):
            # the same values stored column-major (a kernel that reads a 2-D scale tensor MN-major)
            if v.dim() != 2:
                raise RecipeError(f"{what}: column_major needs a 2-D tensor, '{name}' has {v.dim()} dimensions")
            v = v.t().contiguous().t()
        return v
    return v


def pack_e2m1(x, scale: float, what: str):
    """FP4-grid values / scale -> uint8, two codes per byte along the last dimension (low nibble first).
    Done one slice of the first dimension at a time (whole MoE weight tensors are large)."""
    import torch
    from .verify_inputs import E2M1_GRID
    if x.shape[-1] % 2:
        raise RecipeError(f"{what}: pack_e2m1 needs an even last dimension")
    magnitudes = torch.tensor(E2M1_GRID[:8], dtype=torch.float32)      # codes 0..7; 8..15 the negatives
    rows = x.reshape(-1, x.shape[-1]) if x.dim() < 2 else x.reshape(x.shape[0], -1, x.shape[-1])
    out = torch.empty(*rows.shape[:-1], rows.shape[-1] // 2, dtype=torch.uint8)
    for i in range(rows.shape[0]):
        v = rows[i].float() / scale
        mag = v.abs()
        code = torch.searchsorted(magnitudes, mag).clamp(max=7)
        lower = (code - 1).clamp(min=0)                                # nearest of the two neighbours
        code = torch.where((mag - magnitudes[lower]).abs() < (magnitudes[code] - mag).abs(), lower, code)
        if not torch.allclose(magnitudes[code], mag, rtol=1e-5, atol=1e-6):
            raise RecipeError(f"{what}: pack_e2m1 needs values of the FP4 grid (build the input with e2m1:)")
        code = (code + 8 * (v < 0)).to(torch.uint8)
        out[i] = code[..., 0::2] | (code[..., 1::2] << 4)
        del v, mag, code, lower
    return out.reshape(*x.shape[:-1], x.shape[-1] // 2)


def tensor_expr(text: str, tensors: Dict[str, Any], env: Dict[str, Any], what: str):
    """Evaluate an elementwise expression over input tensors and symbols: numbers, names, + - * / **,
    unary minus and the elementwise functions listed below.  Computed in float32.  Nothing else is allowed."""
    import torch
    import torch.nn.functional as TF
    funcs = {"exp": torch.exp, "log": torch.log, "sigmoid": torch.sigmoid, "softplus": TF.softplus,
             "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "tanh": torch.tanh, "abs": torch.abs,
             "float32": lambda x: x.float()}
    if not isinstance(text, str) or len(text) > 500:
        raise RecipeError(f"{what}: expr must be a string of at most 500 characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise RecipeError(f"{what}: expr '{text}' is not an expression: {e.msg}") from None

    def val(x):
        return x.float() if isinstance(x, torch.Tensor) else float(x)

    def ev(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return float(n.value)
        if isinstance(n, ast.Name):
            if n.id in tensors and tensors[n.id] is not None:
                return val(tensors[n.id])
            if n.id in env and isinstance(env[n.id], (int, float)):
                return float(env[n.id])
            raise RecipeError(f"{what}: expr '{text}': unknown name '{n.id}'")
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            x = ev(n.operand)
            return -x if isinstance(n.op, ast.USub) else x
        if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
            a, b = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Pow) and not isinstance(a, torch.Tensor) and abs(b) > 64:
                raise RecipeError(f"{what}: expr '{text}': exponent too large")
            op = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b,
                  ast.Div: lambda: a / b, ast.Pow: lambda: a ** b}[type(n.op)]
            try:
                return op()
            except (RuntimeError, ZeroDivisionError) as e:
                raise RecipeError(f"{what}: expr '{text}': {str(e).splitlines()[0]}") from None
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in funcs \
                and len(n.args) == 1 and not n.keywords:
            x = ev(n.args[0])
            return funcs[n.func.id](x if isinstance(x, torch.Tensor) else torch.tensor(x))
        raise RecipeError(f"{what}: expr '{text}': only numbers, names, + - * / ** and "
                          f"{', '.join(funcs)}(x) are allowed")
    return ev(tree.body)


def resolve_args(block: Dict[str, Any], case: Case, device: str, what: str, tensors) -> Dict[str, Any]:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise RecipeError(f"{what} must be a mapping of parameter: value")
    out = {}
    for k, v in block.items():
        if isinstance(v, dict) and "when" in v and not truth(v["when"], case.env, f"{what}.{k}.when"):
            continue
        out[k] = resolve_arg(v, case, device, f"{what}.{k}", tensors)
    return out


def device_copies(case: Case, device: str) -> Dict[str, Any]:
    """Fresh copies of the inputs on ``device`` (in-place kernels must not touch the originals)."""
    import torch

    def copy(t):
        zero = [d for d in range(t.dim()) if t.stride(d) == 0 and t.shape[d] > 1]
        if not zero:
            return t.detach().clone().to(device)
        small = t
        for d in zero:                  # a broadcast view stays one (kernels check such strides)
            small = small.narrow(d, 0, 1)
        return small.detach().clone().to(device).expand(t.shape)
    return {k: (copy(v) if isinstance(v, torch.Tensor) else v) for k, v in case.inputs.items()}


def recipe_args(inst, case: Case, device: str, tensors) -> Tuple[str, Dict[str, Any]]:
    """The spec's trace: recipe (runners/recipes.py) with this case's sizes: (api, kwargs)."""
    inst2 = copy.copy(inst)
    tr = copy.deepcopy(inst.trace or {})
    sizes = {k: v for k, v in case.values.items() if (inst.axes.get(k) or {}).get("type") == "var"}
    if "calls" in tr:
        tr["vars"] = dict(sizes)
        for c in tr["calls"]:
            if isinstance(c, dict):
                c.pop("vars", None)
    else:
        tr["vars"] = dict(sizes)
    inst2.trace = tr
    try:
        calls = calls_for(inst2)
    except NoRecipe as e:
        raise NotRun(f"no trace: recipe and no verify.kernel.args ({e})") from None
    except DefcError as e:
        raise RecipeError(f"trace: recipe: {e.message}") from None
    call = calls[0]

    def mat(v):
        import torch
        if isinstance(v, TensorArg):
            if v.name:
                t = tensors[v.name]
                if not isinstance(t, torch.Tensor):
                    return t
                if t.dtype != torch_dtype(v.dtype):
                    t = t.to(torch_dtype(v.dtype))
                if tuple(t.shape) != tuple(v.shape) and t.numel() == math.prod(v.shape):
                    t = t.reshape(v.shape)          # the recipe's {tensor: x, shape: [...]} (a flattened view)
                return t
            return torch.zeros(v.shape, dtype=torch_dtype(v.dtype), device=device)
        if isinstance(v, SeqArg):
            items = [mat(x) for x in v.items]
            return tuple(items) if v.kind == "tuple" else items
        return v
    # a recipe traces with stand-in values (rank 0's expert offset, …); an API parameter that is one of
    # the definition's scalar inputs gets the input, as the reference does
    scalars = {k for k, t in (inst.inputs or {}).items() if t.get("shape") is None}
    return call.api, {k: (tensors[k] if k in scalars and k in tensors else mat(v)) for k, v in call.kwargs.items()}


def api_object(path: str):
    """(owner class or None, attribute name, object) for a dotted API path; a class means its run()."""
    parts = path.split(".")
    first_error = None
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError as e:
            if first_error is None and not str(e).startswith(f"No module named '{'.'.join(parts[:i])}'"):
                first_error = f"cannot import {'.'.join(parts[:i])}: {type(e).__name__}: {e}"
            continue
        except Exception as e:
            raise NotRun(f"cannot import {'.'.join(parts[:i])}: {type(e).__name__}: {e}") from None
        owner = None
        try:
            for p in parts[i:]:
                owner, obj = obj, getattr(obj, p)
        except AttributeError:
            raise NotRun(first_error or f"FlashInfer {fi_version()} has no '{path}'") from None
        if inspect.isclass(obj):
            return obj, "run", getattr(obj, "run")
        if owner is not None and inspect.isclass(owner):
            return owner, parts[-1], obj
        return None, parts[-1], obj
    raise NotRun(f"cannot import any module of '{path}'")


def fi_version() -> str:
    try:
        import flashinfer
        return getattr(flashinfer, "__version__", "?")
    except Exception:
        return "(not importable)"


def kernel_call_args(kb: Dict[str, Any], inst, case: Case, device: str, tensors,
                     label: str) -> Tuple[str, List[Any], Dict[str, Any]]:
    """(api, positional arguments, keyword arguments) of a verify.kernel block (or its alternative)."""
    api = kb.get("api") or (inst.trace or {}).get("api") or inst.fi_api
    if not api:
        raise NotRun("the spec names no FlashInfer API")
    positional: List[Any] = []
    if "positional" in kb:
        # APIs that take extra arguments through *args (a JIT variant's tensors and scalars, e.g. the
        # sink wrapper's run(q, paged_kv_cache, sinks, sm_scale)) get these first, in order
        if not isinstance(kb["positional"], list):
            raise RecipeError(f"verify.{label}.positional must be a list of arguments, in call order")
        positional = [resolve_arg(v, case, device, f"verify.{label}.positional[{i}]", tensors)
                      for i, v in enumerate(kb["positional"])]
    if "args" in kb or positional:
        args = resolve_args(kb.get("args") or {}, case, device, f"verify.{label}.args", tensors)
    else:
        api_r, args = recipe_args(inst, case, device, tensors)
        api = kb.get("api") or api_r
    return api, positional, args


def arg_after_call(args: Dict[str, Any], path: str, what: str):
    """'input' or 'paged_kv_cache[0]': an argument (in-place kernels write into it)."""
    m = re.match(r"^([A-Za-z_]\w*)(?:\[(\d+)\])?$", str(path))
    if not m or m.group(1) not in args:
        raise RecipeError(f"{what}: '{path}' is not an argument of the call (has: {', '.join(args)})")
    v = args[m.group(1)]
    if m.group(2) is not None:
        v = v[int(m.group(2))]
    return v
