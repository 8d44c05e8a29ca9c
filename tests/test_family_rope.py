"""rope family: style and rotary width per model, the reference against independent rotations and
FlashInfer's template reference, and agreement with the dumper's definition."""
import os

import pytest
import torch
import yaml

from conftest import compile_planned, load_reference
from fi_oracle import fi_trace, flashinfer, meta

EXPECTED = {  # model -> the one rope definition it needs
    "llama-3.1-8b": "rope_with_cos_sin_cache_neox_style_d128_rd128",
    "qwen3-8b": "rope_with_cos_sin_cache_neox_style_d128_rd128",
    "gpt-oss-20b": "rope_with_cos_sin_cache_neox_style_d64_rd64",
    "deepseek-v3": "rope_with_cos_sin_cache_gptj_style_d64_rd64",      # MLA: rope part only, interleaved
    "kimi-k2": "rope_with_cos_sin_cache_gptj_style_d64_rd64",
    "glm-4.6": "rope_with_cos_sin_cache_neox_style_d128_rd64",         # partial_rotary_factor 0.5
    "qwen3-next-80b-a3b": "rope_with_cos_sin_cache_neox_style_d256_rd64",  # partial_rotary_factor 0.25
    "minimax-m2": "rope_with_cos_sin_cache_neox_style_d128_rd64",      # rotary_dim 64
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = {}
    for model in list(EXPECTED) + ["nemotron-h-8b"]:
        docs, insts = compile_planned(tmp_path_factory.mktemp(model), model, ["rope"])
        out[model] = (docs, {n: i.aliases for n, i in insts.items()})
    return out


def test_style_and_rotary_dim_per_model(compiled):
    from flashinfer_bench.data import Definition
    for model, name in EXPECTED.items():
        docs = compiled[model][0]
        assert list(docs) == [name], model
        d = docs[name]
        Definition(**d)
        assert d["op_type"] == "rope"
        assert "fi_api:flashinfer.rope.apply_rope_with_cos_sin_cache" in d["tags"]
        assert {k: v["type"] for k, v in d["axes"].items()} == {
            "num_tokens": "var", "num_qo_heads": "var", "num_kv_heads": "var", "max_seq_len": "var",
            "head_size": "const", "rotary_dim": "const"}
        assert d["inputs"]["cos_sin_cache"] == {"shape": ["max_seq_len", "rotary_dim"], "dtype": "float32",
                                                "description": d["inputs"]["cos_sin_cache"]["description"]}
        assert d["inputs"]["positions"]["dtype"] == "int64"
        assert list(d["outputs"]) == ["q_out", "k_out"]
    # NemotronH's attention has no rotary embedding
    assert compiled["nemotron-h-8b"][0] == {}


def cos_sin_cache(max_pos, rotary_dim, base=10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.cos(), angles.sin()], dim=-1).float()


def neox_rotation(x, cache, pos, rd):
    """HF-style rotate_half on the first rd dims (independent of the reference's code path)."""
    half = rd // 2
    c, s = cache[pos, :half], cache[pos, half:]
    cos = torch.cat([c, c], -1)[:, None, :]
    sin = torch.cat([s, s], -1)[:, None, :]
    xr = x[..., :rd].double()
    rotated = torch.cat([-xr[..., half:], xr[..., :half]], -1)
    return torch.cat([xr * cos + rotated * sin, x[..., rd:].double()], -1)


def gptj_rotation(x, cache, pos, rd):
    """Interleaved pairs as complex numbers times e^{i*theta}."""
    half = rd // 2
    theta = torch.complex(cache[pos, :half].double(), cache[pos, half:].double())[:, None, :]
    xr = torch.view_as_complex(x[..., :rd].double().reshape(*x.shape[:-1], half, 2).contiguous())
    out = torch.view_as_real(xr * theta).reshape(*x.shape[:-1], rd)
    return torch.cat([out, x[..., rd:].double()], -1)


@pytest.mark.parametrize("model", ["llama-3.1-8b", "deepseek-v3", "glm-4.6", "qwen3-next-80b-a3b"])
def test_reference_rotates_like_independent_math_and_flashinfer(compiled, model):
    flashinfer()
    from flashinfer.trace.templates.rope import apply_rope_with_cos_sin_cache_trace
    fi_ref = apply_rope_with_cos_sin_cache_trace.reference
    d = compiled[model][0][EXPECTED[model]]
    run = load_reference(d)
    hd, rd = d["axes"]["head_size"]["value"], d["axes"]["rotary_dim"]["value"]
    neox = "neox" in d["name"]
    g = torch.Generator().manual_seed(7)
    T, H, KV, S = 9, 4, 2, 64
    q = torch.randn(T, H, hd, generator=g).to(torch.bfloat16)
    k = torch.randn(T, KV, hd, generator=g).to(torch.bfloat16)
    cache = cos_sin_cache(S, rd)
    pos = torch.randint(0, S, (T,), generator=g)
    q_out, k_out = run(q, k, cache, pos)
    assert q_out.shape == q.shape and k_out.shape == k.shape and q_out.dtype == torch.bfloat16
    rot = neox_rotation if neox else gptj_rotation
    torch.testing.assert_close(q_out.double(), rot(q, cache, pos, rd), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(k_out.double(), rot(k, cache, pos, rd), atol=2e-2, rtol=2e-2)
    # the pass-through part is untouched, and a rotation keeps the norm of the rotated part
    assert torch.equal(q_out[..., rd:], q[..., rd:])
    torch.testing.assert_close(q_out[..., :rd].float().norm(dim=-1), q[..., :rd].float().norm(dim=-1), atol=0.1, rtol=2e-2)
    # FlashInfer's own template reference (flattened [tokens, heads * head_size], style as a flag)
    fq, fk = fi_ref(pos, q.reshape(T, -1), k.reshape(T, -1), hd, cache, is_neox=neox)
    torch.testing.assert_close(q_out, fq.reshape(q.shape), atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(k_out, fk.reshape(k.shape), atol=1e-2, rtol=1e-2)
    # position 0 is the identity
    zero = torch.zeros(T, dtype=torch.int64)
    q0, _ = run(q, k, cache, zero)
    torch.testing.assert_close(q0, q)
    with pytest.raises(AssertionError):
        run(q[..., :-2], k, cache, pos)


@pytest.mark.parametrize("model", ["llama-3.1-8b", "deepseek-v3", "qwen3-next-80b-a3b"])
def test_agrees_with_flashinfer_dumper(compiled, model):
    docs, aliases = compiled[model]
    name = EXPECTED[model]
    ours = docs[name]
    hd, rd = ours["axes"]["head_size"]["value"], ours["axes"]["rotary_dim"]["value"]
    T, H, KV, S = 5, 8, 2, 4096
    theirs = fi_trace("flashinfer.rope.apply_rope_with_cos_sin_cache",
                      positions=meta((T,), "int64"), query=meta((T, H * hd), "bfloat16"),
                      key=meta((T, KV * hd), "bfloat16"), head_size=hd,
                      cos_sin_cache=meta((S, rd), "float32"), is_neox="neox" in name)
    ca = {k: v.get("value") for k, v in theirs["axes"].items() if v["type"] == "const"}
    # same op, same fixed head size and rotary width; the cache and positions match exactly
    assert theirs["op_type"] == ours["op_type"]
    assert ca["head_size"] == hd and ca["rotary_dim"] == rd
    for t in ("positions", "cos_sin_cache"):
        assert theirs["inputs"][t]["dtype"] == ours["inputs"][t]["dtype"]
    assert theirs["inputs"]["cos_sin_cache"]["shape"] == ours["inputs"]["cos_sin_cache"]["shape"]
    # deliberate differences (spec notes + aliases): the dumper's name has no style / rotary dim,
    # q and k are flattened to [nnz, heads * head_size] with the products as const axes
    assert theirs["name"] == f"rope_cos_sin_cache_d{hd}"
    assert theirs["name"] in [a["name"] for a in aliases[name]]
    assert ca["num_q_heads_x_head_size"] == H * hd and ca["num_k_heads_x_head_size"] == KV * hd
    assert theirs["inputs"]["query"]["dtype"] == ours["inputs"]["q"]["dtype"]
    assert ours["axes"]["num_qo_heads"]["type"] == "var"
    inplace = fi_trace("flashinfer.rope.apply_rope_with_cos_sin_cache_inplace",
                       positions=meta((T,), "int64"), query=meta((T, H * hd), "bfloat16"),
                       key=meta((T, KV * hd), "bfloat16"), head_size=hd,
                       cos_sin_cache=meta((S, rd), "float32"), is_neox="neox" in name)
    assert inplace["name"] in [a["name"] for a in aliases[name]]


def test_zero_rotary_width_is_a_one_line_error(tmp_path):
    import json
    from defc.compiler.errors import DefcError
    from defc.compiler.pipeline import CompileOptions, compile_model
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
           "rotary_dim": 0}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(DefcError) as e:
        compile_model(CompileOptions(config=str(path), specs=["rope"], out=str(tmp_path / "o")))
    msg = str(e.value)
    assert "\n" not in msg and "rope.yaml" in msg and "rotary_dim" in msg


# ---------------------------------------------------------------------------------------------
# corpus models (tests/corpus): rotary width from partial_rotary_factor wherever the config keeps
# it, per layer kind, the style from the architecture, no RoPE where the model applies none;
# expected values from each model's hand-written facts.yaml.

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def corpus_rope(tmp_path_factory, slug):
    from defc.compiler import pipeline as P
    with open(os.path.join(CORPUS, slug, "facts.yaml"), encoding="utf-8") as fh:
        facts = yaml.safe_load(fh)
    res = P.compile_model(P.CompileOptions(model=os.path.join(CORPUS, slug, "config.json"), specs=["rope"], tp=[1],
                                           out=str(tmp_path_factory.mktemp("rope_" + slug.replace(".", "_")))))
    return facts, {p.doc["name"]: p.doc for p in res.planned}, res


@pytest.mark.parametrize("slug", ["phi-2", "glm-4-9b-chat", "qwen3.5-27b", "qwen3.5-35b-a3b", "mistral-7b-v0.1",
                                  "gemma-2-9b", "mimo-v2-flash", "starcoder2-15b", "deepseek-v2-lite"])
def test_corpus_rotary_dim_and_style_are_the_hand_facts(tmp_path_factory, slug):
    facts, docs, _ = corpus_rope(tmp_path_factory, slug)
    rope = facts["rope"]
    head = facts["mla"]["qk_rope_head_dim"] if facts.get("mla") else facts["attention"]["head_dim"]
    assert set(docs) == {f"rope_with_cos_sin_cache_{rope['style']}_style_d{head}_rd{rope['rotary_dim']}"}, slug


def test_laguna_rotary_dim_per_layer_kind(tmp_path_factory):
    """Laguna: rope_parameters.full_attention rotates 64 of 128 dims, sliding_attention all 128."""
    facts, docs, _ = corpus_rope(tmp_path_factory, "laguna-xs.2")
    kinds = facts["attention"]["per_layer_kind"]
    assert set(docs) == {f"rope_with_cos_sin_cache_{facts['rope']['style']}_style_d{k['head_dim']}_rd{k['rotary_dim']}"
                         for k in kinds.values()}
    assert len(docs) == 2


@pytest.mark.parametrize("slug", ["gpt2-large", "nemotron-3-nano-30b-a3b", "kimi-linear-48b-a3b"])
def test_corpus_models_without_rope(tmp_path_factory, slug):
    facts, docs, _ = corpus_rope(tmp_path_factory, slug)
    assert not facts["rope"]["rotary_dim"]
    assert docs == {}


@pytest.mark.parametrize("slug", ["qwen2.5-vl-7b", "qwen3.5-27b"])
def test_mrope_models_get_the_text_kernel_unverified_with_a_warning(tmp_path_factory, slug):
    """SGLang rotates mrope models with its own Triton kernel over 3-row positions; FlashInfer's 1-D
    kernel equals it for text tokens only, so the definition is emitted but reported."""
    facts, docs, res = corpus_rope(tmp_path_factory, slug)
    assert "mrope" in facts["rope"]["variant"]
    assert docs and all("status:verified" not in d["tags"] for d in docs.values())
    assert any(f.subject in ("rope_scaling", "rope_parameters") and f.kind == "unmodelled" for f in res.findings)
