"""defc cost: the specs' cost: blocks against hand counts for llama-3.1-8b (hidden 4096, intermediate
14336, 32 query / 8 KV heads of 128, 32 layers, vocabulary 128256), the roofline on H100 peaks, the
command, and that no emitted definition carries the cost."""
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
    assert "merge_state_h32_d128" in scs["decode-b1-c4096"].not_costed


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


def test_committed_doc_is_the_commands_output(capsys):
    assert main(["cost", "--model", "llama-3.1-8b", "--gpu", "h100", "--format", "markdown"]) == 0
    with open(os.path.join(ROOT, "docs", "cost-llama-3.1-8b-h100.md"), encoding="utf-8") as f:
        assert capsys.readouterr().out == f.read()
