"""Compile benchmark: the installed `defc` script timed from outside, as users run it.

    python bench/compile_bench.py [--runs 5] [--no-fi-trace]

Prints a Markdown table (min, median and max over --runs fresh processes; each row's target is
judged on the median) to paste into bench/README.md.

Rows
  catalogue  ``defc compile --all-models --quantization all --out DIR``: with warm caches, with
             empty caches (a fresh DEFC_CACHE_DIR for every run) and with the result cache off
             (DEFC_NO_RESULT_CACHE=1; the parse cache warm).
  one model  ``defc compile --model llama-3.1-8b --out DIR``: warm caches, result cache off.
  fi_trace   FlashInfer's own ``.fi_trace()`` for the same catalogue, through the runners' replay
             recipes (meta tensors, no GPU): importing flashinfer (and torch), every traced call and
             writing its JSON.  Building the calls from compiled instances happens before the clock
             starts.  Each FlashInfer run is divided by the median of three defc runs around it (two
             before, one after), so that a ratio compares times taken seconds apart.  A figure, not
             a target.
  imports    ``python -X importtime`` of the one-model command (result cache off): torch,
             flashinfer, triton and flashinfer_bench must stay out of it.

Every output folder is kept until the end: on ext4, creating files soon after many were deleted
is slower, which would charge one run for the clean-up of the one before.  Processes run with
Python's default bytecode caching (PYTHONDONTWRITEBYTECODE cleared), as an installed package does.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANNED = ("torch", "flashinfer", "triton", "flashinfer_bench")


def defc_cmd() -> list:
    """The installed ``defc`` script next to this Python (scripts/setup.sh), else ``-m defc.cli``."""
    script = os.path.join(os.path.dirname(sys.executable), "defc")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "defc.cli"]


def run(cmd, env) -> tuple:
    """(wall seconds, stdout) of one process."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    gaps_only = proc.returncode == 1 and "defc: compiled with gaps:" in proc.stderr   # the catalogue's known gaps
    if proc.returncode != 0 and not gaps_only:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def fi_trace_worker(out: str) -> dict:
    """(In its own process.)  FlashInfer's .fi_trace() for every catalogue definition with a recipe."""
    sys.path.insert(0, ROOT)
    from defc.compiler.models import catalogue_slugs
    from defc.compiler.pipeline import CompileOptions, compile_model
    from defc.runners.recipes import NoRecipe, calls_for
    instances = {}
    for slug in catalogue_slugs():
        r = compile_model(CompileOptions(model=slug, quantization=["all"], out=os.path.join(out, "unused")))
        for name, insts in r.instances.items():
            instances.setdefault(name, insts[0])
    calls, skipped = [], 0
    for name in sorted(instances):
        inst = instances[name]
        if not inst.fi_api and not (inst.trace or {}).get("api"):
            skipped += 1
            continue
        try:
            calls.extend(calls_for(inst))
        except NoRecipe:
            skipped += 1
    assert "torch" not in sys.modules and "flashinfer" not in sys.modules
    folder = os.path.join(out, "dumps")
    os.makedirs(folder)
    t0 = time.perf_counter()
    from defc.runners.flashinfer_api import import_flashinfer
    from defc.runners.replay import trace_call
    from defc.compiler.write import atomic_write_text
    import_flashinfer()
    t_import = time.perf_counter() - t0
    dumped, failed = set(), 0
    for call in calls:
        try:
            doc = trace_call(call)
        except Exception:
            failed += 1
            continue
        if doc["name"] not in dumped:
            atomic_write_text(os.path.join(folder, f"{doc['name']}.json"), json.dumps(doc, indent=2))
            dumped.add(doc["name"])
    return {"wall_s": time.perf_counter() - t0, "import_s": t_import, "calls": len(calls),
            "dumped": len(dumped), "failed": failed, "not_traced": skipped, "instances": len(instances)}


def imported(cmd, env) -> tuple:
    """Top-level modules imported by ``cmd`` (a Python script), with their cumulative import seconds."""
    proc = subprocess.run([sys.executable, "-X", "importtime"] + cmd, capture_output=True, text=True,
                          env=env, cwd=ROOT)
    tops = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            _, cum, name = [p.strip() for p in line[len("import time:"):].split("|")]
            if cum.isdigit() and "." not in name:
                tops[name] = max(tops.get(name, 0), int(cum) / 1e6)
    return tops


def stats(xs, target=None, fmt="{:.2f}") -> str:
    cells = [fmt.format(min(xs)), fmt.format(statistics.median(xs)), fmt.format(max(xs))]
    if target is None:
        return " | ".join(cells) + " | | |"
    verdict = "met" if statistics.median(xs) < target else "**missed**"
    return " | ".join(cells) + f" | < {target:g} s | {verdict} |"


def machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = "%.2f %.2f %.2f" % os.getloadavg()
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}; load average at start {load}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-fi-trace", action="store_true", help="skip the FlashInfer comparison")
    ap.add_argument("--fi-trace-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.fi_trace_worker:
        print(json.dumps(fi_trace_worker(a.fi_trace_worker)))
        return 0

    header = machine()
    work = tempfile.mkdtemp(prefix="defc-bench-")
    env = dict(os.environ, DEFC_CACHE_DIR=os.path.join(work, "cache"))
    for name in ("PYTHONDONTWRITEBYTECODE", "DEFC_NO_CACHE", "DEFC_NO_RESULT_CACHE"):
        env.pop(name, None)
    no_result = dict(env, DEFC_NO_RESULT_CACHE="1")
    catalogue = defc_cmd() + ["compile", "--all-models", "--quantization", "all"]
    one = defc_cmd() + ["compile", "--model", "llama-3.1-8b"]
    n = [0]

    def out() -> list:
        n[0] += 1
        return ["--out", os.path.join(work, f"out{n[0]}")]

    try:
        empty = []
        for i in range(a.runs):
            wall, summary = run(catalogue + out(), dict(env, DEFC_CACHE_DIR=os.path.join(work, f"empty{i}")))
            empty.append(wall)
        run(catalogue + out(), env)                                   # fills the caches
        warm = [run(catalogue + out(), env)[0] for _ in range(a.runs)]
        cat_off = [run(catalogue + out(), no_result)[0] for _ in range(a.runs)]
        run(one + out(), env)                                         # its own result entry
        one_warm = [run(one + out(), env)[0] for _ in range(a.runs)]
        one_off = [run(one + out(), no_result)[0] for _ in range(a.runs)]
        tops = imported(one + out(), no_result)

        fi, ratio_warm, ratio_off = [], [], []
        for i in range(0 if a.no_fi_trace else a.runs):
            around_warm = [run(catalogue + out(), env)[0] for _ in range(2)]
            around_off = [run(catalogue + out(), no_result)[0] for _ in range(2)]
            _, text = run([sys.executable, os.path.abspath(__file__), "--fi-trace-worker",
                           os.path.join(work, f"fi{i}")], env)
            fi.append(json.loads(text.strip().splitlines()[-1]))
            around_warm.append(run(catalogue + out(), env)[0])
            around_off.append(run(catalogue + out(), no_result)[0])
            ratio_warm.append(fi[-1]["wall_s"] / statistics.median(around_warm))
            ratio_off.append(fi[-1]["wall_s"] / statistics.median(around_off))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    banned = [m for m in BANNED if m in tops]
    heavy = sorted(((s, m) for m, s in tops.items() if not m.startswith("_")), reverse=True)[:4]
    lines = [
        f"`python bench/compile_bench.py --runs {a.runs}` — {header}.",
        f"Catalogue: {summary.strip().splitlines()[-1].split(' into ')[0]}.",
        "",
        "| measurement (fresh process, seconds) | min | median | max | target | |",
        "|---|---|---|---|---|---|",
        "| whole catalogue `defc compile --all-models --quantization all`, warm caches | " + stats(warm, 1.0),
        "| … empty caches (a fresh `DEFC_CACHE_DIR` each run) | " + stats(empty, 3.0),
        "| … result cache off (`DEFC_NO_RESULT_CACHE=1`; parse cache warm) | " + stats(cat_off),
        "| `defc compile --model llama-3.1-8b`, warm caches | " + stats(one_warm, 0.5),
        "| … result cache off | " + stats(one_off, 1.5),
    ]
    if fi:
        f0 = fi[0]
        lines += [
            f"| FlashInfer `.fi_trace()` path ({f0['dumped']} definitions from {f0['calls']} calls, "
            f"{f0['failed']} failed; {f0['not_traced']} of {f0['instances']} have no fi_api or recipe), "
            "import included | " + stats([r["wall_s"] for r in fi]),
            "| … of which importing flashinfer and torch | " + stats([r["import_s"] for r in fi]),
            "| fi_trace ÷ defc catalogue with warm caches (×, each run paired in time) | "
            + stats(ratio_warm, fmt="{:.1f}"),
            "| fi_trace ÷ defc catalogue with the result cache off (×) | " + stats(ratio_off, fmt="{:.1f}"),
        ]
    lines += [
        "",
        "| `-X importtime` of `defc compile --model llama-3.1-8b` (result cache off) | result | target | |",
        "|---|---|---|---|",
        f"| {', '.join(BANNED)} imported | {', '.join(banned) or 'none'} (heaviest: "
        + ", ".join(f"{m} {s:.2f} s" for s, m in heavy) + ") | none | "
        + ("met" if not banned else "**missed**") + " |",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
