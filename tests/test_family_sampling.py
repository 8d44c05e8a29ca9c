"""sampling family: names per model, filtered distributions against FlashInfer's reference filters,
sample statistics, and agreement with the dumper's definitions."""

import pytest
import torch

from conftest import compile_planned, reference_namespace
from fi_oracle import concrete_shape, const_axes, fi_trace, flashinfer, meta

V = 128256  # Llama-3.1 vocabulary
KINDS = ("top_k", "top_p", "top_k_top_p")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{model: (docs by name, aliases by name)} for a few models, compiled once."""
    out = {}
    for model in ("llama-3.1-8b", "deepseek-v3", "qwen3-30b-a3b"):
        docs, insts = compile_planned(tmp_path_factory.mktemp(model), model, ["sampling"])
        out[model] = (docs, {n: i.aliases for n, i in insts.items()})
    return out


@pytest.fixture(scope="module")
def refs(compiled):
    docs = compiled["llama-3.1-8b"][0]
    return {kind: reference_namespace(docs[f"{kind}_sampling_from_probs_v{V}"]) for kind in KINDS}


def test_names_per_model_and_schema(compiled):
    from flashinfer_bench.data import Definition
    vocab = {"llama-3.1-8b": 128256, "deepseek-v3": 129280, "qwen3-30b-a3b": 151936}
    for model, (docs, _) in compiled.items():
        v = vocab[model]
        assert set(docs) == {f"{kind}_sampling_from_probs_v{v}" for kind in KINDS} | {f"top_k_renorm_probs_v{v}"}
        for name, d in docs.items():
            Definition(**d)
            assert d["op_type"] == "sampling"
            assert f"fi_api:flashinfer.sampling.{name[:-len(f'_v{v}')]}" in d["tags"]
            assert d["axes"]["vocab_size"] == {"type": "const", "value": v,
                                              "description": f"Size of the vocabulary of {model}"}
            assert d["inputs"]["probs"]["dtype"] == "float32"
            if name.startswith("top_k_renorm_probs"):
                assert list(d["inputs"]) == ["probs", "top_k"] and list(d["outputs"]) == ["renormalized"]
                continue
            assert d["outputs"]["samples"]["dtype"] == "int64"
            kind = name[:-len(f"_sampling_from_probs_v{v}")]
            knobs = {"top_k": ["top_k"], "top_p": ["top_p"], "top_k_top_p": ["top_k", "top_p"]}[kind]
            assert list(d["inputs"]) == ["probs"] + knobs
            for knob in knobs:
                assert d["inputs"][knob]["shape"] == ["batch_size"]
                assert d["inputs"][knob]["dtype"] == {"top_k": "int32", "top_p": "float32"}[knob]


def _probs(batch, seed, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(batch, V, generator=g) * scale, dim=-1)


def test_filters_match_flashinfer_reference_filters(refs):
    """Our filtered distributions equal FlashInfer's template references for
    top_k_renorm_probs / top_p_renorm_probs (the filters its samplers draw from)."""
    flashinfer()
    from flashinfer.trace.templates import sampling as fi
    probs = _probs(6, seed=1)
    top_k = torch.tensor([1, 2, 7, 40, 300, 1000], dtype=torch.int32)
    # p halfway between two cumulative masses, so float rounding cannot move the nucleus edge:
    # row i then keeps exactly nucleus[i] tokens
    nucleus = [1, 3, 10, 50, 200, 1000]
    cum = torch.nn.functional.pad(torch.sort(probs, dim=-1, descending=True).values.cumsum(-1), (1, 0))
    top_p = torch.stack([(cum[i, n - 1] + cum[i, n]) / 2 for i, n in enumerate(nucleus)])
    fk = torch.cat([fi.top_k_renorm_probs_trace.reference(probs[i:i + 1], int(top_k[i])) for i in range(6)])
    fp = fi.top_p_renorm_probs_trace.reference(probs, top_p)
    fkp = torch.cat([fi.top_p_renorm_probs_trace.reference(fk[i:i + 1], top_p[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(refs["top_k"]["filtered_probs"](probs, top_k), fk, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(refs["top_p"]["filtered_probs"](probs, top_p), fp, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(refs["top_k_top_p"]["filtered_probs"](probs, top_k, top_p), fkp, atol=1e-6, rtol=1e-5)
    # the filters really cut: k tokens kept, nucleus sizes grow with p
    assert (refs["top_k"]["filtered_probs"](probs, top_k) > 0).sum(-1).tolist() == top_k.tolist()
    assert (fp > 0).sum(-1).tolist() == nucleus
    kept_mass = torch.where(fp > 0, probs, torch.zeros_like(probs)).sum(-1)
    assert bool((kept_mass >= top_p - 1e-5).all())


def test_samples_stay_in_the_filtered_set(refs):
    torch.manual_seed(0)
    probs = _probs(16, seed=2)
    top_k = torch.randint(1, 60, (16,), dtype=torch.int32)
    top_p = torch.rand(16) * 0.9 + 0.05
    cases = {"top_k": (probs, top_k), "top_p": (probs, top_p), "top_k_top_p": (probs, top_k, top_p)}
    for kind, args in cases.items():
        support = refs[kind]["filtered_probs"](*args) > 0
        for _ in range(3):
            s = refs[kind]["run"](*args)
            assert s.dtype == torch.int64 and s.shape == (16,)
            assert bool(support.gather(1, s[:, None]).all()), kind


def test_degenerate_filters_give_argmax(refs):
    probs = _probs(5, seed=3)
    best = probs.argmax(-1)
    ones = torch.ones(5, dtype=torch.int32)
    assert torch.equal(refs["top_k"]["run"](probs, ones), best)
    assert torch.equal(refs["top_p"]["run"](probs, torch.zeros(5)), best)
    assert torch.equal(refs["top_k_top_p"]["run"](probs, ones, torch.full((5,), 0.9)), best)
    assert torch.equal(refs["top_k_top_p"]["run"](probs, torch.full((5,), 50, dtype=torch.int32), torch.zeros(5)), best)


def test_sample_frequencies_follow_the_renormalised_distribution(refs):
    """Four tokens carry 0.4/0.3/0.2/0.1 of the mass: top-k 3 samples them 4:3:2, top-p 0.65
    keeps the first two (0.4 + 0.3 > 0.65) at 4:3."""
    torch.manual_seed(1234)
    n = 600
    row = torch.zeros(V)
    hot = torch.tensor([11, 222, 3333, 44444])
    row[hot] = torch.tensor([0.4, 0.3, 0.2, 0.1])
    probs = row.expand(n, V).contiguous()
    s = refs["top_k"]["run"](probs, torch.full((n,), 3, dtype=torch.int32))
    freq = torch.stack([(s == t).float().mean() for t in hot])
    torch.testing.assert_close(freq, torch.tensor([4 / 9, 3 / 9, 2 / 9, 0.0]), atol=0.07, rtol=0)
    s = refs["top_p"]["run"](probs, torch.full((n,), 0.65))
    freq = torch.stack([(s == t).float().mean() for t in hot])
    torch.testing.assert_close(freq, torch.tensor([4 / 7, 3 / 7, 0.0, 0.0]), atol=0.07, rtol=0)
    s = refs["top_k_top_p"]["run"](probs, torch.full((n,), 3, dtype=torch.int32), torch.full((n,), 0.5))
    # top-k 3 renormalises to 4/9, 3/9, 2/9; the nucleus of 0.5 is then the first two
    freq = torch.stack([(s == t).float().mean() for t in hot])
    torch.testing.assert_close(freq, torch.tensor([4 / 7, 3 / 7, 0.0, 0.0]), atol=0.07, rtol=0)


def test_reference_asserts_the_vocabulary(refs):
    with pytest.raises(AssertionError):
        refs["top_k"]["run"](torch.rand(2, 1000), torch.ones(2, dtype=torch.int32))
    with pytest.raises(AssertionError):
        refs["top_p"]["run"](torch.rand(2, V), torch.ones(3))


@pytest.mark.parametrize("kind", KINDS)
def test_agrees_with_flashinfer_dumper(compiled, kind):
    docs, aliases = compiled["llama-3.1-8b"]
    name = f"{kind}_sampling_from_probs_v{V}"
    ours = docs[name]
    kwargs = {"probs": meta((4, V), "float32")}
    if "top_k" in kind:
        kwargs["top_k"] = meta((4,), "int32")
    if kind.endswith("top_p"):
        kwargs["top_p"] = meta((4,), "float32")
    theirs = fi_trace(f"flashinfer.sampling.{kind}_sampling_from_probs", **kwargs)
    # the one deliberate difference: the dumper drops "_from_probs"; recorded as the alias
    assert theirs["name"] == f"{kind}_sampling_v{V}" != ours["name"]
    assert [a["name"] for a in aliases[name]] == [theirs["name"]]
    assert theirs["op_type"] == ours["op_type"]
    assert const_axes(theirs) == const_axes(ours)
    assert {k: v["type"] for k, v in theirs["axes"].items()} == {k: v["type"] for k, v in ours["axes"].items()}
    assert list(theirs["inputs"]) == list(ours["inputs"])
    for sect in ("inputs", "outputs"):
        for k, t in ours[sect].items():
            assert concrete_shape(theirs, theirs[sect][k], {"batch_size": 4}) == concrete_shape(ours, t, {"batch_size": 4})
            assert theirs[sect][k]["dtype"] == t["dtype"]
    assert f"fi_api:flashinfer.sampling.{kind}_sampling_from_probs" in theirs["tags"]
    assert [t for t in ours["tags"] if t.startswith("fi_api:")] == [t for t in theirs["tags"] if t.startswith("fi_api:")]


def test_missing_vocab_size_is_a_gap_naming_the_field(tmp_path):
    import json
    from defc.compiler.pipeline import CompileOptions, compile_model
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    res = compile_model(CompileOptions(config=str(path), specs=["sampling", "rmsnorm"], out=str(tmp_path / "o")))
    gaps = [f for f in res.findings if f.kind == "gap"]
    assert [f.subject for f in gaps] == ["sampling"]
    assert "needs config field 'vocab_size'" in gaps[0].message and "sampling.yaml" in gaps[0].message
    assert {p.doc["op_type"] for p in res.planned} == {"rmsnorm"}          # the other family still compiles


def test_top_k_renorm_probs_keeps_the_k_largest_and_renormalises(tmp_path):
    from conftest import compile_defs, load_reference
    import torch
    docs = compile_defs(tmp_path, "llama-3.1-8b", specs=["sampling"], tp=[1])
    d = docs["top_k_renorm_probs_v128256"]
    assert d["inputs"]["top_k"]["shape"] == ["batch_size"] and d["outputs"]["renormalized"]["dtype"] == "float32"
    run = load_reference(d)
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 128256, generator=g) * 3, dim=-1)
    top_k = torch.tensor([1, 5, 50], dtype=torch.int32)
    out = run(probs, top_k)
    for row, k in enumerate(top_k.tolist()):
        idx = torch.topk(probs[row], k).indices
        want = torch.zeros_like(probs[row])
        want[idx] = probs[row, idx] / probs[row, idx].sum()
        torch.testing.assert_close(out[row], want)
        assert int((out[row] > 0).sum()) == k
