"""The compile's two caches, in one folder (``DEFC_CACHE_DIR``, default ``~/.cache/defc``).

* **Parse entries**: a YAML text parsed (its data and the positions of its keys), or a text that
  passed a schema, keyed by the sha256 of the text.  ruamel's round-trip parser and jsonschema
  are the slow part of loading a spec; their answer for the same text never changes.
* **Result entries**: a model's rendered definitions (the JSON texts of their files: data, never
  code), keyed by the digests of everything that makes them — defc's own code and the libraries
  that render, the template folders, each spec and the model facts, the model's config, its
  serving configs and the options that select definitions.  A compile whose key is stored goes
  straight to placing the definitions in the dataset, which always happens anew (the merge and
  collision checks against the files on disk are never cached).  Only definitions that compiled
  without error are stored, so an error is always found by a real evaluation.

Every entry is one JSON file written atomically (a temp file ``.tmp-{pid}-…`` renamed into place;
a failed write, a full disk included, removes its temp file, and a process's first use of the
cache removes those that killed processes left behind); one that cannot be read or does not have
the expected shape is a miss.  ``DEFC_NO_CACHE=1`` turns both caches off, ``DEFC_NO_RESULT_CACHE=1``
the result entries only.  When a model's result entry is not reused, the ``defc`` logger says
why at debug level (``defc --debug``): which of those inputs changed since the model was last
stored.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

VERSION = "5"          # 3: positions kept as JSON text; 4: one cache module, result keys by parts; 5: findings
MAX_RESULTS = 2000     # beyond this many stored compiles, the older half is removed

DIGEST_LIMIT = 16 * 1024 * 1024     # a larger input is keyed by size and mtime (load's limit is the same)
log = logging.getLogger("defc")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def folder() -> Optional[str]:
    """The cache folder, or None when DEFC_NO_CACHE is set."""
    if os.environ.get("DEFC_NO_CACHE"):
        return None
    return os.environ.get("DEFC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "defc")


def text_key(kind: str, text: str) -> str:
    """The key of a parse entry: its kind and the sha256 of the text."""
    return f"{kind}-{VERSION}-{hashlib.sha256(text.encode('utf-8')).hexdigest()}"


def get(key: str) -> Optional[Tuple[Any, str]]:
    """(data, positions as JSON text) stored under key, or None (absent, unreadable, caching off)."""
    base = folder()
    if not base:
        return None
    _clean_once(base)
    try:
        with open(os.path.join(base, key + ".json"), encoding="utf-8") as fh:
            doc = json.load(fh)
        positions = doc["positions"]
        if not isinstance(positions, str):
            return None
        return doc["data"], positions
    except (OSError, ValueError, KeyError, TypeError):
        return None


TEMP_PREFIX = ".tmp-"           # a temp file of an entry being written: .tmp-{pid}-{random}
STALE_AFTER_S = 3600            # temp files of live processes, or without a pid, are removed when older
_cleaned: List[str] = []        # cache folders cleaned by this process


def clean_temps(base: str, now: Optional[float] = None) -> List[str]:
    """Remove the temp files that writers of entries left behind in the cache folder: those of a
    process that is gone (killed mid-write, or after a full disk) and any older than an hour;
    return their names."""
    removed = []
    now = time.time() if now is None else now
    try:
        names = [n for n in os.listdir(base) if n.startswith(TEMP_PREFIX)]
    except OSError:
        return removed
    for n in names:
        path = os.path.join(base, n)
        pid = n[len(TEMP_PREFIX):].split("-", 1)[0]
        try:
            st = os.lstat(path)
            old = now - st.st_mtime > STALE_AFTER_S
            gone = pid.isdigit() and "-" in n[len(TEMP_PREFIX):] and not pid_alive(int(pid))
            if (old or gone) and stat.S_ISREG(st.st_mode):      # never a link or a folder
                os.unlink(path)
                removed.append(n)
        except (OSError, ValueError, OverflowError):
            pass
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (the writer of a temp file named after it)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:             # EPERM: it exists, under another user
        return True
    return True


def _clean_once(base: str) -> None:
    """clean_temps, on a process's first use of the cache folder (one listing)."""
    if base not in _cleaned:
        _cleaned.append(base)
        clean_temps(base)


def put(key: str, data: Any, positions: Optional[Dict[Tuple, Tuple[int, int]]] = None) -> None:
    """Store JSON data (and YAML positions) under key, atomically; a failure only costs the cache
    (its temp file is removed, whatever the failure)."""
    base = folder()
    if not base:
        return
    tmp = None
    try:
        os.makedirs(base, exist_ok=True)
        _clean_once(base)
        fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=base)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"data": data, "positions": json.dumps([[list(p), l, c] for p, (l, c)
                                                              in (positions or {}).items()])}, fh)
        os.replace(tmp, os.path.join(base, key + ".json"))
        tmp = None
    except (OSError, TypeError, ValueError, RecursionError, MemoryError):
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# -- result entries ------------------------------------------------------------------------------

def results_enabled() -> bool:
    return folder() is not None and not os.environ.get("DEFC_NO_RESULT_CACHE")


def _file_digest(h, path: str) -> None:
    """A file's length and content; a device, FIFO or socket is never opened (it could block or
    never end) and a file past DIGEST_LIMIT bytes is keyed by its size and mtime (load refuses
    such a file anyway)."""
    import stat
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            data = b"\0not a regular file"
        elif st.st_size > DIGEST_LIMIT:
            data = b"\0too large %d %d" % (st.st_size, st.st_mtime_ns)
        else:
            with open(path, "rb") as fh:
                data = fh.read(DIGEST_LIMIT + 1)
    except OSError:
        data = b"\0unreadable"
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _tree_digest(h, root: str) -> None:
    """Every file under root (relative name and content), in a fixed order."""
    for sub, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(sub, name)
            h.update(os.path.relpath(path, root).encode("utf-8", "surrogateescape") + b"\0")
            _file_digest(h, path)


def _digest(feed) -> str:
    h = hashlib.sha256()
    feed(h)
    return h.hexdigest()


def _code_digest(h) -> None:
    """defc's compiler package (code, schemas, data) and the Python and Jinja that run it."""
    import jinja2
    import markupsafe
    h.update(sys.version.encode() + b"\0")
    _tree_digest(h, _PACKAGE_DIR)
    for mod in (jinja2, markupsafe):            # their __init__ carries __version__
        _file_digest(h, mod.__file__)


def shared_parts(template_dirs: Sequence[str], spec_files: Sequence[str], facts_file: str) -> Dict[str, str]:
    """The digests of the inputs that every model of a compile shares, by name."""
    parts = {"defc compiler code": _digest(_code_digest)}
    for d in template_dirs:
        parts[f"templates {d}"] = _digest(lambda h: _tree_digest(h, d))
    for p in list(spec_files) + [facts_file]:
        parts[f"spec {os.path.abspath(p)}"] = _digest(lambda h: _file_digest(h, p))
    return parts


def model_parts(model, servings, options: Dict[str, Any]) -> Dict[str, str]:
    """The digests of one model's own inputs, by name."""
    def js(x) -> str:
        return hashlib.sha256(json.dumps(x, default=repr, sort_keys=True).encode("utf-8")).hexdigest()
    return {"model config": js([model.slug, model.origin, model.config]),
            "serving configs": js([repr(s) for s in servings]),
            "options": js(options)}


def _result_key(parts: Dict[str, str]) -> str:
    return f"defs-{VERSION}-" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def _last_key(model) -> str:
    """Where the parts of a model's latest stored entry are kept (to say why an entry missed)."""
    return f"last-{VERSION}-" + hashlib.sha256(json.dumps([model.slug, model.origin]).encode("utf-8")).hexdigest()


def get_result(model, parts: Dict[str, str]) -> Optional[Tuple[List[Tuple[Dict[str, Any], List[str]]], List[str],
                                                                   List[Dict[str, Any]]]]:
    """A model's stored definitions (each with the serving configs it comes from), their file
    texts and the model's findings (as JSON), or None; a miss is logged with its reason."""
    hit = get(_result_key(parts))
    if hit is not None:
        try:
            docs, texts = [], []
            found = hit[0]["findings"]
            if not (isinstance(found, list) and all(isinstance(f, dict) for f in found)):
                raise ValueError("not findings")
            for text, sources in hit[0]["definitions"]:
                doc = json.loads(text)
                if not (isinstance(doc, dict) and isinstance(doc.get("name"), str)
                        and isinstance(doc.get("op_type"), str) and isinstance(doc.get("tags"), list)
                        and isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
                    raise ValueError("not a definition")
                docs.append((doc, sources))
                texts.append(text)
            log.debug("result cache: %s reused", model.slug)
            return docs, texts, found
        except (TypeError, ValueError, KeyError):
            log.debug("result cache: %s not reused: its entry is damaged", model.slug)
            return None
    last = get(_last_key(model))
    if last is None or not isinstance(last[0], dict):
        log.debug("result cache: %s not reused: no entry stored for this model", model.slug)
        return None
    changed = sorted(k for k in set(parts) | set(last[0]) if parts.get(k) != last[0].get(k))
    log.debug("result cache: %s not reused: changed since it was stored: %s", model.slug,
              ", ".join(changed) if changed else "nothing (the entry was removed)")
    return None


def put_result(model, parts: Dict[str, str], docs: Sequence[Tuple[Dict[str, Any], List[str]]],
               texts: Sequence[str], found: Sequence[Dict[str, Any]]) -> None:
    """Store a model's definitions as their file texts (write.dumps of each), with its findings."""
    put(_result_key(parts), {"definitions": [[text, list(sources)] for (_, sources), text in zip(docs, texts)],
                             "findings": list(found)})
    put(_last_key(model), parts)
    _prune()


def _prune() -> None:
    """Keep the cache bounded: every change of the compiler or of a spec makes new entries."""
    base = folder()
    try:
        names = [n for n in os.listdir(base) if n.startswith("defs-") and n.endswith(".json")]
        if len(names) <= MAX_RESULTS:
            return
        aged = sorted(names, key=lambda n: os.stat(os.path.join(base, n)).st_mtime)
        for n in aged[: len(aged) // 2]:
            os.unlink(os.path.join(base, n))
    except OSError:
        pass        # a cache that cannot be pruned only costs space
