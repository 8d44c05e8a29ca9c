"""dsa_paged family (DeepSeek-V3.2): names and shapes per serving config, the sparse attention
reference against dense MLA attention and FlashInfer's dsa_paged template, the FP8 top-k
indexer against a brute-force float64 scoring and FlashInfer's fp8_paged_mqa_logits reference,
and agreement with FlashInfer's trace templates."""
import math

import pytest
import torch

from conftest import compile_defs, load_reference
from fi_oracle import const_axes, fi_trace, meta, resolve

SCALE = 1.0 / math.sqrt(128 + 64)
ATTN = "dsa_sparse_attention_h16_ckv512_kpe64_topk2048_ps{}"
INDEXER = "dsa_topk_indexer_fp8_h64_d128_topk2048_ps64"


@pytest.fixture(scope="module")
def v32(tmp_path_factory):
    # the cookbook's servings: tp8, tp8 ep8, tp8 dp8 with DP-attention
    return compile_defs(tmp_path_factory.mktemp("v32"), "deepseek-v3.2", specs=["dsa_paged"])


def test_names_tags_and_shapes(v32, tmp_path_factory):
    assert set(v32) == {ATTN.format(1), ATTN.format(64), INDEXER,
                        "dsa_sparse_attention_h128_ckv512_kpe64_topk2048_ps1",
                        "dsa_sparse_attention_h128_ckv512_kpe64_topk2048_ps64"}
    a = v32[ATTN.format(64)]
    assert a["op_type"] == "dsa_paged"
    assert set(a["tags"]) == {"status:verified", "fi_api:flashinfer.decode.trtllm_batch_decode_with_kv_cache_mla",
                              "model:deepseek-v3.2", "sparse:topk", "tp:8"}
    assert "dp:8" in v32["dsa_sparse_attention_h128_ckv512_kpe64_topk2048_ps1"]["tags"]
    assert const_axes(a) == {"num_qo_heads": 16, "head_dim_ckv": 512, "head_dim_kpe": 64, "topk": 2048, "page_size": 64}
    assert {k: v["type"] for k, v in a["axes"].items() if v["type"] == "var"} == {"num_tokens": "var", "num_pages": "var"}
    assert a["inputs"]["sparse_indices"]["shape"] == ["num_tokens", "topk"]
    assert a["inputs"]["sparse_indices"]["dtype"] == "int32"

    ix = v32[INDEXER]
    # no fi_api and no tp: tag (the indexer heads are replicated on every rank)
    assert set(ix["tags"]) == {"status:verified", "model:deepseek-v3.2", "stage:indexer", "sparse:topk", "quant:fp8"}
    assert const_axes(ix) == {"num_index_heads": 64, "index_head_dim": 128, "page_size": 64, "topk": 2048,
                              "kv_cache_num_heads": 1, "head_dim_with_scale": 132}
    assert {k: (v["shape"], v["dtype"]) for k, v in ix["inputs"].items()} == {
        "q_index_fp8": (["batch_size", "num_index_heads", "index_head_dim"], "float8_e4m3fn"),
        "k_index_cache_fp8": (["num_pages", "page_size", "kv_cache_num_heads", "head_dim_with_scale"], "int8"),
        "weights": (["batch_size", "num_index_heads"], "float32"),
        "seq_lens": (["batch_size"], "int32"),
        "block_table": (["batch_size", "max_num_pages"], "int32")}
    assert ix["outputs"] == {"topk_indices": {"shape": ["batch_size", "topk"], "dtype": "int32",
                                              "description": ix["outputs"]["topk_indices"]["description"]}}
    assert ix["constraints"] == ["topk <= max_num_pages * page_size"]
    # dense-MLA models have no DSA
    assert compile_defs(tmp_path_factory.mktemp("ds"), "deepseek-v3", specs=["dsa_paged"], tp=[8]) == {}


def test_definitions_load_in_flashinfer_bench(v32):
    from flashinfer_bench.data import Definition
    for d in v32.values():
        parsed = Definition.model_validate(d)
        assert parsed.const_axes == const_axes(d)
    assert callable(resolve("flashinfer.decode.trtllm_batch_decode_with_kv_cache_mla"))


# -- sparse attention -----------------------------------------------------------------------------

def latent_cache(num_pages, page_size, g, dtype=torch.bfloat16):
    return (torch.randn(num_pages, page_size, 512, generator=g).to(dtype),
            torch.randn(num_pages, page_size, 64, generator=g).to(dtype))


@pytest.mark.parametrize("page_size", [1, 64])
def test_sparse_attention_reference(v32, page_size):
    run = load_reference(v32[ATTN.format(page_size)])
    g = torch.Generator().manual_seed(page_size)
    num_pages = 3000 // page_size if page_size == 1 else 40        # 3000 / 2560 cached tokens
    ckv, kpe = latent_cache(num_pages, page_size, g)
    slots = num_pages * page_size
    T = 3
    qn = torch.randn(T, 16, 512, generator=g).bfloat16()
    qp = torch.randn(T, 16, 64, generator=g).bfloat16()
    idx = torch.full((T, 2048), -1, dtype=torch.int32)
    idx[0] = torch.randperm(slots, generator=g)[:2048].int()       # a full top-k selection
    idx[1, :37] = torch.randperm(slots, generator=g)[:37].int()      # a short sequence: padding
    idx[1] = idx[1][torch.randperm(2048, generator=g)]              # padding anywhere in the row
    # row 2 stays all padding: output 0, lse -inf
    out, lse = run(qn, qp, ckv, kpe, idx, SCALE)
    assert out.shape == (T, 16, 512) and out.dtype == torch.bfloat16 and lse.shape == (T, 16)

    # independent: dense attention (SDPA, float64) over exactly the selected tokens
    flat_c, flat_p = ckv.reshape(-1, 512).double(), kpe.reshape(-1, 64).double()
    for t in range(2):
        sel = idx[t][idx[t] >= 0].long()
        k = torch.cat([flat_c[sel], flat_p[sel]], -1)
        q = torch.cat([qn[t], qp[t]], -1).double()
        want = torch.nn.functional.scaled_dot_product_attention(q[:, None], k[None], flat_c[sel][None], scale=SCALE)[:, 0]
        torch.testing.assert_close(out[t].float(), want.float(), atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(lse[t], (torch.logsumexp(q @ k.T * SCALE, -1) / math.log(2)).float(),
                                   atol=1e-4, rtol=1e-4)
    assert out[2].abs().max() == 0 and torch.isneginf(lse[2]).all()

    # FlashInfer's dsa_paged template reference (an oracle: same layout, written independently)
    from fi_oracle import flashinfer
    flashinfer()
    from flashinfer.trace.templates.attention import dsa_paged_trace
    ref_out, ref_lse = dsa_paged_trace.reference(qn, qp, ckv, kpe, idx, SCALE)
    torch.testing.assert_close(out.float(), ref_out.float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-4)

    with pytest.raises(AssertionError):      # top-k width is part of the definition
        run(qn, qp, ckv, kpe, idx[:, :1024], SCALE)


def test_sparse_attention_with_all_tokens_is_mla_decode(v32, tmp_path):
    """Selecting every cached token of a sequence gives dense MLA decode (mla_paged)."""
    mla = compile_defs(tmp_path, "deepseek-v3", specs=["mla_paged"], tp=[8])["mla_paged_decode_h16_ckv512_kpe64_ps64"]
    g = torch.Generator().manual_seed(9)
    ckv, kpe = latent_cache(12, 64, g)
    pages = [[3, 7, 1], [11, 0]]
    lens = [150, 128]
    qn = torch.randn(2, 16, 512, generator=g).bfloat16()
    qp = torch.randn(2, 16, 64, generator=g).bfloat16()
    idx = torch.full((2, 2048), -1, dtype=torch.int32)
    for b, (p, n) in enumerate(zip(pages, lens)):
        s = (torch.tensor(p)[:, None] * 64 + torch.arange(64)).reshape(-1)[:n]
        idx[b, :n] = s.int()
    sparse = load_reference(v32[ATTN.format(64)])(qn, qp, ckv, kpe, idx, SCALE)
    dense = load_reference(mla)(qn, qp, ckv, kpe, torch.tensor([0, 3, 5], dtype=torch.int32),
                                torch.tensor(sum(pages, []), dtype=torch.int32),
                                torch.tensor([150 - 128, 64], dtype=torch.int32), SCALE)
    torch.testing.assert_close(sparse[0].float(), dense[0].float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(sparse[1], dense[1], atol=1e-4, rtol=1e-4)


# -- FP8 top-k indexer ----------------------------------------------------------------------------

def pack_index_cache(keys, page_size=64):
    """float32 keys [num_pages, page_size, 128] -> (deep_gemm bytes as int8 [P, ps, 1, 132],
    the float32 keys the packed cache actually represents).  Per-token scale = amax / 448."""
    P, ps, D = keys.shape
    scale = keys.abs().amax(-1).clamp_min(1e-4) / 448.0                    # [P, ps]
    fp8 = (keys / scale[..., None]).to(torch.float8_e4m3fn)
    raw = torch.cat([fp8.view(torch.uint8).reshape(P, ps * D), scale.contiguous().view(torch.uint8).reshape(P, ps * 4)], 1)
    return raw.view(torch.int8).reshape(P, ps, 1, D + 4), fp8.float() * scale[..., None]


def indexer_inputs(seq_lens, seed=0, num_pages=None):
    g = torch.Generator().manual_seed(seed)
    need = [-(-n // 64) for n in seq_lens]
    P = num_pages or sum(need) + 2
    perm = torch.randperm(P, generator=g)
    width = max(need)
    table = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    at = 0
    for b, n in enumerate(need):
        table[b, :n] = perm[at:at + n].int()
        at += n
    packed, keys = pack_index_cache(torch.randn(P, 64, 128, generator=g))
    q = torch.randn(len(seq_lens), 64, 128, generator=g).to(torch.float8_e4m3fn)
    w = torch.randn(len(seq_lens), 64, generator=g)
    return q, packed, keys, w, torch.tensor(seq_lens, dtype=torch.int32), table


def brute_scores(q, keys, w, seq_len, pages):
    """float64: score of every token of the sequence, and its cache slot."""
    k = keys[pages.long()].reshape(-1, 128)[:seq_len].double()
    s = (torch.relu(q.double() @ k.T) * w.double()[:, None]).sum(0)
    slot = (pages.long()[:, None] * 64 + torch.arange(64)).reshape(-1)[:seq_len]
    return s, slot


def test_indexer_reference_vs_brute_force(v32):
    run = load_reference(v32[INDEXER])
    seq_lens = [3000, 700, 2048, 1]
    q, packed, keys, w, lens, table = indexer_inputs(seq_lens, seed=1)
    got = run(q, packed, w, lens, table)
    assert got.shape == (4, 2048) and got.dtype == torch.int32
    for b, n in enumerate(seq_lens):
        s, slot = brute_scores(q[b].float(), keys, w[b], n, table[b, : -(-n // 64)])
        k = min(2048, n)
        assert (got[b, k:] == -1).all()
        chosen = got[b, :k].long()
        assert len(set(chosen.tolist())) == k                           # no duplicates
        score_of = dict(zip(slot.tolist(), s.tolist()))
        picked = torch.tensor([score_of[i] for i in chosen.tolist()], dtype=torch.float64)
        best = torch.topk(s, k).values
        # the selected tokens carry exactly the k best scores, best first
        torch.testing.assert_close(picked, best, atol=1e-6, rtol=1e-6)
    # a 3000-token sequence keeps 2048 of its tokens, a 700-token one all of them
    assert set(got[1, :700].tolist()) == set(brute_scores(q[1].float(), keys, w[1], 700, table[1, :11])[1].tolist())
    with pytest.raises(AssertionError):
        run(q[:, :32], packed, w[:, :32], lens, table)


def test_indexer_packing_is_per_page_not_per_row(v32):
    """head_dim_with_scale 132 packs a page as [all FP8 values][all scales]; reading a row's own
    last 4 bytes as its scale would be wrong.  Triple one page's scales through the packed scale
    bytes only: the selection follows the tripled keys of exactly that page."""
    run = load_reference(v32[INDEXER])
    q, packed, keys, w, lens, table = indexer_inputs([2500], seed=2)
    w = w.abs()                                        # non-negative weights: scores scale linearly
    raw = packed.view(torch.uint8).reshape(packed.shape[0], -1).clone()
    page = int(table[0, 5])
    scales = raw[page, 64 * 128:].contiguous().view(torch.float32) * 3
    raw[page, 64 * 128:] = scales.view(torch.uint8)
    tripled = keys.clone()
    tripled[page] *= 3
    got = run(q, raw.view(torch.int8).reshape(packed.shape), w, lens, table)[0]
    pages = table[0, :40]
    s, slot = brute_scores(q[0].float(), tripled, w[0], 2500, pages)
    score_of = dict(zip(slot.tolist(), s.tolist()))
    picked = torch.tensor([score_of[i] for i in got.tolist()], dtype=torch.float64)
    torch.testing.assert_close(picked, torch.topk(s, 2048).values, atol=1e-6, rtol=1e-6)
    s0, _ = brute_scores(q[0].float(), keys, w[0], 2500, pages)
    assert set(got.tolist()) != set(slot[torch.topk(s0, 2048).indices].tolist())
    assert set(range(page * 64, page * 64 + 64)) <= set(got.tolist())


def test_indexer_matches_flashinfer_mqa_logits(v32):
    """FlashInfer's fp8_paged_mqa_logits reference reads the same packed cache (uint8 bytes) and
    stops at the logits; its top-k over each sequence must pick our tokens."""
    from fi_oracle import flashinfer
    flashinfer()
    from flashinfer.trace.templates.attn_scores import fp8_paged_mqa_logits_trace
    run = load_reference(v32[INDEXER])
    seq_lens = [2600, 300]
    q, packed, keys, w, lens, table = indexer_inputs(seq_lens, seed=3)
    got = run(q, packed, w, lens, table)
    logits = fp8_paged_mqa_logits_trace.reference(q[:, None], packed.view(torch.uint8), w, table, lens, max(seq_lens))
    for b, n in enumerate(seq_lens):
        k = min(2048, n)
        pos = torch.topk(logits[b, :n], k).indices
        slots = table[b].long()[pos // 64] * 64 + pos % 64
        theirs = set(slots.tolist())
        ours = set(got[b, :k].tolist())
        if ours != theirs:   # only float near-ties at the k-th score may differ
            kth = torch.topk(logits[b, :n], k).values[-1]
            slot_pos = {int(table[b, p // 64]) * 64 + p % 64: p for p in range(n)}
            for s in ours ^ theirs:
                assert abs(float(logits[b, slot_pos[s]] - kth)) <= 1e-4 * max(1.0, abs(float(kth)))
        assert len(ours ^ theirs) <= 2


# -- FlashInfer's trace templates -----------------------------------------------------------------

def _io(d, sect):
    axes = const_axes(d)
    return {k: (tuple(axes.get(a, a) for a in v["shape"]) if v["shape"] is not None else None, v["dtype"])
            for k, v in d[sect].items()}


@pytest.mark.parametrize("page_size", [1, 64])
def test_agrees_with_flashinfer_templates(v32, page_size, tmp_path):
    ours = v32[ATTN.format(page_size)]
    from fi_oracle import flashinfer
    flashinfer()
    from flashinfer.trace.templates.attention import dsa_paged_trace
    theirs = dsa_paged_trace.build_fi_trace_fn("flashinfer.decode.trtllm_batch_decode_with_kv_cache_mla")(
        q_nope=meta((3, 16, 512), "bfloat16"), q_pe=meta((3, 16, 64), "bfloat16"),
        ckv_cache=meta((10, page_size, 512), "bfloat16"), kpe_cache=meta((10, page_size, 64), "bfloat16"),
        sparse_indices=meta((3, 2048), "int32"), sm_scale=SCALE)
    assert theirs["name"] == ours["name"] and theirs["op_type"] == ours["op_type"]
    assert {k: (v["type"], v.get("value")) for k, v in theirs["axes"].items()} == \
        {k: (v["type"], v.get("value")) for k, v in ours["axes"].items()}
    assert _io(theirs, "inputs") == _io(ours, "inputs")
    assert _io(theirs, "outputs") == _io(ours, "outputs")
    assert theirs["constraints"] == ours["constraints"]
    assert {"status:verified", "sparse:topk"} <= set(ours["tags"]) & set(theirs["tags"])

    # the dumper's name for the same kernel (our alias): TRT-LLM's sparse MLA decode template
    dumped = fi_trace("flashinfer.decode.trtllm_batch_decode_with_kv_cache_mla",
                      query=meta((2, 1, 16, 576), "bfloat16"), kv_cache=meta((10, 1, page_size, 576), "bfloat16"),
                      workspace_buffer=meta((1024,), "uint8"), qk_nope_head_dim=128, kv_lora_rank=512,
                      qk_rope_head_dim=64, block_tables=meta((2, 1, 2048), "int32"),
                      seq_lens=meta((2,), "int32"), max_seq_len=4096, sparse_mla_top_k=2048)
    from defc.compiler.pipeline import CompileOptions, compile_model
    res = compile_model(CompileOptions(model="deepseek-v3.2", specs=["dsa_paged"], tp=[8], out=str(tmp_path)))
    aliases = res.instances[ours["name"]][0].aliases
    assert [(a["name"], a["op_type"]) for a in aliases] == [(dumped["name"], dumped["op_type"])]
    assert dumped["name"] == f"trtllm_batch_decode_mla_sparse_h16_d_qk576_ckv512_kpe64_nope128_ps{page_size}_topk2048"
    # documented differences: concatenated query/cache, no lse output, a uint8 workspace
    assert "lse" not in dumped["outputs"] and dumped["inputs"]["workspace_buffer"]["dtype"] == "uint8"
