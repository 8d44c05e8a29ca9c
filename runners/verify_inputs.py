"""Inputs for ``defc verify``: axis values and tensors for one definition, from its spec's ``verify:``
block (a sequence layout, named builders, fixed vars) and defaults for the rest (``runners/verify.yaml``,
``authoring.validate.choose_axes``); also the block's two errors and the formula helpers it uses."""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from defc.authoring.validate import Unsolvable, choose_axes, numel
from defc.compiler import formula as F
from defc.compiler.errors import DefcError
from defc.compiler.load import load_safe_yaml

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verify.yaml")


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
# formulas and small helpers

def formula_value(text, env, what: str):
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


def int_value(text, env, what: str) -> int:
    v = formula_value(text, env, what)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise RecipeError(f"{what}: expected an integer, got {v!r}")
    return v


def truth(text, env, what) -> bool:
    v = formula_value(text, env, what)
    return bool(v)


def _range(spec, env, what: str) -> Tuple[int, int]:
    if isinstance(spec, list):
        if len(spec) != 2:
            raise RecipeError(f"{what}: a range is [low, high]")
        lo, hi = (int_value(x, env, what) for x in spec)
    else:
        lo = hi = int_value(spec, env, what)
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
    table_pages: the page table is at least this many pages wide (a block table sized for more than
    the longest sequence).

    Arrays (python lists): qo_lens, kv_lens, qo_indptr, kv_indptr (tokens), page_counts, page_indptr,
    page_indices, last_page_len, batch_indices and positions (one per new token: its sequence and its
    position in it), page_table ([count, max_pages], padded with 0).  Scalars (formula symbols):
    seq_count, seq_total_qo, seq_total_kv, seq_num_pages (allocated, with spare pages), seq_used_pages,
    seq_max_pages, seq_max_kv."""
    if not isinstance(spec, dict):
        raise RecipeError("verify.sequences must be a mapping")
    bad = set(spec) - {"count", "qo_len", "kv_len", "page_size", "spare_pages", "kv_at_least_qo", "full_pages",
                       "table_pages"}
    if bad:
        raise RecipeError(f"verify.sequences: unknown field '{sorted(bad)[0]}'")
    count = int_value(spec.get("count", 3), env, "verify.sequences.count")
    qlo, qhi = _range(spec.get("qo_len", 1), env, "verify.sequences.qo_len")
    klo, khi = _range(spec.get("kv_len", [1, 40]), env, "verify.sequences.kv_len")
    ps = int_value(spec.get("page_size", env.get("page_size", 1) or 1), env, "verify.sequences.page_size")
    spare = int_value(spec.get("spare_pages", 2), env, "verify.sequences.spare_pages")
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
    width = max(max_pages, int_value(spec.get("table_pages", 0), env, "verify.sequences.table_pages"))
    table = []
    for b in range(count):
        row = page_indices[page_indptr[b]:page_indptr[b + 1]]
        table.append(row + [0] * (width - len(row)))
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
                 "permutation", "e2m1", "rotary", "sparse_slots")

# The FP4 (e2m1) grid by code: FlashInfer's packed layout stores code(2i) in the low nibble of byte i.
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def builder_kind(spec: Dict[str, Any], what: str) -> str:
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
    kind = builder_kind(spec, what)
    arg = spec[kind]
    if kind == "value":
        return formula_value(arg, env, what)
    if kind == "rsqrt":
        return 1.0 / math.sqrt(float(formula_value(arg, env, what)))
    if shape is None:
        if kind == "fill":
            return formula_value(arg, env, what)
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
    if kind == "sparse_slots":               # a sparse-attention selection, one row per new token
        return _sparse_slots(arg, shape, env, arrays, gen, what).to(tdt)
    if kind == "bytes":
        x = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
        return x.view(tdt) if tdt != torch.uint8 else x
    if kind == "uniform":
        lo, hi = (float(formula_value(v, env, what)) for v in arg)
        x = torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo
    elif kind == "normal":
        mean, std = (0.0, float(formula_value(arg, env, what))) if not isinstance(arg, list) else \
            (float(formula_value(arg[0], env, what)), float(formula_value(arg[1], env, what)))
        x = torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean
    elif kind == "fill":
        v = formula_value(arg, env, what)
        return torch.full(shape, v, dtype=torch.float32 if isinstance(v, float) else torch.int64).to(tdt)
    elif kind == "randint":
        lo, hi = (int_value(v, env, what) for v in arg)
        if hi <= lo:
            raise RecipeError(f"{what}: randint [{lo}, {hi}) is empty")
        return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(tdt)
    elif kind == "permutation":               # distinct values from range(n), e.g. cache slots
        n = int_value(arg, env, what)
        count = math.prod(shape)
        if count > n:
            raise RecipeError(f"{what}: {count} distinct values wanted from range({n})")
        return torch.randperm(n, generator=gen)[:count].reshape(shape).to(tdt)
    elif kind == "e2m1":                      # values of the FP4 grid times a scale (packable: pack_e2m1)
        codes = torch.randint(0, 16, shape, generator=gen)
        x = torch.tensor(E2M1_GRID, dtype=torch.float32)[codes] * float(formula_value(arg, env, what))
    elif kind == "rotary":                    # a cos/sin table: row t is cos(t*f_i) then sin(t*f_i), f_i = base^(-2i/d)
        d = shape[-1]
        if len(shape) < 2 or d % 2:
            raise RecipeError(f"{what}: a rotary table is [positions, even width], got shape {tuple(shape)}")
        base = float(formula_value(arg, env, what))
        freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = torch.arange(shape[-2], dtype=torch.float64)[:, None] * freq[None, :]
        x = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1).to(torch.float32).expand(shape)
    elif kind == "softmax":
        t = float(formula_value(arg, env, what))
        x = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float32) * t, dim=-1)
    elif kind == "eye":
        x = torch.zeros(shape, dtype=torch.float32)
        x[..., :, :] = torch.eye(shape[-2], shape[-1]) * float(formula_value(arg, env, what))
    else:  # pragma: no cover
        raise RecipeError(f"{what}: unknown builder")
    if tdt.is_floating_point:
        return x.to(tdt)
    if tdt == torch.bool:
        return x > 0
    return x.to(tdt)


def _sparse_slots(arg, shape, env, arrays, gen, what):
    """[new tokens, width]: per new token of the sequence layout, distinct cache slots (page *
    page_size + offset; the argument is the layout's page size) of tokens its own sequence holds at
    or before its position, in random order: all of them when they fit (then -1 padding), else a
    random `width` of them."""
    import torch
    if any(k not in arrays for k in ("batch_indices", "positions", "page_indices", "page_indptr")):
        raise RecipeError(f"{what}: sparse_slots needs a verify.sequences layout")
    if len(shape) != 2 or shape[0] != len(arrays["positions"]):
        raise RecipeError(f"{what}: sparse_slots makes [new tokens ({len(arrays['positions'])}), width], "
                          f"the input is {tuple(shape)}")
    ps, width = int_value(arg, env, what), shape[1]
    pages = torch.tensor(arrays["page_indices"], dtype=torch.int64)
    out = torch.full(tuple(shape), -1, dtype=torch.int64)
    for r, (b, p) in enumerate(zip(arrays["batch_indices"], arrays["positions"])):
        pick = torch.randperm(p + 1, generator=gen)[:width]          # positions 0..p of its sequence
        out[r, :len(pick)] = pages[arrays["page_indptr"][b] + pick // ps] * ps + pick % ps
    return out


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
        if "when" in b and not truth(b["when"], env, f"verify.inputs.{k}.when"):
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
        bind(k, int_value(f, env, f"verify.vars.{k}"), "verify.vars")
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


def constraint_problem(defn, scope) -> Optional[str]:
    """Why the definition's constraints do not hold for these axis values and tensors (None when
    they all do).  The constraints are the definition's own text (defc's output), evaluated
    without builtins on values made here."""
    for c in defn.get("constraints") or []:
        try:
            ok = bool(eval(compile(str(c), "<constraint>", "eval"), {"__builtins__": {}}, dict(scope)))  # noqa: S307
        except Exception as e:
            return f"constraint {c!r} cannot be checked on the generated inputs ({type(e).__name__}: {e})"
        if not ok:
            return f"the generated inputs do not satisfy constraint {c!r}"
    return None


def _check_constraints(defn, case: Case) -> None:
    problem = constraint_problem(defn, {**case.values, **case.inputs})
    if problem:
        raise RecipeError(f"{problem} ({', '.join(f'{k}={v}' for k, v in case.var_sizes(defn).items())})")
