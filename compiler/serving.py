"""Serving configurations: TP/EP/DP (and DP-attention) per model, from sgl-cookbook.

The cookbook's generated YAMLs (``data/models/generated/v*/*.yaml`` in a clone) list, per
model path and hardware, named configurations with ``engine.{tp, dp, ep, enable_dp_attention}``
and ``attributes.quantization``.  ``--cookbook DIR`` reads them live; without a clone defc
uses the bundled snapshot ``catalogue/cookbook.json`` (made by ``defc cookbook-snapshot``).
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import DefcError, Location
from .load import display_path, load_json, load_yaml
from .paths import CATALOGUE_DIR

SNAPSHOT = os.path.join(CATALOGUE_DIR, "cookbook.json")


@dataclass(frozen=True)
class Serving:
    """One serving configuration of one model (per-rank shapes follow from it)."""

    tp: int = 1
    ep: int = 1
    dp: int = 1
    dp_attention: bool = False
    quantization: Optional[str] = None   # None: the model's own
    origin: Tuple[str, ...] = field(default=(), compare=False, hash=False)

    @property
    def attn_dp(self) -> int:
        return self.dp if self.dp_attention else 1

    def symbols(self) -> Dict[str, object]:
        return {"tp": self.tp, "ep": self.ep, "dp": self.dp, "attn_dp": self.attn_dp,
                "dp_attention": self.dp_attention}

    def label(self) -> str:
        s = f"tp{self.tp}"
        if self.ep > 1:
            s += f" ep{self.ep}"
        if self.dp > 1:
            s += f" dp{self.dp}" + ("-attn" if self.dp_attention else "")
        elif self.dp_attention:
            s += " dp-attn"
        return s

    def key(self):
        return (self.tp, self.ep, self.dp, self.dp_attention)


@dataclass
class CookbookRow:
    model_path: str
    version: str
    hardware: str
    name: str
    tp: int
    ep: int
    dp: int
    dp_attention: bool
    quantization: str
    where: str   # file:line


def _pos_int(value, what: str, where: str, default: int = 1) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DefcError(f"{what} must be a positive integer, got {value!r}", _loc(where), field=what)
    return value


def _loc(where: str) -> Location:
    m = re.match(r"^(.*):(\d+)$", where)
    return Location(m.group(1), int(m.group(2)), 1) if m else Location(where)


def cookbook_files(root: str) -> List[Tuple[str, str]]:
    """(version, path) for every generated cookbook YAML under a clone or a copy of ``generated``."""
    if not os.path.isdir(root):
        raise DefcError("cookbook folder not found", Location(display_path(root)), field="--cookbook")
    for base in (os.path.join(root, "data", "models", "generated"), os.path.join(root, "generated"), root):
        found = sorted(glob.glob(os.path.join(base, "v*", "*.yaml")))
        if found:
            return [(os.path.basename(os.path.dirname(p)), p) for p in found]
    flat = sorted(glob.glob(os.path.join(root, "*.yaml")))
    return [("", p) for p in flat]


def _version_key(v: str):
    return tuple(int(x) if x.isdigit() else 0 for x in re.findall(r"\d+|[a-z]+", v))


def read_cookbook(root: str) -> List[CookbookRow]:
    rows: List[CookbookRow] = []
    for version, path in cookbook_files(root):
        rows.extend(_read_cookbook_file(path, version))
    return rows


def _read_cookbook_file(path: str, version: str) -> List[CookbookRow]:
    doc = load_yaml(path, "cookbook YAML")
    data = doc.data
    rows = []
    if not isinstance(data, dict) or not isinstance(data.get("families"), list):
        raise DefcError("a cookbook YAML needs a 'families' list", doc.where(()), field="families")
    for fi, fam in enumerate(data["families"]):
        for mi, model in enumerate((fam or {}).get("models") or []):
            if not isinstance(model, dict) or not isinstance(model.get("model_path"), str):
                raise DefcError("model needs a 'model_path'", doc.where(("families", fi, "models", mi)), field="model_path")
            for hw, hcfg in (model.get("hardware") or {}).items():
                for ci, c in enumerate((hcfg or {}).get("configurations") or []):
                    base = ("families", fi, "models", mi, "hardware", hw, "configurations", ci)
                    eng = c.get("engine") if isinstance(c, dict) else None
                    if not isinstance(eng, dict):
                        continue  # prefill/decode-disaggregated entries carry no single engine
                    loc = doc.where(base + ("engine", "tp"))
                    where = f"{loc.file}:{loc.line}"
                    tp = _pos_int(eng.get("tp"), "tp", where)
                    ep = _pos_int(eng.get("ep"), "ep", f"{doc.where(base + ('engine', 'ep')).file}:{doc.where(base + ('engine', 'ep')).line}")
                    dp = _pos_int(eng.get("dp"), "dp", f"{doc.where(base + ('engine', 'dp')).file}:{doc.where(base + ('engine', 'dp')).line}")
                    if tp % ep:
                        raise DefcError(f"ep {ep} does not divide tp {tp}", doc.where(base + ("engine", "ep")), field="ep")
                    quant = ((c.get("attributes") or {}).get("quantization") or "bf16")
                    rows.append(CookbookRow(model["model_path"], version, str(hw), str(c.get("name", "")), tp, ep, dp,
                                            bool(eng.get("enable_dp_attention")), str(quant), where))
    return rows


def load_snapshot(path: str = SNAPSHOT) -> List[CookbookRow]:
    return list(_load_snapshot(os.path.abspath(path)))


@lru_cache(maxsize=4)
def _load_snapshot(path: str) -> Tuple[CookbookRow, ...]:
    if not os.path.exists(path):
        return ()
    doc = load_json(path, "cookbook snapshot")
    rows = []
    shown = display_path(path)
    for mp, entries in ((doc or {}).get("models") or {}).items():
        for e in entries:
            rows.append(CookbookRow(mp, e.get("version", ""), e.get("hardware", ""), e.get("name", ""),
                                    int(e.get("tp") or 1), int(e.get("ep") or 1), int(e.get("dp") or 1),
                                    bool(e.get("dp_attention")), str(e.get("quantization") or "bf16"), shown))
    return tuple(rows)


def write_snapshot(rows: Sequence[CookbookRow], source: str, path: str = SNAPSHOT) -> int:
    """The cookbook table as JSON: one line per configuration, so diffs stay readable."""
    import json
    from .write import atomic_write_text
    models: Dict[str, list] = {}
    for r in rows:
        models.setdefault(r.model_path, []).append(
            {"version": r.version, "hardware": r.hardware, "name": r.name, "tp": r.tp, "ep": r.ep, "dp": r.dp,
             "dp_attention": r.dp_attention, "quantization": r.quantization})
    lines = ["{", '  "generated_by": "defc cookbook-snapshot",', f"  \"source\": {json.dumps(source)},", '  "models": {']
    keys = sorted(models)
    for i, k in enumerate(keys):
        lines.append(f"    {json.dumps(k)}: [")
        entries = models[k]
        for j, e in enumerate(entries):
            lines.append("      " + json.dumps(e) + ("," if j < len(entries) - 1 else ""))
        lines.append("    ]" + ("," if i < len(keys) - 1 else ""))
    lines += ["  }", "}"]
    atomic_write_text(path, "\n".join(lines) + "\n")
    _load_snapshot.cache_clear()
    return sum(len(v) for v in models.values())


def rows_for(model_paths: Iterable[str], cookbook_dir: Optional[str]) -> List[CookbookRow]:
    paths = set(model_paths)
    if not paths:
        return []
    rows = read_cookbook(cookbook_dir) if cookbook_dir else load_snapshot()
    return [r for r in rows if r.model_path in paths]


def default_servings(rows: Sequence[CookbookRow], quant_of) -> List[Serving]:
    """Unique (tp, ep, dp, dp-attention, quantization) over a model's cookbook rows."""
    seen: Dict[tuple, Serving] = {}
    for r in rows:
        q = quant_of(r.quantization)
        s = Serving(r.tp, r.ep, r.dp, r.dp_attention, q)
        k = (s.key(), q)
        if k in seen:
            old = seen[k]
            seen[k] = Serving(old.tp, old.ep, old.dp, old.dp_attention, q, old.origin + (f"{r.version} {r.hardware} {r.name}",))
        else:
            seen[k] = Serving(r.tp, r.ep, r.dp, r.dp_attention, q, (f"{r.version} {r.hardware} {r.name}",))
    return sorted(seen.values(), key=lambda s: (s.tp, s.ep, s.dp, s.dp_attention, s.quantization or ""))


MAX_PARALLEL = 65536       # the largest TP/EP/DP size a command line may name


def parse_int_list(text: Optional[str], option: str) -> Optional[List[int]]:
    """``1,2,8`` → [1, 2, 8]: ASCII digits only (not ``²`` or ``٣``), each from 1 to MAX_PARALLEL."""
    if text is None:
        return None
    out = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        shown = part if len(part) <= 20 else part[:20] + "..."
        if not re.fullmatch(r"[0-9]+", part) or part.strip("0") == "":
            raise DefcError(f"expected a comma list of positive integers, got '{shown}'", field=option)
        if len(part) > 6 or int(part) > MAX_PARALLEL:
            raise DefcError(f"{shown} is larger than {MAX_PARALLEL}", field=option)
        out.append(int(part))
    if not out:
        raise DefcError("expected at least one value", field=option)
    return sorted(set(out))


def explicit_servings(tps: Optional[List[int]], eps: Optional[List[int]], dps: Optional[List[int]],
                      cookbook: Sequence[Serving], quant: Optional[str]) -> Tuple[List[Serving], List[str]]:
    """The product of explicit --tp/--ep/--dp lists; skipped combinations are returned as notes."""
    tps = tps or sorted({s.tp for s in cookbook}) or [1]
    eps = eps or [1]
    dps = dps or [1]
    out, notes = [], []
    for tp in tps:
        for ep in eps:
            for dp in dps:
                if tp % ep:
                    notes.append(f"skipped tp={tp} ep={ep}: ep must divide tp")
                    continue
                if tp % dp:
                    notes.append(f"skipped tp={tp} dp={dp}: dp must divide tp")
                    continue
                out.append(Serving(tp, ep, dp, dp > 1, quant, ("command line",)))
    if not out:
        raise DefcError("no valid serving configuration: " + "; ".join(notes), field="--tp/--ep/--dp")
    return out, notes
