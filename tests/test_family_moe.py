"""moe family: curated shapes, per-model routing, references against an independent torch formulation
and FlashInfer's template references, and agreement with FlashInfer's .fi_trace() dumper."""
import functools
import json
import math
import os

import pytest
import torch

from conftest import golden_definition, load_reference
from fi_oracle import concrete_shape, const_axes, fi_trace, flashinfer, meta

F8 = torch.float8_e4m3fn
GOLDEN = [
    "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048",
    "moe_fp8_block_scale_renorm_topk8_e128_h2048_i768",
    "trtllm_fp4_block_scale_moe_topk8_e128_h2048_i768",
    "trtllm_fp4_block_scale_routed_moe_topk8_e128_h2048_i768",
    "trtllm_fp8_per_tensor_scale_moe_topk8_e128_h2048_i768",
]


# ---------------------------------------------------------------------------------------------
# compiling

@pytest.fixture(scope="module", autouse=True)
def _snapshot_once():
    """Read the bundled cookbook snapshot once for this module (parsing it takes seconds per compile)."""
    import defc.compiler.serving as serving
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serving, "load_snapshot", functools.lru_cache(maxsize=None)(serving.load_snapshot))
        yield


def _compile(tmp_path, model, sub, config=None, **kw):
    """Compile the moe spec only; return ({name: doc}, {name: [alias names]})."""
    from defc.compiler.pipeline import CompileOptions, compile_model, write_planned
    out = os.path.join(str(tmp_path), sub)
    cfg_path = None
    if config is not None:
        cfg_path = os.path.join(str(tmp_path), f"{sub}.config.json")
        with open(cfg_path, "w") as fh:
            json.dump(config, fh)
    opts = CompileOptions(model=model, config=cfg_path, specs=["moe"], out=out, **kw)
    result = compile_model(opts)
    write_planned(result)
    docs = {p.doc["name"]: p.doc for p in result.planned}
    aliases = {n: [a["name"] for a in insts[0].aliases] for n, insts in result.instances.items()}
    return docs, aliases


def _structure(d):
    io = lambda sect: {k: (tuple(v["shape"] or ()), v["dtype"]) for k, v in d[sect].items()}
    return (d["op_type"], {k: (v["type"], v.get("value")) for k, v in d["axes"].items()}, io("inputs"), io("outputs"))


def _golden(name):
    return golden_definition(name)      # vendored facts: tests/data/golden_definitions.json


def _validate(docs):
    from flashinfer_bench.data import Definition
    for d in docs.values():
        Definition.model_validate(d)
        assert callable(load_reference(d))


def test_golden_definitions_exact(tmp_path):
    ds, _ = _compile(tmp_path, "deepseek-v3", "ds", tp=[8], ep=[8], quantization=["all"])
    qwen, _ = _compile(tmp_path, "qwen3-30b-a3b", "qwen", quantization=["all"])
    both = {**ds, **qwen}
    for name in GOLDEN:
        g = _golden(name)
        assert name in both, name
        assert _structure(both[name]) == _structure(g), name
        ours_tags = set(both[name]["tags"])
        for t in g["tags"]:
            if t.startswith(("quantization:", "fi_api:", "gpu:", "routing:", "ep:", "tp:", "status:")):
                assert t in ours_tags, (name, t)
    # DeepSeek at tp8/ep8 has only DeepSeek routing, Qwen3 only Renormalize
    assert not any("renorm" in n for n in ds) and not any("ds_routing" in n for n in qwen)
    _validate(ds)
    _validate(qwen)


def test_deepseek_cookbook_default(tmp_path):
    docs, aliases = _compile(tmp_path, "deepseek-v3", "d")
    # cookbook (R1-0528 recipe): tp8, tp8+dp8-attention (same MoE shapes), tp8 ep8; all fp8
    assert set(docs) == {"moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e256_h7168_i256",
                         "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"}
    ep1 = docs["moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e256_h7168_i256"]
    assert const_axes(ep1)["num_local_experts"] == 256 and const_axes(ep1)["intermediate_size"] == 256
    assert {"ep:1", "tp:8"} <= set(ep1["tags"])
    ep8 = docs["moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"]
    assert {"ep:8", "tp:8", "quantization:float8_e4m3fn"} <= set(ep8["tags"])
    assert "N_GROUP = 8" in ep8["reference"] and "TOPK_GROUP = 4" in ep8["reference"]
    _validate(docs)


def test_routing_per_model(tmp_path):
    kimi, _ = _compile(tmp_path, "kimi-k2", "kimi", quantization=["all"])
    # SGLang passes DeepSeekV3 routing for Kimi-K2 (n_group 1 / topk_group 1); cookbook tp8 and tp8 ep4
    assert {"moe_fp8_block_scale_ds_routing_topk8_ng1_kg1_e384_h7168_i256",
            "moe_fp8_block_scale_ds_routing_topk8_ng1_kg1_e96_h7168_i1024",
            "moe_fp4_block_scale_ds_routing_topk8_e96_h7168_i1024_ng1_kg1",
            "trtllm_fp4_block_scale_routed_moe_topk8_e96_h7168_i1024"} <= set(kimi)
    assert not any("per_tensor" in n for n in kimi)

    nxt, nxt_alias = _compile(tmp_path, "qwen3-next-80b-a3b", "next", quantization=["all"])
    # RenormalizeNaive (SGLang's Qwen2MoeSparseMoeBlock); cookbook tp2 and tp4
    assert {"moe_fp8_block_scale_renormalize_naive_routing_topk10_e512_h2048_i256",
            "moe_fp8_block_scale_renormalize_naive_routing_topk10_e512_h2048_i128",
            "trtllm_fp8_per_tensor_scale_moe_topk10_e512_h2048_i256",
            "moe_fp4_block_scale_renormalize_naive_routing_topk10_e512_h2048_i256",
            "trtllm_bf16_moe_topk10_e512_h2048_i128"} <= set(nxt)
    assert "ROUTING = 'renorm_naive'" in nxt["trtllm_bf16_moe_topk10_e512_h2048_i128"]["reference"]

    llama, _ = _compile(tmp_path, "llama-4-scout", "llama", quantization=["all"])
    assert {"moe_fp8_block_scale_llama4_routing_topk1_e16_h5120_i1024",
            "trtllm_fp8_per_tensor_scale_moe_topk1_e16_h5120_i1024",
            "moe_fp4_block_scale_llama4_routing_topk1_e16_h5120_i1024",
            "trtllm_bf16_moe_topk1_e16_h5120_i1024"} <= set(llama)

    oss, _ = _compile(tmp_path, "gpt-oss-20b", "oss")
    # own quantization mxfp4: the FP4 APIs are the only ones with expert biases (SGLang: routed MoE)
    assert set(oss) == {"trtllm_fp4_block_scale_moe_topk4_e32_h2880_i2880",
                        "trtllm_fp4_block_scale_routed_moe_topk4_e32_h2880_i2880"}
    routed = oss["trtllm_fp4_block_scale_routed_moe_topk4_e32_h2880_i2880"]
    assert {"gemm1_bias", "gemm1_alpha", "gemm1_beta", "gemm1_clamp_limit", "gemm2_bias"} <= set(routed["inputs"])
    assert {"quantization:float4_e2m1fn_mxfp4", "routing:pre-computed", "gpu:sm100"} <= set(routed["tags"])
    oss_all, _ = _compile(tmp_path, "gpt-oss-20b", "oss_all", quantization=["all"])
    # hidden 2880 is no multiple of 128: no FP8 block-scale; no bias inputs in bf16 / per-tensor APIs
    assert set(oss_all) == set(oss)
    assert {"quantization:float4_e2m1fn_mxfp4", "quantization:float4_e2m1fn_nvfp4"} <= set(
        oss_all["trtllm_fp4_block_scale_moe_topk4_e32_h2880_i2880"]["tags"])

    big, _ = _compile(tmp_path, "qwen3-235b-a22b", "big", quantization=["fp8"])
    # cookbook: tp8 (1536/8 = 192, no 128-blocks -> no block-scale) and tp8 ep2 (FP8 recipe)
    assert "moe_fp8_block_scale_renorm_topk8_e128_h4096_i192" not in big
    ep2 = big["moe_fp8_block_scale_renorm_topk8_e64_h4096_i384"]
    assert const_axes(ep2)["num_experts"] == 128 and const_axes(ep2)["num_local_experts"] == 64
    assert ep2["inputs"]["routing_logits"]["shape"] == ["seq_len", "num_experts"]
    assert ep2["inputs"]["local_expert_offset"] == {"shape": None, "dtype": "int32",
                                                    "description": ep2["inputs"]["local_expert_offset"]["description"]}
    pt = big["trtllm_fp8_per_tensor_scale_moe_topk8_e64_h4096_i384"]
    assert pt["inputs"]["gemm1_weights"]["shape"][0] == "num_local_experts"
    assert pt["inputs"]["routing_logits"]["shape"] == ["seq_len", "num_experts"]

    qwen, _ = _compile(tmp_path, "qwen3-30b-a3b", "q")
    # cookbook rows bf16 and fp8 at tp1: the model's own variants only
    assert set(qwen) == {"trtllm_bf16_moe_topk8_e128_h2048_i768",
                         "moe_fp8_block_scale_renorm_topk8_e128_h2048_i768",
                         "trtllm_fp8_per_tensor_scale_moe_topk8_e128_h2048_i768"}
    for docs in (kimi, nxt, llama, oss_all, big, qwen):
        _validate(docs)


def test_dense_models_get_nothing(tmp_path):
    docs, _ = _compile(tmp_path, "llama-3.1-8b", "dense", quantization=["all"])
    assert docs == {}


# ---------------------------------------------------------------------------------------------
# references on small synthetic models (compiled from a local config.json)

H, E, K = 256, 16, 4
DS_CFG = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": H,
          "n_routed_experts": E, "num_experts_per_tok": K, "n_group": 4, "topk_group": 2,
          "moe_intermediate_size": 256, "scoring_func": "sigmoid", "routed_scaling_factor": 2.5,
          "topk_method": "noaux_tc", "norm_topk_prob": True,
          "num_attention_heads": 2, "num_key_value_heads": 2, "quantization_config": {"quant_method": "fp8"}}
QWEN_CFG = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": H,
            "num_experts": E, "num_experts_per_tok": K, "moe_intermediate_size": 128, "norm_topk_prob": True,
            "num_attention_heads": 2, "num_key_value_heads": 2}
CFGS = {
    "ds": DS_CFG,
    "renorm": QWEN_CFG,
    "renorm_naive": {**QWEN_CFG, "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next"},
    "default": {**QWEN_CFG, "norm_topk_prob": False},
    "llama4": {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
               "text_config": {"model_type": "llama4_text", "hidden_size": H, "num_local_experts": E,
                               "num_experts_per_tok": 1, "intermediate_size": 128,
                               "num_attention_heads": 2, "num_key_value_heads": 2}},
    "oai": {"architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": H,
            "num_local_experts": E, "num_experts_per_tok": K, "intermediate_size": 128, "swiglu_limit": 7.0,
            "num_attention_heads": 2, "num_key_value_heads": 2, "quantization_config": {"quant_method": "mxfp4"}},
}
FP8_NAME = {"ds": "moe_fp8_block_scale_ds_routing_topk4_ng4_kg2_e{e}_h256_i{i}",
            "renorm": "moe_fp8_block_scale_renorm_topk4_e16_h256_i128",
            "renorm_naive": "moe_fp8_block_scale_renormalize_naive_routing_topk4_e16_h256_i128",
            "default": "moe_fp8_block_scale_default_routing_topk4_e16_h256_i128",
            "llama4": "moe_fp8_block_scale_llama4_routing_topk1_e16_h256_i128"}
# FlashInfer's public templates (flashinfer.trace.templates.moe) whose .reference is each routing's
FI_FP8_REF = {"ds": "trtllm_fp8_block_scale_moe_ds_routing_trace",
              "renorm": "trtllm_fp8_block_scale_moe_renormalize_routing_trace",
              "renorm_naive": "trtllm_fp8_block_scale_moe_renormalize_naive_routing_trace",
              "default": "trtllm_fp8_block_scale_moe_default_routing_trace",
              "llama4": "trtllm_fp8_block_scale_moe_llama4_routing_trace"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """{(kind, tp, ep): {name: doc}} for the synthetic models, all quantization variants."""
    base = tmp_path_factory.mktemp("small")
    out = {}
    for kind, cfg in CFGS.items():
        for tp, ep in ((1, 1), (2, 2)):
            docs, _ = _compile(base, f"tiny-{kind.replace('_', '-')}", f"{kind}{tp}{ep}", config=cfg,
                               tp=[tp], ep=[ep], quantization=["all"])
            out[(kind, tp, ep)] = docs
    return out


def _fi_templates():
    flashinfer()
    import flashinfer.trace.templates.moe as m
    return m


def _quant_rows(x):
    """[T, H] -> FP8 with one scale per (token, 128 columns), scales stored [H/128, T]."""
    t, h = x.shape
    blocks = x.float().reshape(t, h // 128, 128)
    scale = blocks.abs().amax(dim=-1).clamp(min=1e-4) / 448.0
    return (blocks / scale.unsqueeze(-1)).to(F8).reshape(t, h), scale.t().contiguous()


def _quant_weights(w):
    """[E, R, C] -> FP8 with one scale per 128x128 block, scales [E, R/128, C/128]."""
    e, r, c = w.shape
    blocks = w.float().reshape(e, r // 128, 128, c // 128, 128)
    scale = blocks.abs().amax(dim=(2, 4)).clamp(min=1e-4) / 448.0
    return (blocks / scale[:, :, None, :, None]).to(F8).reshape(e, r, c), scale


def _deq(q, s):
    """Independent block dequantisation (reshape-and-broadcast, float64)."""
    *lead, r, c = q.shape
    v = q.double().reshape(*lead, r // 128, 128, c // 128, 128)
    return (v * s.double().reshape(*lead, r // 128, 1, c // 128, 1)).reshape(*lead, r, c)


def _route_one(logits, bias, kind, k, n_group=1, topk_group=1, rsf=1.0):
    """One token's (global expert, weight) pairs, written with plain Python sorting."""
    lg = [float(v) for v in logits]
    n = len(lg)
    if kind == "ds":
        s = [1.0 / (1.0 + math.exp(-v)) for v in lg]
        b = [s[e] + float(bias[e]) for e in range(n)]
        size = n // n_group
        gscore = [sum(sorted(b[g * size:(g + 1) * size], reverse=True)[:2]) for g in range(n_group)]
        groups = sorted(range(n_group), key=lambda g: -gscore[g])[:topk_group]
        chosen = sorted((e for e in range(n) if e // size in groups), key=lambda e: -b[e])[:k]
        tot = sum(s[e] for e in chosen)
        return [(e, s[e] / tot * rsf) for e in chosen]
    chosen = sorted(range(n), key=lambda e: -lg[e])[:k]
    if kind in ("renorm", "renorm_naive"):
        m = max(lg[e] for e in chosen)
        z = sum(math.exp(lg[e] - m) for e in chosen)
        return [(e, math.exp(lg[e] - m) / z) for e in chosen]
    if kind == "default":
        m = max(lg)
        z = sum(math.exp(v - m) for v in lg)
        return [(e, math.exp(lg[e] - m) / z) for e in chosen]
    if kind == "llama4":
        return [(e, 1.0 / (1.0 + math.exp(-lg[e]))) for e in chosen]
    raise AssertionError(kind)


def _silu_glu(h, le):
    i = h.shape[0] // 2
    return torch.nn.functional.silu(h[i:]) * h[:i]


def _dense(x, w13, w2, routes, offset, on_input=False, act=_silu_glu, b1=None, b2=None):
    """Per-token loop over the selected experts this rank holds (float64)."""
    x, w13, w2 = x.double(), w13.double(), w2.double()
    out = torch.zeros(x.shape[0], w2.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for e, w in routes[t]:
            le = e - offset
            if not 0 <= le < w13.shape[0]:
                continue
            xin = x[t] * w if on_input else x[t]
            h = w13[le] @ xin + (0 if b1 is None else b1[le].double())
            y = w2[le] @ act(h, le) + (0 if b2 is None else b2[le].double())
            out[t] += y if on_input else w * y
    return out


def _close(got, want, atol=2e-2):
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=2e-2)


def _fp8_inputs(kind, seed=0, t=5, i=128, e_local=E):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, E, generator=g)
    if kind != "ds":
        logits = logits.to(torch.bfloat16)
    bias = (torch.randn(E, generator=g) * 0.2).to(torch.bfloat16)
    x, xs = _quant_rows(torch.randn(t, H, generator=g))
    w13, s13 = _quant_weights(torch.randn(E, 2 * i, H, generator=g) * 0.05)
    w2, s2 = _quant_weights(torch.randn(E, H, i, generator=g) * 0.05)
    return dict(logits=logits, bias=bias, x=x, xs=xs, w13=w13, s13=s13, w2=w2, s2=s2)


@pytest.mark.parametrize("kind", ["ds", "renorm", "renorm_naive", "default", "llama4"])
def test_fp8_block_scale_reference(small, kind):
    tp_ep = (1, 1)
    name = FP8_NAME[kind].format(e=16, i=256)
    defn = small[(kind, *tp_ep)][name]
    i = const_axes(defn)["intermediate_size"]
    k = 1 if kind == "llama4" else K
    d = _fp8_inputs(kind, i=i)
    args = [d["logits"]] + ([d["bias"]] if kind == "ds" else []) + [d["x"], d["xs"], d["w13"], d["s13"], d["w2"], d["s2"]]
    if kind == "ds":
        args += [0, 2.5]
    got = load_reference(defn)(*args)
    routes = [_route_one(d["logits"][t], d["bias"], kind, k, 4, 2, 2.5) for t in range(5)]
    x = d["x"].double().reshape(5, H // 128, 128) * d["xs"].t().double().unsqueeze(-1)
    want = _dense(x.reshape(5, H), _deq(d["w13"], d["s13"]), _deq(d["w2"], d["s2"]), routes, 0,
                  on_input=kind == "llama4")
    _close(got, want)

    # FlashInfer's template reference for the same routing_method_type
    fi = getattr(_fi_templates(), FI_FP8_REF[kind]).reference
    common = dict(hidden_states=d["x"], hidden_states_scale=d["xs"], gemm1_weights=d["w13"],
                  gemm1_weights_scale=d["s13"], gemm2_weights=d["w2"], gemm2_weights_scale=d["s2"],
                  top_k=k, local_expert_offset=0)
    if kind == "ds":
        theirs = fi(routing_logits=d["logits"], routing_bias=d["bias"], n_group=4, topk_group=2,
                    routed_scaling_factor=2.5, **common)
    else:
        theirs = fi(routing_logits=d["logits"], routing_bias=None, routed_scaling_factor=None, **common)
    if kind == "llama4":
        # documented difference: FlashInfer's template scales the expert's output by sigmoid(logit);
        # Llama-4 (HF, SGLang's use_routing_scales_on_input) scales its input, and SwiGLU is not linear
        out_scaled = _dense(x.reshape(5, H), _deq(d["w13"], d["s13"]), _deq(d["w2"], d["s2"]), routes, 0)
        _close(theirs, out_scaled)
        assert not torch.allclose(got.double(), theirs.double(), atol=2e-2, rtol=2e-2)
    else:
        _close(got, theirs, atol=1e-2)

    with pytest.raises(AssertionError):   # const axes are asserted
        load_reference(defn)(*[a[:, :128] if torch.is_tensor(a) and a.dim() == 2 and a.shape[1] == H else a
                               for a in args])


def test_fp8_expert_parallel_ranks_sum_to_the_whole(small):
    whole = small[("ds", 1, 1)][FP8_NAME["ds"].format(e=16, i=256)]
    part = small[("ds", 2, 2)][FP8_NAME["ds"].format(e=8, i=256)]
    assert const_axes(part)["num_experts"] == 16 and const_axes(part)["num_local_experts"] == 8
    d = _fp8_inputs("ds", seed=3, t=6, i=256)
    full = load_reference(whole)(d["logits"], d["bias"], d["x"], d["xs"], d["w13"], d["s13"], d["w2"], d["s2"], 0, 2.5)
    ranks = []
    for r in range(2):
        sl = slice(8 * r, 8 * (r + 1))
        ranks.append(load_reference(part)(d["logits"], d["bias"], d["x"], d["xs"], d["w13"][sl], d["s13"][sl],
                                          d["w2"][sl], d["s2"][sl], 8 * r, 2.5))
        # only the rank's own experts contribute
        routes = [_route_one(d["logits"][t], d["bias"], "ds", K, 4, 2, 2.5) for t in range(6)]
        x = (d["x"].double().reshape(6, 2, 128) * d["xs"].t().double().unsqueeze(-1)).reshape(6, H)
        _close(ranks[-1], _dense(x, _deq(d["w13"][sl], d["s13"][sl]), _deq(d["w2"][sl], d["s2"][sl]), routes, 8 * r))
    _close((ranks[0].double() + ranks[1].double()).to(torch.bfloat16), full.double(), atol=3e-2)
    assert not torch.allclose(ranks[0].double(), full.double(), atol=1e-2)


@pytest.mark.parametrize("kind", ["renorm", "default", "llama4"])
def test_fp8_per_tensor_reference(small, kind):
    k = 1 if kind == "llama4" else K
    defn = small[(kind, 1, 1)][f"trtllm_fp8_per_tensor_scale_moe_topk{k}_e16_h256_i128"]
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, E, generator=g).to(torch.bfloat16)
    x = (torch.randn(5, H, generator=g) * 4).to(F8)
    w13 = (torch.randn(E, 256, H, generator=g) * 4).to(F8)
    w2 = (torch.randn(E, H, 128, generator=g) * 4).to(F8)
    s1g = torch.rand(E, generator=g) * 0.01 + 0.002
    s1 = torch.rand(E, generator=g) * 0.01 + 0.002
    s2 = torch.rand(E, generator=g) * 0.01 + 0.002
    got = load_reference(defn)(logits, x, w13, s1, s1g, w2, s2)
    routes = [_route_one(logits[t], None, kind, k) for t in range(5)]

    def act(h, le):   # gate half dequantised inside the SiLU, the product rescaled after it
        return torch.nn.functional.silu(h[128:] * float(s1g[le])) * h[:128] * float(s1[le])

    want = _dense(x.float(), w13.float(), w2.float(), routes, 0, on_input=kind == "llama4", act=act)
    want = want * 1.0  # output2 scale below
    scaled = torch.zeros_like(want)
    for t in range(5):   # output2 is per expert: redo the sum with it
        for e, w in routes[t]:
            xin = x[t].double() * (w if kind == "llama4" else 1.0)
            y = (w2[e].double() @ act(w13[e].double() @ xin, e)) * float(s2[e])
            scaled[t] += y if kind == "llama4" else w * y
    _close(got, scaled)

    if kind == "default":
        # FlashInfer's template reference routes Default-style whatever routing_method_type says, and puts
        # output1_scales_gate_scalar on the first (up) half and output1_scales_scalar inside the SiLU:
        # equal to ours when both scales are equal, different otherwise (documented difference).
        fi = _fi_templates().trtllm_fp8_per_tensor_scale_moe_trace.reference
        kw = dict(routing_logits=logits, routing_bias=None, hidden_states=x, gemm1_weights=w13, gemm2_weights=w2,
                  output2_scales_scalar=s2, num_experts=E, top_k=k, local_expert_offset=0)
        same = fi(output1_scales_scalar=s1, output1_scales_gate_scalar=s1, **kw)
        _close(load_reference(defn)(logits, x, w13, s1, s1, w2, s2), same.double(), atol=1e-2)
        swapped = fi(output1_scales_scalar=s1, output1_scales_gate_scalar=s1g, **kw)
        assert not torch.allclose(got.double(), swapped.double(), atol=1e-2, rtol=1e-2)


# FP4 (curated MxFP4 x BF16 form: bf16 activations, float32 weights) ------------------------------

FP4_GRID = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def _fp4_weights(shape, g):
    """Random FP4 codes: (float32 values, FlashInfer's packed uint8 + unit NvFP4 block scales)."""
    codes = torch.randint(0, 16, shape, generator=g)
    values = FP4_GRID[codes]
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    scales = torch.ones(*shape[:-1], shape[-1] // 16).to(F8)
    return values, packed, scales


def _fp4_inputs(seed, t=5, i=128):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, E, generator=g).to(torch.bfloat16)
    x = (torch.randn(t, H, generator=g) * 0.05).to(torch.bfloat16)
    w13, p13, s13 = _fp4_weights((E, 2 * i, H), g)
    w2, p2, s2 = _fp4_weights((E, H, i), g)
    return dict(logits=logits, x=x, w13=w13, p13=p13, s13=s13, w2=w2, p2=p2, s2=s2, g=g)


def test_fp4_reference(small):
    defn = small[("renorm", 1, 1)]["trtllm_fp4_block_scale_moe_topk4_e16_h256_i128"]
    d = _fp4_inputs(5)
    got = load_reference(defn)(d["logits"], d["x"], d["w13"], d["w2"])
    routes = [_route_one(d["logits"][t], None, "renorm", K) for t in range(5)]
    _close(got, _dense(d["x"], d["w13"], d["w2"], routes, 0))
    fi = _fi_templates().trtllm_fp4_block_scale_moe_renormalize_routing_trace.reference
    theirs = fi(d["logits"], None, d["x"], None, d["p13"], d["s13"], None, d["p2"], d["s2"], None,
                top_k=K, local_expert_offset=0, routed_scaling_factor=None)
    _close(got, theirs.double(), atol=1e-2)
    # the same definition serves both FP4 formats
    assert {"quantization:float4_e2m1fn_mxfp4", "quantization:float4_e2m1fn_nvfp4", "gpu:sm100"} <= set(defn["tags"])


def _pack(ids, weights):
    bits = weights.to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    return (ids.to(torch.int32) << 16) | bits


def test_fp4_routed_reference(small):
    defn = small[("renorm", 1, 1)]["trtllm_fp4_block_scale_routed_moe_topk4_e16_h256_i128"]
    d = _fp4_inputs(6)
    ids = torch.stack([torch.randperm(E, generator=d["g"])[:K] for _ in range(5)])
    weights = torch.rand(5, K, generator=d["g"]).to(torch.bfloat16)
    got = load_reference(defn)(_pack(ids, weights), d["x"], d["w13"], d["w2"])
    routes = [[(int(e), float(w)) for e, w in zip(ids[t], weights[t].float())] for t in range(5)]
    _close(got, _dense(d["x"], d["w13"], d["w2"], routes, 0))
    # FlashInfer's routed template reads topk_ids as plain ids with uniform 1/top_k weights (documented
    # difference); with packed weights of exactly 1/top_k the two agree
    uniform = load_reference(defn)(_pack(ids, torch.full((5, K), 1.0 / K)), d["x"], d["w13"], d["w2"])
    fi = _fi_templates().trtllm_fp4_block_scale_routed_moe_trace.reference
    theirs = fi(ids, d["x"], None, d["p13"], d["s13"], None, d["p2"], d["s2"], None,
                num_experts=E, top_k=K, local_expert_offset=0)
    _close(uniform, theirs.double(), atol=1e-2)
    # EP: a rank with experts [8, 16) sees only those
    part = small[("renorm", 2, 2)]["trtllm_fp4_block_scale_routed_moe_topk4_e8_h256_i128"]
    half = load_reference(part)(_pack(ids, weights), d["x"], d["w13"][8:], d["w2"][8:], 8)
    _close(half, _dense(d["x"], d["w13"][8:], d["w2"][8:], routes, 8))


def test_gpt_oss_form(small):
    docs = small[("oai", 1, 1)]
    assert set(docs) == {"trtllm_fp4_block_scale_moe_topk4_e16_h256_i128",
                         "trtllm_fp4_block_scale_routed_moe_topk4_e16_h256_i128"}
    d = _fp4_inputs(7)
    g = d["g"]
    b1 = torch.randn(E, 256, generator=g) * 0.5
    b2 = torch.randn(E, H, generator=g) * 0.1
    alpha = torch.full((E,), 1.702)
    beta = torch.ones(E)
    limit = torch.full((E,), 1.5)   # small enough to bite

    def act(h, le):
        up, gate = h[:128], h[128:]
        gate = gate.clamp(max=float(limit[le]))
        up = up.clamp(-float(limit[le]), float(limit[le]))
        return gate * torch.sigmoid(float(alpha[le]) * gate) * (up + float(beta[le]))

    x = d["x"] * 20
    got = load_reference(docs["trtllm_fp4_block_scale_moe_topk4_e16_h256_i128"])(
        d["logits"], x, d["w13"], b1, alpha, beta, limit, d["w2"], b2)
    routes = [_route_one(d["logits"][t], None, "renorm", K) for t in range(5)]
    want = _dense(x, d["w13"], d["w2"], routes, 0, act=act, b1=b1, b2=b2)
    _close(got, want, atol=5e-2)
    # FlashInfer's FP4 template applies the biases but not alpha/beta/limit for SwiGLU: equal to ours
    # exactly when alpha=1, beta=0 and no clamp
    fi = _fi_templates().trtllm_fp4_block_scale_moe_renormalize_routing_trace.reference
    theirs = fi(d["logits"], None, x, None, d["p13"], d["s13"], b1, d["p2"], d["s2"], b2,
                top_k=K, local_expert_offset=0, routed_scaling_factor=None)
    plain = load_reference(docs["trtllm_fp4_block_scale_moe_topk4_e16_h256_i128"])(
        d["logits"], x, d["w13"], b1, torch.ones(E), torch.zeros(E), torch.full((E,), 1e30), d["w2"], b2)
    _close(plain, theirs.double(), atol=5e-2)
    assert not torch.allclose(got.double(), theirs.double(), atol=5e-2, rtol=2e-2)


@pytest.mark.parametrize("kind", ["ds", "default", "renorm"])
def test_bf16_reference(small, kind):
    name = "trtllm_bf16_moe_topk4_e16_h256_i{}".format(256 if kind == "ds" else 128)
    defn = small[(kind, 1, 1)][name]
    i = const_axes(defn)["intermediate_size"]
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(5, E, generator=g)
    logits = logits if kind == "ds" else logits.to(torch.bfloat16)
    bias = (torch.randn(E, generator=g) * 0.2).to(torch.bfloat16)
    x = torch.randn(5, H, generator=g).to(torch.bfloat16)
    w13 = (torch.randn(E, 2 * i, H, generator=g) * 0.05).to(torch.bfloat16)
    w2 = (torch.randn(E, H, i, generator=g) * 0.05).to(torch.bfloat16)
    if kind == "ds":
        got = load_reference(defn)(logits, bias, x, w13, w2, 0, 2.5)
    else:
        got = load_reference(defn)(logits, x, w13, w2)
    routes = [_route_one(logits[t], bias, kind, K, 4, 2, 2.5) for t in range(5)]
    _close(got, _dense(x, w13, w2, routes, 0))
    if kind == "default":   # FlashInfer's trtllm_bf16_moe template reference routes Default-style
        fi = _fi_templates().trtllm_bf16_moe_trace.reference
        theirs = fi(logits, None, x, w13, w2, num_experts=E, top_k=K, local_expert_offset=0)
        _close(got, theirs.double(), atol=1e-2)


# ---------------------------------------------------------------------------------------------
# agreement with FlashInfer's dumper (.fi_trace on meta tensors)

SCALARS = ("top_k", "n_group", "topk_group", "local_expert_offset", "routed_scaling_factor")


def _metas(defn, t=7):
    return {k: meta(concrete_shape(defn, v, {"seq_len": t}), v["dtype"])
            for k, v in defn["inputs"].items() if v["shape"] is not None}


def _agree(ours, theirs):
    """Shared const axes equal; every input of ours is in theirs with the same concrete shape and dtype.
    Returns (extra const axes, extra inputs) of the dumper's definition."""
    a, b = const_axes(ours), const_axes(theirs)
    assert {k: a[k] for k in a if k in b} == {k: b[k] for k in a if k in b}
    for k, v in ours["inputs"].items():
        assert k in theirs["inputs"], k
        assert concrete_shape(ours, v) == concrete_shape(theirs, theirs["inputs"][k]), k
        assert theirs["inputs"][k]["dtype"] == v["dtype"], k
    assert concrete_shape(ours, ours["outputs"]["output"]) == concrete_shape(theirs, theirs["outputs"]["output"])
    assert theirs["outputs"]["output"]["dtype"] == ours["outputs"]["output"]["dtype"] == "bfloat16"
    assert theirs["op_type"] == ours["op_type"] == "moe"
    fi_api = [t for t in ours["tags"] if t.startswith("fi_api:")][0]
    assert fi_api.replace("flashinfer.fused_moe.", "flashinfer.fused_moe.core.") in theirs["tags"]
    return set(b) - set(a), set(theirs["inputs"]) - set(ours["inputs"])


def _scalars(defn, **kw):
    c = const_axes(defn)
    e = c.get("num_experts", c.get("num_local_experts"))
    el = c.get("num_local_experts", e)
    out = dict(num_experts=e, local_num_experts=el, intermediate_size=c["intermediate_size"], top_k=c.get("top_k", 8),
               n_group=None, topk_group=None, local_expert_offset=0, routed_scaling_factor=None)
    out.update(kw)
    return out


def test_fp8_block_scale_agrees_with_fi_trace(tmp_path):
    api = "flashinfer.fused_moe.trtllm_fp8_block_scale_moe"
    ds, ds_alias = _compile(tmp_path, "deepseek-v3", "ds", tp=[8], ep=[8])
    ours = ds["moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"]
    theirs = fi_trace(api, **_metas(ours), **_scalars(ours, n_group=8, topk_group=4, routed_scaling_factor=2.5),
                      routing_method_type=2)
    assert theirs["name"] == ours["name"] and ds_alias[ours["name"]] == [ours["name"]]
    axes, inputs = _agree(ours, theirs)
    assert axes == {"top_k", "n_group", "topk_group"}
    assert inputs == {"gemm1_alpha", "gemm1_beta", "gemm1_clamp_limit", "top_k", "n_group", "topk_group"}

    cases = [("qwen3-30b-a3b", {}, "moe_fp8_block_scale_renorm_topk8_e128_h2048_i768", 1),
             ("qwen3-235b-a22b", {"tp": [8], "ep": [2]}, "moe_fp8_block_scale_renorm_topk8_e64_h4096_i384", 1),
             ("qwen3-next-80b-a3b", {"tp": [2]}, "moe_fp8_block_scale_renormalize_naive_routing_topk10_e512_h2048_i256", 4),
             ("llama-4-scout", {}, "moe_fp8_block_scale_llama4_routing_topk1_e16_h5120_i1024", 3)]
    for model, kw, name, rmt in cases:
        docs, aliases = _compile(tmp_path, model, model, quantization=["fp8"], **kw)
        ours = docs[name]
        metas = _metas(ours)
        if "num_experts" not in ours["axes"]:   # curated renorm at EP=1: logits over the local experts
            assert ours["inputs"]["routing_logits"]["shape"] == ["seq_len", "num_local_experts"]
        theirs = fi_trace("flashinfer.fused_moe.trtllm_fp8_block_scale_moe", routing_bias=None, **metas,
                          **_scalars(ours), routing_method_type=rmt)
        assert theirs["name"] in aliases[name]
        assert (theirs["name"] == name) == (rmt != 1)   # only Renormalize keeps the curated `renorm` spelling
        axes, inputs = _agree(ours, theirs)
        assert axes <= {"num_experts"} and ("num_experts" in axes) == ("num_experts" not in ours["axes"])
        assert {"routing_bias", "gemm1_alpha", "gemm1_beta", "gemm1_clamp_limit", "top_k",
                "routed_scaling_factor"} <= inputs
        assert ("local_expert_offset" in inputs) == ("local_expert_offset" not in ours["inputs"])
        assert theirs["inputs"]["routing_logits"]["shape"] == ["seq_len", "num_experts"]


def test_per_tensor_bf16_fp4_agree_with_fi_trace(tmp_path):
    docs, aliases = _compile(tmp_path, "qwen3-30b-a3b", "q", quantization=["all"])

    ours = docs["trtllm_fp8_per_tensor_scale_moe_topk8_e128_h2048_i768"]
    theirs = fi_trace("flashinfer.fused_moe.trtllm_fp8_per_tensor_scale_moe", routing_bias=None, **_metas(ours),
                      **_scalars(ours), use_routing_scales_on_input=False, routing_method_type=1)
    assert theirs["name"] == ours["name"]
    axes, inputs = _agree(ours, theirs)
    assert axes == {"num_local_experts"}   # weights and scales indexed by it (same value at EP=1)
    assert theirs["inputs"]["gemm1_weights"]["shape"][0] == "num_local_experts"
    assert ours["inputs"]["gemm1_weights"]["shape"][0] == "num_experts"
    assert {"routing_bias", "top_k", "local_expert_offset", "routing_method_type", "gemm1_clamp_limit"} <= inputs

    ours = docs["trtllm_bf16_moe_topk8_e128_h2048_i768"]
    theirs = fi_trace("flashinfer.fused_moe.trtllm_bf16_moe", routing_bias=None, **_metas(ours), **_scalars(ours),
                      routing_method_type=1)
    assert theirs["name"] == ours["name"]
    axes, inputs = _agree(ours, theirs)
    assert axes == {"num_local_experts"}

    # FP4: the dumper describes the kernel's packed form (documented difference): uint8 weights with two
    # FP4 values per byte and fp8 block scales, uint8 activations; names carry the routing
    h, i, e = 2048, 768, 128
    u8, f8 = "uint8", "float8_e4m3fn"
    packed = dict(hidden_states=meta((7, h // 2), u8), hidden_states_scale=meta((7, h // 16), f8),
                  gemm1_weights=meta((e, 2 * i, h // 2), u8), gemm1_weights_scale=meta((e, 2 * i, h // 16), f8),
                  gemm2_weights=meta((e, h, i // 2), u8), gemm2_weights_scale=meta((e, h, i // 16), f8),
                  gemm1_bias=None, gemm1_alpha=None, gemm1_beta=None, gemm1_clamp_limit=None, gemm2_bias=None,
                  output1_scale_scalar=None, output1_scale_gate_scalar=None, output2_scale_scalar=None,
                  routing_bias=None)
    for name, api, first in (("trtllm_fp4_block_scale_moe_topk8_e128_h2048_i768",
                              "flashinfer.fused_moe.trtllm_fp4_block_scale_moe",
                              {"routing_logits": meta((7, e), "bfloat16")}),
                             ("trtllm_fp4_block_scale_routed_moe_topk8_e128_h2048_i768",
                              "flashinfer.fused_moe.trtllm_fp4_block_scale_routed_moe",
                              {"topk_ids": meta((7, 8), "int32")})):
        ours = docs[name]
        theirs = fi_trace(api, **first, **packed, **_scalars(ours), routing_method_type=1)
        assert theirs["name"] != name and theirs["name"] in aliases[name]
        assert theirs["inputs"]["hidden_states"]["dtype"] == "uint8" and ours["inputs"]["hidden_states"]["dtype"] == "bfloat16"
        assert concrete_shape(theirs, theirs["inputs"]["gemm1_weights"]) == (e, 2 * i, h // 2)
        assert concrete_shape(ours, ours["inputs"]["gemm1_weights"]) == (e, 2 * i, h)
        assert ours["inputs"]["gemm1_weights"]["dtype"] == "float32"
        first_key = next(iter(first))
        assert concrete_shape(ours, ours["inputs"][first_key]) == concrete_shape(theirs, theirs["inputs"][first_key])
        assert theirs["inputs"][first_key]["dtype"] == ours["inputs"][first_key]["dtype"]
        c = const_axes(theirs)
        assert c["top_k"] == 8 and c["num_local_experts"] == 128 and c["hidden_size"] == 2048
        if "routed" in name:   # the dumper cannot see num_experts / intermediate_size: var axes, no _i
            assert theirs["axes"]["num_experts"]["type"] == "var" and theirs["axes"]["intermediate_size"]["type"] == "var"
            assert theirs["name"] == "trtllm_fp4_block_scale_routed_moe_topk8_e128_h2048"
        else:
            assert c["intermediate_size"] == 768 and c["num_experts"] == 128


# ---------------------------------------------------------------------------------------------
# routing from config semantics: the corpus models (facts written by hand from SGLang's topk.py paths)

def _corpus_facts(slug):
    from ruamel.yaml import YAML
    return YAML(typ="safe").load(open(os.path.join(os.path.dirname(__file__), "corpus", slug, "facts.yaml")))


def _expected_routing(moe):
    """FlashInfer's routing method for the router the facts describe, or None (no FlashInfer routing)."""
    grouped = moe.get("grouped") or {}
    limited = grouped.get("n_group", 1) > 1 and grouped.get("topk_group", 1) < grouped.get("n_group", 1)
    if moe["correction_bias"]:
        # biased_grouped_topk / biased top-k: sigmoid + bias for selection, unbiased weights
        return "ds" if moe["renormalize"] and moe["scoring"] == "sigmoid" else None
    if moe["scoring"] != "softmax" or limited:
        return None
    return "renorm" if moe["renormalize"] else "default"


PREFIX = {"ds": "moe_fp8_block_scale_ds_routing", "renorm": "trtllm_fp4_block_scale_moe_topk",
          "default": "moe_fp4_block_scale_default_routing"}


@pytest.mark.parametrize("slug", ["deepseek-v2", "deepseek-v2-lite", "mimo-v2-flash", "kimi-k2.5",
                                  "qwen1.5-moe-a2.7b", "qwen3.5-35b-a3b", "nemotron-3-nano-30b-a3b",
                                  "laguna-xs.2", "mixtral-8x7b", "kimi-linear-48b-a3b"])
def test_corpus_routing(tmp_path, slug):
    from defc.compiler.pipeline import CompileOptions, compile_model
    facts = _corpus_facts(slug)
    moe = facts["moe"]
    cfg = os.path.join(os.path.dirname(__file__), "corpus", slug, "config.json")
    r = compile_model(CompileOptions(model=cfg, specs=["moe"], out=str(tmp_path), tp=[1], quantization=["all"]))
    names = sorted(p.doc["name"] for p in r.planned)
    gaps = [f.message for f in r.findings if f.kind == "gap"]
    e, k = moe["num_experts"], moe["top_k"]
    if any("relu2" in u for u in facts.get("unsupported") or []):
        # non-gated relu2 experts: no SwiGLU definition, a gap that says why
        assert names == [] and any("SwiGLU experts only" in g for g in gaps), (names, gaps)
        return
    routed = f"trtllm_fp4_block_scale_routed_moe_topk{k}_e{e}_h"
    assert any(n.startswith(routed) for n in names), names
    want = _expected_routing(moe)
    if want is None:
        # only the pre-computed-routing definition, and a gap naming the router
        assert all(n.startswith("trtllm_fp4_block_scale_routed_moe") for n in names), names
        assert any("not a routing method" in g for g in gaps), gaps
        return
    assert any(n.startswith(PREFIX[want]) for n in names), (want, names)
    bf16 = [p.doc for p in r.planned if p.doc["name"].startswith("trtllm_bf16_moe")]
    assert len(bf16) == 1 and f"ROUTING = '{want}'" in bf16[0]["reference"]
    if want == "ds":
        grouped = moe.get("grouped") or {"n_group": 1, "topk_group": 1}
        assert f"N_GROUP = {grouped['n_group']}" in bf16[0]["reference"]
        assert f"TOPK_GROUP = {grouped['topk_group']}" in bf16[0]["reference"]


def test_divisibility_is_a_gap_not_an_omission(tmp_path):
    from defc.compiler.pipeline import CompileOptions, compile_model
    cfg = dict(QWEN_CFG, num_experts=60, moe_intermediate_size=1408)
    path = os.path.join(str(tmp_path), "c.json")
    with open(path, "w") as fh:
        json.dump(cfg, fh)
    r = compile_model(CompileOptions(model=path, specs=["moe"], out=str(tmp_path), tp=[8], ep=[8], quantization=["all"]))
    assert not r.planned
    assert any("60 routed experts cannot be split evenly over EP=8" in f.message for f in r.findings if f.kind == "gap")
    r = compile_model(CompileOptions(model="qwen3-235b-a22b", specs=["moe"], out=str(tmp_path), tp=[8], quantization=["fp8"]))
    assert any("128-wide weight blocks" in f.message and "192" in f.message for f in r.findings if f.kind == "gap")
    assert any(p.doc["name"].startswith("trtllm_fp8_per_tensor_scale_moe") for p in r.planned)
