"""Compile benchmark: the whole bundled catalogue, one model cold, FlashInfer's fi_trace, a write floor.

    python bench/compile_bench.py [--runs 5] [--no-fi-trace] [--no-write]

Every measurement runs in a fresh Python process (imports included), several times; the table
reports medians (min–max).  Results go to stdout as Markdown and to bench/README.md.

What is measured
  catalogue   every model of catalogue/models, each with its cookbook serving configs and
              ``--quantization all``, compiled into one fresh dataset folder the way a user does it:
              ``defc compile --all-models --quantization all --out DIR``, timed from
              outside the process.  That is one multi-model compile (``compile_models``): every
              model evaluated, tag merges between models done in memory, each file written once.
              Run 0 starts with empty caches; the others find the parse cache and the result cache
              (rendered definitions keyed by the content of every input) warm, as a second
              invocation does.  Also measured: the same with the result cache off (every model
              evaluated and rendered; parse cache warm), the same with no compiled templates
              kept (removed first; PYTHONDONTWRITEBYTECODE=1, so none are written: each process
              compiles every template from source), and the old way in a bench worker —
              model by model, each compile written before the next (``compile_model`` +
              ``write_planned``).  A worker compiles the catalogue once more, untimed, to count what
              was written and to log the writes for the floor.
  cold        ``defc compile --model llama-3.1-8b`` into a fresh folder (result cache
              warm after the first run, and off); and ``-X importtime`` of the same command, to show
              torch/flashinfer stay out of it.
  fi_trace    FlashInfer's own ``.fi_trace()`` producing definitions for the same catalogue, through
              the runners' replay recipes (runners/replay.py: meta tensors, no GPU): import of
              flashinfer (and torch) + every traced call + writing its JSON.  The compiled instances
              and the recipe calls are prepared before the clock starts (that part is defc's work).
              defc's number it is compared with is the whole catalogue, a superset of what is traced:
              for each FlashInfer run, the median of three defc runs around it (two before, one
              after), so that the ratio compares times taken seconds apart.
  floor       a process that only writes the bytes defc wrote: the same files, in the same
              order, into a fresh folder — once with defc's own atomic protocol (temp, sync, rename,
              in the same batches) and once with plain open/write/close.  Its time is a Python
              start-up with the writer imported (``python -c "import compiler.write"``, timed from
              outside as defc is) plus the writing (timed inside: reading the bench's log of what
              to write is not the floor's work).  No folder is deleted until every measurement is
              done: on ext4, files created soon after many were deleted are slower to create.

The caches (DEFC_CACHE_DIR) live in a fresh temporary folder.  Worker processes run with Python's
default bytecode caching (PYTHONDONTWRITEBYTECODE cleared), as an installed package does: torch and
flashinfer come with compiled bytecode, and defc's modules get theirs on the first run.
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
TARGETS = {"catalogue_s": 3.0, "cold_s": 1.5, "fi_ratio": 10.0, "floor_ratio": 3.0}


# ------------------------------------------------------------------------------------------------
# workers (each runs in its own fresh process)

def _setup_path():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)


def worker_catalogue(out: str, log: str, mode: str = "multi") -> dict:
    """Compile and write the whole catalogue; record every write for the floor.

    mode: 'multi' (one multi-model compile, each file written once) or 'sequential' (model by
    model, each written before the next, as before the multi-model compile existed)."""
    t0 = time.perf_counter()
    _setup_path()
    import resource
    from compiler.models import catalogue_slugs
    from compiler.pipeline import CompileOptions, compile_model, compile_models, write_planned, write_planned_many
    from compiler.write import WRITES, final_writes
    t_import = time.perf_counter() - t0
    writes, planned_versions = [], 0
    if mode == "multi":
        results = compile_models(catalogue_slugs(), CompileOptions(quantization=["all"], out=out))
        write_planned_many(results)
        writes.append([[os.path.relpath(p.path, out), p.text] for p in final_writes([p for r in results for p in r.planned])])
    else:
        results = []
        for slug in catalogue_slugs():
            r = compile_model(CompileOptions(model=slug, quantization=["all"], out=out))
            write_planned(r)
            results.append(r)
            writes.append([[os.path.relpath(p.path, out), p.text] for p in r.planned
                           if p.status in WRITES and p.text is not None])
    wall = time.perf_counter() - t0
    planned_versions = sum(1 for r in results for p in r.planned if p.status in WRITES)
    files = sum(len(fs) for _, _, fs in os.walk(out))
    if log:
        with open(log, "w", encoding="utf-8") as fh:      # the write log (bench data, not a dataset)
            json.dump(writes, fh)
    return {"wall_s": wall, "import_s": t_import, "models": len(results),
            "configs": sum(len(r.servings) for r in results), "files": files, "versions": planned_versions,
            "writes": sum(len(w) for w in writes), "bytes": sum(len(t.encode()) for w in writes for _, t in w),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "sympy": "sympy" in sys.modules, "jinja2": "jinja2" in sys.modules}


def worker_tracemalloc(out: str) -> dict:
    """The catalogue once more under tracemalloc: peak Python heap (slower; not timed)."""
    import tracemalloc
    tracemalloc.start()
    _setup_path()
    from compiler.models import catalogue_slugs
    from compiler.pipeline import CompileOptions, compile_models, write_planned_many
    write_planned_many(compile_models(catalogue_slugs(), CompileOptions(quantization=["all"], out=out)))
    return {"heap_peak_mb": tracemalloc.get_traced_memory()[1] / 2 ** 20}


def worker_floor(log: str, out: str, mode: str) -> dict:
    """Write exactly the logged file versions: 'atomic' (defc's protocol, same batches) or 'plain'."""
    with open(log, encoding="utf-8") as fh:
        batches = [[(os.path.join(out, rel), text.encode("utf-8")) for rel, text in b] for b in json.load(fh)]
    _setup_path()
    from compiler.write import atomic_write_many
    t0 = time.perf_counter()
    for items in batches:
        if mode == "atomic":
            atomic_write_many(items)
        else:
            for path, data in items:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as fh:
                    fh.write(data)
    return {"wall_s": time.perf_counter() - t0, "writes": sum(len(b) for b in batches)}


def worker_fi_trace(out: str) -> dict:
    """FlashInfer's .fi_trace() for every catalogue definition that has a replay recipe."""
    _setup_path()
    from compiler.models import catalogue_slugs
    from compiler.pipeline import CompileOptions, compile_model
    from runners.recipes import NoRecipe, calls_for
    instances = {}
    for slug in catalogue_slugs():
        r = compile_model(CompileOptions(model=slug, quantization=["all"], out=os.path.join(out, "unused")))
        for name, insts in r.instances.items():     # (evaluated here if the result cache had the definitions)
            instances.setdefault(name, insts[0])
    calls, skipped = [], {}
    for name in sorted(instances):
        inst = instances[name]
        if not inst.fi_api and not (inst.trace or {}).get("api"):
            skipped["no fi_api"] = skipped.get("no fi_api", 0) + 1
            continue
        try:
            calls.extend((inst.op_type, c) for c in calls_for(inst))
        except NoRecipe:
            skipped["no recipe"] = skipped.get("no recipe", 0) + 1
        except Exception as e:  # a recipe the runner rejects: counted, not fatal for the bench
            skipped[f"recipe error ({type(e).__name__})"] = skipped.get(f"recipe error ({type(e).__name__})", 0) + 1
    assert "torch" not in sys.modules and "flashinfer" not in sys.modules
    folder = os.path.join(out, "dumps")
    os.makedirs(folder)
    t0 = time.perf_counter()
    from runners.flashinfer_api import import_flashinfer
    from runners.replay import trace_call
    from compiler.write import atomic_write_text
    import_flashinfer()
    t_import = time.perf_counter() - t0
    dumped, failed, families = {}, 0, {}
    for op_type, call in calls:
        try:
            doc = trace_call(call)
        except Exception:
            failed += 1
            continue
        if doc["name"] not in dumped:
            atomic_write_text(os.path.join(folder, f"{doc['name']}.json"), json.dumps(doc, indent=2))
            dumped[doc["name"]] = op_type
            families[op_type] = families.get(op_type, 0) + 1
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "import_s": t_import, "calls": len(calls), "dumped": len(dumped), "failed": failed,
            "families": families, "skipped": skipped, "instances": len(instances)}


# ------------------------------------------------------------------------------------------------
# the driver

def run_worker(args, env=None, base=None, timeout=900) -> dict:
    e = dict(os.environ if base is None else base)
    e.update(env or {})
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker"] + args, capture_output=True,
                          text=True, env=e, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = wall
    return out


def defc_cmd() -> list:
    """How a user runs defc: the installed ``defc`` script next to this Python (set up by
    scripts/setup.sh), else ``python -m defc.cli``."""
    script = os.path.join(os.path.dirname(sys.executable), "defc")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "defc.cli"]


def timed_cmd(cmd, env) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return wall


def importtime(cmd, env) -> dict:
    args = cmd[1:] if cmd[0] != sys.executable else cmd[3:]       # after `defc` / `python -m defc.cli`
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "defc.cli"] + args, capture_output=True,
                          text=True, env=env, cwd=ROOT)
    mods = {}
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cum, name = [p.strip() for p in line[len("import time:"):].split("|")]
            if cum.isdigit():
                mods[name.strip()] = int(cum)
    tops = {}
    for name, cum in mods.items():
        top = name.split(".")[0]
        if "." not in name or top not in tops:
            tops[top] = max(tops.get(top, 0), cum)
    heavy = sorted(((v / 1e6, k) for k, v in tops.items() if not k.startswith("_")), reverse=True)[:6]
    banned = sorted(k for k in tops if k in ("torch", "flashinfer", "triton", "numpy", "flashinfer_bench"))
    return {"heavy": heavy, "banned": banned, "modules": len(mods)}


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    fs = ""
    try:
        out = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True).stdout.splitlines()
        fs = out[1].split()[1] if len(out) > 1 else ""
    except OSError:
        pass
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "?"
    return {"cpu": cpu or "unknown", "cores": os.cpu_count(), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "fs": fs, "load": load}


def med(xs):
    return statistics.median(xs)


def span(xs, fmt="{:.2f}"):
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})" if len(xs) > 1 else fmt.format(xs[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-fi-trace", action="store_true", help="skip the FlashInfer comparison (needs flashinfer)")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/README.md")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        kind, rest = a.worker[0], a.worker[1:]
        fn = {"catalogue": worker_catalogue, "floor": worker_floor, "fi_trace": worker_fi_trace,
              "tracemalloc": worker_tracemalloc}[kind]
        print(json.dumps(fn(*rest)))
        return 0

    m = machine()
    work = tempfile.mkdtemp(prefix="defc-bench-")
    env = {"DEFC_CACHE_DIR": os.path.join(work, "cache"), "PYTHONPATH": ROOT}
    base_env = dict(os.environ)
    base_env.pop("PYTHONDONTWRITEBYTECODE", None)      # Python's default: bytecode cached
    full_env = dict(base_env, **env)
    no_result_cache = {"DEFC_NO_RESULT_CACHE": "1"}
    no_bytecode = {"PYTHONDONTWRITEBYTECODE": "1"}

    all_cmd = defc_cmd() + ["compile", "--all-models", "--quantization", "all"]

    def cli_catalogue(tag, extra=None) -> float:
        out = os.path.join(work, f"cli-{tag}")
        t = timed_cmd(all_cmd + ["--out", out], dict(full_env, **(extra or {})))
        return t

    compiled_templates = os.path.join(ROOT, "compiler", "__pycache__", "templates")
    try:
        # first, with no compiled templates kept (removed here, none written under
        # PYTHONDONTWRITEBYTECODE=1): the first run of all, with empty caches, then runs that
        # compile every template from source in each process
        shutil.rmtree(compiled_templates, ignore_errors=True)
        cold_cache = cli_catalogue("cold", no_bytecode)
        source_wall = [cli_catalogue(f"s{i}", dict(no_result_cache, **no_bytecode)) for i in range(a.runs)]
        # the whole catalogue as a user runs it: `defc compile --all-models --quantization all`
        cli_catalogue("warm-up")                               # compiles and keeps the templates
        cat_wall = [cli_catalogue(i) for i in range(a.runs)]
        nores_wall = [cli_catalogue(f"n{i}", no_result_cache) for i in range(a.runs)]
        # what it wrote (files, versions, bytes, memory, modules) and the write log for the floors
        log = os.path.join(work, "log.json")
        r0 = run_worker(["catalogue", os.path.join(work, "stats"), log, "multi"], env, base_env)
        r0_nores = run_worker(["catalogue", os.path.join(work, "stats-n"), "", "multi"],
                              dict(env, **no_result_cache), base_env)
        # the floor process: start Python and load the writer (timed from outside, like defc),
        # then write (timed inside, so reading the bench's write log is not counted); each
        # pair of floors is followed by a defc run, and the ratio is taken per such triple
        startup = [timed_cmd([sys.executable, "-c", "import compiler.write"], full_env) for _ in range(a.runs)]
        floor_atomic, floor_plain, floor_defc, floor_nores = [], [], [], []
        for i in range(a.runs):
            for mode, into in (("atomic", floor_atomic), ("plain", floor_plain)):
                folder = os.path.join(work, f"f{mode}{i}")
                into.append(run_worker(["floor", log, folder, mode], env, base_env)["wall_s"])
            floor_defc.append(cli_catalogue(f"fd{i}"))
            floor_nores.append(cli_catalogue(f"fn{i}", no_result_cache))
        # the old way, model by model through the API (in a bench worker process)
        cat_seq = []
        for i in range(a.runs):
            cat_seq.append(run_worker(["catalogue", os.path.join(work, f"seq{i}"), "", "sequential"], env, base_env))
        heap = run_worker(["tracemalloc", os.path.join(work, "tm")], env, base_env)

        # one model, cold process
        cmd = defc_cmd() + ["compile", "--model", "llama-3.1-8b"]
        cold = [timed_cmd(cmd + ["--out", os.path.join(work, f"one{i}")], full_env) for i in range(a.runs + 1)][1:]
        cold_nores = [timed_cmd(cmd + ["--out", os.path.join(work, f"onen{i}")], dict(full_env, **no_result_cache))
                      for i in range(a.runs)]
        imp = importtime(cmd + ["--out", os.path.join(work, "one-it")], dict(full_env, **no_result_cache))

        # FlashInfer's path, each run between defc runs of each kind (two before, one after), so
        # that a ratio compares times taken seconds apart (this machine's speed drifts over a
        # minute) and one slow defc run does not decide it
        fi, pair_warm, pair_nores = None, [], []
        if not a.no_fi_trace:
            fi = []
            for i in range(a.runs):
                warm = [cli_catalogue(f"pw{i}-{j}") for j in range(2)]
                nores = [cli_catalogue(f"pn{i}-{j}", no_result_cache) for j in range(2)]
                fi.append(run_worker(["fi_trace", os.path.join(work, f"fi{i}")], env, base_env))
                warm.append(cli_catalogue(f"pw{i}-2"))
                nores.append(cli_catalogue(f"pn{i}-2", no_result_cache))
                pair_warm.append(fi[-1]["wall_s"] / med(warm))
                pair_nores.append(fi[-1]["wall_s"] / med(nores))
    finally:
        # deleted only now: on ext4, creating files soon after many were deleted is slower (the
        # inode allocator steps over recently deleted inodes), which would charge one
        # measurement for the clean-up of the one before
        shutil.rmtree(work, ignore_errors=True)

    seq_wall = [r["process_s"] for r in cat_seq]
    s0 = cat_seq[0]
    rate = [r0["files"] / w for w in cat_wall]
    fa = [w + med(startup) for w in floor_atomic]
    fp = [w + med(startup) for w in floor_plain]
    res = {
        "catalogue_s": med(cat_wall), "cold_s": med(cold),
        "floor_ratio": med([d / f for d, f in zip(floor_defc, fa)]),
        "floor_plain_ratio": med([d / f for d, f in zip(floor_defc, fp)]),
        "floor_ratio_nores": med([d / f for d, f in zip(floor_nores, fa)]),
    }
    if fi:
        fi_wall = [r["wall_s"] for r in fi]
        per_def = r0["files"] / max(1, fi[0]["dumped"])      # defc's definitions per traced one
        res["fi_ratio"] = med(pair_warm)
        res["fi_ratio_nores"] = med(pair_nores)
        res["fi_ratio_seq"] = med(fi_wall) / med(seq_wall)
        res["fi_per_def_ratio"] = med(pair_warm) * per_def
        res["fi_per_def_ratio_nores"] = med(pair_nores) * per_def

    def ok(key, better="lower"):
        t = TARGETS[key]
        v = res[key]
        good = v < t if better == "lower" else v >= t
        return "met" if good else "**missed**"

    lines = [
        "# defc compile benchmark",
        "",
        "`python bench/compile_bench.py` (medians over %d fresh processes, min–max in brackets)." % a.runs,
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']} |",
        f"| cores | {m['cores']} |",
        f"| Python | {m['python']} |",
        f"| OS, temp filesystem | {m['os']}, {m['fs']} |",
        f"| load average at start | {m['load']} |",
        "",
        "| measurement | result | target | |",
        "|---|---|---|---|",
        f"| whole catalogue: models × cookbook configs, `--quantization all` | {r0['models']} models, "
        f"{r0['configs']} serving configs | | |",
        f"| definitions written: files (each written once); file versions planned incl. tag merges "
        f"| {r0['files']}; {r0['versions']} ({r0['bytes'] / 2**20:.1f} MiB) | | |",
        f"| catalogue wall time: `defc compile --all-models --quantization all`, fresh process, warm caches (s) "
        f"| {span(cat_wall)} | < {TARGETS['catalogue_s']:.0f} s | {ok('catalogue_s')} |",
        f"| … the same with the result cache off: every model evaluated and rendered (s) | {span(nores_wall)} | | |",
        f"| … the same with empty caches (first run: YAML parsed, schemas checked, templates compiled, "
        f"results stored) (s) | {cold_cache:.2f} | | |",
        f"| … result cache off and no compiled templates kept (each process compiles every template "
        f"from source) (s) | {span(source_wall)} | | |",
        f"| … model by model through the API, each written before the next ({s0['writes']} file writes), "
        f"warm caches, in a bench worker process (s) | {span(seq_wall)} | | |",
        f"| definitions per second (warm caches) | {span(rate, '{:.0f}')} | | |",
        f"| sympy / jinja2 imported by the catalogue compile | {'yes' if r0['sympy'] else 'no'} / "
        f"{'yes' if r0['jinja2'] else 'no'} (result cache off: {'yes' if r0_nores['sympy'] else 'no'} / "
        f"{'yes' if r0_nores['jinja2'] else 'no'}) | | |",
        f"| peak memory, warm caches: RSS; Python heap (tracemalloc) | {r0['peak_rss_mb']:.0f} MiB; "
        f"{heap['heap_peak_mb']:.0f} MiB | | |",
        f"| `defc compile --model llama-3.1-8b`, fresh process, warm caches (s) | {span(cold)} | < {TARGETS['cold_s']} s "
        f"| {ok('cold_s')} |",
        f"| … with the result cache off (s) | {span(cold_nores)} | | |",
        f"| torch / flashinfer imported by that command | {', '.join(imp['banned']) or 'neither'} "
        f"({imp['modules']} modules; heaviest: {', '.join(f'{n} {s:.2f}s' for s, n in imp['heavy'][:4])}) | none "
        f"| {'met' if not imp['banned'] else '**missed**'} |",
    ]
    if fi:
        def verdict(whole, per_def):
            if whole >= TARGETS["fi_ratio"]:
                return "met"
            if per_def >= TARGETS["fi_ratio"]:
                return "met per definition; **missed** for the whole catalogue"
            return "**missed**"
        f0 = fi[0]
        fams = ", ".join(f"{k} {v}" for k, v in sorted(f0["families"].items()))
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(f0["skipped"].items())) or "none"
        lines += [
            f"| FlashInfer `.fi_trace()` (replay recipes, meta tensors), incl. import (s) | "
            f"{span([r['wall_s'] for r in fi])} (import {span([r['import_s'] for r in fi])}) | | |",
            f"| … definitions it produced; calls; failed | {f0['dumped']}; {f0['calls']}; {f0['failed']} | | |",
            f"| fi_trace time ÷ defc time, median of {len(fi)} FlashInfer runs, each against the median of "
            f"3 defc runs around it (defc: the whole catalogue, {r0['files']} definitions, warm caches) | "
            f"{span(pair_warm, '{:.1f}')}× (per definition: {res['fi_per_def_ratio']:.1f}×) | ≥ {TARGETS['fi_ratio']:.0f}× "
            f"| {'met' if res['fi_ratio'] >= TARGETS['fi_ratio'] else '**missed**'} |",
            f"| … defc with the result cache off (every model evaluated and rendered) | {span(pair_nores, '{:.1f}')}× "
            f"(per definition: {res['fi_per_def_ratio_nores']:.1f}×) | ≥ {TARGETS['fi_ratio']:.0f}× "
            f"| {verdict(res['fi_ratio_nores'], res['fi_per_def_ratio_nores'])} |",
            f"| … defc model by model (each written before the next), warm caches | {res['fi_ratio_seq']:.1f}× | | |",
        ]
    lines += [
        f"| write floor, defc's atomic protocol (temp, sync, rename), same {r0['writes']} files: Python "
        f"start-up and `import compiler.write` {med(startup):.2f} s + writing {span(floor_atomic)} s (s) "
        f"| {span(fa)} | | |",
        f"| write floor, plain open/write: the same start-up + writing {span(floor_plain)} s (s) | {span(fp)} | | |",
        f"| defc time (warm caches, run right after each pair of floors: {span(floor_defc)} s) ÷ atomic "
        f"write floor, median of the {len(floor_defc)} runs | {res['floor_ratio']:.1f}× "
        f"| < {TARGETS['floor_ratio']:.0f}× | {ok('floor_ratio')} |",
        f"| defc time ÷ plain write floor | {res['floor_plain_ratio']:.1f}× | | |",
        f"| defc with the result cache off (run after each of those: {span(floor_nores)} s) ÷ atomic write floor "
        f"| {res['floor_ratio_nores']:.1f}× | | |",
    ]
    if fi:
        lines += ["", f"fi_trace families (definitions dumped): {fams}.  Not traced: {skipped} (of "
                      f"{fi[0]['instances']} distinct compiled definitions)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_write:
        readme = os.path.join(ROOT, "bench", "README.md")
        notes = _notes()
        _write_readme(readme, text + notes)
    return 0


def _notes() -> str:
    return """
## How to read this

* Each number comes from a fresh process started the way a user runs defc (the installed `defc`
  script), so interpreter start-up and imports are included.  The caches (`DEFC_CACHE_DIR`) start
  empty in a temporary folder: the first catalogue run is the cold-cache one and the rest are
  warm, like any second invocation.  Workers run with Python's default bytecode caching (this
  sandbox sets `PYTHONDONTWRITEBYTECODE=1`, which would recompile defc's own modules from source
  in every process while torch and flashinfer load their installed bytecode).
* Templates compiled to Python code are kept the same way, in `compiler/__pycache__/templates`
  (next to defc's own compiled modules, never in the data cache): read back while a template's
  source, `compiler/render.py` and Jinja's version are unchanged, not written under
  `PYTHONDONTWRITEBYTECODE=1`.  The bench removes them first; the empty-caches run and one row
  (every template compiled from source in each process) run with the flag set, so that none are
  kept, and the rows after them run as a user's second compile does.
* Two caches are involved.  The parse cache holds YAML parsed into JSON and "this text passed the
  schema".  The result cache holds a model's rendered definitions, as the texts of their files,
  under a sha256 of everything that makes them (every file of the compiler package and of the
  template folders, the Jinja/MarkupSafe/Python versions, the spec and model-facts texts, the model
  config, the serving configs, the selecting options).  A warm run reads them back instead of
  evaluating and rendering; it still places every definition against the dataset on disk (merges,
  collisions) and writes every file.  `DEFC_NO_RESULT_CACHE=1` turns it off: that row is what a
  compile costs when anything it depends on is new.
* The catalogue is compiled by one multi-model compile (`defc compile --all-models`).  Models
  not in the result cache are evaluated and rendered in forked workers, one per usable core
  (`DEFC_JOBS`; this machine has 2), which take models one at a time from a shared queue.  Then
  later models' `model:`/`tp:`… tags are merged into the earlier models' definitions in memory —
  exactly the files, statuses and merges that compiling the models one after another gives
  (tests/test_compile_fast_paths.py, tests/test_workers.py) — and each file is written once.  The
  model-by-model row is the old way: each model written before the next, later models re-reading
  and rewriting merged files.
* The fi_trace comparison uses the runners' replay recipes (`runners/replay.py`): FlashInfer's own
  trace templates on meta tensors, no GPU.  Its clock covers importing flashinfer (and torch),
  every `.fi_trace()` call and writing its JSON; building the calls from compiled instances is
  defc's work and happens before the clock starts.  Families without an `fi_api` (defc-only
  definitions, e.g. GEMMs FlashInfer has no template for) have nothing to compare against and are
  listed as not traced; defc's time is for the whole catalogue regardless, so the plain ratio
  charges defc for 740 definitions against FlashInfer's 593, and the per-definition ratio divides
  each time by its own count.  Each FlashInfer run comes right after a warm and a cache-off defc
  run, and the ratios are the median (min–max) of those pairs: this machine's speed drifts by
  half over a few minutes, which would otherwise decide a ratio of medians taken minutes apart.
* The write floor is a process that only writes the bytes defc wrote, the same files in the same
  order: Python start-up with the writer imported (timed from outside, as defc is), then the
  writing (timed inside, so reading the bench's list of what to write is not counted) — once with
  defc's protocol (temp files, one syncfs(2) per batch of 64 — an fsync per file where syncfs is
  missing — then renames), the cost of writing these bytes safely, and once with plain writes.
* Nothing is deleted until every measurement is done.  On this disk (ext4), creating a file soon
  after many files were deleted costs 0.1–0.5 ms instead of ~0.02 ms: the inode allocator steps
  over recently deleted inodes (`perf` shows `recently_deleted` under `ext4_create`).  Earlier
  versions of this bench deleted each output folder right after its run, which charged the next
  run for it; the write floors of those tables (0.4–0.6 s) were mostly that.
* The machine is shared; numbers move with its load (see the load average).  Speed targets live
  here, never in timed tests.

## Where the time went, and what changed (cProfile, strace and perf of the catalogue run)

| before | fix |
|---|---|
| jsonschema validation of every spec once per model (27 × 16): ~70% of a 15 s catalogue | a spec checked once per process is reused (keyed by path and content hash); a spec text that passed the schema is remembered in the parse cache (`schemaok-…`), so later processes skip jsonschema |
| an fsync per file between creates: every create waited for a journal commit (~1 ms each) | writes go in batches of 64: all temp files, one `syncfs(2)` (fsync per file where it is missing), then the renames — same guarantee (data on disk before the name), ~3× less write time |
| ruamel's pure-Python safe loader for each catalogue entry | its result is cached like the specs' (content-hash key, JSON) |
| a `file:line` location computed for every placeholder and formula (50k per catalogue run) | computed only when an error is raised |
| importing sympy (0.25 s) and substituting into sympy expressions (50k formula evaluations, ~0.2 s) | formulas compile to exact Python int/`Fraction` arithmetic; sympy is built only for what could differ (float literals, cancelling names such as `x - x`, a 0 factor or divisor, `%` of an integer-valued term) or at run time for a float or a division by zero, and is never imported for the catalogue; `reference_mode()` evaluates through sympy only, and a test compares the two over every formula evaluation of the catalogue |
| the model facts checked against their schema in every process (jsonschema import + validation, 0.13 s) | remembered in the parse cache like the specs' |
| 1166 file versions for 740 files: later models re-read, re-merge and rewrite the earlier ones' files | `compile_models` / `defc compile --model A --model B` / `--all-models`: tag merges in memory, 740 writes |
| every compile evaluates and renders every model again | the result cache (above) |
| `{placeholder}` filling by regex callback (50k calls) | each text split once (memoised), filled by a join |
| one process for 27 independent models | forked workers on every usable core; a model a worker did not deliver (an error included) is redone in the parent, in order, so errors are exactly those of one process |
| each definition's fields, formulas and error paths looked up again for every instance (2417) | laid out once per spec definition: formulas resolved, paths built, texts without placeholders marked |
| a template looked up (and its file stat'ed by Jinja's auto-reload) at every render: 2300 stats | one `Renderer` per compile loads each template once |
| the specs read and hashed again for every model (432 reads) | loaded once per compile |
| a stat per planned file, `makedirs` (two stats and a failing mkdir) and `getpid` per written file, an `fstat` per temp file for syncfs | one listing per folder, folders made once before writing, one `fstat` per folder |
| `json.dumps(indent=2)` (pure Python in the standard library), ~70 µs per definition | a direct writer for JSON's own types (byte-identical, tested on every catalogue definition; anything else goes to json.dumps), ~2× faster; the result cache keeps file texts, so a warm compile serialises only merged files |
| Jinja's HTML-safe `tojson` (escapes `<>&'`, then parsed back) | a plain `json.dumps` filter: the same values after parsing |
| Python's cycle collector running every few hundred allocations during evaluation (~10% of it) | paused while models are evaluated and rendered (nothing to collect) |
| start-up imports of `traceback`, `tempfile`, `importlib.util` | imported only when needed |
| the cycle collector resumed after the workers: one pass over the ~130k objects a catalogue compile holds (~27 ms); then the interpreter's teardown freeing them (~30 ms) | the `defc` script compiles with the collector off and, once its output is flushed, ends the process at once — unless something is registered to run at exit, another thread runs, or a profiler or tracer is set |
| every command's parser built at start-up (11 modules imported, ~10 ms) | only the parser of the command named on the command line |
| the parent serialising its own models' files after the workers were done | each model's file texts made by whichever process made the model, while the others work |
| the parse cache's YAML positions (a list per key path) decoded for every spec in every process | kept as JSON text, decoded only when an error needs a location |
| a path tuple built and a formula looked up for each of 25k case `let`s | each definition's cases, lets and whens laid out in its plan |
| each definition evaluated again at every serving config of a model (2417 instances) | a definition whose read values (its formulas' symbols, its placeholders, the names it binds) are the same at a later serving config reuses the instances of the earlier one, moved to that config (serving, quantization, symbol table): 1259 evaluated; a test compares the two over the catalogue, field by field |
| Jinja compiling the 30 templates in each process (~30 ms) | compiled templates kept in the package's `__pycache__` (above), ~3 ms to load |
| `Template.render` merging Jinja's chained globals into every context; `json.dumps` making a C encoder per `tojson` | each template's globals flattened once; one C encoder (both tested against the plain calls) |

Tried and dropped (measured no gain on this machine): memoising rendered reference sources per
context (430 of 1193 renders saved, but keying costs as much — tried twice); loading specs and
templates before forking (each worker loading them itself, in parallel, is as fast); workers
streaming each model back as it is done, to this process working along (an earlier round) or
only collecting and placing them meanwhile (this round: the same time — both cores are busy
either way); sending the definitions pickled alongside their texts (no faster to receive); one
syncfs for all files instead of one per batch of 64 (slower on this disk); joined fast paths in
the direct JSON writer (slower); two threads creating the temp files; O_TMPFILE + linkat instead
of temp + rename.  Reusing instances across serving configs had been dropped in an earlier round
as "431 of 2417 qualify": that count treated every definition as reading the serving config's
quantization; counted by what each definition reads, 1158 qualify, and it is kept.  Kept on
purpose after reconsidering: compiled templates (rejected earlier because they would have been
loaded from the data cache, a folder that may be shared or restored in CI and otherwise holds
only data; kept now next to defc's own compiled modules, where writing them takes the same
rights as changing defc's code).  Left out on purpose: setuptools' "compat" editable install (a
plain path entry instead of an import hook that loads pathlib, ~15 ms per start), which
setuptools announces it will remove.

Without the result cache a catalogue run spends roughly: start-up, imports and the parser
0.06 s; in each of the two processes, Jinja's import (0.02 s), the specs (0.01 s) and the compiled
templates (under 0.01 s), then its share of evaluating (0.06 s in all) and rendering and
serialising (about 0.15 s in all) — the two processes finish at about 0.2 s; receiving the other
process's models 0.02 s; placing 0.02 s; writing 0.05 s when the disk is quiet.  With it:
start-up 0.06 s, reading the cached definitions 0.03 s, placing and serialising the merged files
0.03 s, writing 0.05 s.

fi_trace: once flashinfer is imported (~2.3 s here, torch included), a `.fi_trace()` call costs a
few milliseconds; the ratio is that import plus the calls against defc's whole run.  A compile
that evaluates and renders all 27 models from scratch now takes about a twelfth of it on this
2-core machine for the whole catalogue (which has a quarter more definitions than FlashInfer can
trace), and a compile with the result cache warm about a twentieth.  defc's advantage regardless
is that it needs neither torch nor flashinfer nor a GPU, and covers the definitions FlashInfer
has no template for.
"""


def _write_readme(path: str, text: str) -> None:
    _setup_path()
    from compiler.write import atomic_write_text
    atomic_write_text(path, text)


if __name__ == "__main__":
    sys.exit(main())
