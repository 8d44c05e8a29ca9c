"""The bad-input corpus: every case in tests/bad_inputs/ fails with exactly one clear line.

Each case is a folder with ``case.yaml``::

    # what the case is about
    args: ["compile", "--specs-dir", "specs", "--out", "out", "--model", "llama-3.1-8b"]
    facts: specs          # optional: copy the project's specs/_model_facts.yaml into this folder
    env: {NAME: value}    # optional: environment for the run
    env_paths: {NAME: p}  # optional: environment variables holding paths inside the case folder
    locked: out           # optional: another process holds the dataset lock on this folder meanwhile
    stdout_has: "text"    # optional: stdout must contain this too (the detail behind a summary line)
    stream: stdout        # optional: the command reports in a table; stderr must be empty and
                          # ``expect`` is one stdout line (whitespace runs compared as one space)
    expect: "defc: specs/probe.yaml:6:21: error: ..."   # <project> stands for the project folder

and the input files the arguments name (specs, templates, config.json, cookbook YAMLs, and
sometimes an ``out/`` dataset that must stay exactly as it is).  The case is copied into a
temporary folder, which becomes the working directory, so paths in messages are relative to the
case folder.  Each case runs in a child process of its own (forked from a runner that imported
defc once: tests/bad_input_child.py) under a 1 GiB address-space limit, and must end within 5 s.
The run must exit non-zero, print exactly the expected line on stderr and no traceback, and
leave every file of the folder (names, bytes and mtimes) as it was.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from defc.compiler.paths import MODEL_FACTS, PROJECT_ROOT, SPECS_DIR
from defc.cli import main

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bad_inputs")
CASES = sorted(d for d in os.listdir(CORPUS) if os.path.isfile(os.path.join(CORPUS, d, "case.yaml")))
# a few cases also run through a real `python -m defc.cli` process
SUBPROCESS_CASES = ["formula_import_os", "template_cycler_globals", "name_dotdot", "config_non_utf8", "yaml_alias_bomb"]


def load_case(name: str) -> dict:
    from ruamel.yaml import YAML
    with open(os.path.join(CORPUS, name, "case.yaml"), encoding="utf-8") as fh:
        meta = YAML(typ="safe").load(fh)
    assert isinstance(meta, dict) and isinstance(meta.get("args"), list) and isinstance(meta.get("expect"), str), name
    return meta


def prepare(name: str, work: str) -> dict:
    """Copy a case into ``work`` (which must not exist) and return its case.yaml."""
    meta = load_case(name)
    shutil.copytree(os.path.join(CORPUS, name), work, symlinks=True)
    os.unlink(os.path.join(work, "case.yaml"))
    if meta.get("facts"):
        dest = os.path.join(work, meta["facts"])
        os.makedirs(dest, exist_ok=True)
        shutil.copy(os.path.join(SPECS_DIR, MODEL_FACTS), dest)
    return meta


def snapshot(folder: str) -> dict:
    """Every entry under folder: kind, size, mtime and content hash of files."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            p = os.path.join(root, d)
            out[os.path.relpath(p, folder)] = ("dir",)
        for f in files:
            p = os.path.join(root, f)
            st = os.lstat(p)
            with open(p, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            out[os.path.relpath(p, folder)] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out


def expected_line(meta) -> str:
    """``<project>`` in an expectation stands for the project folder (the built-in templates/)."""
    return meta["expect"].replace("<project>", PROJECT_ROOT)


def check_outcome(name, meta, code, out, err, before, after):
    # the documented exit codes: 2 bad input or usage (the default), 1 findings (e.g. a table of rows
    # that could not be read), never 0 and never 3 (an internal error)
    assert code == meta.get("code", 2), f"{name}: exit code {code}, want {meta.get('code', 2)} (stdout: {out!r})"
    assert "Traceback" not in err and "Traceback" not in out, f"{name}: a traceback reached the user:\n{err}"
    want = expected_line(meta)
    if meta.get("stream") == "stdout":
        # a command that reports problems in its table (defc diff): nothing on stderr, the row on stdout
        # (defc diff names each row it cannot explain on stderr, one line each)
        assert all(line.startswith("defc: unexplained: ") for line in err.splitlines()), \
            f"{name}: stderr should hold only unexplained-row lines, got:\n{err}"
        rows = [" ".join(line.split()) for line in out.splitlines()]
        assert " ".join(want.split()) in rows, f"{name}: no stdout line equals\n{want}\nstdout:\n{out}"
    else:
        lines = err.splitlines()
        assert len(lines) == 1, f"{name}: stderr should be one line, got {len(lines)}:\n{err}"
        assert lines[0] == want, f"{name}:\n got: {lines[0]}\nwant: {want}"
    if meta.get("stdout_has"):
        assert meta["stdout_has"] in out, f"{name}: stdout lacks {meta['stdout_has']!r}:\n{out}"
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in before if k in after and before[k] != after[k])
    assert not (added or removed or changed), f"{name}: files changed: added {added}, removed {removed}, changed {changed}"


def case_env(meta, work):
    """``env`` as given; ``env_paths`` made absolute inside the case folder."""
    env = {k: str(v) for k, v in (meta.get("env") or {}).items()}
    env.update({k: os.path.join(work, str(v)) for k, v in (meta.get("env_paths") or {}).items()})
    return env


# Each case runs in its own child process (forked from a runner that imported defc once, see
# tests/bad_input_child.py) under an address-space limit, and must end within the time limit.
LIMIT_AS = 1 << 30          # 1 GiB of address space: a case that needs more fails (MemoryError)
TIME_LIMIT_S = 5.0


@contextlib.contextmanager
def held_lock(folder):
    """``locked: FOLDER``: another defc's lock on that dataset folder, held while the case runs."""
    if folder is None:
        yield
        return
    import fcntl
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Runner:
    """The runner process: one request (a JSON line) per case, one answer line back."""

    def __init__(self):
        self.proc = None

    def run(self, req: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            env = dict(os.environ)
            env.pop("DEFC_DEBUG", None)
            self.proc = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "bad_input_child.py")],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the bad-input runner process died"
        return json.loads(line)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def runner():
    r = Runner()
    yield r
    r.close()


@pytest.mark.parametrize("name", CASES)
def test_bad_input(name, tmp_path, runner):
    work = str(tmp_path / "case")
    meta = prepare(name, work)
    env = {"DEFC_CACHE_DIR": str(tmp_path / "cache")}        # a cold parse cache: every input is parsed
    env.update(case_env(meta, work))
    before = snapshot(work)
    out, err = str(tmp_path / "stdout"), str(tmp_path / "stderr")
    with held_lock(os.path.join(work, meta["locked"]) if meta.get("locked") else None):
        res = runner.run({"args": list(meta["args"]), "cwd": work, "env": env, "stdout": out, "stderr": err,
                          "limit_as": LIMIT_AS, "timeout": TIME_LIMIT_S})
    with open(out, encoding="utf-8") as fh:
        stdout = fh.read()
    with open(err, encoding="utf-8") as fh:
        stderr = fh.read()
    assert not res["timed_out"], f"{name}: still running after {TIME_LIMIT_S} s (killed)"
    assert res["maxrss_bytes"] < LIMIT_AS, f"{name}: peak memory {res['maxrss_bytes'] >> 20} MiB"
    check_outcome(name, meta, res["code"], stdout, stderr, before, snapshot(work))


def test_the_runner_enforces_the_limits(tmp_path, runner):
    """A case that needs more than the address-space limit fails; one that runs too long is killed."""
    def run(code, timeout=TIME_LIMIT_S):
        res = runner.run({"exec": code, "cwd": str(tmp_path), "env": {}, "stdout": str(tmp_path / "o"),
                          "stderr": str(tmp_path / "e"), "limit_as": LIMIT_AS, "timeout": timeout})
        with open(tmp_path / "e") as fh:
            return res, fh.read()
    # address space, not touched (zeroing it would take seconds): defc and its libraries leave
    # room for 800 MiB more, not for a whole GiB
    res, err = run("import mmap; m = mmap.mmap(-1, 800 << 20)")
    assert res["code"] == 0 and not res["timed_out"], err
    res, err = run("import mmap; m = mmap.mmap(-1, 1 << 30)")
    assert res["code"] != 0 and "Cannot allocate memory" in err, err
    res, err = run("import time; time.sleep(30)", timeout=0.5)
    assert res["timed_out"] and res["seconds"] < 5


def _subprocess_env(meta, work):
    env = dict(os.environ)
    env.pop("DEFC_DEBUG", None)
    env["PYTHONPATH"] = PROJECT_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(case_env(meta, work))
    return env


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(name, tmp_path):
    work = str(tmp_path / "case")
    meta = prepare(name, work)
    before = snapshot(work)
    env = _subprocess_env(meta, work)
    env["DEFC_CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-m", "defc.cli"] + list(meta["args"]), cwd=work, capture_output=True,
                          text=True, env=env, timeout=120)
    check_outcome(name, meta, proc.returncode, proc.stdout, proc.stderr, before, snapshot(work))


def test_corpus_is_large_and_every_case_has_a_note():
    assert len(CASES) >= 250
    for name in CASES:
        with open(os.path.join(CORPUS, name, "case.yaml"), encoding="utf-8") as fh:
            first = fh.readline()
        assert first.startswith("# ") and len(first) > 5, f"{name}: case.yaml should start with a comment saying what it checks"
        meta = load_case(name)
        assert meta["expect"].startswith("defc: ") or meta.get("stream") == "stdout", name


@pytest.mark.parametrize("name", ["formula_import_os", "template_mro", "config_not_json"])
def test_debug_shows_the_traceback(name, tmp_path, monkeypatch, capsys):
    work = str(tmp_path / "case")
    meta = prepare(name, work)
    monkeypatch.chdir(work)
    code = main(["--debug"] + list(meta["args"]))
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1] == expected_line(meta)


def test_internal_errors_are_one_line_without_debug(tmp_path, monkeypatch, capsys):
    """A bug (not bad input) is still one line, pointing at --debug; with --debug, the traceback."""
    import defc.compiler.pipeline as P
    def boom(models, opts):
        raise RuntimeError("simulated bug")
    monkeypatch.setattr(P, "compile_models", boom)
    monkeypatch.chdir(tmp_path)
    args = ["compile", "--model", "llama-3.1-8b", "--out", "out"]
    assert main(args) == 3
    err = capsys.readouterr().err
    assert err.splitlines() == ["defc: internal error: RuntimeError: simulated bug (run with --debug for a traceback)"]
    assert main(["--debug"] + args) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "simulated bug" in err
    assert not os.path.exists(tmp_path / "out")
