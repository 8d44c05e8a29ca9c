"""Shared fixtures: compile through the Python API into a temporary dataset."""
from __future__ import annotations

import glob
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def compile_defs(tmp_path, model, specs=(), tp=None, ep=None, dp=None, quantization=None, op_types=None):
    """Compile and write; return {name: definition dict} of what is on disk."""
    from defc.compiler.pipeline import CompileOptions, compile_model, write_planned
    out = os.path.join(str(tmp_path), "ds")
    opts = CompileOptions(model=model, specs=list(specs), tp=tp, ep=ep, dp=dp,
                          quantization=quantization, op_types=op_types, out=out)
    result = compile_model(opts)
    write_planned(result)
    docs = {}
    for p in glob.glob(os.path.join(out, "definitions", "*", "*.json")):
        with open(p) as fh:
            d = json.load(fh)
        docs[d["name"]] = d
    return docs


@pytest.fixture
def compile_into(tmp_path):
    def _c(model, **kw):
        return compile_defs(tmp_path, model, **kw)
    return _c


def reference_namespace(defn):
    """Exec a definition's reference source; return its module namespace."""
    ns = {}
    exec(compile(defn["reference"], f"<{defn['name']}>", "exec"), ns)  # the project's own generated code
    return ns


def load_reference(defn):
    """A definition's run()."""
    return reference_namespace(defn)["run"]


def compile_planned(tmp, model, specs, **kw):
    """Compile without writing, at tp 1 (shapes that do not depend on serving configs) unless told
    otherwise; return ({name: definition}, {name: first evaluated instance})."""
    from defc.compiler.pipeline import CompileOptions, compile_model
    kw.setdefault("tp", [1])
    res = compile_model(CompileOptions(model=model, specs=list(specs), out=os.path.join(str(tmp), "ds"), **kw))
    return ({p.doc["name"]: p.doc for p in res.planned}, {n: insts[0] for n, insts in res.instances.items()})


def data_path(*parts):
    """A file vendored under tests/data (facts only; the tests read nothing outside the repository)."""
    return os.path.join(DATA, *parts)


_GOLDEN = {}


def golden_definition(name):
    """The vendored facts of a curated definition: name, op_type, tags, axes (type, value), constraints,
    inputs and outputs (shape, dtype); tests/data/golden_definitions.json."""
    if not _GOLDEN:
        with open(data_path("golden_definitions.json")) as fh:
            _GOLDEN.update(json.load(fh))
    return {"name": name, **_GOLDEN[name]}


def _default_dataset_state():
    """Files (and their mtimes) of the repository's default dataset folder, tmp/flashinfer-trace."""
    root = os.path.join(ROOT, "tmp", "flashinfer-trace")
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            p = os.path.join(folder, f)
            out[p] = os.stat(p).st_mtime_ns
    return out


@pytest.fixture(scope="session", autouse=True)
def tests_leave_the_default_dataset_alone():
    """No test may write into the repository's default dataset (a user's compile output lives there):
    tests pass --out / --dumps / --no-stage into their own temporary folders."""
    before = _default_dataset_state()
    yield
    after = _default_dataset_state()
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"tests wrote into {os.path.join(ROOT, 'tmp', 'flashinfer-trace')}: {changed[:5]}"


def read_tree(root) -> dict:
    """Every file under root, by path relative to it: its bytes."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def specs_folder(tmp, **specs) -> str:
    """tmp/specs holding the project's model facts and the given specs (family name -> YAML text)."""
    import shutil
    from defc.compiler.paths import MODEL_FACTS, SPECS_DIR
    d = os.path.join(str(tmp), "specs")
    os.makedirs(d)
    shutil.copy(os.path.join(SPECS_DIR, MODEL_FACTS), d)
    for name, text in specs.items():
        with open(os.path.join(d, f"{name}.yaml"), "w", encoding="utf-8") as fh:
            fh.write(text)
    return d
