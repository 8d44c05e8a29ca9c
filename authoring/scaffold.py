"""``defc new-op``: scaffold ``specs/NAME.yaml`` and ``templates/reference/NAME.py.j2``.

Without ``--from-fi-api`` the spec is a small working example (one var and one const axis, an
input and an output, a copy as the reference) to edit.  With ``--from-fi-api API`` it comes from
FlashInfer's ``TraceTemplate``(s) registered for that API: op_type, name pattern (the dumper's
``prefix_{abbrev}{axis}…``), axes (var/const; const values from config fields, facts or
``authoring/data/axis_hints.yaml``, else a TODO sweep), inputs and outputs with dtypes, constraints,
tags and ``fi_api``; a var axis that only an output uses and a constraint pins to const axes becomes
const.  The reference template asserts the const axes and raises NotImplementedError until written.
FlashInfer is imported only here.
"""
from __future__ import annotations

import difflib
import importlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from defc.compiler.check import DTYPES, IDENT
from defc.compiler.errors import DefcError, Location
from defc.compiler.load import display_path, load_safe_yaml
from defc.compiler.paths import MODEL_FACTS, SPECS_DIR, TEMPLATES_DIR

from .lint import tag_problem, universe

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
HINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "axis_hints.yaml")
SCALAR_DTYPES = {"int": "int32", "float": "float32", "bool": "bool", "int32": "int32", "int64": "int64",
                 "float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}
INDEX_NAME = re.compile(r"(indptr|indices|_idx|_ids|_len|_lens|lens|offsets|positions)$")


@dataclass
class Scaffold:
    spec_path: str
    reference_paths: List[str]
    spec_text: str
    reference_texts: List[str]
    notes: List[str] = field(default_factory=list)


def q(text: Any) -> str:
    """A YAML scalar: plain when safe, else a JSON (= YAML double-quoted) string."""
    if isinstance(text, bool):
        return "true" if text else "false"
    if isinstance(text, (int, float)):
        return str(text)
    s = str(text)
    if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", s) and s.lower() not in ("true", "false", "null", "yes", "no", "on", "off"):
        return s
    return json.dumps(s, ensure_ascii=False)


def _text(s: Optional[str]) -> str:
    """Copied prose: braces would read as placeholders."""
    s = " ".join(str(s or "").split())
    return s.replace("{", "(").replace("}", ")")


def _refuse_existing(paths: Sequence[str]) -> None:
    for p in paths:
        if os.path.exists(p):
            raise DefcError("already exists; new-op never overwrites (remove it or pick another name)",
                            Location(display_path(p)))


# ---------------------------------------------------------------------------------------------
# the plain example

def example(name: str) -> Tuple[str, str]:
    spec = f"""# {name}: scaffolded by `defc new-op {name}`.  Replace the example axes, tensors and reference;
# docs/spec-format.md describes every field, docs/authoring.md walks through a whole family.
family: {name}
op_type: {name}
description: "TODO: what {name} computes, and for which models."
notes:
  - "scaffolded example: one var axis (tokens) and one const axis from config.json (hidden_size)"
definitions:
  - id: {name}
    name: "{name}_h{{hidden_size}}"
    description: "TODO: {name} over hidden_size={{hidden_size}}."
    fi_api: null            # the FlashInfer API that computes it, if any (then status: verified)
    status: unverified
    when: "defined(hidden_size)"   # TODO: narrow to the models it is for (defc lint warns while every model matches)
    axes:
      batch_size: {{type: var, description: Number of tokens.}}
      hidden_size: {{value: hidden_size, description: Hidden dimension.}}
    inputs:
      x: {{shape: [batch_size, hidden_size], dtype: bfloat16, description: Input activations.}}
    outputs:
      y: {{shape: [batch_size, hidden_size], dtype: bfloat16, description: Output activations.}}
    reference:
      template: reference/{name}.py.j2
"""
    ref = f"""{{#- Reference of {name}: plain PyTorch, a top-level run(...) taking the inputs in order and
    returning the outputs.  Const axes arrive as variables ({{{{ hidden_size }}}}). -#}}
import torch

HIDDEN_SIZE = {{{{ hidden_size }}}}


@torch.no_grad()
def run(x):
    assert x.shape[-1] == HIDDEN_SIZE
    # TODO: the computation; the example copies its input.
    return x.clone()
"""
    return spec, ref


# ---------------------------------------------------------------------------------------------
# from FlashInfer's registry

def _import_for(api: str):
    import io
    import sys
    saved = os.environ.pop("FLASHINFER_TRACE_DUMP_DIR", None)
    err, sys.stderr = sys.stderr, io.StringIO()
    try:
        try:
            import flashinfer  # noqa: F401
        except Exception as e:
            raise DefcError(f"cannot import flashinfer ({type(e).__name__}: {e}); --from-fi-api needs it",
                            field="--from-fi-api") from None
        parts = api.split(".")
        for i in range(len(parts), 1, -1):
            try:
                importlib.import_module(".".join(parts[:i]))
                break
            except Exception:
                continue
    finally:
        sys.stderr = err
        if saved is not None:
            os.environ["FLASHINFER_TRACE_DUMP_DIR"] = saved


def _resolve(api: str):
    from defc.compiler.dotted import resolve
    return resolve(api)


def find_templates(api: str) -> Tuple[str, List[Tuple[str, Any, str]]]:
    """(canonical api, [(api name, TraceTemplate, label)]) registered for a FlashInfer API."""
    _import_for(api)
    from .coverage import trace_aliases, trace_entries
    found = trace_entries()
    aliases = trace_aliases(found)
    entries = [(e.fi_api, e.template, e.label) for e in found]

    def pick(names):
        hits = [e for e in entries if e[0] in names]
        return hits

    hits = pick({api, aliases.get(api, api)})
    if not hits:
        obj = _resolve(api)
        cands = set()
        if obj is not None:
            if isinstance(obj, type):
                for meth in ("run", "forward", "__call__"):
                    fn = vars(obj).get(meth)
                    if fn is not None:
                        n = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}"
                        cands.add(aliases.get(n, n))
                        if pick(cands):
                            break
            else:
                n = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
                cands.add(aliases.get(n, n))
        cands.add(api + ".run")
        hits = pick(cands)
    if not hits:
        names = sorted({e[0] for e in entries})
        close = difflib.get_close_matches(api, names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        why = "is not a FlashInfer API" if _resolve(api) is None else "exists but has no trace template"
        raise DefcError(f"'{api}' {why}{hint} (`defc gap-report` drafts an issue for APIs without one)",
                        field="--from-fi-api")
    return hits[0][0], hits


def _hints() -> Dict[str, dict]:
    data = load_safe_yaml(HINTS, "axis hints") if os.path.exists(HINTS) else {}
    return data if isinstance(data, dict) else {}


def _known_symbols(specs_dir: str) -> set:
    from defc.compiler.load import load_yaml
    path = os.path.join(specs_dir, MODEL_FACTS)
    try:
        doc = load_yaml(path, "model facts")
    except DefcError:
        doc = None
    return universe(doc)


def _solve_from_constraints(axis: str, consts: Sequence[str], constraints: Sequence[str]) -> Optional[str]:
    """A formula over const axes for ``axis`` when an equality constraint pins it."""
    import ast
    import sympy
    from defc.compiler import formula as F
    from defc.authoring.validate import equalities
    for c, left, right in equalities(constraints):
        try:
            l = F.parse(ast.get_source_segment(c, left)).expr
            r = F.parse(ast.get_source_segment(c, right)).expr
        except F.FormulaError:
            continue
        if l is None or r is None:
            continue
        syms = {s.name for s in (l - r).free_symbols}
        if axis not in syms or not (syms - {axis}) <= set(consts):
            continue
        sols = sympy.solve(l - r, sympy.Symbol(axis))
        if len(sols) == 1:
            text = str(sols[0])
            try:
                F.parse(text)
            except F.FormulaError:
                continue
            return text
    return None


def _dtype_of(t, by_param: Dict[str, str], chosen: Dict[str, str], name: str) -> Tuple[str, bool]:
    """(dtype, guessed) of a template tensor."""
    dt = getattr(t, "dtype", None)
    if isinstance(dt, str) and dt in DTYPES:
        return dt, False
    src = getattr(t, "dtype_from", None)
    if src:
        key = by_param.get(src, src)
        if key in chosen:
            return chosen[key], False
    return ("int32" if INDEX_NAME.search(name) else "bfloat16"), True


def _definition_from_template(api: str, tmpl, label: str, family: str, known: set, hints: Dict[str, dict],
                              ref_template: str, notes: List[str]) -> Tuple[List[str], str]:
    """(YAML lines of one definitions[] entry, the reference template text)."""
    # a Const with an ``extract`` callable is derived from optional call arguments, and FlashInfer leaves it
    # out of the definition (name and axes) when the call does not give it: not scaffolded unless a tensor
    # shape names it
    shaped = {d for t in [*tmpl.inputs.values(), *tmpl.outputs.values()] for d in (getattr(t, "dim_names", None) or [])}
    derived = [k for k, a in tmpl.axes.items() if getattr(a, "extract", None) is not None and k not in shaped]
    axes = {k: a for k, a in tmpl.axes.items() if k not in derived}
    kinds = {k: type(a).__name__ for k, a in axes.items()}
    const = [k for k, v in kinds.items() if v == "Const"]
    if derived:
        notes.append(f"{label}: left out of axes and name: {', '.join(derived)} (derived from optional arguments; "
                     f"FlashInfer leaves them out of a definition when a call does not set them)")
    constraints = [str(c) for c in (getattr(tmpl, "constraints", None) or [])]
    # tensors
    by_param: Dict[str, str] = {}
    inputs: Dict[str, dict] = {}
    chosen: Dict[str, str] = {}
    dropped: List[str] = []
    for k, t in tmpl.inputs.items():
        kind = type(t).__name__
        if getattr(t, "param", None):
            by_param[t.param] = k
        if kind == "Scalar":
            sd = SCALAR_DTYPES.get(str(getattr(t, "dtype", "")))
            if sd is None or getattr(t, "optional", False):
                dropped.append(f"{k} (scalar{', optional' if getattr(t, 'optional', False) else ''}, dtype "
                               f"{getattr(t, 'dtype', None)})")
                continue
            inputs[k] = {"shape": None, "dtype": sd, "description": getattr(t, "description", ""), "guess": False}
            chosen[k] = sd
            continue
        dims = list(getattr(t, "dim_names", None) or [])
        dt, guessed = _dtype_of(t, by_param, chosen, k)
        chosen[k] = dt
        inputs[k] = {"shape": dims, "dtype": dt, "description": getattr(t, "description", ""), "guess": guessed,
                     "optional": bool(getattr(t, "optional", False))}
    outputs: Dict[str, dict] = {}
    for k, t in tmpl.outputs.items():
        if k in inputs:
            notes.append(f"{label}: FlashInfer's template also writes input '{k}' in place; flashinfer-bench forbids a "
                         f"name in both inputs and outputs, so it is not an output here (add '{k}_out' if run should "
                         f"return it)")
            continue
        dims = list(getattr(t, "dim_names", None) or [])
        dt, guessed = _dtype_of(t, by_param, chosen, k)
        if guessed:
            for ik, it in inputs.items():
                if it["shape"] and set(it["shape"]) & set(dims) and it["dtype"] not in ("int32", "int64"):
                    dt, guessed = it["dtype"], False
                    break
        outputs[k] = {"shape": dims, "dtype": dt, "description": getattr(t, "description", ""), "guess": guessed}
    if dropped:
        notes.append(f"{label}: left out of inputs: {', '.join(dropped)}")
    used_dims = {d for t in inputs.values() for d in (t["shape"] or [])}
    out_dims = {d for t in outputs.values() for d in (t["shape"] or [])}
    # axes
    axes_lines: List[str] = []
    sweep: Dict[str, list] = {}
    guards: List[str] = []
    todo: List[str] = []
    checks: List[str] = []
    const_now: List[str] = []
    for k, a in axes.items():
        desc = _text(getattr(a, "description", "")) or k.replace("_", " ")
        if kinds[k] == "Var":
            if k not in used_dims and k in out_dims:
                solved = _solve_from_constraints(k, const_now, constraints)
                if solved:
                    axes_lines.append(f"      {k}: {{value: {q(solved)}, description: {q(desc)}}}")
                    const_now.append(k)
                    continue
            if k not in used_dims and k not in out_dims:
                continue
            axes_lines.append(f"      {k}: {{type: var, description: {q(desc)}}}")
            continue
        value = getattr(a, "value", None)
        hint = hints.get(k) if isinstance(hints.get(k), dict) else None
        if isinstance(value, int) and value > 0:
            formula = str(value)
        elif hint and "value" in hint:
            formula = str(hint["value"])
            from defc.compiler import formula as F
            try:
                guards.extend(s for s in F.parse(formula).symbols if s not in ("tp", "ep", "dp", "attn_dp"))
            except F.FormulaError:
                pass
        elif k in known:
            formula = k
            guards.append(k)
            checks.append(k)
        elif hint and isinstance(hint.get("sweep"), list):
            sweep[k] = list(hint["sweep"])
            formula = k
        else:
            sweep[k] = [1]
            formula = k
            todo.append(k)
        axes_lines.append(f"      {k}: {{value: {q(formula)}, description: {q(desc)}}}"
                          + ("   # TODO: check: the config field of the same name" if k in checks else ""))
        const_now.append(k)
    if todo:
        notes.append(f"{label}: TODO: const axes {', '.join(todo)} are a placeholder sweep [1]; derive them from "
                     f"config.json facts")
    # name pattern: the dumper's prefix_{abbrev}{value}, const axes in declared order
    prefix = getattr(tmpl, "name_prefix", None) or tmpl.op_type
    parts = []
    for k in const:
        ab = getattr(tmpl.axes[k], "abbrev", None)
        if ab == "":
            continue
        parts.append(f"{ab if ab is not None else k}{{{k}}}")
    name = "_".join([prefix] + parts)
    tags = [t for t in (getattr(tmpl, "tags", None) or []) if not str(t).startswith(("status:", "fi_api:", "model:"))]
    bad_tags = [t for t in tags if tag_problem(t)]
    tags = [t for t in tags if t not in bad_tags]
    if bad_tags:
        notes.append(f"{label}: FlashInfer tags not in defc's tag namespaces were left out: {', '.join(bad_tags)}")
    def_id = re.sub(r"[^A-Za-z0-9_]", "_", label or prefix)
    if not re.match(r"^[A-Za-z]", def_id):
        def_id = f"d_{def_id}"
    L = [f"  - id: {def_id}",
         f"    name: {q(name)}",
         f"    description: {q(_text(getattr(tmpl, 'description', '')) or label)}",
         f"    op_type: {tmpl.op_type}",
         f"    fi_api: {api}",
         "    status: verified"]
    if guards:
        seen = []
        for g in guards:
            if g not in seen:
                seen.append(g)
        L.append(f"    when: {q(' and '.join(f'defined({g})' for g in seen))}"
                 "   # TODO: narrow to the models it is for (defc lint warns while every model matches)")
    if sweep:
        L.append("    sweep: {" + ", ".join(f"{k}: [{', '.join(map(str, v))}]" for k, v in sweep.items()) + "}"
                 + ("   # TODO: " + ", ".join(todo) + " unknown: derive from config.json" if todo else ""))
    if tags:
        L.append("    tags: [" + ", ".join(q(t) for t in tags) + "]")
    L.append("    axes:")
    L += axes_lines
    if constraints:
        L.append("    constraints:")
        L += [f"      - {q(c)}" for c in constraints]
    for sect, tensors in (("inputs", inputs), ("outputs", outputs)):
        L.append(f"    {sect}:" + (" {}" if not tensors else ""))
        for k, t in tensors.items():
            shape = "null" if t["shape"] is None else "[" + ", ".join(t["shape"]) + "]"
            extra = ", optional: true" if t.get("optional") else ""
            desc = _text(t["description"]) or k.replace("_", " ")
            comment = "   # TODO: dtype guessed" if t["guess"] else ""
            L.append(f"      {k}: {{shape: {shape}, dtype: {t['dtype']}{extra}, description: {q(desc)}}}{comment}")
    L += ["    reference:", f"      template: {ref_template}"]
    ref = _reference_text(name, label, api, tmpl, inputs, const_now)
    return L, ref


def _reference_text(name: str, label: str, api: str, tmpl, inputs: Dict[str, dict], consts: List[str]) -> str:
    ref_fn = getattr(getattr(tmpl, "reference", None), "__name__", None)
    lines = [f"{{#- Reference of {name}: plain PyTorch, a top-level run(...) taking the inputs in order and",
             f"    returning the outputs.  Scaffolded from FlashInfer's trace template '{label}' of {api}"
             + (f" (its reference function is {ref_fn})" if ref_fn else "") + ". -#}",
             "import torch", ""]
    for k in consts:
        lines.append(f"{k.upper()} = {{{{ {k} }}}}")
    lines += ["", "", "@torch.no_grad()", f"def run({', '.join(inputs)}):"]
    for k, t in inputs.items():
        for i, d in enumerate(t["shape"] or []):
            if d in consts:
                lines.append(f"    assert {k}.shape[{i}] == {d.upper()}")
    lines.append("    # TODO: the computation (defc lint warns about this stub until it is written)")
    lines.append("    raise NotImplementedError(\"the reference of {{ name }} is not written yet\")")
    return "\n".join(lines) + "\n"


def from_fi_api(name: str, api: str, specs_dir: str, ref_dir_name: str = "reference") -> Tuple[str, List[str], List[str], List[str]]:
    """(spec text, reference template names, reference texts, notes)."""
    canonical, hits = find_templates(api)
    known = _known_symbols(specs_dir)
    hints = _hints()
    notes: List[str] = []
    defs: List[str] = []
    refs, texts = [], []
    seen_ids = set()
    for i, (napi, tmpl, label) in enumerate(hits):
        ref_name = f"{ref_dir_name}/{name}.py.j2" if len(hits) == 1 else f"{ref_dir_name}/{name}_{re.sub(r'[^A-Za-z0-9_]', '_', label)}.py.j2"
        lines, ref = _definition_from_template(api, tmpl, label, name, known, hints, ref_name, notes)
        did = lines[0].split("id: ", 1)[1]
        if did in seen_ids:
            lines[0] = f"  - id: {did}_{i}"
        seen_ids.add(did)
        defs += lines
        refs.append(ref_name)
        texts.append(ref)
    op_types = sorted({t.op_type for _, t, _ in hits})
    head = [f"# {name}: scaffolded by `defc new-op {name} --from-fi-api {api}` from FlashInfer's trace template(s)",
            f"# ({canonical}).  Check every TODO, then `defc lint specs/{name}.yaml`.",
            f"family: {name}"]
    if len(op_types) == 1 and op_types[0] != name and IDENT.match(op_types[0]):
        head.append(f"op_type: {op_types[0]}")
    head.append(f"description: {q(_text(getattr(hits[0][1], 'description', '')) or name)}")
    if notes:
        head.append("notes:")
        head += [f"  - {q(n)}" for n in notes]
    head.append("definitions:")
    return "\n".join(head + defs) + "\n", refs, texts, notes


def scaffold(name: str, specs_dir: str = SPECS_DIR, templates_dir: str = TEMPLATES_DIR,
             fi_api: Optional[str] = None, write: bool = True) -> Scaffold:
    if not NAME_RE.match(name or ""):
        raise DefcError(f"'{name}' is not a family name (lower-case letters, digits and '_', starting with a letter)",
                        field="NAME")
    spec_path = os.path.join(specs_dir, f"{name}.yaml")
    _refuse_existing([spec_path])
    if fi_api:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_.]*$", fi_api):
            raise DefcError(f"'{fi_api}' is not a dotted Python name", field="--from-fi-api")
        spec_text, refs, texts, notes = from_fi_api(name, fi_api, specs_dir)
    else:
        spec_text, ref = example(name)
        refs, texts, notes = [f"reference/{name}.py.j2"], [ref], []
    ref_paths = [os.path.join(templates_dir, r) for r in refs]
    _refuse_existing([spec_path] + ref_paths)
    if write:
        from defc.compiler.write import atomic_write_text
        for p, text in zip([spec_path] + ref_paths, [spec_text] + texts):
            atomic_write_text(p, text)
    return Scaffold(spec_path, ref_paths, spec_text, texts, notes)
