"""gdn family (Qwen3-Next's gated delta net): names per TP, the references against FlashInfer's own
template references and an independent per-head float64 recurrence written the way SGLang runs
it (q/k L2-normalised inside), and agreement with FlashInfer's dumper on the same shapes."""
import math

import pytest
import torch

from conftest import compile_defs, load_reference
from fi_oracle import concrete_shape, const_axes, fi_trace, flashinfer, meta, template

MODEL = "qwen3-next-80b-a3b"


@pytest.fixture(scope="module")
def cookbook(tmp_path_factory):
    """The cookbook's serving configs for Qwen3-Next: tp 2 and tp 4."""
    return compile_defs(tmp_path_factory.mktemp("gdn"), MODEL, specs=["gdn"])


@pytest.fixture(scope="module")
def tp1(tmp_path_factory):
    return compile_defs(tmp_path_factory.mktemp("gdn1"), MODEL, specs=["gdn"], tp=[1])


def _fi_templates():
    flashinfer()
    from flashinfer.trace.templates import gdn
    return gdn


# -- names, axes, tags ----------------------------------------------------------------------------

def test_names_per_tp(cookbook, tp1):
    assert set(cookbook) == {f"gdn_{s}_qk{q}_v{v}_d128_k_last"
                             for s in ("decode", "mtp", "prefill") for q, v in ((8, 16), (4, 8))}
    assert set(tp1) == {f"gdn_{s}_qk16_v32_d128_k_last" for s in ("decode", "mtp", "prefill")}
    d = cookbook["gdn_decode_qk4_v8_d128_k_last"]
    assert const_axes(d) == {"seq_len": 1, "num_q_heads": 4, "num_k_heads": 4, "num_v_heads": 8, "head_size": 128}
    assert list(d["inputs"]) == ["q", "k", "v", "state", "A_log", "a", "dt_bias", "b", "scale"]
    assert d["inputs"]["state"]["optional"] is True and d["inputs"]["A_log"]["dtype"] == "float32"
    assert "(same as key heads in GVA mode, TP=4, 16/4=4)" in d["axes"]["num_q_heads"]["description"]
    m = cookbook["gdn_mtp_qk8_v16_d128_k_last"]
    assert const_axes(m) == {"num_q_heads": 8, "num_k_heads": 8, "num_v_heads": 16, "head_size": 128}
    assert list(m["inputs"]) == ["q", "k", "v", "initial_state", "initial_state_indices", "A_log", "a",
                                 "dt_bias", "b", "scale", "intermediate_states_buffer"]
    assert list(m["outputs"]) == ["output", "final_state"]
    p = cookbook["gdn_prefill_qk4_v8_d128_k_last"]
    assert list(p["inputs"]) == ["q", "k", "v", "state", "A_log", "a", "dt_bias", "b", "cu_seqlens", "scale"]
    assert p["inputs"]["cu_seqlens"]["dtype"] == "int64"
    for name, doc in cookbook.items():
        stage = name.split("_")[1]
        tp = 4 if "_qk4_" in name else 2
        assert {f"stage:{stage}", "layout:k-last", f"tp:{tp}", "status:verified", f"model:{MODEL}"} <= set(doc["tags"])
        fi = [t for t in doc["tags"] if t.startswith("fi_api:")]
        assert fi == ({"decode": ["fi_api:flashinfer.gdn_decode.gated_delta_rule_decode"],
                       "prefill": ["fi_api:flashinfer.gdn_prefill.chunk_gated_delta_rule"],
                       "mtp": []}[stage]), name   # curated gdn_mtp carries no fi_api tag


def test_other_models_have_no_gdn(tmp_path):
    for model in ("llama-3.1-8b", "nemotron-h-8b"):
        assert compile_defs(tmp_path / model, model, specs=["gdn"]) == {}


def test_every_file_is_a_definition(cookbook, tp1):
    from flashinfer_bench.data import Definition
    for doc in list(cookbook.values()) + list(tp1.values()):
        d = Definition.model_validate(doc)
        assert d.name == doc["name"] and d.op_type == "gdn"


# -- references ----------------------------------------------------------------------------------

def _inputs(B, T, H=4, HV=8, D=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    q = torch.nn.functional.normalize(r(B, T, H, D), dim=-1).to(torch.bfloat16)
    k = torch.nn.functional.normalize(r(B, T, H, D), dim=-1).to(torch.bfloat16)
    v = r(B, T, HV, D).to(torch.bfloat16)
    A_log = r(HV) * 0.5
    a = (r(B, T, HV) * 0.5).to(torch.bfloat16)
    dt_bias = r(HV) * 0.5
    b = r(B, T, HV).to(torch.bfloat16)
    return q, k, v, A_log, a, dt_bias, b


def _sglang_style(q, k, v, state_vk, A_log, a, dt_bias, b, scale):
    """Independent float64 recurrence, one head at a time, in SGLang's form: raw q/k are
    L2-normalised inside, the state is kept [K, V], decay by exp(g), delta-rule correction.
    q, k: [T, H, D]; v: [T, HV, D]; a, b: [T, HV]; state_vk: [HV, V, K] (k-last) or None."""
    T, H, D = q.shape
    HV = v.shape[1]
    out = torch.zeros(T, HV, D, dtype=torch.float64)
    states = []
    for h in range(HV):
        S = torch.zeros(D, D, dtype=torch.float64) if state_vk is None else state_vk[h].double().T.clone()
        for t in range(T):
            qt = q[t, h // (HV // H)].double()
            kt = k[t, h // (HV // H)].double()
            qt, kt = qt / qt.norm(), kt / kt.norm()
            g = -math.exp(float(A_log[h])) * math.log1p(math.exp(float(a[t, h]) + float(dt_bias[h])))
            beta = 1.0 / (1.0 + math.exp(-float(b[t, h])))
            S = S * math.exp(g)
            S = S + beta * torch.outer(kt, v[t, h].double() - kt @ S)
            out[t, h] = scale * (qt @ S)
        states.append(S.T)
    return out, torch.stack(states)


def test_decode_matches_flashinfer_reference(cookbook):
    run = load_reference(cookbook["gdn_decode_qk4_v8_d128_k_last"])
    q, k, v, A_log, a, dt_bias, b = _inputs(3, 1)
    state = torch.randn(3, 8, 128, 128) * 0.1
    out, new_state = run(q, k, v, state.clone(), A_log, a, dt_bias, b, None)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 1, 8, 128)
    assert new_state.dtype == torch.float32 and new_state.shape == (3, 8, 128, 128)
    want_out, want_state = _fi_templates().gated_delta_rule_decode_trace.reference(q, k, v, state.clone(), A_log, a, dt_bias, b, None)
    torch.testing.assert_close(out.float(), want_out.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(new_state, want_state, atol=1e-4, rtol=1e-4)
    # no state: starts from zeros; an explicit scale is used as given
    out0, s0 = run(q, k, v, None, A_log, a, dt_bias, b, 0.25)
    w0, ws0 = _fi_templates().gated_delta_rule_decode_trace.reference(q, k, v, None, A_log, a, dt_bias, b, 0.25)
    torch.testing.assert_close(out0.float(), w0.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(s0, ws0, atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError):   # qk8 shapes against the qk4 definition
        run(torch.zeros(1, 1, 8, 128), k[:1], v[:1], None, A_log, a[:1], dt_bias, b[:1], None)


def test_decode_is_sglangs_recurrence_on_normalised_qk(cookbook):
    """The definition leaves L2 normalisation to the caller: feeding it normalised q/k gives
    SGLang's use_qk_l2norm_in_kernel=True result on the raw q/k."""
    run = load_reference(cookbook["gdn_decode_qk4_v8_d128_k_last"])
    g = torch.Generator().manual_seed(1)
    raw_q = (torch.randn(2, 1, 4, 128, generator=g) * 3).to(torch.bfloat16)
    raw_k = (torch.randn(2, 1, 4, 128, generator=g) * 3).to(torch.bfloat16)
    _, _, v, A_log, a, dt_bias, b = _inputs(2, 1, seed=2)
    state = torch.randn(2, 8, 128, 128, generator=g) * 0.1
    nq = torch.nn.functional.normalize(raw_q.float(), dim=-1).to(torch.bfloat16)
    nk = torch.nn.functional.normalize(raw_k.float(), dim=-1).to(torch.bfloat16)
    out, new_state = run(nq, nk, v, state, A_log, a, dt_bias, b, None)
    for i in range(2):
        want_o, want_s = _sglang_style(raw_q[i], raw_k[i], v[i], state[i], A_log, a[i], dt_bias, b[i], 128 ** -0.5)
        torch.testing.assert_close(out[i].float(), want_o.float(), atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(new_state[i], want_s.float(), atol=2e-2, rtol=2e-2)
    # without the normalisation the raw q/k give a different result (it is not done inside)
    raw_out, _ = run(raw_q, raw_k, v, state, A_log, a, dt_bias, b, None)
    assert (raw_out.float() - out.float()).abs().max() > 0.5


def test_prefill_matches_flashinfer_reference_and_sglang(cookbook):
    run = load_reference(cookbook["gdn_prefill_qk4_v8_d128_k_last"])
    q, k, v, A_log, a, dt_bias, b = _inputs(1, 9, seed=3)
    q, k, v, a, b = q[0], k[0], v[0], a[0], b[0]
    cu = torch.tensor([0, 3, 4, 9], dtype=torch.int64)
    state = torch.randn(3, 8, 128, 128) * 0.1
    out, new_state = run(q, k, v, state, A_log, a, dt_bias, b, cu, None)
    assert out.shape == (9, 8, 128) and new_state.shape == (3, 8, 128, 128)
    fi_reference = template(_fi_templates().gdn_prefill_trace, "gdn_prefill").reference
    want_out, want_state = fi_reference(q, k, v, state, A_log, a, dt_bias, b, cu, None)
    torch.testing.assert_close(out.float(), want_out.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(new_state, want_state, atol=1e-4, rtol=1e-4)
    # each sequence restarts from its own state
    for n in range(3):
        s, e = int(cu[n]), int(cu[n + 1])
        wo, ws = _sglang_style(q[s:e], k[s:e], v[s:e], state[n], A_log, a[s:e], dt_bias, b[s:e], 128 ** -0.5)
        torch.testing.assert_close(out[s:e].float(), wo.float(), atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(new_state[n], ws.float(), atol=1e-3, rtol=1e-3)
    # absent state: zeros
    out0, _ = run(q, k, v, None, A_log, a, dt_bias, b, cu, None)
    wo0, _ = fi_reference(q, k, v, None, A_log, a, dt_bias, b, cu, None)
    torch.testing.assert_close(out0.float(), wo0.float(), atol=2e-2, rtol=2e-2)


def test_mtp_matches_flashinfer_reference(cookbook):
    """FlashInfer 0.7.2's MTP reference with the curated semantics: no in-kernel L2 norm, state
    committed; a padding row (index -1) produces zeros and writes nothing."""
    run = load_reference(cookbook["gdn_mtp_qk4_v8_d128_k_last"])
    B, T, pool = 3, 3, 5
    q, k, v, A_log, a, dt_bias, b = _inputs(B, T, seed=4)
    pool_state = torch.randn(pool, 8, 128, 128) * 0.1
    idx = torch.tensor([4, -1, 1], dtype=torch.int32)
    buf = torch.zeros(pool, T, 8, 128, 128)
    out, final = run(q, k, v, pool_state.clone(), idx, A_log, a, dt_bias, b, None, buf)
    want_buf = torch.zeros_like(buf)
    want_out, want_final = _fi_templates().gdn_mtp_trace.reference(
        q, k, v, pool_state.clone(), idx, A_log, a, dt_bias, b, None, want_buf,
        use_qk_l2norm=False, disable_state_update=False)
    torch.testing.assert_close(out.float(), want_out.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(final, want_final, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(buf, want_buf, atol=1e-4, rtol=1e-4)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    for untouched in (0, 2, 3):
        assert torch.equal(final[untouched], pool_state[untouched])
    # the last intermediate state of a row is its committed final state
    torch.testing.assert_close(buf[2, T - 1], final[1])
    # MTP over T tokens equals T decode steps on the same slot
    dec = load_reference(cookbook["gdn_decode_qk4_v8_d128_k_last"])
    s = pool_state[4:5].clone()
    for t in range(T):
        o, s = dec(q[0:1, t:t + 1], k[0:1, t:t + 1], v[0:1, t:t + 1], s, A_log, a[0:1, t:t + 1], dt_bias,
                   b[0:1, t:t + 1], None)
        torch.testing.assert_close(o[0, 0].float(), out[0, t].float(), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(s[0], final[4], atol=1e-5, rtol=1e-5)


# -- agreement with FlashInfer's dumper ---------------------------------------------------------

def _decode_kwargs(B=3, H=4, HV=8, D=128, T=1):
    return dict(q=meta((B, T, H, D), "bfloat16"), k=meta((B, T, H, D), "bfloat16"),
                v=meta((B, T, HV, D), "bfloat16"), A_log=meta((HV,), "float32"),
                a=meta((B, T, HV), "bfloat16"), dt_bias=meta((HV,), "float32"), b=meta((B, T, HV), "bfloat16"))


def _io(defn, key, var):
    return {n: (concrete_shape(defn, t, var), t["dtype"]) for n, t in defn[key].items()}


@pytest.mark.parametrize("name", ["gdn_decode_qk4_v8_d128_k_last", "gdn_decode_qk8_v16_d128_k_last"])
def test_decode_agrees_with_dumper(cookbook, name):
    ours = cookbook[name]
    H, HV = ours["axes"]["num_q_heads"]["value"], ours["axes"]["num_v_heads"]["value"]
    kw = _decode_kwargs(H=H, HV=HV)
    theirs = fi_trace("flashinfer.gdn_decode.gated_delta_rule_decode", state=meta((3, HV, 128, 128), "float32"), **kw)
    assert theirs["name"] + "_k_last" == ours["name"]            # the documented alias
    assert theirs["name"] == ours["name"][:-len("_k_last")]
    assert theirs["op_type"] == ours["op_type"] and const_axes(theirs) == const_axes(ours)
    var = {"batch_size": 3}
    assert _io(theirs, "inputs", var) == _io(ours, "inputs", var)
    assert _io(theirs, "outputs", var) == _io(ours, "outputs", var)
    assert theirs["constraints"] == ours["constraints"]


def test_mtp_agrees_with_dumper(cookbook):
    ours = cookbook["gdn_mtp_qk4_v8_d128_k_last"]
    kw = _decode_kwargs(T=4)
    theirs = fi_trace("flashinfer.gdn_decode.gated_delta_rule_mtp", initial_state=meta((6, 8, 128, 128), "float32"),
                      initial_state_indices=meta((3,), "int32"),
                      intermediate_states_buffer=meta((6, 4, 8, 128, 128), "float32"), **kw)
    assert theirs["name"] + "_k_last" == ours["name"] and const_axes(theirs) == const_axes(ours)
    var = {"batch_size": 3, "seq_len": 4, "pool_size": 6}
    ti, oi = _io(theirs, "inputs", var), _io(ours, "inputs", var)
    # documented: the dumper adds the ReplaySSM cache and three flags
    assert set(ti) - set(oi) == {"cache_replayssm", "disable_state_update", "use_qk_l2norm",
                                 "replayssm_rawv", "replayssm_rawk", "replayssm_g", "replayssm_beta"}
    assert {n: ti[n] for n in oi} == oi
    to, oo = _io(theirs, "outputs", var), _io(ours, "outputs", var)
    assert set(to) - set(oo) == {"replayssm_rawv", "replayssm_rawk", "replayssm_g", "replayssm_beta"}
    assert {n: to[n] for n in oo} == oo
    assert theirs["constraints"] == ours["constraints"]


def test_prefill_agrees_with_dumper(cookbook):
    ours = cookbook["gdn_prefill_qk4_v8_d128_k_last"]
    theirs = fi_trace("flashinfer.gdn_prefill.chunk_gated_delta_rule",
                      q=meta((10, 4, 128), "bfloat16"), k=meta((10, 4, 128), "bfloat16"), v=meta((10, 8, 128), "bfloat16"),
                      g=meta((10, 8), "float32"), beta=meta((10, 8), "float32"),
                      initial_state=meta((3, 8, 128, 128), "float32"), cu_seqlens=meta((4,), "int64"))
    assert theirs["name"] + "_k_last" == ours["name"] and const_axes(theirs) == const_axes(ours)
    var = {"total_seq_len": 10, "num_seqs": 3, "len_cu_seqlens": 4}
    ti, oi = _io(theirs, "inputs", var), _io(ours, "inputs", var)
    assert list(ti) == list(oi)
    assert {n: s for n, (s, _) in ti.items()} == {n: s for n, (s, _) in oi.items()}
    # documented: a/b are the API's precomputed float32 g/beta; A_log/dt_bias are not API arguments
    diff = {n: (ti[n][1], oi[n][1]) for n in oi if ti[n][1] != oi[n][1]}
    assert diff == {"a": ("float32", "bfloat16"), "b": ("float32", "bfloat16"),
                    "A_log": ("unknown", "float32"), "dt_bias": ("unknown", "float32")}
    assert _io(theirs, "outputs", var) == _io(ours, "outputs", var)
    assert theirs["constraints"][-2:] == ours["constraints"][-2:]


# -- any-model corpus: hybrid linear-attention models and heterogeneous layers ---------------------

def _corpus(slug):
    """(config.json path, the hand-written facts) of a corpus model (tests/corpus/<slug>)."""
    import os
    import yaml
    from conftest import ROOT
    folder = os.path.join(ROOT, "tests", "corpus", slug)
    with open(os.path.join(folder, "facts.yaml")) as fh:
        return os.path.join(folder, "config.json"), yaml.safe_load(fh)


def _compile(tmp, model, specs, tp):
    """({name: definition}, findings) without writing."""
    from defc.compiler.pipeline import CompileOptions, compile_model
    res = compile_model(CompileOptions(model=str(model), specs=list(specs), tp=list(tp), out=str(tmp / "ds")))
    return {p.doc["name"]: p.doc for p in res.planned}, res.findings


def _variant(tmp, slug, name, **text_config):
    """A corpus Qwen3.5 config with text_config fields replaced; its path."""
    import json
    cfg, _ = _corpus(slug)
    with open(cfg) as fh:
        c = json.load(fh)
    c["text_config"].update(text_config)
    p = tmp / f"{name}.json"
    p.write_text(json.dumps(c))
    return p


@pytest.mark.parametrize("slug", ["qwen3.5-27b", "qwen3.5-35b-a3b"])
def test_corpus_qwen35_gdn_and_full_attention_per_tp(slug, tmp_path):
    """Qwen3.5 (Qwen3-Next's layers, text_config wrapper): GDN key heads linear_num_key_heads / tp and
    value heads linear_num_value_heads / tp, head 128; its full_attention layers are softmax GQA."""
    cfg, facts = _corpus(slug)
    lin, att = facts["linear_attention"], facts["attention"]
    assert lin["kind"] == "gdn" and lin["key_head_dim"] == lin["value_head_dim"]
    for tp in facts["tp"]:
        docs, found = _compile(tmp_path / str(tp), cfg, ["gdn", "gqa_paged"], [tp])
        q, v, d = lin["num_key_heads"] // tp, lin["num_value_heads"] // tp, lin["key_head_dim"]
        gdn = {n for n, doc in docs.items() if doc["op_type"] == "gdn"}
        assert gdn == {f"gdn_{s}_qk{q}_v{v}_d{d}_k_last" for s in ("decode", "mtp", "prefill")}, (slug, tp)
        for n in gdn:
            assert {"num_q_heads": q, "num_k_heads": q, "num_v_heads": v, "head_size": d}.items() <= \
                const_axes(docs[n]).items()
            assert docs[n]["inputs"]["A_log"]["shape"] == ["num_v_heads"]
            assert "status:verified" in docs[n]["tags"]
        kv = max(1, att["num_kv_heads"] // tp)
        assert f"gqa_paged_decode_h{att['num_attention_heads'] // tp}_kv{kv}_d{att['head_dim']}_ps1" in docs
        # mamba_ssm_dtype float32 is the state the definitions describe: no finding about it
        assert not any(f.subject == "mamba_ssm_dtype" for f in found)


def test_qwen35_variants(tmp_path):
    """Which layers exist follows full_attention_interval / layer_types; differing key and value
    heads and a non-float32 state are reported, never silently dropped or mislabelled."""
    slug = "qwen3.5-27b"
    n = 64
    # every layer full attention: no GDN
    p = _variant(tmp_path, slug, "full", full_attention_interval=1, layer_types=["full_attention"] * n)
    docs, _ = _compile(tmp_path / "a", p, ["gdn", "gqa_paged"], [1])
    assert docs and all(d["op_type"] == "gqa_paged" for d in docs.values())
    # every layer linear: no softmax attention
    p = _variant(tmp_path, slug, "lin", full_attention_interval=n + 1, layer_types=["linear_attention"] * n)
    docs, _ = _compile(tmp_path / "b", p, ["gdn", "gqa_paged", "gqa_ragged", "cascade", "page"], [1])
    assert docs and all(d["op_type"] == "gdn" for d in docs.values())
    # key head != value head: a gap naming both fields
    p = _variant(tmp_path, slug, "kv", linear_value_head_dim=256)
    docs, found = _compile(tmp_path / "c", p, ["gdn"], [1])
    assert docs == {}
    gaps = [f for f in found if f.kind == "gap"]
    assert len(gaps) == 1 and gaps[0].subject == "gdn"
    assert "linear_key_head_dim" in gaps[0].message and "linear_value_head_dim" in gaps[0].message
    assert "(128, linear_key_head_dim)" in gaps[0].message and "(256, linear_value_head_dim)" in gaps[0].message
    # a bf16 recurrent state: warned, and the float32-state definitions are not verified
    p = _variant(tmp_path, slug, "bf16", mamba_ssm_dtype="bfloat16")
    docs, found = _compile(tmp_path / "d", p, ["gdn"], [1])
    hit = [f for f in found if f.subject == "mamba_ssm_dtype"]
    assert [f.kind for f in hit] == ["unmodelled"] and set(hit[0].definitions) == set(docs)
    assert all(d["inputs"]["state" if "state" in d["inputs"] else "initial_state"]["dtype"] == "float32"
               for d in docs.values())


def test_corpus_kimi_linear_layers(tmp_path):
    """Kimi-Linear: its full-attention layers are MLA (no softmax GQA family), its KDA layers have no
    family: an unmodelled finding naming linear_attn_config, not silence; no GDN / Mamba kernels."""
    cfg, facts = _corpus("kimi-linear-48b-a3b")
    assert facts["linear_attention"]["kind"] == "kda"
    docs, found = _compile(tmp_path, cfg, ["gdn", "mamba_ssu", "gqa_paged", "gqa_ragged", "cascade", "page",
                                          "mla_paged", "mla_ragged"], [1])
    assert {d["op_type"] for d in docs.values()} == {"mla_paged", "mla_ragged"}
    kda = [f for f in found if f.subject == "linear_attn_config"]
    assert [f.kind for f in kda] == ["unmodelled"]
    assert "KDA" in kda[0].message and "linear_attn_config.kda_layers" in kda[0].message


def test_corpus_decilm_heterogeneous_layers(tmp_path):
    """Llama-3.3-Nemotron-Super (DeciLM block_configs): KV heads 64 // n_heads_in_group 8 = 8 from
    the per-layer config (not the multi-head guess a null num_key_value_heads would give), marked
    assumed and unverified; the per-layer MLP widths cannot be derived, so the MLP GEMMs and
    activations are gaps, and block_configs is reported with what varies by layer."""
    cfg, facts = _corpus("llama-3.3-nemotron-super-49b")
    att = facts["attention"]
    for tp in (1, 8):
        docs, found = _compile(tmp_path / str(tp), cfg, ["gqa_paged", "gemm", "activation"], [tp])
        h, kv = att["num_attention_heads"] // tp, max(1, att["num_kv_heads"] // tp)
        assert {n for n in docs if n.startswith("gqa_paged_decode")} == {
            f"gqa_paged_decode_h{h}_kv{kv}_d{att['head_dim']}_ps{p}" for p in (1, 64)}
        for d in docs.values():
            assert "status:unverified" in d["tags"] and "status:verified" not in d["tags"], d["name"]
        by = {(f.kind, f.subject): f for f in found}
        assert "block_configs" in by[("assumed", "num_kv_heads_total")].message
        msg = by[("unmodelled", "block_configs")].message
        for words in ("attention.no_op", "n_heads_in_group", "ffn_mult"):
            assert words in msg
        assert {f.subject for f in found if f.kind == "gap"} >= {"gemm", "activation"}
    # a config whose layer 0 has no attention: no KV-head guess at all, a gap instead
    import json
    with open(cfg) as fh:
        c = json.load(fh)
    c["block_configs"][0]["attention"].update(no_op=True, n_heads_in_group=None)
    p = tmp_path / "noattn0.json"
    p.write_text(json.dumps(c))
    docs, found = _compile(tmp_path / "x", p, ["gqa_paged"], [1])
    assert docs == {} and [f.subject for f in found if f.kind == "gap"] == ["gqa_paged"]
