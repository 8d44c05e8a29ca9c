"""mamba_ssu family (Nemotron-H's Mamba2 decode step): names per TP, the FlashInfer support gate,
the reference against FlashInfer's single-head template reference applied head by head and against
an independent float64 loop, and the dumper's documented mislabelling of the 4-D tensors."""
import json

import pytest
import torch

from conftest import compile_defs, load_reference
from fi_oracle import const_axes, fi_trace, flashinfer, meta

MODEL = "nemotron-h-8b"
API = "flashinfer.mamba.selective_state_update.selective_state_update"


@pytest.fixture(scope="module")
def nemotron(tmp_path_factory):
    return compile_defs(tmp_path_factory.mktemp("mamba"), MODEL, specs=["mamba_ssu"], tp=[1, 2, 8])


def test_names_per_tp(nemotron):
    assert set(nemotron) == {"mamba_ssu_decode_h128_d64_s128_ng8", "mamba_ssu_decode_h64_d64_s128_ng4",
                             "mamba_ssu_decode_h16_d64_s128_ng1"}
    d = nemotron["mamba_ssu_decode_h64_d64_s128_ng4"]
    assert const_axes(d) == {"nheads": 64, "head_dim": 64, "dstate": 128, "ngroups": 4}
    assert [a for a, v in d["axes"].items() if v["type"] == "var"] == ["batch_size", "state_cache_size"]
    assert list(d["inputs"]) == ["state", "x", "dt", "A", "B", "C", "D", "dt_bias", "state_batch_indices"]
    assert {k: (v["shape"], v["dtype"]) for k, v in d["inputs"].items()} == {
        "state": (["state_cache_size", "nheads", "head_dim", "dstate"], "bfloat16"),
        "x": (["batch_size", "nheads", "head_dim"], "bfloat16"),
        "dt": (["batch_size", "nheads", "head_dim"], "bfloat16"),
        "A": (["nheads", "head_dim", "dstate"], "float32"),
        "B": (["batch_size", "ngroups", "dstate"], "bfloat16"),
        "C": (["batch_size", "ngroups", "dstate"], "bfloat16"),
        "D": (["nheads", "head_dim"], "bfloat16"),
        "dt_bias": (["nheads", "head_dim"], "bfloat16"),
        "state_batch_indices": (["batch_size"], "int32")}
    assert list(d["outputs"]) == ["output", "new_state"]
    assert {"status:verified", "fi_api:flashinfer.mamba.selective_state_update", f"model:{MODEL}",
            "stage:decode", "tp:2"} == set(d["tags"])
    assert nemotron["mamba_ssu_decode_h128_d64_s128_ng8"]["axes"]["nheads"]["description"] == "Mamba heads per rank (128/1=128)."


def test_only_mamba_models(tmp_path):
    for model in ("llama-3.1-8b", "qwen3-next-80b-a3b"):
        assert compile_defs(tmp_path / model, model, specs=["mamba_ssu"]) == {}


def test_unsupported_shape_is_unverified(tmp_path):
    """head_dim 96 is outside FlashInfer's {64, 128, 256}: same definition, no fi_api."""
    from defc.compiler.models import load_catalogue_entry
    cfg = dict(load_catalogue_entry(MODEL).config, mamba_head_dim=96)
    path = tmp_path / "cfg"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(cfg))
    docs = compile_defs(tmp_path / "out", str(path), specs=["mamba_ssu"])
    assert set(docs) == {"mamba_ssu_decode_h128_d96_s128_ng8"}
    tags = docs["mamba_ssu_decode_h128_d96_s128_ng8"]["tags"]
    assert "status:unverified" in tags and not any(t.startswith("fi_api:") for t in tags)


def test_every_file_is_a_definition(nemotron):
    from flashinfer_bench.data import Definition
    for doc in nemotron.values():
        d = Definition.model_validate(doc)
        assert d.op_type == "mamba_ssu"


# -- reference ---------------------------------------------------------------------------------

def _inputs(batch, cache, H, P, N, G, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)
    return dict(
        state=(r(cache, H, P, N) * 0.5).to(torch.bfloat16),
        x=r(batch, H, P).to(torch.bfloat16),
        dt=(r(batch, H, P) * 0.5).to(torch.bfloat16),
        A=-torch.rand(H, P, N, generator=g) - 0.5,
        B=r(batch, G, N).to(torch.bfloat16),
        C=r(batch, G, N).to(torch.bfloat16),
        D=r(H, P).to(torch.bfloat16),
        dt_bias=(r(H, P) * 0.5).to(torch.bfloat16))


def _float64_loop(inp, slots, H, G):
    """Independent per (row, head) float64 recurrence."""
    out = torch.zeros(inp["x"].shape, dtype=torch.float64)
    state = inp["state"].double().clone()
    for row, slot in enumerate(slots):
        if slot < 0:
            continue
        for h in range(H):
            grp = h // (H // G)
            dt = torch.nn.functional.softplus(inp["dt"][row, h].double() + inp["dt_bias"][h].double())   # [P]
            s = state[slot, h] * torch.exp(dt[:, None] * inp["A"][h].double())
            s = s + (dt * inp["x"][row, h].double())[:, None] * inp["B"][row, grp].double()[None, :]
            out[row, h] = s @ inp["C"][row, grp].double() + inp["D"][h].double() * inp["x"][row, h].double()
            state[slot, h] = s
    return out, state


def test_reference_against_flashinfer_single_head_and_float64(nemotron):
    flashinfer()
    from flashinfer.trace.templates.mamba import selective_state_update_trace
    fi_ref = selective_state_update_trace.reference
    d = nemotron["mamba_ssu_decode_h16_d64_s128_ng1"]
    run = load_reference(d)
    H, P, N, G = 16, 64, 128, 1
    inp = _inputs(batch=4, cache=7, H=H, P=P, N=N, G=G)
    slots = [5, -1, 0, 3]
    idx = torch.tensor(slots, dtype=torch.int32)
    before = inp["state"].clone()
    out, new_state = run(**inp, state_batch_indices=idx)
    assert torch.equal(inp["state"], before)            # the input cache is not modified
    assert out.dtype == torch.bfloat16 and out.shape == (4, H, P)
    assert new_state.dtype == torch.bfloat16 and new_state.shape == (7, H, P, N)

    # FlashInfer's template reference is single-head 3-D: call it once per head on the live rows
    live = [i for i, s in enumerate(slots) if s >= 0]
    for h in range(H):
        st = inp["state"][[slots[i] for i in live], h].clone()            # [n, P, N]
        y = fi_ref(st, inp["x"][live, h], inp["dt"][live, h], inp["A"][h], inp["B"][live, h // (H // G)],
                   inp["C"][live, h // (H // G)], inp["D"][h], dt_bias=inp["dt_bias"][h], dt_softplus=True)
        torch.testing.assert_close(out[live, h].float(), y.float(), atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(new_state[[slots[i] for i in live], h].float(), st.float(), atol=2e-2, rtol=2e-2)

    want_out, want_state = _float64_loop(inp, slots, H, G)
    torch.testing.assert_close(out.float(), want_out.float(), atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(new_state.float(), want_state.float(), atol=3e-2, rtol=2e-2)
    assert torch.equal(out[1], torch.zeros_like(out[1]))               # padding row
    for untouched in (1, 2, 4, 6):
        assert torch.equal(new_state[untouched], inp["state"][untouched])
    with pytest.raises(AssertionError):
        run(**dict(inp, B=inp["B"].repeat(1, 2, 1)), state_batch_indices=idx)   # ngroups 2 != 1


def test_grouped_heads(nemotron):
    """ng4: heads 0-15 read group 0's B/C, heads 16-31 group 1's, ..."""
    run = load_reference(nemotron["mamba_ssu_decode_h64_d64_s128_ng4"])
    H, G = 64, 4
    inp = _inputs(batch=2, cache=3, H=H, P=64, N=128, G=G, seed=1)
    slots = [2, 0]
    out, new_state = run(**inp, state_batch_indices=torch.tensor(slots, dtype=torch.int32))
    want_out, want_state = _float64_loop(inp, slots, H, G)
    torch.testing.assert_close(out.float(), want_out.float(), atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(new_state.float(), want_state.float(), atol=3e-2, rtol=2e-2)


# -- the dumper ----------------------------------------------------------------------------------

def test_dumper_mislabels_multi_head_tensors(nemotron):
    ours = nemotron["mamba_ssu_decode_h64_d64_s128_ng4"]
    B, cache = 4, 16
    four_d = dict(state=meta((cache, 64, 64, 128), "bfloat16"), x=meta((B, 64, 64), "bfloat16"),
                  dt=meta((B, 64, 64), "bfloat16"), A=meta((64, 64, 128), "float32"),
                  B=meta((B, 4, 128), "bfloat16"), C=meta((B, 4, 128), "bfloat16"),
                  D=meta((64, 64), "bfloat16"), dt_bias=meta((64, 64), "bfloat16"),
                  state_batch_indices=meta((B,), "int32"))
    theirs = fi_trace(API, **four_d)
    # documented alias: dim <- nheads (64), dstate <- head_dim (64), not 128
    assert theirs["name"] == "selective_state_update_d64_s64" == f"selective_state_update_d{64}_s{64}"
    assert const_axes(theirs) == {"dim": ours["axes"]["nheads"]["value"], "dstate": ours["axes"]["head_dim"]["value"]}
    assert theirs["op_type"] == "mamba"
    assert "state_batch_indices" not in theirs["inputs"] and {"z", "dt_softplus"} <= set(theirs["inputs"])
    assert list(theirs["outputs"]) == ["out"]
    # one head's slice is what the template describes: then dim/dstate are head_dim/dstate
    one_head = fi_trace(API, state=meta((B, 64, 128), "bfloat16"), x=meta((B, 64), "bfloat16"),
                        dt=meta((B, 64), "bfloat16"), A=meta((64, 128), "float32"), B=meta((B, 128), "bfloat16"),
                        C=meta((B, 128), "bfloat16"), D=meta((64,), "bfloat16"), dt_bias=meta((64,), "bfloat16"))
    assert const_axes(one_head) == {"dim": ours["axes"]["head_dim"]["value"], "dstate": ours["axes"]["dstate"]["value"]}
    for k in ("state", "x", "dt", "A", "B", "C", "D", "dt_bias"):
        assert one_head["inputs"][k]["dtype"] == ours["inputs"][k]["dtype"], k
    assert one_head["outputs"]["out"]["dtype"] == ours["outputs"]["output"]["dtype"]


# -- any-model corpus ---------------------------------------------------------------------------------

def test_corpus_nemotron3_nano_per_tp(tmp_path):
    """Nemotron-3-Nano (hybrid_override_pattern M / * / E): Mamba2 heads mamba_num_heads / tp, groups
    n_groups / tp, head 64, state 128 (tests/corpus facts, from SGLang's MambaMixer2)."""
    import os
    import yaml
    from conftest import ROOT
    folder = os.path.join(ROOT, "tests", "corpus", "nemotron-3-nano-30b-a3b")
    with open(os.path.join(folder, "facts.yaml")) as fh:
        facts = yaml.safe_load(fh)
    lin = facts["linear_attention"]
    assert lin["kind"] == "mamba2"
    for tp in facts["tp"]:
        docs = compile_defs(tmp_path / str(tp), os.path.join(folder, "config.json"), specs=["mamba_ssu"], tp=[tp])
        h, g = lin["num_heads"] // tp, lin["n_groups"] // tp
        name = f"mamba_ssu_decode_h{h}_d{lin['head_dim']}_s{lin['ssm_state_size']}_ng{g}"
        assert set(docs) == {name}, tp
        assert const_axes(docs[name]) == {"nheads": h, "head_dim": lin["head_dim"],
                                          "dstate": lin["ssm_state_size"], "ngroups": g}
        assert "status:verified" in docs[name]["tags"]


def test_groups_and_pattern(tmp_path):
    """One B/C group is replicated on every rank (SGLang: n_groups % tp == 0 or n_groups == 1); a
    hybrid_override_pattern without M has no Mamba layer."""
    from defc.compiler.models import load_catalogue_entry
    base = load_catalogue_entry(MODEL).config
    for name, cfg in {"one": dict(base, n_groups=1),
                      "nomamba": dict(base, hybrid_override_pattern=base["hybrid_override_pattern"].replace("M", "-"))}.items():
        path = tmp_path / name
        path.mkdir()
        (path / "config.json").write_text(json.dumps(cfg))
    docs = compile_defs(tmp_path / "o1", str(tmp_path / "one"), specs=["mamba_ssu"], tp=[1, 8])
    assert set(docs) == {"mamba_ssu_decode_h128_d64_s128_ng1", "mamba_ssu_decode_h16_d64_s128_ng1"}
    assert compile_defs(tmp_path / "o2", str(tmp_path / "nomamba"), specs=["mamba_ssu"], tp=[1]) == {}
