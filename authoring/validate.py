"""``defc validate``: a dataset's definitions against flashinfer-bench, plus the checks of its newer
``flashinfer-bench validate`` and, optionally, a CPU run of every reference.

For each ``definitions/{op_type}/{name}.json``:

* layout: the file name is the definition's name, the folder its op_type, names are unique, and
  JSON files elsewhere under ``definitions/`` (which flashinfer-bench skips) are reported;
* the document: concrete dtypes, no name both input and output, shapes name declared axes, const
  axes positive, every var axis bound by an input, constraints are Python expressions, the reference
  compiles and defines a top-level ``run``, tags are well formed, then
  ``flashinfer_bench.data.Definition`` itself; missing descriptions are warnings;
* with ``run_references``: inputs are made from the shapes and dtypes for small var-axis values
  (constraints such as ``len_indptr == batch_size + 1`` are solved, ``n == indptr[-1].item()``
  builds a consistent indptr), the reference runs on CPU and its outputs must have the declared
  shapes and dtypes.

Findings are ``[ERROR]``/``[WARNING]`` lines ``file:line:col: error|warning: message``; a report is
written under ``DATASET/reports/`` (never over an existing file).
"""
from __future__ import annotations

import ast
import datetime
import json
import os
import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from defc.compiler.check import DTYPES
from defc.compiler.errors import DefcError, Location
from defc.compiler.load import display_path, load_yaml

from .lint import fib_definition_error, has_top_level_run, tag_problem

INT_DTYPES = ("int64", "int32", "int16", "int8")
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1")
DEFAULT_MAX_NUMEL = 1 << 26


@dataclass
class Finding:
    level: str                 # ERROR | WARNING | INFO
    file: str
    line: int
    col: int
    message: str
    definition: str = ""

    def __str__(self) -> str:
        loc = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        sev = {"ERROR": "error", "WARNING": "warning"}.get(self.level, "note")
        return f"[{self.level}] {loc}: {sev}: {self.message}"


@dataclass
class Report:
    root: str
    findings: List[Finding] = field(default_factory=list)
    definitions: Dict[str, str] = field(default_factory=dict)      # name (or file) -> ok | warning | error
    ran: int = 0

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.level == "ERROR")

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.level == "WARNING")

    def status_of(self, key: str) -> str:
        levels = {f.level for f in self.findings if f.definition == key}
        return "error" if "ERROR" in levels else "warning" if "WARNING" in levels else "ok"

    def summary(self) -> str:
        counts = {"ok": 0, "warning": 0, "error": 0}
        for k in self.definitions:
            counts[self.status_of(k)] += 1
        return (f"{len(self.definitions)} definitions: {counts['ok']} ok, {counts['warning']} warning, "
                f"{counts['error']} error")


class _Doc:
    """One definition file: its data and where its keys are."""

    def __init__(self, path: str, key: str, report: Report):
        self.path, self.shown, self.key, self.report = path, display_path(path), key, report
        self.data: Any = None
        self.located = None

    def where(self, path=()) -> Tuple[int, int]:
        if self.located is not None:
            loc = self.located.where(path)
            return loc.line, loc.col
        return 1, 1

    def add(self, level: str, message: str, path=()):
        line, col = self.where(path)
        self.report.findings.append(Finding(level, self.shown, line, col, message, self.key))


def equalities(constraints) -> List[Tuple[str, Any, Any]]:
    """(text, left side, right side) of each constraint that is one equality ``a == b`` (as syntax trees)."""
    out = []
    for c in constraints:
        try:
            tree = ast.parse(str(c), mode="eval").body
        except SyntaxError:
            continue
        if isinstance(tree, ast.Compare) and len(tree.ops) == 1 and isinstance(tree.ops[0], ast.Eq):
            out.append((str(c), tree.left, tree.comparators[0]))
    return out

def torch_dtype(name: str):
    import torch
    if name == "float4_e2m1":
        return getattr(torch, "float4_e2m1fn_x2")
    return getattr(torch, name)


# ---------------------------------------------------------------------------------------------
# static checks

def _load(doc: _Doc) -> bool:
    try:
        with open(doc.path, "rb") as fh:
            raw = fh.read()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        doc.add("ERROR", f"cannot read definition: {e}")
        return False
    try:
        doc.data = json.loads(text)
    except json.JSONDecodeError as e:
        doc.report.findings.append(Finding("ERROR", doc.shown, e.lineno, e.colno, f"parse error: invalid JSON: {e.msg}",
                                           doc.key))
        return False
    except RecursionError:
        doc.add("ERROR", "parse error: JSON nested too deeply")
        return False
    try:
        doc.located = load_yaml(doc.path, "definition")   # JSON is YAML: this gives line/column positions
    except DefcError:
        doc.located = None
    if not isinstance(doc.data, dict):
        doc.add("ERROR", "parse error: a definition must be a JSON object")
        return False
    return True


def _static(doc: _Doc, op_dir: str) -> None:
    d = doc.data
    stem = os.path.basename(doc.path)[:-5]
    name, op_type = d.get("name"), d.get("op_type")
    if name != stem:
        doc.add("ERROR", f"definition name mismatch: path says '{stem}', JSON says '{name}'", ("name",))
    if op_type != op_dir:
        doc.add("ERROR", f"definition op_type mismatch: path says '{op_dir}', JSON says '{op_type}'", ("op_type",))
    axes = d.get("axes") if isinstance(d.get("axes"), dict) else {}
    inputs = d.get("inputs") if isinstance(d.get("inputs"), dict) else {}
    outputs = d.get("outputs") if isinstance(d.get("outputs"), dict) else {}
    for k, a in axes.items():
        if not isinstance(a, dict):
            continue
        if a.get("type") == "const":
            v = a.get("value")
            if isinstance(v, bool) or not isinstance(v, int):
                doc.add("ERROR", f"const axis '{k}' has no integer value ({v!r})", ("axes", k))
            elif v <= 0:
                doc.add("ERROR", f"const axis '{k}' must be positive, got {v}", ("axes", k, "value"))
        elif a.get("type") != "var":
            doc.add("ERROR", f"axis '{k}' has type {a.get('type')!r} (expected 'const' or 'var')", ("axes", k))
    bound = set()
    for sect, tensors in (("inputs", inputs), ("outputs", outputs)):
        for k, t in tensors.items():
            if not isinstance(t, dict):
                doc.add("ERROR", f"{sect}.{k} must be an object", (sect, k))
                continue
            dt = t.get("dtype")
            if dt not in DTYPES:
                doc.add("ERROR", f"{sect}.{k}: dtype {dt!r} is not concrete (one of: {', '.join(DTYPES)})",
                        (sect, k, "dtype"))
            if "shape" not in t:
                doc.add("ERROR", f"{sect}.{k} has no 'shape' (null for a scalar)", (sect, k))
            shape = t.get("shape")
            for j, ax in enumerate(shape or []):
                if ax not in axes:
                    doc.add("ERROR", f"{sect}.{k} references undefined axis '{ax}'", (sect, k, "shape", j))
                elif sect == "inputs":
                    bound.add(ax)
    for k in inputs:
        if k in outputs:
            doc.add("ERROR", f"'{k}' is both an input and an output (input and output names must not overlap)",
                    ("outputs", k))
    for k, a in axes.items():
        if isinstance(a, dict) and a.get("type") == "var" and k not in bound:
            doc.add("ERROR", f"var axis '{k}' appears in no input shape, so its value can never be bound", ("axes", k))
    for j, c in enumerate(d.get("constraints") or []):
        try:
            ast.parse(str(c), mode="eval")
        except SyntaxError as e:
            doc.add("ERROR", f"constraint {c!r} is not a Python expression: {e.msg}", ("constraints", j))
    ref = d.get("reference")
    if not isinstance(ref, str) or not ref.strip():
        doc.add("ERROR", "no reference code", ("reference",))
    else:
        try:
            compile(ref, f"<reference of {name}>", "exec")
            bad = has_top_level_run(ref)
            if bad:
                doc.add("ERROR", bad, ("reference",))
        except SyntaxError as e:
            doc.add("ERROR", f"reference does not compile: {e.msg} (reference line {e.lineno})", ("reference",))
        except (ValueError, RecursionError) as e:
            doc.add("ERROR", f"reference does not compile: {e}", ("reference",))
    tags = d.get("tags", [])
    if not isinstance(tags, list):
        doc.add("ERROR", "tags must be a list", ("tags",))
    else:
        for j, t in enumerate(tags):
            bad = tag_problem(t) if isinstance(t, str) else ("error", f"tag {t!r} is not a string")
            if bad:
                doc.add("ERROR" if bad[0] == "error" else "WARNING", bad[1], ("tags", j))
    if not d.get("description"):
        doc.add("WARNING", "missing description", ("name",))
    for sect, items in (("axes", axes), ("inputs", inputs), ("outputs", outputs)):
        for k, x in items.items():
            if isinstance(x, dict) and not x.get("description"):
                doc.add("WARNING", f"missing description: {sect}.{k}", (sect, k))
    if not any(f.level == "ERROR" and f.definition == doc.key for f in doc.report.findings):
        verdict = fib_definition_error(d)
        if verdict:
            doc.add("ERROR", f"parse error: flashinfer_bench.data.Definition rejects it: {verdict}")


# ---------------------------------------------------------------------------------------------
# running references

class Unsolvable(Exception):
    pass


def _indptr_last(node, inputs) -> Optional[str]:
    """'T' when node is ``T[-1]`` or ``T[-1].item()`` for an input T."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "item" \
            and not node.args:
        node = node.func.value
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in inputs:
        idx = node.slice
        if isinstance(idx, ast.UnaryOp) and isinstance(idx.op, ast.USub) and isinstance(idx.operand, ast.Constant) \
                and idx.operand.value == 1:
            return node.value.id
    return None


def _axis_expr(node, text: str, axes):
    """A sympy expression when the node is arithmetic over axis names, else None."""
    from defc.compiler import formula as F
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id not in axes:
            return None
        if isinstance(sub, (ast.Attribute, ast.Subscript, ast.Call)) and not (
                isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id in ("max", "min")):
            return None
    seg = ast.get_source_segment(text, node)
    try:
        f = F.parse(seg)
    except F.FormulaError:
        return None
    return f.expr


def choose_axes(defn: dict, rng: random.Random, preset: Optional[Dict[str, int]] = None,
                given: Optional[Dict[str, List[int]]] = None) -> Tuple[Dict[str, int], Dict[str, List[int]]]:
    """Values for every axis, and index-pointer tensors, consistent with the definition's constraints.

    ``preset`` fixes some var axes and ``given`` some index-pointer inputs (``defc verify`` builds those
    from its sequence layouts); the rest is chosen here."""
    import sympy
    axes = defn.get("axes") or {}
    inputs = defn.get("inputs") or {}
    values: Dict[str, int] = {k: int(a["value"]) for k, a in axes.items() if a.get("type") == "const"}
    values.update(preset or {})
    var = [k for k, a in axes.items() if a.get("type") == "var"]
    equations = []            # (lhs expr, rhs expr)
    from_indptr: Dict[str, str] = {}
    named_sides = set()
    for c, l, r in equalities(defn.get("constraints") or []):
        for a, b in ((l, r), (r, l)):
            t = _indptr_last(b, inputs)
            if t and isinstance(a, ast.Name) and a.id in var:
                from_indptr[a.id] = t
                break
        else:
            le, re_ = _axis_expr(l, str(c), axes), _axis_expr(r, str(c), axes)
            if le is not None and re_ is not None:
                equations.append((le, re_))
                for side in (l, r):
                    if isinstance(side, ast.Name):
                        named_sides.add(side.id)
    indptrs: Dict[str, List[int]] = {k: list(v) for k, v in (given or {}).items()}
    defaults = iter(range(3, 1000))
    order = sorted((k for k in var if k not in from_indptr), key=lambda k: (k in named_sides, var.index(k)))
    while True:
        progress = False
        for le, re_ in equations:
            expr = (le - re_).subs({sympy.Symbol(k): v for k, v in values.items()})
            unknown = [s for s in expr.free_symbols]
            if len(unknown) == 1 and unknown[0].name in var:
                sols = [s for s in sympy.solve(expr, unknown[0]) if s.is_integer and s > 0]
                if not sols:
                    raise Unsolvable(f"no positive integer {unknown[0].name} satisfies {le} == {re_} "
                                      f"with {', '.join(f'{k}={v}' for k, v in values.items())}")
                values[unknown[0].name] = int(sols[0])
                progress = True
        for axis, t in from_indptr.items():
            if axis in values:
                continue
            shape = (inputs.get(t) or {}).get("shape") or []
            if len(shape) != 1 or shape[0] not in values:
                continue
            if t not in indptrs:
                n = values[shape[0]]
                if n < 1:
                    raise Unsolvable(f"'{t}' has length {n}")
                seq = [0]
                for _ in range(n - 1):
                    seq.append(seq[-1] + rng.randint(1, 3))
                indptrs[t] = seq
            values[axis] = indptrs[t][-1]
            progress = True
        if progress:
            continue
        pending = [k for k in order if k not in values]
        if not pending:
            break
        values[pending[0]] = next(defaults)
    missing = [k for k in var if k not in values]
    if missing:
        raise Unsolvable(f"cannot choose values for var axes {', '.join(missing)}")
    for le, re_ in equations:
        if (le - re_).subs({sympy.Symbol(k): v for k, v in values.items()}) != 0:
            raise Unsolvable(f"constraint {le} == {re_} does not hold for the chosen values")
    return values, indptrs


def make_inputs(defn: dict, values: Dict[str, int], indptrs: Dict[str, List[int]], seed: int = 0,
                ints: str = "uniform") -> List[Any]:
    """Tensors of the declared shapes and dtypes: floats in [0.1, 1), fp8 by casting, fp4 from random bytes;
    integers in [1, m-1] (m = the smallest var-axis value, so they index any var-sized dimension), or all
    ones with ``ints="ones"``; scalars 1, 0.5 or False."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    var_vals = [v for k, v in values.items() if (defn["axes"][k].get("type") == "var")]
    m = min(var_vals) if var_vals else 2
    lo = 1 if m >= 2 else 0
    hi = max(lo, m - 1)
    out = []
    for name, t in (defn.get("inputs") or {}).items():
        dt, shape = t["dtype"], t.get("shape")
        if shape is None:
            out.append(False if dt == "bool" else 1 if dt in INT_DTYPES else 0.5)
            continue
        dims = tuple(values[a] for a in shape)
        if name in indptrs:
            out.append(torch.tensor(indptrs[name], dtype=torch_dtype(dt)))
        elif dt in INT_DTYPES:
            if ints == "ones":
                x = torch.full(dims, min(1, hi), dtype=torch.int64)
            else:
                x = torch.randint(lo, hi + 1, dims, generator=gen, dtype=torch.int64)
            out.append(x.to(torch_dtype(dt)))
        elif dt == "bool":
            out.append(torch.rand(dims, generator=gen) > 0.5)
        elif dt == "float4_e2m1":
            out.append(torch.randint(0, 256, dims, generator=gen, dtype=torch.uint8).view(torch_dtype(dt)))
        else:
            x = torch.rand(dims, generator=gen, dtype=torch.float32) * 0.9 + 0.1
            out.append(x.to(torch_dtype(dt)))
    return out


def numel(defn: dict, values: Dict[str, int]) -> int:
    """Elements of all inputs and outputs of a definition at the given axis sizes."""
    total = 0
    for sect in ("inputs", "outputs"):
        for t in (defn.get(sect) or {}).values():
            n = 1
            for a in t.get("shape") or []:
                n *= values.get(a, 1)
            total += n
    return total


ATTEMPTS = 4


def _attempt(defn: dict, seed: int, max_numel: int):
    """One try: ('skip', path, msg) | ('raised', msg) | ('ran', result, values)."""
    import torch
    rng = random.Random(seed)
    try:
        values, indptrs = choose_axes(defn, rng)
    except Unsolvable as e:
        return ("skip", ("constraints",), f"reference not run: {e}")
    n = numel(defn, values)
    if n > max_numel:
        return ("skip", ("reference",), f"reference not run: inputs and outputs need {n} elements (limit "
                                        f"{max_numel}; raise it with --max-numel)")
    try:
        args = make_inputs(defn, values, indptrs, seed, "ones" if seed % 2 else "uniform")
    except Exception as e:
        return ("skip", ("inputs",), f"reference not run: cannot make inputs: {type(e).__name__}: {e}")
    env = dict(values)
    env.update(zip(list(defn.get("inputs") or {}), args))
    for j, c in enumerate(defn.get("constraints") or []):
        try:
            # the dataset's own constraint text; only under --run-references, which executes its reference anyway
            ok = bool(eval(compile(str(c), "<constraint>", "eval"), {"__builtins__": {}}, dict(env)))  # noqa: S307
        except Exception as e:
            return ("skip", ("constraints", j), f"reference not run: constraint {c!r} cannot be checked on generated "
                                               f"inputs ({type(e).__name__}: {e})")
        if not ok:
            return ("skip", ("constraints", j), f"reference not run: generated inputs do not satisfy constraint {c!r}")
    ns: Dict[str, Any] = {"__name__": f"defc_reference_{defn.get('name')}"}
    shown = ", ".join(f"{k}={v}" for k, v in values.items() if defn["axes"][k].get("type") == "var")
    try:
        exec(compile(defn["reference"], f"<reference of {defn.get('name')}>", "exec"), ns)  # noqa: S102 - opt-in
        with torch.no_grad():
            result = ns["run"](*args)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        return ("raised", f"reference raised {type(e).__name__}{': ' + first if first else ''} "
                          f"(var axes {shown or 'none'})")
    return ("ran", result, values)


def run_reference(doc: _Doc, max_numel: int = DEFAULT_MAX_NUMEL) -> bool:
    """Execute the reference on generated CPU inputs; True when it ran and its outputs check out.

    Up to ATTEMPTS input sets are tried (other seeds; integers random, then all ones) before a raising
    reference is reported, since data constraints that the definition does not state may need luck."""
    import torch
    defn = doc.data
    first = None
    for seed in range(ATTEMPTS):
        res = _attempt(defn, seed, max_numel)
        if res[0] == "ran":
            break
        first = first or res
        if res[0] == "skip" and "limit" in res[2]:
            break
    else:
        res = None
    if res is None or res[0] != "ran":
        if first[0] == "skip":
            doc.add("WARNING", first[2], first[1])
        else:
            doc.add("ERROR", first[1] + (f"; {ATTEMPTS} input sets that satisfy every declared constraint were tried "
                                         f"(a requirement on the inputs that the constraints do not state?)"
                                         if res is None else ""), ("reference",))
        return False
    _, result, values = res
    outs = defn.get("outputs") or {}
    got = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(got) != len(outs):
        doc.add("ERROR", f"run returned {len(got)} value(s), the definition declares {len(outs)} output(s) "
                         f"({', '.join(outs)})", ("outputs",))
        return False
    ok = True
    for (k, t), v in zip(outs.items(), got):
        if t.get("shape") is None:
            if isinstance(v, torch.Tensor) and v.dim() != 0:
                doc.add("ERROR", f"output '{k}' is declared a scalar, run returned shape {tuple(v.shape)}", ("outputs", k))
                ok = False
            continue
        want = tuple(values[a] for a in t["shape"])
        if not isinstance(v, torch.Tensor):
            doc.add("ERROR", f"output '{k}': run returned {type(v).__name__}, expected a tensor", ("outputs", k))
            ok = False
            continue
        if tuple(v.shape) != want:
            doc.add("ERROR", f"output '{k}': shape {tuple(v.shape)}, expected {want} "
                             f"({', '.join(f'{a}={values[a]}' for a in t['shape'])})", ("outputs", k, "shape"))
            ok = False
        if v.dtype != torch_dtype(t["dtype"]):
            doc.add("ERROR", f"output '{k}': dtype {str(v.dtype).replace('torch.', '')}, expected {t['dtype']}",
                    ("outputs", k, "dtype"))
            ok = False
    return ok


# ---------------------------------------------------------------------------------------------
# driver

def validate_dataset(root: str, run_references: bool = False, op_types: Optional[Sequence[str]] = None,
                     names: Optional[Sequence[str]] = None, max_numel: int = DEFAULT_MAX_NUMEL,
                     on_definition=None) -> Report:
    """Check every definition of the dataset at ``root`` (those of ``op_types`` / ``names`` when
    given).  ``on_definition(key, index, total)`` is called before each one is checked."""
    if not os.path.isdir(root):
        raise DefcError("dataset folder not found", Location(display_path(root)), field="DATASET")
    report = Report(display_path(root))
    ddir = os.path.join(root, "definitions")
    if not os.path.isdir(ddir):
        raise DefcError("dataset has no definitions/ folder", Location(display_path(root)), field="DATASET")
    files: List[Tuple[str, str]] = []       # (path, op_type folder)
    for dirpath, dirnames, filenames in os.walk(ddir):
        dirnames.sort()
        rel = os.path.relpath(dirpath, ddir)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        for fn in sorted(filenames):
            if not fn.endswith(".json"):
                continue
            p = os.path.join(dirpath, fn)
            if depth != 1:
                report.findings.append(Finding("WARNING", display_path(p), 1, 1,
                                               "not at definitions/{op_type}/{name}.json: flashinfer-bench skips it", fn))
                continue
            files.append((p, os.path.basename(dirpath)))
    by_stem: Dict[str, List[str]] = {}
    for p, _ in files:
        by_stem.setdefault(os.path.basename(p)[:-5], []).append(p)
    selected = [(p, op_dir) for p, op_dir in files
                if not (op_types or names) or (op_types and op_dir in op_types)
                or (names and os.path.basename(p)[:-5] in names)]
    have_ops = sorted({op_dir for _, op_dir in files})
    for w in op_types or ():            # a filter that selects nothing is an error naming what there is
        if w not in have_ops:
            raise DefcError(f"no op_type '{w[:60]}' in this dataset (it has: {', '.join(have_ops) or 'none'})",
                            Location(display_path(root)), field="--op-types")
    for w in names or ():
        if w not in by_stem:
            near = sorted(s for s in by_stem if s.split("_")[0] == w.split("_")[0])[:8]
            raise DefcError(f"no definition '{w[:80]}' in this dataset ({len(by_stem)} definitions"
                            + (f"; similar: {', '.join(near)}" if near else "") + ")",
                            Location(display_path(root)), field="--definitions")
    for k, (p, op_dir) in enumerate(selected):
        stem = os.path.basename(p)[:-5]
        key = f"{op_dir}/{stem}"
        if on_definition is not None:
            on_definition(key, k, len(selected))
        report.definitions[key] = "ok"
        doc = _Doc(p, key, report)
        if len(by_stem[stem]) > 1:
            others = [display_path(x) for x in by_stem[stem] if x != p]
            doc.add("ERROR", f"duplicate definition name: {display_path(p)} and {', '.join(others)}")
        if not _load(doc):
            continue
        _static(doc, op_dir)
        if run_references and not any(f.level == "ERROR" and f.definition == key for f in report.findings):
            if run_reference(doc, max_numel):
                report.ran += 1
    for k in report.definitions:
        report.definitions[k] = report.status_of(k)
    return report


def report_text(report: Report, run_references: bool) -> str:
    lines = [f"defc validate {report.root} ({datetime.datetime.now().isoformat(timespec='seconds')})",
             report.summary() + (f"; {report.ran} reference(s) run on CPU" if run_references else ""), ""]
    for key in sorted(report.definitions):
        lines.append(f"--- {key} [{report.status_of(key).upper()}] ---")
        for f in report.findings:
            if f.definition == key:
                lines.append(str(f))
    stray = [f for f in report.findings if f.definition not in report.definitions]
    if stray:
        lines.append("--- other files ---")
        lines += [str(f) for f in stray]
    return "\n".join(lines) + "\n"


def write_report(report: Report, run_references: bool, report_dir: str) -> str:
    """Write report-YYYYMMDD-HHMMSS.{txt,json}; never over an existing file."""
    from defc.compiler.write import atomic_write_text
    os.makedirs(report_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(report_dir, f"report-{stamp}")
    n = 1
    while os.path.exists(base + ".txt") or os.path.exists(base + ".json"):
        n += 1
        base = os.path.join(report_dir, f"report-{stamp}-{n}")
    # claim the name exclusively, so that two runs in the same second cannot overwrite each other
    while True:
        try:
            fd = os.open(base + ".txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            break
        except FileExistsError:
            n += 1
            base = os.path.join(report_dir, f"report-{stamp}-{n}")
    atomic_write_text(base + ".txt", report_text(report, run_references))
    data = {"dataset": report.root, "summary": report.summary(), "references_run": report.ran,
            "definitions": {k: report.status_of(k) for k in sorted(report.definitions)},
            "findings": [{"level": f.level, "file": f.file, "line": f.line, "col": f.col, "definition": f.definition,
                          "message": f.message} for f in report.findings]}
    if not os.path.exists(base + ".json"):
        atomic_write_text(base + ".json", json.dumps(data, indent=2) + "\n")
    return base + ".txt"
