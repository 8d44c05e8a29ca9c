"""The dataset manifest, ``OUT/manifest.json``: what produced each model's definitions.

Like dbt's ``manifest.json``, it lets anyone tell what produced a file and compile it again.
Each ``defc compile`` that writes into a dataset records, under the dataset lock:

* ``inputs`` — one entry per distinct set of compiler inputs, keyed by its digest: defc's version
  and a digest of its compiler package, the sha256 of each spec file (and the model facts), of
  each template file and of the cookbook serving table;
* ``models`` — one entry per model slug: where its config came from (a catalogue entry, a Hugging
  Face repo id with the revision asked for and the commit it resolved to, or a local file), the
  sha256 of that file, the options that selected definitions, the serving configs, the
  quantizations, the findings, the inputs entry it was compiled with, and every definition file
  it produced (paths relative to the dataset).

A later compile into the same folder replaces the entries of the models it compiled and keeps the
others; an inputs entry no model refers to any more is dropped.  The file is written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any, Dict, List, Optional, Sequence

from .errors import DefcError, Location
from .load import display_path, load_json
from .paths import CATALOGUE_DIR, PROJECT_ROOT

MANIFEST = "manifest.json"
FORMAT = 1
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def defc_version() -> str:
    """defc's version: the project's pyproject.toml (a quick read), else the installed package's."""
    import re
    try:
        with open(os.path.join(PROJECT_ROOT, "pyproject.toml"), encoding="utf-8") as fh:
            m = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', fh.read(), re.M | re.S)
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        from importlib.metadata import version
        return version("defc")
    except Exception:  # noqa: BLE001 - not installed
        return "unknown"


def _shown(path: str) -> str:
    """A path as the manifest records it: relative to the project for its own files, else absolute."""
    path = os.path.abspath(path)
    try:
        rel = os.path.relpath(path, PROJECT_ROOT)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel.replace(os.sep, "/")


def file_sha256(path: str) -> Optional[str]:
    """The sha256 of a regular file's content, or None (absent, unreadable, not a regular file)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError:
        return None


def _tree_files(root: str) -> List[str]:
    out = []
    for sub, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        out += [os.path.join(sub, f) for f in sorted(files) if not f.endswith((".pyc", ".pyo"))]
    return out


def _tree_sha256(root: str) -> str:
    h = hashlib.sha256()
    for path in _tree_files(root):
        h.update(os.path.relpath(path, root).encode("utf-8", "surrogateescape") + b"\0")
        h.update((file_sha256(path) or "-").encode() + b"\0")
    return h.hexdigest()


def inputs_record(spec_files: Sequence[str], template_dirs: Sequence[str], cookbook: Optional[str]) -> Dict[str, Any]:
    """What every model of one compile shares: defc, the specs, the templates, the cookbook."""
    templates = {_shown(path): file_sha256(path) for d in template_dirs for path in _tree_files(d)}
    if cookbook:
        from .serving import cookbook_files
        h = hashlib.sha256()
        for _, path in cookbook_files(cookbook):        # the YAMLs compile reads, not a clone's .git
            h.update(os.path.relpath(path, cookbook).encode("utf-8", "surrogateescape") + b"\0")
            h.update((file_sha256(path) or "-").encode() + b"\0")
        book = {"path": _shown(cookbook), "sha256": h.hexdigest()}
    else:
        snap = os.path.join(CATALOGUE_DIR, "cookbook.json")
        book = {"path": _shown(snap), "sha256": file_sha256(snap)}
    return {"defc_version": defc_version(), "compiler_sha256": _tree_sha256(_PACKAGE_DIR),
            "specs": {_shown(p): file_sha256(p) for p in spec_files},
            "templates": templates,
            "cookbook": book}


def inputs_id(record: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def model_source(model) -> Dict[str, Any]:
    """Where a model's config came from: the catalogue, the Hub (repo id, revision, commit) or a file."""
    path = model.config_file
    digest = file_sha256(path) if path else None
    catalogue = os.path.join(CATALOGUE_DIR, "models")
    if path and os.path.dirname(os.path.abspath(path)) == os.path.abspath(catalogue):
        return {"kind": "catalogue", "slug": os.path.basename(path)[:-5], "file": _shown(path), "sha256": digest,
                "hf_repo_id": model.hf_repo_id}
    if model.commit or (model.origin or "").startswith("hf://"):
        src = {"kind": "hub", "repo_id": model.hf_repo_id, "revision": model.revision, "commit": model.commit,
               "sha256": digest}
        if not (model.origin or "").startswith("hf://"):
            src["file"] = os.path.abspath(path) if path else model.origin      # a snapshot folder named as a path
        return src
    return {"kind": "file", "file": os.path.abspath(path) if path else model.origin, "sha256": digest,
            "hf_repo_id": model.hf_repo_id}


def model_record(result, out: str, inputs: str, options: Dict[str, Any]) -> Dict[str, Any]:
    """One model's entry: its source, options, serving configs and the files it produced."""
    root = os.path.abspath(out)
    produced = sorted({os.path.relpath(os.path.abspath(p.path), root).replace(os.sep, "/")
                       for p in result.planned if p.status != "collision"})
    collided = sorted({os.path.relpath(os.path.abspath(p.path), root).replace(os.sep, "/")
                       for p in result.planned if p.status == "collision"})
    servings = [{"tp": s.tp, "ep": s.ep, "dp": s.dp, "dp_attention": s.dp_attention,
                 "quantization": s.quantization, "from": list(s.origin)} for s in result.servings]
    record = {"slug": result.model.slug, "source": model_source(result.model), "inputs": inputs,
              "options": options, "servings": servings,
              "quantization": sorted({d.get("quantization") or "" for d in servings} - {""}) or ["model default"],
              "findings": [f.line() for f in result.findings], "definitions": produced}
    if collided:
        record["collisions"] = collided            # present files that differ; left as they were
    return record


def read(path: str) -> Dict[str, Any]:
    """The manifest in a dataset ({} if there is none); one that is not defc's is an error."""
    if not os.path.lexists(path):
        return {}
    doc = load_json(path, "manifest")
    where = Location(display_path(path))
    if not (isinstance(doc, dict) and isinstance(doc.get("models"), dict) and isinstance(doc.get("inputs"), dict)
            and all(isinstance(v, dict) for v in doc["models"].values())):
        raise DefcError("not a defc dataset manifest (it needs 'models' and 'inputs' objects); move it away and "
                        "compile again", where)
    if doc.get("format") != FORMAT:
        raise DefcError(f"manifest format {doc.get('format')!r} is not {FORMAT} (written by another defc); move it "
                        f"away and compile again", where)
    return doc


def merged(old: Dict[str, Any], inputs: Dict[str, Any], records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The old manifest with these models' entries replaced; inputs no model refers to dropped."""
    models = dict(old.get("models") or {})
    for r in records:
        models[r["slug"]] = r
    every = dict(old.get("inputs") or {})
    every[inputs_id(inputs)] = inputs
    used = {m.get("inputs") for m in models.values()}
    return {"format": FORMAT, "generator": f"defc {defc_version()}",
            "inputs": {k: every[k] for k in sorted(every) if k in used},
            "models": {k: models[k] for k in sorted(models)}}


def text(doc: Dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
