"""``defc verify``: each compiled definition's reference against FlashInfer on the same inputs.

For every definition ``defc compile`` would emit for a model (nothing is written):

1. **inputs** that satisfy its axes and constraints, small var sizes: a *sequence layout* gives
   consistent indptr / page indices / last-page lengths / positions / page tables, other tensors
   come from named builders (uniform, normal, fill, randint, softmax, bytes; fp8 by casting, scales
   positive); whatever the spec's ``verify:`` block does not say comes from defaults
   (``runners/verify.yaml``) and ``authoring.validate.choose_axes``;
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
4. outputs are compared with per-dtype tolerances (mismatch fraction and, for low precision, cosine
   similarity), per output; named, explained differences (``verify.differences``) are applied and
   listed in the report.

The ``verify:`` block (free-form for the spec schema, checked here) is documented in docs/gpu.md.
Nothing here knows an op: what differs between ops is in the specs and ``runners/verify.yaml``.
"""
from __future__ import annotations

import ast
import copy
import datetime
import fnmatch
import json
import math
import os
import platform
import random
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from compiler import formula as F
from compiler.errors import DefcError
from compiler.load import load_safe_yaml
from compiler.predictions import compile_predictions
from authoring.validate import numel

from .flashinfer_api import NoDumpEnv, import_flashinfer, resolve_api

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verify.yaml")
VERIFY_KEYS = {"vars", "sequences", "inputs", "kernel", "template", "tolerance", "differences", "seed", "note",
               "notes", "skip"}
KERNEL_KEYS = {"api", "init", "plan", "args", "positional", "returns", "from_args", "requires_sm", "why", "alternative",
               "skip"}
ALTERNATIVE_KEYS = (KERNEL_KEYS - {"alternative"}) | {"when"}
TEMPLATE_KEYS = {"call", "args", "returns", "skip", "sequences", "vars", "inputs"}
STATUS_ORDER = ("fail", "error", "pass", "not-run")


class RecipeError(Exception):
    """The verify: block (or the data it needs) is wrong: reported as status error."""


class NotRun(Exception):
    """The other side cannot run here; the message says why."""


def defaults() -> Dict[str, Any]:
    data = load_safe_yaml(DATA, "verify defaults")
    if not isinstance(data, dict):
        raise DefcError("runners/verify.yaml must be a mapping")
    return data


# ---------------------------------------------------------------------------------------------
# results

@dataclass
class OutputCheck:
    name: str
    ok: bool
    max_abs: Optional[float] = None
    max_rel: Optional[float] = None
    mismatch_pct: Optional[float] = None
    cos_sim: Optional[float] = None
    tolerance: Dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "", {})}


@dataclass
class Result:
    definition: str
    op_type: str
    fi_api: str
    status: str = "not-run"           # pass | fail | error | not-run
    side: str = ""                    # kernel | alternative | template
    ran: str = ""                     # what ran on the other side
    why: str = ""                     # why not (not-run), what failed (error / fail)
    sizes: Dict[str, int] = field(default_factory=dict)
    outputs: List[OutputCheck] = field(default_factory=list)
    differences: List[str] = field(default_factory=list)
    seconds: float = 0.0
    not_run_kernel: str = ""          # when an alternative ran: why the named kernel did not

    @property
    def max_abs(self) -> Optional[float]:
        vals = [o.max_abs for o in self.outputs if o.max_abs is not None]
        return max(vals) if vals else None

    @property
    def max_rel(self) -> Optional[float]:
        vals = [o.max_rel for o in self.outputs if o.max_rel is not None]
        return max(vals) if vals else None

    def as_dict(self) -> Dict[str, Any]:
        d = {"definition": self.definition, "op_type": self.op_type, "fi_api": self.fi_api, "status": self.status,
             "side": self.side, "ran": self.ran, "why": self.why, "sizes": self.sizes,
             "max_abs": self.max_abs, "max_rel": self.max_rel,
             "outputs": [o.as_dict() for o in self.outputs], "differences": self.differences,
             "seconds": round(self.seconds, 3)}
        if self.not_run_kernel:
            d["named_kernel_not_run"] = self.not_run_kernel
        return d

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "Result":
        r = Result(d["definition"], d.get("op_type", ""), d.get("fi_api", ""), d.get("status", "error"),
                   d.get("side", ""), d.get("ran", ""), d.get("why", ""), d.get("sizes") or {},
                   [OutputCheck(**o) for o in d.get("outputs") or []], d.get("differences") or [],
                   float(d.get("seconds") or 0.0), d.get("named_kernel_not_run", ""))
        return r


# ---------------------------------------------------------------------------------------------
# formulas and small helpers

def _formula_value(text, env, what: str):
    if text is None:
        return None
    if isinstance(text, bool) or isinstance(text, (int, float)):
        return text
    if not isinstance(text, str):
        raise RecipeError(f"{what}: expected a formula, got {type(text).__name__}")
    try:
        return F.to_python(F.parse(text).evaluate(env))
    except F.UndefinedSymbol as e:
        raise RecipeError(f"{what}: '{text}' needs '{e.name}', which is not defined here") from None
    except F.FormulaError as e:
        raise RecipeError(f"{what}: '{text}': {e}") from None


def _int_value(text, env, what: str) -> int:
    v = _formula_value(text, env, what)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise RecipeError(f"{what}: expected an integer, got {v!r}")
    return v


def _range(spec, env, what: str) -> Tuple[int, int]:
    if isinstance(spec, list):
        if len(spec) != 2:
            raise RecipeError(f"{what}: a range is [low, high]")
        lo, hi = (_int_value(x, env, what) for x in spec)
    else:
        lo = hi = _int_value(spec, env, what)
    if hi < lo:
        raise RecipeError(f"{what}: empty range [{lo}, {hi}]")
    return lo, hi


def torch_dtype(name: str):
    import torch
    if name == "float4_e2m1":
        return getattr(torch, "float4_e2m1fn_x2", torch.uint8)
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise RecipeError(f"'{name}' is not a torch dtype")
    return dt


# ---------------------------------------------------------------------------------------------
# inputs

def sequence_layout(spec: Dict[str, Any], env: Dict[str, Any], rng: random.Random) -> Tuple[Dict[str, Any], Dict[str, int]]:
    """A batch of sequences: each has qo_len new tokens and kv_len tokens in the cache (new ones
    included; kv_len >= qo_len; full_pages: true rounds kv_len up to whole pages), stored in pages of page_size tokens at shuffled page ids.

    Arrays (python lists): qo_lens, kv_lens, qo_indptr, kv_indptr (tokens), page_counts, page_indptr,
    page_indices, last_page_len, batch_indices and positions (one per new token: its sequence and its
    position in it), page_table ([count, max_pages], padded with 0).  Scalars (formula symbols):
    seq_count, seq_total_qo, seq_total_kv, seq_num_pages (allocated, with spare pages), seq_used_pages,
    seq_max_pages, seq_max_kv."""
    if not isinstance(spec, dict):
        raise RecipeError("verify.sequences must be a mapping")
    bad = set(spec) - {"count", "qo_len", "kv_len", "page_size", "spare_pages", "kv_at_least_qo", "full_pages"}
    if bad:
        raise RecipeError(f"verify.sequences: unknown field '{sorted(bad)[0]}'")
    count = _int_value(spec.get("count", 3), env, "verify.sequences.count")
    qlo, qhi = _range(spec.get("qo_len", 1), env, "verify.sequences.qo_len")
    klo, khi = _range(spec.get("kv_len", [1, 40]), env, "verify.sequences.kv_len")
    ps = _int_value(spec.get("page_size", env.get("page_size", 1) or 1), env, "verify.sequences.page_size")
    spare = _int_value(spec.get("spare_pages", 2), env, "verify.sequences.spare_pages")
    if count < 1 or ps < 1:
        raise RecipeError("verify.sequences: count and page_size must be positive")
    qo_lens = [rng.randint(qlo, qhi) for _ in range(count)]
    kv_lens = [rng.randint(klo, khi) for _ in range(count)]
    if spec.get("kv_at_least_qo", True):
        kv_lens = [max(k, q) for k, q in zip(kv_lens, qo_lens)]
    if spec.get("full_pages"):               # every sequence ends on a page boundary
        kv_lens = [(k + ps - 1) // ps * ps for k in kv_lens]
    page_counts = [(k + ps - 1) // ps for k in kv_lens]
    used = sum(page_counts)
    num_pages = used + spare
    ids = list(range(num_pages))
    rng.shuffle(ids)
    page_indices = ids[:used]

    def cums(xs):
        out = [0]
        for x in xs:
            out.append(out[-1] + x)
        return out
    page_indptr = cums(page_counts)
    max_pages = max(page_counts) if page_counts else 0
    table = []
    for b in range(count):
        row = page_indices[page_indptr[b]:page_indptr[b + 1]]
        table.append(row + [0] * (max_pages - len(row)))
    batch_indices, positions = [], []
    for b, (q, k) in enumerate(zip(qo_lens, kv_lens)):
        for j in range(q):
            batch_indices.append(b)
            positions.append(k - q + j)
    arrays = {
        "qo_lens": qo_lens, "kv_lens": kv_lens, "qo_indptr": cums(qo_lens), "kv_indptr": cums(kv_lens),
        "page_counts": page_counts, "page_indptr": page_indptr, "page_indices": page_indices,
        "last_page_len": [k - (c - 1) * ps if c else 0 for k, c in zip(kv_lens, page_counts)],
        "batch_indices": batch_indices, "positions": positions, "page_table": table,
    }
    scalars = {"seq_count": count, "seq_total_qo": sum(qo_lens), "seq_total_kv": sum(kv_lens),
               "seq_num_pages": num_pages, "seq_used_pages": used, "seq_max_pages": max_pages,
               "seq_max_kv": max(kv_lens)}
    return arrays, scalars


BUILDER_KINDS = ("layout", "uniform", "normal", "fill", "randint", "softmax", "bytes", "value", "rsqrt", "eye",
                 "permutation")


def _builder_kind(spec: Dict[str, Any], what: str) -> str:
    kinds = [k for k in BUILDER_KINDS if k in spec]
    if len(kinds) != 1:
        raise RecipeError(f"{what}: an input builder needs exactly one of {', '.join(BUILDER_KINDS)}")
    extra = set(spec) - set(BUILDER_KINDS) - {"dtype", "when", "tie"}
    if extra:
        raise RecipeError(f"{what}: unknown builder field '{sorted(extra)[0]}'")
    return kinds[0]


def build_tensor(spec: Dict[str, Any], shape: Optional[Tuple[int, ...]], dtype: str, env: Dict[str, Any],
                 arrays: Dict[str, Any], gen, what: str):
    """One input from a builder; shape None is a scalar."""
    import torch
    kind = _builder_kind(spec, what)
    arg = spec[kind]
    if kind == "value":
        return _formula_value(arg, env, what)
    if kind == "rsqrt":
        return 1.0 / math.sqrt(float(_formula_value(arg, env, what)))
    if shape is None:
        if kind == "fill":
            return _formula_value(arg, env, what)
        raise RecipeError(f"{what}: a scalar input takes value/rsqrt/fill")
    tdt = torch_dtype(dtype)
    if spec.get("tie"):                      # one value along these dimensions (a broadcast parameter)
        dims = [d % len(shape) for d in spec["tie"]]
        small = tuple(1 if i in dims else n for i, n in enumerate(shape))
        inner = {k: v for k, v in spec.items() if k != "tie"}
        return build_tensor(inner, small, dtype, env, arrays, gen, what).expand(shape)   # stride 0, as served
    if kind == "layout":
        if arg not in arrays:
            raise RecipeError(f"{what}: no layout array '{arg}' (verify.sequences gives: {', '.join(sorted(arrays)) or 'none'})")
        t = torch.tensor(arrays[arg], dtype=torch.int64)
        if tuple(t.shape) != tuple(shape):
            raise RecipeError(f"{what}: layout array '{arg}' has shape {tuple(t.shape)}, the input needs {tuple(shape)}")
        return t.to(tdt)
    if kind == "bytes":
        x = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
        return x.view(tdt) if tdt != torch.uint8 else x
    if kind == "uniform":
        lo, hi = (float(_formula_value(v, env, what)) for v in arg)
        x = torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo
    elif kind == "normal":
        mean, std = (0.0, float(_formula_value(arg, env, what))) if not isinstance(arg, list) else \
            (float(_formula_value(arg[0], env, what)), float(_formula_value(arg[1], env, what)))
        x = torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean
    elif kind == "fill":
        v = _formula_value(arg, env, what)
        return torch.full(shape, v, dtype=torch.float32 if isinstance(v, float) else torch.int64).to(tdt)
    elif kind == "randint":
        lo, hi = (_int_value(v, env, what) for v in arg)
        if hi <= lo:
            raise RecipeError(f"{what}: randint [{lo}, {hi}) is empty")
        return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(tdt)
    elif kind == "permutation":               # distinct values from range(n), e.g. cache slots
        n = _int_value(arg, env, what)
        count = math.prod(shape)
        if count > n:
            raise RecipeError(f"{what}: {count} distinct values wanted from range({n})")
        return torch.randperm(n, generator=gen)[:count].reshape(shape).to(tdt)
    elif kind == "softmax":
        t = float(_formula_value(arg, env, what))
        x = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float32) * t, dim=-1)
    elif kind == "eye":
        x = torch.zeros(shape, dtype=torch.float32)
        x[..., :, :] = torch.eye(shape[-2], shape[-1]) * float(_formula_value(arg, env, what))
    else:  # pragma: no cover
        raise RecipeError(f"{what}: unknown builder")
    if tdt.is_floating_point:
        return x.to(tdt)
    if tdt == torch.bool:
        return x > 0
    return x.to(tdt)


def default_tensor(shape, dtype: str, var_min: int, gen):
    """Inputs the verify: block does not describe: floats uniform in [-1, 1), fp4 random bytes,
    integers in [lo, m-1] (m the smallest var-axis value, so they index any var-sized dimension),
    scalars 0.5 / 1 / False."""
    import torch
    tdt = torch_dtype(dtype)
    if shape is None:
        return False if dtype == "bool" else 1 if not tdt.is_floating_point else 0.5
    if dtype == "float4_e2m1":
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).view(tdt)
    if tdt == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if tdt.is_floating_point:
        return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1).to(tdt)
    lo = 1 if var_min >= 2 else 0
    hi = max(lo, var_min - 1)
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int64).to(tdt)


@dataclass
class Case:
    values: Dict[str, int]                      # every axis
    inputs: Dict[str, Any]                      # definition inputs, in order (CPU tensors / scalars)
    arrays: Dict[str, Any]                      # layout arrays (lists)
    env: Dict[str, Any]                         # symbols for formulas

    def var_sizes(self, defn) -> Dict[str, int]:
        return {k: v for k, v in self.values.items() if (defn["axes"].get(k) or {}).get("type") == "var"}




def build_case(defn: Dict[str, Any], inst, vb: Dict[str, Any], seed: int, cfg: Dict[str, Any],
               limit: Optional[int] = None, where: str = "") -> Case:
    """Axis values and input tensors for one definition."""
    import torch
    from authoring.validate import Unsolvable, choose_axes
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    axes = defn.get("axes") or {}
    inputs = defn.get("inputs") or {}
    env: Dict[str, Any] = dict(inst.env) if inst is not None else {}
    values: Dict[str, int] = {k: int(a["value"]) for k, a in axes.items() if a.get("type") == "const"}
    env.update(values)
    arrays: Dict[str, Any] = {}
    if "sequences" in vb:
        arrays, scalars = sequence_layout(vb["sequences"], env, rng)
        env.update(scalars)
    specs: Dict[str, Dict[str, Any]] = {}
    for k, b in (vb.get("inputs") or {}).items():
        if not isinstance(b, dict):
            raise RecipeError(f"verify.inputs.{k}: a builder is a mapping (e.g. {{uniform: [0, 1]}})")
        if "when" in b and not _truth(b["when"], env, f"verify.inputs.{k}.when"):
            continue
        if k not in inputs:
            raise RecipeError(f"verify.inputs.{k}: the definition has no input '{k}' (has: {', '.join(inputs)})")
        specs[k] = b
    preset: Dict[str, int] = {}
    given: Dict[str, List[int]] = {}
    built: Dict[str, Any] = {}
    var = {k for k, a in axes.items() if a.get("type") == "var"}

    def bind(axis, n, why):
        if axis in values and values[axis] != n:
            raise RecipeError(f"axis '{axis}' would be {values[axis]} and {n} ({why})")
        if axis in var:
            preset[axis] = n
        values[axis] = n
        env[axis] = n
    for k, b in specs.items():                  # layout arrays first: they fix var axes
        if "layout" not in b:
            continue
        arr = arrays.get(b["layout"])
        if arr is None:
            raise RecipeError(f"verify.inputs.{k}: no layout array '{b['layout']}' "
                              f"(verify.sequences gives: {', '.join(sorted(arrays)) or 'none'})")
        shape = inputs[k].get("shape") or []
        dims = [len(arr)] + ([len(arr[0])] if arr and isinstance(arr[0], list) else [])
        if len(dims) != len(shape):
            raise RecipeError(f"verify.inputs.{k}: layout array '{b['layout']}' has {len(dims)} dimension(s), "
                              f"the input {len(shape)}")
        for a, n in zip(shape, dims):
            bind(a, n, f"from layout array '{b['layout']}' for input '{k}'")
        if len(shape) == 1:
            given[k] = list(arr)
    for k, f in (vb.get("vars") or {}).items():
        if k not in axes:
            raise RecipeError(f"verify.vars.{k}: the definition has no axis '{k}'")
        bind(k, _int_value(f, env, f"verify.vars.{k}"), "verify.vars")
    d2 = dict(defn)
    try:
        vals, indptrs = choose_axes(d2, rng, preset=preset, given=given)
    except Unsolvable as e:
        raise RecipeError(f"cannot size the axes: {e}") from None
    for k, v in vals.items():
        if k not in values:
            values[k] = v
            env[k] = v
    if limit is not None:
        n = numel(defn, values)
        if n > limit:
            raise NotRun(f"inputs and outputs need {n:,} elements (limit {limit:,}{where}; --max-numel raises it)")
    var_min = min([values[k] for k in var] or [2])
    for k, t in inputs.items():
        shape = t.get("shape")
        dims = None if shape is None else tuple(values[a] for a in shape)
        if k in specs:
            built[k] = build_tensor(specs[k], dims, t["dtype"], env, arrays, gen, f"verify.inputs.{k}")
        elif k in indptrs:
            built[k] = torch.tensor(indptrs[k], dtype=torch_dtype(t["dtype"]))
        else:
            built[k] = default_tensor(dims, t["dtype"], var_min, gen)
    case = Case(values, built, arrays, env)
    _check_constraints(defn, case)
    return case


def _truth(text, env, what) -> bool:
    v = _formula_value(text, env, what)
    return bool(v)


def _check_constraints(defn, case: Case) -> None:
    scope = dict(case.values)
    scope.update(case.inputs)
    for c in defn.get("constraints") or []:
        try:
            # the definition's own constraint text (defc's output), on tensors made here
            ok = bool(eval(compile(str(c), "<constraint>", "eval"), {"__builtins__": {}}, dict(scope)))  # noqa: S307
        except Exception as e:
            raise RecipeError(f"constraint {c!r} cannot be checked on the generated inputs ({type(e).__name__}: {e})")
        if not ok:
            raise RecipeError(f"the generated inputs do not satisfy constraint {c!r} "
                              f"({', '.join(f'{k}={v}' for k, v in case.var_sizes(defn).items())})")


# ---------------------------------------------------------------------------------------------
# argument recipes (kernel args, wrapper init/plan, template args)

def resolve_arg(spec, case: Case, device: str, what: str, tensors: Dict[str, Any]):
    """A value in the verify: argument syntax → a Python/torch object on ``device``.

    ``name`` an input (its tensor, a fresh copy on device); ``{tensor: name, dtype: d}`` cast;
    ``{layout: array, dtype: int32}`` a layout array; ``{value: formula}``; ``{dtype: bfloat16}``
    (spelled ``{torch_dtype: …}``) a torch dtype; ``{tuple|list: [...]}``; ``{zeros|empty: [sizes],
    dtype: d}`` a new tensor; ``{full: [sizes], fill: formula, dtype: d}``;
    ``{expr: "exp(-exp(A_log) * softplus(a + dt_bias))", dtype: d}`` an elementwise expression of inputs;
    ``{tensor: x, column_major: true}`` a 2-D input stored column-major;
    ``{workspace: bytes}`` a zeroed uint8 buffer; ``{cat: [a, b], dim: -1,
    shape: [...]}`` tensors concatenated (then viewed); null is None."""
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
                         "output", "cat", "full", "expr") if k in spec]
    if len(kinds) != 1:
        raise RecipeError(f"{what}: an argument needs exactly one of tensor/layout/value/torch_dtype/tuple/list/"
                          f"zeros/empty/full/workspace/cat/expr")
    kind = kinds[0]
    extra = set(spec) - {kind, "dtype", "when", "shape"} - {"cat": {"dim"}, "full": {"fill"},
                                                            "tensor": {"column_major"}}.get(kind, set())
    if extra:
        raise RecipeError(f"{what}: unknown argument field '{sorted(extra)[0]}'")
    if kind == "value":
        return _formula_value(spec["value"], case.env, what)
    if kind == "torch_dtype":
        return torch_dtype(spec["torch_dtype"])
    if kind in ("tuple", "list"):
        items = [resolve_arg(x, case, device, f"{what}[{i}]", tensors) for i, x in enumerate(spec[kind])]
        return tuple(items) if kind == "tuple" else items
    if kind == "workspace":
        n = _int_value(spec["workspace"], case.env, what)
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
    if kind == "full":
        dims = tuple(_int_value(x, case.env, what) for x in spec["full"])
        return torch.full(dims, _formula_value(spec.get("fill", 0), case.env, what),
                          dtype=torch_dtype(spec.get("dtype", "float32")), device=device)
    if kind in ("zeros", "empty"):
        dims = tuple(_int_value(x, case.env, what) for x in spec[kind])
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
            v = v.reshape(tuple(_int_value(x, case.env, what) for x in spec["shape"]))
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
            v = v.reshape(tuple(_int_value(x, case.env, what) for x in spec["shape"]))
        if spec.get("column_major"):
            # the same values stored column-major (a kernel that reads a 2-D scale tensor MN-major)
            if v.dim() != 2:
                raise RecipeError(f"{what}: column_major needs a 2-D tensor, '{name}' has {v.dim()} dimensions")
            v = v.t().contiguous().t()
        return v
    return v


def tensor_expr(text: str, tensors: Dict[str, Any], env: Dict[str, Any], what: str):
    """Evaluate an elementwise expression over input tensors and symbols: numbers, names, + - * / **,
    unary minus and the elementwise functions listed below.  Computed in float32.  Nothing else is allowed."""
    import ast
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
        if isinstance(v, dict) and "when" in v and not _truth(v["when"], case.env, f"{what}.{k}.when"):
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
    from .recipes import NoRecipe, SeqArg, TensorArg, calls_for
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
    return call.api, {k: mat(v) for k, v in call.kwargs.items()}


# ---------------------------------------------------------------------------------------------
# running the three sides

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


def _api_object(path: str):
    """(owner class or None, attribute name, object) for a dotted API path; a class means its run()."""
    import importlib
    import inspect
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
            raise NotRun(first_error or f"FlashInfer {_fi_version()} has no '{path}'") from None
        if inspect.isclass(obj):
            return obj, "run", getattr(obj, "run")
        if owner is not None and inspect.isclass(owner):
            return owner, parts[-1], obj
        return None, parts[-1], obj
    raise NotRun(f"cannot import any module of '{path}'")


def _fi_version() -> str:
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


def call_kernel(kb: Dict[str, Any], inst, case: Case, device: str, defn) -> Tuple[str, Dict[str, Any]]:
    """Call the FlashInfer API as kb (a verify.kernel block, or its alternative) says; outputs by name."""
    import torch
    tensors = device_copies(case, device)
    api, positional, args = kernel_call_args(kb, inst, case, device, tensors, "kernel")
    owner, attr, fn = _api_object(api)
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
        outs[out_name] = _arg_after_call(args, arg_path, f"verify.kernel.from_args.{out_name}")
    return shown, outs


def _arg_after_call(args: Dict[str, Any], path: str, what: str):
    """'input' or 'paged_kv_cache[0]': an argument (in-place kernels write into it)."""
    m = re.match(r"^([A-Za-z_]\w*)(?:\[(\d+)\])?$", str(path))
    if not m or m.group(1) not in args:
        raise RecipeError(f"{what}: '{path}' is not an argument of the call (has: {', '.join(args)})")
    v = args[m.group(1)]
    if m.group(2) is not None:
        v = v[int(m.group(2))]
    return v


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
        mod = _template_module(names[-1])
        if mod is None or any(not hasattr(mod, m) for m in missing):
            raise NotRun(f"FlashInfer's template reference {names[-1]} ({doc['name']}) is not self-contained: "
                         f"it uses {', '.join(missing)}, which its JSON does not define")
        ns2 = dict(vars(mod))
        exec(compile(src, f"<template reference {doc['name']}>", "exec"), ns2)  # noqa: S102
        doc = dict(doc)
        doc["_defc_note"] = (f"the template JSON's reference is not self-contained ({', '.join(missing)} missing); "
                             f"taken from {mod.__name__}")
        return doc, ns2[names[-1]]
    return doc, ns[names[-1]]


def _builtin_names():
    import builtins
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


def _template_module(func_name: str):
    for name, mod in list(sys.modules.items()):
        if name.startswith("flashinfer.trace.templates") and mod is not None and hasattr(mod, func_name):
            return mod
    return None


def call_template(tb: Dict[str, Any], kb: Dict[str, Any], inst, case: Case, defn) -> Tuple[str, Dict[str, Any]]:
    import inspect
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


# ---------------------------------------------------------------------------------------------
# comparison

def tolerance_for(out_name: str, dtype: str, vb: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
    tol = dict((cfg.get("tolerances") or {}).get(dtype) or {"max_mismatch_pct": 0.0})
    over = vb.get("tolerance") or {}
    if not isinstance(over, dict):
        raise RecipeError("verify.tolerance must be a mapping")
    for key in ("*", out_name):
        v = over.get(key)
        if isinstance(v, dict):
            tol.update(v)
    return tol


def compare(name: str, ours, theirs, tol: Dict[str, Any]) -> OutputCheck:
    import torch
    if not isinstance(ours, torch.Tensor) or not isinstance(theirs, torch.Tensor):
        ok = ours == theirs
        return OutputCheck(name, bool(ok), tolerance=tol, note="" if ok else f"{theirs!r} != {ours!r}")
    a = theirs.detach().to("cpu")
    b = ours.detach().to("cpu")
    reshaped = ""
    if tuple(a.shape) != tuple(b.shape):
        if a.numel() != b.numel():
            return OutputCheck(name, False, tolerance=tol, note=f"shape {tuple(a.shape)} vs reference {tuple(b.shape)}")
        # the API's own layout of the same elements (e.g. heads flattened into one dimension)
        reshaped = f"compared as {tuple(b.shape)} (returned as {tuple(a.shape)})"
        a = a.reshape(b.shape)
    if a.numel() == 0:
        return OutputCheck(name, True, tolerance=tol)
    floats = a.is_floating_point() or b.is_floating_point()
    maxpct = float(tol.get("max_mismatch_pct", 0.0))
    if not floats:
        if {a.dtype, b.dtype} == {torch.uint8, torch.int8}:   # the same bytes (e.g. UE8M0 scales)
            a, b = a.view(torch.uint8), b.view(torch.uint8)
        bad = (a.to(torch.int64) != b.to(torch.int64))
        pct = 100.0 * bad.float().mean().item()
        diff = (a.to(torch.int64) - b.to(torch.int64)).abs()
        return OutputCheck(name, pct <= maxpct, float(diff.max().item()), None, round(pct, 4), None, tol)
    if "float4" in str(a.dtype) or "float4" in str(b.dtype):
        a, b = fp4_values(a), fp4_values(b)
    af, bf = a.to(torch.float32), b.to(torch.float32)
    both_inf = torch.isinf(af) & torch.isinf(bf) & (torch.sign(af) == torch.sign(bf))
    nan_same = torch.isnan(af) & torch.isnan(bf)
    fin = torch.isfinite(af) & torch.isfinite(bf)
    diff = torch.where(fin, (af - bf).abs(), torch.zeros_like(af))
    rel = diff / bf.abs().clamp_min(1e-6)
    rtol, atol = float(tol.get("rtol", 0.0)), float(tol.get("atol", 0.0))
    close = (fin & (diff <= atol + rtol * bf.abs())) | both_inf | nan_same
    pct = 100.0 * (1.0 - close.float().mean().item())
    cos = None
    if fin.any():
        x, y = af[fin], bf[fin]
        nx, ny = x.norm().item(), y.norm().item()
        cos = 1.0 if nx == 0 and ny == 0 else (0.0 if nx == 0 or ny == 0 else float((x * y).sum().item() / (nx * ny)))
    ok = pct <= maxpct
    note = ""
    if "min_cos_sim" in tol and cos is not None and cos < float(tol["min_cos_sim"]):
        ok = False
        note = f"cosine similarity {cos:.6f} < {tol['min_cos_sim']}"
    if not ok and not note:
        note = f"{pct:.3f}% of elements outside atol {atol} + rtol {rtol}·|ref| (allowed {maxpct}%)"
    if reshaped:
        note = f"{note}; {reshaped}" if note else reshaped
    return OutputCheck(name, ok, _r(diff.max().item()), _r(rel.max().item()), round(pct, 4),
                       None if cos is None else round(cos, 7), tol, note)


E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def fp4_values(t):
    """Packed float4_e2m1 (two per byte) → float32 values, last dimension doubled (low nibble first)."""
    import torch
    u = t.view(torch.uint8).to(torch.int64)
    lut = torch.tensor(E2M1, dtype=torch.float32)
    return torch.stack([lut[u & 15], lut[u >> 4]], dim=-1).reshape(*u.shape[:-1], u.shape[-1] * 2)


def _r(x: float) -> float:
    return float(f"{x:.4g}")


# ---------------------------------------------------------------------------------------------
# one definition

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
        if "when" in d and env is not None and not _truth(d["when"], env, f"verify.differences[{i}].when"):
            continue
        out.append(d)
    return out


def _check_block(vb) -> None:
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


def _skip_reason(skip, env, what) -> Optional[str]:
    """skip: 'why' (always) or {when: formula, why: text}."""
    if not skip:
        return None
    if isinstance(skip, str):
        return skip
    if not isinstance(skip, dict) or not skip.get("why"):
        raise RecipeError(f"{what} is a reason, or {{when: formula, why: reason}}")
    if "when" in skip and not _truth(skip["when"], env, f"{what}.when"):
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


def verify_one(defn: Dict[str, Any], inst, device: str, cfg: Dict[str, Any], seed: int = 0,
               max_numel: Optional[int] = None) -> Result:
    import torch
    fi_api = next((t.split(":", 1)[1] for t in defn.get("tags") or [] if t.startswith("fi_api:")), "")
    res = Result(defn["name"], defn.get("op_type", ""), fi_api)
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
    _check_block(vb)
    kb = vb.get("kernel") or {}
    tb = vb.get("template") or {}
    cuda = device.startswith("cuda")
    if not res.fi_api and not kb.get("api") and not kb.get("alternative"):
        raise NotRun("no FlashInfer API (the spec's fi_api is null)")
    senv = dict(inst.env) if inst is not None else {}
    senv.update({k: a["value"] for k, a in (defn.get("axes") or {}).items() if a.get("type") == "const"})
    why = _skip_reason(vb.get("skip"), senv, "verify.skip")
    if why:
        raise NotRun(why)
    if not cuda:
        why = _skip_reason(tb.get("skip"), senv, "verify.template.skip")
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
        theirs = _kernel_side(res, kb, inst, case, device, defn, cfg)
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


def alternative_for(kb: Dict[str, Any], env: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The kernel block's alternative when it applies to this definition (its optional when: holds)."""
    alt = kb.get("alternative")
    if not alt:
        return None
    if "when" in alt and not _truth(alt["when"], env, "verify.kernel.alternative.when"):
        return None
    return alt


def _kernel_side(res: Result, kb, inst, case: Case, device: str, defn, cfg):
    sm = gpu_sm()
    named_why = ""
    req = kb.get("requires_sm")
    kskip = _skip_reason(kb.get("skip"), case.env, "verify.kernel.skip")
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
    import concurrent.futures as cf
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool
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
# reports

def environment(device: str) -> Dict[str, Any]:
    env: Dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch
        env["torch"] = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            env["device"] = torch.cuda.get_device_name()
            a, b = torch.cuda.get_device_capability()
            env["compute_capability"] = f"{a}.{b}"
            env["cuda"] = torch.version.cuda
        else:
            env["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    except Exception as e:
        env["torch"] = f"(not importable: {e})"
    env["flashinfer"] = _fi_version()
    try:
        from defc import __version__
        env["defc"] = __version__
    except Exception:
        env["defc"] = "?"
    try:
        import subprocess
        from compiler.paths import PROJECT_ROOT
        rev = subprocess.run(["git", "-C", PROJECT_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0:
            env["defc_commit"] = rev.stdout.strip()
            dirty = subprocess.run(["git", "-C", PROJECT_ROOT, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            if dirty.returncode == 0 and dirty.stdout.strip():
                env["defc_commit"] += "+local changes"     # the working tree is not that commit
    except Exception:
        pass
    return env


def summary(results: Sequence[Result]) -> Dict[str, int]:
    out = {s: 0 for s in STATUS_ORDER}
    for r in results:
        out[r.status] = out.get(r.status, 0) + 1
    out["total"] = len(results)
    return out


def report_data(model: str, servings: str, command: str, device: str, results: Sequence[Result],
                started: str, seconds: float, complete: bool, env: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {"tool": "defc verify", "model": model, "serving": servings, "command": command,
            "date": started, "seconds": round(seconds, 1), "complete": complete,
            "environment": env or environment(device), "device_option": device,
            "summary": summary(results), "results": [r.as_dict() for r in results]}


def _fmt(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.3g}"


def _tol_text(r: Result) -> str:
    seen = []
    for o in r.outputs:
        t = o.tolerance
        if not t:
            continue
        parts = []
        if "rtol" in t or "atol" in t:
            parts.append(f"rtol {t.get('rtol', 0):g} atol {t.get('atol', 0):g}")
        if t.get("max_mismatch_pct"):
            parts.append(f"≤{t['max_mismatch_pct']:g}% off")
        if "min_cos_sim" in t:
            parts.append(f"cos≥{t['min_cos_sim']:g}")
        if not parts:
            parts.append("exact")
        s = f"{o.name}: " + ", ".join(parts)
        if s not in seen:
            seen.append(s)
    return "; ".join(seen)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(data: Dict[str, Any]) -> str:
    env = data["environment"]
    s = data["summary"]
    lines = [f"# defc verify — {data['model']} ({data['serving']}, --device {data['device_option']})", "",
             f"- device: {env.get('device', '?')}" + (f" (SM {env['compute_capability']}, CUDA {env.get('cuda')})"
                                                      if env.get("compute_capability") else ""),
             f"- torch {env.get('torch')}, flashinfer {env.get('flashinfer')}, defc {env.get('defc')}"
             + (f" ({env['defc_commit']})" if env.get("defc_commit") else "") + f", Python {env.get('python')}",
             f"- date: {data['date']}; {data['seconds']} s" + ("" if data["complete"] else " — INCOMPLETE (cut short)"),
             f"- command: `{data['command']}`",
             f"- {s['total']} definitions: {s['pass']} pass, {s['fail']} fail, {s['error']} error, "
             f"{s['not-run']} not run", "",
             "| definition | fi_api | other side: what ran, or why not | max abs err | max rel err | tolerance "
             "| result | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        what = r["ran"] if r["status"] in ("pass", "fail") else r["why"]
        if r["status"] in ("pass", "fail") and r.get("named_kernel_not_run"):
            what += f" — named kernel not run: {r['named_kernel_not_run']}"
        if r["status"] == "fail":
            what += f" — {r['why']}"
        if r.get("differences"):
            what += f" — named differences: {', '.join(r['differences'])}"
        res = Result.from_dict(r)
        lines.append("| " + " | ".join(_md_cell(x) for x in (
            r["definition"], r["fi_api"] or "—", what, _fmt(r["max_abs"]), _fmt(r["max_rel"]),
            _tol_text(res) if r["status"] in ("pass", "fail") else "", r["status"].upper(),
            f"{r['seconds']:.2f}")) + " |")
    lines.append("")
    lines.append("Var-axis sizes used, per definition: see the JSON report (`results[].sizes`).")
    return "\n".join(lines) + "\n"


def write_report(report_dir: str, stem: str, data: Dict[str, Any]) -> Tuple[str, str]:
    from compiler.write import atomic_write_text
    os.makedirs(report_dir, exist_ok=True)
    jp = os.path.join(report_dir, stem + ".json")
    mp_ = os.path.join(report_dir, stem + ".md")
    atomic_write_text(jp, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(mp_, report_markdown(data))
    return jp, mp_


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def check_kernel_call(defn: Dict[str, Any], inst, cfg: Optional[Dict[str, Any]] = None) -> List[str]:
    """Without a GPU: the verify.kernel call (and its alternative) resolved on CPU inputs and bound to the
    API's signature (constructor, plan() and the call itself).  Problems as one-line strings."""
    import inspect
    cfg = cfg or defaults()
    vb = (inst.verify if inst is not None else None) or {}
    problems: List[str] = []
    try:
        _check_block(vb)
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
            owner, attr, fn = _api_object(api)
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
                _arg_after_call(args, path, f"verify.{label}.from_args.{out_name}")
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
