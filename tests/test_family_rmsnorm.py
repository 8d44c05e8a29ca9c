"""rmsnorm family: shapes per model, references against torch math, agreement with FlashInfer."""
import pytest
import torch

from conftest import load_reference
from fi_oracle import concrete_shape, const_axes, fi_trace, meta


def test_llama_and_deepseek_norms(compile_into):
    llama = compile_into("llama-3.1-8b", specs=["rmsnorm"])
    assert set(llama) == {"rmsnorm_h4096", "fused_add_rmsnorm_h4096"}
    ds = compile_into("deepseek-v3", specs=["rmsnorm"], tp=[8])
    # hidden norm plus MLA's q_lora (1536) and kv_lora (512) norms
    assert {"rmsnorm_h7168", "rmsnorm_h1536", "rmsnorm_h512", "fused_add_rmsnorm_h7168"} <= set(ds)
    qwen = compile_into("qwen3-30b-a3b", specs=["rmsnorm"])
    assert "rmsnorm_h128" in qwen  # per-head q/k norm


def test_references_match_torch(compile_into):
    docs = compile_into("llama-3.1-8b", specs=["rmsnorm"])
    torch.manual_seed(0)
    x = torch.randn(5, 4096, dtype=torch.bfloat16)
    r = torch.randn(5, 4096, dtype=torch.bfloat16)
    w = torch.randn(4096, dtype=torch.bfloat16)
    got = load_reference(docs["rmsnorm_h4096"])(x, w)
    want = torch.nn.functional.rms_norm(x.float(), (4096,), w.float(), eps=1e-5).to(torch.bfloat16)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    got = load_reference(docs["fused_add_rmsnorm_h4096"])(x, r, w)
    s = (x.float() + r.float()).to(torch.bfloat16).float()
    want = torch.nn.functional.rms_norm(s, (4096,), w.float(), eps=1e-5).to(torch.bfloat16)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    with pytest.raises(AssertionError):
        load_reference(docs["rmsnorm_h4096"])(torch.randn(2, 128), torch.randn(128))


@pytest.mark.parametrize("api,name,extra", [
    ("flashinfer.norm.rmsnorm", "rmsnorm_h4096", {}),
    ("flashinfer.norm.fused_add_rmsnorm", "fused_add_rmsnorm_h4096", {"residual": (7, 4096)}),
])
def test_agrees_with_flashinfer_template(compile_into, api, name, extra):
    ours = compile_into("llama-3.1-8b", specs=["rmsnorm"])[name]
    kwargs = {"input": meta((7, 4096), "bfloat16"), "weight": meta((4096,), "bfloat16")}
    kwargs.update({k: meta(v, "bfloat16") for k, v in extra.items()})
    theirs = fi_trace(api, **kwargs)
    assert theirs["name"] == ours["name"]
    assert theirs["op_type"] == ours["op_type"]
    assert const_axes(theirs) == const_axes(ours)
    for k, t in ours["inputs"].items():
        assert concrete_shape(theirs, theirs["inputs"][k]) == concrete_shape(ours, t)
        assert theirs["inputs"][k]["dtype"] == t["dtype"]
    assert concrete_shape(theirs, theirs["outputs"]["output"]) == concrete_shape(ours, ours["outputs"]["output"])
