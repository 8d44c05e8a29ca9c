"""activation and quantize families.

activation: which *_and_mul op and which per-rank widths each model gets, the references against
torch and FlashInfer's template references, agreement with the dumper (h = gated input width).
quantize: NVFP4/MXFP4 definitions gated by the quantization variant, dequantize(quantize(x)) ~ x
within FP4 error, exact rounding rules, and the documented differences from FlashInfer's template
and dumper (packed uint8 -> float4_e2m1 x2, linear scales, UE8M0 scales rounded up)."""

import pytest
import torch

from conftest import compile_defs, load_reference
from fi_oracle import const_axes, fi_trace, flashinfer, meta


def _names(tmp_path, model, spec, **kw):
    tag = "-".join(f"{k}{'_'.join(map(str, v))}" for k, v in sorted(kw.items()))   # no glob characters
    return compile_defs(tmp_path / f"{model}-{spec}-{tag}", model, specs=[spec], **kw)


def _valid(docs):
    from flashinfer_bench.data import Definition
    for doc in docs.values():
        assert Definition.model_validate(doc).name == doc["name"]


# == activation ====================================================================================

def test_activation_per_model(tmp_path):
    llama = _names(tmp_path, "llama-3.1-8b", "activation")
    assert set(llama) == {"silu_and_mul_h28672"}              # 2 * intermediate_size 14336, tp 1
    d = llama["silu_and_mul_h28672"]
    assert const_axes(d) == {"hidden_size": 28672, "hidden_div_2": 14336}
    assert d["inputs"]["input"]["shape"] == ["num_tokens", "hidden_size"]
    assert d["outputs"]["output"]["shape"] == ["num_tokens", "hidden_div_2"]
    assert {"fi_api:flashinfer.activation.silu_and_mul", "fused", "tp:1"} <= set(d["tags"])
    # per rank: tp 4 splits the gate/up projection
    assert set(_names(tmp_path, "llama-3.1-8b", "activation", tp=[4])) == {"silu_and_mul_h7168"}
    # Gemma-3: config.json omits hidden_activation; transformers' default gelu_pytorch_tanh applies
    gemma = _names(tmp_path, "gemma-3-27b", "activation")
    assert set(gemma) == {"gelu_tanh_and_mul_h43008"}
    assert "fi_api:flashinfer.activation.gelu_tanh_and_mul" in gemma["gelu_tanh_and_mul_h43008"]["tags"]
    # Qwen3-Next at the cookbook's tp 2 / tp 4: routed experts (512/tp) and the shared expert
    # (shared_expert_intermediate_size 512, also /tp) have the same width per rank
    qn = _names(tmp_path, "qwen3-next-80b-a3b", "activation")
    assert set(qn) == {"silu_and_mul_h512", "silu_and_mul_h256"}
    # DeepSeek-V3 tp8: dense layers (18432/8), routed experts (2048/moe_tp: ep1 -> /8, ep8 -> /1),
    # shared expert (1 * 2048 / 8)
    ds = _names(tmp_path, "deepseek-v3", "activation", tp=[8], ep=[1, 8])
    assert set(ds) == {"silu_and_mul_h4608", "silu_and_mul_h512", "silu_and_mul_h4096"}
    assert "ep:8" in ds["silu_and_mul_h4096"]["tags"]
    # relu2 MLP (Nemotron-H) and gpt-oss's clamped SwiGLU experts: no *_and_mul definition
    assert _names(tmp_path, "nemotron-h-8b", "activation") == {}
    assert _names(tmp_path, "gpt-oss-20b", "activation") == {}
    _valid({**llama, **gemma, **qn, **ds})



# -- corpus models (tests/corpus: hand facts from each model's SGLang implementation) -------------

import json
import os

import yaml

from conftest import ROOT, compile_planned

CORPUS = os.path.join(ROOT, "tests", "corpus")
ACT_KERNEL = {"silu": "silu_and_mul", "gelu_tanh": "gelu_tanh_and_mul", "gelu": "gelu_and_mul"}


def _corpus(slug):
    with open(os.path.join(CORPUS, slug, "facts.yaml")) as fh:
        return yaml.safe_load(fh)


def _planned(tmp_path, model, spec, tp=(1,)):
    from defc.compiler.pipeline import CompileOptions, compile_model
    return compile_model(CompileOptions(model=model, specs=[spec], tp=list(tp), out=str(tmp_path / "o")))


@pytest.mark.parametrize("slug", ["deepseek-v2", "deepseek-v2-lite", "gemma-2-9b", "glm-4-9b-chat", "kimi-k2.5",
                                  "kimi-linear-48b-a3b", "laguna-xs.2", "mimo-v2-flash", "mistral-7b-v0.1",
                                  "mistral-small-3.1-24b", "mixtral-8x7b", "olmo-2-7b", "qwen1.5-moe-a2.7b",
                                  "qwen2.5-vl-7b", "qwen3.5-27b", "qwen3.5-35b-a3b"])
def test_corpus_gated_activations_follow_the_hand_facts(tmp_path, slug):
    """At tp 1: the dense MLP (2 * intermediate), the routed experts (2 * expert_intermediate) and
    the shared experts (2 * their total intermediate), each with the kernel of the MLP's act."""
    f = _corpus(slug)
    mlp, moe = f.get("mlp"), f.get("moe")
    act = (mlp or {}).get("act", "silu")       # the MoE-only corpus models all run SiLU experts
    widths = set()
    if mlp:
        assert mlp["kind"] == "gated"
        widths.add(2 * mlp["intermediate"])
    if moe:
        widths.add(2 * moe["expert_intermediate"])
        if moe.get("shared_experts"):
            widths.add(2 * moe["shared_experts"]["intermediate"])
    docs, _ = compile_planned(tmp_path, os.path.join(CORPUS, slug, "config.json"), ["activation"])
    assert set(docs) == {f"{ACT_KERNEL[act]}_h{w}" for w in widths}


@pytest.mark.parametrize("slug", ["phi-2", "gpt2-large", "starcoder2-15b", "nemotron-3-nano-30b-a3b"])
def test_corpus_non_gated_mlps_have_no_activation_definition(tmp_path, slug):
    """GPT-2 / Phi / Starcoder2 (fc1 -> GELU -> fc2) and Nemotron-3-Nano (relu2 experts and shared
    expert, facts.yaml moe_layers): SGLang runs these without a FlashInfer kernel, and FlashInfer
    has no non-gated activation API, so nothing is emitted and nothing is missing."""
    f = _corpus(slug)
    assert (f.get("mlp") or {}).get("kind", "non_gated") == "non_gated"
    res = _planned(tmp_path, os.path.join(CORPUS, slug, "config.json"), "activation", tp=f["tp"][:2])
    assert not res.planned
    assert not [x for x in res.findings if x.subject == "activation"]


def _llama_like(tmp_path, **changes):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 100,
           "hidden_act": "silu"}
    cfg.update(changes)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return str(p)


@pytest.mark.parametrize("act,why", [
    ("relu", "the gated MLP's activation relu has no FlashInfer *_and_mul kernel"),
    (None, "config.json names no MLP activation"),
])
def test_unknown_or_missing_gated_activation_is_a_gap(tmp_path, act, why):
    res = _planned(tmp_path, _llama_like(tmp_path, hidden_act=act), "activation")
    assert not res.planned
    gaps = [x for x in res.findings if x.kind == "gap" and x.subject == "activation"]
    assert len(gaps) == 1 and why in gaps[0].message


@pytest.mark.parametrize("act,kernel", [("gelu_new", "gelu_tanh_and_mul"), ("gelu_pytorch_tanh", "gelu_tanh_and_mul"),
                                        ("gelu", "gelu_and_mul"), ("swish", "silu_and_mul")])
def test_hidden_act_spellings(tmp_path, act, kernel):
    docs, _ = compile_planned(tmp_path, _llama_like(tmp_path, hidden_act=act), ["activation"])
    assert set(docs) == {f"{kernel}_h1024"}


def test_architecture_row_names_the_activation_sglang_hard_codes(tmp_path):
    # GLM-4.6's and Mixtral-8x22B's catalogue configs carry no hidden_act; SGLang's Glm4Moe MLPs and
    # Mixtral's FusedMoE run SiLU whatever the config says
    glm = _names(tmp_path, "glm-4.6", "activation", tp=[8], ep=[1])
    # tp 8: dense layers 2 * 12288 / 8, routed and shared experts 2 * 1536 / 8
    assert set(glm) == {"silu_and_mul_h3072", "silu_and_mul_h384"}
    mix = _names(tmp_path, "mixtral-8x22b", "activation", tp=[8])
    assert set(mix) == {"silu_and_mul_h4096"}               # routed experts 2 * 16384 / 8
    # Llama-4's always-on shared expert (intermediate_size, split by tp) besides the routed experts
    # (split by tp / ep): at tp 8 ep 8 they differ
    l4 = _names(tmp_path, "llama-4-scout", "activation", tp=[8], ep=[8])
    assert set(l4) == {"silu_and_mul_h2048", "silu_and_mul_h16384"}


@pytest.mark.parametrize("model,name,torch_act,fi_ref", [
    ("llama-3.1-8b", "silu_and_mul_h28672", lambda x: torch.nn.functional.silu(x), "silu_and_mul_trace"),
    ("gemma-3-27b", "gelu_tanh_and_mul_h43008", lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
     "gelu_tanh_and_mul_trace"),
])
def test_activation_reference(tmp_path, model, name, torch_act, fi_ref):
    d = _names(tmp_path, model, "activation")[name]
    half = d["axes"]["hidden_div_2"]["value"]
    run = load_reference(d)
    x = (torch.randn(3, 2 * half) * 3).to(torch.bfloat16)
    got = run(x)
    assert got.dtype == torch.bfloat16 and got.shape == (3, half)
    want = (torch_act(x[:, :half].float()) * x[:, half:].float()).to(torch.bfloat16)
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)
    flashinfer()
    from flashinfer.trace.templates import activation
    torch.testing.assert_close(got.float(), getattr(activation, fi_ref).reference(x).float(), atol=5e-2, rtol=2e-2)
    with pytest.raises(AssertionError):
        run(x[:, :-2])


def test_gelu_and_mul_reference(tmp_path):
    """Exact-GeLU models: a catalogue config with hidden_act 'gelu' gets gelu_and_mul."""
    import json
    from defc.compiler.models import load_catalogue_entry
    cfg = dict(load_catalogue_entry("llama-3.2-3b").config, hidden_act="gelu")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(cfg))
    docs = compile_defs(tmp_path / "out", str(tmp_path / "cfg"), specs=["activation"])
    assert set(docs) == {"gelu_and_mul_h16384"}
    run = load_reference(docs["gelu_and_mul_h16384"])
    x = torch.randn(2, 16384).to(torch.bfloat16)
    flashinfer()
    from flashinfer.trace.templates.activation import gelu_and_mul_trace
    torch.testing.assert_close(run(x).float(), gelu_and_mul_trace.reference(x).float(), atol=5e-2, rtol=2e-2)
    want = (torch.nn.functional.gelu(x[:, :8192].float()) * x[:, 8192:].float()).to(torch.bfloat16)
    torch.testing.assert_close(run(x), want, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("api,model,name", [
    ("flashinfer.activation.silu_and_mul", "llama-3.1-8b", "silu_and_mul_h28672"),
    ("flashinfer.activation.gelu_tanh_and_mul", "gemma-3-27b", "gelu_tanh_and_mul_h43008"),
])
def test_activation_agrees_with_dumper(tmp_path, api, model, name):
    ours = _names(tmp_path, model, "activation")[name]
    h = ours["axes"]["hidden_size"]["value"]
    theirs = fi_trace(api, input=meta((7, h), "bfloat16"))
    assert theirs["name"] == ours["name"] and theirs["op_type"] == ours["op_type"]
    assert theirs["constraints"] == ours["constraints"]
    # documented: hidden_div_2 is var in FlashInfer (output-only, unbindable), const here
    assert const_axes(theirs) == {"hidden_size": h}
    assert const_axes(ours) == {"hidden_size": h, "hidden_div_2": h // 2}
    assert theirs["axes"]["hidden_div_2"]["type"] == "var"
    for sect in ("inputs", "outputs"):
        assert {k: (v["shape"], v["dtype"]) for k, v in theirs[sect].items()} == \
               {k: (v["shape"], v["dtype"]) for k, v in ours[sect].items()}
    assert {t for t in theirs["tags"]} == {t for t in ours["tags"] if not t.startswith(("model:", "tp:"))}


# == quantize ======================================================================================

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _unpack(packed_u8):
    """uint8 [M, K/2] -> float values of the codes [M, K] (low nibble = even column)."""
    codes = torch.stack([packed_u8 & 0xF, packed_u8 >> 4], dim=-1).reshape(packed_u8.shape[0], -1)
    mag = E2M1[(codes & 7).long()]
    return torch.where((codes & 8) > 0, -mag, mag)


def _dequant(quantized, scales, block, gs=1.0):
    vals = _unpack(quantized.view(torch.uint8))
    if scales.dtype == torch.float8_e4m3fn:
        s = scales.float()
    else:
        s = torch.exp2(scales.view(torch.uint8).float() - 127)
    M, K = vals.shape
    return (vals.reshape(M, K // block, block) * s[..., None] / gs).reshape(M, K), s / gs


@pytest.fixture(scope="module")
def quant_defs(tmp_path_factory):
    t = tmp_path_factory.mktemp("quant")
    return {
        "nvfp4": compile_defs(t / "nv", "deepseek-v3", specs=["quantize"], quantization=["nvfp4"]),
        "own_gptoss": compile_defs(t / "gptoss", "gpt-oss-20b", specs=["quantize"]),
        "bf16": compile_defs(t / "llama", "llama-3.1-8b", specs=["quantize"]),
        "all": compile_defs(t / "all", "qwen3-8b", specs=["quantize"], quantization=["all"]),
    }


def test_quantize_gated_by_variant(quant_defs):
    assert set(quant_defs["nvfp4"]) == {"nvfp4_quantize_k7168"}
    assert set(quant_defs["own_gptoss"]) == {"mxfp4_quantize_k2880"}     # gpt-oss is MXFP4 itself
    assert quant_defs["bf16"] == {}
    assert set(quant_defs["all"]) == {"nvfp4_quantize_k4096", "mxfp4_quantize_k4096"}
    nv = quant_defs["nvfp4"]["nvfp4_quantize_k7168"]
    assert const_axes(nv) == {"K": 7168, "K_packed": 3584, "K_blocks": 448, "one": 1}
    assert {k: (v["shape"], v["dtype"]) for k, v in nv["outputs"].items()} == {
        "quantized": (["M", "K_packed"], "float4_e2m1"), "scales": (["M", "K_blocks"], "float8_e4m3fn")}
    assert nv["inputs"]["global_scale"]["shape"] == ["one"]
    mx = quant_defs["own_gptoss"]["mxfp4_quantize_k2880"]
    assert const_axes(mx) == {"K": 2880, "K_packed": 1440, "K_blocks": 90}
    assert mx["outputs"]["scales"]["dtype"] == "int8" and list(mx["inputs"]) == ["input"]
    assert "quantization:nvfp4" in nv["tags"] and "quantization:mxfp4" in mx["tags"]
    for docs in quant_defs.values():
        _valid(docs)


def test_reference_output_dtypes_match_definition(quant_defs):
    from flashinfer_bench.data import Definition
    for name, doc in {**quant_defs["nvfp4"], **quant_defs["own_gptoss"]}.items():
        d = Definition.model_validate(doc)
        run = load_reference(doc)
        K = doc["axes"]["K"]["value"]
        x = torch.randn(3, K).to(torch.bfloat16)
        args = [x] + ([torch.tensor([448.0 * 6 / float(x.float().abs().max())])] if "global_scale" in doc["inputs"] else [])
        outs = run(*args)
        assert [o.dtype for o in outs] == list(d.torch_output_dtypes)
        shapes = d.get_output_shapes({"M": 3})
        assert [tuple(o.shape) for o in outs] == [tuple(s) for s in (shapes.values() if isinstance(shapes, dict) else shapes)]


def test_nvfp4_roundtrip_and_flashinfer_reference(quant_defs):
    run = load_reference(quant_defs["nvfp4"]["nvfp4_quantize_k7168"])
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(5, 7168, generator=g) * torch.rand(5, 1, generator=g) * 4).to(torch.bfloat16)
    x[2, :16] = 0                                                    # an all-zero block
    gs = torch.tensor([448.0 * 6.0 / float(x.float().abs().max())])
    q, s = run(x, gs)
    assert q.dtype == torch.float4_e2m1fn_x2 and q.shape == (5, 3584)
    assert s.dtype == torch.float8_e4m3fn and s.shape == (5, 448)
    deq, step = _dequant(q, s, 16, float(gs))
    err = (deq - x.float()).abs().reshape(5, 448, 16)
    # rounding to the e2m1 grid moves a value by at most one scale step (half the 4->6 gap)
    assert bool((err <= step[..., None] * 1.0001 + 1e-12).all())
    assert float((deq - x.float()).norm() / x.float().norm()) < 0.12
    assert torch.equal(deq[2, :16], torch.zeros(16))
    # block scale is e4m3(global_scale * amax / 6)
    amax = x.float().reshape(5, 448, 16).abs().amax(-1)
    assert torch.equal(s.float(), (float(gs) * amax / 6).to(torch.float8_e4m3fn).float())
    # FlashInfer's template reference: same scales, same values except where it breaks a tie differently
    flashinfer()
    from flashinfer.trace.templates.quantize import fp4_quantize_trace
    fq, fs = fp4_quantize_trace.reference(x, global_scale=gs, sf_vec_size=16, sf_use_ue8m0=False)
    assert torch.equal(fs.float(), s.float())
    fdeq, _ = _dequant(fq, fs, 16, float(gs))
    assert float((fdeq != deq).float().mean()) < 0.01


def test_mxfp4_roundtrip_rounding_and_flashinfer_reference(quant_defs):
    run = load_reference(quant_defs["own_gptoss"]["mxfp4_quantize_k2880"])
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 2880, generator=g) * 3).to(torch.bfloat16)
    # block 0 of row 0: amax 6 -> scale 2^0; every e2m1 tie once, each side
    ties = [6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5, 7e-3]
    x[0, :32] = 0
    x[0, :16] = torch.tensor(ties, dtype=torch.bfloat16)
    x[1, 32:64] = 0                                                  # an all-zero block
    q, s = run(x)
    assert q.dtype == torch.float4_e2m1fn_x2 and q.shape == (4, 1440) and s.dtype == torch.int8 and s.shape == (4, 90)
    deq, step = _dequant(q, s, 32)
    # ties to the even code: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4
    assert deq[0, :16].tolist() == [6, 0, 1, 1, 2, 2, 4, 4, 0, -1, -1, -2, -2, -4, -4, 0]
    assert int(s.view(torch.uint8)[0, 0]) == 127
    assert torch.equal(deq[1, 32:64], torch.zeros(32)) and int(s.view(torch.uint8)[1, 1]) == 0
    # UE8M0 scale = 2^ceil(log2(amax / 6)): nothing saturates, error <= one scale step
    amax = x.float().reshape(4, 90, 32).abs().amax(-1)
    nz = amax > 0
    assert torch.equal(step[nz], torch.exp2(torch.ceil(torch.log2(amax[nz] / 6))))
    assert bool((amax[nz] <= 6 * step[nz]).all())
    err = (deq - x.float()).abs().reshape(4, 90, 32)
    assert bool((err <= step[..., None]).all())
    assert float((deq - x.float()).norm() / x.float().norm()) < 0.2
    # FlashInfer 0.7.2's template reference rounds the exponent down instead (documented):
    # its scale is ours or half of it, equal exactly when amax/6 is a power of two
    flashinfer()
    from flashinfer.trace.templates.quantize import fp4_quantize_trace
    fq, fs = fp4_quantize_trace.reference(x, sf_vec_size=32, sf_use_ue8m0=True)
    diff = s.view(torch.uint8).int() - fs.view(torch.uint8).int()
    pow2 = (torch.log2(amax / 6) == torch.floor(torch.log2(amax / 6))) & nz
    assert bool((diff[nz & ~pow2] == 1).all()) and bool((diff[pow2] == 0).all())


@pytest.mark.parametrize("api,key,kwargs", [
    ("flashinfer.nvfp4_quantize", "nvfp4", lambda K: dict(a=meta((7, K), "bfloat16"), a_global_sf=meta((1,), "float32"))),
    ("flashinfer.mxfp4_quantize", "own_gptoss", lambda K: dict(a=meta((7, K), "bfloat16"))),
])
def test_quantize_agrees_with_dumper(quant_defs, api, key, kwargs):
    (ours,) = quant_defs[key].values()
    K = ours["axes"]["K"]["value"]
    theirs = fi_trace(api, **kwargs(K))
    assert theirs["name"] == ours["name"] and theirs["op_type"] == ours["op_type"]
    assert const_axes(theirs) == {"K": K}
    # documented: packed uint8 -> float4_e2m1 (x2) on the same [M, K/2]; flat uint8 scales ->
    # [M, K/block] e4m3 / int8 in linear layout; K_packed const here
    assert theirs["outputs"]["quantized"]["shape"] == ours["outputs"]["quantized"]["shape"] == ["M", "K_packed"]
    assert theirs["outputs"]["quantized"]["dtype"] == "uint8" and ours["outputs"]["quantized"]["dtype"] == "float4_e2m1"
    assert theirs["outputs"]["scales"]["shape"] == ["num_scale_elems"]
    assert theirs["axes"]["K_packed"]["type"] == "var" and ours["axes"]["K_packed"]["value"] == K // 2
    ti = {k: v for k, v in theirs["inputs"].items() if v["shape"] is not None}   # drop the sf_vec_size scalar
    assert [v["shape"] for v in ti.values()] == [v["shape"] for v in ours["inputs"].values()]
    assert [v["dtype"] for v in ti.values()] == [v["dtype"] for v in ours["inputs"].values()]
    assert [t for t in theirs["tags"] if t.startswith("quantization:")] == \
           [t for t in ours["tags"] if t.startswith("quantization:")]
