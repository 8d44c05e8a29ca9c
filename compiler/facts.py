"""Model facts: a config.json flattened, plus the derived facts of ``specs/_model_facts.yaml``."""
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
class FactsSpec:
    doc: Located
    nesting: List[str]
    quant_names: Dict[str, str]
    facts: List[Tuple[str, List[Tuple[Tuple, Any, Optional[F.Formula], Optional[F.Formula]]]]]
    # per fact: [(path, kind('path'|'formula'), payload, when_formula)]


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
                        parsed.append((p, "path", alt["path"].split("."), when))
                    else:
                        parsed.append((p, "formula", F.parse(alt["value"]), when))
                else:
                    parsed.append((p, "formula", F.parse(alt), None))
            except F.FormulaError as e:
                raise DefcError(f"bad formula: {e}", doc.where(p), field_name(p)) from None
        facts.append((name, parsed))
    return FactsSpec(doc, list(doc.data.get("nesting") or []), dict(doc.data.get("quantization_names") or {}), facts)


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


def model_env(config: Dict[str, Any], serving: Dict[str, Any], facts: FactsSpec, slug: str,
              origin: str) -> Dict[str, Any]:
    """The symbol table every spec formula sees for one (model, serving config)."""
    flat = flatten_config(config, facts.nesting)
    env: Dict[str, Any] = {k: _normalise(v) for k, v in flat.items()}
    env.update(serving)
    env["model"] = slug
    for name, alts in facts.facts:
        value = None
        for path, kind, payload, when in alts:
            current = when
            try:
                if when is not None and not F.truth(when, env):
                    continue
                current = payload if kind == "formula" else None
                if kind == "path":
                    value = _path_value(config, flat, payload)
                else:
                    value = payload.evaluate(env)
            except F.UndefinedSymbol:
                value = None
            except F.FormulaError as e:
                src = f"'{current.source}': " if current is not None and current.source not in str(e) else ""
                raise DefcError(f"fact '{name}' for model {slug} ({origin}): {src}{e}", facts.doc.where(path),
                                field_name(path)) from None
            if value is not None:
                break
        env[name] = value
    return env


def quant_key(facts: FactsSpec, word: Optional[str]) -> str:
    if not word:
        return "bf16"
    w = str(word).lower()
    return facts.quant_names.get(w, w)
