"""The child process of one SGLang trace pass: ``python -m runners.sglang_pass REQUEST.json``.

The parent (``defc trace``, runners/trace.py) starts this module in a fresh interpreter whose
environment already holds FLASHINFER_TRACE_DUMP=1 and FLASHINFER_TRACE_DUMP_DIR=<pass folder>,
so the variables exist before anything imports flashinfer or sglang.  This module imports only
the standard library before sglang, checks that nothing imported them early, then:
``sglang.Engine(**engine)`` → one ``generate`` with top-k/top-p sampling (so the sampling kernels
fire) → ``shutdown``.  Its phases go to ``_defc_phase.json`` for the parent's progress display;
stdout/stderr go to the pass log.

Exit codes: 0 done, 1 failed, 3 sglang missing, 4 no CUDA GPU, 5 bad environment or request.
"""
import json
import os
import sys
import time

EXIT_FAILED, EXIT_NO_SGLANG, EXIT_NO_GPU, EXIT_ENV = 1, 3, 4, 5
PHASE_FILE = "_defc_phase.json"


def _phase(folder, phase, **extra):
    rec = {"phase": phase, "time": time.time(), "pid": os.getpid()}
    rec.update(extra)
    tmp = os.path.join(folder, f".{PHASE_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(rec, fh, default=str)
    os.replace(tmp, os.path.join(folder, PHASE_FILE))
    print(f"[defc sglang_pass] phase: {phase}", flush=True)


def cuda_devices():
    """(number of CUDA devices, why none) through the driver API, without importing torch."""
    import ctypes
    lib = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return 0, "no CUDA driver library (libcuda) found"
    rc = lib.cuInit(0)
    if rc != 0:
        return 0, f"cuInit failed with CUDA error {rc}"
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0:
        return 0, f"cuDeviceGetCount failed with CUDA error {rc}"
    return count.value, "no CUDA device" if not count.value else ""


def main(argv):
    if len(argv) != 2:
        print("usage: python -m runners.sglang_pass REQUEST.json", file=sys.stderr)
        return EXIT_ENV
    early = [m for m in ("flashinfer", "sglang") if m in sys.modules]
    if early:
        print(f"error: {', '.join(early)} was imported before the trace environment was checked", file=sys.stderr)
        return EXIT_ENV
    with open(argv[1], encoding="utf-8") as fh:
        req = json.load(fh)
    folder = os.environ.get("FLASHINFER_TRACE_DUMP_DIR", "")
    if os.environ.get("FLASHINFER_TRACE_DUMP") != "1" or not folder \
            or os.path.abspath(folder) != os.path.abspath(req["dump_dir"]):
        print("error: FLASHINFER_TRACE_DUMP=1 and FLASHINFER_TRACE_DUMP_DIR=<the pass folder> must be set "
              "in the environment before this process starts", file=sys.stderr)
        return EXIT_ENV
    _phase(folder, "checking")
    import importlib.util
    if importlib.util.find_spec("sglang") is None:
        print(f"error: sglang is not importable by {sys.executable}", file=sys.stderr)
        return EXIT_NO_SGLANG
    if req.get("check_gpu", True):
        n, why = cuda_devices()
        if not n:
            print(f"error: no CUDA GPU is visible to {sys.executable} ({why})", file=sys.stderr)
            return EXIT_NO_GPU
    _phase(folder, "importing")
    import sglang
    _phase(folder, "starting engine", engine=req["engine"])
    engine = sglang.Engine(**req["engine"])
    try:
        _phase(folder, "generating")
        out = engine.generate(req["prompt"], req["sampling_params"])
        text = out.get("text") if isinstance(out, dict) else out
        _phase(folder, "generated", output=str(text)[:300])
    finally:
        _phase(folder, "shutting down")
        engine.shutdown()
    _phase(folder, "done")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except SystemExit:
        raise
    except BaseException:
        import traceback
        traceback.print_exc()        # into the pass log; the parent reports one line
        sys.exit(EXIT_FAILED)
