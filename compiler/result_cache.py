"""A cache of rendered definitions, keyed by the content of everything that makes them.

Evaluating and rendering a model is the bulk of a compile that has nothing new to say: the same
specs, model config, serving configs, templates and compiler give the same definitions.  After
a model is rendered, its definitions (the JSON texts of their files: data, never code) are
stored in the parse cache folder (``DEFC_CACHE_DIR``, default ``~/.cache/defc``;
``DEFC_NO_CACHE=1`` turns every cache off, ``DEFC_NO_RESULT_CACHE=1`` this one) under a key that
is the sha256 of

* the text of every file of the compiler package (its code, schemas and data) and of every file
  in the template folders, and the versions of Python, Jinja and MarkupSafe;
* the text of the specs compiled and of the model facts;
* the model (slug, origin, config) and its serving configs as resolved for this compile;
* the options that select definitions (quantization, op types).

A later compile with the same key reads the definitions back and goes straight to placing them
in the dataset — which always happens anew: the merge and collision checks against the files on
disk are not cached.  Only definitions that compiled without error are stored, so an error is
always found by a real evaluation; an entry that cannot be read or does not have the expected
shape is a miss.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .load import cache_dir, cache_get, cache_put

FORMAT = "defs-2"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def enabled() -> bool:
    return cache_dir() is not None and not os.environ.get("DEFC_NO_RESULT_CACHE")


def _file_digest(h, path: str) -> None:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        data = b"\0unreadable"
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _tree_digest(h, root: str) -> None:
    """Every file under root (relative name and content), in a fixed order."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode("utf-8", "surrogateescape") + b"\0")
            _file_digest(h, path)


def _library_files() -> List[str]:
    import importlib.util
    out = []
    for mod in ("jinja2", "markupsafe"):
        spec = importlib.util.find_spec(mod)
        out.append(spec.origin if spec is not None and spec.origin else f"<no {mod}>")
    return out


def toolchain_digest(template_dirs: Sequence[str]) -> str:
    """The compiler, the templates and the libraries that render them."""
    h = hashlib.sha256()
    h.update(sys.version.encode())
    _tree_digest(h, _PACKAGE_DIR)
    for lib in _library_files():             # their __init__ carries __version__
        h.update(lib.encode() + b"\0")
        _file_digest(h, lib)
    for d in template_dirs:
        h.update(b"\0templates\0" + d.encode("utf-8", "surrogateescape"))
        _tree_digest(h, d)
    return h.hexdigest()


def inputs_digest(spec_files: Sequence[str], facts_file: str) -> str:
    """The specs (path and text) and the model facts."""
    h = hashlib.sha256()
    for p in list(spec_files) + [facts_file]:
        h.update(os.path.abspath(p).encode("utf-8", "surrogateescape") + b"\0")
        _file_digest(h, p)
    return h.hexdigest()


def key(toolchain: str, inputs: str, model, servings, options: Dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, toolchain, inputs, model.slug, model.origin, options,
                         [repr(s) for s in servings]], default=repr).encode("utf-8"))
    h.update(b"\0config\0")
    h.update(json.dumps(model.config, default=repr).encode("utf-8"))
    return FORMAT + "-" + h.hexdigest()


def get(k: str) -> Optional[Tuple[List[Tuple[Dict[str, Any], List[str]]], List[str]]]:
    """The stored definitions and their file texts, or None (a miss: absent, unreadable or not of
    the expected shape)."""
    hit = cache_get(k)
    if hit is None:
        return None
    data = hit[0]
    try:
        docs, texts = [], []
        for text, sources in data["definitions"]:
            doc = json.loads(text)
            if not (isinstance(doc, dict) and isinstance(doc.get("name"), str) and isinstance(doc.get("op_type"), str)
                    and isinstance(doc.get("tags"), list) and isinstance(sources, list)
                    and all(isinstance(s, str) for s in sources)):
                return None
            docs.append((doc, sources))
            texts.append(text)
        return docs, texts
    except (KeyError, TypeError, ValueError):
        return None


MAX_ENTRIES = 2000        # beyond this many stored compiles, the older half is removed


def put(k: str, docs: Sequence[Tuple[Dict[str, Any], List[str]]], texts: Sequence[str]) -> None:
    """Store a model's definitions as their file texts (write.dumps of each), so that a hit
    needs no serialising before the files are written."""
    cache_put(k, {"definitions": [[text, list(sources)] for (_, sources), text in zip(docs, texts)]}, {})
    _prune()


def _prune() -> None:
    """Keep the cache bounded: every change of the compiler or of a spec makes new entries."""
    base = cache_dir()
    try:
        names = [n for n in os.listdir(base) if n.startswith(FORMAT + "-") and n.endswith(".json")]
        if len(names) <= MAX_ENTRIES:
            return
        aged = sorted(names, key=lambda n: os.stat(os.path.join(base, n)).st_mtime)
        for n in aged[: len(aged) // 2]:
            os.unlink(os.path.join(base, n))
    except OSError:
        pass        # a cache that cannot be pruned only costs space
