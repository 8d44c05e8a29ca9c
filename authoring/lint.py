"""``defc lint``: every problem of specs and the model facts in one pass, beyond the schema.

Checks, each reported as ``file:line:col: error|warning: field: message``:

* the spec schema and formula syntax (``check.spec_problems``);
* unknown names in formulas and ``{placeholders}``: a name is known if it is a config field of some
  catalogue model, a fact, a serving symbol, ``label``/``model``/``quantization``, or a family let,
  sweep, case let, definition let or earlier const axis in scope at that point;
* a name pattern that does not mention a const axis whose value varies (warning), and instances that
  share a name but differ in a const axis;
* tags: ``ns:value`` with a known namespace, or a known flag;
* templates: missing files, variables the renderer does not provide (``jinja2.meta``);
* rendering against every catalogue model the spec applies to (all quantization variants): every
  evaluation error, a reference without a top-level ``run``, and ``flashinfer_bench.data.Definition``
  rejections of the rendered document.
"""
from __future__ import annotations

import ast
import difflib
import glob
import os
import re
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from defc.compiler import formula as F
from defc.compiler.check import PLACEHOLDER, field_name, schema_errors, spec_problems
from defc.compiler.errors import DefcError, DefcErrors, Location
from defc.compiler.load import Located, display_path, load_yaml
from defc.compiler.paths import MODEL_FACTS, SPECS_DIR

from .coverage import cached_inputs

SERVING_SYMBOLS = ("tp", "ep", "dp", "attn_dp", "dp_attention")
ALWAYS_KNOWN = ("label", "model", "quantization", "config_nulls")

# Tag namespaces of the curated dataset, flashinfer-bench's conventions and FlashInfer's trace templates.
TAG_NAMESPACES = (
    "fi_api", "status", "model", "tp", "ep", "dp", "quantization", "stage", "layout", "routing", "gpu",
    "sparse", "quant", "quantize", "fused", "backend", "arch", "phase", "moe", "activation",
    "activation-format", "partition-strategy", "partitioning", "weight-layout", "kv_cache", "mask", "variant",
)
TAG_FLAGS = ("fused",)
STATUS_VALUES = ("verified", "unverified", "reference", "draft", "deprecated", "experimental")
INT_TAGS = ("tp", "ep", "dp")
SET_BY_DEFC = ("status", "fi_api", "model")   # written from the spec's own fields

REFERENCE_CONTEXT = ("name", "op_type", "axes", "params", "inputs", "outputs", "quantization")
DEFINITION_CONTEXT = ("name", "description", "op_type", "tags", "axes", "constraints", "inputs", "outputs",
                      "reference", "params", "quantization")


def _err(msg, where: Location, fld: Optional[str] = None, severity: str = "error") -> DefcError:
    return DefcError(msg, where, fld, severity=severity)


# ---------------------------------------------------------------------------------------------
# tags

def tag_problem(tag: str) -> Optional[Tuple[str, str]]:
    """(severity, message) for a malformed tag, else None.  Placeholders count as values."""
    if not isinstance(tag, str) or not tag:
        return "error", "a tag must be a non-empty string"
    text = PLACEHOLDER.sub("X", tag)
    if text != text.strip() or any(c.isspace() for c in text):
        return "error", f"tag {tag!r} contains whitespace"
    if ":" not in text:
        if text in TAG_FLAGS:
            return None
        return "error", (f"tag {tag!r} is neither 'namespace:value' nor a known flag ({', '.join(TAG_FLAGS)})")
    ns, value = text.split(":", 1)
    if not ns or not value:
        return "error", f"tag {tag!r} needs a namespace and a value ('ns:value')"
    if ns not in TAG_NAMESPACES:
        close = difflib.get_close_matches(ns, TAG_NAMESPACES, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return "error", f"tag {tag!r} has unknown namespace '{ns}' (known: {', '.join(TAG_NAMESPACES)}){hint}"
    if ns == "status" and tag == text and value not in STATUS_VALUES:
        return "error", f"tag {tag!r}: status must be one of {', '.join(STATUS_VALUES)}"
    if ns in INT_TAGS and tag == text and not (value.isdigit() and int(value) > 0):
        return "error", f"tag {tag!r}: {ns} must be a positive integer"
    return None


# ---------------------------------------------------------------------------------------------
# known names

@lru_cache(maxsize=4)
def _catalogue_fields(nesting: Tuple[str, ...]) -> frozenset:
    from defc.compiler.facts import flatten_config
    from defc.compiler.models import catalogue_slugs, load_catalogue_entry
    names: Set[str] = set()
    for slug in catalogue_slugs():
        try:
            names |= set(flatten_config(load_catalogue_entry(slug).config, list(nesting)))
        except DefcError:
            continue
    return frozenset(names)


def documented_keys(data: dict) -> Set[str]:
    """The config keys the facts file's config_keys table names (read, ignored or unmodelled)."""
    keys = _d(data.get("config_keys"))
    return set().union(*(_d(keys.get(k)) for k in ("read", "ignored", "unmodelled")))


def universe(facts_doc: Optional[Located]) -> Set[str]:
    """Names every formula may read: catalogue config fields, the config keys the facts file
    documents, facts, serving symbols."""
    data = facts_doc.data if facts_doc is not None and isinstance(facts_doc.data, dict) else {}
    nesting = tuple(x for x in (data.get("nesting") or []) if isinstance(x, str))
    facts = set((data.get("facts") or {}) if isinstance(data.get("facts"), dict) else {})
    return set(_catalogue_fields(nesting)) | documented_keys(data) | facts | set(SERVING_SYMBOLS) | set(ALWAYS_KNOWN)


def _names(source: Any) -> Tuple[Set[str], Set[str]]:
    """(names read as values, names only tested with defined()) of a formula."""
    if not isinstance(source, str):
        return set(), set()
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        return set(), set()
    used, guarded = set(), set()

    def walk(node, in_defined=False):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "defined":
            for a in node.args:
                if isinstance(a, ast.Name):
                    guarded.add(a.id)
            return
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            for a in node.args:
                walk(a)
            return
        if isinstance(node, ast.Name):
            used.add(node.id)
            return
        for child in ast.iter_child_nodes(node):
            walk(child)
    walk(tree)
    return used, guarded - used


class _Scope:
    """Checks names against what is defined at one point of a spec."""

    def __init__(self, doc: Located, known: Set[str], problems: List[DefcError]):
        self.doc, self.known, self.problems = doc, known, problems

    def _unknown(self, name: str, path, scope: Set[str], what: str, severity="error"):
        close = difflib.get_close_matches(name, sorted(scope), n=1, cutoff=0.75)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        self.problems.append(_err(
            f"{what} '{name}' is not a config field of any catalogue model, a fact, a serving symbol, or a name "
            f"defined before this point{hint}", self.doc.where(path), field_name(path), severity))

    def formula(self, path, source, scope: Set[str], severity: str = "error"):
        used, guarded = _names(source)
        for n in sorted(used):
            if n not in scope:
                self._unknown(n, path, scope, "unknown name", severity)
        for n in sorted(guarded):
            if n not in scope:
                self._unknown(n, path, scope, "defined() tests a name that is never defined:", "warning")

    def text(self, path, text, scope: Set[str]):
        if not isinstance(text, str):
            return
        for m in PLACEHOLDER.finditer(text):
            key = m.group(1).strip()
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                self.problems.append(_err(f"bad placeholder '{{{m.group(1)}}}' (write {{name}})", self.doc.where(path),
                                          field_name(path)))
            elif key not in scope:
                self._unknown(key, path, scope, "placeholder")


def _d(x) -> dict:
    return x if isinstance(x, dict) else {}


def _l(x) -> list:
    return x if isinstance(x, list) else []


def symbol_problems(doc: Located, known: Set[str]) -> List[DefcError]:
    """Unknown names in formulas and placeholders, scope by scope."""
    probs: List[DefcError] = []
    S = _Scope(doc, known, probs)
    data = _d(doc.data)
    scope = set(known)
    if "requires" in data:
        S.formula(("requires",), data["requires"], scope)
    for k, v in _d(data.get("let")).items():
        S.formula(("let", k), v, scope)
        scope.add(k)
    fam_scope = set(scope)
    for i, d in enumerate(_l(data.get("definitions"))):
        if not isinstance(d, dict):
            continue
        base = ("definitions", i)
        s0 = fam_scope | set(_d(d.get("sweep")))
        case_names: Set[str] = set()
        for j, c in enumerate(_l(d.get("cases"))):
            if not isinstance(c, dict):
                continue
            cs = set(s0)
            for k, v in _d(c.get("let")).items():
                S.formula(base + ("cases", j, "let", k), v, cs)
                cs.add(k)
                case_names.add(k)
            if "when" in c:
                S.formula(base + ("cases", j, "when"), c["when"], cs | {"label"})
        s = s0 | case_names
        for k, v in _d(d.get("let")).items():
            S.formula(base + ("let", k), v, s)
            s.add(k)
        if "when" in d:
            S.formula(base + ("when",), d["when"], s)
        for name, a in _d(d.get("axes")).items():
            if not isinstance(a, dict):
                continue
            p = base + ("axes", name)
            if "when" in a:
                S.formula(p + ("when",), a["when"], s)
            if "value" in a:
                S.formula(p + ("value",), a["value"], s)
            if a.get("type", "const" if "value" in a else "var") == "const":
                s.add(name)
            S.text(p + ("description",), a.get("description"), s)
        for sect in ("inputs", "outputs"):
            for name, t in _d(d.get(sect)).items():
                if not isinstance(t, dict):
                    continue
                p = base + (sect, name)
                if "when" in t:
                    S.formula(p + ("when",), t["when"], s)
                S.text(p + ("dtype",), t.get("dtype"), s)
                S.text(p + ("description",), t.get("description"), s)
        # tags and constraints: a text, or {tag|expr: text, when: formula}
        for field, text_key in (("tags", "tag"), ("constraints", "expr")):
            for j, t in enumerate(_l(d.get(field))):
                p = base + (field, j)
                if isinstance(t, dict):
                    if "when" in t:
                        S.formula(p + ("when",), t["when"], s)
                    S.text(p, t.get(text_key), s)
                else:
                    S.text(p, t, s)
        for k, v in _d(_d(d.get("reference")).get("params")).items():
            S.formula(base + ("reference", "params", k), v, s)
        S.text(base + ("name",), d.get("name"), s)
        S.text(base + ("description",), d.get("description"), s)
        for j, al in enumerate(_l(d.get("aliases"))):
            if isinstance(al, dict):
                S.text(base + ("aliases", j, "name"), al.get("name"), s)
    return probs


def tag_problems(doc: Located) -> List[DefcError]:
    probs = []
    for i, d in enumerate(_l(_d(doc.data).get("definitions"))):
        if not isinstance(d, dict):
            continue
        for j, t in enumerate(_l(d.get("tags"))):
            p = ("definitions", i, "tags", j)
            text = t.get("tag") if isinstance(t, dict) else t
            if not isinstance(text, str):
                continue
            bad = tag_problem(text)
            if bad:
                probs.append(_err(bad[1], doc.where(p), field_name(p), bad[0]))
            elif ":" in text and text.split(":", 1)[0] in SET_BY_DEFC:
                ns = text.split(":", 1)[0]
                probs.append(_err(f"tag {text!r}: defc writes {ns}: tags from the definition's "
                                  f"{'own fields' if ns != 'model' else 'models'}; set "
                                  f"{'`' + ns + ':`' if ns != 'model' else 'nothing'} instead",
                                  doc.where(p), field_name(p), "warning"))
    return probs


# ---------------------------------------------------------------------------------------------
# trace: and verify: blocks (read by runners/recipes.py and runners/verify.py; the field sets are
# theirs, tests/test_lint.py checks they agree)

TRACE_CALL_KEYS = frozenset({"api", "when", "vars", "args", "defaults"})
TRACE_TOP_KEYS = TRACE_CALL_KEYS | {"calls", "note", "notes"}
TRACE_ARG_KEYS = frozenset({"tensor", "shape", "dtype", "tuple", "list", "value", "when"})
VERIFY_KEYS = frozenset({"vars", "sequences", "inputs", "kernel", "template", "tolerance", "differences", "seed",
                         "note", "notes", "skip"})
VERIFY_KERNEL_KEYS = frozenset({"api", "init", "plan", "args", "positional", "returns", "from_args", "requires_sm",
                                "why", "alternative", "skip"})
VERIFY_ALTERNATIVE_KEYS = (VERIFY_KERNEL_KEYS - {"alternative"}) | {"when"}
VERIFY_TEMPLATE_KEYS = frozenset({"call", "args", "returns", "skip", "sequences", "vars", "inputs"})
VERIFY_DIFFERENCE_KEYS = frozenset({"name", "why", "sides", "when", "skip_outputs", "tolerance", "outputs", "inputs"})
# symbols `sequences:` gives verify formulas (runners/verify_inputs.py)
VERIFY_LAYOUT_SYMBOLS = ("seq_count", "seq_num_pages", "seq_total_qo", "seq_total_kv", "seq_max_pages")


class _BlockChecker:
    """Names in one definition's trace:/verify: block against its inputs, outputs and axes."""

    def __init__(self, doc: Located, i: int, d: dict, spec_tensors: Set[str], scope: Set[str],
                 problems: List[DefcError]):
        self.doc, self.i, self.problems = doc, i, problems
        self.inputs = list(_d(d.get("inputs")))
        self.outputs = list(_d(d.get("outputs")))
        self.axes = list(_d(d.get("axes")))
        self.spec_tensors = spec_tensors
        self.S = _Scope(doc, scope, problems)
        self.scope = set(scope) | set(self.axes)
        self.id = d.get("id")

    def _p(self, *path):
        return ("definitions", self.i) + tuple(path)

    def err(self, path, msg, severity="error"):
        p = self._p(*path)
        self.problems.append(_err(msg, self.doc.where(p), field_name(p), severity))

    def keys(self, path, block, allowed, what):
        for k in block:
            if k not in allowed:
                close = difflib.get_close_matches(str(k), sorted(allowed), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                self.err(path + (k,), f"unknown {what} field '{k}' (allowed: {', '.join(sorted(allowed))}){hint}")

    def name(self, path, name, kinds, guarded=False):
        """A tensor (or axis) name: kinds is ('inputs', 'outputs', 'axes') or a subset."""
        if not isinstance(name, str):
            return
        have = [n for k in kinds for n in getattr(self, k)]
        if name in have:
            return
        if guarded and name in self.spec_tensors:
            return   # a block shared between definitions (a YAML anchor): its when: picks the ones that have it
        close = difflib.get_close_matches(name, have, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        what = " or ".join({"inputs": "input", "outputs": "output", "axes": "axis"}[k] for k in kinds)
        self.err(path, f"'{name}' is no {what} of definition '{self.id}' (has: {', '.join(have) or 'none'}){hint}")

    def formula(self, path, source, extra=()):
        if isinstance(source, (str, int, float)) and not isinstance(source, bool):
            self.S.formula(self._p(*path), source, self.scope | set(extra))

    # trace:
    def trace(self, tr):
        if not isinstance(tr, dict):
            return
        self.keys(("trace",), tr, TRACE_TOP_KEYS, "trace")
        top_vars = list(_d(tr.get("vars")))
        calls = [(("trace", "calls", j), c) for j, c in enumerate(_l(tr.get("calls"))) if isinstance(c, dict)]
        for path, c in calls:
            self.keys(path, c, TRACE_CALL_KEYS, "trace call")
        for path, blk in [(("trace",), tr)] + calls:
            names = top_vars + list(_d(blk.get("vars")))
            if "when" in blk:
                self.formula(path + ("when",), blk["when"], names)
            for k, v in _d(blk.get("vars")).items():
                self.name(path + ("vars", k), k, ("axes",))
                self.formula(path + ("vars", k), v, names)
            for k, v in _d(blk.get("args")).items():
                self.trace_arg(path + ("args", k), v, names)

    def trace_arg(self, path, v, names):
        if isinstance(v, str):
            self.name(path, v, ("inputs", "outputs"))
            return
        if isinstance(v, list):
            return
        if not isinstance(v, dict):
            return
        bad = sorted(set(v) - TRACE_ARG_KEYS)
        if bad:
            self.err(path + (bad[0],), f"unknown trace argument field '{bad[0]}' "
                                       f"(allowed: {', '.join(sorted(TRACE_ARG_KEYS))})")
        if "when" in v:
            self.formula(path + ("when",), v["when"], names)
        if "tensor" in v:
            self.name(path + ("tensor",), v["tensor"], ("inputs", "outputs"), guarded="when" in v)
        if "value" in v and v["value"] is not None:
            self.formula(path + ("value",), v["value"], names)
        for j, x in enumerate(_l(v.get("shape"))):
            self.formula(path + ("shape", j), x, names)
        for kind in ("tuple", "list"):
            for j, x in enumerate(_l(v.get(kind))):
                self.trace_arg(path + (kind, j), x, names)

    # verify:
    def verify(self, vb):
        if not isinstance(vb, dict):
            return
        self.keys(("verify",), vb, VERIFY_KEYS, "verify")
        for k in _d(vb.get("vars")):
            self.name(("verify", "vars", k), k, ("axes",))
        self.verify_inputs(("verify", "inputs"), vb.get("inputs"))
        for k in _d(vb.get("tolerance")):
            self.name(("verify", "tolerance", k), k, ("outputs",))
        kb = vb.get("kernel")
        if isinstance(kb, dict):
            self.keys(("verify", "kernel"), kb, VERIFY_KERNEL_KEYS, "verify.kernel")
            self.kernel(("verify", "kernel"), kb)
            alt = kb.get("alternative")
            if isinstance(alt, dict):
                self.keys(("verify", "kernel", "alternative"), alt, VERIFY_ALTERNATIVE_KEYS, "verify.kernel.alternative")
                self.kernel(("verify", "kernel", "alternative"), alt)
        tb = vb.get("template")
        if isinstance(tb, dict):
            self.keys(("verify", "template"), tb, VERIFY_TEMPLATE_KEYS, "verify.template")
            self.verify_args(("verify", "template", "args"), tb.get("args"))
            self.verify_inputs(("verify", "template", "inputs"), tb.get("inputs"))
            for k in _d(tb.get("vars")):
                self.name(("verify", "template", "vars", k), k, ("axes",))
            for j, o in enumerate(_l(tb.get("returns"))):
                self.name(("verify", "template", "returns", j), o, ("outputs",))
            call = tb.get("call")
            if isinstance(call, dict):
                self.verify_args(("verify", "template", "call", "args"), call.get("args"))
        for j, df in enumerate(_l(vb.get("differences"))):
            if not isinstance(df, dict):
                continue
            path = ("verify", "differences", j)
            self.keys(path, df, VERIFY_DIFFERENCE_KEYS, "verify.differences")
            self.verify_inputs(path + ("inputs",), df.get("inputs"))
            self.listed(path + ("skip_outputs",), df.get("skip_outputs"), ("outputs",))
            self.listed(path + ("tolerance",), df.get("tolerance"), ("outputs",))

    def verify_inputs(self, path, block):
        for k, v in _d(block).items():
            self.name(path + (k,), k, ("inputs",), guarded=isinstance(v, dict) and "when" in v)

    def kernel(self, path, kb):
        for sect in ("init", "plan", "args"):
            self.verify_args(path + (sect,), kb.get(sect))
        for j, a in enumerate(_l(kb.get("positional"))):
            self.verify_arg(path + ("positional", j), a)
        self.listed(path + ("returns",), kb.get("returns"), ("outputs",))
        self.listed(path + ("from_args",), kb.get("from_args"), ("outputs",))

    def listed(self, path, block, kinds):
        """Each name of a list, or each key of a mapping, at path must be one of those kinds."""
        for j, name in (enumerate(block) if isinstance(block, list) else ((k, k) for k in _d(block))):
            self.name(path + (j,), name, kinds)

    def verify_args(self, path, block):
        for k, v in _d(block).items():
            self.verify_arg(path + (k,), v)

    def verify_arg(self, path, v):
        guarded = isinstance(v, dict) and "when" in v
        if isinstance(v, str):
            self.name(path, v, ("inputs", "outputs"))
        elif isinstance(v, dict):
            for key in ("tensor", "pack_e2m1", "output"):
                if isinstance(v.get(key), str):
                    self.name(path + (key,), v[key], ("inputs", "outputs"), guarded)
            for kind in ("tuple", "list", "cat"):
                for j, x in enumerate(_l(v.get(kind))):
                    self.verify_arg(path + (kind, j), x)


def recipe_block_problems(doc: Located, known: Set[str]) -> List[DefcError]:
    """trace: and verify: blocks: their fields, the tensors and axes they name, and the names their
    trace formulas read (a typo otherwise shows only when `defc trace` / `defc verify` runs)."""
    probs: List[DefcError] = []
    data = _d(doc.data)
    defs = _l(data.get("definitions"))
    spec_tensors = {n for d in defs if isinstance(d, dict) for sect in ("inputs", "outputs") for n in _d(d.get(sect))}
    fam = set(known) | set(_d(data.get("let")))
    for i, d in enumerate(defs):
        if not isinstance(d, dict) or not (d.get("trace") or d.get("verify")):
            continue
        scope = fam | set(_d(d.get("sweep"))) | set(_d(d.get("let")))
        for c in _l(d.get("cases")):
            scope |= set(_d(_d(c).get("let")))
        chk = _BlockChecker(doc, i, d, spec_tensors, scope, probs)
        chk.trace(d.get("trace"))
        chk.verify(d.get("verify"))
    return probs


DIFF_FIELD = re.compile(r"^(op_type|tags(\.[A-Za-z0-9_*?\[\]-]+)?|(axes|inputs|outputs)\.[A-Za-z0-9_*?\[\]]+(\.(type|value|shape|dtype))?)$")


def dump_difference_problems(doc: Located) -> List[DefcError]:
    """dump_differences field patterns must name fields `defc diff` reports, and names be unique per
    definition (spec-level ones count for every definition)."""
    probs = []
    data = _d(doc.data)
    blocks = [(("dump_differences",), _l(data.get("dump_differences")))]
    for i, d in enumerate(_l(data.get("definitions"))):
        if isinstance(d, dict):
            blocks.append((("definitions", i, "dump_differences"), _l(d.get("dump_differences"))))
    top = {k.get("name") for k in blocks[0][1] if isinstance(k, dict)}
    for base, entries in blocks:
        seen = set() if base == ("dump_differences",) else set(top)
        for j, k in enumerate(entries):
            if not isinstance(k, dict):
                continue
            if k.get("name") in seen:
                p = base + (j, "name")
                probs.append(_err(f"dump difference {k.get('name')!r} is named twice for the same definitions",
                                  doc.where(p), field_name(p)))
            seen.add(k.get("name"))
            for n, pat in enumerate(_l(k.get("fields"))):
                if isinstance(pat, str) and not DIFF_FIELD.match(pat):
                    p = base + (j, "fields", n)
                    probs.append(_err(f"field pattern {pat!r} names no field defc diff reports (op_type, tags[.NS], "
                                      f"axes.X[.type|.value], inputs.X[.shape|.dtype], outputs.X[.shape|.dtype])",
                                      doc.where(p), field_name(p)))
    return probs


def name_pattern_problems(doc: Located) -> List[Tuple[int, str, Any]]:
    """Const axes the name pattern does not determine (syntactic part).

    An axis is determined when the pattern mentions it, or when every name its value formula reads is
    determined: a mentioned placeholder, a single-valued sweep, or another determined const axis."""
    out = []
    for i, d in enumerate(_l(_d(doc.data).get("definitions"))):
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            continue
        known = {m.group(1).strip() for m in PLACEHOLDER.finditer(d["name"])}
        known |= {k for k, v in _d(d.get("sweep")).items() if isinstance(v, list) and len(v) == 1}
        consts = {}
        for name, a in _d(d.get("axes")).items():
            if isinstance(a, dict) and "value" in a:
                consts[name] = _names(a["value"])[0] if isinstance(a["value"], str) else set()
        changed = True
        while changed:
            changed = False
            for name, used in consts.items():
                if name not in known and used <= known:
                    known.add(name)
                    changed = True
        for name, used in consts.items():
            if name not in known:
                out.append((i, name, _d(d.get("axes"))[name]["value"]))
    return out   # (def index, axis, formula): confirmed against the catalogue by the render pass


# ---------------------------------------------------------------------------------------------
# templates

def _find_template(name: str, dirs: Sequence[str]) -> Optional[str]:
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    return None


def _line_of(source: str, var: str) -> int:
    pat = re.compile(r"(\{\{|\{%)[^}]*\b" + re.escape(var) + r"\b")
    for n, line in enumerate(source.splitlines(), 1):
        if pat.search(line):
            return n
    return 1


def template_problems(doc: Located, dirs: Sequence[str]) -> List[DefcError]:
    from jinja2 import TemplateSyntaxError, meta
    from defc.compiler.render import environment
    env = environment(tuple(dirs))
    probs: List[DefcError] = []
    seen: Set[Tuple[str, str]] = set()
    for i, d in enumerate(_l(_d(doc.data).get("definitions"))):
        if not isinstance(d, dict):
            continue
        ref = _d(d.get("reference"))
        axes = _d(d.get("axes"))
        const_axes = {k for k, a in axes.items()
                      if isinstance(a, dict) and a.get("type", "const" if "value" in a else "var") == "const"}
        jobs = []
        if isinstance(ref.get("template"), str):
            ctx = set(REFERENCE_CONTEXT) | set(_d(ref.get("params"))) | const_axes
            jobs.append((("definitions", i, "reference", "template"), ref["template"], ctx))
        tname = d.get("template", "definition.json.j2")
        if isinstance(tname, str):
            jobs.append((("definitions", i, "template"), tname, set(DEFINITION_CONTEXT)))
        for path, tname, ctx in jobs:
            found = _find_template(tname, dirs)
            if found is None:
                probs.append(_err(f"template '{tname}' not found in {', '.join(display_path(x) for x in dirs)}",
                                  doc.where(path), field_name(path)))
                continue
            with open(found, encoding="utf-8") as fh:
                source = fh.read()
            try:
                parsed = env.parse(source)
            except TemplateSyntaxError as e:
                key = (found, "syntax")
                if key not in seen:
                    seen.add(key)
                    probs.append(_err(f"template syntax error: {e.message}",
                                      Location(display_path(found), e.lineno or 1, 1)))
                continue
            try:
                # compiles the template: an unknown filter or test is a TemplateAssertionError here
                undeclared = meta.find_undeclared_variables(parsed)
            except TemplateSyntaxError as e:
                key = (found, "syntax")
                if key not in seen:
                    seen.add(key)
                    probs.append(_err(f"template error: {e.message}", Location(display_path(found), e.lineno or 1, 1)))
                continue
            for sub in meta.find_referenced_templates(parsed):
                if isinstance(sub, str) and _find_template(sub, dirs) is None:
                    probs.append(_err(f"includes template '{sub}', which does not exist",
                                      Location(display_path(found), _line_of(source, sub), 1)))
            missing = sorted(undeclared - ctx - set(env.globals))
            for var in missing:
                key = (found, var)
                if key in seen:
                    continue
                seen.add(key)
                probs.append(_err(f"template variable '{var}' is not provided for definition '{d.get('id')}' "
                                  f"(it sees: {', '.join(sorted(ctx))})",
                                  Location(display_path(found), _line_of(source, var), 1)))
    return probs


# ---------------------------------------------------------------------------------------------
# rendering against the catalogue

def has_top_level_run(source: str) -> Optional[str]:
    """None when the source defines a top-level ``def run``; else what is wrong."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return f"reference is not valid Python: {e.msg} (line {e.lineno})"
    if any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body):
        return None
    return "reference does not define a top-level function 'run'"


def _run_def(source: str) -> Optional[ast.FunctionDef]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    runs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run"]
    return runs[-1] if runs else None


def run_signature_problem(source: str, inputs: Sequence[str]) -> Optional[str]:
    """What is wrong with ``run``'s parameters: runners and flashinfer-bench call
    ``run(*inputs)`` in the definition's input order, so its parameters are the inputs, named and
    ordered as they are (extra parameters need defaults)."""
    fn = _run_def(source)
    if fn is None or fn.args.vararg is not None:
        return None
    a = fn.args
    params = [x.arg for x in a.posonlyargs + a.args]
    inputs = list(inputs)
    n_defaults = len(a.defaults)
    required = params[:len(params) - n_defaults] if n_defaults else params
    required_kw = [x.arg for x, d in zip(a.kwonlyargs, a.kw_defaults) if d is None]
    shown = f"run({', '.join(params)}) but the inputs are ({', '.join(inputs)})"
    if params[:len(inputs)] == inputs and len(required) <= len(inputs) and not required_kw:
        return None
    if required_kw:
        return f"run() has keyword-only parameters without defaults ({', '.join(required_kw)}): {shown}"
    if sorted(params[:len(inputs)]) == sorted(inputs):
        return f"run()'s parameters are the inputs in another order: {shown}; runners pass them by position"
    missing = [x for x in inputs if x not in params]
    extra = [x for x in required if x not in inputs]
    parts = []
    if missing:
        parts.append(f"no parameter for input{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if extra:
        parts.append(f"parameter{'s' if len(extra) > 1 else ''} {', '.join(extra)} "
                     f"{'are' if len(extra) > 1 else 'is'} no input")
    if not parts:
        parts.append("the parameters do not follow the inputs' order")
    return f"run()'s parameters do not match the inputs ({'; '.join(parts)}): {shown}"


def is_stub_reference(source: str) -> bool:
    """run() raises NotImplementedError (the scaffold's placeholder)."""
    fn = _run_def(source)
    if fn is None:
        return False
    for node in ast.walk(fn):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id == "NotImplementedError":
                return True
    return False


def fib_definition_error(doc: Dict[str, Any]) -> Optional[str]:
    """flashinfer_bench.data.Definition's verdict as one line (None when accepted)."""
    try:
        from flashinfer_bench.data import Definition
    except Exception:   # flashinfer-bench missing: the other checks still run
        return None
    try:
        Definition.model_validate(doc)
    except Exception as e:  # pydantic ValidationError
        errs = getattr(e, "errors", None)
        if callable(errs):
            parts = []
            for x in errs():
                loc = ".".join(str(p) for p in x.get("loc", ()))
                parts.append(f"{loc + ': ' if loc else ''}{x.get('msg', '')}")
            return "; ".join(parts)
        return str(e).splitlines()[0]
    return None


class _OneDefinition(Located):
    """A view of a spec document in which definition ``index`` is definition 0 (errors keep the real path)."""

    def __init__(self, doc: Located, index: int):
        super().__init__(doc.file, doc.data, doc.positions)
        self.index = index

    def where(self, path=()):
        path = tuple(path)
        if path[:2] == ("definitions", 0):
            path = ("definitions", self.index) + path[2:]
        return Located.where(self, path)


def _per_definition_specs(spec):
    """One single-definition Spec per definition, so that one failing definition hides no other."""
    from defc.compiler.check import Spec
    out = []
    for i, d in enumerate(spec.definitions):
        base = ("definitions", i)
        formulas = {("definitions", 0) + k[2:]: v for k, v in spec.formulas.items() if k[:2] == base}
        formulas.update({k: v for k, v in spec.formulas.items() if k[0] != "definitions"})
        out.append(Spec(path=spec.path, doc=_OneDefinition(spec.doc, i), family=spec.family, definitions=[d],
                        formulas=formulas))
    return out


def _structure(inst) -> str:
    import json
    axes = {k: (a.get("type"), a.get("value")) for k, a in inst.axes.items()}
    tensors = [{k: (t.get("shape"), t.get("dtype"), bool(t.get("optional"))) for k, t in sect.items()}
               for sect in (inst.inputs, inst.outputs)]
    return json.dumps([inst.op_type, axes, tensors, inst.constraints], sort_keys=True, default=str)


def render_problems(doc: Located, spec_path: str, specs_dir: str, extra_templates: Sequence[str],
                    models: Optional[Sequence[str]] = None, pattern_candidates=()) -> List[DefcError]:
    """Evaluate and render each definition for every catalogue model (all quantization variants)."""
    from defc.compiler.check import load_spec
    from defc.compiler.evaluate import Evaluator
    from defc.compiler.facts import load_facts, model_env, quant_key
    from defc.compiler.models import catalogue_slugs, resolve_model
    from defc.compiler.pipeline import CompileOptions, servings_for
    from defc.compiler.render import render, template_dirs
    from defc.compiler.serving import Serving
    probs: List[DefcError] = []
    by_loc: Dict[str, List[str]] = {}
    axis_values: Dict[Tuple[int, str], Set[int]] = {}
    first_of: Dict[str, Tuple[int, str, str, Dict[str, int]]] = {}
    applied: Set[int] = set()
    rendered: Set[str] = set()
    dirs = template_dirs(list(extra_templates))
    whens: Dict[int, Any] = {}      # definition index -> its when: formula (parsed)
    when_outcomes: Dict[int, Set[Optional[bool]]] = {}
    for i, d in enumerate(_l(_d(doc.data).get("definitions"))):
        if isinstance(d, dict) and isinstance(d.get("when"), (str, bool)):
            try:
                whens[i] = F.parse(d["when"])
            except F.FormulaError:
                pass

    def record(e: DefcError, key_extra: str = ""):
        errs = e.errors if isinstance(e, DefcErrors) else [e]
        for x in errs:
            by_loc.setdefault(f"{x.location}|{x.field}|{key_extra}", []).append(str(x))

    try:
        spec = load_spec(spec_path)
        facts = load_facts(specs_dir)
    except DefcError as e:
        record(e)
        spec = None
    with cached_inputs():
        for slug in (models or catalogue_slugs()) if spec is not None else ():
            try:
                model = resolve_model(slug)
                servings, _ = servings_for(model, CompileOptions(model=slug, quantization=["all"], specs_dir=specs_dir),
                                           facts)
                probe = model_env(model.config, Serving().symbols(), facts, model.slug, model.origin)
                default_quant = quant_key(facts, probe.get("quant_method"))
            except DefcError as e:
                record(e)
                continue
            ev = Evaluator(model.slug, ["all"])
            for s in servings:
                try:
                    env = model_env(model.config, s.symbols(), facts, model.slug, model.origin)
                except DefcError as e:
                    record(e)
                    continue
                for i, f in whens.items():
                    try:
                        outcome: Optional[bool] = F.truth(f, env)
                    except F.FormulaError:
                        outcome = None    # reads a let or a name this model lacks: not judged here
                    when_outcomes.setdefault(i, set()).add(outcome)
                for i, one in enumerate(_per_definition_specs(spec)):
                    try:
                        insts = ev.run(one, env, s, default_quant)
                    except DefcError as e:
                        record(e)
                        continue
                    for inst in insts:
                        inst.def_index = i
                        applied.add(i)
                        for ax, v in inst.const_axes.items():
                            axis_values.setdefault((i, ax), set()).add(v)
                        shape = _structure(inst)
                        prev = first_of.get(inst.name)
                        if prev is None:
                            first_of[inst.name] = (i, slug, shape, dict(inst.const_axes))
                        elif prev[2] != shape:
                            diff = sorted(k for k in set(prev[3]) | set(inst.const_axes)
                                          if prev[3].get(k) != inst.const_axes.get(k))
                            what = (", ".join(f"{k}={prev[3].get(k)} vs {inst.const_axes.get(k)}" for k in diff)
                                    if diff else "axes, tensors or constraints")
                            p = ("definitions", i, "name")
                            same_model = prev[1] == slug
                            sev = "error" if same_model else "warning"
                            where = (f"model {slug}" if same_model else f"models {prev[1]} and {slug}")
                            record(_err(f"two different definitions are named '{inst.name}' ({where}, from "
                                        f"definitions[{prev[0]}] and definitions[{i}]: {what}); the name pattern "
                                        f"must tell them apart", doc.where(p), "name", sev), "collision")
                        if inst.name in rendered:
                            continue
                        rendered.add(inst.name)
                        try:
                            out = render(inst, [model.slug], dirs)
                        except DefcError as e:
                            record(e)
                            continue
                        _check_rendered(doc, i, inst.name, slug, out, probs, record)
    compile_failed = any(m and ": error: " in m[0] and not k.endswith("|collision") for k, m in by_loc.items())
    for key, msgs in by_loc.items():
        first = msgs[0]
        others = len(set(msgs)) - 1
        probs.append(_Raw(first + (f" (and {others} more model{'s' if others > 1 else ''})" if others else "")))
    for i, axis, formula in pattern_candidates:
        vals = axis_values.get((i, axis), set())
        if len(vals) > 1 or (i not in applied and not isinstance(formula, (int, float))):
            p = ("definitions", i, "name")
            seen_vals = f" (catalogue values: {', '.join(map(str, sorted(vals)))})" if vals else ""
            probs.append(_err(f"name pattern does not mention const axis '{axis}' (value '{formula}'){seen_vals}; "
                              f"two models that differ in it would get the same name", doc.where(p), "name", "warning"))
    whole_catalogue = models is None or set(catalogue_slugs()) <= set(models)
    for i, f in whens.items():
        constant = not _names(f.source)[0] and not _names(f.source)[1]
        if when_outcomes.get(i) == {True} and (whole_catalogue or constant):
            p = ("definitions", i, "when")
            what = "is always true" if constant else "holds for every catalogue model and serving configuration"
            probs.append(_err(f"when: '{f.source}' {what}, so the definition is emitted for every model: say which models it "
                              f"is for (a config field or fact only they have)", doc.where(p), field_name(p),
                              "warning"))
    data = _d(doc.data)
    for i, d in enumerate(_l(data.get("definitions"))):
        if isinstance(d, dict) and i not in applied and not compile_failed and spec is not None:
            p = ("definitions", i)
            probs.append(_err(f"definition '{d.get('id')}' applies to no catalogue model, so its templates were not "
                              f"rendered", doc.where(p), field_name(p), "warning"))
    return probs


def _check_rendered(doc: Located, i: int, name: str, slug: str, out: Dict[str, Any], probs: List[DefcError],
                    record=None) -> None:
    where_ref = ("definitions", i, "reference", "template")
    bad = has_top_level_run(out.get("reference", ""))
    if bad:
        probs.append(_err(f"{bad} (rendered for {name}, model {slug})", doc.where(where_ref), field_name(where_ref)))
        return
    source = out.get("reference", "")
    bad = run_signature_problem(source, list(out.get("inputs") or {}))
    if bad:
        e = _err(f"{bad} (rendered for {name}, model {slug})", doc.where(where_ref), field_name(where_ref))
        record(e, "run") if record else probs.append(e)
    if is_stub_reference(source):
        e = _err("the reference is a stub (run() raises NotImplementedError): write the computation",
                 doc.where(where_ref), field_name(where_ref), "warning")
        record(e, "stub") if record else probs.append(e)
    verdict = fib_definition_error(out)
    if verdict:
        probs.append(_err(f"flashinfer_bench rejects the rendered {name} (model {slug}): {verdict}",
                          doc.where(("definitions", i)), field_name(("definitions", i))))
    spec_tags = _l(_d(_l(_d(doc.data).get("definitions"))[i]).get("tags"))
    spec_bad = any(tag_problem(t.get("tag") if isinstance(t, dict) else t) for t in spec_tags
                   if isinstance(t, (str, dict)))
    if not spec_bad:
        for t in out.get("tags") or []:
            bad = tag_problem(t)
            if bad:
                p = ("definitions", i, "tags")
                probs.append(_err(f"rendered tag of {name}: {bad[1]}", doc.where(p), field_name(p), bad[0]))


class _Raw(DefcError):
    """An already formatted problem line (kept verbatim)."""

    def __init__(self, line: str):
        sev = "warning" if re.search(r":\d+:\d+: warning: |^[^:]+: warning: ", line) else "error"
        super().__init__(line, None, None, sev)
        self.line = line

    def __str__(self) -> str:
        return self.line


# ---------------------------------------------------------------------------------------------
# facts

def facts_problems(doc: Located) -> List[DefcError]:
    probs = list(schema_errors(doc, "model_facts.schema.json"))
    data = _d(doc.data)
    nesting = tuple(x for x in _l(data.get("nesting")) if isinstance(x, str))
    known = set(_catalogue_fields(nesting)) | documented_keys(data) | set(SERVING_SYMBOLS) | set(ALWAYS_KNOWN)
    S = _Scope(doc, known, probs)
    defined: Set[str] = set()
    for name, alts in _d(data.get("facts")).items():
        items = alts if isinstance(alts, list) else [alts]
        for j, alt in enumerate(items):
            p = ("facts", name, j) if isinstance(alts, list) else ("facts", name)
            parts = []
            if isinstance(alt, dict):
                if "when" in alt:
                    parts.append((p + ("when",), alt["when"]))
                if "value" in alt:
                    parts.append((p + ("value",), alt["value"]))
            else:
                parts.append((p, alt))
            for q, src in parts:
                try:
                    F.parse(src)
                except F.FormulaError as e:
                    probs.append(_err(f"bad formula {src!r}: {e}", doc.where(q), field_name(q)))
                    continue
                # a fact's alternatives are tried in order: one no catalogue model can use is dead, not wrong
                S.formula(q, src, known | defined, severity="warning")
        defined.add(name)
    return probs


# ---------------------------------------------------------------------------------------------
# driver

def default_targets(specs_dir: str = SPECS_DIR) -> List[str]:
    found = sorted(glob.glob(os.path.join(specs_dir, "*.yaml")))
    facts = [p for p in found if os.path.basename(p) == MODEL_FACTS]
    return facts + [p for p in found if not os.path.basename(p).startswith("_")]


def lint(paths: Sequence[str] = (), specs_dir: str = SPECS_DIR, extra_templates: Sequence[str] = (),
         models: Optional[Sequence[str]] = None, render: bool = True) -> List[DefcError]:
    """Every problem of the given spec files (default: all specs and the model facts)."""
    from defc.compiler.pipeline import spec_paths
    from defc.compiler.render import template_dirs
    targets: List[str] = []
    if paths:
        for p in paths:
            if os.path.basename(p) == MODEL_FACTS or p == MODEL_FACTS[:-5]:
                targets.append(p if os.path.exists(p) else os.path.join(specs_dir, MODEL_FACTS))
            else:
                targets.extend(spec_paths([p], specs_dir))
    else:
        targets = default_targets(specs_dir)
        if not targets:
            raise DefcError("no specs found", Location(display_path(specs_dir)))
    dirs = template_dirs(list(extra_templates))
    facts_path = os.path.join(specs_dir, MODEL_FACTS)
    facts_doc = None
    problems: List[DefcError] = []
    facts_ok = True
    try:
        facts_doc = load_yaml(facts_path, "model facts")
    except DefcError as e:
        facts_ok = False
        if any(os.path.abspath(t) == os.path.abspath(facts_path) for t in targets):
            problems.append(e)
    known = universe(facts_doc)
    for path in targets:
        if os.path.abspath(path) == os.path.abspath(facts_path) or os.path.basename(path) == MODEL_FACTS:
            if facts_doc is not None:
                fp = facts_problems(facts_doc)
                facts_ok = facts_ok and not any(x.severity == "error" for x in fp)
                problems.extend(fp)
            continue
        try:
            doc = load_yaml(path, "spec")
        except DefcError as e:
            problems.append(e)
            continue
        errs, _ = spec_problems(doc)
        problems.extend(errs)
        sym = symbol_problems(doc, known)
        problems.extend(sym)
        problems.extend(tag_problems(doc))
        problems.extend(dump_difference_problems(doc))
        problems.extend(recipe_block_problems(doc, known))
        tmpl = template_problems(doc, dirs)
        problems.extend(tmpl)
        candidates = name_pattern_problems(doc)
        blocking = [x for x in errs + sym + tmpl if x.severity == "error"]
        if render and not blocking and facts_ok:
            problems.extend(render_problems(doc, path, specs_dir, extra_templates, models, candidates))
        elif candidates:
            for i, axis, formula in candidates:
                p = ("definitions", i, "name")
                problems.append(_err(f"name pattern does not mention const axis '{axis}' (value '{formula}')",
                                     doc.where(p), "name", "warning"))
    return _dedupe(problems)


def _sort_key(e: DefcError):
    if isinstance(e, _Raw):
        m = re.match(r"^(.*?):(\d+):(\d+): ", e.line)
        return (m.group(1), int(m.group(2)), int(m.group(3))) if m else (e.line, 0, 0)
    loc = e.location
    return (loc.file if loc else "", loc.line if loc else 0, loc.col if loc else 0)


def _dedupe(problems: Iterable[DefcError]) -> List[DefcError]:
    out, seen = [], set()
    for p in problems:
        s = str(p)
        if s not in seen:
            seen.add(s)
            out.append(p)
    out.sort(key=_sort_key)
    return out
