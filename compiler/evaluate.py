"""Stage 3, evaluate: specs × model × serving configs → concrete definition instances.

For each definition of a spec, the cartesian product of its quantization variants, ``sweep``
values and ``cases`` is evaluated against the model's symbol table.  Const axes must come out as
positive integers; ``when`` conditions select cases, axes, tensors, tags and constraints;
``{placeholders}`` in names, descriptions, tags and dtypes are filled in.  Nothing here knows
about any particular op: that knowledge lives in the specs.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import formula as F
from .check import DTYPES, PLACEHOLDER, Spec, field_name
from .errors import DefcError
from .facts import UNDEFINED, root_missing
from .serving import Serving


class MissingField(DefcError):
    """A formula needs a config field (through the facts and lets that read it) the model does
    not have: the family cannot be evaluated for that model, which is a gap, not an error."""

    def __init__(self, message: str, location, field: str, config_field: str):
        super().__init__(message, location, field)
        self.config_field = config_field


@dataclass
class Gap:
    """What a spec or definition could not describe for a model at a serving config."""

    family: str
    definition: Optional[str]          # the definition id, or None for the whole spec
    serving: str                       # the serving config's label
    why: str
    where: str                         # the spec location that decided it


@dataclass
class Instance:
    """One definition, fully evaluated, not yet rendered."""

    name: str
    op_type: str
    description: str
    tags: List[str]
    axes: Dict[str, dict]
    constraints: List[str]
    inputs: Dict[str, dict]
    outputs: Dict[str, dict]
    reference_template: str
    params: Dict[str, Any]
    template: str
    spec: Spec
    def_index: int
    def_id: str
    fi_api: Optional[str]
    status: str
    serving: Serving
    quantization: str
    aliases: List[dict] = field(default_factory=list)
    trace: Dict[str, Any] = field(default_factory=dict)
    verify: Dict[str, Any] = field(default_factory=dict)
    env: Dict[str, Any] = field(default_factory=dict, repr=False)
    origins: List[str] = field(default_factory=list)
    reads: frozenset = frozenset()        # every name its definition's formulas and texts read

    @property
    def const_axes(self) -> Dict[str, int]:
        return {k: v["value"] for k, v in self.axes.items() if v.get("type") == "const"}


# env key recording, for each fact or let that could not be computed, the undefined name it read
UNDEFINED_LETS = UNDEFINED


def fmt_value(v: Any) -> str:
    t = type(v)
    if t is str:
        return v
    if t is int:
        return str(v)
    v = F.to_python(v)
    if isinstance(v, float):
        return repr(v) if v != int(v) else str(int(v))
    return str(v)


_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@lru_cache(maxsize=16384)
def _placeholder_parts(text: str) -> Tuple:
    """``text`` split at its ``{placeholders}``: (literal, (raw, name, valid), literal, ...)."""
    parts: list = []
    pos = 0
    for m in PLACEHOLDER.finditer(text):
        key = m.group(1).strip()
        parts.append(text[pos:m.start()])
        parts.append((m.group(1), key, bool(_NAME.match(key))))
        pos = m.end()
    parts.append(text[pos:])
    return tuple(parts)


def substitute(text: str, env: Dict[str, Any], spec: Spec, path: Tuple) -> str:
    """Fill ``{name}`` placeholders from env; an unknown or undefined name is an error located
    at ``path`` of ``spec``."""
    if "{" not in text:
        return text
    parts = _placeholder_parts(text)
    n = len(parts)
    if n == 1:
        return text
    out = [parts[0]]
    for j in range(1, n, 2):
        raw, key, valid = parts[j]
        v = env.get(key) if valid else None
        if v is None:
            what = f"bad placeholder '{{{raw}}}'" if not valid else f"placeholder '{{{key}}}'"
            how = "" if not valid else " is not defined here"
            raise DefcError(f"{what} in {text!r}{how}", spec.where(path), field_name(path))
        t = type(v)
        out.append(v if t is str else str(v) if t is int else fmt_value(v))
        out.append(parts[j + 1])
    return "".join(out)


def placeholder_names(value: Any) -> set:
    """The names in every ``{placeholder}`` of the strings in value (a spec's data)."""
    if isinstance(value, str):
        return {m.group(1).strip() for m in PLACEHOLDER.finditer(value)}
    if isinstance(value, dict):
        return set().union(*(placeholder_names(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(placeholder_names(v) for v in value))
    return set()


class _Where:
    """A lazy ``(location, field)`` pair: most lookups are never needed (no error is raised)."""

    __slots__ = ("spec", "path")

    def __init__(self, spec: Spec, path: Tuple):
        self.spec, self.path = spec, path

    def __iter__(self):
        yield self.spec.where(self.path)
        yield field_name(self.path)


class Evaluator:
    """Evaluates specs for one model.  ``config_names``: the names that stand for config fields
    (facts, the fields they read, the keys the facts file documents); a formula that lacks one of
    them raises :class:`MissingField` (a gap) instead of a plain error (most likely a typo in the
    spec).  Declared ``gaps:`` that hold are collected in ``self.gaps``."""

    def __init__(self, model_slug: str, quant_selection: Optional[Sequence[str]] = None,
                 config_names: frozenset = frozenset()):
        self.model = model_slug
        # None: the serving config's own quantization; a list: exactly these; ["all"]: every variant
        self.quant_selection = quant_selection
        self.config_names = config_names
        self.gaps: List[Gap] = []

    # -- helpers --------------------------------------------------------------------------------
    def _where(self, spec: Spec, path: Tuple):
        """(location, field) for DefcError(msg, *where), worked out only if an error is raised."""
        return _Where(spec, path)

    def _ctx(self, serving: Serving, quant: str) -> str:
        q = f", quantization {quant}" if quant else ""
        return f"model {self.model} at {serving.label()}{q}"

    def _formula(self, spec: Spec, path: Tuple, text) -> F.Formula:
        f = spec.formulas.get(path)
        if f is None:
            try:
                f = F.parse(text)
            except F.FormulaError as e:
                raise DefcError(f"bad formula: {e}", *self._where(spec, path)) from None
        return f

    @staticmethod
    def _missing(name: str, env: Dict[str, Any]) -> str:
        """The config field behind an undefined name (through the facts and lets that needed it)."""
        return f"'{root_missing(name, env)}'"

    def _let(self, spec, path, name, env, ctx, f: F.Formula) -> None:
        """Bind a let; one that reads an undefined name stays undefined (an error only where it is
        used, and that error names the missing field)."""
        try:
            env[name] = f.evaluate(env)
        except F.UndefinedSymbol as e:
            env[name] = None
            env[UNDEFINED_LETS] = {**(env.get(UNDEFINED_LETS) or {}), name: e.name}
        except F.FormulaError as e:
            raise DefcError(f"'{f.source}': {e} ({ctx})", *self._where(spec, path)) from None

    def _truth(self, spec, path, text, env, ctx, f: Optional[F.Formula] = None) -> bool:
        f = f or self._formula(spec, path, text)
        try:
            return F.truth(f, env)
        except F.UndefinedSymbol as e:
            raise DefcError(f"'{f.source}' reads {self._missing(e.name, env)}, which {ctx} does not define "
                            f"(guard it with defined({e.name}))", *self._where(spec, path)) from None
        except F.FormulaError as e:
            raise DefcError(f"'{f.source}': {e} ({ctx})", *self._where(spec, path)) from None

    def _undefined(self, message: str, name: str, env, spec, path) -> DefcError:
        root = root_missing(name, env)
        if root in self.config_names:
            return MissingField(message, *self._where(spec, path), config_field=root)
        return DefcError(message, *self._where(spec, path))

    def _value(self, spec, path, text, env, ctx, f: Optional[F.Formula] = None):
        f = f or self._formula(spec, path, text)
        try:
            return f.evaluate(env)
        except F.UndefinedSymbol as e:
            raise self._undefined(f"'{f.source}' needs {self._missing(e.name, env)}, which {ctx} does not define",
                                  e.name, env, spec, path) from None
        except F.FormulaError as e:
            raise DefcError(f"'{f.source}': {e} ({ctx})", *self._where(spec, path)) from None

    def _axis(self, spec, path, text, env, ctx, axis, f: Optional[F.Formula] = None) -> int:
        f = f or self._formula(spec, path, text)
        try:
            return F.positive_int(f, env)
        except F.UndefinedSymbol as e:
            raise self._undefined(f"axis '{axis}': '{f.source}' needs config field {self._missing(e.name, env)}, "
                                  f"which {ctx} does not have", e.name, env, spec, path) from None
        except F.FormulaError as e:
            msg = str(e) if f.source in str(e) else f"'{f.source}': {e}"
            raise DefcError(f"axis '{axis}': {msg} for {ctx}", *self._where(spec, path)) from None

    # -- the work -------------------------------------------------------------------------------
    def quant_variants(self, d: dict, serving: Serving, default_quant: str) -> List[Optional[str]]:
        declared = d.get("quantization")
        if not declared:
            return [None]
        sel = self.quant_selection
        if sel is None:
            want = {serving.quantization or default_quant}
        elif "all" in sel:
            return list(declared)
        else:
            want = set(sel)
        return [q for q in declared if q in want]

    def requires(self, spec: Spec, base_env: Dict[str, Any], serving: Serving, default_quant: str) -> bool:
        """Whether the spec's ``requires`` holds for the model at this serving config (True when it has none)."""
        if "requires" not in spec.data:
            return True
        env0 = dict(base_env)
        env0["quantization"] = serving.quantization or default_quant
        return self._truth(spec, ("requires",), spec.data["requires"], env0, self._ctx(serving, ""))

    def run(self, spec: Spec, base_env: Dict[str, Any], serving: Serving, default_quant: str) -> List[Instance]:
        data = spec.data
        out: List[Instance] = []
        own_q = serving.quantization or default_quant
        env0 = dict(base_env)
        env0["quantization"] = own_q
        ctx0 = self._ctx(serving, "")
        if "requires" in data and not self._truth(spec, ("requires",), data["requires"], env0, ctx0):
            return out
        for k, v in (data.get("let") or {}).items():
            self._let(spec, ("let", k), k, env0, ctx0, self._formula(spec, ("let", k), v))
        if self._gap(spec, data.get("gaps"), (), env0, ctx0, serving, None):
            return out
        let = self._let
        for i, d in enumerate(spec.definitions):
            plan = spec.plans.get(i)
            if plan is None:
                plan = spec.plans[i] = _DefinitionPlan(spec, i, d, self._formula)
            for q in self.quant_variants(d, serving, default_quant):
                env1 = dict(env0)
                if q is not None:
                    env1["quantization"] = q
                ctx = self._ctx(serving, q or "")
                for combo in plan.combos:
                    for lets, label, when, when_path in plan.cases:
                        env = dict(env1)
                        if combo:
                            env.update(combo)
                        for name, path, f in lets:
                            let(spec, path, name, env, ctx, f)
                        if label is not _NO_LABEL:
                            env["label"] = label
                        if when is not None and not self._truth(spec, when_path, None, env, ctx, when):
                            continue
                        for name, path, f in plan.lets:
                            let(spec, path, name, env, ctx, f)
                        if plan.when is not None and not self._truth(spec, plan.when_path, None, env, ctx, plan.when):
                            continue
                        if self._gap(spec, d.get("gaps"), plan.base, env, ctx, serving, d["id"]):
                            continue
                        out.append(self._instance(spec, i, d, plan, env, serving, q or own_q, ctx))
        self._quantization_gap(spec, serving, own_q, out)
        return out

    def _quantization_gap(self, spec: Spec, serving: Serving, own_q: str, out: List[Instance]) -> None:
        """A family whose definitions are all per quantization and that describes unquantized
        (bf16) models too — so every model needs it — but has no variant for the model's own
        quantization would say nothing: that is a gap naming it (e.g. int4 weights).  A family
        without a bf16 variant (FP4 activation quantization) only exists for its quantizations."""
        declared = [d.get("quantization") for d in spec.definitions]
        if out or self.quant_selection is not None or not declared or not all(declared):
            return
        kinds = sorted({k for q in declared for k in q})
        if own_q in kinds or "bf16" not in kinds:
            return
        gap = Gap(spec.family, None, serving.label(),
                  f"the model's quantization is {own_q}; the {spec.family} definitions describe {', '.join(kinds)}",
                  spec.path)
        if gap not in self.gaps:
            self.gaps.append(gap)

    def _gap(self, spec: Spec, gaps, base: Tuple, env: Dict[str, Any], ctx: str, serving: Serving,
             definition: Optional[str]) -> bool:
        """Whether a declared gap holds (then it is recorded, once per serving config)."""
        for j, g in enumerate(gaps or ()):
            path = base + ("gaps", j)
            if self._truth(spec, path + ("when",), g["when"], env, ctx):
                why = substitute(g["why"], env, spec, path + ("why",))
                at = spec.where(path)
                gap = Gap(spec.family, definition, serving.label(), why, f"{at.file}:{at.line}")
                if gap not in self.gaps:
                    self.gaps.append(gap)
                return True
        return False

    def _instance(self, spec: Spec, i: int, d: dict, plan: "_DefinitionPlan", env: Dict[str, Any],
                  serving: Serving, quant: str, ctx: str) -> Instance:
        axes: Dict[str, dict] = {}
        for name, when, when_path, kind, value, value_path, desc, desc_path in plan.axes:
            if when is not None and not self._truth(spec, when_path, None, env, ctx, when):
                continue
            entry: Dict[str, Any] = {"type": kind}
            if value is not None:
                entry["value"] = env[name] = self._axis(spec, value_path, None, env, ctx, name, value)
            if desc is not None:
                entry["description"] = substitute(desc, env, spec, desc_path) if desc_path else desc
            axes[name] = entry
        tensors: Dict[str, Dict[str, dict]] = {"inputs": {}, "outputs": {}}
        for sect, name, p, when, shape, shape_subst, dtype, dtype_subst, optional, desc, desc_subst in plan.tensors:
            if when is not None and not self._truth(spec, p + ("when",), None, env, ctx, when):
                continue
            if shape is not None:
                if shape_subst:
                    # an entry may be a {placeholder} that names an axis (e.g. one chosen by a let)
                    shape = [substitute(ax, env, spec, p + ("shape", j)) if PLACEHOLDER.search(ax) else ax
                             for j, ax in enumerate(shape)]
                for j, ax in enumerate(shape):
                    if ax not in axes:
                        raise DefcError(f"{sect[:-1]} '{name}' uses axis '{ax}', which is not present for {ctx}",
                                        *self._where(spec, p + ("shape", j)))
            if dtype_subst:
                dtype = substitute(dtype, env, spec, p + ("dtype",))
                if dtype not in DTYPES:
                    raise DefcError(f"dtype '{dtype}' of {sect[:-1]} '{name}' is not one of {', '.join(DTYPES)}",
                                    *self._where(spec, p + ("dtype",)))
            entry = {"shape": list(shape) if shape is not None else None, "dtype": dtype}
            if optional:
                entry["optional"] = True
            if desc is not None:
                entry["description"] = substitute(desc, env, spec, p + ("description",)) if desc_subst else desc
            tensors[sect][name] = entry
        constraints = [substitute(text, env, spec, p) if subst else text
                       for p, when, text, subst in plan.constraints
                       if when is None or self._truth(spec, p + ("when",), None, env, ctx, when)]
        tags: List[str] = []
        for p, when, text, subst in plan.tags:
            if when is not None and not self._truth(spec, p + ("when",), None, env, ctx, when):
                continue
            tag = substitute(text, env, spec, p) if subst else text
            if tag not in tags:
                tags.append(tag)
        params = {k: F.to_python(self._value(spec, path, None, env, ctx, f)) for k, path, f in plan.params}
        base = plan.base
        name = substitute(d["name"], env, spec, base + ("name",))
        desc = substitute(d.get("description", ""), env, spec, base + ("description",))
        aliases = [{"name": substitute(al["name"], env, spec, base + ("aliases", j, "name")),
                    "op_type": al.get("op_type", plan.op_type), "why": al.get("why", "")}
                   for j, al in enumerate(d.get("aliases") or [])]
        return Instance(name=name, op_type=plan.op_type, description=desc, tags=tags, axes=axes,
                        constraints=constraints, inputs=tensors["inputs"], outputs=tensors["outputs"],
                        reference_template=plan.reference_template, params=params,
                        template=plan.template, spec=spec, def_index=i,
                        def_id=d["id"], fi_api=d.get("fi_api"), status=d.get("status", "verified"),
                        serving=serving, quantization=quant, aliases=aliases,
                        trace=d.get("trace") or {}, verify=d.get("verify") or {}, env=env,
                        origins=[f"{self.model} {serving.label()}"], reads=plan.reads)


_NO_LABEL = object()


class _DefinitionPlan:
    """One definition of a spec laid out for evaluation, once per spec: its formulas looked up,
    the spec paths that errors name worked out, and which texts have placeholders to fill."""

    def __init__(self, spec: Spec, i: int, d: dict, lookup):
        base = self.base = ("definitions", i)
        reads = set(placeholder_names(d))

        def formula(spec, path, text) -> F.Formula:
            f = lookup(spec, path, text)
            reads.update(f.symbols)
            return f

        def cond(item, p):
            return (formula(spec, p + ("when",), item["when"]), p + ("when",)) if "when" in item else (None, None)

        def lets(item, p):
            return tuple((k, p + ("let", k), formula(spec, p + ("let", k), v))
                         for k, v in (item.get("let") or {}).items())

        # the sweep's combinations as (name, value) pairs, and each case: (its lets, its label or
        # _NO_LABEL, its when and that when's path); a definition without cases has one empty case
        sweep = d.get("sweep") or {}
        self.combos = [tuple(zip(sweep, combo)) for combo in itertools.product(*sweep.values())]
        self.cases = []
        for ci, case in enumerate(d.get("cases") or [{}]):
            p = base + ("cases", ci)
            self.cases.append((lets(case, p), case.get("label", _NO_LABEL), *cond(case, p)))
        self.lets = lets(d, base)
        self.when, self.when_path = cond(d, base)

        def has_placeholder(text) -> bool:
            return "{" in text

        self.axes = []
        for name, a in d["axes"].items():
            p = base + ("axes", name)
            when, when_path = cond(a, p)
            kind = a.get("type") or ("const" if "value" in a else "var")
            value = formula(spec, p + ("value",), a["value"]) if kind == "const" else None
            desc = a.get("description") or None
            desc_path = p + ("description",) if desc is not None and has_placeholder(desc) else None
            self.axes.append((name, when, when_path, kind, value, p + ("value",), desc, desc_path))
        self.tensors = []
        for sect in ("inputs", "outputs"):
            for name, t in (d.get(sect) or {}).items():
                p = base + (sect, name)
                when = cond(t, p)[0]
                shape = t.get("shape")
                dtype = t["dtype"]
                desc = t.get("description") or None
                self.tensors.append((sect, name, p, when, shape,
                                     shape is not None and any(PLACEHOLDER.search(ax) for ax in shape),
                                     dtype, has_placeholder(dtype) or dtype not in DTYPES, bool(t.get("optional")),
                                     desc, desc is not None and has_placeholder(desc)))
        self.constraints = self._texts(spec, d.get("constraints") or [], base + ("constraints",), "expr", cond)
        self.tags = self._texts(spec, d.get("tags") or [], base + ("tags",), "tag", cond)
        ref = d["reference"]
        self.params = [(k, base + ("reference", "params", k), formula(spec, base + ("reference", "params", k), v))
                       for k, v in (ref.get("params") or {}).items()]
        self.reference_template = ref["template"]
        self.template = d.get("template", "definition.json.j2")
        self.op_type = d.get("op_type") or spec.data.get("op_type") or spec.family
        for j, g in enumerate(d.get("gaps") or ()):
            formula(spec, base + ("gaps", j, "when"), g["when"])
        # every name the definition reads (its formulas and placeholders), for telling which
        # definitions a doubtful fact or config key reaches
        self.reads = frozenset(reads)

    @staticmethod
    def _texts(spec, items, base, key, cond):
        """(path, when formula or None, text, has placeholders) for a list of strings or
        ``{key: text, when: ...}`` entries."""
        out = []
        for j, item in enumerate(items):
            p = base + (j,)
            when = None
            if isinstance(item, dict):
                when = cond(item, p)[0]
                item = item[key]
            out.append((p, when, item, "{" in item))
        return out
