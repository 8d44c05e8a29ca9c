"""Staging: FlashInfer dumps → a dataset (``OUT/definitions/{op_type}/{name}.json``).

Each dump goes through the normalisation rules (``runners/stage_rules.yaml``), then the repair
rules for known mislabels (``runners/repair_rules.yaml``), gains ``model:``/``tp:``/``ep:``/
``quantization:`` tags, must load in ``flashinfer_bench.data.Definition``, and is written with
the compiler's safe writer: equal content is left alone, the same structure merges tags, and a
different definition under the same name is reported as a collision and never overwritten.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from defc.compiler.errors import DefcError
from defc.compiler.load import display_path
from defc.compiler.write import WRITES, DatasetLock, apply, check_component, plan

from .common import DumpSet, data_file
from .rules import Outcome, apply_rules, load_rules

STAGE_RULES = data_file("stage_rules.yaml")
REPAIR_RULES = data_file("repair_rules.yaml")
TAG_KEYS = ("model", "tp", "ep", "quantization")


@dataclass
class StageItem:
    source_path: str
    status: str                   # new | merged | unchanged | collision | invalid | unreadable | skipped
    name: str = ""
    op_type: str = ""
    original_name: str = ""
    rules: List[str] = field(default_factory=list)
    detail: str = ""
    path: str = ""
    doc: Optional[Dict[str, Any]] = None

    def row(self) -> Dict[str, Any]:
        return {"status": self.status, "op_type": self.op_type, "name": self.name,
                "dumped_as": self.original_name if self.original_name != self.name else "",
                "rules": self.rules, "detail": self.detail, "path": self.path,
                "source": display_path(self.source_path)}


def normalise(doc: Dict[str, Any], source: str, repair: bool = True,
              stage_rules: Optional[str] = None, repair_rules: Optional[str] = None) -> Outcome:
    """Stage rules, then (optionally) mislabel repairs; ``also_as`` names are collected too."""
    out = apply_rules(load_rules(stage_rules or STAGE_RULES), doc, source)
    if out.skipped or not repair:
        return out
    rep = apply_rules(load_rules(repair_rules or REPAIR_RULES), out.doc, source)
    rep.fired = out.fired + rep.fired
    return rep


def add_tags(doc: Dict[str, Any], tags: Dict[str, Any]) -> None:
    """model:/tp:/ep:/quantization: tags; a namespace the document already has is left as it is."""
    have = [str(t) for t in doc.get("tags") or []]
    for k in TAG_KEYS:
        v = tags.get(k)
        if v is None or v == "":
            continue
        if any(t.startswith(k + ":") for t in have) and k == "quantization":
            continue
        t = f"{k}:{v}"
        if t not in have:
            have.append(t)
    doc["tags"] = have


def validate(doc: Dict[str, Any]) -> str:
    """'' when ``doc`` loads in flashinfer_bench.data.Definition, else the first problem."""
    try:
        from flashinfer_bench.data import Definition
    except ImportError:
        raise DefcError("flashinfer-bench is not installed; staging checks every definition with "
                        "flashinfer_bench.data.Definition (pip install flashinfer-bench==0.1.2)") from None
    try:
        Definition.model_validate(doc)
    except Exception as e:  # pydantic.ValidationError: keep the first line of the first error
        errs = getattr(e, "errors", None)
        if callable(errs):
            try:
                first = errs()[0]
                loc = ".".join(str(x) for x in first.get("loc", ()))
                return f"{loc + ': ' if loc else ''}{first.get('msg', '')}".strip()
            except Exception:
                pass
        return " ".join(str(e).split())[:200]
    return ""


def stage_docs(sets: Sequence[DumpSet], out: str, tags: Dict[str, Any], dry_run: bool = False,
               repair: bool = True) -> List[StageItem]:
    """Normalise, tag and place every dump; each file is planned and written under the dataset's
    lock (a concurrent compile or stage into the same folder waits its turn)."""
    planned = _stage_docs(sets, out, tags, True, repair)
    if dry_run or not any(i.status in WRITES for i in planned):
        return planned                  # nothing to write: the dataset is not touched (nor locked)
    with DatasetLock(out):
        return _stage_docs(sets, out, tags, False, repair)


def _stage_docs(sets: Sequence[DumpSet], out: str, tags: Dict[str, Any], dry_run: bool,
                repair: bool) -> List[StageItem]:
    items: List[StageItem] = []
    for ds in sets:
        for f in ds.files:
            if f.doc is None:
                items.append(StageItem(f.path, "unreadable", detail=f.error))
                continue
            orig = str(f.doc.get("name", ""))
            res = normalise(f.doc, ds.source, repair=repair)
            doc = res.doc
            it = StageItem(f.path, "", name=str(doc.get("name", "")), op_type=str(doc.get("op_type", "")),
                           original_name=orig, rules=list(res.fired))
            if res.skipped:
                it.status, it.detail = "skipped", f"{res.skipped[1]} (rule {res.skipped[0]})"
                items.append(it)
                continue
            add_tags(doc, tags)
            problem = validate(doc)
            if problem:
                it.status, it.detail = "invalid", f"not a valid Definition after normalisation: {problem}"
                items.append(it)
                continue
            try:
                check_component(doc.get("op_type"), "op_type")
                check_component(doc.get("name"), "definition name")
            except DefcError as e:
                it.status, it.detail = "invalid", e.message
                items.append(it)
                continue
            p = plan(out, doc, force=False, skip_existing=True)
            it.status, it.detail, it.path, it.doc = p.status, p.detail, p.path, p.doc
            if not dry_run:
                apply(p)
            items.append(it)
    return items


def count(items: Sequence[StageItem], status: str) -> int:
    return sum(1 for i in items if i.status == status)


def problems(items: Sequence[StageItem]) -> int:
    return sum(1 for i in items if i.status in ("collision", "invalid", "unreadable"))


def default_tags(model_slug: str, tp: Optional[int], ep: Optional[int], quantization: Optional[str]) -> Dict[str, Any]:
    t: Dict[str, Any] = {"model": model_slug}
    if tp is not None:
        t["tp"] = tp
    if ep is not None and ep > 1:
        t["ep"] = ep
    if quantization and quantization != "bf16":
        t["quantization"] = quantization
    return t


def describe(items: Sequence[StageItem]) -> str:
    parts = []
    for s in ("new", "merged", "unchanged", "collision", "invalid", "skipped", "unreadable"):
        n = count(items, s)
        if n or s == "new":
            parts.append(f"{n} {s}")
    return ", ".join(parts)
