"""Safety of the dataset: atomic writes, interrupted compiles, collisions, --force and .bak, temp files."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import specs_folder
from defc.compiler import cache
from defc.compiler import write as W
from defc.compiler.errors import DefcError
from defc.compiler.paths import MODEL_FACTS, PROJECT_ROOT, SPECS_DIR
from defc.cli import main

SWEEP_SPEC = """\
family: probe
definitions:
  - id: probe
    name: "probe_h{hidden}_k{k}"
    sweep: {k: [%s]}
    axes:
      n: {type: var}
      hidden: {value: "hidden_size * k"}
    inputs:
      x: {shape: [n, hidden], dtype: bfloat16}
    outputs:
      y: {shape: [n, hidden], dtype: bfloat16}
    reference: {template: reference/rmsnorm.py.j2, params: {eps: eps, hidden_size: hidden}}
""" % ", ".join(str(k) for k in range(1, 101))
N_DEFS = 100          # more than one write batch (compiler.write.atomic_write_many writes 64 at a time)


@pytest.fixture
def specs(tmp_path):
    return specs_folder(tmp_path, probe=SWEEP_SPEC)


def compile_args(specs, out, *extra):
    return ["compile", "--specs-dir", specs, "--model", "llama-3.1-8b", "--out", out] + list(extra)


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


def read_all(folder):
    return {p: open(os.path.join(folder, p), "rb").read() for p in files_under(folder)}


def temp_files(folder):
    return [p for p in files_under(folder) if os.path.basename(p).startswith(W.TEMP_PREFIX)]


# runs defc with every os.write stopping after half its bytes for 0.05 s (a short write, which the
# writer must continue), so that a kill lands in the middle of writing a file
SLOW_WRITES = """
import os, sys, time
real_write = os.write
def half_then_pause(fd, data):
    n = real_write(fd, bytes(data[:max(1, len(data) // 2)]))
    time.sleep(0.05)
    return n
os.write = half_then_pause
from defc.cli import main
sys.exit(main(sys.argv[1:]))
"""


def defc_process(args, slow_writes=False):
    e = dict(os.environ)
    e.pop("DEFC_DEBUG", None)
    e["PYTHONPATH"] = PROJECT_ROOT + os.pathsep + e.get("PYTHONPATH", "")
    cmd = ["-c", SLOW_WRITES] if slow_writes else ["-m", "defc.cli"]
    return subprocess.Popen([sys.executable] + cmd + args, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


# -- atomic_write_text ---------------------------------------------------------------------------

def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    p = str(tmp_path / "d" / "x.json")
    W.atomic_write_text(p, "old\n")
    W.atomic_write_text(p, "new\n")
    assert open(p).read() == "new\n"
    assert os.listdir(tmp_path / "d") == ["x.json"]
    # an ordinary file, not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_failed_write_keeps_old_content_and_removes_temp(tmp_path, monkeypatch, fail_at):
    p = str(tmp_path / "x.json")
    W.atomic_write_text(p, '{"old": true}\n')

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(OSError):
        W.atomic_write_text(p, '{"new": true}\n')
    monkeypatch.undo()
    assert open(p).read() == '{"old": true}\n'
    assert os.listdir(tmp_path) == ["x.json"]


def test_temp_names_carry_the_pid_and_never_look_like_definitions(tmp_path, monkeypatch):
    seen = []
    real = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real(src, dst)
    monkeypatch.setattr(os, "replace", spy)
    W.atomic_write_text(str(tmp_path / "a.json"), "{}\n")
    assert len(seen) == 1
    assert re.match(rf"^\.defc-{os.getpid()}-.*\.tmp$", seen[0])
    assert not seen[0].endswith(".json")


@pytest.mark.parametrize("syncfs", [True, False])
def test_batch_write_failure_leaves_old_or_new_files_and_no_temps(tmp_path, monkeypatch, syncfs):
    if not syncfs:
        monkeypatch.setattr(W, "_SYNCFS", [None])      # the portable path: an fsync per file
    items = [(str(tmp_path / "d" / f"f{i}.json"), b'{"v": %d}\n' % i) for i in range(10)]
    W.atomic_write_many([(p, b'{"v": "old"}\n') for p, _ in items])
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(5, "Input/output error")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError):
        W.atomic_write_many(items, batch=8)
    monkeypatch.setattr(os, "replace", real)
    assert sorted(os.listdir(tmp_path / "d")) == sorted(f"f{i}.json" for i in range(10))     # no temp left
    for p, new in items:
        assert open(p, "rb").read() in (new, b'{"v": "old"}\n')                          # whole files only


def test_apply_reports_os_errors_as_one_line(tmp_path):
    (tmp_path / "out").write_text("a file where the dataset folder should be\n")
    doc = {"name": "x", "op_type": "probe", "axes": {}, "inputs": {}, "outputs": {}, "reference": ""}
    p = W.plan(str(tmp_path / "out"), doc)
    with pytest.raises(DefcError) as e:
        W.apply(p)
    assert "a file is in the way of the folder" in str(e.value)


# -- an interrupted compile ----------------------------------------------------------------------

def test_killed_compile_leaves_only_complete_json_and_next_run_cleans_up(specs, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("DEFC_CACHE_DIR", str(cache_dir))
    monkeypatch.setattr(cache, "_cleaned", [])
    # every write stops halfway for 0.05 s, so the kill lands in the middle of one: after the first
    # batch is in place, while the second batch's temp files are being written
    proc = defc_process(compile_args(specs, out), slow_writes=True)
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            done = glob.glob(os.path.join(out, "definitions", "probe", "*.json"))
            if len(done) >= 3 and temp_files(out):
                break
            if proc.poll() is not None:
                pytest.fail(f"compile finished before it could be killed: {proc.communicate()}")
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    jsons = glob.glob(os.path.join(out, "definitions", "probe", "*.json"))
    assert 3 <= len(jsons) < N_DEFS
    for p in jsons:                                   # every visible definition is complete
        doc = json.load(open(p, encoding="utf-8"))
        assert doc["name"] == os.path.basename(p)[:-5] and "reference" in doc
    leftovers = temp_files(out)
    assert leftovers, "the kill should have interrupted a write (the half-written temp file stays behind)"
    assert all(re.match(r"^\.defc-\d+-.*\.tmp$", os.path.basename(t)) for t in leftovers)

    # a cache entry the killed process was storing (a kill during a large entry, or a full disk)
    (cache_dir / f"{cache.TEMP_PREFIX}{proc.pid}-x1y2z3").write_bytes(b'{"data": [')

    # the next run removes the dead process's temp files (dataset and cache) and completes the dataset
    code = main(compile_args(specs, out))
    assert code == 0
    assert temp_files(out) == []
    assert [n for n in os.listdir(cache_dir) if n.startswith(cache.TEMP_PREFIX)] == []
    assert [n for n in os.listdir(out) if n not in ("definitions", "manifest.json")] == []   # no lock file either
    clean = str(tmp_path / "clean")
    assert main(compile_args(specs, clean)) == 0
    assert read_all(out) == read_all(clean)


def test_temp_files_of_live_writers_are_kept(specs, tmp_path):
    out = str(tmp_path / "out")
    folder = os.path.join(out, "definitions", "probe")
    os.makedirs(folder)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = os.path.join(folder, f".defc-{os.getpid()}-inflight.tmp")       # a write in progress
    gone = os.path.join(folder, f".defc-{dead.pid}-killed.tmp")            # its writer is gone
    old = os.path.join(folder, ".defc-oldstyle.tmp")                       # no pid, hours old
    fresh = os.path.join(out, "definitions", ".defc-fresh.tmp")            # no pid, just made
    for p in (mine, gone, old, fresh):
        open(p, "w").write('{"name": "half')
    os.utime(old, (time.time() - 2 * W.STALE_AFTER_S,) * 2)
    assert main(compile_args(specs, out)) == 0
    assert os.path.exists(mine) and os.path.exists(fresh)
    assert not os.path.exists(gone) and not os.path.exists(old)


def test_dry_run_neither_writes_nor_cleans(specs, tmp_path):
    out = str(tmp_path / "out")
    assert main(compile_args(specs, out, "--dry-run")) == 0
    assert not os.path.exists(out)


def test_blocked_folder_fails_before_any_file_is_written(tmp_path, capsys):
    """Folders are made before files: a file in the way of one op_type folder stops the run before
    any definition of any op_type is written."""
    d = tmp_path / "specs"
    d.mkdir()
    shutil.copy(os.path.join(SPECS_DIR, MODEL_FACTS), d)
    (d / "a.yaml").write_text(SWEEP_SPEC.replace("family: probe", "family: aaa"))
    (d / "z.yaml").write_text(SWEEP_SPEC.replace("family: probe", "family: zzz").replace("probe_h", "zzz_h"))
    out = tmp_path / "out"
    (out / "definitions").mkdir(parents=True)
    (out / "definitions" / "zzz").write_text("in the way\n")
    assert main(compile_args(str(d), str(out))) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "a file is in the way of the folder" in err[0]
    assert glob.glob(str(out / "**" / "*.json"), recursive=True) == []


# -- collisions, --force and .bak ----------------------------------------------------------------

def test_collision_is_left_alone_and_force_keeps_bak(specs, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(compile_args(specs, out)) == 0
    target = os.path.join(out, "definitions", "probe", "probe_h4096_k1.json")
    doc = json.load(open(target))
    doc["inputs"]["x"]["dtype"] = "float16"        # someone else's, different definition
    other = json.dumps(doc, indent=2) + "\n"
    open(target, "w").write(other)
    before = read_all(out)
    mtime = os.stat(target).st_mtime_ns
    capsys.readouterr()
    assert main(compile_args(specs, out)) == 1
    err = capsys.readouterr().err
    assert "1 collision(s)" in err
    assert read_all(out) == before and os.stat(target).st_mtime_ns == mtime   # not even rewritten

    assert main(compile_args(specs, out, "--force")) == 0
    assert open(target + ".bak").read() == other
    assert json.load(open(target))["inputs"]["x"]["dtype"] == "bfloat16"
    assert temp_files(out) == []
    # a second --force run has nothing to replace: the .bak stays the first old file
    assert main(compile_args(specs, out, "--force")) == 0
    assert open(target + ".bak").read() == other
    # a third, after another edit, keeps that as .bak.1: the first backup is never overwritten
    open(target, "w").write(other.replace("float16", "float32"))
    assert main(compile_args(specs, out, "--force")) == 0
    assert open(target + ".bak").read() == other
    assert open(target + ".bak.1").read() == other.replace("float16", "float32")
    assert temp_files(out) == []


def test_unreadable_existing_file_is_a_collision_not_a_crash(specs, tmp_path, capsys):
    out = str(tmp_path / "out")
    target = os.path.join(out, "definitions", "probe", "probe_h4096_k1.json")
    os.makedirs(os.path.dirname(target))
    open(target, "wb").write(b'{"name": "probe_h4096_k1", "truncated\xff')
    assert main(compile_args(specs, out)) == 1
    assert open(target, "rb").read() == b'{"name": "probe_h4096_k1", "truncated\xff'
    assert main(compile_args(specs, out, "--force")) == 0
    assert open(target + ".bak", "rb").read() == b'{"name": "probe_h4096_k1", "truncated\xff'
    assert json.load(open(target))["name"] == "probe_h4096_k1"


# -- no other write paths ----------------------------------------------------------------------------

# Files that may open files for writing themselves, and why.
OWN_WRITES = {
    os.path.join("compiler", "write.py"): "the atomic writer itself",
    os.path.join("runners", "trace.py"): "a subprocess log file, not part of a dataset",
    os.path.join("runners", "sglang_pass.py"): "runs inside SGLang's process; writes its own temp + os.replace",
    os.path.join("compiler", "cache.py"): "the caches (~/.cache/defc), not a dataset: their own temp + os.replace",
}
WRITE_CALL = re.compile(r"open\([^)]*['\"](?:w|wb|a|ab|x|w\+)['\"]|\.write_text\(|\.write_bytes\(|shutil\.(?:copy|move)")


def test_every_dataset_write_goes_through_the_atomic_writer():
    bad = []
    for folder in ("compiler", "defc", "runners"):
        for path in glob.glob(os.path.join(PROJECT_ROOT, folder, "**", "*.py"), recursive=True):
            rel = os.path.relpath(path, PROJECT_ROOT)
            if rel in OWN_WRITES:
                continue
            for i, line in enumerate(open(path, encoding="utf-8"), 1):
                if WRITE_CALL.search(line):
                    bad.append(f"{rel}:{i}: {line.strip()}")
    assert not bad, "write files with compiler.write.atomic_write_text (or list the file in OWN_WRITES):\n" + "\n".join(bad)
