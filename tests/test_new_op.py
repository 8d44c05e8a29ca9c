"""defc new-op: scaffolds that are lint-clean at once, from an example or from FlashInfer's trace template."""
import glob
import json
import os
import shutil

import pytest

from defc.authoring.lint import lint
from conftest import ROOT
from defc.cli import main
from fi_oracle import const_axes, fi_trace, meta

MODELS = "llama-3.1-8b,deepseek-v3"


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("specs")
    shutil.copy(os.path.join(ROOT, "specs", "_model_facts.yaml"), "specs/_model_facts.yaml")
    return tmp_path


def new_op(*args):
    return main(["new-op", *args, "--specs-dir", "specs", "--templates-dir", "templates"])


def lint_errors(path):
    return [str(p) for p in lint([path], specs_dir="specs", extra_templates=["templates"], models=MODELS.split(","))
            if p.severity == "error"]


def compiled(model, family):
    assert main(["compile", "--model", model, "--specs-dir", "specs", "--templates", "templates", "--out", "ds",
                 family]) == 0
    docs = {}
    for p in glob.glob("ds/definitions/*/*.json"):
        with open(p) as fh:
            d = json.load(fh)
        docs[d["name"]] = d
    return docs


def test_plain_example_compiles_and_validates(ws, capsys):
    assert new_op("myop") == 0
    assert os.path.exists("specs/myop.yaml") and os.path.exists("templates/reference/myop.py.j2")
    assert lint_errors("specs/myop.yaml") == []
    docs = compiled("llama-3.1-8b", "myop")
    assert set(docs) == {"myop_h4096"} and docs["myop_h4096"]["axes"]["hidden_size"]["value"] == 4096
    assert main(["validate", "ds", "--run-references", "--no-report"]) == 0
    # never overwrites
    capsys.readouterr()
    assert new_op("myop") == 2
    assert "specs/myop.yaml: error: already exists" in capsys.readouterr().err


def test_from_fi_api_rmsnorm_matches_flashinfer(ws, capsys):
    assert new_op("myrms", "--from-fi-api", "flashinfer.norm.rmsnorm") == 0
    text = open("specs/myrms.yaml").read()
    assert 'name: "rmsnorm_h{hidden_size}"' in text and "fi_api: flashinfer.norm.rmsnorm" in text
    assert "op_type: rmsnorm" in text
    assert lint_errors("specs/myrms.yaml") == []
    docs = compiled("llama-3.1-8b", "myrms")
    mine = docs["rmsnorm_h4096"]
    theirs = fi_trace("flashinfer.norm.rmsnorm", input=meta((3, 4096), "bfloat16"), weight=meta((4096,), "bfloat16"))
    assert mine["name"] == theirs["name"] and mine["op_type"] == theirs["op_type"]
    assert const_axes(mine) == const_axes(theirs)
    assert {k: v["shape"] for k, v in mine["inputs"].items()} == {k: v["shape"] for k, v in theirs["inputs"].items()}
    assert {k: v["shape"] for k, v in mine["outputs"].items()} == {k: v["shape"] for k, v in theirs["outputs"].items()}
    assert "fi_api:flashinfer.norm.rmsnorm" in mine["tags"] and "status:verified" in mine["tags"]
    # the stub reference asserts the const axes and says it is not written yet
    assert main(["validate", "ds", "--run-references", "--no-report"]) == 1
    assert "reference raised NotImplementedError" in capsys.readouterr().out


def test_from_fi_api_class_with_plan_tensors_and_page_sizes(ws, capsys):
    assert new_op("mydecode", "--from-fi-api", "flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper") == 0
    assert lint_errors("specs/mydecode.yaml") == []
    docs = compiled("llama-3.1-8b", "mydecode")
    assert set(docs) == {"gqa_paged_decode_h32_kv8_d128_ps1", "gqa_paged_decode_h32_kv8_d128_ps64"}
    d = docs["gqa_paged_decode_h32_kv8_d128_ps64"]
    assert d["inputs"]["kv_indptr"]["dtype"] == "int32" and d["constraints"][0] == "len_indptr == batch_size + 1"
    assert "stage:decode" in d["tags"]
    capsys.readouterr()


def test_from_fi_api_in_place_output_and_derived_axis(ws, capsys):
    assert new_op("myfadd", "--from-fi-api", "flashinfer.norm.fused_add_rmsnorm") == 0
    out = capsys.readouterr().out
    assert "also writes input 'residual' in place" in out
    assert lint_errors("specs/myfadd.yaml") == []
    assert new_op("mysilu", "--from-fi-api", "flashinfer.activation.silu_and_mul") == 0
    text = open("specs/mysilu.yaml").read()
    # the output-only var axis pinned by 'hidden_size == 2 * hidden_div_2' becomes const
    assert 'hidden_div_2: {value: "hidden_size/2"' in text
    assert lint_errors("specs/mysilu.yaml") == []


def test_from_fi_api_leaves_out_a_const_derived_from_optional_arguments(ws, capsys, monkeypatch):
    # FlashInfer (0.7.4 on) has Const(extract=...) axes, absent from a definition when the call does not set
    # them: give the real rmsnorm template one (on the Const object itself, so any FlashInfer version takes it)
    from flashinfer.trace import Const
    from flashinfer.trace.templates.norm import rmsnorm_trace
    flag = Const(abbrev="f", description="a flag derived from an optional argument")
    flag.extract = lambda kwargs: None
    monkeypatch.setitem(rmsnorm_trace.axes, "demo_flag", flag)
    assert new_op("myrms", "--from-fi-api", "flashinfer.norm.rmsnorm") == 0
    text = open("specs/myrms.yaml").read()
    notes, definitions = text.split("\ndefinitions:\n", 1)
    assert "left out of axes and name: demo_flag" in notes
    assert 'name: "rmsnorm_h{hidden_size}"' in definitions and "demo_flag" not in definitions
    assert lint_errors("specs/myrms.yaml") == []


def test_bad_requests_are_one_line_errors(ws, capsys):
    assert new_op("x", "--from-fi-api", "flashinfer.norm.no_such_api") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a FlashInfer API" in err and "Traceback" not in err
    assert new_op("Bad-Name") == 2
    assert "is not a family name" in capsys.readouterr().err
    assert not os.path.exists("specs/x.yaml")
