"""rmsnorm family: shapes per model, references against torch math, agreement with FlashInfer."""
import pytest
import torch

from conftest import load_reference
from fi_oracle import concrete_shape, const_axes, fi_trace, meta



def assert_same_signature(theirs, ours):
    """FlashInfer's dumped definition and ours: the same name, op_type, const axes, and inputs and
    output of the same concrete shapes (and input dtypes)."""
    assert theirs["name"] == ours["name"]
    assert theirs["op_type"] == ours["op_type"]
    assert const_axes(theirs) == const_axes(ours)
    for k, t in ours["inputs"].items():
        assert concrete_shape(theirs, theirs["inputs"][k]) == concrete_shape(ours, t)
        assert theirs["inputs"][k]["dtype"] == t["dtype"]
    assert concrete_shape(theirs, theirs["outputs"]["output"]) == concrete_shape(ours, ours["outputs"]["output"])

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
    assert_same_signature(theirs, ours)


# == Gemma-style norms (x / RMS(x) * (1 + w)), full-width q/k norms, LayerNorm =====================

import json
import os

import yaml

from conftest import ROOT, compile_planned

CORPUS = os.path.join(ROOT, "tests", "corpus")
NORM_PREFIX = {"rmsnorm": "rmsnorm", "gemma_rmsnorm": "gemma_rmsnorm", "layernorm": "layernorm"}


def _corpus_facts(slug):
    with open(os.path.join(CORPUS, slug, "facts.yaml")) as fh:
        return yaml.safe_load(fh)


def _norm_docs(tmp_path, model, tp=(1,)):
    docs, _ = compile_planned(tmp_path, model, ["rmsnorm", "layernorm"], tp=list(tp))
    return docs


def _eps(doc):
    ns = {}
    exec(compile(doc["reference"], doc["name"], "exec"), ns)
    return ns["EPS"]


@pytest.mark.parametrize("slug", ["gemma-2-9b", "qwen3.5-27b", "qwen3.5-35b-a3b", "phi-2", "gpt2-large",
                                  "starcoder2-15b", "olmo-2-7b", "laguna-xs.2", "deepseek-v2",
                                  "deepseek-v2-lite", "mistral-7b-v0.1", "glm-4-9b-chat"])
def test_corpus_norms_follow_the_hand_facts(tmp_path, slug):
    """The norm definitions of a corpus model, worked out from its hand-written facts (SGLang's
    norm classes): the hidden norm's kind and width, the fused residual-add form for RMS kinds,
    q/k norms of the same kind, MLA's lora norms, and eps from config.json."""
    f = _corpus_facts(slug)
    docs = _norm_docs(tmp_path, os.path.join(CORPUS, slug, "config.json"))
    prefix, hidden = NORM_PREFIX[f["norm"]["kind"]], f["norm"]["hidden"]
    want = {f"{prefix}_h{hidden}"}
    if prefix != "layernorm":
        want.add(f"{prefix.replace('rmsnorm', 'fused_add_rmsnorm')}_h{hidden}")
    att = f.get("attention") or {}
    if att.get("qk_norm") == "per_head":
        want.add(f"{prefix}_h{att['head_dim']}")
    if att.get("qk_norm") == "full":      # OLMo-2: all-gathered, one norm over each full projection width
        want |= {f"{prefix}_h{att['num_attention_heads'] * att['head_dim']}",
                 f"{prefix}_h{att['num_kv_heads'] * att['head_dim']}"}
    mla = f.get("mla") or {}
    for rank in (mla.get("q_lora_rank"), mla.get("kv_lora_rank")):
        if rank:
            want.add(f"rmsnorm_h{rank}")
    assert set(docs) == want
    for d in docs.values():
        assert _eps(d) == pytest.approx(f["norm"]["eps"])
        assert d["op_type"] == ("layernorm" if prefix == "layernorm" else "rmsnorm")


def test_catalogue_gemma_norm_models(tmp_path):
    # Gemma-3-27B (hidden 5376, head_dim 128) and Qwen3-Next (hidden 2048, head_dim 256): every
    # norm, the per-head q/k norms included, is Gemma-style (SGLang Gemma3RMSNorm / GemmaRMSNorm)
    g3 = _norm_docs(tmp_path / "g3", "gemma-3-27b")
    assert set(g3) == {"gemma_rmsnorm_h5376", "gemma_fused_add_rmsnorm_h5376", "gemma_rmsnorm_h128"}
    nx = _norm_docs(tmp_path / "nx", "qwen3-next-80b-a3b", tp=(2, 4))
    assert set(nx) == {"gemma_rmsnorm_h2048", "gemma_fused_add_rmsnorm_h2048", "gemma_rmsnorm_h256"}
    assert "per-head q/k norm" in g3["gemma_rmsnorm_h128"]["description"]
    assert g3["gemma_rmsnorm_h128"]["op_type"] == "rmsnorm"
    assert "fi_api:flashinfer.norm.gemma_rmsnorm" in g3["gemma_rmsnorm_h128"]["tags"]
    assert "fi_api:flashinfer.norm.gemma_fused_add_rmsnorm" in g3["gemma_fused_add_rmsnorm_h5376"]["tags"]


def _with(config_path, tmp_path, **changes):
    with open(config_path) as fh:
        cfg = json.load(fh)
    cfg.update(changes)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def test_full_width_qk_norms(tmp_path):
    """OLMo-2 all-gathers q and k, so each rank runs one RMSNorm over each full width at any TP;
    MiniMax-M2 normalizes its shard with an all-reduced sum of squares: a FlashInfer RMSNorm only
    at attention-TP 1, otherwise the unmodelled use_qk_norm row warns."""
    from defc.compiler.pipeline import CompileOptions, compile_model
    # a GQA variant of OLMo-2-7B (8 KV heads) tells the q width (32 * 128) from the k width (8 * 128)
    cfg = _with(os.path.join(CORPUS, "olmo-2-7b", "config.json"), tmp_path, num_key_value_heads=8)
    for tp in (1, 4):
        docs = _norm_docs(tmp_path / f"olmo{tp}", cfg, tp=(tp,))
        assert {"rmsnorm_h4096", "rmsnorm_h1024"} <= set(docs)
        assert "full-width k norm" in docs["rmsnorm_h1024"]["description"]
    mm1 = _norm_docs(tmp_path / "mm1", "minimax-m2", tp=(1,))
    assert {"rmsnorm_h6144", "rmsnorm_h1024"} <= set(mm1)          # 48 * 128 and 8 * 128
    res = compile_model(CompileOptions(model="minimax-m2", specs=["rmsnorm"], tp=[4], out=str(tmp_path / "o")))
    assert {p.doc["name"] for p in res.planned} == {"rmsnorm_h3072", "fused_add_rmsnorm_h3072"}
    said = [f for f in res.findings if f.subject == "use_qk_norm"]
    assert said and said[0].kind == "unmodelled" and "all-reduced" in said[0].message
    # Llama-4's weightless L2 q/k norm: the same warning, and no norm definition of head_dim
    res = compile_model(CompileOptions(model="llama-4-scout", specs=["rmsnorm"], out=str(tmp_path / "l4")))
    assert [f.kind for f in res.findings if f.subject == "use_qk_norm"] == ["unmodelled"]
    assert {p.doc["name"] for p in res.planned} == {"rmsnorm_h5120", "fused_add_rmsnorm_h5120"}


def test_gemma_references_match_torch_and_flashinfer(tmp_path):
    from flashinfer.trace.templates import norm as flashinfer_mod
    docs = _norm_docs(tmp_path, os.path.join(CORPUS, "gemma-2-9b", "config.json"))    # eps 1e-6, as FlashInfer's templates
    torch.manual_seed(0)
    x = torch.randn(5, 3584, dtype=torch.bfloat16)
    r = torch.randn(5, 3584, dtype=torch.bfloat16)
    w = (torch.randn(3584) * 0.1).to(torch.bfloat16)
    got = load_reference(docs["gemma_rmsnorm_h3584"])(x, w)
    want = torch.nn.functional.rms_norm(x.float(), (3584,), 1.0 + w.float(), eps=1e-6).to(torch.bfloat16)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got, flashinfer_mod.gemma_rmsnorm_trace.reference(x, w), atol=2e-2, rtol=2e-2)
    got = load_reference(docs["gemma_fused_add_rmsnorm_h3584"])(x, r, w)
    s = (x.float() + r.float()).to(torch.bfloat16).float()
    want = torch.nn.functional.rms_norm(s, (3584,), 1.0 + w.float(), eps=1e-6).to(torch.bfloat16)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got, flashinfer_mod.gemma_fused_add_rmsnorm_trace.reference(x, r, w),
                               atol=3e-2, rtol=3e-2)
    # not a plain RMSNorm, which would scale by w instead of 1 + w
    plain = torch.nn.functional.rms_norm(s, (3584,), w.float(), eps=1e-6)
    assert not torch.allclose(got.float(), plain, atol=1e-1)


@pytest.mark.parametrize("model,api,name,kwargs", [
    ("gemma-2-9b", "flashinfer.norm.gemma_rmsnorm", "gemma_rmsnorm_h3584",
     {"input": ((7, 3584), "bfloat16"), "weight": ((3584,), "bfloat16")}),
    ("gemma-2-9b", "flashinfer.norm.gemma_fused_add_rmsnorm", "gemma_fused_add_rmsnorm_h3584",
     {"input": ((7, 3584), "bfloat16"), "residual": ((7, 3584), "bfloat16"), "weight": ((3584,), "bfloat16")}),
    ("phi-2", "flashinfer.norm.layernorm", "layernorm_h2560",      # the layernorm family (norm_kind "layernorm")
     {"input": ((7, 2560), "bfloat16"), "gemma": ((2560,), "float32"), "beta": ((2560,), "float32")}),
])
def test_gemma_norms_and_layernorm_agree_with_fi_trace(tmp_path, model, api, name, kwargs):
    ours = _norm_docs(tmp_path, os.path.join(CORPUS, model, "config.json"))[name]
    theirs = fi_trace(api, **{k: meta(s, dt) for k, (s, dt) in kwargs.items()})
    assert_same_signature(theirs, ours)
    assert theirs["outputs"]["output"]["dtype"] == ours["outputs"]["output"]["dtype"]
    # the fused form's in-place residual output is a documented difference (dump_differences)
    assert set(theirs["outputs"]) - set(ours["outputs"]) <= {"residual"}
