"""Stage 2, check: a loaded spec against the spec JSON Schema and the formula language.

``check_spec`` returns a :class:`Spec` whose formulas are all parsed, or raises the first
problem as a located one-line error.  ``spec_problems`` returns every problem (used by lint).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, Iterator, List, Tuple

from . import formula as F
from .errors import DefcError, DefcErrors
from . import cache
from .load import Located, load_yaml
from .paths import SCHEMA_DIR

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float4_e2m1",
          "int64", "int32", "int16", "int8", "bool")


@lru_cache(maxsize=None)
def schema(name: str) -> dict:
    with open(os.path.join(SCHEMA_DIR, name), encoding="utf-8") as fh:
        return json.load(fh)


@lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema
    s = schema(name)
    cls = jsonschema.validators.validator_for(s)
    return cls(s)


@dataclass
class Spec:
    """A checked op-family spec."""

    path: str
    doc: Located
    family: str
    definitions: List[dict]
    formulas: Dict[Tuple, F.Formula] = field(default_factory=dict)
    # evaluate's per-definition plans, made when first needed (a spec is loaded once per process)
    plans: Dict[int, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def data(self) -> dict:
        return self.doc.data

    def where(self, path):
        return self.doc.where(path)


def _schema_message(err) -> str:
    """A short message for a jsonschema error."""
    v = err.validator
    path = list(err.absolute_path)
    if v == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            return f"unknown field '{extra[0]}'"
    if v == "required":
        m = re.search(r"'([^']+)' is a required property", err.message)
        return f"missing required field '{m.group(1) if m else err.message}'"
    if v == "type":
        want = err.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        return f"expected {want}, got {_jtype(err.instance)}"
    if v == "enum":
        return f"{err.instance!r} is not one of {', '.join(map(repr, err.validator_value))}"
    if v == "pattern":
        return f"{err.instance!r} does not match {err.validator_value}"
    if v == "oneOf":
        return f"{_short(err.instance)} is not a valid {path[-2] if len(path) > 1 and isinstance(path[-1], int) else (path[-1] if path else 'value')}"
    if v == "minItems":
        return "must not be empty"
    if v == "minProperties":
        return "must not be empty"
    if v == "propertyNames":
        return f"{err.message}"
    return err.message


def _jtype(x) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, int):
        return "integer"
    if isinstance(x, float):
        return "number"
    if isinstance(x, str):
        return "string"
    if isinstance(x, list):
        return "array"
    if isinstance(x, dict):
        return "object"
    return type(x).__name__


def _short(x) -> str:
    s = json.dumps(x, default=str)
    return s if len(s) < 60 else s[:57] + "..."


def field_name(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def schema_errors(doc: Located, schema_name: str) -> List[DefcError]:
    """Every violation of schema ``schema_name`` in doc, as located errors.  jsonschema is the slowest
    part of loading a spec, and its answer for the same text and the same schema never changes: a
    text (by load_yaml's digest) that passed is remembered in the parse cache and not validated
    again."""
    ok_key = schema_ok_key(schema_name, doc.digest) if doc.digest else None
    if ok_key is not None and cache.get(ok_key) is not None:
        return []
    errs = []
    for err in sorted(_validator(schema_name).iter_errors(doc.data), key=lambda e: list(map(str, e.absolute_path))):
        path = tuple(err.absolute_path)
        if err.validator == "propertyNames":
            # the offending key is the instance
            bad = err.instance
            errs.append(DefcError(f"'{bad}' is not a valid name", doc.where(path + (bad,)), field_name(path + (bad,))))
            continue
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            if extra:
                path = path + (extra[0],)
        errs.append(DefcError(_schema_message(err), doc.where(path), field_name(path)))
    if ok_key is not None and not errs:
        cache.put(ok_key, True)
    return errs


FORMULA_FIELDS = ("when", "requires", "value")


def _mapping(x: Any) -> dict:
    """x when it is a mapping, else {} (the schema reports the wrong type)."""
    return x if isinstance(x, dict) else {}


def _sequence(x: Any) -> list:
    """x when it is a list, else [] (the schema reports the wrong type)."""
    return x if isinstance(x, list) else []


def _formula_paths(data: dict) -> Iterator[Tuple[Tuple, Any]]:
    """Every (path, formula text) in a spec document."""
    if "requires" in data:
        yield ("requires",), data["requires"]
    for k, v in _mapping(data.get("let")).items():
        yield ("let", k), v
    yield from _gap_paths(data, ())
    for i, d in enumerate(_sequence(data.get("definitions"))):
        if not isinstance(d, dict):
            continue
        base = ("definitions", i)
        if "when" in d:
            yield base + ("when",), d["when"]
        for k, v in _mapping(d.get("let")).items():
            yield base + ("let", k), v
        yield from _gap_paths(d, base)
        for j, c in enumerate(_sequence(d.get("cases"))):
            if isinstance(c, dict):
                if "when" in c:
                    yield base + ("cases", j, "when"), c["when"]
                for k, v in _mapping(c.get("let")).items():
                    yield base + ("cases", j, "let", k), v
        for k, a in _mapping(d.get("axes")).items():
            if isinstance(a, dict):
                for f in ("value", "when"):
                    if f in a:
                        yield base + ("axes", k, f), a[f]
        for sect in ("inputs", "outputs"):
            for k, t in _mapping(d.get(sect)).items():
                if isinstance(t, dict) and "when" in t:
                    yield base + (sect, k, "when"), t["when"]
        for j, t in enumerate(_sequence(d.get("tags"))):
            if isinstance(t, dict) and "when" in t:
                yield base + ("tags", j, "when"), t["when"]
        for j, t in enumerate(_sequence(d.get("constraints"))):
            if isinstance(t, dict) and "when" in t:
                yield base + ("constraints", j, "when"), t["when"]
        ref = d.get("reference")
        if isinstance(ref, dict):
            for k, v in _mapping(ref.get("params")).items():
                yield base + ("reference", "params", k), v


def _gap_paths(item: dict, base: Tuple) -> Iterator[Tuple[Tuple, Any]]:
    for j, g in enumerate(_sequence(item.get("gaps"))):
        if isinstance(g, dict) and "when" in g:
            yield base + ("gaps", j, "when"), g["when"]


def spec_problems(doc: Located) -> Tuple[List[DefcError], Dict[Tuple, F.Formula]]:
    """All schema and formula problems of a loaded spec, and the parsed formulas."""
    if doc.data is None:
        return [DefcError("the spec is empty", doc.where(()))], {}
    errs = schema_errors(doc, "spec.schema.json")
    formulas: Dict[Tuple, F.Formula] = {}
    data = doc.data if isinstance(doc.data, dict) else {}
    if not isinstance(doc.data, dict):
        return errs or [DefcError("a spec must be a mapping", doc.where(()))], formulas
    for path, text in _formula_paths(data):
        if isinstance(text, (dict, list)) or text is None:
            continue  # the schema already complained
        try:
            formulas[path] = F.parse(text)
        except F.FormulaError as e:
            errs.append(DefcError(f"bad formula {_short(text)}: {e}", doc.where(path), field_name(path)))
    ids = {}
    for i, d in enumerate(_sequence(data.get("definitions"))):
        if isinstance(d, dict) and isinstance(d.get("id"), str):
            if d["id"] in ids:
                errs.append(DefcError(f"duplicate definition id '{d['id']}'", doc.where(("definitions", i, "id")),
                                      field_name(("definitions", i, "id"))))
            ids[d["id"]] = i
        if isinstance(d, dict):
            errs.extend(_shape_problems(doc, i, d))
    errs.sort(key=lambda e: (e.location.line if e.location else 0, e.location.col if e.location else 0))
    return errs, formulas


def _shape_problems(doc: Located, i: int, d: dict) -> List[DefcError]:
    """Tensor shapes must name declared axes; dtypes must be known or placeholders."""
    errs = []
    axes = d.get("axes") if isinstance(d.get("axes"), dict) else None     # not a mapping: the schema says so
    for sect in ("inputs", "outputs"):
        tensors = d.get(sect) if isinstance(d.get(sect), dict) else {}
        for name, t in tensors.items():
            if not isinstance(t, dict):
                continue
            for j, ax in enumerate(_sequence(t.get("shape"))):
                if isinstance(ax, str) and axes is not None and ax not in axes and not PLACEHOLDER.fullmatch(ax):
                    p = ("definitions", i, sect, name, "shape", j)
                    errs.append(DefcError(f"shape names undefined axis '{ax}'", doc.where(p), field_name(p)))
            dt = t.get("dtype")
            if isinstance(dt, str) and dt not in DTYPES and not PLACEHOLDER.search(dt):
                p = ("definitions", i, sect, name, "dtype")
                errs.append(DefcError(f"unknown dtype '{dt}' (one of: {', '.join(DTYPES)})", doc.where(p), field_name(p)))
    ins = set((d.get("inputs") or {}) if isinstance(d.get("inputs"), dict) else {})
    outs = set((d.get("outputs") or {}) if isinstance(d.get("outputs"), dict) else {})
    both = sorted(ins & outs)
    if both:
        p = ("definitions", i, "outputs", both[0])
        errs.append(DefcError(f"'{both[0]}' is both an input and an output (flashinfer-bench rejects that)",
                              doc.where(p), field_name(p)))
    for k, a in (axes or {}).items():
        if isinstance(a, dict):
            t = a.get("type", "const" if "value" in a else "var")
            p = ("definitions", i, "axes", k)
            if t == "const" and "value" not in a:
                errs.append(DefcError("a const axis needs a 'value' formula", doc.where(p), field_name(p)))
            if t == "var" and "value" in a:
                errs.append(DefcError("a var axis cannot have a 'value'", doc.where(p + ("value",)), field_name(p + ("value",))))
    return errs


def check_spec(doc: Located) -> Spec:
    errs, formulas = spec_problems(doc)
    if errs:
        raise DefcErrors(errs)
    data = doc.data
    return Spec(path=doc.file, doc=doc, family=data["family"], definitions=data["definitions"], formulas=formulas)


_CHECKED: Dict[Tuple[str, str, bytes], Spec] = {}


@lru_cache(maxsize=None)
def _schema_digest(name: str) -> str:
    with open(os.path.join(SCHEMA_DIR, name), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def schema_ok_key(name: str, digest: str) -> str:
    """Parse-cache key recording that a text (by its sha256) passed schema ``name`` (by its content)."""
    return f"schemaok-{cache.VERSION}-{name.split('.')[0]}-{_schema_digest(name)}-{digest}"


def load_spec(path: str) -> Spec:
    """Load and check a spec; a spec already checked in this process (same text, same shown path)
    is reused, so compiling many models does not re-validate every spec against the schema."""
    from .load import display_path
    from .load import read_bytes
    try:
        key = (os.path.abspath(path), display_path(path), hashlib.sha256(read_bytes(path, "spec")).digest())
    except DefcError:
        key = None                      # load_yaml reports it
    if key is not None and key in _CHECKED:
        return _CHECKED[key]
    spec = check_spec(load_yaml(path, "spec"))
    if key is not None:
        if len(_CHECKED) > 256:
            _CHECKED.clear()
        _CHECKED[key] = spec
    return spec
