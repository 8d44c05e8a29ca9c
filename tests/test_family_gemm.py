"""gemm family: the projections each model has (curated shapes), the dense and quantized
references against independent math and FlashInfer's template references, and agreement with the
dumper's definitions of mm_bf16 / tinygemm_bf16 / gemm_fp8_nt_groupwise / mm_fp4 / mm_mxfp8."""
import pytest
import torch

from conftest import compile_planned, load_reference
from fi_oracle import concrete_shape, const_axes, fi_trace, flashinfer, meta

MODELS = ("llama-3.1-8b", "qwen3-30b-a3b", "deepseek-v3", "qwen3-next-80b-a3b", "nemotron-h-8b",
          "llama-4-maverick", "llama-4-scout", "deepseek-v3.2")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{model: (docs by name, first instance by name)}, every quantization variant, tp 1."""
    # gemm shapes are parallelism-agnostic: tp 1 suffices
    return {model: compile_planned(tmp_path_factory.mktemp(model), model, ["gemm"], quantization=["all"])
            for model in MODELS}


def plain(docs):
    return {n for n, d in docs.items() if d["op_type"] == "gemm"}


def test_curated_projection_sets(compiled):
    llama = compiled["llama-3.1-8b"][0]
    # qkv (32 + 2*8) * 128, o_proj, gate_up 2 * 14336, down, lm_head
    assert plain(llama) == {"gemm_n6144_k4096", "gemm_n4096_k4096", "gemm_n28672_k4096",
                            "gemm_n4096_k14336", "gemm_n128256_k4096"}
    assert "attn.qkv_proj" in llama["gemm_n6144_k4096"]["description"]
    assert "mlp.gate_up_proj" in llama["gemm_n28672_k4096"]["description"]
    # Qwen3-30B-A3B is MoE in every layer (mlp_only_layers [], decoder_sparse_step 1): no dense MLP
    qwen = compiled["qwen3-30b-a3b"][0]
    assert plain(qwen) == {"gemm_n5120_k2048", "gemm_n2048_k4096", "gemm_n128_k2048", "gemm_n151936_k2048"}
    assert "moe.gate" in qwen["gemm_n128_k2048"]["description"]
    # DeepSeek-V3: MLA projections, 3 dense layers, one shared expert, router, MTP, lm_head
    ds = compiled["deepseek-v3"][0]
    assert plain(ds) == {
        "gemm_n2112_k7168",    # fused q_a + kv_a + k_pe: 1536 + 512 + 64
        "gemm_n24576_k1536",   # q_b: 128 heads * (128 + 64)
        "gemm_n32768_k512",    # kv_b: 128 * (128 + 128)
        "gemm_n7168_k16384",   # o_proj: 128 * v_head_dim 128
        "gemm_n36864_k7168", "gemm_n7168_k18432",  # dense MLP (first_k_dense_replace 3)
        "gemm_n4096_k7168", "gemm_n7168_k2048",    # shared expert (1 x 2048)
        "gemm_n256_k7168",     # router
        "gemm_n7168_k14336",   # MTP eh_proj
        "gemm_n129280_k7168"}  # lm_head
    # DeepSeek-V3.2 adds the sparse-attention indexer's wq_b, wk and weights_proj
    assert plain(compiled["deepseek-v3.2"][0]) - plain(ds) == {"gemm_n8192_k1536", "gemm_n128_k7168", "gemm_n64_k7168"}
    # Qwen3-Next: gated q (2 * 16 + 2 * 2) * 256, GDN in_proj_qkvz / in_proj_ba / out_proj,
    # shared expert 512 and its sigmoid gate (N = 1)
    nxt = compiled["qwen3-next-80b-a3b"][0]
    assert plain(nxt) == {"gemm_n9216_k2048", "gemm_n2048_k4096", "gemm_n12288_k2048", "gemm_n64_k2048",
                          "gemm_n512_k2048", "gemm_n1024_k2048", "gemm_n2048_k512", "gemm_n1_k2048",
                          "gemm_n151936_k2048"}
    # NemotronH: attention, Mamba2 in_proj 2*8192 + 2*8*128 + 128 and out_proj, relu2 MLP up/down
    assert plain(compiled["nemotron-h-8b"][0]) == {
        "gemm_n6144_k4096", "gemm_n4096_k4096", "gemm_n18560_k4096", "gemm_n4096_k8192",
        "gemm_n21504_k4096", "gemm_n4096_k21504", "gemm_n131072_k4096"}
    # Llama-4: Maverick interleaves dense layers (intermediate_size_mlp 16384), Scout does not;
    # both have one shared expert of intermediate_size 8192
    mav, sco = plain(compiled["llama-4-maverick"][0]), plain(compiled["llama-4-scout"][0])
    assert {"gemm_n32768_k5120", "gemm_n5120_k16384"} <= mav
    assert not {"gemm_n32768_k5120", "gemm_n5120_k16384"} & sco
    assert {"gemm_n16384_k5120", "gemm_n5120_k8192"} <= mav & sco


def test_every_definition_loads_and_is_tagged(compiled):
    from flashinfer_bench.data import Definition
    for model, (docs, _) in compiled.items():
        for name, d in docs.items():
            Definition(**d)
            assert f"model:{model}" in d["tags"] and "status:verified" in d["tags"]
            if d["op_type"] == "gemm":  # curated convention: no fi_api, float16 A/B/C
                assert not any(t.startswith("fi_api:") for t in d["tags"])
                assert [d[s][t]["dtype"] for s, t in (("inputs", "A"), ("inputs", "B"), ("outputs", "C"))] == ["float16"] * 3
            else:
                assert any(t.startswith("quantization:") for t in d["tags"])


def test_quantized_variants_cover_quantizable_projections(compiled):
    docs, _ = compiled["deepseek-v3"]
    fp8 = {n for n, d in docs.items() if d["op_type"] == "gemm_fp8"}
    fp4 = {n for n, d in docs.items() if d["op_type"] == "gemm_fp4"}
    # router, MTP eh_proj and lm_head stay unquantized; everything else has an FP8 block-scale form
    assert fp8 == {f"gemm_fp8_nt_groupwise_{n[5:]}" for n in plain(docs)} - {
        "gemm_fp8_nt_groupwise_n256_k7168", "gemm_fp8_nt_groupwise_n7168_k14336", "gemm_fp8_nt_groupwise_n129280_k7168"}
    # NVFP4 (DeepSeek-R1-0528-FP4-v2): dense MLP, shared expert and o_proj; not MLA's other projections
    assert fp4 == {f"gemm_fp4_{n}_block_size16" for n in
                   ("n36864_k7168", "n7168_k18432", "n4096_k7168", "n7168_k2048", "n7168_k16384")}
    d = docs["gemm_fp8_nt_groupwise_n2112_k7168"]
    assert "quantization:float8_e4m3fn" in d["tags"]
    assert "fi_api:flashinfer.gemm.gemm_base.gemm_fp8_nt_groupwise" in d["tags"]


def test_dense_reference_matches_torch_linear(compiled):
    d = compiled["qwen3-30b-a3b"][0]["gemm_n128_k2048"]
    run = load_reference(d)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 2048, generator=g).to(torch.float16)
    b = (torch.randn(128, 2048, generator=g) / 45).to(torch.float16)
    c = run(a, b)
    assert c.dtype == torch.float16 and c.shape == (5, 128)
    torch.testing.assert_close(c, torch.nn.functional.linear(a.float(), b.float()).half(), atol=1e-2, rtol=1e-2)
    with pytest.raises(AssertionError):
        run(a, b.t().contiguous())


def _block_quant_fp8(x, rows_block, cols_block):
    """Reference-independent FP8 quantization with one scale per (rows_block x cols_block) tile."""
    fmax = torch.finfo(torch.float8_e4m3fn).max
    R, C = x.shape
    rb, cb = -(-R // rows_block), C // cols_block
    pad = torch.zeros(rb * rows_block, C)
    pad[:R] = x
    tiles = pad.reshape(rb, rows_block, cb, cols_block)
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12) / fmax
    q = (tiles / scale[:, None, :, None]).reshape(rb * rows_block, C)[:R].to(torch.float8_e4m3fn)
    return q, scale


def test_fp8_reference_dequantizes_and_multiplies(compiled):
    flashinfer()
    from flashinfer.trace.templates.gemm import gemm_fp8_nt_groupwise_trace
    fi_ref = gemm_fp8_nt_groupwise_trace.reference
    d = compiled["deepseek-v3"][0]["gemm_fp8_nt_groupwise_n2112_k7168"]  # N = 16.5 blocks of 128
    run = load_reference(d)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 7168, generator=g)
    w = torch.randn(2112, 7168, generator=g) / 85
    a, a_scale = _block_quant_fp8(x, 1, 128)
    b, b_scale = _block_quant_fp8(w, 128, 128)
    assert a_scale.shape == (6, 56) and b_scale.shape == (17, 56)
    out = run(a, b, a_scale, b_scale)
    assert out.dtype == torch.bfloat16 and out.shape == (6, 2112)
    torch.testing.assert_close(out, fi_ref(a, b, a_scale, b_scale), atol=2e-2, rtol=1e-2)
    exact = x @ w.t()
    assert float((out.float() - exact).norm() / exact.norm()) < 0.05  # FP8 error, not a wrong layout
    with pytest.raises(AssertionError):
        run(a, b, a_scale, b_scale[:16])


E2M1_MAGNITUDES = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _decode_e2m1(code):
    """e2m1 from its bits: s|e1 e0|m -> (-1)^s * (m/2 if e == 0 else 2^(e-1) * (1 + m/2))."""
    s, e, m = (code >> 3) & 1, (code >> 1) & 3, code & 1
    mag = torch.where(e == 0, m * 0.5, torch.pow(2.0, (e - 1).double()) * (1 + m * 0.5))
    return torch.where(s == 1, -mag, mag)


def _pack(codes):
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8).view(torch.float4_e2m1fn_x2)


def test_fp4_reference_decodes_e2m1_blocks(compiled):
    d = compiled["qwen3-30b-a3b"][0]["gemm_fp4_n5120_k2048_block_size16"]
    assert d["constraints"] == ["K_packed * 2 == K", "K_blocks * block_size == K"]
    assert (d["axes"]["K"]["value"], d["axes"]["block_size"]["value"]) == (2048, 16)
    run = load_reference(d)
    g = torch.Generator().manual_seed(2)
    M, N, K = 3, 5120, 2048
    ca = torch.randint(0, 16, (M, K), generator=g)
    cb = torch.randint(0, 16, (N, K), generator=g)
    sa = torch.exp2(torch.randint(-3, 3, (M, K // 16), generator=g).float()).to(torch.float8_e4m3fn)
    sb = torch.exp2(torch.randint(-3, 3, (N, K // 16), generator=g).float()).to(torch.float8_e4m3fn)
    alpha = torch.tensor(0.37)
    out = run(_pack(ca), _pack(cb), sa, sb, alpha)
    assert out.dtype == torch.bfloat16 and out.shape == (M, N)
    deq_a = _decode_e2m1(ca) * sa.double().repeat_interleave(16, 1)
    deq_b = _decode_e2m1(cb) * sb.double().repeat_interleave(16, 1)
    torch.testing.assert_close(out.double(), 0.37 * deq_a @ deq_b.t(), atol=0.5, rtol=1e-2)
    # all 16 codes decode as the E2M1 table says
    assert _decode_e2m1(torch.arange(16)).tolist()[:8] == E2M1_MAGNITUDES


def test_mxfp8_reference_applies_power_of_two_block_scales(compiled):
    d = compiled["qwen3-30b-a3b"][0]["gemm_mxfp8_n5120_k2048"]
    run = load_reference(d)
    g = torch.Generator().manual_seed(3)
    M, N, K = 4, 5120, 2048
    a = torch.randn(M, K, generator=g).to(torch.float8_e4m3fn)
    b = torch.randn(N, K, generator=g).to(torch.float8_e4m3fn)
    ea = torch.randint(120, 134, (M, K // 32), generator=g)   # E8M0 biased exponents
    eb = torch.randint(120, 134, (N, K // 32), generator=g)
    out = run(a, b, ea.to(torch.int8), eb.to(torch.int8))
    deq_a = torch.ldexp(a.double(), (ea - 127).repeat_interleave(32, 1))
    deq_b = torch.ldexp(b.double(), (eb - 127).repeat_interleave(32, 1))
    torch.testing.assert_close(out.double(), deq_a @ deq_b.t(), atol=1e-1, rtol=1e-2)
    # bytes >= 128 are read as unsigned E8M0 exponents, not negative int8
    big = torch.full((M, K // 32), 128).to(torch.uint8).view(torch.int8)
    ones = torch.full((N, K // 32), 127).to(torch.int8)
    torch.testing.assert_close(run(a, b, big, ones).double(), 2 * (a.double() @ b.double().t()), atol=1e-1, rtol=1e-2)


def _check_same(theirs, ours, var=None):
    """Names, shapes (with var axes bound) and dtypes of every tensor agree."""
    assert list(theirs["inputs"]) == list(ours["inputs"])
    assert list(theirs["outputs"]) == list(ours["outputs"])
    for sect in ("inputs", "outputs"):
        for k, t in ours[sect].items():
            assert concrete_shape(theirs, theirs[sect][k], var) == concrete_shape(ours, t, var), (sect, k)
            assert theirs[sect][k]["dtype"] == t["dtype"], (sect, k)


def test_dense_agrees_with_mm_bf16_and_tinygemm(compiled):
    docs, insts = compiled["llama-3.1-8b"]
    ours, aliases = docs["gemm_n6144_k4096"], insts["gemm_n6144_k4096"].aliases
    M = 7
    mm = fi_trace("flashinfer.gemm.gemm_base.mm_bf16", a=meta((M, 4096), "bfloat16"), b=meta((4096, 6144), "bfloat16"))
    assert (mm["name"], mm["op_type"]) == (aliases[0]["name"], aliases[0]["op_type"]) == ("gemm_bf16_N6144_K4096", "gemm_bf16")
    assert const_axes(mm) == const_axes(ours)
    # deliberate differences (spec notes/aliases): B is the [K, N] view, tensors are bfloat16
    assert mm["inputs"]["B"]["shape"] == ["K", "N"] and ours["inputs"]["B"]["shape"] == ["N", "K"]
    assert mm["inputs"]["A"]["shape"] == ours["inputs"]["A"]["shape"]
    assert {mm["inputs"]["A"]["dtype"], mm["outputs"]["C"]["dtype"]} == {"bfloat16"}
    tiny = fi_trace("flashinfer.gemm.routergemm.tinygemm_bf16", input=meta((M, 4096), "bfloat16"),
                    weight=meta((6144, 4096), "bfloat16"), out=meta((M, 6144), "bfloat16"))
    assert (tiny["name"], tiny["op_type"]) == (aliases[1]["name"], aliases[1]["op_type"])
    assert const_axes(tiny) == const_axes(ours)
    assert tiny["inputs"]["weight"]["shape"] == ours["inputs"]["B"]["shape"]


def test_fp8_agrees_exactly_with_gemm_fp8_nt_groupwise(compiled):
    docs, insts = compiled["deepseek-v3"]
    name = "gemm_fp8_nt_groupwise_n2112_k7168"
    ours = docs[name]
    M = 9
    kw = dict(a=meta((M, 7168), "float8_e4m3fn"), b=meta((2112, 7168), "float8_e4m3fn"),
              a_scale=meta((M, 56), "float32"), b_scale=meta((17, 56), "float32"))
    theirs = fi_trace("flashinfer.gemm.gemm_base.gemm_fp8_nt_groupwise", **kw)
    assert theirs["name"] == ours["name"] and theirs["op_type"] == ours["op_type"]
    assert {k: (v["type"], v.get("value")) for k, v in theirs["axes"].items()} == \
           {k: (v["type"], v.get("value")) for k, v in ours["axes"].items()}
    _check_same(theirs, ours, {"M": M, "K_div_block": 56, "N_div_block": 17})
    assert [t for t in theirs["tags"] if not t.startswith("status")] == \
           [t for t in ours["tags"] if t.startswith(("fi_api", "quantization"))]
    sm90 = fi_trace("flashinfer.gemm.gemm_base.fp8_blockscale_gemm_sm90", input=kw["a"], weight=kw["b"],
                    input_scale=kw["a_scale"], weight_scale=kw["b_scale"])
    assert sm90["name"] in [a["name"] for a in insts[name].aliases]
    assert const_axes(sm90) == const_axes(ours)


def test_fp4_agrees_with_mm_fp4_up_to_the_recorded_layout(compiled):
    docs, insts = compiled["qwen3-30b-a3b"]
    name = "gemm_fp4_n5120_k2048_block_size16"
    ours = docs[name]
    M, N, K = 3, 5120, 2048
    theirs = fi_trace("flashinfer.gemm.gemm_base.mm_fp4", a=meta((M, K // 2), "uint8"), b=meta((K // 2, N), "uint8"),
                      a_descale=meta((M, K // 16), "float8_e4m3fn"), b_descale=meta((K // 16, N), "float8_e4m3fn"),
                      block_size=16)
    ca = const_axes(theirs)
    assert theirs["op_type"] == ours["op_type"]
    assert theirs["name"] in [a["name"] for a in insts[name].aliases]
    # the dumper's "K" is the packed width and B is the [K/2, N] view: recorded differences
    assert ca["K"] == K // 2 and ours["axes"]["K"]["value"] == K and ca["N"] == N
    assert ca["block_size"] == ours["axes"]["block_size"]["value"]
    var = {"M": M, "K_packed": K // 2, "K_blocks": K // 16}
    assert concrete_shape(theirs, theirs["inputs"]["A"], var) == concrete_shape(ours, ours["inputs"]["A"], var)
    assert concrete_shape(theirs, theirs["inputs"]["B"]) == (K // 2, N)
    assert concrete_shape(ours, ours["inputs"]["B"], var) == (N, K // 2)
    assert theirs["outputs"]["C"]["dtype"] == ours["outputs"]["C"]["dtype"] == "bfloat16"
    assert "alpha" not in theirs["inputs"] and "alpha" in ours["inputs"]


def test_mxfp8_agrees_with_mm_mxfp8_up_to_the_recorded_layout(compiled):
    docs, insts = compiled["qwen3-30b-a3b"]
    name = "gemm_mxfp8_n5120_k2048"
    ours = docs[name]
    M, N, K = 4, 5120, 2048
    theirs = fi_trace("flashinfer.gemm.gemm_base.mm_mxfp8", a=meta((M, K), "float8_e4m3fn"),
                      b=meta((K, N), "float8_e4m3fn"), a_descale=meta((128 * K // 32,), "uint8"),
                      b_descale=meta((N * K // 32,), "uint8"))
    assert theirs["op_type"] == ours["op_type"]
    assert theirs["name"] in [a["name"] for a in insts[name].aliases]
    ca = const_axes(theirs)
    assert (ca["N"], ca["K"]) == (ours["axes"]["N"]["value"], ours["axes"]["K"]["value"])
    for t in ("A", "B"):
        assert theirs["inputs"][t]["dtype"] == ours["inputs"][t]["dtype"] == "float8_e4m3fn"
    assert theirs["outputs"]["C"]["dtype"] == ours["outputs"]["C"]["dtype"]
    # scales: 1-D swizzled uint8 buffers there, [rows, K/32] raw E8M0 bytes (int8) here
    assert len(theirs["inputs"]["a_descale"]["shape"]) == 1 and ours["inputs"]["a_descale"]["shape"] == ["M", "K_blocks"]


def test_missing_hidden_size_is_a_one_line_gap(tmp_path):
    """A config without hidden_size: the gemm family is not compiled, and the gap names the field and
    the spec line (one line), instead of emitting anything."""
    import json
    from defc.compiler.pipeline import CompileOptions, compile_model
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128, "vocab_size": 100}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    res = compile_model(CompileOptions(config=str(path), specs=["gemm"], out=str(tmp_path / "o")))
    assert not res.planned
    gaps = [f for f in res.findings if f.kind == "gap"]
    assert len(gaps) == 1 and gaps[0].subject == "gemm"
    msg = gaps[0].line()
    assert "\n" not in msg and "gemm.yaml" in msg and "'hidden_size'" in msg


# -- corpus models (tests/corpus: hand facts from each model's SGLang implementation) -------------

import os

import yaml

from conftest import ROOT

CORPUS = os.path.join(ROOT, "tests", "corpus")


def _corpus(slug):
    with open(os.path.join(CORPUS, slug, "facts.yaml")) as fh:
        return yaml.safe_load(fh)


def _corpus_gemms(tmp_path, slug):
    docs, _ = compile_planned(tmp_path, os.path.join(CORPUS, slug, "config.json"), ["gemm"])
    return plain(docs), docs


@pytest.mark.parametrize("slug", ["phi-2", "gpt2-large", "starcoder2-15b", "glm-4-9b-chat", "mistral-7b-v0.1",
                                  "gemma-2-9b"])
def test_corpus_dense_models_projection_sets(tmp_path, slug):
    """Every projection of a dense softmax-attention model from its hand facts: fused QKV
    (GPT-2 c_attn, Phi qkv_proj, ChatGLM query_key_value), the output projection, the MLP (gated:
    gate_up [2I, H] + down; non-gated: GPT-2 / Starcoder2 c_fc, Phi fc1 [I, H] + c_proj / fc2
    [H, I]) and the LM head."""
    f = _corpus(slug)
    a, h, i = f["attention"], f["norm"]["hidden"], f["mlp"]["intermediate"]
    want = {f"gemm_n{(a['num_attention_heads'] + 2 * a['num_kv_heads']) * a['head_dim']}_k{h}",
            f"gemm_n{h}_k{a['num_attention_heads'] * a['head_dim']}",
            f"gemm_n{(2 if f['mlp']['kind'] == 'gated' else 1) * i}_k{h}",
            f"gemm_n{h}_k{i}",
            f"gemm_n{f['vocab_size']}_k{h}"}
    got, docs = _corpus_gemms(tmp_path, slug)
    assert got == want
    if f["mlp"]["kind"] == "non_gated":
        assert "mlp.up_proj" in docs[f"gemm_n{i}_k{h}"]["description"]


def test_corpus_moe_dense_layers_and_shared_experts(tmp_path):
    # Laguna: mlp_layer_types ["dense", "sparse", ...] -> one dense gated MLP of intermediate_size
    f = _corpus("laguna-xs.2")
    h, i = f["norm"]["hidden"], f["mlp"]["intermediate"]
    got, _ = _corpus_gemms(tmp_path / "laguna", "laguna-xs.2")
    assert {f"gemm_n{2 * i}_k{h}", f"gemm_n{h}_k{i}"} <= got
    # MiMo-V2-Flash: moe_layer_freq is a per-layer list whose 0 marks the dense layer
    f = _corpus("mimo-v2-flash")
    got, _ = _corpus_gemms(tmp_path / "mimo", "mimo-v2-flash")
    assert {f"gemm_n{2 * f['mlp']['intermediate']}_k{f['norm']['hidden']}"} <= got
    # Nemotron-3-Nano: no '-' layer, so no dense MLP; a non-gated relu2 shared expert of
    # moe_shared_expert_intermediate_size x n_shared_experts (up [S, H], down [H, S])
    f = _corpus("nemotron-3-nano-30b-a3b")
    h, s = f["norm"]["hidden"], f["moe"]["shared_experts"]["intermediate"]
    got, docs = _corpus_gemms(tmp_path / "nano", "nemotron-3-nano-30b-a3b")
    assert {f"gemm_n{s}_k{h}", f"gemm_n{h}_k{s}"} <= got
    assert "moe.shared_experts.up_proj" in docs[f"gemm_n{s}_k{h}"]["description"]
    assert not any(n.startswith(f"gemm_n{2 * s}_") or n.endswith(f"_k{s // 2}") for n in got)
