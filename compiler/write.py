"""Stage 5, write: Definition dicts → ``OUT/definitions/{op_type}/{name}.json``, safely.

Every write is atomic (a temp file in the same folder, fsync, rename).  An existing file is
never replaced silently: equal content is left alone, a definition with the same structure
(axes, tensors, constraints) gains the new ``model:``/``tp:``/… tags (a merge), and anything
else is a collision that is reported and left as it is unless ``--force`` (which keeps the old
file as a backup: ``NAME.json.bak``, or ``.bak.1``, ``.bak.2``, … — an existing backup is never
overwritten).

Several processes may write into one dataset: the write step holds an advisory lock on the
dataset folder (:class:`DatasetLock`, flock(2)) and re-plans every file under it (:func:`replan`),
so a file another compile wrote meanwhile is merged with or reported, never lost or replaced
unreported.
"""
from __future__ import annotations

import errno
import itertools
import json
import os
import re
import stat
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .cache import pid_alive
from .errors import DefcError, Location
from .load import display_path

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
    """A definition file's text: ``json.dumps(doc, indent=2, ensure_ascii=False)`` and a newline."""
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# Temp files are ``.defc-{pid}-{n}.tmp`` next to their target: never a ``*.json``, so a reader
# of the dataset cannot mistake a half-written file for a definition, and a later run can tell a
# leftover of a killed process (pid gone) from a write in progress (see clean_stale_temps).
TEMP_PREFIX = ".defc-"
TEMP_SUFFIX = ".tmp"
_TEMP = re.compile(r"^\.defc-(\d+)-.*\.tmp$")
STALE_AFTER_S = 3600          # temp files without a pid are removed when older than this
_UMASK = os.umask(0)
os.umask(_UMASK)


_counter = itertools.count()


def _write_temp(path: str, data: bytes) -> Tuple[int, str]:
    """Create ``.defc-{pid}-{n}.tmp`` next to path and write data into it; return (open fd, temp path)."""
    folder = os.path.dirname(path) or "."
    pid = os.getpid()
    while True:
        tmp = os.path.join(folder, f"{TEMP_PREFIX}{pid}-{next(_counter)}{TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:        # a leftover of an earlier process that had this pid
            continue
        except FileNotFoundError:      # callers that did not make the folder
            if os.path.isdir(folder):
                raise
            os.makedirs(folder, exist_ok=True)
    try:
        view = memoryview(data)
        while len(view):
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    return fd, tmp


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _synced_temp(path: str, data: bytes) -> str:
    """A temp file next to path holding data, on disk (fsync) and closed; its path."""
    fd, tmp = _write_temp(path, data)
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never a part (temp + fsync + rename)."""
    tmp = _synced_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


_SYNCFS: List[Any] = []


def _syncfs(fds: Sequence[int]) -> bool:
    """One syncfs(2) per filesystem of the given fds (one fd per folder is enough: Linux);
    False where it is not available."""
    if not _SYNCFS:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            _SYNCFS.append(libc.syncfs if hasattr(libc, "syncfs") else None)
        except (OSError, AttributeError, ImportError):
            _SYNCFS.append(None)
    fn = _SYNCFS[0]
    if fn is None:
        return False
    done = set()
    for fd in fds:
        dev = os.fstat(fd).st_dev
        if dev not in done:
            if fn(fd) != 0:
                return False
            done.add(dev)
    return True


def atomic_write_many(items: Sequence[Tuple[str, bytes]], batch: int = 64) -> None:
    """Write many files atomically, in batches: every temp file of a batch is written, then the
    batch is made durable, then each temp is renamed into place.  Durable means one syncfs(2) per
    batch where Linux offers it (one journal commit instead of one per file, about 3x faster for
    small definitions), else an fsync per file.  Either way a file's data is on disk before its
    name is, and a kill at any point leaves complete files and temp files, never a partial file
    under a final name."""
    for i in range(0, len(items), batch):
        opened: List[Tuple[int, str, str]] = []
        synced: List[Tuple[str, str]] = []
        try:
            for path, data in items[i:i + batch]:
                opened.append(_write_temp(path, data) + (path,))
            by_folder = {os.path.dirname(tmp): fd for fd, tmp, _ in opened}
            if opened and _syncfs(list(by_folder.values())):
                while opened:
                    fd, tmp, path = opened.pop()
                    os.close(fd)
                    synced.append((tmp, path))
            while opened:
                fd, tmp, path = opened.pop()
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                synced.append((tmp, path))
            while synced:
                tmp, path = synced[-1]
                os.replace(tmp, path)
                synced.pop()
        except BaseException:
            for fd, tmp, _ in opened:
                os.close(fd)
                _unlink_quietly(tmp)
            for tmp, _ in synced:
                _unlink_quietly(tmp)
            raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def clean_stale_temps(folder: str) -> List[str]:
    """Remove temp files that a killed defc left in ``folder``; return their paths.

    A temp file whose writer is still running is left alone (two compiles may share a dataset).
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for n in names:
        if not (n.startswith(TEMP_PREFIX) and n.endswith(TEMP_SUFFIX)):
            continue
        p = os.path.join(folder, n)
        m = _TEMP.match(n)
        try:
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode):          # our temp files are plain files, never links or folders
                continue
            stale = not pid_alive(int(m.group(1))) if m else now - st.st_mtime > STALE_AFTER_S
            if stale:
                os.unlink(p)
                removed.append(p)
        except (OSError, ValueError):
            pass
    return removed


def check_folder(folder: str) -> None:
    """Fail as ensure_folder would when a file is in the way of the folder, making nothing."""
    cur = folder
    while cur and not os.path.lexists(cur) and os.path.dirname(cur) != cur:
        cur = os.path.dirname(cur)
    if cur and os.path.lexists(cur) and not os.path.isdir(cur):
        raise DefcError(f"a file is in the way of the folder {display_path(folder)}", Location(display_path(cur)))


def ensure_folder(folder: str) -> None:
    """Create a folder (and its parents), or fail with one line naming what is in the way."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        cur = folder
        while cur and not os.path.lexists(cur) and os.path.dirname(cur) != cur:
            cur = os.path.dirname(cur)
        if cur and os.path.lexists(cur) and not os.path.isdir(cur):
            raise DefcError(f"a file is in the way of the folder {display_path(folder)}",
                            Location(display_path(cur))) from None
        raise DefcError(f"cannot create folder: {e.strerror or e}", Location(display_path(folder))) from None


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


WRITES = ("new", "merged", "replaced")      # the statuses that write a file
# a definition of this name exists with the same kernel (structure) but another reference (a
# constant such as eps): one file holds one reference, the first model's; the compile warns
REFERENCE_KEPT = "existing reference kept, this model's differs"


def _first_difference(a: Any, b: Any) -> str:
    """The first differing line of two reference texts: 'EPS = 1e-05' kept, 'EPS = 1e-06' this model's."""
    la, lb = str(a or "").splitlines(), str(b or "").splitlines()
    for x, y in zip(la, lb):
        if x != y:
            return f"'{x.strip()[:80]}' kept, '{y.strip()[:80]}' this model's"
    return f"{len(la)} lines kept, {len(lb)} this model's"


class Planned:
    """What one definition does to its file: new | unchanged | merged | collision | replaced.

    ``text`` (what would be written) is serialised from ``doc`` when first asked for, so a file
    that several models plan in turn (see ``pipeline.compile_models``) is serialised once, for the
    version that is written.  ``backup_text``: for ``replaced``, the content the ``.bak`` keeps
    when it is not the file on disk (an earlier model of the same run planned it)."""

    __slots__ = ("doc", "path", "status", "detail", "_text", "sources", "backup_text", "_structure",
                 "placed", "force", "skip_existing", "backups")

    def __init__(self, doc: Dict[str, Any], path: str, status: str, detail: str = "",
                 text: Optional[str] = None, sources: Optional[List[str]] = None,
                 backup_text: Optional[str] = None):
        self.doc, self.path, self.status, self.detail = doc, path, status, detail
        self._text = text
        self.sources = list(sources or [])
        self.backup_text = backup_text
        self._structure: Optional[str] = None
        # how the plan was made (see replan): the definition placed and the options
        self.placed: Optional[Dict[str, Any]] = None
        self.force = False
        self.skip_existing = True
        # for ``replaced``: every old content to keep, oldest first (None: the file on disk);
        # None: [backup_text] (see final_writes)
        self.backups: Optional[List[Optional[str]]] = None

    def structure(self) -> str:
        """structure(self.doc), worked out once."""
        if self._structure is None:
            self._structure = structure(self.doc)
        return self._structure

    @property
    def text(self) -> Optional[str]:
        if self._text is None and self.status in WRITES:
            self._text = dumps(self.doc)
        return self._text

    @text.setter
    def text(self, value: Optional[str]) -> None:
        self._text = value

    def __repr__(self) -> str:
        return f"Planned({self.status} {self.path})"


def definition_path(out: str, doc: Dict[str, Any]) -> str:
    op = check_component(doc.get("op_type"), "op_type")
    name = check_component(doc.get("name"), "definition name")
    return os.path.join(out, "definitions", op, f"{name}.json")


class Listing:
    """Which files exist, one folder listing each (instead of a stat per planned file); made for
    one compile's planning."""

    def __init__(self):
        self._names: Dict[str, Optional[frozenset]] = {}

    def exists(self, path: str) -> bool:
        folder, name = os.path.split(path)
        names = self._names.get(folder, False)
        if names is False:
            try:
                names = frozenset(os.listdir(folder or "."))
            except (FileNotFoundError, NotADirectoryError):
                names = frozenset()
            except OSError:
                names = None            # unreadable folder: ask about each file
            self._names[folder] = names
        return os.path.exists(path) if names is None else (name in names and os.path.exists(path))


def plan(out: str, doc: Dict[str, Any], force: bool = False, skip_existing: bool = True,
         current: Optional[Dict[str, Planned]] = None, listing: Optional[Listing] = None) -> Planned:
    """Place a definition: against the file on disk, or against ``current[path]`` — the write an
    earlier model of the same run planned for that file, which the disk would hold by now.
    ``listing``: a Listing shared by the plans of one compile."""
    return plan_at(definition_path(out, doc), doc, force, skip_existing, current, listing)


def plan_at(path: str, doc: Dict[str, Any], force: bool = False, skip_existing: bool = True,
            current: Optional[Dict[str, Planned]] = None, listing: Optional[Listing] = None) -> Planned:
    """:func:`plan` for a known file path."""
    p = _plan_at(path, doc, force, skip_existing, current, listing)
    p.placed, p.force, p.skip_existing = doc, force, skip_existing
    return p


def _plan_at(path: str, doc: Dict[str, Any], force: bool, skip_existing: bool,
             current: Optional[Dict[str, Planned]], listing: Optional[Listing]) -> Planned:
    prior = current.get(path) if current is not None else None
    if prior is not None:
        return _plan_over(path, doc, prior.doc, prior, force, skip_existing)
    if not (listing.exists(path) if listing is not None else os.path.exists(path)):
        return Planned(doc, path, "new")
    try:
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        if not isinstance(old, dict):
            raise ValueError("not an object")
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        if force:
            return Planned(doc, path, "replaced", f"existing file was unreadable ({str(e)[:60]}); kept as .bak")
        return Planned(doc, path, "collision", f"existing file is not a readable definition ({str(e)[:60]})")
    return _plan_over(path, doc, old, None, force, skip_existing)


def replan(plans: Sequence[Sequence[Planned]]) -> List[List[Planned]]:
    """Make the plans again, in the same order, against the dataset as it is now (each list: one
    model's, planned after the lists before it).  The write step does this under the dataset lock,
    so what another process wrote since the first planning is merged with or reported as a
    collision, never overwritten.  A plan that was not made by :func:`plan` is kept as it is."""
    current: Dict[str, Planned] = {}
    listing = Listing()
    out: List[List[Planned]] = []
    for group in plans:
        again = []
        for p in group:
            if p.placed is None:
                q = p
            else:
                q = plan_at(p.path, p.placed, p.force, p.skip_existing, current, listing)
                q.sources = p.sources
                if q.status == p.status == "new" and p._text is not None:
                    q.text = p._text                     # the text already made for it
            if q.status in WRITES:
                current[q.path] = q
            again.append(q)
        out.append(again)
    return out


def _plan_over(path: str, doc: Dict[str, Any], old: Dict[str, Any], prior: Optional[Planned], force: bool,
               skip_existing: bool) -> Planned:
    """Plan doc over an existing definition ``old`` (``prior``: the planned write it comes from
    when it is not on disk yet)."""
    if old == doc:
        return Planned(old, path, "unchanged")
    if (prior.structure() if prior is not None else structure(old)) == structure(doc):
        tags = merge_tags(list(old.get("tags") or []), list(doc.get("tags") or []))
        note = ""
        if old.get("reference") != doc.get("reference"):
            note = f"{REFERENCE_KEPT}: {_first_difference(old.get('reference'), doc.get('reference'))}"
        if tags == list(old.get("tags") or []):
            return Planned(old, path, "unchanged", note)
        if not skip_existing and not force:
            return Planned(doc, path, "collision", "exists (--no-skip-existing): not merged")
        merged = dict(old)
        merged["tags"] = tags
        p = Planned(merged, path, "merged", note or "tags merged")
        p._structure = prior._structure if prior is not None else None    # tags are not structure
        return p
    if force:
        return Planned(doc, path, "replaced", "different content; old file kept as .bak",
                       backup_text=prior.text if prior is not None else None)
    return Planned(doc, path, "collision", _difference(old, doc))


def final_writes(planned: Sequence[Planned]) -> List[Planned]:
    """The writes of plans made in order (one model after another): per file, the last planned
    content, written once.  Where a file was replaced along the way, each content it replaced is
    kept as a backup (``.bak``, ``.bak.1``, …), as writing every version in turn would have left
    them."""
    last: Dict[str, Planned] = {}
    backups: Dict[str, List[Optional[str]]] = {}
    for p in planned:
        if p.status not in WRITES:
            continue
        if p.status == "replaced":
            backups.setdefault(p.path, []).append(p.backup_text)
        last[p.path] = p
    out = []
    for path, p in last.items():
        if path in backups and p.status != "replaced":
            q = Planned(p.doc, path, "replaced", p.detail, p.text, p.sources, backups[path][-1])
            q.placed, q.force, q.skip_existing = p.placed, p.force, p.skip_existing
            p = q
        if path in backups:
            p.backups = backups[path]
        if p.text is not None:
            out.append(p)
    return out


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
    apply_many([p])


def backup_names(path: str) -> Iterator[str]:
    """Where the old contents of a replaced file go, in order: ``path.bak``, ``path.bak.1``, …"""
    return (path + ".bak" + (f".{i}" if i else "") for i in itertools.count())


def _write_backup(path: str, data: bytes) -> str:
    """Keep data as the first free backup name of path (never replacing an earlier backup: the
    temp file is linked to the name, which fails if it exists); return that name."""
    tmp = _synced_temp(path, data)
    try:
        for bak in backup_names(path):
            if os.path.lexists(bak):
                continue
            try:
                os.link(tmp, bak)
            except FileExistsError:
                continue
            except OSError as e:            # no hard links on this filesystem: we hold the lock
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                    raise
                os.rename(tmp, bak)
            return bak
    finally:
        _unlink_quietly(tmp)
    raise AssertionError("unreachable")


def write_side_file(path: str, data: bytes, force: bool = False) -> str:
    """Write a dataset file that is not a definition (a workload file, a blob, a solution) unless a
    different one is there: 'new', 'unchanged', 'collision' (left as it is) or, with force,
    'replaced' (the old content kept as a backup, .bak, .bak.1, …).  Call it under the dataset lock."""
    try:
        with open(path, "rb") as fh:
            old = fh.read()
    except FileNotFoundError:
        ensure_folder(os.path.dirname(os.path.abspath(path)))
        atomic_write_bytes(path, data)
        return "new"
    if old == data:
        return "unchanged"
    if not force:
        return "collision"
    _write_backup(path, old)
    atomic_write_bytes(path, data)
    return "replaced"


def write_superset(path: str, data: bytes) -> None:
    """Write data over a file whose whole content it already holds (workload lines added to a
    workload file), atomically; nothing when the file is equal.  Call it under the dataset lock."""
    try:
        with open(path, "rb") as fh:
            if fh.read() == data:
                return
    except FileNotFoundError:
        ensure_folder(os.path.dirname(os.path.abspath(path)))
    atomic_write_bytes(path, data)


def apply_many(planned: Sequence[Planned]) -> None:
    """Carry out planned writes (new, merged or replaced), atomically, in batches; the backups of
    a replaced file are written (and synced) before the file is replaced, each under a new name."""
    todo = [p for p in planned if p.status in WRITES and p.text is not None]
    for folder in sorted({os.path.dirname(os.path.abspath(p.path)) for p in todo}):
        ensure_folder(folder)
    current = None
    try:
        for p in todo:
            current = p
            if p.status != "replaced":
                continue
            for text in (p.backups if p.backups is not None else [p.backup_text]):
                if text is not None:
                    _write_backup(p.path, text.encode("utf-8"))
                elif os.path.exists(p.path):
                    with open(p.path, "rb") as fh:
                        _write_backup(p.path, fh.read())
        current = None
        atomic_write_many([(p.path, p.text.encode("utf-8")) for p in todo])
    except OSError as e:
        where = current.path if current else (getattr(e, "filename2", None) or e.filename or "")
        where = where if isinstance(where, str) else ""
        if where and os.path.basename(where).startswith(TEMP_PREFIX):
            where = os.path.dirname(where)
        raise DefcError(f"cannot write: {e.strerror or e}", Location(display_path(where)) if where else None) from None


# -- the dataset lock ------------------------------------------------------------------------------

LOCK_FILE = ".defc.lock"          # only where a folder itself cannot be locked
LOCK_TIMEOUT_S = 600.0            # DEFC_LOCK_TIMEOUT: how long to wait for another compile


def lock_timeout() -> float:
    raw = os.environ.get("DEFC_LOCK_TIMEOUT")
    if raw is None or raw == "":
        return LOCK_TIMEOUT_S
    try:
        value = float(raw)                    # inf: wait as long as it takes
        if not value >= 0:
            raise ValueError
    except ValueError:
        raise DefcError(f"must be a number of seconds (0 or more), got {raw!r}", field="DEFC_LOCK_TIMEOUT") from None
    return value


class DatasetLock:
    """An advisory lock (flock(2)) on a dataset folder, held while a compile re-plans and writes
    into it: concurrent compiles into one folder take turns.  The folder itself is locked (no file
    is added to the dataset); where that is not possible, ``.defc.lock`` in it.  The kernel drops
    the lock when its process dies, so a killed compile never leaves the dataset locked.  Waits up
    to ``DEFC_LOCK_TIMEOUT`` seconds (default 600), then refuses with one line."""

    def __init__(self, folder: str, timeout: Optional[float] = None):
        self.folder = folder
        self.timeout = timeout
        self.fd: Optional[int] = None
        self._file = False                           # locking .defc.lock instead of the folder

    def __enter__(self) -> "DatasetLock":
        import fcntl
        timeout = lock_timeout() if self.timeout is None else self.timeout
        ensure_folder(self.folder)
        fd = self._open()
        deadline = time.monotonic() + timeout
        delay = 0.005
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                except OSError as e:
                    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        pass
                    elif e.errno in (errno.EBADF, errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP) \
                            and not self._file:
                        os.close(fd)                 # this filesystem cannot lock a folder: a lock file
                        self._file = True
                        fd = self._open()
                        continue
                    else:
                        raise DefcError(f"cannot lock the dataset: {e.strerror or e}",
                                        Location(display_path(self.folder))) from None
                if time.monotonic() >= deadline:
                    raise DefcError(f"another defc is writing into this dataset (waited {timeout:g} s, "
                                    f"DEFC_LOCK_TIMEOUT); nothing was written", Location(display_path(self.folder)))
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def _open(self) -> int:
        try:
            if self._file:
                return os.open(os.path.join(self.folder, LOCK_FILE),
                               os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            return os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            raise DefcError(f"cannot lock the dataset: {e.strerror or e}", Location(display_path(self.folder))) from None

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)                        # closing the descriptor releases the lock
            self.fd = None


def location_of(path: str) -> Location:
    return Location(path)
