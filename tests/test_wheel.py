"""The distribution works anywhere: a wheel built from the checkout, installed (not editable) into
a fresh virtual environment, lists models, compiles and lints from an unrelated folder, with the
specs, templates and catalogue as package data, and claims no import name but ``defc``."""
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "DEFC_SPECS_DIR",
                                                             "DEFC_TEMPLATES_DIR")}
    env["DEFC_CACHE_DIR"] = os.path.join(cwd, "cache")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_installs_and_works_from_an_unrelated_folder(tmp_path):
    wheels = tmp_path / "wheels"
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), ROOT], str(tmp_path))
    assert built.returncode == 0, built.stderr
    [wheel] = glob.glob(str(wheels / "defc-*.whl"))
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", str(venv)], str(tmp_path)).returncode == 0
    installed = run([str(venv / "bin" / "pip"), "install", "-q", wheel], str(tmp_path))
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    defc = str(venv / "bin" / "defc")
    models = run([defc, "models"], str(elsewhere))
    assert models.returncode == 0 and "llama-3.1-8b" in models.stdout, models.stderr
    out = elsewhere / "X"
    compiled = run([defc, "compile", "--model", "llama-3.1-8b", "--out", str(out)], str(elsewhere))
    assert compiled.returncode == 0, compiled.stderr
    assert len(glob.glob(str(out / "definitions" / "*" / "*.json"))) == 23
    linted = run([defc, "lint"], str(elsewhere))
    assert linted.returncode == 0 and "0 error(s)" in linted.stdout, linted.stdout + linted.stderr
    # the specs and templates come from the installed package, not from this checkout
    where = run([str(venv / "bin" / "python"), "-c",
                 "from defc.compiler.paths import SPECS_DIR, TEMPLATES_DIR; print(SPECS_DIR); print(TEMPLATES_DIR)"],
                str(elsewhere))
    assert all(p.startswith(str(venv)) for p in where.stdout.split()), where.stdout
    # new-op never writes into the installation
    scaffold = run([defc, "new-op", "my_op"], str(elsewhere))
    assert scaffold.returncode == 2 and "pass --specs-dir DIR and --templates-dir DIR" in scaffold.stderr
    made = run([defc, "new-op", "my_op", "--specs-dir", "specs", "--templates-dir", "templates"], str(elsewhere))
    assert made.returncode == 0 and os.path.isfile(elsewhere / "specs" / "my_op.yaml"), made.stderr
    for generic in ("compiler", "runners", "authoring"):
        probe = run([str(venv / "bin" / "python"), "-c", f"import {generic}"], str(elsewhere))
        assert probe.returncode != 0 and "No module named" in probe.stderr, generic
