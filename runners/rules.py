"""A small generic engine for named normalisation rules kept as data (YAML).

The rules themselves — which dumper/schema mismatches exist, which SGLang mislabels to repair —
live in ``runners/stage_rules.yaml`` and ``runners/repair_rules.yaml``; this module only knows
how to apply a rule.  A rule file::

    rules:
      - name: index-tensors-int32            # unique, lower-case words joined by '-'
        why: "one line: which mismatch, where it comes from"
        when: 'dtype == "unknown" and key in ["kv_indptr", "kv_indices"]'   # a formula (optional)
        each: inputs                         # inputs | outputs | axes | a list of them (optional)
        name_pattern: '^gqa_paged_(?P<stage>decode|prefill)_'   # doc rules: must match the name;
                                                                # named groups become {placeholders}
        set: {dtype: '"int32"'}              # actions, see below

Formulas use the spec formula language (compiler/formula.py).  A document rule sees ``name``,
``op_type``, ``tags``, ``input_names``, ``output_names``, ``axis_names``, ``inplace_names``
(outputs that reuse an input's name), ``has_reference``,
``reference_has_run``, ``source`` (sglang | replay | flashinfer | dataset | unknown) and every
const axis with a value under its own name.  A rule with ``each:`` runs once per entry of the
section(s) and also sees ``section``, ``key``, ``dtype``, ``shape``, ``is_scalar``,
``optional``, ``param``, ``type``, ``value``, ``has_value``, ``in_inputs``, ``in_outputs`` and
``same_shape_dtypes`` (known dtypes of the other tensors with exactly this shape).

Actions (applied in this order):
  ``skip: "reason"``            the document is not a kernel definition; it is left out
  ``set_axes: {axis: formula}`` const axis values, all computed from the values before the rule
  ``set: {field: formula}``     a field of the entry (each) or a top-level string field (doc)
  ``rename_function: {pattern: 'regex with one group', to: run}``  renames the reference's function
  ``drop_keys: [k, ...]``       keys of the entry (each) or top-level keys (doc)
  ``rename: "template"``        the entry's key (each, ``{key}`` available) or the document's name
  ``drop: true``                the entry (each)
  ``also_as: ["template"]``     more names the document answers to (``defc diff`` only)
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

from defc.compiler import formula as F
from defc.compiler.errors import DefcError, Location
from defc.compiler.load import Located, load_yaml

SECTIONS = ("inputs", "outputs", "axes")
RULE_KEYS = {"name", "why", "when", "each", "name_pattern", "skip", "set_axes", "set", "rename_function",
             "drop_keys", "rename", "drop", "also_as", "source"}
ACTIONS = ("skip", "set_axes", "set", "rename_function", "drop_keys", "rename", "drop", "also_as")
DOC_ONLY = ("skip", "set_axes", "rename_function", "also_as")
EACH_ONLY = ("drop",)
RULE_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
RUN_DEF = re.compile(r"(?m)^def run\(")


@dataclass
class Rule:
    name: str
    why: str
    index: int
    doc: Located
    when: Optional[F.Formula] = None
    each: Tuple[str, ...] = ()
    name_pattern: Optional[re.Pattern] = None
    actions: Dict[str, Any] = field(default_factory=dict)
    formulas: Dict[Tuple, F.Formula] = field(default_factory=dict)

    def where(self, *path) -> Location:
        return self.doc.where(("rules", self.index) + tuple(path))


@dataclass
class Outcome:
    doc: Dict[str, Any]
    fired: List[str] = field(default_factory=list)
    skipped: Optional[Tuple[str, str]] = None            # (rule, reason)
    also_as: List[Tuple[str, str]] = field(default_factory=list)   # (name, rule)


def _err(rule_doc: Located, path, msg, fld=None) -> DefcError:
    return DefcError(msg, rule_doc.where(path), fld)


def _field(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _parse_formula(located: Located, path, text) -> F.Formula:
    if isinstance(text, bool) or isinstance(text, (int, float)):
        text = str(text)
    if not isinstance(text, str):
        raise _err(located, path, f"expected a formula (string), got {type(text).__name__}", _field(path))
    try:
        return F.parse(text)
    except F.FormulaError as e:
        raise _err(located, path, f"bad formula: {e}", _field(path)) from None


def _check_template(located: Located, path, text) -> str:
    if not isinstance(text, str) or not text:
        raise _err(located, path, "expected a non-empty name template (string)", _field(path))
    return text


@lru_cache(maxsize=16)
def _load_cached(path: str, mtime: float) -> Tuple[Tuple[Rule, ...], Dict[str, Any]]:
    located = load_yaml(path, "rule file")
    data = located.data
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise DefcError("a rule file needs a top-level 'rules:' list", located.where(()), "rules")
    rules: List[Rule] = []
    seen: Dict[str, int] = {}
    for i, r in enumerate(data["rules"]):
        base = ("rules", i)
        if not isinstance(r, dict):
            raise _err(located, base, "each rule must be a mapping", _field(base))
        unknown = sorted(set(r) - RULE_KEYS)
        if unknown:
            raise _err(located, base + (unknown[0],), f"unknown rule field '{unknown[0]}' "
                       f"(allowed: {', '.join(sorted(RULE_KEYS))})", _field(base + (unknown[0],)))
        name = r.get("name")
        if not isinstance(name, str) or not RULE_NAME.match(name):
            raise _err(located, base + ("name",), f"rule name must be lower-case words joined by '-', got {name!r}",
                       _field(base + ("name",)))
        if name in seen:
            raise _err(located, base + ("name",), f"duplicate rule name '{name}' (also rule {seen[name]})",
                       _field(base + ("name",)))
        seen[name] = i
        if not isinstance(r.get("why"), str) or not r["why"].strip():
            raise _err(located, base + ("why",), f"rule '{name}' needs a 'why:' line", _field(base + ("why",)))
        rule = Rule(name=name, why=" ".join(r["why"].split()), index=i, doc=located)
        if "when" in r:
            rule.when = _parse_formula(located, base + ("when",), r["when"])
        each = r.get("each")
        if each is not None:
            each_t = (each,) if isinstance(each, str) else tuple(each) if isinstance(each, list) else None
            if not each_t or any(s not in SECTIONS for s in each_t):
                raise _err(located, base + ("each",), f"'each' must be one or a list of {', '.join(SECTIONS)}",
                           _field(base + ("each",)))
            rule.each = each_t
        if "name_pattern" in r:
            try:
                rule.name_pattern = re.compile(str(r["name_pattern"]))
            except re.error as e:
                raise _err(located, base + ("name_pattern",), f"bad regular expression: {e}",
                           _field(base + ("name_pattern",))) from None
        acts = [a for a in ACTIONS if a in r]
        if not acts:
            raise _err(located, base, f"rule '{name}' has no action (one of {', '.join(ACTIONS)})", _field(base))
        for a in acts:
            p = base + (a,)
            v = r[a]
            if rule.each and a in DOC_ONLY:
                raise _err(located, p, f"'{a}' applies to whole documents; remove 'each'", _field(p))
            if not rule.each and a in EACH_ONLY:
                raise _err(located, p, f"'{a}' needs 'each:' (which entries to drop)", _field(p))
            if a == "skip":
                if not isinstance(v, str) or not v.strip():
                    raise _err(located, p, "skip needs a reason (string)", _field(p))
            elif a in ("set", "set_axes"):
                if not isinstance(v, dict) or not v:
                    raise _err(located, p, f"'{a}' must be a mapping of field: formula", _field(p))
                for k, text in v.items():
                    rule.formulas[(a, k)] = _parse_formula(located, p + (k,), text)
            elif a == "rename_function":
                if not isinstance(v, dict) or set(v) != {"pattern", "to"}:
                    raise _err(located, p, "rename_function needs exactly 'pattern' and 'to'", _field(p))
                try:
                    pat = re.compile(str(v["pattern"]), re.M)
                except re.error as e:
                    raise _err(located, p + ("pattern",), f"bad regular expression: {e}", _field(p)) from None
                if pat.groups != 1:
                    raise _err(located, p + ("pattern",), "the pattern must have exactly one group (the function name)",
                               _field(p))
                if not isinstance(v["to"], str) or not re.match(r"^[A-Za-z_]\w*$", v["to"]):
                    raise _err(located, p + ("to",), "'to' must be a Python identifier", _field(p))
                v = {"pattern": pat, "to": v["to"]}
            elif a == "drop_keys":
                if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
                    raise _err(located, p, "drop_keys must be a list of key names", _field(p))
            elif a == "rename":
                _check_template(located, p, v)
            elif a == "drop":
                if v is not True:
                    raise _err(located, p, "drop must be 'true'", _field(p))
            elif a == "also_as":
                if not isinstance(v, list) or not v:
                    raise _err(located, p, "also_as must be a list of name templates", _field(p))
                for j, t in enumerate(v):
                    _check_template(located, p + (j,), t)
            rule.actions[a] = v
        rules.append(rule)
    extra = {k: v for k, v in data.items() if k != "rules"}
    return tuple(rules), extra


def load_rules(path: str) -> List[Rule]:
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        mtime = 0.0
    return list(_load_cached(os.path.abspath(path), mtime)[0])


def load_rule_file(path: str) -> Tuple[List[Rule], Dict[str, Any]]:
    """The rules and the file's other top-level settings."""
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        mtime = 0.0
    rules, extra = _load_cached(os.path.abspath(path), mtime)
    return list(rules), dict(extra)


# ------------------------------------------------------------------------------------------------
# applying

def doc_env(doc: Dict[str, Any], source: str) -> Dict[str, Any]:
    env: Dict[str, Any] = {}
    for k, a in (doc.get("axes") or {}).items():
        if isinstance(a, dict) and a.get("type") == "const" and isinstance(a.get("value"), int) \
                and not isinstance(a.get("value"), bool):
            env[k] = a["value"]
    ref = doc.get("reference")
    env.update({
        "name": str(doc.get("name", "")),
        "op_type": str(doc.get("op_type", "")),
        "tags": [str(t) for t in doc.get("tags") or []],
        "input_names": list((doc.get("inputs") or {}).keys()),
        "output_names": list((doc.get("outputs") or {}).keys()),
        "axis_names": list((doc.get("axes") or {}).keys()),
        "inplace_names": [k for k in (doc.get("outputs") or {}) if k in (doc.get("inputs") or {})],
        "has_reference": isinstance(ref, str) and bool(ref.strip()),
        "reference_has_run": isinstance(ref, str) and bool(RUN_DEF.search(ref)),
        "source": source,
    })
    return env


def entry_env(base: Dict[str, Any], doc: Dict[str, Any], section: str, key: str, entry: Any) -> Dict[str, Any]:
    env = dict(base)
    e = entry if isinstance(entry, dict) else {}
    shape = e.get("shape")
    env.update({
        "section": section, "key": key,
        "dtype": e.get("dtype"), "shape": list(shape) if isinstance(shape, list) else None,
        "is_scalar": "shape" in e and shape is None,
        "optional": bool(e.get("optional")), "param": e.get("param"),
        "type": e.get("type"), "value": e.get("value"), "has_value": "value" in e and e.get("value") is not None,
        "in_inputs": key in (doc.get("inputs") or {}), "in_outputs": key in (doc.get("outputs") or {}),
        "same_shape_dtypes": _same_shape_dtypes(doc, section, key, shape),
    })
    return env


def _same_shape_dtypes(doc: Dict[str, Any], section: str, key: str, shape) -> List[str]:
    """Known dtypes of the other tensors with exactly this (non-scalar) shape, inputs first."""
    if not isinstance(shape, list) or not shape:
        return []
    out: List[str] = []
    for sect in ("inputs", "outputs"):
        for k, t in (doc.get(sect) or {}).items():
            if (sect, k) == (section, key) or not isinstance(t, dict):
                continue
            d = t.get("dtype")
            if t.get("shape") == shape and isinstance(d, str) and d != "unknown" and d not in out:
                out.append(d)
    return out


def _eval(rule: Rule, key: Tuple, env: Dict[str, Any], what: str):
    f = rule.formulas[key]
    try:
        return F.to_python(f.evaluate(env))
    except F.FormulaError as e:
        raise DefcError(f"rule '{rule.name}': {what}: '{f.source}': {e}", rule.where(*key), _field(("rules", rule.index) + key)) from None


def _truth(rule: Rule, env: Dict[str, Any]) -> bool:
    if rule.when is None:
        return True
    try:
        return F.truth(rule.when, env)
    except F.UndefinedSymbol:
        return False          # a rule about an axis the document lacks does not apply
    except F.FormulaError as e:
        raise DefcError(f"rule '{rule.name}': '{rule.when.source}': {e}", rule.where("when"), "when") from None


def _fill(rule: Rule, template: str, env: Dict[str, Any], path) -> str:
    def rep(m):
        v = env.get(m.group(1))
        if v is None:
            raise DefcError(f"rule '{rule.name}': placeholder '{{{m.group(1)}}}' is not defined for this document",
                            rule.where(*path), _field(("rules", rule.index) + tuple(path)))
        return str(v)
    return PLACEHOLDER.sub(rep, template)


def _apply_doc_rule(rule: Rule, doc: Dict[str, Any], env: Dict[str, Any], out: Outcome) -> bool:
    a = rule.actions
    if "skip" in a:
        out.skipped = (rule.name, " ".join(a["skip"].split()))
        return True
    changed = False
    if "set_axes" in a:
        new = {k: _eval(rule, ("set_axes", k), env, f"axis {k}") for k in a["set_axes"]}
        axes = doc.setdefault("axes", {})
        for k, v in new.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise DefcError(f"rule '{rule.name}': axis '{k}' must come out as a non-negative integer, got {v!r}",
                                rule.where("set_axes", k), "set_axes")
            ax = axes.setdefault(k, {"type": "const"})
            if ax.get("value") != v or ax.get("type") != "const":
                ax["type"] = "const"
                ax["value"] = v
                changed = True
        env.update(new)
    if "set" in a:
        for k in a["set"]:
            v = _eval(rule, ("set", k), env, f"field {k}")
            if doc.get(k) != v:
                doc[k] = v
                changed = True
    if "rename_function" in a:
        ref = doc.get("reference")
        if isinstance(ref, str):
            m = a["rename_function"]["pattern"].search(ref)
            if m and m.group(1) != a["rename_function"]["to"]:
                doc["reference"] = re.sub(r"\b%s\b" % re.escape(m.group(1)), a["rename_function"]["to"], ref)
                changed = True
    if "drop_keys" in a:
        for k in a["drop_keys"]:
            if k in doc:
                del doc[k]
                changed = True
    if "rename" in a:
        new_name = _fill(rule, a["rename"], env, ("rename",))
        if new_name != doc.get("name"):
            doc["name"] = new_name
            changed = True
    if "also_as" in a:
        for j, t in enumerate(a["also_as"]):
            n = _fill(rule, t, env, ("also_as", j))
            if n != doc.get("name") and n not in [x for x, _ in out.also_as]:
                out.also_as.append((n, rule.name))
                changed = True
    return changed


def _apply_each_rule(rule: Rule, doc: Dict[str, Any], base_env: Dict[str, Any]) -> bool:
    a = rule.actions
    changed = False
    for section in rule.each:
        entries = doc.get(section)
        if not isinstance(entries, dict):
            continue
        new_entries: Dict[str, Any] = {}
        renames: Dict[str, str] = {}
        for key, entry in list(entries.items()):
            env = entry_env(base_env, doc, section, key, entry)
            if not _truth(rule, env):
                new_entries[key] = entry
                continue
            if "drop" in a:
                changed = True
                continue
            entry = dict(entry) if isinstance(entry, dict) else entry
            if isinstance(entry, dict):
                if "set" in a:
                    for k in a["set"]:
                        v = _eval(rule, ("set", k), env, f"{section}.{key}.{k}")
                        if entry.get(k) != v:
                            entry[k] = v
                            changed = True
                if "drop_keys" in a:
                    for k in a["drop_keys"]:
                        if k in entry:
                            del entry[k]
                            changed = True
            new_key = key
            if "rename" in a:
                new_key = _fill(rule, a["rename"], env, ("rename",))
                if new_key != key:
                    if new_key in entries or new_key in new_entries:
                        raise DefcError(f"rule '{rule.name}': renaming {section} '{key}' to '{new_key}' "
                                        f"would clash with an existing entry", rule.where("rename"), "rename")
                    renames[key] = new_key
                    changed = True
            new_entries[new_key] = entry
        doc[section] = new_entries
        if section == "axes" and renames:
            for sect in ("inputs", "outputs"):
                for t in (doc.get(sect) or {}).values():
                    if isinstance(t, dict) and isinstance(t.get("shape"), list):
                        t["shape"] = [renames.get(x, x) for x in t["shape"]]
    return changed


def apply_rules(rules: List[Rule], doc: Dict[str, Any], source: str = "unknown") -> Outcome:
    """Apply ``rules`` in order to a copy of ``doc``; report which fired."""
    out = Outcome(copy.deepcopy(doc))
    d = out.doc
    for rule in rules:
        env = doc_env(d, source)
        if rule.name_pattern is not None:
            m = rule.name_pattern.search(env["name"])
            if not m:
                continue
            env.update({k: v for k, v in m.groupdict().items() if v is not None})
        if rule.each:
            if _apply_each_rule(rule, d, env):
                out.fired.append(rule.name)
            continue
        if not _truth(rule, env):
            continue
        if _apply_doc_rule(rule, d, env, out):
            out.fired.append(rule.name)
        if out.skipped:
            break
    return out
