"""Every catalogue model compiles with --quantization all, and every file is a valid Definition."""
import ast
import glob
import json
import os

import pytest

from defc.compiler.models import catalogue_slugs
from defc.compiler.pipeline import CompileOptions, compile_model, write_planned


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("catalogue"))
    per_model = {}
    for slug in catalogue_slugs():
        result = compile_model(CompileOptions(model=slug, quantization=["all"], out=out))
        write_planned(result)
        assert not result.count("collision"), slug
        per_model[slug] = {p.doc["name"] for p in result.planned}
    return out, per_model


def test_every_model_compiles_to_something(dataset):
    out, per_model = dataset
    for slug, names in per_model.items():
        assert names, slug


def test_every_file_loads_in_flashinfer_bench(dataset):
    from flashinfer_bench.data import Definition
    out, _ = dataset
    files = glob.glob(os.path.join(out, "definitions", "*", "*.json"))
    assert files
    for path in files:
        with open(path) as fh:
            doc = json.load(fh)
        d = Definition.model_validate(doc)
        assert d.name == os.path.basename(path)[:-5]
        assert d.op_type == os.path.basename(os.path.dirname(path))
        tree = ast.parse(doc["reference"])
        assert any(isinstance(n, ast.FunctionDef) and n.name == "run" for n in tree.body), path
        tags = doc["tags"]
        assert any(t.startswith("model:") for t in tags) and any(t.startswith("status:") for t in tags), path
