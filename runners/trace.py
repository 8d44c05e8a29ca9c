"""``defc trace``: plan and run trace passes, one per (TP, EP, page size).

Backends:
  ``sglang``      one short real SGLang pass per folder, in a child process (runners/sglang_pass.py)
                  whose environment sets FLASHINFER_TRACE_DUMP=1 and FLASHINFER_TRACE_DUMP_DIR
                  before anything imports flashinfer or sglang.  Needs a CUDA GPU and sglang.
  ``replay``      no GPU: FlashInfer's templates via ``.fi_trace()`` on meta tensors for every
                  compiled definition with an fi_api and a trace: recipe (runners/replay.py).
  ``flashinfer``  real kernel calls with the compiled shapes, dumped by FlashInfer's own dumper
                  (runners/verify_dump.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from defc.compiler.errors import DefcError, Location
from defc.compiler.load import display_path, load_safe_yaml
from defc.compiler.paths import PROJECT_ROOT

from .common import (LOG, MARKER, PHASE, REQUEST, data_file, now, pass_folder_name, prepare_pass_folder,
                     read_marker, write_json)
from .replay import replay

SGLANG_CONFIG = data_file("sglang.yaml")
EXIT_MESSAGES = {
    3: "sglang is not importable by {python}; install it on a CUDA machine (pip install sglang) or point "
       "--python at an interpreter that has it. For a GPU-less pass use --backend replay",
    4: "no CUDA GPU is visible to {python}; a real SGLang pass needs one. "
       "For a GPU-less pass use --backend replay",
    5: "the pass's child process refused its environment or request (see {log})",
}
# phases after which every dump of the pass has been written (a hang in shutdown loses nothing)
COMPLETE_PHASES = ("generated", "shutting down", "done")


def sglang_config() -> Dict[str, Any]:
    cfg = load_safe_yaml(SGLANG_CONFIG, "runner config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("engine"), dict):
        raise DefcError("runner config needs an 'engine' mapping", Location(display_path(SGLANG_CONFIG)))
    return cfg


@dataclass
class PassPlan:
    tp: int
    ep: int
    page_size: int
    folder: str
    backend: str
    quantization: Optional[str] = None
    engine: Dict[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        return f"tp{self.tp} ep{self.ep} ps{self.page_size}"


@dataclass
class PassResult:
    plan: PassPlan
    status: str                    # ok | partial | failed | timeout | interrupted | no-sglang | no-gpu
    detail: str = ""
    phase: str = ""
    dumps: int = 0
    seconds: float = 0.0
    records: List[Any] = field(default_factory=list)

    @property
    def stageable(self) -> bool:
        return self.status in ("ok", "partial")


def plan_passes(slug: str, combos: Sequence[tuple], page_sizes: Sequence[int], dumps: str, backend: str,
                quantization: Optional[str] = None, model_path: Optional[str] = None,
                engine_extra: Optional[Dict[str, Any]] = None, explicit_quant: bool = False) -> List[PassPlan]:
    out = []
    cfg = sglang_config() if backend == "sglang" else {}
    names = cfg.get("engine_names") or {}
    for tp, ep in combos:
        for ps in page_sizes:
            folder = os.path.join(dumps, pass_folder_name(slug, tp, ep, ps, quantization if explicit_quant else None))
            p = PassPlan(tp, ep, ps, folder, backend, quantization)
            if backend == "sglang":
                eng = {"model_path": model_path}
                eng.update(cfg["engine"])
                eng[names.get("tp", "tp_size")] = tp
                eng[names.get("page_size", "page_size")] = ps
                if ep > 1:
                    eng[names.get("ep", "ep_size")] = ep
                if explicit_quant and quantization and quantization != "bf16":
                    qn = (cfg.get("quantization_names") or {}).get(quantization)
                    if not qn:
                        raise DefcError(f"no SGLang quantization name for '{quantization}' "
                                        f"(known: {', '.join(sorted(cfg.get('quantization_names') or {}))})",
                                        Location(display_path(SGLANG_CONFIG)), "quantization_names")
                    eng[names.get("quantization", "quantization")] = qn
                eng.update(engine_extra or {})
                p.engine = eng
            out.append(p)
    return out


def count_dumps(folder: str) -> int:
    try:
        return sum(1 for e in os.listdir(folder) if e.endswith(".json") and not e.startswith("_"))
    except OSError:
        return 0


def _read_phase(folder: str) -> str:
    try:
        with open(os.path.join(folder, PHASE), encoding="utf-8") as fh:
            return str(json.load(fh).get("phase", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def _kill_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL, to the pass's own process group (the child and what it started)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            # the group may outlive its leader (engine subprocesses): kill the rest of it too
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        except subprocess.TimeoutExpired:
            continue


class Progress:
    """One status line per pass: rewritten in place on a terminal, one line per change otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = ""

    def update(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif text.split("  ")[0:2] != self.last.split("  ")[0:2]:
            self.stream.write(text + "\n")
            self.stream.flush()
        self.last = text

    def done(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last = ""


def _note_removed(progress: Optional[Progress], index: str, p: PassPlan, removed: List[str]) -> None:
    if removed and progress:
        progress.done(f"{index}{p.label()}: replacing the previous pass in {display_path(p.folder)} "
                      f"({len(removed)} file(s) of its own)")


def _marker(p: PassPlan, model: str, extra: Dict[str, Any]) -> Dict[str, Any]:
    m = {"tool": "defc trace", "backend": p.backend, "model": model, "tp": p.tp, "ep": p.ep,
         "page_size": p.page_size, "quantization": p.quantization}
    m.update(extra)
    return m


def start_pass(p: PassPlan, model: str, progress: Optional[Progress], index: str,
               **marker_fields) -> Tuple[str, float, Dict[str, Any]]:
    """Empty the pass folder (only if defc made it), note what was removed, and write the marker
    that says the pass is running: (folder, start time, marker)."""
    folder = os.path.abspath(p.folder)
    removed = prepare_pass_folder(folder)
    _note_removed(progress, index, p, removed)
    marker = _marker(p, model, {"status": "running", "started": now(), **marker_fields,
                                "previous_files_removed": len(removed)})
    write_json(os.path.join(folder, MARKER), marker)
    return folder, time.time(), marker


def run_pass_process(folder: str, module: str, req_path: str, python: str, timeout: float, grace: float,
                     marker: Dict[str, Any], started: float, progress: Optional["Progress"] = None,
                     describe=None, header: Optional[str] = None, cwd: Optional[str] = None,
                     on_interrupt=None):
    """Run ``python -m module req_path`` as a dump pass; returns (status, detail, rc, log_path).

    The child gets FLASHINFER_TRACE_DUMP=1 and the pass folder as FLASHINFER_TRACE_DUMP_DIR in its
    environment before it imports anything, runs in its own process group (so a timeout or Ctrl-C
    kills every worker it started), and writes its output to the pass folder's log.  status is
    "timeout" when it ran past ``timeout`` seconds, else "" for the caller to judge from rc."""
    env = dict(os.environ)
    env["FLASHINFER_TRACE_DUMP"] = "1"
    env["FLASHINFER_TRACE_DUMP_DIR"] = folder
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([PROJECT_ROOT] + [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x])
    log_path = os.path.join(folder, LOG)
    status, detail, rc = "", "", None
    with open(log_path, "wb") as log:
        if header:
            log.write(header.encode())
            log.flush()
        try:
            proc = subprocess.Popen([python, "-m", module, req_path], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True, cwd=cwd)
        except OSError as e:
            raise DefcError(f"cannot start {python}: {e.strerror}") from None
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
                elapsed = time.time() - started
                if progress and describe:
                    progress.update(describe(elapsed))
                if elapsed > timeout:
                    _kill_group(proc, grace)
                    status, detail = "timeout", f"timed out after {int(timeout)}s"
                    break
        except KeyboardInterrupt:
            _kill_group(proc, grace)
            marker.update({"status": "interrupted", "finished": now(), **(on_interrupt() if on_interrupt else {})})
            write_json(os.path.join(folder, MARKER), marker)
            raise
        # the group may outlive its leader on a normal exit too (stray engine workers)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return status, detail, rc, log_path


def run_sglang_pass(p: PassPlan, model: str, *, python: str, timeout: float, check_gpu: bool,
                    prompt: str, sampling_params: Dict[str, Any], grace: float = 10.0,
                    progress: Optional[Progress] = None, index: str = "") -> PassResult:
    folder, started, marker = start_pass(p, model, progress, index, engine=p.engine, python=python)
    request = {"dump_dir": folder, "engine": p.engine, "prompt": prompt, "sampling_params": sampling_params,
               "check_gpu": check_gpu}
    req_path = os.path.join(folder, REQUEST)
    write_json(req_path, request)
    header = f"# defc trace {p.label()} {now()}: {python} -m runners.sglang_pass {req_path}\n"
    describe = lambda elapsed: (f"{index}{p.label()}  {_read_phase(folder) or 'starting'}  "
                                f"{int(elapsed)}s  {count_dumps(folder)} dumps")
    status, detail, rc, log_path = run_pass_process(
        folder, "defc.runners.sglang_pass", req_path, python, timeout, grace, marker, started,
        progress=progress, describe=describe, header=header,
        on_interrupt=lambda: {"phase": _read_phase(folder)})
    phase = _read_phase(folder)
    seconds = time.time() - started
    if status != "timeout":
        if rc == 0 and phase == "done":
            status = "ok"
        elif rc in EXIT_MESSAGES:
            status = {3: "no-sglang", 4: "no-gpu", 5: "failed"}[rc]
            detail = EXIT_MESSAGES[rc].format(python=python, log=display_path(log_path))
        else:
            status = "failed"
            detail = f"the pass exited with code {rc}" + (f" (signal {-rc})" if rc is not None and rc < 0 else "")
            tail = _log_tail(log_path)
            if tail:
                detail += f": {tail}"
    if status in ("timeout", "failed") and phase in COMPLETE_PHASES:
        detail += f"; generation had finished (phase '{phase}'), so its dumps are complete"
        status = "partial"
    dumps = count_dumps(folder)
    marker.update({"status": status, "detail": detail, "phase": phase, "exit_code": rc,
                   "seconds": round(seconds, 1), "dumps": dumps, "finished": now(), "log": LOG})
    write_json(os.path.join(folder, MARKER), marker)
    return PassResult(p, status, detail, phase, dumps, seconds)


def _log_tail(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 4000))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    lines = [ln for ln in lines if not ln.startswith("[defc sglang_pass]")]
    return lines[-1][:200] if lines else ""


def run_replay_pass(p: PassPlan, model: str, instances: Dict[str, List[Any]],
                    progress: Optional[Progress] = None, index: str = "") -> PassResult:
    folder, started, marker = start_pass(p, model, progress, index)
    cb = (lambda s: progress.update(f"{index}{p.label()}  {s}")) if progress else None
    try:
        records = replay(instances, folder, p.page_size, cb)
    except BaseException as e:
        marker.update({"status": "failed", "detail": str(e)[:300], "finished": now()})
        write_json(os.path.join(folder, MARKER), marker)
        raise
    failed = [r for r in records if r.status == "failed"]
    status = "ok"
    detail = ""
    if failed:
        detail = f"{len(failed)} call(s) failed: " + "; ".join(f"{r.definition}: {r.detail}" for r in failed[:3])
    marker.update({"status": status, "detail": detail, "finished": now(), "seconds": round(time.time() - started, 2),
                   "dumps": count_dumps(folder), "definitions": [r.as_dict() for r in records]})
    write_json(os.path.join(folder, MARKER), marker)
    return PassResult(p, status, detail, "done", count_dumps(folder), time.time() - started, records)


def previous_status(folder: str) -> Optional[str]:
    m = read_marker(folder)
    return (m or {}).get("status")
