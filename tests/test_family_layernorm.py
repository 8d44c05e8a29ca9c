"""layernorm family: LayerNorm models (norm_kind "layernorm": GPT-2, Phi, Starcoder2) get
flashinfer.norm.layernorm definitions and no RMSNorm ones; the reference against torch and
FlashInfer's template reference.  Shapes per corpus model and agreement with .fi_trace() are in
test_family_rmsnorm.py's corpus-wide norm tests."""
import os

import pytest
import torch
import yaml

from conftest import ROOT, compile_planned, load_reference
from fi_oracle import flashinfer

CORPUS = os.path.join(ROOT, "tests", "corpus")


def _docs(tmp_path, slug, tp=(1,)):
    docs, _ = compile_planned(tmp_path, os.path.join(CORPUS, slug, "config.json"), ["rmsnorm", "layernorm"],
                              tp=list(tp))
    return docs


@pytest.mark.parametrize("slug", ["phi-2", "gpt2-large", "starcoder2-15b"])
def test_layernorm_models(tmp_path, slug):
    with open(os.path.join(CORPUS, slug, "facts.yaml")) as fh:
        norm = yaml.safe_load(fh)["norm"]
    assert norm["kind"] == "layernorm"
    docs = _docs(tmp_path, slug, tp=(1, 2))
    h = norm["hidden"]
    assert set(docs) == {f"layernorm_h{h}"}            # no rmsnorm / fused_add_rmsnorm, at any TP
    d = docs[f"layernorm_h{h}"]
    assert d["op_type"] == "layernorm"
    assert {"status:verified", "fi_api:flashinfer.norm.layernorm"} <= set(d["tags"])
    assert d["axes"]["hidden_size"] == {"type": "const", "value": h, "description": "Hidden dimension."}
    ns = {}
    exec(compile(d["reference"], d["name"], "exec"), ns)
    assert ns["EPS"] == pytest.approx(norm["eps"])


def test_layernorm_reference_matches_torch_and_flashinfer(tmp_path):
    flashinfer()
    from flashinfer.trace.templates.norm import layernorm_trace
    docs = _docs(tmp_path, "phi-2")
    d = docs["layernorm_h2560"]
    assert {k: (v["shape"], v["dtype"]) for k, v in d["inputs"].items()} == {
        "hidden_states": (["batch_size", "hidden_size"], "bfloat16"),
        "weight": (["hidden_size"], "float32"), "bias": (["hidden_size"], "float32")}
    torch.manual_seed(0)
    x = torch.randn(4, 2560, dtype=torch.bfloat16) * 3 + 1
    w, b = torch.randn(2560), torch.randn(2560)
    got = load_reference(d)(x, w, b)
    want = torch.nn.functional.layer_norm(x.float(), (2560,), w, b, eps=1e-5).to(torch.bfloat16)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    # FlashInfer's template fixes eps at 1e-6; phi-2's is 1e-5 (no visible difference at this scale)
    torch.testing.assert_close(got, layernorm_trace.reference(x, w, b), atol=5e-2, rtol=2e-2)
    with pytest.raises(AssertionError):
        load_reference(d)(torch.randn(2, 128), torch.randn(128), torch.randn(128))


