"""Call recipes: a spec definition's ``trace:`` block → concrete calls of a FlashInfer API.

The format is documented in docs/trace.md.  In short::

    trace:
      api: flashinfer.norm.rmsnorm        # what to call (default: the definition's fi_api)
      when: 'formula'                     # optional: the recipe applies only when true
      vars: {batch_size: 7}               # sizes for var axes (formulas, in order; default 4)
      args:                               # API parameter → value
        input: hidden_states              #   a definition tensor (its shape and dtype)
        weight: {tensor: weight, dtype: float32}        # the same, with overrides
        paged_kv_cache: {tuple: [k_cache, v_cache]}     # a tuple (or list: {list: [...]})
        scratch: {shape: [batch_size, 'head_dim * 2'], dtype: uint8}   # a free tensor
        eps: {value: eps}                 #   a scalar formula (numbers, strings, booleans)
        routing_bias: {value: null}       #   None
        sinks: {tensor: sinks, when: has_sinks}          # any argument may carry a when:
      defaults: true                      # bind the API's signature defaults like the dumper does
      calls: [...]                        # or several calls, each with the keys above

Nothing here imports torch or flashinfer: a recipe evaluates to plain data (:class:`Call`), and
:func:`materialize` turns it into meta tensors (``--backend replay``) or real device tensors
(the hook for ``--backend flashinfer``).
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from defc.compiler import formula as F
from defc.compiler.errors import DefcError, Location

DEFAULT_VAR = 4
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
CALL_KEYS = {"api", "when", "vars", "args", "defaults"}
TOP_KEYS = CALL_KEYS | {"calls", "note", "notes"}


@dataclass(frozen=True)
class TensorArg:
    shape: Tuple[int, ...]
    dtype: str
    name: str = ""            # the definition tensor it stands for, if any

    def describe(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class SeqArg:
    kind: str                 # tuple | list
    items: Tuple[Any, ...]


@dataclass
class Call:
    definition: str
    api: str
    kwargs: Dict[str, Any]
    defaults: bool = True
    where: Optional[Location] = None
    var_values: Dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        def d(v):
            if isinstance(v, TensorArg):
                return v.describe()
            if isinstance(v, SeqArg):
                inner = ", ".join(d(x) for x in v.items)
                return f"({inner})" if v.kind == "tuple" else f"[{inner}]"
            return repr(v)
        return f"{self.api}(" + ", ".join(f"{k}={d(v)}" for k, v in self.kwargs.items()) + ")"


class NoRecipe(Exception):
    """The definition has no usable trace recipe (reason in the message)."""


def _where(inst, *path) -> Location:
    return inst.spec.where(("definitions", inst.def_index, "trace") + tuple(path))


def _fld(*path) -> str:
    out = "trace"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _err(inst, path, msg) -> DefcError:
    return DefcError(f"definition '{inst.name}': {msg}", _where(inst, *path), _fld(*path))


def _formula(inst, path, text) -> F.Formula:
    if isinstance(text, bool) or isinstance(text, (int, float)):
        text = str(text)
    if not isinstance(text, str):
        raise _err(inst, path, f"expected a formula, got {type(text).__name__}")
    try:
        return F.parse(text)
    except F.FormulaError as e:
        raise _err(inst, path, f"bad formula: {e}") from None


def _value(inst, path, text, env):
    if text is None:
        return None
    f = _formula(inst, path, text)
    try:
        return F.to_python(f.evaluate(env))
    except F.UndefinedSymbol as e:
        raise _err(inst, path, f"'{f.source}' needs '{e.name}', which is not defined here") from None
    except F.FormulaError as e:
        raise _err(inst, path, f"'{f.source}': {e}") from None


def _size(inst, path, text, env) -> int:
    v = _value(inst, path, text, env)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise _err(inst, path, f"a size must be a non-negative integer, got {v!r}")
    return v


def _dtype(inst, path, text, env) -> str:
    if not isinstance(text, str) or not text:
        raise _err(inst, path, "dtype must be a string")

    def rep(m):
        v = env.get(m.group(1))
        if v is None:
            raise _err(inst, path, f"placeholder '{{{m.group(1)}}}' is not defined here")
        return str(v)
    out = PLACEHOLDER.sub(rep, text)
    if not re.match(r"^[a-z][a-z0-9_]*$", out):
        raise _err(inst, path, f"'{out}' is not a torch dtype name")
    return out


def _tensor_of(inst, name):
    for sect in ("inputs", "outputs"):
        t = getattr(inst, sect).get(name)
        if t is not None:
            return t
    return None


def _arg(inst, path, spec, env) -> Any:
    if isinstance(spec, str):
        spec = {"tensor": spec}
    if not isinstance(spec, dict):
        raise _err(inst, path, "an argument is a tensor name or a mapping with one of "
                               "tensor/shape/tuple/list/value")
    kinds = [k for k in ("tensor", "shape", "tuple", "list", "value") if k in spec]
    if "tensor" in kinds and "shape" in kinds:
        kinds.remove("shape")
    if len(kinds) != 1:
        raise _err(inst, path, "an argument needs exactly one of tensor/shape/tuple/list/value")
    kind = kinds[0]
    extra = set(spec) - {"tensor", "shape", "dtype", "tuple", "list", "value", "when"}
    if extra:
        raise _err(inst, path + (sorted(extra)[0],), f"unknown argument field '{sorted(extra)[0]}'")
    if kind == "value":
        return _value(inst, path + ("value",), spec["value"], env)
    if kind in ("tuple", "list"):
        items = spec[kind]
        if not isinstance(items, list) or not items:
            raise _err(inst, path + (kind,), f"'{kind}' must be a non-empty list")
        return SeqArg(kind, tuple(_arg(inst, path + (kind, i), it, env) for i, it in enumerate(items)))
    if kind == "tensor":
        t = _tensor_of(inst, spec["tensor"])
        if t is None:
            raise _err(inst, path + ("tensor",), f"no input or output named '{spec['tensor']}' in this definition "
                                                 f"(has: {', '.join(list(inst.inputs) + list(inst.outputs))})")
        if "shape" in spec:
            shape_src = spec["shape"]
        elif t.get("shape") is None:
            raise _err(inst, path + ("tensor",), f"'{spec['tensor']}' is a scalar; pass it with {{value: ...}}")
        else:
            shape_src = t["shape"]
        dtype = _dtype(inst, path + ("dtype",), spec.get("dtype", t["dtype"]), env)
        name = spec["tensor"]
    else:
        shape_src = spec["shape"]
        if "dtype" not in spec:
            raise _err(inst, path, "a free tensor needs a dtype")
        dtype = _dtype(inst, path + ("dtype",), spec["dtype"], env)
        name = ""
    if not isinstance(shape_src, list):
        raise _err(inst, path + ("shape",), "shape must be a list of sizes (formulas)")
    shape = tuple(_size(inst, path + ("shape", i), s, env) for i, s in enumerate(shape_src))
    return TensorArg(shape, dtype, name)


def _recipe_blocks(inst) -> List[Tuple[Tuple, Dict[str, Any]]]:
    tr = inst.trace
    if not tr:
        raise NoRecipe(f"the spec gives no trace: recipe for definition '{inst.def_id}' ({inst.spec.path})")
    if not isinstance(tr, dict):
        raise _err(inst, (), "trace must be a mapping")
    unknown = sorted(set(tr) - TOP_KEYS)
    if unknown:
        raise _err(inst, (unknown[0],), f"unknown trace field '{unknown[0]}' (allowed: {', '.join(sorted(TOP_KEYS))})")
    if "calls" in tr:
        if set(tr) & {"args", "api"}:
            raise _err(inst, ("calls",), "give either calls: or api/args at the top, not both")
        if not isinstance(tr["calls"], list) or not tr["calls"]:
            raise _err(inst, ("calls",), "calls must be a non-empty list")
        blocks = []
        for i, c in enumerate(tr["calls"]):
            if not isinstance(c, dict):
                raise _err(inst, ("calls", i), "each call must be a mapping")
            bad = sorted(set(c) - CALL_KEYS)
            if bad:
                raise _err(inst, ("calls", i, bad[0]), f"unknown call field '{bad[0]}'")
            merged = {k: tr[k] for k in ("vars", "defaults", "when") if k in tr}
            merged.update(c)
            if "vars" in tr and "vars" in c:
                merged["vars"] = {**tr["vars"], **c["vars"]}
            blocks.append((("calls", i), merged))
        return blocks
    return [((), tr)]


def calls_for(inst) -> List[Call]:
    """The calls a definition instance's trace: recipe asks for (raises NoRecipe / DefcError)."""
    out: List[Call] = []
    for path, blk in _recipe_blocks(inst):
        env = dict(inst.env)
        env.update(inst.const_axes)
        if "when" in blk:
            f = _formula(inst, path + ("when",), blk["when"])
            try:
                if not F.truth(f, env):
                    continue
            except F.FormulaError as e:
                raise _err(inst, path + ("when",), f"'{f.source}': {e}") from None
        vars_ = blk.get("vars") or {}
        if not isinstance(vars_, dict):
            raise _err(inst, path + ("vars",), "vars must be a mapping of axis: size")
        var_values: Dict[str, int] = {}
        for k, v in vars_.items():
            var_values[k] = _size(inst, path + ("vars", k), v, env)
            env[k] = var_values[k]
        for k, a in inst.axes.items():
            if a.get("type") == "var" and k not in env:
                env[k] = var_values[k] = DEFAULT_VAR
        api = blk.get("api") or inst.fi_api
        if not api:
            raise NoRecipe(f"definition '{inst.name}' names no fi_api and its trace: recipe gives no api")
        if not isinstance(api, str) or not re.match(r"^[A-Za-z_][\w.]*$", api):
            raise _err(inst, path + ("api",), f"api must be a dotted Python name, got {api!r}")
        args = blk.get("args")
        if not isinstance(args, dict) or not args:
            raise _err(inst, path + ("args",), "args must be a mapping of API parameter: value")
        kwargs = {}
        for k, v in args.items():
            if isinstance(v, dict) and "when" in v:
                f = _formula(inst, path + ("args", k, "when"), v["when"])
                try:
                    if not F.truth(f, env):
                        continue
                except F.FormulaError as e:
                    raise _err(inst, path + ("args", k, "when"), f"'{f.source}': {e}") from None
            kwargs[k] = _arg(inst, path + ("args", k), v, env)
        defaults = blk.get("defaults", True)
        if not isinstance(defaults, bool):
            raise _err(inst, path + ("defaults",), "defaults must be true or false")
        out.append(Call(inst.name, api, kwargs, defaults, _where(inst, *path), var_values))
    if not out:
        raise NoRecipe(f"the trace: recipe of '{inst.name}' does not apply here (its when: is false)")
    return out


# ------------------------------------------------------------------------------------------------
# turning calls into objects (torch imported lazily)

def materialize(value: Any, device: str = "meta", make: Optional[Callable[[TensorArg, str], Any]] = None):
    """Recipe values → Python/torch objects.  ``make(tensor_arg, device)`` builds a tensor; the
    default allocates uninitialised memory (fine for meta tensors and for tracing, which only
    reads shapes and dtypes; real kernel runs need a ``make`` that fills valid index data)."""
    if isinstance(value, TensorArg):
        if make is not None:
            return make(value, device)
        import torch
        dt = getattr(torch, value.dtype, None)
        if not isinstance(dt, torch.dtype):
            raise DefcError(f"'{value.dtype}' is not a torch dtype")
        return torch.empty(value.shape, dtype=dt, device=device)
    if isinstance(value, SeqArg):
        items = [materialize(v, device, make) for v in value.items]
        return tuple(items) if value.kind == "tuple" else items
    return value


def bind_like_dumper(api_obj, kwargs: Dict[str, Any], defaults: bool) -> Dict[str, Any]:
    """The keyword arguments FlashInfer's auto-dump would hand its template: the call's own
    arguments plus, with ``defaults``, every signature default (which ``.fi_trace()`` alone
    does not fill in, so names such as the MoE ``_act3`` suffix would differ)."""
    if not defaults:
        return dict(kwargs)
    try:
        sig = inspect.signature(api_obj)
        bound = sig.bind_partial(**kwargs)
    except (TypeError, ValueError) as e:
        raise DefcError(f"arguments do not fit the API's signature: {e}") from None
    bound.apply_defaults()
    return dict(bound.arguments)
