"""Stage 5, write: Definition dicts → ``OUT/definitions/{op_type}/{name}.json``, safely.

Every write is atomic (a temp file in the same folder, fsync, rename).  An existing file is
never replaced silently: equal content is left alone, a definition with the same structure
(axes, tensors, constraints) gains the new ``model:``/``tp:``/… tags (a merge), and anything
else is a collision that is reported and left as it is unless ``--force`` (which keeps a
``.bak`` of the old file).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .errors import DefcError, Location

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def check_component(value: Any, what: str) -> str:
    """A name or op_type that is safe as one path component (no '..', '/', NUL, absolute paths)."""
    if not isinstance(value, str) or not value:
        raise DefcError(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value or "/" in value or "\\" in value or value in (".", "..") or ".." in value \
            or not SAFE_NAME.match(value):
        raise DefcError(f"{what} {value!r} is not a safe file name (letters, digits, '_', '-', '.' only, no '..')")
    return value


def dumps(doc: Dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def atomic_write_text(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".defc-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def structure(doc: Dict[str, Any]) -> str:
    """What must agree for two definitions of one name to be the same kernel."""
    def tensors(sect):
        return {k: (v.get("shape"), v.get("dtype"), bool(v.get("optional"))) for k, v in (doc.get(sect) or {}).items()}
    axes = {k: (v.get("type"), v.get("value")) for k, v in (doc.get("axes") or {}).items()}
    return json.dumps([doc.get("name"), doc.get("op_type"), axes, doc.get("constraints") or [],
                       tensors("inputs"), tensors("outputs")], sort_keys=True)


def merge_tags(old: List[str], new: List[str]) -> List[str]:
    out = list(old)
    for t in new:
        if t not in out:
            # keep tags of one namespace together: insert after the last tag of the same prefix
            ns = t.split(":", 1)[0] + ":" if ":" in t else None
            idx = max((i for i, x in enumerate(out) if ns and x.startswith(ns)), default=None)
            if idx is None:
                out.append(t)
            else:
                out.insert(idx + 1, t)
    return out


@dataclass
class Planned:
    doc: Dict[str, Any]
    path: str
    status: str                      # new | unchanged | merged | collision | replaced
    detail: str = ""
    text: Optional[str] = None        # what would be written
    sources: List[str] = field(default_factory=list)


def definition_path(out: str, doc: Dict[str, Any]) -> str:
    op = check_component(doc.get("op_type"), "op_type")
    name = check_component(doc.get("name"), "definition name")
    return os.path.join(out, "definitions", op, f"{name}.json")


def plan(out: str, doc: Dict[str, Any], force: bool = False, skip_existing: bool = True) -> Planned:
    path = definition_path(out, doc)
    if not os.path.exists(path):
        return Planned(doc, path, "new", text=dumps(doc))
    try:
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        if not isinstance(old, dict):
            raise ValueError("not an object")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        if force:
            return Planned(doc, path, "replaced", f"existing file was unreadable ({str(e)[:60]}); kept as .bak", dumps(doc))
        return Planned(doc, path, "collision", f"existing file is not a readable definition ({str(e)[:60]})")
    if old == doc:
        return Planned(old, path, "unchanged")
    if structure(old) == structure(doc):
        tags = merge_tags(list(old.get("tags") or []), list(doc.get("tags") or []))
        note = ""
        if old.get("reference") != doc.get("reference"):
            note = "existing reference kept (it differs from this model's, e.g. in eps)"
        if tags == list(old.get("tags") or []):
            return Planned(old, path, "unchanged", note)
        if not skip_existing and not force:
            return Planned(doc, path, "collision", "exists (--no-skip-existing): not merged")
        merged = dict(old)
        merged["tags"] = tags
        return Planned(merged, path, "merged", note or "tags merged", dumps(merged))
    if force:
        return Planned(doc, path, "replaced", "different content; old file kept as .bak", dumps(doc))
    return Planned(doc, path, "collision", _difference(old, doc))


def _difference(old: Dict[str, Any], new: Dict[str, Any]) -> str:
    for key in ("op_type", "axes", "inputs", "outputs", "constraints"):
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(new.get(key), sort_keys=True):
            if key == "axes":
                oa, na = old.get("axes") or {}, new.get("axes") or {}
                for k in sorted(set(oa) | set(na)):
                    if oa.get(k, {}).get("value") != na.get(k, {}).get("value") or oa.get(k, {}).get("type") != na.get(k, {}).get("type"):
                        return f"existing file differs in axis '{k}' ({oa.get(k)} vs {na.get(k)})"
            if key in ("inputs", "outputs"):
                o, n = old.get(key) or {}, new.get(key) or {}
                for k in list(o) + [x for x in n if x not in o]:
                    if k not in n or k not in o or (o[k].get("shape"), o[k].get("dtype")) != (n[k].get("shape"), n[k].get("dtype")):
                        return f"existing file differs in {key[:-1]} '{k}'"
            return f"existing file differs in {key}"
    return "existing file differs"


def apply(p: Planned) -> None:
    """Carry out a planned write (new, merged or replaced)."""
    if p.status in ("new", "merged", "replaced") and p.text is not None:
        if p.status == "replaced" and os.path.exists(p.path):
            bak = p.path + ".bak"
            with open(p.path, "rb") as fh:
                data = fh.read()
            tmp = bak + ".tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, bak)
        atomic_write_text(p.path, p.text)


def location_of(path: str) -> Location:
    return Location(path)
