"""cascade (merge_state family) and page (append_paged_kv_cache): shapes per model, references
against independent torch math and FlashInfer's template references, agreement with the dumper."""
import functools
import json
import math
import os

import pytest
import torch

from conftest import compile_defs, load_reference
from fi_oracle import concrete_shape, const_axes, fi_trace, flashinfer, meta

SPECS = ["cascade", "page"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from defc.compiler import serving
    cache = {}
    mp = pytest.MonkeyPatch()   # the cookbook snapshot does not change within a test run
    mp.setattr(serving, "load_snapshot", functools.lru_cache(maxsize=None)(serving.load_snapshot))

    def _c(model, **kw):
        key = (model, json.dumps(kw, sort_keys=True))
        if key not in cache:
            cache[key] = compile_defs(tmp_path_factory.mktemp(model.replace(".", "_")), model, specs=SPECS, **kw)
        return cache[key]
    yield _c
    mp.undo()


def test_shapes_per_model(compiled):
    llama = compiled("llama-3.1-8b")
    assert set(llama) == {"merge_state_h32_d128", "merge_state_in_place_h32_d128", "merge_states_h32_d128",
                          "append_paged_kv_cache_kv8_d128_ps1", "append_paged_kv_cache_kv8_d128_ps64"}
    assert {llama[n]["op_type"] for n in llama} == {"cascade_merge", "page_append"}
    assert "fi_api:flashinfer.cascade.merge_state" in llama["merge_state_h32_d128"]["tags"]
    assert "fi_api:flashinfer.page.append_paged_kv_cache" in llama["append_paged_kv_cache_kv8_d128_ps1"]["tags"]
    big = compiled("qwen3-235b-a22b")          # tp8: 8 q heads, kv 4 < 8 replicated to 1
    assert {"merge_state_h8_d128", "append_paged_kv_cache_kv1_d128_ps64"} <= set(big)
    seventy = compiled("llama-3.1-70b")        # tp4
    assert {"merge_states_h16_d128", "append_paged_kv_cache_kv2_d128_ps1"} <= set(seventy)
    nxt = compiled("qwen3-next-80b-a3b")       # tp2 and tp4, head_dim 256
    assert {"merge_state_h8_d256", "merge_state_h4_d256", "append_paged_kv_cache_kv1_d256_ps64"} <= set(nxt)
    dp = compiled("qwen3-235b-a22b", tp=[8], dp=[8])
    assert "dp:8" in dp["merge_state_h64_d128"]["tags"]
    assert compiled("deepseek-v3") == {}       # MLA: merged by sgl_kernel, cached by the MLA append


def test_every_definition_loads_in_flashinfer_bench(compiled):
    from flashinfer_bench.data import Definition
    n = 0
    for model in ("llama-3.1-8b", "qwen3-235b-a22b", "llama-3.1-70b", "qwen3-next-80b-a3b"):
        for d in compiled(model).values():
            Definition(**d)
            assert not set(d["inputs"]) & set(d["outputs"])
            n += 1
    assert n >= 20


# ---------------------------------------------------------------------------------------------
# cascade

def attention_state(q, k, v, scale):
    """Plain (non-causal) attention of q [n, H, D] over k/v [L, H, D]: output and base-2 lse."""
    s = torch.einsum("nhd,lhd->nhl", q.double(), k.double()) * scale
    return torch.einsum("nhl,lhd->nhd", torch.softmax(s, -1), v.double()), torch.logsumexp(s, -1) / math.log(2)


def test_merging_partial_states_gives_full_attention(compiled):
    docs = compiled("llama-3.1-70b")   # h16 d128
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(6, 16, 128, generator=gen)
    k = torch.randn(40, 16, 128, generator=gen)
    v = torch.randn(40, 16, 128, generator=gen)
    full_v, full_s = attention_state(q, k, v, 0.1)
    parts = [attention_state(q, k[a:b], v[a:b], 0.1) for a, b in [(0, 9), (9, 30), (30, 40)]]
    bf = lambda x: x.to(torch.bfloat16)
    f32 = lambda x: x.to(torch.float32)
    (va, sa), (vb, sb), (vc, sc) = parts
    # two states: A+B equals attention over keys 0..29
    ab_v, ab_s = attention_state(q, k[:30], v[:30], 0.1)
    got_v, got_s = load_reference(docs["merge_state_h16_d128"])(bf(va), f32(sa), bf(vb), f32(sb))
    assert got_v.dtype == torch.bfloat16 and got_s.dtype == torch.float32
    torch.testing.assert_close(got_v.double(), ab_v, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got_s.double(), ab_s, atol=1e-5, rtol=1e-5)
    got_v, got_s = load_reference(docs["merge_state_in_place_h16_d128"])(bf(va), f32(sa), bf(vb), f32(sb))
    torch.testing.assert_close(got_v.double(), ab_v, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got_s.double(), ab_s, atol=1e-5, rtol=1e-5)
    # many states: all three equal the full attention
    vs = torch.stack([bf(va), bf(vb), bf(vc)], dim=1)
    ss = torch.stack([f32(sa), f32(sb), f32(sc)], dim=1)
    got_v, got_s = load_reference(docs["merge_states_h16_d128"])(vs, ss)
    torch.testing.assert_close(got_v.double(), full_v, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got_s.double(), full_s, atol=1e-5, rtol=1e-5)
    # an empty state (lse -inf) contributes nothing; two empty states merge to 0 / -inf
    empty_s = torch.full_like(f32(sa), float("-inf"))
    got_v, got_s = load_reference(docs["merge_state_h16_d128"])(bf(va), f32(sa), torch.zeros_like(bf(va)), empty_s)
    assert torch.equal(got_v, bf(va)) and torch.equal(got_s, f32(sa))
    got_v, got_s = load_reference(docs["merge_state_h16_d128"])(bf(va), empty_s, bf(vb), empty_s)
    assert torch.equal(got_v, torch.zeros_like(got_v)) and bool(torch.isneginf(got_s).all())
    with pytest.raises(AssertionError):
        load_reference(docs["merge_state_h16_d128"])(bf(va[:, :8]), f32(sa[:, :8]), bf(vb[:, :8]), f32(sb[:, :8]))


def test_merge_references_agree_with_flashinfer_templates(compiled):
    flashinfer()
    from flashinfer.trace.templates import cascade as fc
    docs = compiled("llama-3.1-8b")
    gen = torch.Generator().manual_seed(1)
    v = [torch.randn(5, 32, 128, generator=gen).to(torch.bfloat16) for _ in range(3)]
    s = [torch.randn(5, 32, generator=gen) * 4 for _ in range(3)]
    pairs = [("merge_state_h32_d128", fc.merge_state_trace.reference, (v[0], s[0], v[1], s[1])),
             ("merge_state_in_place_h32_d128", fc.merge_state_in_place_trace.reference, (v[0], s[0], v[1], s[1])),
             ("merge_states_h32_d128", fc.merge_states_trace.reference, (torch.stack(v, 1), torch.stack(s, 1)))]
    for name, theirs_fn, args in pairs:
        ours, theirs = load_reference(docs[name])(*args), theirs_fn(*args)
        # (their pair references return v in float32: they rebind v_a to its float32 copy before
        # casting back "to v_a.dtype"; the kernel and the definitions return bfloat16)
        assert ours[0].dtype == torch.bfloat16
        torch.testing.assert_close(ours[0].float(), theirs[0].float(), atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(ours[1], theirs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("api,name,kwargs", [
    ("flashinfer.cascade.merge_state", "merge_state_h32_d128",
     {"v_a": ((9, 32, 128), "bfloat16"), "s_a": ((9, 32), "float32"), "v_b": ((9, 32, 128), "bfloat16"),
      "s_b": ((9, 32), "float32")}),
    ("flashinfer.cascade.merge_state_in_place", "merge_state_in_place_h32_d128",
     {"v": ((9, 32, 128), "bfloat16"), "s": ((9, 32), "float32"), "v_other": ((9, 32, 128), "bfloat16"),
      "s_other": ((9, 32), "float32")}),
    ("flashinfer.cascade.merge_states", "merge_states_h32_d128",
     {"v": ((9, 3, 32, 128), "bfloat16"), "s": ((9, 3, 32), "float32")}),
])
def test_merge_agrees_with_fi_trace(compiled, api, name, kwargs):
    ours = compiled("llama-3.1-8b")[name]
    theirs = fi_trace(api, **{k: meta(*v) for k, v in kwargs.items()})
    assert (theirs["name"], theirs["op_type"]) == (ours["name"], ours["op_type"])
    assert const_axes(theirs) == const_axes(ours)
    assert set(theirs["axes"]) == set(ours["axes"])
    sizes = {"seq_len": 9, "num_states": 3}
    for k, t in ours["inputs"].items():
        assert theirs["inputs"][k]["shape"] == t["shape"] and theirs["inputs"][k]["dtype"] == t["dtype"]
    if name.startswith("merge_state_in_place"):
        # documented differences: FlashInfer's outputs reuse the input names v/s; it has an optional mask
        assert set(theirs["inputs"]) - set(ours["inputs"]) == {"mask"}
        assert theirs["inputs"]["mask"].get("optional") is True
        renamed = {"v_merged": "v", "s_merged": "s"}
    else:
        assert set(theirs["inputs"]) == set(ours["inputs"])
        renamed = {"v_merged": "v_merged", "s_merged": "s_merged"}
    assert set(theirs["outputs"]) == set(renamed.values())
    for k, t in ours["outputs"].items():
        th = theirs["outputs"][renamed[k]]
        assert th["dtype"] == t["dtype"]
        assert concrete_shape(theirs, th, sizes) == concrete_shape(ours, t, sizes)


# ---------------------------------------------------------------------------------------------
# page

def append_case(page_size, kv_heads, head_dim, gen, old_lens=(0, 5, 70), new_lens=(3, 1, 60), spare=2):
    """Sequences that already hold old_lens tokens get new_lens more; the page table describes the
    state after the append (pages allocated shuffled from a pool)."""
    after = [o + n for o, n in zip(old_lens, new_lens)]
    npages = [-(-a // page_size) for a in after]
    pool = torch.randperm(sum(npages) + spare, generator=gen)
    k_cache = torch.randn(len(pool), page_size, kv_heads, head_dim, generator=gen).to(torch.bfloat16)
    v_cache = torch.randn(len(pool), page_size, kv_heads, head_dim, generator=gen).to(torch.bfloat16)
    indptr = [0]
    for p in npages:
        indptr.append(indptr[-1] + p)
    indices = pool[:indptr[-1]]
    last = [a - (p - 1) * page_size for a, p in zip(after, npages)]
    batch_indices = torch.cat([torch.full((n,), b) for b, n in enumerate(new_lens)])
    positions = torch.cat([torch.arange(o, o + n) for o, n in zip(old_lens, new_lens)])
    nnz = sum(new_lens)
    key = torch.randn(nnz, kv_heads, head_dim, generator=gen).to(torch.bfloat16)
    val = torch.randn(nnz, kv_heads, head_dim, generator=gen).to(torch.bfloat16)
    i32 = lambda x: torch.as_tensor(x).to(torch.int32)
    return dict(append_key=key, append_value=val, batch_indices=i32(batch_indices), positions=i32(positions),
                k_cache=k_cache, v_cache=v_cache, kv_indices=i32(indices), kv_indptr=i32(indptr),
                kv_last_page_len=i32(last)), after


@pytest.mark.parametrize("ps", [1, 64])
def test_append_reference(compiled, ps):
    docs = compiled("llama-3.1-70b")   # kv2 d128
    run = load_reference(docs[f"append_paged_kv_cache_kv2_d128_ps{ps}"])
    gen = torch.Generator().manual_seed(ps)
    case, after = append_case(ps, 2, 128, gen)
    k_out, v_out = run(*case.values())
    assert list(docs[f"append_paged_kv_cache_kv2_d128_ps{ps}"]["inputs"]) == list(case)
    assert torch.equal(case["k_cache"], case["k_cache"].clone())  # inputs untouched by the reference
    # independent: token by token, then read each sequence back through its page table
    k_want, v_want = case["k_cache"].clone(), case["v_cache"].clone()
    for i in range(case["append_key"].shape[0]):
        b, p = int(case["batch_indices"][i]), int(case["positions"][i])
        page = int(case["kv_indices"][int(case["kv_indptr"][b]) + p // ps])
        k_want[page, p % ps] = case["append_key"][i]
        v_want[page, p % ps] = case["append_value"][i]
    assert torch.equal(k_out, k_want) and torch.equal(v_out, v_want)
    start = 0
    for b, n_after in enumerate(after):
        pages = case["kv_indices"][case["kv_indptr"][b]:case["kv_indptr"][b + 1]].long()
        seq_k = k_out[pages].reshape(-1, 2, 128)[:n_after]
        n_new = int((case["batch_indices"] == b).sum())
        assert torch.equal(seq_k[n_after - n_new:], case["append_key"][start:start + n_new])
        start += n_new
    # a position beyond its sequence's length is rejected
    bad = dict(case)
    bad["positions"] = case["positions"].clone()
    bad["positions"][0] = after[0]
    with pytest.raises(AssertionError):
        run(*bad.values())
    # FlashInfer's template reference (mutates a (k, v) tuple in place)
    flashinfer()
    from flashinfer.trace.templates import page as fp
    kt, vt = case["k_cache"].clone(), case["v_cache"].clone()
    fp.append_paged_kv_cache_trace.reference(case["append_key"], case["append_value"], case["batch_indices"],
                                        case["positions"], (kt, vt), case["kv_indices"], case["kv_indptr"],
                                        case["kv_last_page_len"])
    assert torch.equal(kt, k_out) and torch.equal(vt, v_out)


def test_append_agrees_with_fi_trace(compiled):
    ours = compiled("llama-3.1-8b")["append_paged_kv_cache_kv8_d128_ps64"]
    base = {"append_key": meta((5, 8, 128), "bfloat16"), "append_value": meta((5, 8, 128), "bfloat16"),
            "batch_indices": meta((5,), "int32"), "positions": meta((5,), "int32"),
            "kv_indices": meta((7,), "int32"), "kv_indptr": meta((3,), "int32"),
            "kv_last_page_len": meta((2,), "int32")}
    cache = meta((10, 64, 8, 128), "bfloat16")
    # one 4-D cache tensor: the dumper reads page_size and agrees with our name and const axes
    theirs = fi_trace("flashinfer.page.append_paged_kv_cache", paged_kv_cache=cache, **base)
    assert (theirs["name"], theirs["op_type"]) == (ours["name"], ours["op_type"])
    assert const_axes(theirs) == const_axes(ours)
    assert set(theirs["axes"]) == set(ours["axes"])
    # the documented difference: one in-place paged_kv_cache vs our k_cache/v_cache -> *_out
    assert set(theirs["inputs"]) ^ set(ours["inputs"]) == {"paged_kv_cache", "k_cache", "v_cache"}
    assert set(theirs["outputs"]) == {"paged_kv_cache"} and set(ours["outputs"]) == {"k_cache_out", "v_cache_out"}
    for k in ("k_cache", "v_cache"):
        assert ours["inputs"][k]["shape"] == theirs["inputs"]["paged_kv_cache"]["shape"]
        assert ours["outputs"][k + "_out"]["shape"] == theirs["outputs"]["paged_kv_cache"]["shape"]
    for k, t in theirs["inputs"].items():
        if k != "paged_kv_cache":
            assert (t["shape"], t["dtype"]) == (ours["inputs"][k]["shape"], ours["inputs"][k]["dtype"])
    assert set(theirs["constraints"]) < set(ours["constraints"])
    # the (k, v) tuple quirk: page_size gets no value, _ps leaves the name, the cache dtype is unknown
    quirk = fi_trace("flashinfer.page.append_paged_kv_cache", paged_kv_cache=(cache, cache), **base)
    assert quirk["name"] == "append_paged_kv_cache_kv8_d128"
    assert "value" not in quirk["axes"]["page_size"]
    assert quirk["inputs"]["paged_kv_cache"]["dtype"] == "unknown"


# ---------------------------------------------------------------------------------------------
# corpus models (tests/corpus) whose layer kinds differ in shape: one merge / append definition per
# kind; expected values from each model's hand-written facts.yaml.

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def corpus_case(tmp_path_factory, slug, tp):
    import yaml
    with open(os.path.join(CORPUS, slug, "facts.yaml"), encoding="utf-8") as fh:
        facts = yaml.safe_load(fh)
    docs = compile_defs(tmp_path_factory.mktemp("cp_" + slug.replace(".", "_")),
                        os.path.join(CORPUS, slug, "config.json"), specs=SPECS, tp=[tp])
    return facts["attention"], docs


@pytest.mark.parametrize("tp", [1, 8])
def test_laguna_merges_per_layer_kind(tmp_path_factory, tp):
    att, docs = corpus_case(tmp_path_factory, "laguna-xs.2", tp)
    kinds = att["per_layer_kind"]
    want = set()
    for k in kinds.values():
        h, kv, d = k["num_heads"] // tp, max(1, k["num_kv_heads"] // tp), k["head_dim"]
        want |= {f"merge_state_h{h}_d{d}", f"merge_state_in_place_h{h}_d{d}", f"merge_states_h{h}_d{d}"}
        want |= {f"append_paged_kv_cache_kv{kv}_d{d}_ps{ps}" for ps in (1, 64)}
    assert set(docs) == want
    assert len([n for n in docs if n.startswith("merge_state_h")]) == 2      # 48 and 64 heads (6 and 8 at tp8)


@pytest.mark.parametrize("tp", [1, 8])
def test_mimo_appends_per_layer_kind_unverified(tmp_path_factory, tp):
    att, docs = corpus_case(tmp_path_factory, "mimo-v2-flash", tp)
    kinds = att["per_layer_kind"]
    appends = {f"append_paged_kv_cache_kv{max(1, k['num_kv_heads'] // tp)}_d{k['head_dim']}_ps{ps}"
               for k in kinds.values() for ps in (1, 64)}
    assert {n for n in docs if n.startswith("append_")} == appends
    assert len(appends) == (4 if tp == 1 else 2)                             # kv 4 and 8; both 1 at tp8
    # V heads of 128 against q/k heads of 192: not expressible, reported, never status:verified
    assert all("status:unverified" in d["tags"] for d in docs.values())


def test_gemma2_kinds_agree_so_one_set(tmp_path_factory):
    att, docs = corpus_case(tmp_path_factory, "gemma-2-9b", 1)
    h, kv, d = att["num_attention_heads"], att["num_kv_heads"], att["head_dim"]
    assert set(docs) == {f"merge_state_h{h}_d{d}", f"merge_state_in_place_h{h}_d{d}", f"merge_states_h{h}_d{d}",
                         f"append_paged_kv_cache_kv{kv}_d{d}_ps1", f"append_paged_kv_cache_kv{kv}_d{d}_ps64"}
    assert all("status:verified" in x["tags"] for x in docs.values())
