"""What defc could not model for a model, and which definitions that reaches.

After a model is evaluated, every config key is *used* (a fact or a spec formula reads it),
*ignored* (the facts file says it changes no kernel), *unmodelled* (it changes kernels defc cannot
express yet: the facts file names the op types it affects) or *unknown*.  Together with the facts
that had to be *assumed* (an alternative marked ``assumed``, e.g. the default for an architecture
the architecture table does not list) and the *gaps* (a family that could not be evaluated, or a
declared ``gaps:`` entry that holds), these are the model's findings.  The definitions a finding
reaches — of an op type an unmodelled key affects, or reading (through lets and facts) an assumed
fact — are not ``status:verified``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Sequence, Set, Tuple

from . import formula as F
from .check import Spec
from .evaluate import Gap, Instance, placeholder_names
from .facts import ASSUMED, FactsSpec, flatten_config


@dataclass
class Finding:
    kind: str                          # "gap", "assumed", "unmodelled" or "unknown"
    subject: str                       # the config key, fact or family it is about
    message: str
    definitions: List[str] = field(default_factory=list)    # the definitions it reaches

    def line(self) -> str:
        reach = ""
        if self.definitions:
            shown = ", ".join(self.definitions[:6]) + (f", and {len(self.definitions) - 6} more"
                                                       if len(self.definitions) > 6 else "")
            reach = f"; not status:verified: {shown}"
        what = {"gap": f"{self.subject}", "assumed": f"fact '{self.subject}' is assumed",
                "unmodelled": f"config key '{self.subject}' changes kernels defc cannot express",
                "unknown": f"config key '{self.subject}' is unknown"}[self.kind]
        return f"{what}: {self.message}{reach}"

    def to_json(self) -> Dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "message": self.message,
                "definitions": list(self.definitions)}

    @staticmethod
    def from_json(d: Dict[str, Any]) -> "Finding":
        return Finding(str(d["kind"]), str(d["subject"]), str(d["message"]), [str(x) for x in d["definitions"]])


def spec_names(specs: Sequence[Spec]) -> Set[str]:
    """Every name a spec formula or placeholder reads."""
    names: Set[str] = set()
    for spec in specs:
        for f in spec.formulas.values():
            names |= f.symbols
        names |= placeholder_names(spec.data)
    return names


def fact_names(facts: FactsSpec) -> Set[str]:
    """The facts and every name they read."""
    out: Set[str] = set()
    for name, _ in facts.facts:
        out.add(name)
        out |= facts.reads(name)
    return out


def config_names(facts: FactsSpec) -> frozenset:
    """Names that stand for config fields: the facts, what they read, the documented keys."""
    return frozenset(fact_names(facts) | set(facts.read_keys) | set(facts.ignored_keys) | set(facts.unmodelled_keys))


def key_report(config: Dict[str, Any], facts: FactsSpec, specs: Sequence[Spec],
               envs: Sequence[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """(key, status, why) for every key of the (flattened) config, in its order."""
    read = fact_names(facts) | spec_names(specs)
    out = []
    for key in flatten_config(config, facts.nesting):
        row = facts.unmodelled_keys.get(key)
        if row is not None and any(_holds(row["when"], env) for env in envs):
            out.append((key, "unmodelled", f"{row['why']} (affects {', '.join(row['affects']) or 'no emitted definition'})"))
        elif key in read:
            out.append((key, "used", facts.read_keys.get(key, "read by the facts or specs")))
        elif key in facts.ignored_keys:
            out.append((key, "ignored", facts.ignored_keys[key]))
        else:
            out.append((key, "unknown", "defc does not know whether it changes a kernel"))
    return out


def _holds(f: F.Formula, env: Dict[str, Any]) -> bool:
    try:
        return F.truth(f, env)
    except F.FormulaError:
        return False


def findings(config: Dict[str, Any], facts: FactsSpec, specs: Sequence[Spec], envs: Sequence[Dict[str, Any]],
             by_name: Dict[str, List[Instance]], gaps: Iterable[Gap]) -> List[Finding]:
    """The model's findings, each with the definitions it reaches."""
    out: List[Finding] = []
    for g in gaps:
        out.append(Finding("gap", g.family, f"not compiled at {g.serving}: {g.why} [{g.where}]"))
    lets = _spec_lets(specs)
    reach = _Reach(facts, lets)
    assumed: Dict[str, str] = {}
    for env in envs:
        assumed.update(env.get(ASSUMED) or {})
    for name, why in assumed.items():
        hit = sorted(n for n, insts in by_name.items() if any(name in reach(i) for i in insts))
        out.append(Finding("assumed", name, why, hit))
    for key, status, why in key_report(config, facts, specs, envs):
        if status == "unmodelled":
            affects = set(facts.unmodelled_keys[key]["affects"])
            hit = sorted(n for n, insts in by_name.items()
                         if insts[0].op_type in affects or insts[0].spec.family in affects)
            out.append(Finding("unmodelled", key, why, hit))
        elif status == "unknown":
            out.append(Finding("unknown", key, why))
    return out


def _spec_lets(specs: Sequence[Spec]) -> Dict[Tuple[str, str], frozenset]:
    """(spec path, let name) -> the names the spec-level let reads."""
    out = {}
    for spec in specs:
        for path, f in spec.formulas.items():
            if len(path) == 2 and path[0] == "let":
                out[(spec.path, path[1])] = f.symbols
            elif path == ("requires",):
                out[(spec.path, "")] = f.symbols
    return out


class _Reach:
    """The names an instance reads, through its spec's lets and the facts (memoised per definition)."""

    def __init__(self, facts: FactsSpec, lets: Dict[Tuple[str, str], frozenset]):
        self.facts, self.lets = facts, lets
        self.memo: Dict[Tuple[str, int], Set[str]] = {}

    def __call__(self, inst: Instance) -> Set[str]:
        key = (inst.spec.path, inst.def_index)
        if key not in self.memo:
            seen: Set[str] = set()
            todo = list(inst.reads) + list(self.lets.get((inst.spec.path, ""), ()))
            while todo:
                n = todo.pop()
                if n in seen:
                    continue
                seen.add(n)
                todo.extend(self.lets.get((inst.spec.path, n), ()))
                todo.extend(self.facts.reads(n))
            self.memo[key] = seen
        return self.memo[key]


def unverified(found: Sequence[Finding]) -> Dict[str, List[str]]:
    """Definition name -> the subjects of the findings that reach it."""
    out: Dict[str, List[str]] = {}
    for f in found:
        for name in f.definitions:
            out.setdefault(name, []).append(f.subject)
    return out
