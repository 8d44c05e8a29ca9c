"""defc coverage (dataset vs predictions, trace vs compile), --matrix, and defc gap-report."""
import glob
import json
import os
import re
import shutil

import pytest

from defc.authoring import coverage as C
from defc.compiler.models import catalogue_slugs
from conftest import ROOT
from defc.cli import main

REF = """import torch

HIDDEN_SIZE = {{ hidden_size }}


def run(x):
    assert x.shape[-1] == HIDDEN_SIZE
    return x.clone()
"""


def spec(family, fi_api, status="verified"):
    return f"""family: {family}
definitions:
  - id: {family}
    name: "{family}_h{{hidden_size}}"
    description: "demo {family} with hidden_size={{hidden_size}}"
    fi_api: {fi_api}
    status: {status}
    axes:
      batch_size: {{type: var, description: rows}}
      hidden_size: {{value: hidden_size, description: h}}
    inputs:
      x: {{shape: [batch_size, hidden_size], dtype: bfloat16, description: in}}
    outputs:
      y: {{shape: [batch_size, hidden_size], dtype: bfloat16, description: out}}
    reference:
      template: reference/demo.py.j2
"""


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEFC_NO_FLASHINFER", "1")
    os.makedirs("specs")
    os.makedirs("templates/reference")
    for f in ("_model_facts.yaml", "rmsnorm.yaml"):
        shutil.copy(os.path.join(ROOT, "specs", f), os.path.join("specs", f))
    with open("templates/reference/demo.py.j2", "w") as fh:
        fh.write(REF)
    # an API FlashInfer has without a trace template, no API at all, and a misspelt one
    for family, api, status in (("qkrope", "flashinfer.norm.fused_qk_rmsnorm_rope", "verified"),
                                ("nokernel", "null", "unverified"),
                                ("typo", "flashinfer.norm.rmsnorm_typo", "verified")):
        with open(f"specs/{family}.yaml", "w") as fh:
            fh.write(spec(family, api, status))
    return tmp_path


def common():
    return ["--specs-dir", "specs", "--templates", "templates", "--fi-registry", "bundled"]


def test_missing_definitions_and_where_they_come_from(ws, capsys):
    assert main(["coverage", "--models", "llama-3.1-8b", "--dataset", "ds", "--format", "json", *common()]) == 0
    data = json.loads(capsys.readouterr().out)
    row = data["models"][0]
    assert row["model"] == "llama-3.1-8b" and row["predicted"] == 5 and row["present"] == 0
    src = {d["name"]: d["source"] for d in row["definitions"]}
    assert src == {"rmsnorm_h4096": "trace", "fused_add_rmsnorm_h4096": "trace", "qkrope_h4096": "compile",
                   "nokernel_h4096": "compile", "typo_h4096": "compile"}
    assert "bundled" in data["fi_registry"]
    # compile two families into the dataset: they become present
    assert main(["compile", "--model", "llama-3.1-8b", "--specs-dir", "specs", "--templates", "templates",
                 "--out", "ds", "rmsnorm", "nokernel"]) == 0
    capsys.readouterr()
    assert main(["coverage", "--models", "llama-3.1-8b", "--dataset", "ds", *common()]) == 0
    md = capsys.readouterr().out
    assert "| llama-3.1-8b | 5 | 3 | 2 | 0 | 2 |" in md
    assert "| `qkrope_h4096` | qkrope | missing | compile | `flashinfer.norm.fused_qk_rmsnorm_rope` |" in md
    assert "| `rmsnorm_h4096` | rmsnorm | yes |  | `flashinfer.norm.rmsnorm` |" in md


def test_gap_report_drafts_one_issue_per_api(ws, capsys):
    assert main(["gap-report", "--models", "llama-3.1-8b,qwen3-14b", "--format", "json", *common()]) == 0
    issues = json.loads(capsys.readouterr().out)["issues"]
    kinds = {i["kind"]: i for i in issues}
    assert set(kinds) == {"no-template", "unknown-api", "no-api"}
    t = kinds["no-template"]
    assert t["title"] == "Trace template for `flashinfer.norm.fused_qk_rmsnorm_rope` (qkrope)"
    assert "tmp/flashinfer-trace/definitions/qkrope/qkrope_h4096.json" in t["body"]
    assert "qkrope_h5120" in t["body"] and "### Acceptance" in t["body"] and "- [ ] " in t["body"]
    assert "models: llama-3.1-8b" in t["body"] and "qwen3-14b" in t["body"]
    assert kinds["no-api"]["title"].startswith("Kernel request: FlashInfer kernel for `nokernel`")
    assert "rmsnorm_typo" in kinds["unknown-api"]["title"]
    assert main(["gap-report", "--models", "llama-3.1-8b", *common()]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Gap report (3 issue(s)") and len(re.findall(r"^## ", md, re.M)) == 4   # + templates


# trace templates FlashInfer 0.7.2.post1 registers (read from flashinfer/trace/templates and the
# @flashinfer_api(trace=...) decorators): (fi_api FlashInfer records, name_prefix, op_type)
MIN_P = ("flashinfer.sampling.min_p_sampling_from_probs", "min_p_sampling", "sampling")
LLAMA31_ROPE = ("flashinfer.rope.apply_llama31_rope", "llama31_rope", "rope")
GQA_DECODE = ("flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper.run", "gqa_paged_decode", "gqa_paged")
GEMMA_RMSNORM = ("flashinfer.norm.gemma_rmsnorm", "gemma_rmsnorm", "rmsnorm")


def test_gap_report_lists_trace_templates_no_spec_covers(ws, capsys):
    assert main(["gap-report", "--models", "llama-3.1-8b", "--format", "json", *common()]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {(t["fi_api"], t["template"], t["op_type"]) for t in data["uncovered_templates"]}
    # this workspace's specs: rmsnorm.yaml (rmsnorm, fused_add, gemma, gemma fused_add) and the demo families
    assert {MIN_P, LLAMA31_ROPE, GQA_DECODE} <= rows
    assert GEMMA_RMSNORM not in rows and not any(r[0] == "flashinfer.norm.rmsnorm" for r in rows)
    assert "0.7.2.post1" in data["fi_registry"]
    assert main(["gap-report", "--models", "llama-3.1-8b", *common()]) == 0
    md = capsys.readouterr().out
    section = md.split("## Trace templates no defc spec covers (", 1)[1]
    assert section.startswith(f"{len(rows)}; bundled ")
    assert "| `flashinfer.sampling.min_p_sampling_from_probs` | min_p_sampling | sampling |" in section


def test_project_specs_cover_their_apis_and_not_others():
    # the project's specs name the paged decode wrapper (as the class) and gemma_rmsnorm; nothing names
    # min_p sampling or the Llama 3.1 RoPE (true of FlashInfer 0.7.2.post1 and of 0.7.4)
    apis, problems = C.spec_apis()
    assert problems == [] and "flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper" in apis
    for reg in (C.registry(live=True), C.bundled_registry()):
        rows = set(C.uncovered_templates(reg, apis))
        assert {MIN_P, LLAMA31_ROPE} <= rows and not rows & {GQA_DECODE, GEMMA_RMSNORM}, reg.source
        assert not any(reg.canonical(api) in {r[0] for r in rows} for api in apis), reg.source


def test_matrix_counts_per_family(ws, capsys):
    assert main(["coverage", "--matrix", "--models", "llama-3.1-8b,deepseek-v3", *common()]) == 0
    md = capsys.readouterr().out
    assert "| model | nokernel | qkrope | rmsnorm | typo | total |" in md
    assert "| llama-3.1-8b | 1 | 1 | 2 | 1 | 5 |" in md
    assert "| deepseek-v3 | 1 | 1 | 4 | 1 | 7 |" in md      # MLA adds the q_lora and kv_lora norms
    assert main(["coverage", "--matrix", "--models", "llama-3.1-8b", "--write", "m.md", *common()]) == 0
    assert open("m.md").read().startswith("# Models × op families")


def test_broken_spec_is_reported_and_the_rest_still_counted(ws, capsys):
    with open("specs/broken.yaml", "w") as fh:
        fh.write("family: broken\ndefinitions: []\n")
    assert main(["coverage", "--matrix", "--models", "llama-3.1-8b", *common()]) == 1
    out, err = capsys.readouterr()
    assert "| llama-3.1-8b | 1 | 1 | 2 | 1 | 5 |" in out
    assert re.search(r"specs/broken\.yaml:2:\d+: error: ", err)


def test_model_families_doc_is_generated_by_defc():
    path = os.path.join(ROOT, "docs", "model-families.md")
    text = open(path).read()
    assert text.startswith("# Models × op families")
    assert "generated by `defc coverage --matrix --corpus tests/corpus --write docs/model-families.md`" in text
    for slug in catalogue_slugs():
        assert f"| {slug} |" in text
    # the models outside the catalogue, with what defc reported for each
    corpus = text.split("## Models outside the catalogue", 1)[1]
    findings_table = corpus.split("| model | gaps | unmodelled | assumed | unknown keys |", 1)[1]
    rows = [line for line in findings_table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(glob.glob(os.path.join(ROOT, "tests", "corpus", "*", "config.json")))


def test_bundled_list_agrees_with_flashinfer():
    live, bundled = C.registry(live=True), C.bundled_registry()
    apis = set()
    for p in glob.glob(os.path.join(ROOT, "specs", "*.yaml")):
        apis |= set(re.findall(r"fi_api:\s*([A-Za-z_][A-Za-z0-9_.]*)", open(p).read())) - {"null"}
    apis |= {"flashinfer.norm.rmsnorm", "flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper",
             "flashinfer.fused_moe.trtllm_fp8_block_scale_moe", "flashinfer.norm.fused_qk_rmsnorm_rope"}
    for api in sorted(apis):
        assert live.has_template(api) == bundled.has_template(api), \
            f"{api}: regenerate the bundled list with `defc coverage --write-fi-api-list`"
    assert live.has_template("flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper")
    assert not live.has_template("flashinfer.norm.fused_qk_rmsnorm_rope")
    assert live.exists("flashinfer.norm.fused_qk_rmsnorm_rope") and not live.exists("flashinfer.norm.nope")
