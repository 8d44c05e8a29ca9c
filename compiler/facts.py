"""Model facts: a config.json flattened, plus the derived facts of ``specs/_model_facts.yaml``.

That file holds three tables:

* ``facts``: named features derived from config fields in their Hugging Face meaning; each is a
  list of alternatives (a config path, a formula, or a value from the architecture table), the
  first that can be computed wins.  An alternative marked ``assumed`` is a guess (e.g. the
  default for an architecture defc does not know): a model whose fact comes from it gets a
  warning, and the definitions that read the fact are not ``status:verified``.
* ``architectures``: what config.json does not say, one row per ``architectures[0]`` string, each
  with its source (the SGLang model file that calls FlashInfer; where transformers differs,
  SGLang wins and the row says so).
* ``config_keys``: every config key that changes no kernel (``ignored``), and every key that
  changes kernels defc cannot express yet (``unmodelled``, with the op types it affects).  A key in
  neither table and read by no fact or spec is unknown.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

from . import formula as F
from .check import field_name, schema_errors
from .errors import DefcError, DefcErrors, Location
from .load import Located, display_path, load_yaml
from .paths import MODEL_FACTS, SPECS_DIR


@dataclass
class Alternative:
    path: Tuple                       # where it is in the facts file
    kind: str                         # "path" (a config path), "formula" or "arch" (a row's value)
    payload: Any                      # the path's parts, the formula, or the row key
    when: Optional[F.Formula]
    assumed: Optional[str] = None     # why this value is only a guess, if it is one


@dataclass
class FactsSpec:
    doc: Located
    nesting: List[str]
    quant_names: Dict[str, str]
    facts: List[Tuple[str, List[Alternative]]]
    architectures: Dict[str, Dict[str, Any]]
    ignored_keys: Dict[str, str]                     # key -> why it changes no kernel
    unmodelled_keys: Dict[str, Dict[str, Any]]       # key -> {when (formula), why, affects}
    read_keys: Dict[str, str]                        # key no catalogue model has -> what reads it

    def __post_init__(self):
        self._reads: Dict[str, frozenset] = {}
        for name, alts in self.facts:
            out = set()
            for alt in alts:
                if alt.when is not None:
                    out |= alt.when.symbols
                if alt.kind == "formula":
                    out |= alt.payload.symbols
                elif alt.kind == "path":
                    out.add(alt.payload[0])
            self._reads[name] = frozenset(out)

    def reads(self, name: str) -> frozenset:
        """The names a fact reads (its formulas' symbols and the roots of its paths)."""
        return self._reads.get(name, frozenset())


def load_facts(specs_dir: str = SPECS_DIR) -> FactsSpec:
    return _load_facts(os.path.abspath(specs_dir))


@lru_cache(maxsize=8)
def _load_facts(specs_dir: str) -> FactsSpec:
    if not os.path.isdir(specs_dir):
        raise DefcError("specs folder not found", Location(display_path(specs_dir)))
    path = os.path.join(specs_dir, MODEL_FACTS)
    doc = load_yaml(path, "model facts")
    errs = schema_errors(doc, "model_facts.schema.json")
    if errs:
        raise DefcErrors(errs)
    facts = []
    for name, alts in doc.data["facts"].items():
        alts = alts if isinstance(alts, list) else [alts]
        parsed = []
        for i, alt in enumerate(alts):
            p = ("facts", name, i) if isinstance(doc.data["facts"][name], list) else ("facts", name)
            try:
                if isinstance(alt, dict):
                    when = F.parse(alt["when"]) if "when" in alt else None
                    if "path" in alt:
                        parsed.append(Alternative(p, "path", alt["path"].split("."), when, alt.get("assumed")))
                    elif "arch" in alt:
                        parsed.append(Alternative(p, "arch", alt["arch"], when, alt.get("assumed")))
                    else:
                        parsed.append(Alternative(p, "formula", F.parse(alt["value"]), when, alt.get("assumed")))
                else:
                    parsed.append(Alternative(p, "formula", F.parse(alt), None))
            except F.FormulaError as e:
                raise DefcError(f"bad formula: {e}", doc.where(p), field_name(p)) from None
        facts.append((name, parsed))
    keys = doc.data.get("config_keys") or {}
    unmodelled = {}
    for key, row in (keys.get("unmodelled") or {}).items():
        p = ("config_keys", "unmodelled", key, "when")
        try:
            when = F.parse(row.get("when", f"defined({key})"))
        except F.FormulaError as e:
            raise DefcError(f"bad formula: {e}", doc.where(p), field_name(p)) from None
        unmodelled[key] = {"when": when, "why": row["why"], "affects": list(row.get("affects") or [])}
    return FactsSpec(doc, list(doc.data.get("nesting") or []), dict(doc.data.get("quantization_names") or {}), facts,
                     dict(doc.data.get("architectures") or {}), dict(keys.get("ignored") or {}), unmodelled,
                     dict(keys.get("read") or {}))


def flatten_config(config: Dict[str, Any], nesting: List[str]) -> Dict[str, Any]:
    """Top-level keys, overridden by the keys of nested sub-configs (text_config, ...)."""
    env = {k: v for k, v in config.items() if isinstance(k, str) and not k.startswith("_")}
    for sub in nesting:
        inner = config.get(sub)
        if isinstance(inner, dict):
            for k, v in inner.items():
                if isinstance(k, str) and not k.startswith("_") and v is not None:
                    env[k] = v
    return env


def _path_value(config: Dict[str, Any], flat: Dict[str, Any], parts: List[str]):
    cur: Any = flat if parts[0] in flat else config
    for p in parts:
        if isinstance(cur, dict):
            cur = cur.get(p)
        elif isinstance(cur, list) and p.isdigit():
            i = int(p)
            cur = cur[i] if i < len(cur) else None
        else:
            return None
        if cur is None:
            return None
    return cur


def _normalise(v):
    """Config values as formula values: numbers stay, lists of scalars stay, dicts are dropped."""
    if isinstance(v, dict):
        return None
    return v


# env keys (unreachable from formulas: names may not start with '_'):
ASSUMED = "_assumed"            # fact -> why its value is a guess
UNDEFINED = "_undefined"        # name (fact or let) that could not be computed -> the name it lacked


def model_env(config: Dict[str, Any], serving: Dict[str, Any], facts: FactsSpec, slug: str,
              origin: str) -> Dict[str, Any]:
    """The symbol table every spec formula sees for one (model, serving config)."""
    flat = flatten_config(config, facts.nesting)
    env: Dict[str, Any] = {k: _normalise(v) for k, v in flat.items()}
    env.update(serving)
    env["model"] = slug
    env["config_nulls"] = sorted(k for k, v in flat.items() if v is None)
    assumed: Dict[str, str] = {}
    undefined: Dict[str, str] = {}
    for name, alts in facts.facts:
        value = None
        lacked = None
        for alt in alts:
            current = alt.when
            try:
                if alt.when is not None and not F.truth(alt.when, env):
                    continue
                current = alt.payload if alt.kind == "formula" else None
                if alt.kind == "path":
                    value = _path_value(config, flat, alt.payload)
                elif alt.kind == "arch":
                    value = (facts.architectures.get(env.get("architecture")) or {}).get(alt.payload)
                else:
                    value = alt.payload.evaluate(env)
            except F.UndefinedSymbol as e:
                value = None
                lacked = lacked or e.name
            except F.FormulaError as e:
                src = f"'{current.source}': " if current is not None and current.source not in str(e) else ""
                raise DefcError(f"fact '{name}' for model {slug} ({origin}): {src}{e}", facts.doc.where(alt.path),
                                field_name(alt.path)) from None
            if value is not None:
                if alt.assumed:
                    assumed[name] = alt.assumed
                break
        env[name] = value
        if value is None and lacked is not None:
            undefined[name] = lacked
    env[ASSUMED] = assumed
    env[UNDEFINED] = undefined
    return env


def root_missing(name: str, env: Dict[str, Any]) -> str:
    """The config field behind an undefined name: a fact or let that could not be computed points
    at the name it lacked, and so on."""
    why = env.get(UNDEFINED) or {}
    seen = []
    while name in why and env.get(name) is None and name not in seen:
        seen.append(name)
        name = why[name]
    return name


def quant_key(facts: FactsSpec, word: Optional[str]) -> str:
    if not word:
        return "bf16"
    w = str(word).lower()
    return facts.quant_names.get(w, w)
