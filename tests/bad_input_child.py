"""The bad-input corpus's runner process (see tests/test_bad_inputs.py).

It imports defc once, then for each request (one JSON line on stdin) forks a child that runs one
case under an address-space limit (RLIMIT_AS) and answers one JSON line on stdout: the exit code,
the seconds it ran, its peak resident memory (wait4's ru_maxrss) and whether it was killed for
running past the time limit.  A fork per case costs milliseconds where a fresh interpreter costs
the whole import of defc, so every case runs in its own process, with memory and time limits,
and the corpus stays fast.

Request: {"args": [...] (or "exec": CODE, for the test of the limits), "cwd": DIR, "env": {NAME: value}, "stdout": FILE, "stderr": FILE,
          "limit_as": BYTES, "timeout": SECONDS}
"""
from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# what the cases use, imported once here instead of once per case
import defc.cli  # noqa: E402
import defc.compiler.pipeline  # noqa: E402,F401
import defc.compiler.check  # noqa: E402,F401
import jinja2  # noqa: E402,F401
import sympy  # noqa: E402,F401
import ruamel.yaml  # noqa: E402,F401
import jsonschema  # noqa: E402,F401


def run_case(req) -> None:
    """In the forked child: limits, environment, output files, then defc's main; never returns."""
    code = 3
    try:
        resource.setrlimit(resource.RLIMIT_AS, (req["limit_as"], req["limit_as"]))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        os.chdir(req["cwd"])
        os.environ.update(req["env"])
        if "huggingface_hub.constants" in sys.modules and "HF_HUB_CACHE" in req["env"]:
            import huggingface_hub.constants as C
            C.HF_HUB_CACHE = os.environ["HF_HUB_CACHE"]
            C.HF_HUB_OFFLINE = os.environ.get("HF_HUB_OFFLINE") == "1"
        if "exec" in req:                   # the harness's own test of the limits
            exec(req["exec"], {})
            code = 0
        else:
            code = defc.cli.main(list(req["args"]))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException as e:              # a crash of the harness itself: visible on stderr
        try:
            sys.stderr.write(f"bad_input_child: {type(e).__name__}: {e}\n")
        except BaseException:
            pass
        code = 99
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code if isinstance(code, int) else 1)


def serve() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            run_case(req)
        deadline = t0 + req["timeout"]
        timed_out = False
        while True:
            got, status, usage = os.wait4(pid, os.WNOHANG)
            if got:
                break
            if time.monotonic() > deadline:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                got, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.002)
        code = os.waitstatus_to_exitcode(status)
        print(json.dumps({"code": code, "seconds": time.monotonic() - t0, "timed_out": timed_out,
                          "maxrss_bytes": usage.ru_maxrss * 1024}), flush=True)


if __name__ == "__main__":
    serve()
