"""Forked workers: a list of independent jobs spread over the machine's cores.

``map_forked(items, work, jobs)`` calls ``work(item)`` for every item and returns the results in
the items' order.  With ``jobs > 1`` — on Linux, where ``fork`` is cheap, and only while this
process has a single thread, so that no lock can be left held in a child — ``jobs - 1`` child
processes and this one take items one at a time from a shared queue; the children send their
results back pickled through a pipe.

A worker never decides an outcome on its own: an item whose worker raised, crashed or sent
something unreadable is left as missing (``MISSING``) for the caller to work out in this process —
so an error is raised here, with its full context, exactly as a run without workers would raise it.
Workers write nothing but what ``work`` writes (defc's compile workers: result-cache entries,
which are atomic).

``DEFC_JOBS`` sets the number of processes (1: none forked); the default is one per usable core,
at most :data:`MAX_JOBS`, and never more than one per :data:`MIN_ITEMS_PER_JOB` items.
"""
from __future__ import annotations

import os
import struct
import sys
from typing import Any, Callable, List, Optional, Sequence

MAX_JOBS = 8
MIN_ITEMS_PER_JOB = 2


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def default_jobs(n_items: int) -> int:
    """How many processes to use for n_items (DEFC_JOBS, else the usable cores)."""
    raw = os.environ.get("DEFC_JOBS", "").strip()
    if raw:
        try:
            want = int(raw)
        except ValueError:
            want = 1
    else:
        try:
            want = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            want = os.cpu_count() or 1
        want = min(want, MAX_JOBS)
    return max(1, min(want, n_items // MIN_ITEMS_PER_JOB))


def can_fork() -> bool:
    """Linux, and this process has one thread: forking a process whose other threads (e.g. a
    library's thread pool after torch is imported) may hold locks can leave the child stuck."""
    if not (sys.platform.startswith("linux") and hasattr(os, "fork")):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def map_forked(items: Sequence[Any], work: Callable[[Any], Any], jobs: Optional[int] = None) -> List[Any]:
    """[work(item) for item in items], spread over jobs processes (this one and jobs-1 forked
    workers); an item whose worker did not deliver is MISSING.  Items are handed out one at a
    time through a pipe holding their indices (a read of a few bytes from a pipe is atomic, so
    each index goes to one process), so a process that finishes early takes more.  A process
    stops taking items at its first exception; KeyboardInterrupt and SystemExit are re-raised."""
    jobs = default_jobs(len(items)) if jobs is None else max(1, jobs)
    results: List[Any] = [MISSING] * len(items)
    if jobs < 2 or not can_fork() or len(items) * _INDEX.size > _PIPE_CAPACITY:
        for i, item in enumerate(items):
            try:
                results[i] = work(item)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception:
                break                                      # the caller works it out again
        return results
    import pickle           # loaded once, before the workers are forked (each would load it)
    tasks_r, tasks_w = os.pipe()
    os.write(tasks_w, b"".join(_INDEX.pack(i) for i in range(len(items))))
    os.close(tasks_w)
    children = []
    try:
        for _ in range(1, jobs):
            r, w = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:                                   # the worker
                os.close(r)
                _child(w, tasks_r, items, work, pickle.dumps)
            os.close(w)
            children.append((pid, r))
        for i, value in _take(tasks_r, items, work):
            results[i] = value
        os.close(tasks_r)
        tasks_r = -1
        for pid, r in children:
            for i, value in _collect(r, pickle.loads):
                results[i] = value
            os.waitpid(pid, 0)
        children = []
    finally:
        for pid, r in children:                            # interrupted: stop the workers
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
            try:
                os.close(r)
            except OSError:
                pass
        if tasks_r >= 0:
            os.close(tasks_r)
    return results


_INDEX = struct.Struct("<I")
_PIPE_CAPACITY = 65536        # Linux's default; the indices are written before any worker reads


def _take(tasks: int, items: Sequence[Any], work) -> list:
    """Take indices from the task pipe and work on them, until it is empty or an item fails."""
    done = []
    while True:
        raw = os.read(tasks, _INDEX.size)
        if len(raw) != _INDEX.size:
            return done
        i = _INDEX.unpack(raw)[0]
        try:
            done.append((i, work(items[i])))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:
            return done


def _child(fd: int, tasks: int, items, work, pickled) -> None:
    """A worker: take items, then send (index, result) pairs, pickled; never returns."""
    code = 0
    try:
        view = memoryview(pickled(_take(tasks, items, work), protocol=-1))   # -1: the highest
        while len(view):                # a pipe, not a file: the parent reads it
            view = view[os.write(fd, view):]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _collect(fd: int, unpickled) -> list:
    """What a worker sent (nothing, if it died or sent something unreadable)."""
    chunks = []
    with os.fdopen(fd, "rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    try:
        done = unpickled(b"".join(chunks))
    except Exception:
        return []
    return [d for d in done if isinstance(d, tuple) and len(d) == 2] if isinstance(done, list) else []
