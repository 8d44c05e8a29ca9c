"""The suite passes from a bare clone: no test reads the reference folder beside the repository (the project's reference material beside
the repository).  What tests need from it is vendored as facts under tests/data."""
import os
import shutil
import subprocess
import sys
import tokenize

from conftest import ROOT

HERE = os.path.abspath(__file__)


def _literals_and_names(path):
    with open(path, "rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type in (tokenize.STRING, tokenize.NAME):
                yield tok.start[0], tok.type, tok.string


REFERENCE = "sha" + "red"      # the reference folder beside the repository (spelled so this file does not name it)


def test_no_test_refers_to_shared():
    bad = []
    for folder, dirs, files in os.walk(os.path.join(ROOT, "tests")):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            path = os.path.join(folder, f)
            if not f.endswith(".py") or os.path.abspath(path) == HERE:
                continue
            for line, kind, text in _literals_and_names(path):
                if kind == tokenize.NAME and text in ("shared_path", "SHARED"):
                    bad.append((os.path.relpath(path, ROOT), line, text))
                elif kind == tokenize.STRING:
                    body = text.strip("rbuRBUfF").strip("'\"")
                    if body == REFERENCE or f"../{REFERENCE}" in body or f"/{REFERENCE}/" in body \
                            or body.startswith(f"{REFERENCE}/"):
                        bad.append((os.path.relpath(path, ROOT), line, text))
    assert not bad, f"tests refer to the reference folder (vendor the facts under tests/data instead): {bad}"


def test_vendored_tests_pass_in_a_copy_with_nothing_beside_it(tmp_path):
    """The tests that once read the reference folder pass from a copy of the repository with nothing beside it,
    and none of them skips."""
    copy = tmp_path / "isolated" / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", ".venv", "tmp", "__pycache__", "*.egg-info",
                                                              ".pytest_cache", "reports", "bench"))
    assert not (tmp_path / "isolated" / REFERENCE).exists()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    tests = ["tests/test_models.py",
             "tests/test_family_mla.py::test_deepseek_tp8_ep8_matches_curated",
             "tests/test_family_moe.py::test_golden_definitions_exact"]
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests],
                       cwd=str(copy), env=env, capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "skipped" not in out and "passed" in out, out[-4000:]
