"""gqa_paged / gqa_ragged: shapes per model and serving config, references against independent
torch math and FlashInfer's own template references, agreement with FlashInfer's dumper."""
import json
import math
import os

import pytest
import torch

from conftest import compile_defs, load_reference
from fi_oracle import concrete_shape, const_axes, fi_trace, flashinfer, meta

SPECS = ["gqa_paged", "gqa_ragged"]
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """compiled(model, **serving) -> {name: definition}, each call in its own output folder."""
    import functools
    from defc.compiler import serving
    cache = {}
    # Reading the bundled cookbook snapshot costs ~1 s a compile; it does not change within a test run.
    mp = pytest.MonkeyPatch()
    mp.setattr(serving, "load_snapshot", functools.lru_cache(maxsize=None)(serving.load_snapshot))

    def _c(model, **kw):
        key = (model, json.dumps(kw, sort_keys=True))
        if key not in cache:
            out = tmp_path_factory.mktemp(model.replace(".", "_"))
            cache[key] = compile_defs(out, model, specs=SPECS, **kw)
        return cache[key]
    yield _c
    mp.undo()


def names(docs, prefix=""):
    return {n for n in docs if n.startswith(prefix)}


def tags(doc):
    return set(doc["tags"])


# ---------------------------------------------------------------------------------------------
# shapes per model and serving configuration

def test_llama_8b_tp1_is_the_curated_set(compiled):
    docs = compiled("llama-3.1-8b")
    assert set(docs) == {
        "gqa_paged_decode_h32_kv8_d128_ps1", "gqa_paged_decode_h32_kv8_d128_ps64",
        "gqa_paged_prefill_causal_h32_kv8_d128_ps1", "gqa_paged_prefill_causal_h32_kv8_d128_ps64",
        "gqa_ragged_prefill_causal_h32_kv8_d128"}
    d1, d64 = docs["gqa_paged_decode_h32_kv8_d128_ps1"], docs["gqa_paged_decode_h32_kv8_d128_ps64"]
    assert "kv_last_page_len" not in d1["inputs"] and d64["inputs"]["kv_last_page_len"]["shape"] == ["batch_size"]
    p1, p64 = docs["gqa_paged_prefill_causal_h32_kv8_d128_ps1"], docs["gqa_paged_prefill_causal_h32_kv8_d128_ps64"]
    assert "batch_size" not in p1["axes"] and "kv_last_page_len" not in p1["inputs"]
    assert p64["axes"]["batch_size"] == {"type": "var", "description": "Number of sequences in the batch."}
    assert p1["constraints"] == ["total_q == qo_indptr[-1].item()", "num_kv_indices == kv_indptr[-1].item()"]
    assert p64["constraints"] == p1["constraints"] + ["len_indptr == batch_size + 1"]
    assert list(p64["inputs"]) == ["q", "k_cache", "v_cache", "qo_indptr", "kv_indptr", "kv_indices",
                                   "kv_last_page_len", "sm_scale"]
    assert {"stage:decode", "tp:1", "fi_api:flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper"} <= tags(d1)
    assert {"stage:prefill", "fi_api:flashinfer.prefill.BatchPrefillWithPagedKVCacheWrapper"} <= tags(p1)
    assert "fi_api:flashinfer.prefill.BatchPrefillWithRaggedKVCacheWrapper" in tags(
        docs["gqa_ragged_prefill_causal_h32_kv8_d128"])
    for d in docs.values():
        assert d["inputs"]["sm_scale"] == {"shape": None, "dtype": "float32",
                                           "description": "Softmax scale. Default is (1/sqrt(head_dim))."}
        assert d["outputs"]["lse"]["dtype"] == "float32"
        assert not any(t.startswith("dp:") for t in d["tags"])


def test_qwen3_30b_cookbook(compiled):
    docs = compiled("qwen3-30b-a3b")   # cookbook: tp1 (bf16 and fp8 rows)
    assert names(docs) == {"gqa_paged_decode_h32_kv4_d128_ps1", "gqa_paged_decode_h32_kv4_d128_ps64",
                           "gqa_paged_prefill_causal_h32_kv4_d128_ps1", "gqa_paged_prefill_causal_h32_kv4_d128_ps64",
                           "gqa_ragged_prefill_causal_h32_kv4_d128"}


def test_llama_70b_cookbook_tp4_with_dp_attention_row(compiled):
    # the cookbook lists tp4 plain and tp4 with enable_dp_attention (dp 1): both give 64/4 heads
    docs = compiled("llama-3.1-70b")
    assert names(docs, "gqa_paged_decode") == {"gqa_paged_decode_h16_kv2_d128_ps1", "gqa_paged_decode_h16_kv2_d128_ps64"}
    assert "gqa_ragged_prefill_causal_h16_kv2_d128" in docs
    for d in docs.values():
        assert "tp:4" in d["tags"] and not any(t.startswith("dp:") for t in d["tags"])


def test_kv_heads_replicated_when_fewer_than_ranks(compiled):
    docs = compiled("qwen3-235b-a22b")   # 64 q / 4 kv heads at tp 8
    assert "gqa_paged_decode_h8_kv1_d128_ps1" in docs and "gqa_ragged_prefill_causal_h8_kv1_d128" in docs
    assert all("tp:8" in d["tags"] for d in docs.values())


def test_dp_attention_splits_heads_by_attention_tp(compiled):
    docs = compiled("qwen3-235b-a22b", tp=[8], dp=[8])   # Qwen3-MoE: attn_tp = tp / dp = 1
    assert "gqa_paged_decode_h64_kv4_d128_ps64" in docs
    assert {"tp:8", "dp:8"} <= tags(docs["gqa_paged_decode_h64_kv4_d128_ps64"])
    llama = compiled("llama-3.1-8b", tp=[2], dp=[2])      # Llama splits by tp even under DP-attention
    assert "gqa_paged_decode_h16_kv4_d128_ps1" in llama


def test_qwen3_next_full_attention_layers(compiled):
    docs = compiled("qwen3-next-80b-a3b")   # cookbook tp2 and tp4; head_dim 256, 2 kv heads
    assert names(docs, "gqa_paged_decode") == {
        "gqa_paged_decode_h8_kv1_d256_ps1", "gqa_paged_decode_h8_kv1_d256_ps64",
        "gqa_paged_decode_h4_kv1_d256_ps1", "gqa_paged_decode_h4_kv1_d256_ps64"}
    assert {"tp:2"} <= tags(docs["gqa_paged_decode_h8_kv1_d256_ps1"])
    assert {"tp:4"} <= tags(docs["gqa_paged_decode_h4_kv1_d256_ps1"])


def test_hybrid_and_special_attention_models(compiled):
    nemo = compiled("nemotron-h-8b")      # '*' layers; head size from attention_head_dim
    assert "gqa_paged_decode_h32_kv8_d128_ps1" in nemo
    gemma = compiled("gemma-3-27b")       # local (sliding 1024) and global layers
    assert {"gqa_paged_decode_h32_kv16_d128_ps1", "gqa_paged_decode_h32_kv16_d128_ps1_swa1024",
            "gqa_ragged_prefill_causal_h32_kv16_d128_swa1024"} <= set(gemma)
    assert "mask:sliding_window" in tags(gemma["gqa_paged_decode_h32_kv16_d128_ps1_swa1024"])
    assert "variant:attention_sink" not in tags(gemma["gqa_paged_decode_h32_kv16_d128_ps1_swa1024"])
    assert "WINDOW_LEFT = 1023" in gemma["gqa_paged_decode_h32_kv16_d128_ps1_swa1024"]["reference"]
    assert "WINDOW_LEFT = -1" in gemma["gqa_paged_decode_h32_kv16_d128_ps1"]["reference"]
    oss = compiled("gpt-oss-20b")         # sinks on every layer, sliding 128 on half of them
    assert names(oss, "gqa_paged_decode") == {
        "gqa_paged_decode_h64_kv8_d64_ps1_sink", "gqa_paged_decode_h64_kv8_d64_ps64_sink",
        "gqa_paged_decode_h64_kv8_d64_ps1_swa128_sink", "gqa_paged_decode_h64_kv8_d64_ps64_swa128_sink"}
    assert not names(oss, "gqa_ragged")   # the ragged wrapper takes no sinks
    assert oss["gqa_paged_decode_h64_kv8_d64_ps1_sink"]["inputs"]["sinks"]["shape"] == ["num_qo_heads"]
    assert "variant:attention_sink" in tags(oss["gqa_paged_decode_h64_kv8_d64_ps1_sink"])
    assert {"variant:attention_sink", "mask:sliding_window"} <= tags(oss["gqa_paged_prefill_causal_h64_kv8_d64_ps1_swa128_sink"])
    assert "WINDOW_LEFT = 127" in oss["gqa_paged_prefill_causal_h64_kv8_d64_ps1_swa128_sink"]["reference"]
    scout = compiled("llama-4-scout")     # chunked / NoPE layers share the plain kernel shapes
    assert names(scout, "gqa_paged_decode") == {"gqa_paged_decode_h5_kv1_d128_ps1", "gqa_paged_decode_h5_kv1_d128_ps64"}
    assert compiled("deepseek-v3") == {}  # MLA: not this family


def test_every_definition_loads_in_flashinfer_bench(compiled):
    from flashinfer_bench.data import Definition
    seen = 0
    for model, kw in [("llama-3.1-8b", {}), ("qwen3-30b-a3b", {}), ("llama-3.1-70b", {}),
                      ("qwen3-235b-a22b", {}), ("qwen3-next-80b-a3b", {}), ("gpt-oss-20b", {}),
                      ("gemma-3-27b", {}), ("qwen3-235b-a22b", {"tp": [8], "dp": [8]})]:
        for d in compiled(model, **kw).values():
            Definition(**d)
            seen += 1
    assert seen >= 40


# ---------------------------------------------------------------------------------------------
# references

def paged_cache(kv_lens, page_size, num_kv_heads, head_dim, gen, spare_pages=3):
    """A shuffled page pool holding each sequence's tokens; returns the cache, the page table and
    the dense per-sequence K/V the table describes."""
    pages_per_seq = [max(1, -(-n // page_size)) for n in kv_lens]
    num_pages = sum(pages_per_seq) + spare_pages
    k_cache = torch.randn(num_pages, page_size, num_kv_heads, head_dim, generator=gen).to(torch.bfloat16)
    v_cache = torch.randn(num_pages, page_size, num_kv_heads, head_dim, generator=gen).to(torch.bfloat16)
    perm = torch.randperm(num_pages, generator=gen)
    indptr, indices, last, dense = [0], [], [], []
    for n, p in zip(kv_lens, pages_per_seq):
        ids = perm[indptr[-1]:indptr[-1] + p]
        indices += ids.tolist()
        indptr.append(indptr[-1] + p)
        last.append(n - (p - 1) * page_size)
        dense.append((k_cache[ids].reshape(-1, num_kv_heads, head_dim)[:n],
                      v_cache[ids].reshape(-1, num_kv_heads, head_dim)[:n]))
    i32 = lambda x: torch.tensor(x, dtype=torch.int32)
    return k_cache, v_cache, i32(indptr), i32(indices), i32(last), dense


def expanded_and_masked(q, k, v, window_left):
    """k, v in float64 with each KV head repeated for its query heads, and the causal (and
    window) mask of the n queries aligned to the end of the L keys."""
    n, hq, _ = q.shape
    L, hkv, _ = k.shape
    kk = k.double().repeat_interleave(hq // hkv, dim=1)
    vv = v.double().repeat_interleave(hq // hkv, dim=1)
    qpos = torch.arange(n)[:, None] + (L - n)
    kpos = torch.arange(L)[None, :]
    mask = kpos <= qpos
    if window_left >= 0:
        mask &= kpos >= qpos - window_left
    return kk, vv, mask


def dense_attention(q, k, v, scale, window_left=-1, sinks=None):
    """Independent per-sequence attention: q [n, Hq, D], k/v [L, Hkv, D]; causal aligned to the end.
    Without sinks the output comes from torch's scaled_dot_product_attention; lse (base 2) and the
    sink case from explicit float64 math."""
    kk, vv, mask = expanded_and_masked(q, k, v, window_left)
    scores = torch.einsum("nhd,lhd->hnl", q.double(), kk) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    if sinks is None:
        out = torch.nn.functional.scaled_dot_product_attention(
            q.double().transpose(0, 1), kk.transpose(0, 1), vv.transpose(0, 1), attn_mask=mask, scale=scale)
        out = out.transpose(0, 1)
        lse = torch.logsumexp(scores, -1)
    else:
        hq, n, L = scores.shape
        full = torch.cat([scores, sinks.double()[:, None, None].expand(hq, n, 1)], -1)
        p = torch.softmax(full, -1)[..., :L]
        out = torch.einsum("hnl,lhd->nhd", p, vv)
        lse = torch.logsumexp(full, -1)
    return out, (lse / LN2).transpose(0, 1)


def check(got, want_out, want_lse):
    out, lse = got
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), want_out.to(torch.bfloat16).double(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse.double(), want_lse, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("ps", [1, 64])
def test_paged_decode_reference(compiled, ps):
    docs = compiled("qwen3-30b-a3b")
    run = load_reference(docs[f"gqa_paged_decode_h32_kv4_d128_ps{ps}"])
    gen = torch.Generator().manual_seed(ps)
    kv_lens = [1, 70, 128, 5] if ps == 64 else [1, 9, 4]
    k_cache, v_cache, indptr, indices, last, dense = paged_cache(kv_lens, ps, 4, 128, gen)
    q = torch.randn(len(kv_lens), 32, 128, generator=gen).to(torch.bfloat16)
    scale = 1 / math.sqrt(128)
    args = [q, k_cache, v_cache, indptr, indices] + ([last] if ps > 1 else []) + [scale]
    outs = [dense_attention(q[b:b + 1], k, v, scale) for b, (k, v) in enumerate(dense)]
    check(run(*args), torch.cat([o for o, _ in outs]), torch.cat([l for _, l in outs]))
    with pytest.raises(AssertionError):   # const axes are checked
        run(q[:, :16], *args[1:])


@pytest.mark.parametrize("ps", [1, 64])
def test_paged_prefill_reference(compiled, ps):
    docs = compiled("llama-3.1-8b")
    run = load_reference(docs[f"gqa_paged_prefill_causal_h32_kv8_d128_ps{ps}"])
    gen = torch.Generator().manual_seed(10 + ps)
    kv_lens, qo_lens = ([3, 130, 64], [3, 5, 1]) if ps == 64 else ([6, 11], [6, 4])
    k_cache, v_cache, indptr, indices, last, dense = paged_cache(kv_lens, ps, 8, 128, gen)
    qo_indptr = torch.tensor([0] + list(torch.tensor(qo_lens).cumsum(0)), dtype=torch.int32)
    q = torch.randn(sum(qo_lens), 32, 128, generator=gen).to(torch.bfloat16)
    scale = 0.1
    args = [q, k_cache, v_cache, qo_indptr, indptr, indices] + ([last] if ps > 1 else []) + [scale]
    outs = [dense_attention(q[qo_indptr[b]:qo_indptr[b + 1]], k, v, scale) for b, (k, v) in enumerate(dense)]
    check(run(*args), torch.cat([o for o, _ in outs]), torch.cat([l for _, l in outs]))


def test_ragged_reference(compiled):
    run = load_reference(compiled("llama-3.1-8b")["gqa_ragged_prefill_causal_h32_kv8_d128"])
    gen = torch.Generator().manual_seed(3)
    qo_lens, kv_lens = [4, 1, 7], [4, 9, 12]
    q = torch.randn(sum(qo_lens), 32, 128, generator=gen).to(torch.bfloat16)
    k = torch.randn(sum(kv_lens), 8, 128, generator=gen).to(torch.bfloat16)
    v = torch.randn(sum(kv_lens), 8, 128, generator=gen).to(torch.bfloat16)
    qi = torch.tensor([0, 4, 5, 12], dtype=torch.int32)
    ki = torch.tensor([0, 4, 13, 25], dtype=torch.int32)
    got = run(q, k, v, qi, ki, 0.09)
    outs = [dense_attention(q[qi[b]:qi[b + 1]], k[ki[b]:ki[b + 1]], v[ki[b]:ki[b + 1]], 0.09) for b in range(3)]
    check(got, torch.cat([o for o, _ in outs]), torch.cat([l for _, l in outs]))


def test_sliding_window_and_sinks(compiled):
    oss = compiled("gpt-oss-20b")
    gen = torch.Generator().manual_seed(5)
    kv_lens = [200, 7]              # with 3 and 7 queries (qo_indptr)
    k_cache, v_cache, indptr, indices, last, dense = paged_cache(kv_lens, 64, 8, 64, gen)
    qo_indptr = torch.tensor([0, 3, 10], dtype=torch.int32)
    q = torch.randn(10, 64, 64, generator=gen).to(torch.bfloat16)
    sinks = torch.randn(64, generator=gen) * 2
    for name, window_left in [("gqa_paged_prefill_causal_h64_kv8_d64_ps64_sink", -1),
                              ("gqa_paged_prefill_causal_h64_kv8_d64_ps64_swa128_sink", 127)]:
        run = load_reference(oss[name])
        got = run(q, k_cache, v_cache, qo_indptr, indptr, indices, last, sinks, 0.125)
        outs = [dense_attention(q[qo_indptr[b]:qo_indptr[b + 1]], k, v, 0.125, window_left, sinks)
                for b, (k, v) in enumerate(dense)]
        check(got, torch.cat([o for o, _ in outs]), torch.cat([l for _, l in outs]))
    # the window matters for the 200-token sequence, and the sink changes the result
    full = load_reference(oss["gqa_paged_prefill_causal_h64_kv8_d64_ps64_sink"])(
        q, k_cache, v_cache, qo_indptr, indptr, indices, last, sinks, 0.125)[1]
    swa = load_reference(oss["gqa_paged_prefill_causal_h64_kv8_d64_ps64_swa128_sink"])(
        q, k_cache, v_cache, qo_indptr, indptr, indices, last, sinks, 0.125)[1]
    assert not torch.allclose(full[:3], swa[:3]) and torch.allclose(full[3:], swa[3:])
    gemma = compiled("gemma-3-27b")
    run = load_reference(gemma["gqa_ragged_prefill_causal_h32_kv16_d128_swa1024"])
    L = 1100
    qr = torch.randn(2, 32, 128, generator=gen).to(torch.bfloat16)
    kr = torch.randn(L, 16, 128, generator=gen).to(torch.bfloat16)
    vr = torch.randn(L, 16, 128, generator=gen).to(torch.bfloat16)
    ind = lambda *x: torch.tensor(x, dtype=torch.int32)
    got = run(qr, kr, vr, ind(0, 2), ind(0, L), 168 ** -0.5)
    check(got, *dense_attention(qr, kr, vr, 168 ** -0.5, window_left=1023))


def test_references_agree_with_flashinfer_template_references(compiled):
    """FlashInfer's own template references (full pages only: they take no kv_last_page_len)."""
    flashinfer()
    from flashinfer.trace.templates import attention as fa
    docs = compiled("qwen3-30b-a3b")
    gen = torch.Generator().manual_seed(7)
    for ps, kv_lens in [(1, [3, 8]), (64, [64, 128])]:
        k_cache, v_cache, indptr, indices, last, _ = paged_cache(kv_lens, ps, 4, 128, gen)
        q = torch.randn(2, 32, 128, generator=gen).to(torch.bfloat16)
        ours = load_reference(docs[f"gqa_paged_decode_h32_kv4_d128_ps{ps}"])(
            q, k_cache, v_cache, indptr, indices, *([last] if ps > 1 else []), 0.08)
        theirs = fa.gqa_paged_decode_trace.reference(q, k_cache, v_cache, indptr, indices, 0.08)
        torch.testing.assert_close(ours[0], theirs[0], atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(ours[1], theirs[1], atol=1e-3, rtol=1e-4)
        qo = torch.tensor([0, 2, 5], dtype=torch.int32)
        q = torch.randn(5, 32, 128, generator=gen).to(torch.bfloat16)
        ours = load_reference(docs[f"gqa_paged_prefill_causal_h32_kv4_d128_ps{ps}"])(
            q, k_cache, v_cache, qo, indptr, indices, *([last] if ps > 1 else []), 0.08)
        theirs = fa.gqa_paged_prefill_trace.reference(q, k_cache, v_cache, qo, indptr, indices, 0.08)
        torch.testing.assert_close(ours[0], theirs[0], atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(ours[1], theirs[1], atol=1e-3, rtol=1e-4)
    k = torch.randn(12, 4, 128, generator=gen).to(torch.bfloat16)
    v = torch.randn(12, 4, 128, generator=gen).to(torch.bfloat16)
    qo, kvi = torch.tensor([0, 2, 5], dtype=torch.int32), torch.tensor([0, 5, 12], dtype=torch.int32)
    ours = load_reference(docs["gqa_ragged_prefill_causal_h32_kv4_d128"])(q, k, v, qo, kvi, 0.08)
    theirs = fa.gqa_ragged_prefill_trace.reference(q, k, v, qo, kvi, 0.08)
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-3, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# agreement with FlashInfer's dumper (.fi_trace of the wrappers' run)

WRAPPERS = {
    "decode": "flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper.run",
    "prefill": "flashinfer.prefill.BatchPrefillWithPagedKVCacheWrapper.run",
    "ragged": "flashinfer.prefill.BatchPrefillWithRaggedKVCacheWrapper.run",
}


@pytest.mark.parametrize("model,kw", [("llama-3.1-8b", {}), ("qwen3-235b-a22b", {}), ("qwen3-next-80b-a3b", {"tp": [2]})])
def test_agrees_with_fi_trace(compiled, model, kw):
    docs = compiled(model, **kw)
    checked = 0
    for name, ours in docs.items():
        if "_swa" in name or "_sink" in name:
            continue
        ax = const_axes(ours)
        h, kv, d = ax["num_qo_heads"], ax["num_kv_heads"], ax["head_dim"]
        ps = ax.get("page_size")
        kind = "ragged" if ours["op_type"] == "gqa_ragged" else "decode" if "_decode_" in name else "prefill"
        n = 7
        kwargs = {"q": meta((n, h, d), "bfloat16")}
        if kind == "ragged":
            kwargs.update(k=meta((20, kv, d), "bfloat16"), v=meta((20, kv, d), "bfloat16"))
        else:
            kwargs["paged_kv_cache"] = (meta((11, ps, kv, d), "bfloat16"), meta((11, ps, kv, d), "bfloat16"))
        theirs = fi_trace(WRAPPERS[kind], **kwargs)
        # same op, same const axes, and (our) alias is their name
        assert theirs["op_type"] == ours["op_type"]
        assert const_axes(theirs) == ax
        alias = {"decode": name, "prefill": name.replace("_prefill_causal_", "_prefill_"),
                 "ragged": name.replace("_prefill_causal_", "_")}[kind]
        assert theirs["name"] == alias
        assert f"fi_api:{WRAPPERS[kind][:-4]}" in ours["tags"]
        # tensors: same shapes; the documented differences only
        ti, oi = theirs["inputs"], ours["inputs"]
        extra_theirs = set(ti) - set(oi)
        extra_ours = set(oi) - set(ti)
        assert extra_theirs == {"return_lse"}                         # dumper's scalar flag
        assert extra_ours == ({"kv_last_page_len"} if (ps or 1) > 1 else set())   # not in its template
        if kind == "prefill" and ps > 1:
            assert set(ours["axes"]) - set(theirs["axes"]) == {"batch_size"}
        else:
            assert set(ours["axes"]) == set(theirs["axes"])
        sizes = {"batch_size": n, "total_q": n, "num_pages": 11, "total_kv": 20}
        for k in set(ti) & set(oi):
            assert ti[k]["shape"] == oi[k]["shape"], k
            if k in ("kv_indptr", "kv_indices", "qo_indptr"):
                assert ti[k]["dtype"] == "unknown" and oi[k]["dtype"] == "int32"   # plan() tensors
            else:
                assert ti[k]["dtype"] == oi[k]["dtype"], k
                assert concrete_shape(theirs, ti[k], sizes) == concrete_shape(ours, oi[k], sizes)
        for k in ("output", "lse"):
            assert theirs["outputs"][k]["shape"] == ours["outputs"][k]["shape"]
            assert theirs["outputs"][k]["dtype"] == ours["outputs"][k]["dtype"]
        checked += 1
    assert checked == 5


def test_fi_trace_with_plan_tensors_gives_int32(compiled):
    """Passing the plan-time index tensors to the dumper fills in their dtype: int32, as ours."""
    ours = compiled("llama-3.1-8b")["gqa_paged_decode_h32_kv8_d128_ps64"]
    theirs = fi_trace(WRAPPERS["decode"], q=meta((3, 32, 128), "bfloat16"),
                      paged_kv_cache=(meta((9, 64, 8, 128), "bfloat16"), meta((9, 64, 8, 128), "bfloat16")),
                      kv_indptr=meta((4,), "int32"), kv_indices=meta((6,), "int32"))
    for k in ("kv_indptr", "kv_indices"):
        assert theirs["inputs"][k]["dtype"] == ours["inputs"][k]["dtype"] == "int32"
    assert theirs["constraints"] == ours["constraints"]


# ---------------------------------------------------------------------------------------------
# corpus models (tests/corpus): logit soft-capping, sliding windows of every layout, layer kinds
# that differ in shape.  Expected values come from each model's hand-written facts.yaml.

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def corpus_facts(slug):
    import yaml
    with open(os.path.join(CORPUS, slug, "facts.yaml"), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """corpus(slug, tp=[...]) -> {name: definition} of the gqa families for tests/corpus/<slug>."""
    cache = {}

    def _c(slug, tp=(1,)):
        key = (slug, tuple(tp))
        if key not in cache:
            out = tmp_path_factory.mktemp("corpus_" + slug.replace(".", "_"))
            cache[key] = compile_defs(out, os.path.join(CORPUS, slug, "config.json"), specs=SPECS, tp=list(tp))
        return cache[key]
    return _c


def ref_const(doc, name):
    import re
    m = re.search(rf"^{name} = (-?[\d.e+-]+)$", doc["reference"], re.M)
    return float(m.group(1)) if m else None


def test_gemma2_soft_cap_and_alternating_windows(corpus):
    facts = corpus_facts("gemma-2-9b")
    att = facts["attention"]
    cap, wl = att["logits_soft_cap"], att["sliding_window"]          # 50.0; 4095 as SGLang passes it
    assert (cap, wl) == (50.0, 4095)
    for tp in facts["tp"]:
        docs = corpus("gemma-2-9b", tp=[tp])
        h, kv, d = att["num_attention_heads"] // tp, max(1, att["num_kv_heads"] // tp), att["head_dim"]
        want = set()
        for w in ("", f"_swa{wl + 1}"):
            want.add(f"gqa_ragged_prefill_causal_h{h}_kv{kv}_d{d}{w}_cap50")
            for stage in ("decode", "prefill_causal"):
                want |= {f"gqa_paged_{stage}_h{h}_kv{kv}_d{d}_ps{ps}{w}_cap50" for ps in (1, 64)}
        assert set(docs) == want
        for name, doc in docs.items():
            assert ref_const(doc, "LOGITS_SOFT_CAP") == cap
            assert ref_const(doc, "WINDOW_LEFT") == (wl if "_swa" in name else -1)
            assert {"variant:logits_soft_cap", "status:verified", f"tp:{tp}"} <= tags(doc)
            assert ("mask:sliding_window" in tags(doc)) == ("_swa" in name)
            assert "soft-capped" in doc["description"]
    from flashinfer_bench.data import Definition
    for doc in corpus("gemma-2-9b").values():
        Definition(**doc)


def capped_attention(q, k, v, scale, cap, window_left=-1):
    """Independent float64 attention with FlashInfer's logits soft cap: each scaled logit x becomes
    cap * tanh(x / cap) before the mask and the softmax; lse (base 2) over the capped logits."""
    kk, vv, mask = expanded_and_masked(q, k, v, window_left)
    x = torch.einsum("nhd,lhd->hnl", q.double(), kk) * scale
    x = cap * torch.tanh(x / cap)
    x = x.masked_fill(~mask, float("-inf"))
    out = torch.einsum("hnl,lhd->nhd", torch.softmax(x, -1), vv)
    return out, (torch.logsumexp(x, -1) / LN2).transpose(0, 1)


def test_soft_cap_references_against_independent_math(corpus):
    docs = corpus("gemma-2-9b", tp=[8])                 # h2 kv1 d256: small enough for CPU
    gen = torch.Generator().manual_seed(50)
    scale = 0.0625
    kv_lens = [70, 5, 130]                              # queries per sequence: 3, 5, 1 (qo_indptr)
    k_cache, v_cache, indptr, indices, last, dense = paged_cache(kv_lens, 64, 1, 256, gen)
    qo_indptr = torch.tensor([0, 3, 8, 9], dtype=torch.int32)
    # large queries: logits of a few hundred, where the cap (50) decides the result
    q = (torch.randn(9, 2, 256, generator=gen) * 20).to(torch.bfloat16)
    for name, wl in [("gqa_paged_prefill_causal_h2_kv1_d256_ps64_cap50", -1),
                     ("gqa_paged_prefill_causal_h2_kv1_d256_ps64_swa4096_cap50", 4095)]:
        got = load_reference(docs[name])(q, k_cache, v_cache, qo_indptr, indptr, indices, last, scale)
        outs = [capped_attention(q[qo_indptr[b]:qo_indptr[b + 1]], k, v, scale, 50.0, wl) for b, (k, v) in enumerate(dense)]
        check(got, torch.cat([o for o, _ in outs]), torch.cat([l for _, l in outs]))
        # without the cap the answer is far off: the cap is really applied
        plain = [dense_attention(q[qo_indptr[b]:qo_indptr[b + 1]], k, v, scale) for b, (k, v) in enumerate(dense)]
        assert not torch.allclose(got[1].double(), torch.cat([l for _, l in plain]), atol=1.0)
    qd = (torch.randn(3, 2, 256, generator=gen) * 20).to(torch.bfloat16)
    got = load_reference(docs["gqa_paged_decode_h2_kv1_d256_ps64_cap50"])(qd, k_cache, v_cache, indptr, indices, last, scale)
    outs = [capped_attention(qd[b:b + 1], k, v, scale, 50.0) for b, (k, v) in enumerate(dense)]
    check(got, torch.cat([o for o, _ in outs]), torch.cat([l for _, l in outs]))
    # ragged, with a window shorter than the sequence: Gemma-2's window is 4096, so a long sequence
    L = 4100
    kr = torch.randn(L, 1, 256, generator=gen).to(torch.bfloat16)
    vr = torch.randn(L, 1, 256, generator=gen).to(torch.bfloat16)
    qr = (torch.randn(2, 2, 256, generator=gen) * 20).to(torch.bfloat16)
    ind = lambda *x: torch.tensor(x, dtype=torch.int32)
    got = load_reference(docs["gqa_ragged_prefill_causal_h2_kv1_d256_swa4096_cap50"])(qr, kr, vr, ind(0, 2), ind(0, L), scale)
    check(got, *capped_attention(qr, kr, vr, scale, 50.0, window_left=4095))


def test_soft_cap_reference_agrees_with_flashinfer_template_where_the_cap_is_inert(corpus):
    """FlashInfer's template references take no soft cap; with logits far below the cap (|x| < 2 vs
    50, where cap * tanh(x / cap) moves x by < 1e-4) the capped reference must agree with them."""
    flashinfer()
    from flashinfer.trace.templates import attention as fa
    docs = corpus("gemma-2-9b", tp=[8])
    gen = torch.Generator().manual_seed(51)
    k_cache, v_cache, indptr, indices, last, _ = paged_cache([64, 128], 64, 1, 256, gen)
    q = torch.randn(2, 2, 256, generator=gen).to(torch.bfloat16)
    ours = load_reference(docs["gqa_paged_decode_h2_kv1_d256_ps64_cap50"])(q, k_cache, v_cache, indptr, indices, last, 0.02)
    theirs = fa.gqa_paged_decode_trace.reference(q, k_cache, v_cache, indptr, indices, 0.02)
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-3, rtol=1e-4)


def test_soft_cap_is_a_plan_argument_the_dumper_leaves_out_of_the_name(corpus):
    """The dumper names a capped run() like a plain one (our alias); only the plan template lists
    logits_soft_cap."""
    doc = corpus("gemma-2-9b")["gqa_paged_decode_h16_kv8_d256_ps1_cap50"]
    theirs = fi_trace(WRAPPERS["decode"], q=meta((3, 16, 256), "bfloat16"),
                      paged_kv_cache=(meta((9, 1, 8, 256), "bfloat16"), meta((9, 1, 8, 256), "bfloat16")))
    assert theirs["name"] == "gqa_paged_decode_h16_kv8_d256_ps1"
    assert const_axes(theirs) == const_axes(doc)
    plan = fi_trace("flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper.plan", indptr=meta((4,), "int32"),
                    indices=meta((6,), "int32"), last_page_len=meta((3,), "int32"), num_qo_heads=16,
                    num_kv_heads=8, head_dim=256, page_size=1, logits_soft_cap=50.0)
    assert plan["inputs"]["logits_soft_cap"]["dtype"] == "float32"


@pytest.mark.parametrize("slug", ["gemma-2-9b", "laguna-xs.2", "mimo-v2-flash"])
def test_corpus_windows_are_the_hand_facts_windows(corpus, slug):
    att = corpus_facts(slug)["attention"]
    docs = corpus(slug)
    swa = {n: d for n, d in docs.items() if "_swa" in n}
    assert swa and {ref_const(d, "WINDOW_LEFT") for d in swa.values()} == {att["sliding_window"]}
    assert all(n.split("_swa")[1].split("_")[0] == str(att["sliding_window"] + 1) for n in swa)
    assert {ref_const(d, "WINDOW_LEFT") for n, d in docs.items() if n not in swa} == {-1}


@pytest.mark.parametrize("slug", ["mistral-7b-v0.1", "starcoder2-15b", "mixtral-8x7b", "mistral-nemo-12b"])
def test_corpus_models_whose_window_sglang_ignores(corpus, slug):
    docs = corpus(slug)
    assert docs and not [n for n in docs if "_swa" in n]
    assert {ref_const(d, "WINDOW_LEFT") for d in docs.values()} == {-1}


def test_catalogue_pattern_and_layer_types_windows(compiled):
    gemma = compiled("gemma-3-27b")              # pattern: sliding_window 1024, every 6th layer global
    assert {ref_const(d, "WINDOW_LEFT") for n, d in gemma.items() if "_swa" in n} == {1023}
    assert any("_swa" not in n for n in gemma)
    oss = compiled("gpt-oss-20b")                # layer_types: sliding_window 128
    assert {ref_const(d, "WINDOW_LEFT") for n, d in oss.items() if "_swa" in n} == {127}
    assert any("_swa" not in n for n in oss)


@pytest.mark.parametrize("tp", [1, 8])
def test_laguna_layer_kinds_differ_in_query_heads(corpus, tp):
    facts = corpus_facts("laguna-xs.2")
    kinds, wl = facts["attention"]["per_layer_kind"], facts["attention"]["sliding_window"]
    docs = corpus("laguna-xs.2", tp=[tp])
    full, sl = kinds["full"], kinds["sliding"]
    hf, hs = full["num_heads"] // tp, sl["num_heads"] // tp
    kvf, kvs = max(1, full["num_kv_heads"] // tp), max(1, sl["num_kv_heads"] // tp)
    want = {f"gqa_ragged_prefill_causal_h{hf}_kv{kvf}_d{full['head_dim']}",
            f"gqa_ragged_prefill_causal_h{hs}_kv{kvs}_d{sl['head_dim']}_swa{wl + 1}"}
    for stage in ("decode", "prefill_causal"):
        for ps in (1, 64):
            want |= {f"gqa_paged_{stage}_h{hf}_kv{kvf}_d{full['head_dim']}_ps{ps}",
                     f"gqa_paged_{stage}_h{hs}_kv{kvs}_d{sl['head_dim']}_ps{ps}_swa{wl + 1}"}
    assert set(docs) == want
    # the kinds' head counts are read from the first layer of each kind: an assumption, so not verified
    assert all("status:verified" not in d["tags"] for d in docs.values())


@pytest.mark.parametrize("tp", [1, 8])
def test_mimo_layer_kinds_differ_in_kv_heads_and_sinks(corpus, tp):
    facts = corpus_facts("mimo-v2-flash")
    kinds, wl = facts["attention"]["per_layer_kind"], facts["attention"]["sliding_window"]
    full, sl = kinds["full"], kinds["sliding"]
    assert (full["sinks"], sl["sinks"]) == (False, True)
    docs = corpus("mimo-v2-flash", tp=[tp])
    hf, hs = full["num_attention_heads"] // tp, sl["num_attention_heads"] // tp
    kvf, kvs = max(1, full["num_kv_heads"] // tp), max(1, sl["num_kv_heads"] // tp)
    d = full["head_dim"]
    want = {f"gqa_ragged_prefill_causal_h{hf}_kv{kvf}_d{d}"}     # sink layers cannot use the ragged wrapper
    for stage in ("decode", "prefill_causal"):
        for ps in (1, 64):
            want |= {f"gqa_paged_{stage}_h{hf}_kv{kvf}_d{d}_ps{ps}",
                     f"gqa_paged_{stage}_h{hs}_kv{kvs}_d{sl['head_dim']}_ps{ps}_swa{wl + 1}_sink"}
    assert set(docs) == want
    for name, doc in docs.items():
        assert ("sinks" in doc["inputs"]) == name.endswith("_sink")
        assert ref_const(doc, "WINDOW_LEFT") == (wl if "_swa" in name else -1)
        # v_head_dim 128 != head_dim 192 is not expressible: reported, never status:verified
        assert "status:unverified" in doc["tags"]
