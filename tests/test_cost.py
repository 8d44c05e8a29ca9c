"""defc cost: the specs' cost: blocks against hand counts for llama-3.1-8b (hidden 4096, intermediate
14336, 32 query / 8 KV heads of 128, 32 layers, vocabulary 128256) at tp1 and tp2, and for one
definition or more of each other family: deepseek-v3 MLA and FP8 MoE at tp8 ep8, qwen3-30b-a3b's MoE,
gpt-oss-20b's and gemma-3-27b's sliding-window layers, qwen3-next-80b-a3b's gated delta-net, the
layer counts; the roofline on H100 peaks, the command, the side files, and that no emitted
definition carries the cost.  The expected numbers are written from each model's config.json
(catalogue/models/*.yaml)."""
import json
import os

import pytest

from conftest import ROOT, compile_defs
from defc.authoring import cost as C
from defc.cli import main

L = 32


@pytest.fixture(scope="module")
def costs():
    res = C.model_costs("llama-3.1-8b", list(C.load_scenarios()))
    return {sc.scenario: {c.name: c for c in sc.costs} for sc in res}, {sc.scenario: sc for sc in res}


def test_scenarios_are_the_documented_ones():
    s = C.load_scenarios()
    assert s["decode-b64-c4096"] == {"stage": "decode", "num_seqs": 64, "q_len": 1, "kv_len": 4096,
                                     "kv_page_size": 1, "num_tokens": 64}
    assert s["prefill-n4096"]["num_tokens"] == 4096


def test_gemm_hand_counts(costs):
    by, _ = costs
    qkv = by["decode-b64-c4096"]["gemm_n6144_k4096"]          # (32 + 2*8) * 128 = 6144 outputs
    assert qkv.flops == 2 * 64 * 6144 * 4096 == 3_221_225_472
    assert qkv.bytes_read == 2 * (64 * 4096 + 6144 * 4096) == 50_855_936
    assert qkv.bytes_written == 2 * 64 * 6144
    assert qkv.calls == L
    gate_up = by["prefill-n4096"]["gemm_n28672_k4096"]
    assert gate_up.flops == 2 * 4096 * 28672 * 4096
    assert gate_up.bytes_read == 2 * (4096 * 4096 + 28672 * 4096)
    down = by["decode-b1-c4096"]["gemm_n4096_k14336"]
    assert (down.flops, down.bytes_written, down.calls) == (2 * 4096 * 14336, 2 * 4096, L)
    # lm_head: only each sequence's last token, once a step
    head = by["prefill-n4096"]["gemm_n128256_k4096"]
    assert (head.flops, head.calls) == (2 * 128256 * 4096, 1)
    assert head.bytes_read == 2 * (4096 + 128256 * 4096)
    assert by["decode-b64-c4096"]["gemm_n128256_k4096"].flops == 2 * 64 * 128256 * 4096


def test_norm_activation_rope_sampling_hand_counts(costs):
    by, _ = costs
    p = by["prefill-n4096"]
    n = p["rmsnorm_h4096"]
    assert (n.flops, n.bytes_read, n.bytes_written, n.calls) == (
        4 * 4096 * 4096, 2 * (4096 * 4096 + 4096), 2 * 4096 * 4096, 1)
    f = p["fused_add_rmsnorm_h4096"]
    assert (f.flops, f.bytes_read, f.bytes_written, f.calls) == (
        5 * 4096 * 4096, 2 * (2 * 4096 * 4096 + 4096), 4 * 4096 * 4096, 2 * L)
    act = by["decode-b1-c4096"]["silu_and_mul_h28672"]
    assert (act.flops, act.bytes_read, act.bytes_written, act.calls) == (5 * 14336, 2 * 28672, 2 * 14336, L)
    rope = p["rope_with_cos_sin_cache_neox_style_d128_rd128"]
    assert rope.flops == 3 * 4096 * (32 + 8) * 128
    assert rope.bytes_read == 2 * 4096 * 40 * 128 + 4 * 4096 * 128 + 8 * 4096
    assert rope.calls == L
    smp = by["decode-b64-c4096"]["top_k_top_p_sampling_from_probs_v128256"]
    assert (smp.bytes_read, smp.bytes_written, smp.calls) == (4 * 64 * 128256 + 8 * 64, 8 * 64, 1)


def test_attention_hand_counts(costs):
    by, _ = costs
    d = by["decode-b64-c4096"]
    a = d["gqa_paged_decode_h32_kv8_d128_ps1"]
    assert a.flops == 4 * 64 * 32 * 4096 * 128                         # q.k and p.v over 4096 keys
    kv_bytes = 2 * 2 * 64 * 4096 * 8 * 128                             # K and V, bf16: the KV cache read
    assert kv_bytes == 1_073_741_824
    assert a.bytes_read == 2 * 64 * 32 * 128 + kv_bytes + 4 * (65 + 64 * 4096)
    assert a.bytes_written == 2 * 64 * 32 * 128 + 4 * 64 * 32
    assert a.calls == L
    assert d["gqa_paged_decode_h32_kv8_d128_ps64"].calls == 0           # the scenario serves page size 1
    assert d["gqa_ragged_prefill_causal_h32_kv8_d128"].calls == 0
    r = by["prefill-n4096"]["gqa_ragged_prefill_causal_h32_kv8_d128"]
    assert r.flops == 4 * 32 * 128 * (4096 * 4097 // 2) == 137_472_507_904   # causal pairs
    assert r.bytes_read == 2 * 4096 * 32 * 128 + 4 * 4096 * 8 * 128 + 8 * 2
    assert r.calls == L
    assert by["prefill-n4096"]["gqa_paged_decode_h32_kv8_d128_ps1"].calls == 0


def test_roofline_and_shares(costs):
    _, scs = costs
    h100 = C.load_gpus()["h100"]
    assert (h100["bf16_flops_per_s"], h100["bytes_per_s"]) == (989.4e12, 3.35e12)
    rows = {r["definition"]: r for r in C.rows(scs["decode-b1-c4096"], h100)}
    o = rows["gemm_n4096_k4096"]
    assert o["bound"] == "memory"
    assert o["roofline_us"] == pytest.approx((2 * (4096 + 4096 * 4096) + 2 * 4096) / 3.35e12 * 1e6)
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    # batch-1 decode reads every weight once: 32 * (6144 + 4096 + 28672 + 14336) * 4096 + 128256 * 4096
    weights = 2 * (L * (6144 + 4096 + 28672 + 14336) * 4096 + 128256 * 4096)
    gemm_us = sum(r["step_us"] for n, r in rows.items() if n.startswith("gemm_"))
    assert gemm_us == pytest.approx(weights / 3.35e12 * 1e6, rel=1e-3)
    pre = {r["definition"]: r for r in C.rows(scs["prefill-n4096"], h100)}
    assert pre["gemm_n28672_k4096"]["bound"] == "compute"
    assert pre["gemm_n28672_k4096"]["roofline_us"] == pytest.approx(2 * 4096 * 28672 * 4096 / 989.4e12 * 1e6)


def test_not_costed_listed(costs):
    _, scs = costs
    assert "top_k_renorm_probs_v128256" in scs["decode-b1-c4096"].not_costed
    assert scs["decode-b1-c4096"].costs and not scs["decode-b1-c4096"].why_not


def test_emitted_definitions_carry_no_cost(tmp_path):
    docs = compile_defs(tmp_path, "llama-3.1-8b", tp=[1])
    items = docs.values() if isinstance(docs, dict) else docs
    assert items and all("cost" not in d for d in items)


def test_command_json_and_errors(capsys):
    assert main(["cost", "--model", "llama-3.1-8b", "--gpu", "h200", "--scenario", "decode-b1-c4096",
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpu"]["bytes_per_s"] == 4.8e12
    names = [r["definition"] for r in out["scenarios"][0]["rows"]]
    assert names[0] == "gemm_n28672_k4096"                               # the largest weight read 32 times
    assert main(["cost", "--model", "llama-3.1-8b", "--scenario", "nope"]) == 2


@pytest.mark.parametrize("doc,argv", [
    ("cost-llama-3.1-8b-h100.md", ["--model", "llama-3.1-8b", "--gpu", "h100"]),
    ("cost-deepseek-v3-h200.md", ["--model", "deepseek-v3", "--gpu", "h200", "--tp", "8", "--ep", "8"]),
])
def test_committed_doc_is_the_commands_output(capsys, doc, argv):
    assert main(["cost"] + argv + ["--format", "markdown"]) == 0
    with open(os.path.join(ROOT, "docs", doc), encoding="utf-8") as f:
        text = f.read()
    assert capsys.readouterr().out == text
    assert f"`defc cost {' '.join(argv)} --format markdown`" in text.splitlines()[2]


# --- other families and TP ---------------------------------------------------------------------

def _by(model, scenario, **kw):
    (sc,) = C.model_costs(model, [scenario], **kw)
    return {c.name: c for c in sc.costs}, sc


def test_tp2_gemm_shapes_are_per_rank():
    by, _ = _by("llama-3.1-8b", "decode-b64-c4096", tp=2)
    M = 64
    qkv = by["gemm_n6144_k4096"]                      # column-parallel: (32/2 + 2 * 8/2) * 128 = 3072 rows a rank
    assert (qkv.flops, qkv.bytes_read, qkv.calls) == (2 * M * 3072 * 4096, 2 * (M * 4096 + 3072 * 4096), L)
    o = by["gemm_n4096_k4096"]                        # row-parallel: K = 32 * 128 / 2
    assert (o.flops, o.bytes_read, o.bytes_written) == (2 * M * 4096 * 2048, 2 * (M * 2048 + 4096 * 2048), 2 * M * 4096)
    gate_up = by["gemm_n28672_k4096"]                 # 2 * 14336 / 2 rows
    assert gate_up.flops == 2 * M * 14336 * 4096 and gate_up.calls == L
    down = by["gemm_n4096_k14336"]                    # K = 14336 / 2
    assert down.bytes_read == 2 * (M * 7168 + 4096 * 7168)
    head = by["gemm_n128256_k4096"]                   # vocabulary-parallel
    assert (head.flops, head.calls) == (2 * M * 64128 * 4096, 1)
    attn = by["gqa_paged_decode_h16_kv4_d128_ps1"]
    assert attn.bytes_read == 2 * M * 16 * 128 + 4 * M * 4096 * 4 * 128 + 4 * (M + 1 + M * 4096)


def test_deepseek_v3_mla_and_moe_tp8_ep8():
    # 61 layers (3 dense, 58 MoE), 128 heads -> 16 a rank, kv_lora_rank 512, rope dim 64,
    # 256 experts of 2048 (32 a rank at ep8, moe_tp 1), top-8, hidden 7168
    by, sc = _by("deepseek-v3", "decode-b64-c4096", tp=8, ep=8)
    B, H, S = 64, 16, 4096
    mla = by["mla_paged_decode_h16_ckv512_kpe64_ps1"]
    assert mla.flops == 2 * B * H * S * (2 * 512 + 64)
    assert mla.bytes_read == 2 * B * H * 576 + 2 * B * S * 576 + 4 * (B + 1 + B * S + B)
    assert mla.bytes_written == 2 * B * H * 512 + 4 * B * H
    assert mla.calls == 61
    moe = by["moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"]
    pairs = B * 8 * 32 // 256                          # 64 (token, expert) pairs on this rank's 32 experts
    assert moe.flops == 6 * pairs * 7168 * 2048
    per_expert = 3 * 2048 * 7168 + 4 * (32 * 56 + 56 * 16)        # fp8 weights + 128x128 block scales
    assert moe.bytes_read == 4 * B * 256 + 2 * 256 + B * 7168 + 4 * B * 56 + 32 * per_expert
    assert (moe.bytes_written, moe.calls) == (2 * B * 7168, 58)
    # the attention projections in FP8 (block-scale variant), the MLA up-projection split by 8 heads' worth
    q_b = by["gemm_fp8_nt_groupwise_n24576_k1536"]
    assert q_b.flops == 2 * B * (24576 // 8) * 1536 and q_b.calls == 61
    assert q_b.bytes_read == B * 1536 + 3072 * 1536 + 4 * B * 12 + 4 * 24 * 12
    assert "gemm_n24576_k1536" in sc.not_run           # the bf16 form does not run at fp8
    (prefill,) = C.model_costs("deepseek-v3", ["prefill-n4096"], tp=8, ep=8)
    rag = {c.name: c for c in prefill.costs}["mla_ragged_prefill_causal_h16_qk192_vo128"]
    assert rag.flops == 2 * H * (192 + 128) * 4096 * 4097 // 2 and rag.calls == 61


def test_qwen3_30b_a3b_moe():
    # 48 MoE layers, 128 experts of 768, top-8, hidden 2048, renormalised softmax routing
    by, _ = _by("qwen3-30b-a3b", "decode-b1-c4096", quantization="bf16")
    moe = by["trtllm_bf16_moe_topk8_e128_h2048_i768"]
    assert moe.flops == 6 * 8 * 2048 * 768                           # 8 experts hit by one token
    assert moe.bytes_read == 2 * 128 + 2 * 2048 + 8 * 2 * 3 * 768 * 2048
    assert (moe.bytes_written, moe.calls) == (2 * 2048, 48)
    by64, _ = _by("qwen3-30b-a3b", "decode-b64-c4096", quantization="fp8")
    fp8 = by64["moe_fp8_block_scale_renorm_topk8_e128_h2048_i768"]
    assert fp8.flops == 6 * 64 * 8 * 2048 * 768
    assert fp8.bytes_read == (2 * 64 * 128 + 64 * 2048 + 4 * 64 * 16
                              + 128 * (3 * 768 * 2048 + 4 * (12 * 16 + 16 * 6)))   # every expert hit
    assert by64["trtllm_fp8_per_tensor_scale_moe_topk8_e128_h2048_i768"].calls == 0
    router = by64["gemm_n128_k2048"]                                   # unquantized router, once per MoE layer
    assert (router.flops, router.calls) == (2 * 64 * 128 * 2048, 48)


def test_sliding_window_layers():
    # gpt-oss-20b: 24 layers alternating sliding (window 128) and full, 64 query / 8 KV heads of 64, sinks
    by, _ = _by("gpt-oss-20b", "decode-b64-c4096", quantization="mxfp4")
    swa = by["gqa_paged_decode_h64_kv8_d64_ps1_swa128_sink"]
    assert swa.flops == 4 * 64 * 64 * 128 * 64                         # 128 keys, not 4096
    assert swa.bytes_read == 2 * 64 * 64 * 64 + 2 * 2 * 64 * 128 * 8 * 64 + 4 * (65 + 64 * 128) + 4 * 64
    assert swa.calls == 12 and by["gqa_paged_decode_h64_kv8_d64_ps1_sink"].calls == 12
    moe = by["trtllm_fp4_block_scale_routed_moe_topk4_e32_h2880_i2880"]
    per_expert = 3 * 2880 * 2880 // 2 + 3 * 2880 * 2880 // 32 + 4 * (2 * 2880 + 2880 + 3)
    assert moe.bytes_read == 4 * 64 * 4 + 2 * 64 * 2880 + 32 * per_expert and moe.calls == 24
    # gemma-3-27b: 62 layers, every 6th full (10), the rest sliding with window 1024; 32 / 16 heads of 128
    pre, _ = _by("gemma-3-27b", "prefill-n4096")
    rag = pre["gqa_ragged_prefill_causal_h32_kv16_d128_swa1024"]
    assert rag.flops == 4 * 32 * 128 * (1024 * 1025 // 2 + (4096 - 1024) * 1024)
    assert rag.calls == 52 and pre["gqa_ragged_prefill_causal_h32_kv16_d128"].calls == 10


def test_qwen3_next_gated_delta_net_tp2():
    # 48 layers, every 4th full attention: 36 GDN layers; 16 key heads / 32 value heads of 128, / tp 2
    by, _ = _by("qwen3-next-80b-a3b", "decode-b64-c4096", tp=2, quantization="bf16")
    g = by["gdn_decode_qk8_v16_d128_k_last"]
    state = 4 * 64 * 16 * 128 * 128                                    # float32 [B, Hv, 128, 128]
    assert g.flops == 7 * 64 * 16 * 128 * 128
    assert g.bytes_read == 2 * 64 * (8 + 8 + 16) * 128 + state + 2 * 2 * 64 * 16 + 2 * 4 * 16
    assert g.bytes_written == 2 * 64 * 16 * 128 + state
    assert g.calls == 36
    assert by["gqa_paged_decode_h8_kv1_d256_ps1"].calls == 12
    qkvz = by["gemm_n12288_k2048"]                                     # (2*16*128 + 2*32*128) / 2 rows a rank
    assert (qkvz.flops, qkvz.calls) == (2 * 64 * 6144 * 2048, 36)


def test_layer_counts_from_config_facts():
    base = {"is_moe": True, "num_hidden_layers": 48, "is_mla": False, "has_softmax_attention": True,
            "has_swa_layers": False}
    assert C.layer_counts({**base, "decoder_sparse_step": 1, "mlp_only_layers": [3, 7]})["moe_layers"] == 46
    assert C.layer_counts({**base, "first_k_dense_replace": 3, "moe_layer_freq": 2})["moe_layers"] == 22  # 4, 6, .., 46
    odd = C.layer_counts({**base, "decoder_sparse_step": 2, "mlp_only_layers": [3]})
    assert "moe_layers" not in odd and "dense_mlp_layers" not in odd     # not knowable: left undefined
    assert C.layer_counts({**base, "hybrid_override_pattern": "M-M*-E"})["mamba_layers"] == 2


def test_side_files_hold_the_evaluated_numbers(tmp_path, capsys):
    from defc.compiler import formula as F
    out = str(tmp_path / "ds")
    argv = ["cost", "--model", "llama-3.1-8b", "--tp", "2", "--gpu", "h200", "--format", "json", "--out", out]
    assert main(argv) == 0
    rows = {r["definition"]: r for sc in json.loads(capsys.readouterr().out)["scenarios"] for r in sc["rows"]
            if sc["scenario"] == "decode-b64-c4096"}
    path = os.path.join(out, "cost", "gemm", "gemm_n6144_k4096.json")
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    entry = doc["costs"]["llama-3.1-8b tp2 bf16"]
    assert (doc["name"], doc["op_type"], entry["gpu"]["bytes_per_s"]) == ("gemm_n6144_k4096", "gemm", 4.8e12)
    got = entry["scenarios"]["decode-b64-c4096"]
    assert (got["flops"], got["bytes_read"], got["bytes_written"], got["calls_per_step"]) == (
        2 * 64 * 3072 * 4096, 2 * (64 * 4096 + 3072 * 4096), 2 * 64 * 3072, L)
    r = rows["gemm_n6144_k4096"]
    assert (got["flops"], got["bytes_read"], got["roofline_us"]) == (r["flops"], r["bytes_read"], round(r["roofline_us"], 6))
    # the formulas (consts put in) give the same numbers at the scenario's vars
    sym = {**C.load_scenarios()["decode-b64-c4096"], **got["vars"]}
    for k in ("flops", "bytes_read", "bytes_written", "calls_per_step"):
        assert F.to_python(F.parse(entry["formulas"][k]).evaluate(sym)) == got[k]
    assert entry["formulas"]["flops"] == "25165824*M"
    # a rerun changes nothing; a differing entry is a collision, left as it is
    with open(path, encoding="utf-8") as f:
        before = f.read()
    assert main(argv) == 0
    entry["formulas"]["flops"] = "1"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    capsys.readouterr()
    assert main(argv) == 1
    assert "gemm_n6144_k4096.json" in capsys.readouterr().err
    with open(path, encoding="utf-8") as f:
        assert json.load(f)["costs"]["llama-3.1-8b tp2 bf16"]["formulas"]["flops"] == "1"
    assert main(argv + ["--force"]) == 0
    with open(path, encoding="utf-8") as f:
        assert f.read() == before
