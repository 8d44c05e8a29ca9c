"""Several defc processes writing into one dataset at once: the dataset lock serialises their
writes and each re-plans under it, so no tag merge is lost and no file is replaced unreported;
--force never destroys an earlier backup; stale temp files of the dataset and the cache go."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import read_tree, specs_folder
from defc.compiler import cache
from defc.compiler import write as W
from defc.compiler.load import display_path
from defc.compiler.paths import PROJECT_ROOT
from defc.cli import main

# four models whose definitions overlap (rmsnorm, gemm, attention shapes, ...): most files are
# shared by two or more of them and gain each one's model: tag
MODELS = ["llama-3.1-8b", "qwen3-8b", "llama-3.1-70b", "llama-3.3-70b"]
TRIALS = 10


def _env(cache_dir, **extra):
    e = dict(os.environ)
    e.pop("DEFC_DEBUG", None)
    e["PYTHONPATH"] = PROJECT_ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e["DEFC_CACHE_DIR"] = str(cache_dir)
    e.update(extra)
    return e


def start(args, cache_dir, **extra):
    return subprocess.Popen([sys.executable, "-m", "defc.cli"] + list(args), env=_env(cache_dir, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs, timeout=120):
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append((p.returncode, o, e))
    return out


def dataset(folder):
    """Every file under folder, parsed where it is JSON."""
    return {k: json.loads(v) if k.endswith(".json") else v for k, v in read_tree(folder).items()}


def definitions(files):
    """The definition files of dataset(folder) (not manifest.json)."""
    return {k: v for k, v in files.items() if k != "manifest.json"}


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A result cache that holds the four models (so each process only places and writes)."""
    d = tmp_path_factory.mktemp("cache")
    procs = [start(["compile", "--model", m, "--out", str(d / "warmup" / m)], d) for m in MODELS]
    assert all(code == 0 for code, _, _ in finish(procs))
    return d


def write_order(files):
    """The order in which the models wrote into a dataset: the model: tags of a file are in the
    order their compiles wrote it (merge_tags appends); the pairs must agree on one order."""
    before = set()
    for v in definitions(files).values():
        ms = [t[len("model:"):] for t in v["tags"] if t.startswith("model:")]
        before.update((a, b) for i, a in enumerate(ms) for b in ms[i + 1:])
    order = sorted(MODELS, key=lambda m: sum((o, m) in before for o in MODELS))
    assert all(order.index(a) < order.index(b) for a, b in before), f"no one order of writes: {sorted(before)}"
    return order


def test_four_concurrent_compiles_equal_compiling_them_one_after_another(tmp_path, warm_cache, monkeypatch, capsys):
    """10 times: 4 processes compile 4 different models into one folder at once; each time the
    folder equals compiling the 4 one after another, in the order they took the dataset lock (the
    first writer of a shared file names itself in its description, and model: tags are in order)."""
    monkeypatch.setenv("DEFC_CACHE_DIR", str(warm_cache))
    sequential = {}

    def one_after_another(order):
        if order not in sequential:
            out = str(tmp_path / ("seq-" + "-".join(order)))
            for m in order:
                assert main(["compile", "--model", m, "--out", out]) == 0
            sequential[order] = dataset(out)
        return sequential[order]
    want = one_after_another(tuple(MODELS))
    assert sum(1 for v in definitions(want).values() if sum(t.startswith("model:") for t in v["tags"]) >= 2) >= 10, \
        "the models should share definitions (tag merges are what concurrent compiles could lose)"
    capsys.readouterr()

    for trial in range(TRIALS):
        out = tmp_path / f"concurrent{trial}"
        procs = [start(["compile", "--model", m, "--out", str(out)], warm_cache) for m in MODELS]
        results = finish(procs)
        assert [code for code, _, _ in results] == [0] * len(MODELS), [e for _, _, e in results]
        # llama-3.1-8b (eps 1e-5) and qwen3-8b (1e-6) share the h4096 norms: whichever writes later
        # says the file keeps the other's reference; nothing else is printed
        said = [line for _, _, err in results for line in err.splitlines()]
        assert len(said) == 2 and all("_h4096 is shared with another model whose reference" in x for x in said), said
        got = dataset(out)
        want = one_after_another(tuple(write_order(got)))
        assert sorted(got) == sorted(want), f"trial {trial}: other files"
        differ = sorted(k for k in want if got[k] != want[k])
        assert not differ, f"trial {trial}: files differ from the sequential compile (lost merges?): {differ[:5]}"
        assert not [k for k in got if os.path.basename(k).startswith((W.TEMP_PREFIX, ".defc"))]
        assert sorted(got["manifest.json"]["models"]) == sorted(MODELS)      # no compile's record lost


PROBE = """\
family: probe
definitions:
  - id: probe
    name: "probe_one_name"
    axes:
      n: {type: var}
      hidden: {value: hidden_size}
    inputs:
      x: {shape: [n, hidden], dtype: bfloat16}
    outputs:
      y: {shape: [n, hidden], dtype: bfloat16}
    reference: {template: reference/rmsnorm.py.j2, params: {eps: eps, hidden_size: hidden}}
"""


@pytest.fixture
def probe_specs(tmp_path):
    return specs_folder(tmp_path, probe=PROBE)


def test_two_different_definitions_of_one_name_race_and_one_collision_is_reported(tmp_path, probe_specs):
    """llama-3.1-8b (hidden 4096) and qwen3-14b (hidden 5120) both make probe_one_name: started at
    once, one writes it and the other reports the collision (exit 1), every time."""
    cache_dir = tmp_path / "cache"
    models = ["llama-3.1-8b", "qwen3-14b"]
    for trial in range(TRIALS):
        out = tmp_path / f"out{trial}"
        procs = [start(["compile", "--specs-dir", probe_specs, "--model", m, "--out", str(out)], cache_dir)
                 for m in models]
        results = finish(procs)
        codes = [code for code, _, _ in results]
        assert sorted(codes) == [0, 1], [e for _, _, e in results]
        winner = models[codes.index(0)]
        loser_err = results[codes.index(1)][2]
        assert loser_err.splitlines() == ["defc: 1 collision(s): existing files differ and were left as they are "
                                          "(use --force to replace, keeping .bak)"]
        assert "collision: " in results[codes.index(1)][1]
        files = dataset(out)
        assert list(definitions(files)) == [os.path.join("definitions", "probe", "probe_one_name.json")]
        records = files["manifest.json"]["models"]          # the loser wrote nothing: no record
        assert list(records) == [winner] and records[winner]["definitions"] == ["definitions/probe/probe_one_name.json"]
        doc = files[os.path.join("definitions", "probe", "probe_one_name.json")]
        assert doc["axes"]["hidden"]["value"] == {"llama-3.1-8b": 4096, "qwen3-14b": 5120}[winner]
        assert [t for t in doc["tags"] if t.startswith("model:")] == [f"model:{winner}"]


def test_a_compile_that_planned_before_another_wrote_replans_under_the_lock(tmp_path, probe_specs, capsys):
    """Deterministic version of the race: the other compile writes between this one's planning and
    its write step; the write step plans again and reports the collision instead of replacing."""
    from defc.compiler import pipeline as P
    out = str(tmp_path / "out")
    opts = P.CompileOptions(model="qwen3-14b", specs_dir=probe_specs, out=out)
    results = P.compile_models(["qwen3-14b"], opts)
    assert [p.status for p in results[0].planned] == ["new"]
    assert main(["compile", "--specs-dir", probe_specs, "--model", "llama-3.1-8b", "--out", out]) == 0
    written = dataset(out)
    P.write_planned_many(results)
    assert [p.status for p in results[0].planned] == ["collision"]
    assert dataset(out) == written
    # and a shared definition planned as new becomes a merge, keeping the other model's tag
    results = P.compile_models(["llama-3.1-8b"], P.CompileOptions(model="llama-3.1-8b", specs_dir=probe_specs,
                                                                   out=str(tmp_path / "out2")))
    assert main(["compile", "--specs-dir", probe_specs, "--model", "qwen3-8b",
                 "--out", str(tmp_path / "out2")]) == 0
    P.write_planned_many(results)
    assert [p.status for p in results[0].planned] == ["merged"]
    doc = json.load(open(tmp_path / "out2" / "definitions" / "probe" / "probe_one_name.json"))
    assert [t for t in doc["tags"] if t.startswith("model:")] == ["model:qwen3-8b", "model:llama-3.1-8b"]


def _hold_lock(folder):
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_locked_dataset_is_waited_for_then_refused_with_one_line(tmp_path, probe_specs, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    fd = _hold_lock(str(out))
    try:
        monkeypatch.setenv("DEFC_LOCK_TIMEOUT", "0.3")
        t0 = time.monotonic()
        assert main(["compile", "--specs-dir", probe_specs, "--model", "llama-3.1-8b", "--out", str(out)]) == 2
        assert time.monotonic() - t0 >= 0.3
        err = capsys.readouterr().err.splitlines()
        assert err == [f"defc: {display_path(str(out))}: error: another defc is writing into this dataset (waited 0.3 s, "
                       f"DEFC_LOCK_TIMEOUT); nothing was written"]
        assert os.listdir(out) == []
        # released while it waits: it goes ahead
        monkeypatch.setenv("DEFC_LOCK_TIMEOUT", "30")
        threading.Timer(0.3, os.close, [fd]).start()
        fd = None
        assert main(["compile", "--specs-dir", probe_specs, "--model", "llama-3.1-8b", "--out", str(out)]) == 0
        assert os.listdir(out / "definitions" / "probe") == ["probe_one_name.json"]
    finally:
        if fd is not None:
            os.close(fd)


def test_force_never_overwrites_an_earlier_backup(tmp_path, probe_specs):
    out = str(tmp_path / "out")
    target = os.path.join(out, "definitions", "probe", "probe_one_name.json")
    args = ["compile", "--specs-dir", probe_specs, "--model", "llama-3.1-8b", "--out", out]
    assert main(args) == 0
    versions = []
    for i in range(3):                  # the user edits the file, then compiles with --force, 3 times
        text = open(target).read().replace('"bfloat16"', f'"float{16 + i}"', 1)
        open(target, "w").write(text)
        versions.append(text)
        assert main(args + ["--force"]) == 0
    assert main(args + ["--force"]) == 0          # nothing to replace: no new backup
    baks = sorted(n for n in os.listdir(os.path.dirname(target)) if ".bak" in n)
    assert baks == ["probe_one_name.json.bak", "probe_one_name.json.bak.1", "probe_one_name.json.bak.2"]
    assert [open(target + b[len("probe_one_name.json"):]).read() for b in baks] == versions


def test_multi_model_force_keeps_every_replaced_version(tmp_path, probe_specs):
    """Two models replacing one file in turn in one compile leave the backups of compiling them
    one after another: the user's file and the first model's version."""
    seq, mul = str(tmp_path / "seq"), str(tmp_path / "mul")
    for out in (seq, mul):
        os.makedirs(os.path.join(out, "definitions", "probe"))
        open(os.path.join(out, "definitions", "probe", "probe_one_name.json"), "w").write('{"mine": 1}\n')
    base = ["compile", "--specs-dir", probe_specs, "--force"]
    assert main(base + ["--model", "llama-3.1-8b", "--out", seq]) == 0
    assert main(base + ["--model", "qwen3-14b", "--out", seq]) == 0
    assert main(base + ["--model", "llama-3.1-8b", "--model", "qwen3-14b", "--out", mul]) == 0
    assert dataset(seq) == dataset(mul)
    assert sorted(definitions(dataset(mul))) == [os.path.join("definitions", "probe", n) for n in
                                                 ("probe_one_name.json", "probe_one_name.json.bak",
                                                  "probe_one_name.json.bak.1")]


# -- the cache's temp files ------------------------------------------------------------------------

def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_cache_temp_files_of_dead_or_old_writers_are_removed(tmp_path, monkeypatch, probe_specs):
    d = tmp_path / "cache"
    d.mkdir()
    dead, live = _dead_pid(), os.getppid()
    names = {f".tmp-{dead}-abc": False, f".tmp-{live}-abc": True, ".tmp-legacy": True, ".tmp-legacy-old": False}
    for n in names:
        (d / n).write_bytes(b"x" * 1000)
    os.utime(d / ".tmp-legacy-old", (time.time() - 2 * cache.STALE_AFTER_S,) * 2)
    monkeypatch.setenv("DEFC_CACHE_DIR", str(d))
    monkeypatch.setattr(cache, "_cleaned", [])
    assert main(["compile", "--specs-dir", probe_specs, "--model", "llama-3.1-8b", "--out", str(tmp_path / "o")]) == 0
    left = {n for n in os.listdir(d) if n.startswith(".tmp-")}
    assert left == {n for n, keep in names.items() if keep}


def test_cache_write_on_a_full_disk_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFC_CACHE_DIR", str(tmp_path))
    real = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def write(self, s):
            raise OSError(28, "No space left on device")

        def __exit__(self, *exc):
            self.fh.close()
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: Full(real(*a, **k)))
    cache.put("k", {"big": "x" * 100000})
    monkeypatch.setattr(os, "fdopen", real)
    assert os.listdir(tmp_path) == []
    # interrupted (KeyboardInterrupt, MemoryError...): the temp file goes too
    monkeypatch.setattr(json, "dump", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        cache.put("k", {"big": 1})
    assert os.listdir(tmp_path) == []


def test_stage_writes_under_the_dataset_lock(tmp_path, capsys, monkeypatch):
    """defc stage places dumps under the same lock as compile: while another writer holds it, stage
    waits, then refuses with one line and writes nothing."""
    dumps = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reports", "gpu", "dumps",
                         "llama-3.1-8b-tp1", "fi_trace_llama-3.1-8b_tp1_ep1_ps1")
    out = tmp_path / "out"
    out.mkdir()
    fd = _hold_lock(str(out))
    try:
        monkeypatch.setenv("DEFC_LOCK_TIMEOUT", "0.2")
        assert main(["stage", dumps, "--out", str(out)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == [f"defc: {display_path(str(out))}: error: another defc is writing into this dataset (waited 0.2 s, "
                       f"DEFC_LOCK_TIMEOUT); nothing was written"]
        assert os.listdir(out) == []
    finally:
        os.close(fd)
    assert main(["stage", dumps, "--out", str(out)]) in (0, 1)
    assert os.listdir(out / "definitions")
