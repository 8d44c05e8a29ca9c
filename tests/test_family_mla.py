"""mla_paged / mla_ragged families: shapes per model and serving config, the curated files, the
references against independent torch math (dense per-head attention after decompressing the
latent cache) and FlashInfer's own template references, and agreement with FlashInfer's dumper."""
import math

import pytest
import torch

from conftest import compile_defs, golden_definition, load_reference
from fi_oracle import const_axes, fi_trace, meta, resolve

SPECS = ["mla_paged", "mla_ragged"]
SCALE = 1.0 / math.sqrt(128 + 64)     # DeepSeek-V3: 1/sqrt(qk_nope + qk_rope)


@pytest.fixture(scope="module")
def ds_tp8(tmp_path_factory):
    return compile_defs(tmp_path_factory.mktemp("ds"), "deepseek-v3", specs=SPECS, tp=[8], ep=[8])


def strip(x):
    """A definition part without descriptions (the curated prose names its capture run)."""
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k != "description"}
    return x


# -- shapes, names, tags ------------------------------------------------------------------------

def test_deepseek_tp8_ep8_matches_curated(ds_tp8):
    assert set(ds_tp8) == {
        "mla_paged_decode_h16_ckv512_kpe64_ps1", "mla_paged_decode_h16_ckv512_kpe64_ps64",
        "mla_paged_prefill_causal_h16_ckv512_kpe64_ps1", "mla_paged_prefill_causal_h16_ckv512_kpe64_ps64",
        "mla_ragged_prefill_causal_h16_qk192_vo128"}
    for name, ours in ds_tp8.items():
        gold = golden_definition(name)      # vendored facts: tests/data/golden_definitions.json
        for key in ("op_type", "axes", "inputs", "outputs", "constraints"):
            assert strip(ours[key]) == strip(gold[key]), (name, key)
        assert list(ours["axes"]) == list(gold["axes"]) and list(ours["inputs"]) == list(gold["inputs"])
        # curated tags (model:deepseek-r1 comes from compiling that model too)
        assert set(gold["tags"]) - {"model:deepseek-r1"} == set(ours["tags"]), name
        assert "def run(" in ours["reference"]


def test_kv_last_page_len_rule(ds_tp8):
    """kv_last_page_len exactly when page_size > 1; prefill gains batch_size with it."""
    for stage in ("decode", "prefill_causal"):
        ps1 = ds_tp8[f"mla_paged_{stage}_h16_ckv512_kpe64_ps1"]
        ps64 = ds_tp8[f"mla_paged_{stage}_h16_ckv512_kpe64_ps64"]
        assert "kv_last_page_len" not in ps1["inputs"]
        assert ps64["inputs"]["kv_last_page_len"] == {
            "shape": ["batch_size"], "dtype": "int32",
            "description": "Number of valid tokens in the last page for each sequence."}
        # the reference signature follows the inputs, in order
        assert "def run(q_nope, q_pe, ckv_cache, kpe_cache, " in ps64["reference"]
        assert "kv_indices, kv_last_page_len, sm_scale):" in ps64["reference"]
        assert "kv_indices, sm_scale):" in ps1["reference"]
    assert "batch_size" not in ds_tp8["mla_paged_prefill_causal_h16_ckv512_kpe64_ps1"]["axes"]
    assert ds_tp8["mla_paged_prefill_causal_h16_ckv512_kpe64_ps64"]["axes"]["batch_size"]["type"] == "var"


def test_cookbook_servings_with_dp_attention(tmp_path_factory):
    ds = compile_defs(tmp_path_factory.mktemp("dsc"), "deepseek-v3", specs=SPECS)
    # cookbook: tp8, tp8 ep8, tp8 dp8 with DP-attention (attention TP 1: all 128 heads per rank)
    assert {n for n in ds if n.startswith("mla_paged_decode")} == {
        "mla_paged_decode_h16_ckv512_kpe64_ps1", "mla_paged_decode_h16_ckv512_kpe64_ps64",
        "mla_paged_decode_h128_ckv512_kpe64_ps1", "mla_paged_decode_h128_ckv512_kpe64_ps64"}
    assert "mla_ragged_prefill_causal_h128_qk192_vo128" in ds
    h128 = ds["mla_paged_prefill_causal_h128_ckv512_kpe64_ps64"]
    assert {"tp:8", "dp:8", "stage:prefill", "model:deepseek-v3"} <= set(h128["tags"])
    assert not any(t.startswith("dp:") for t in ds["mla_paged_decode_h16_ckv512_kpe64_ps1"]["tags"])
    assert h128["axes"]["num_qo_heads"]["description"] == \
        "Number of query heads after tensor parallel split (128/1=128)."

    kimi = compile_defs(tmp_path_factory.mktemp("kimi"), "kimi-k2", specs=SPECS)
    # 64 heads: tp8 -> 8 per rank; tp8 dp4 with DP-attention -> attention TP 2 -> 32 per rank
    assert set(kimi) == {f"mla_paged_{s}_h{h}_ckv512_kpe64_ps{p}"
                         for s in ("decode", "prefill_causal") for h in (8, 32) for p in (1, 64)} | {
        "mla_ragged_prefill_causal_h8_qk192_vo128", "mla_ragged_prefill_causal_h32_qk192_vo128"}
    assert "dp:4" in kimi["mla_paged_decode_h32_ckv512_kpe64_ps1"]["tags"]
    assert "dp:4" not in kimi["mla_paged_decode_h8_ckv512_kpe64_ps1"]["tags"]

    # DeepSeek-V3.2 (DSA) is served by the sparse kernels, not the dense MLA ones
    assert compile_defs(tmp_path_factory.mktemp("v32"), "deepseek-v3.2", specs=SPECS) == {}
    # and a GQA model has no MLA at all
    assert compile_defs(tmp_path_factory.mktemp("llama"), "llama-3.1-8b", specs=SPECS) == {}


def test_definitions_load_in_flashinfer_bench(ds_tp8):
    from flashinfer_bench.data import Definition
    for d in ds_tp8.values():
        parsed = Definition.model_validate(d)
        assert parsed.name == d["name"]
        assert parsed.const_axes == const_axes(d)


def test_fi_api_tags_resolve(ds_tp8):
    for d in ds_tp8.values():
        api = [t[len("fi_api:"):] for t in d["tags"] if t.startswith("fi_api:")]
        assert len(api) == 1 and hasattr(resolve(api[0]), "run")


# -- test data ------------------------------------------------------------------------------------

def paged_cache(kv_lens, page_size, dtype=torch.bfloat16, seed=0, extra_pages=3):
    """Random latent tokens per sequence, scattered over shuffled pages."""
    g = torch.Generator().manual_seed(seed)
    npages = [max(1, -(-n // page_size)) for n in kv_lens]
    total = sum(npages) + extra_pages
    perm = torch.randperm(total, generator=g)
    ckv_cache = torch.randn(total, page_size, 512, generator=g).to(dtype)
    kpe_cache = torch.randn(total, page_size, 64, generator=g).to(dtype)
    indptr, indices, last, tokens = [0], [], [], []
    at = 0
    for n, p in zip(kv_lens, npages):
        pages = perm[at:at + p]
        at += p
        indices += pages.tolist()
        indptr.append(len(indices))
        last.append(n - (p - 1) * page_size)
        tokens.append((ckv_cache[pages].reshape(-1, 512)[:n], kpe_cache[pages].reshape(-1, 64)[:n]))
    i32 = lambda x: torch.tensor(x, dtype=torch.int32)
    return ckv_cache, kpe_cache, i32(indptr), i32(indices), i32(last), tokens


def dense_mla(q_nope, q_pe, tokens, qo_lens, scale):
    """Independent computation: per sequence, per head, plain attention with SDPA over keys
    [ckv | kpe] and values ckv (the latent cache *is* the key and the value after absorption),
    causal aligned to the sequence end; lse in float64, base 2."""
    outs, lses, q0 = [], [], 0
    for (ckv, kpe), n in zip(tokens, qo_lens):
        q = torch.cat([q_nope[q0:q0 + n], q_pe[q0:q0 + n]], -1).double().transpose(0, 1)   # [H, n, 576]
        k = torch.cat([ckv, kpe], -1).double()                                                 # [L, 576]
        L = k.shape[0]
        mask = torch.ones(n, L, dtype=torch.bool).tril(diagonal=L - n)
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k.expand(q.shape[0], L, -1), ckv.double().expand(q.shape[0], L, -1), attn_mask=mask, scale=scale)
        s = (q @ k.T * scale).masked_fill(~mask, -math.inf)
        outs.append(o.transpose(0, 1))
        lses.append((torch.logsumexp(s, -1) / math.log(2)).transpose(0, 1))
        q0 += n
    return torch.cat(outs).float(), torch.cat(lses).float()


# -- references -----------------------------------------------------------------------------------

@pytest.mark.parametrize("page_size", [1, 64])
def test_decode_reference_vs_dense(ds_tp8, page_size):
    run = load_reference(ds_tp8[f"mla_paged_decode_h16_ckv512_kpe64_ps{page_size}"])
    kv_lens = [1, 70, 129, 5]
    ckv, kpe, indptr, indices, last, tokens = paged_cache(kv_lens, page_size, seed=page_size)
    g = torch.Generator().manual_seed(1)
    q_nope = torch.randn(4, 16, 512, generator=g).bfloat16()
    q_pe = torch.randn(4, 16, 64, generator=g).bfloat16()
    args = [q_nope, q_pe, ckv, kpe, indptr, indices] + ([last] if page_size > 1 else []) + [SCALE]
    out, lse = run(*args)
    want_out, want_lse = dense_mla(q_nope, q_pe, tokens, [1] * 4, SCALE)
    assert out.dtype == torch.bfloat16 and out.shape == (4, 16, 512) and lse.shape == (4, 16)
    torch.testing.assert_close(out.float(), want_out, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=1e-4)
    with pytest.raises(AssertionError):   # wrong head count for this definition
        run(q_nope[:, :8], q_pe[:, :8], *args[2:])


@pytest.mark.parametrize("page_size", [1, 64])
def test_prefill_reference_vs_dense(ds_tp8, page_size):
    run = load_reference(ds_tp8[f"mla_paged_prefill_causal_h16_ckv512_kpe64_ps{page_size}"])
    kv_lens, qo_lens = [3, 100, 65], [3, 7, 1]          # no prefix, a 93-token prefix, decode-like
    ckv, kpe, indptr, indices, last, tokens = paged_cache(kv_lens, page_size, seed=10 + page_size)
    g = torch.Generator().manual_seed(2)
    q_nope = torch.randn(11, 16, 512, generator=g).bfloat16()
    q_pe = torch.randn(11, 16, 64, generator=g).bfloat16()
    qo_indptr = torch.tensor([0, 3, 10, 11], dtype=torch.int32)
    args = [q_nope, q_pe, ckv, kpe, qo_indptr, indptr, indices] + ([last] if page_size > 1 else []) + [SCALE]
    out, lse = run(*args)
    want_out, want_lse = dense_mla(q_nope, q_pe, tokens, qo_lens, SCALE)
    torch.testing.assert_close(out.float(), want_out, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(lse, want_lse, atol=1e-4, rtol=1e-4)


def test_absorbed_paged_equals_decompressed_ragged(ds_tp8):
    """The MLA algebra: attention over the latent cache with W_UK absorbed into q, followed by
    W_UV, equals ordinary per-head attention over decompressed keys/values -- which is what the
    mla_ragged kernel computes.  All in float32 so the two references can be compared tightly."""
    paged = load_reference(ds_tp8["mla_paged_prefill_causal_h16_ckv512_kpe64_ps64"])
    ragged = load_reference(ds_tp8["mla_ragged_prefill_causal_h16_qk192_vo128"])
    g = torch.Generator().manual_seed(3)
    H, kv_lens = 16, [9, 70]
    ckv, kpe, indptr, indices, last, tokens = paged_cache(kv_lens, 64, dtype=torch.float32, seed=4)
    w_uk = torch.randn(H, 128, 512, generator=g) / 512 ** 0.5     # latent -> per-head k_nope
    w_uv = torch.randn(H, 512, 128, generator=g) / 512 ** 0.5     # latent -> per-head v
    q_orig = torch.randn(sum(kv_lens), H, 128, generator=g)      # no prefix: qo_len == kv_len
    q_pe = torch.randn(sum(kv_lens), H, 64, generator=g)
    indptr_q = torch.tensor([0, 9, 79], dtype=torch.int32)

    q_absorbed = torch.einsum("thn,hnc->thc", q_orig, w_uk)
    latent, lse_p = paged(q_absorbed, q_pe, ckv, kpe, indptr_q, indptr, indices, last, SCALE)
    out_paged = torch.einsum("thc,hcv->thv", latent, w_uv)

    ckv_t = torch.cat([c for c, _ in tokens])
    kpe_t = torch.cat([p for _, p in tokens])
    k = torch.cat([torch.einsum("tc,hnc->thn", ckv_t, w_uk), kpe_t[:, None, :].expand(-1, H, -1)], -1)
    v = torch.einsum("tc,hcv->thv", ckv_t, w_uv)
    out_ragged, lse_r = ragged(torch.cat([q_orig, q_pe], -1), k, v, indptr_q, indptr_q, SCALE)
    torch.testing.assert_close(out_paged, out_ragged, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lse_p, lse_r, atol=1e-4, rtol=1e-4)


def test_ragged_reference_vs_sdpa(ds_tp8):
    run = load_reference(ds_tp8["mla_ragged_prefill_causal_h16_qk192_vo128"])
    g = torch.Generator().manual_seed(5)
    qo, kv = [4, 1, 6], [4, 9, 6]
    q = torch.randn(sum(qo), 16, 192, generator=g).bfloat16()
    k = torch.randn(sum(kv), 16, 192, generator=g).bfloat16()
    v = torch.randn(sum(kv), 16, 128, generator=g).bfloat16()
    qi = torch.tensor([0, 4, 5, 11], dtype=torch.int32)
    ki = torch.tensor([0, 4, 13, 19], dtype=torch.int32)
    out, lse = run(q, k, v, qi, ki, 1 / math.sqrt(192))
    assert out.shape == (11, 16, 128) and lse.shape == (11, 16)
    for b in range(3):
        qs, ks = slice(int(qi[b]), int(qi[b + 1])), slice(int(ki[b]), int(ki[b + 1]))
        n, L = qo[b], kv[b]
        mask = torch.ones(n, L, dtype=torch.bool).tril(diagonal=L - n)
        qq, kk, vv = (t.double().transpose(0, 1) for t in (q[qs], k[ks], v[ks]))
        want = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=1 / math.sqrt(192))
        torch.testing.assert_close(out[qs].float(), want.transpose(0, 1).float(), atol=1e-2, rtol=1e-2)
        s = (qq @ kk.transpose(1, 2) / math.sqrt(192)).masked_fill(~mask, -math.inf)
        torch.testing.assert_close(lse[qs], (torch.logsumexp(s, -1) / math.log(2)).T.float(), atol=1e-4, rtol=1e-4)
    with pytest.raises(AssertionError):     # v must be vo_dim wide
        run(q, k, k, qi, ki, 0.1)


# -- FlashInfer as an oracle ----------------------------------------------------------------------

def _templates():
    from fi_oracle import flashinfer
    flashinfer()
    from flashinfer.trace.templates import attention
    return attention


def test_matches_flashinfer_template_references(ds_tp8):
    """FlashInfer's own decode/prefill template references on full pages (they take no
    kv_last_page_len), and its GQA ragged reference with v zero-padded to the qk width (it
    assumes one head_dim and fails on qk 192 / vo 128, a documented dumper difference)."""
    A = _templates()
    kv_lens = [64, 128, 192]
    ckv, kpe, indptr, indices, last, _ = paged_cache(kv_lens, 64, seed=6)
    assert last.tolist() == [64, 64, 64]
    g = torch.Generator().manual_seed(7)
    qn = torch.randn(3, 16, 512, generator=g).bfloat16()
    qp = torch.randn(3, 16, 64, generator=g).bfloat16()
    ours = load_reference(ds_tp8["mla_paged_decode_h16_ckv512_kpe64_ps64"])(qn, qp, ckv, kpe, indptr, indices, last, SCALE)
    theirs = A.mla_paged_decode_trace.reference(qn, qp, ckv, kpe, indptr, indices, SCALE)
    torch.testing.assert_close(ours[0].float(), theirs[0].float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-4, rtol=1e-4)

    qo_indptr = torch.tensor([0, 2, 7, 10], dtype=torch.int32)
    qn = torch.randn(10, 16, 512, generator=g).bfloat16()
    qp = torch.randn(10, 16, 64, generator=g).bfloat16()
    ours = load_reference(ds_tp8["mla_paged_prefill_causal_h16_ckv512_kpe64_ps64"])(
        qn, qp, ckv, kpe, qo_indptr, indptr, indices, last, SCALE)
    theirs = A.mla_paged_prefill_trace.reference(qn, qp, ckv, kpe, qo_indptr, indptr, indices, SCALE)
    torch.testing.assert_close(ours[0].float(), theirs[0].float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-4, rtol=1e-4)

    q = torch.randn(6, 16, 192, generator=g).bfloat16()
    k = torch.randn(8, 16, 192, generator=g).bfloat16()
    v = torch.randn(8, 16, 128, generator=g).bfloat16()
    qi = torch.tensor([0, 2, 6], dtype=torch.int32)
    ki = torch.tensor([0, 3, 8], dtype=torch.int32)
    ours = load_reference(ds_tp8["mla_ragged_prefill_causal_h16_qk192_vo128"])(q, k, v, qi, ki, 0.07)
    with pytest.raises(RuntimeError):
        A.gqa_ragged_prefill_trace.reference(q, k, v, qi, ki, 0.07)
    theirs = A.gqa_ragged_prefill_trace.reference(q, k, torch.cat([v, torch.zeros(8, 16, 64).bfloat16()], -1), qi, ki, 0.07)
    torch.testing.assert_close(ours[0].float(), theirs[0][..., :128].float(), atol=1e-2, rtol=1e-2)
    assert theirs[0][..., 128:].abs().max() == 0
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-4, rtol=1e-4)


def _io(d, sect):
    axes = const_axes(d)
    return {k: (tuple(axes.get(a, a) for a in v["shape"]) if v["shape"] is not None else None, v["dtype"])
            for k, v in d[sect].items()}


@pytest.mark.parametrize("page_size", [1, 64])
def test_agrees_with_flashinfer_dumper(ds_tp8, page_size, tmp_path):
    decode = ds_tp8[f"mla_paged_decode_h16_ckv512_kpe64_ps{page_size}"]
    prefill = ds_tp8[f"mla_paged_prefill_causal_h16_ckv512_kpe64_ps{page_size}"]
    api = "flashinfer.mla.BatchMLAPagedAttentionWrapper.run"
    cache = dict(ckv_cache=meta((10, page_size, 512), "bfloat16"), kpe_cache=meta((10, page_size, 64), "bfloat16"))
    theirs = fi_trace(api, q_nope=meta((3, 16, 512), "bfloat16"), q_pe=meta((3, 16, 64), "bfloat16"), **cache)
    assert theirs["name"] == decode["name"] and theirs["op_type"] == decode["op_type"] == "mla_paged"
    assert const_axes(theirs) == const_axes(decode)
    assert theirs["constraints"] == decode["constraints"]
    # documented differences: the dumper adds the FP8-cache scales and return_lse, leaves the
    # plan-time index tensors' dtype unknown, never declares kv_last_page_len, and tags the
    # defining module's .run instead of the public class
    ours_in, their_in = _io(decode, "inputs"), _io(theirs, "inputs")
    assert set(their_in) - set(ours_in) == {"ckv_scale", "ckv_scale_arr", "kpe_scale", "return_lse"}
    assert set(ours_in) - set(their_in) == ({"kv_last_page_len"} if page_size > 1 else set())
    for k in ("q_nope", "q_pe", "ckv_cache", "kpe_cache", "sm_scale"):
        assert their_in[k] == ours_in[k], k
    assert their_in["kv_indptr"] == (("len_indptr",), "unknown") and ours_in["kv_indptr"][1] == "int32"
    assert _io(theirs, "outputs") == _io(decode, "outputs")
    assert set(theirs["axes"]) - set(decode["axes"]) == {"ckv_scale_groups"}
    assert "fi_api:flashinfer.mla._core.BatchMLAPagedAttentionWrapper.run" in theirs["tags"]
    assert "fi_api:flashinfer.mla.BatchMLAPagedAttentionWrapper" in decode["tags"]

    # prefill: the same wrapper dumps under the decode name (our alias), batch_size for total_q
    theirs = fi_trace(api, q_nope=meta((11, 16, 512), "bfloat16"), q_pe=meta((11, 16, 64), "bfloat16"), **cache)
    assert theirs["name"] == decode["name"] != prefill["name"]
    assert theirs["inputs"]["q_nope"]["shape"] == ["batch_size", "num_qo_heads", "head_dim_ckv"]
    assert prefill["inputs"]["q_nope"]["shape"] == ["total_q", "num_qo_heads", "head_dim_ckv"]
    assert "qo_indptr" in prefill["inputs"] and "qo_indptr" not in theirs["inputs"]
    from defc.compiler.pipeline import CompileOptions, compile_model
    res = compile_model(CompileOptions(model="deepseek-v3", specs=["mla_paged"], tp=[8], out=str(tmp_path)))
    inst = res.instances[prefill["name"]][0]
    assert [(a["name"], a["op_type"]) for a in inst.aliases] == [(theirs["name"], "mla_paged")]

    # FlashInfer's prefill template (defined, attached to no API) has our prefill layout
    A = _templates()
    i32 = lambda n: meta((n,), "int32")
    tmpl = A.mla_paged_prefill_trace.build_fi_trace_fn("flashinfer.mla.BatchMLAPagedAttentionWrapper")(
        q_nope=meta((11, 16, 512), "bfloat16"), q_pe=meta((11, 16, 64), "bfloat16"), **cache,
        qo_indptr=i32(4), kv_indptr=i32(4), kv_indices=i32(9), sm_scale=SCALE)
    assert tmpl["name"] == f"mla_paged_prefill_h16_ckv512_kpe64_ps{page_size}"   # no _causal
    assert const_axes(tmpl) == const_axes(prefill) and tmpl["constraints"] == prefill["constraints"]
    ours_in = _io(prefill, "inputs")
    ours_in.pop("kv_last_page_len", None)
    assert _io(tmpl, "inputs") == ours_in
    assert _io(tmpl, "outputs") == _io(prefill, "outputs")


def test_ragged_agrees_with_flashinfer_dumper(ds_tp8, tmp_path):
    ours = ds_tp8["mla_ragged_prefill_causal_h16_qk192_vo128"]
    theirs = fi_trace("flashinfer.prefill.BatchPrefillWithRaggedKVCacheWrapper.run",
                      q=meta((7, 16, 192), "bfloat16"), k=meta((9, 16, 192), "bfloat16"),
                      v=meta((9, 16, 128), "bfloat16"))
    from defc.compiler.pipeline import CompileOptions, compile_model
    res = compile_model(CompileOptions(model="deepseek-v3", specs=["mla_ragged"], tp=[8], out=str(tmp_path)))
    alias = res.instances[ours["name"]][0].aliases
    assert [(a["name"], a["op_type"]) for a in alias] == [(theirs["name"], theirs["op_type"])] \
        == [("gqa_ragged_h16_kv16_d192", "gqa_ragged")]
    # documented differences: one head_dim (192) for q, k, v and output; v's 128 is lost
    assert const_axes(theirs) == {"num_qo_heads": 16, "num_kv_heads": 16, "head_dim": 192}
    assert const_axes(ours) == {"num_qo_heads": 16, "num_kv_heads": 16, "qk_dim": 192, "vo_dim": 128}
    assert _io(theirs, "inputs")["q"] == _io(ours, "inputs")["q"] == (("total_q", 16, 192), "bfloat16")
    assert _io(theirs, "inputs")["k"] == _io(ours, "inputs")["k"] == (("total_kv", 16, 192), "bfloat16")
    assert _io(theirs, "inputs")["v"][0] == ("total_kv", 16, 192)
    assert _io(ours, "inputs")["v"][0] == ("total_kv", 16, 128)
    assert _io(theirs, "outputs")["output"][0] == ("total_q", 16, 192)
    assert _io(ours, "outputs")["output"][0] == ("total_q", 16, 128)
    assert theirs["constraints"] == ours["constraints"]
    assert set(_io(theirs, "inputs")) - set(_io(ours, "inputs")) == {"return_lse"}


# -- any-model corpus: MLA models outside the catalogue (tests/corpus/<slug>/facts.yaml) ----------

CORPUS_MLA = ["deepseek-v2", "deepseek-v2-lite", "kimi-k2.5", "kimi-linear-48b-a3b"]


def _corpus(slug):
    """(config.json path, the hand-written facts) of a corpus model."""
    import os
    import yaml
    from conftest import ROOT
    folder = os.path.join(ROOT, "tests", "corpus", slug)
    with open(os.path.join(folder, "facts.yaml")) as fh:
        return os.path.join(folder, "config.json"), yaml.safe_load(fh)


def _compile_corpus(tmp, slug, specs, tp):
    from defc.compiler.pipeline import CompileOptions, compile_model
    cfg, _ = _corpus(slug)
    res = compile_model(CompileOptions(model=cfg, specs=list(specs), tp=list(tp), out=str(tmp / "ds")))
    return {p.doc["name"]: p.doc for p in res.planned}, res.findings


@pytest.mark.parametrize("slug", CORPUS_MLA)
def test_corpus_mla_shapes_per_tp(slug, tmp_path):
    """Heads per rank, latent and rope widths, MHA-path head dims: from the corpus facts (SGLang's
    DeepseekV2AttentionMLA: num_local_heads = num_heads // attn_tp_size)."""
    _, facts = _corpus(slug)
    assert facts["attention"]["kind"] == "mla"
    mla, heads = facts["mla"], facts["attention"]["num_attention_heads"]
    for tp in facts["tp"]:
        docs, _ = _compile_corpus(tmp_path / str(tp), slug, SPECS, [tp])
        h = heads // tp
        ckv, kpe = mla["kv_lora_rank"], mla["qk_rope_head_dim"]
        qk, vo = mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"], mla["v_head_dim"]
        assert set(docs) == {f"mla_paged_{s}_h{h}_ckv{ckv}_kpe{kpe}_ps{p}"
                             for s in ("decode", "prefill_causal") for p in (1, 64)} | {
            f"mla_ragged_prefill_causal_h{h}_qk{qk}_vo{vo}"}, (slug, tp)
        for name, d in docs.items():
            if d["op_type"] == "mla_paged":
                assert const_axes(d) == {"num_qo_heads": h, "head_dim_ckv": ckv, "head_dim_kpe": kpe,
                                         "page_size": int(name.rsplit("_ps", 1)[1])}
            else:
                assert const_axes(d) == {"num_qo_heads": h, "num_kv_heads": h, "qk_dim": qk, "vo_dim": vo}
            # the softmax scale (yarn mscale included) is an input, not part of the definition
            assert d["inputs"]["sm_scale"] == {**d["inputs"]["sm_scale"], "shape": None, "dtype": "float32"}
            assert f"tp:{tp}" in d["tags"] and "status:verified" in d["tags"], name


@pytest.mark.parametrize("slug", CORPUS_MLA)
def test_corpus_mla_projections_follow_q_lora_rank(slug, tmp_path):
    """q_lora_rank null (DeepSeek-V2-Lite, Kimi-Linear): q_proj hidden -> heads * qk, kv_a_proj alone
    (kv_lora_rank + qk_rope_head_dim), no q_a_layernorm and no q_a / q_b GEMMs; with a q_lora_rank the
    fused q_a + kv_a projection, q_a_layernorm and q_b_proj."""
    _, facts = _corpus(slug)
    mla, heads, hidden = facts["mla"], facts["attention"]["num_attention_heads"], facts["norm"]["hidden"]
    docs, _ = _compile_corpus(tmp_path, slug, ["gemm", "rmsnorm"], [1])
    gemms = {(const_axes(d)["N"], const_axes(d)["K"]) for d in docs.values() if d["op_type"] == "gemm"}
    norms = {const_axes(d)["hidden_size"] for d in docs.values() if d["op_type"] == "rmsnorm"}
    qk = mla["qk_nope_head_dim"] + mla["qk_rope_head_dim"]
    kv_a = mla["kv_lora_rank"] + mla["qk_rope_head_dim"]
    assert (heads * (mla["qk_nope_head_dim"] + mla["v_head_dim"]), mla["kv_lora_rank"]) in gemms   # kv_b_proj
    assert mla["kv_lora_rank"] in norms                                                         # kv_a_layernorm
    q_lora = mla["q_lora_rank"]
    if q_lora is None:
        assert (heads * qk, hidden) in gemms and (kv_a, hidden) in gemms
        linear = facts["linear_attention"] or {}
        assert norms <= {hidden, mla["kv_lora_rank"], linear.get("head_dim")}   # no q_a_layernorm
        assert not any(n == heads * qk and k != hidden for n, k in gemms)            # no q_b_proj
    else:
        assert (q_lora + kv_a, hidden) in gemms and (heads * qk, q_lora) in gemms
        assert (kv_a, hidden) not in gemms     # kv_a_proj is fused with q_a_proj
        assert q_lora in norms


def test_corpus_mla_rope_and_findings(tmp_path):
    """DeepSeek-V2(-Lite) rotate the 64 rope dims GPT-J style; Kimi-Linear's MLA layers rotate nothing
    (SGLang passes skip_rope=True; mla_use_nope) and its KDA layers are reported, not dropped silently."""
    for slug in ("deepseek-v2", "deepseek-v2-lite"):
        docs, _ = _compile_corpus(tmp_path / slug, slug, ["rope"], [1])
        assert set(docs) == {"rope_with_cos_sin_cache_gptj_style_d64_rd64"}, slug
    docs, found = _compile_corpus(tmp_path / "kl", "kimi-linear-48b-a3b", ["rope"] + SPECS, [1])
    assert not any(d["op_type"] == "rope" for d in docs.values())
    kda = [f for f in found if f.subject == "linear_attn_config"]
    assert [f.kind for f in kda] == ["unmodelled"] and "KDA" in kda[0].message and "kda_layers" in kda[0].message
    assert not any(f.kind == "unknown" and f.subject in ("mla_use_nope", "linear_attn_config") for f in found)


def test_corpus_mla_agrees_with_flashinfer_dumper(tmp_path):
    """DeepSeek-V2-Lite at tp 8 (2 heads per rank) and Kimi-Linear at tp 8 (4): the names and shapes
    FlashInfer's dumper gives the same calls."""
    lite, _ = _compile_corpus(tmp_path / "lite", "deepseek-v2-lite", SPECS, [8])
    d = lite["mla_paged_decode_h2_ckv512_kpe64_ps64"]
    theirs = fi_trace("flashinfer.mla.BatchMLAPagedAttentionWrapper.run",
                      q_nope=meta((3, 2, 512), "bfloat16"), q_pe=meta((3, 2, 64), "bfloat16"),
                      ckv_cache=meta((10, 64, 512), "bfloat16"), kpe_cache=meta((10, 64, 64), "bfloat16"))
    assert theirs["name"] == d["name"] and const_axes(theirs) == const_axes(d)
    for k in ("q_nope", "q_pe", "ckv_cache", "kpe_cache"):
        assert _io(theirs, "inputs")[k] == _io(d, "inputs")[k], k
    assert _io(theirs, "outputs") == _io(d, "outputs")
    kl, _ = _compile_corpus(tmp_path / "kl", "kimi-linear-48b-a3b", ["mla_ragged"], [8])
    ours = kl["mla_ragged_prefill_causal_h4_qk192_vo128"]
    theirs = fi_trace("flashinfer.prefill.BatchPrefillWithRaggedKVCacheWrapper.run",
                      q=meta((7, 4, 192), "bfloat16"), k=meta((9, 4, 192), "bfloat16"),
                      v=meta((9, 4, 128), "bfloat16"))
    assert theirs["name"] == "gqa_ragged_h4_kv4_d192"     # the alias the spec records
    assert _io(theirs, "inputs")["q"] == _io(ours, "inputs")["q"] == (("total_q", 4, 192), "bfloat16")
    assert _io(theirs, "inputs")["k"] == _io(ours, "inputs")["k"]
