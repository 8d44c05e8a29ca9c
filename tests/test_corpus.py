"""Models nobody onboarded: real config.json files outside the catalogue (tests/corpus/), each
compiled and checked against facts written by hand from the model's config and its SGLang
implementation (tests/corpus/<slug>/facts.yaml, never defc's output).

A model either compiles right, or defc says what it cannot model.  For every model this test
works out, from the hand facts, what its definitions must be (attention heads per TP rank, head
dim, windows, soft cap, sinks; MLA dims; norm kind; q/k norms; MLP kind and width; rotary dim and
style; MoE sizes and routing) and lists each difference from what defc emitted.  Each
difference must be one that LIMITS below names for that model — and then defc must have reported
it (a gap or warning whose subject LIMITS gives) and left every definition it concerns without
status:verified.  Anything else is a model compiled silently wrong, and fails.
"""
import glob
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pytest
import yaml

from defc.compiler import pipeline as P

CORPUS = os.path.join(os.path.dirname(__file__), "corpus")
SLUGS = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(CORPUS, "*", "facts.yaml")))

# What defc knowingly cannot model, per model: area -> the subject (config key, fact or family)
# of the finding defc must report for it.  Written from the hand facts' `unsupported` lists and
# the families FlashInfer has no kernel for.
LIMITS: Dict[str, Dict[str, str]] = {
    # DeciLM: FFN width varies by layer (block_configs[i].ffn.ffn_mult); the config's
    # intermediate_size is null, so the dense-MLP families are gaps and block_configs is reported
    "llama-3.3-nemotron-super-49b": {"mlp": "block_configs"},
    # softmax group-limited routing (n_group 8, topk_group 3, no correction bias): not one of the
    # routing methods FlashInfer's MoE kernels compute -> an moe gap
    "deepseek-v2": {"moe": "moe"},
    # relu2 (non-gated) experts: the MoE definitions describe SwiGLU experts -> an moe gap
    "nemotron-3-nano-30b-a3b": {"moe": "moe"},
    # INT4 (compressed-tensors, 4-bit int groups of 32) routed experts: no MoE definition -> a gap
    "kimi-k2.5": {"moe": "moe"},
}


@dataclass
class Difference:
    area: str
    text: str
    definitions: List[str] = field(default_factory=list)


def facts_of(slug):
    with open(os.path.join(CORPUS, slug, "facts.yaml"), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def compiled(slug, tps):
    opts = P.CompileOptions(model=os.path.join(CORPUS, slug, "config.json"), tp=list(tps),
                            out="/nonexistent-defc-corpus-out")
    return P.compile_model(opts)


def const(doc, axis) -> Optional[int]:
    a = doc["axes"].get(axis)
    return a["value"] if a and a.get("type") == "const" else None


def ref_const(doc, name) -> Optional[float]:
    m = re.search(rf"^{name} = (-?[\d.e+-]+)$", doc["reference"], re.M)
    return float(m.group(1)) if m else None


def of_op(docs, op_type, prefix=""):
    return [d for d in docs if d["op_type"] == op_type and d["name"].startswith(prefix)]


def tp_of(doc) -> Optional[int]:
    for t in doc["tags"]:
        if t.startswith("tp:"):
            return int(t[3:])
    return None


ACT_KERNEL = {"silu": "silu_and_mul", "gelu_tanh": "gelu_tanh_and_mul", "gelu": "gelu_and_mul"}
NORM_PREFIX = {"rmsnorm": "rmsnorm", "gemma_rmsnorm": "gemma_rmsnorm", "layernorm": "layernorm"}


def differences(facts, docs) -> List[Difference]:
    out: List[Difference] = []
    tps = facts["tp"]
    att = facts.get("attention") or {}
    kind = att.get("kind")
    gqa = of_op(docs, "gqa_paged", "gqa_paged_decode")

    # -- softmax attention: heads per rank, head dim, windows, soft cap, sinks
    if kind == "gqa":
        kinds = att.get("per_layer_kind") or {}
        layers = att.get("layers") or {}
        want_windows = set()
        if layers.get("full", 0) > 0:
            want_windows.add(-1)
        if att.get("sliding_window") is not None and layers.get("sliding", 0) > 0:
            want_windows.add(att["sliding_window"])
        for tp in tps:
            shapes = set()
            for name in ("full", "sliding"):
                k = kinds.get(name) or {}
                if layers.get(name, 0) <= 0:
                    continue
                h = k.get("num_attention_heads", k.get("num_heads", att["num_attention_heads"]))
                kv = k.get("num_kv_heads", att["num_kv_heads"])
                d = k.get("head_dim", att["head_dim"])
                shapes.add((h // tp, max(1, kv // tp), d))
            got = {(const(x, "num_qo_heads"), const(x, "num_kv_heads"), const(x, "head_dim"))
                   for x in gqa if tp_of(x) == tp}
            if shapes - got:
                out.append(Difference("attention.heads", f"tp{tp}: want {sorted(shapes)}, got {sorted(got)}",
                                      [x["name"] for x in gqa if tp_of(x) == tp]))
        windows = {int(ref_const(x, "WINDOW_LEFT")) for x in gqa if ref_const(x, "WINDOW_LEFT") is not None}
        if windows != want_windows:
            out.append(Difference("attention.window", f"want window_left {sorted(want_windows)}, got {sorted(windows)}",
                                  [x["name"] for x in gqa]))
        cap = att.get("logits_soft_cap")
        capped = {x["name"] for x in gqa if ref_const(x, "LOGITS_SOFT_CAP") not in (None, 0.0)}
        if cap and capped != {x["name"] for x in gqa}:
            out.append(Difference("attention.soft_cap", f"soft cap {cap} missing", sorted({x["name"] for x in gqa} - capped)))
        if not cap and capped:
            out.append(Difference("attention.soft_cap", "soft cap where the model has none", sorted(capped)))
        sinks = {x["name"] for x in gqa if "sinks" in x["inputs"]}
        if bool(att.get("sinks")) != bool(sinks):
            out.append(Difference("attention.sinks", f"sinks {att.get('sinks')}, got {sorted(sinks)}",
                                  [x["name"] for x in gqa]))
    elif gqa:
        out.append(Difference("attention.kind", f"{kind} attention, but gqa definitions", [x["name"] for x in gqa]))

    # -- multi-head latent attention
    mla = facts.get("mla")
    mla_docs = of_op(docs, "mla_paged", "mla_paged_decode")
    if kind == "mla" and mla:
        for tp in tps:
            want = (att["num_attention_heads"] // tp, mla["kv_lora_rank"], mla["qk_rope_head_dim"])
            got = {(const(x, "num_qo_heads"), const(x, "head_dim_ckv"), const(x, "head_dim_kpe"))
                   for x in mla_docs if tp_of(x) == tp}
            if want not in got:
                out.append(Difference("mla", f"tp{tp}: want {want}, got {sorted(got)}", [x["name"] for x in mla_docs]))
    elif mla_docs:
        out.append(Difference("mla", "MLA definitions for a model without MLA", [x["name"] for x in mla_docs]))

    # -- norms of the hidden state, and q/k norms
    norm = facts.get("norm") or {}
    names = {d["name"]: d for d in docs}
    prefix = NORM_PREFIX.get(norm.get("kind"))
    hidden = norm.get("hidden")
    if prefix is None:
        out.append(Difference("norm", f"norm kind {norm.get('kind')} has no definition family", []))
    elif f"{prefix}_h{hidden}" not in names:
        wrong = [n for n in names if re.fullmatch(rf"(gemma_)?(fused_add_)?(rms|layer)norm_h{hidden}", n)]
        out.append(Difference("norm", f"want {prefix}_h{hidden}, got {wrong}", wrong))
    else:
        wrong = [n for n in names if re.fullmatch(rf"(gemma_)?(fused_add_)?(rms|layer)norm_h{hidden}", n)
                 and not n.replace("fused_add_", "").startswith(prefix + "_h")]
        wrong = [n for n in wrong if not (prefix == "gemma_rmsnorm" and n.startswith("gemma_"))]
        if wrong:
            out.append(Difference("norm", f"{prefix} model with {wrong}", wrong))
    qk = att.get("qk_norm", "none")
    hd = att.get("head_dim")
    if qk == "per_head" and prefix and f"{prefix}_h{hd}" not in names:
        out.append(Difference("qk_norm", f"want {prefix}_h{hd}", []))
    if qk == "full":       # over all heads' width (gathered across TP ranks), one norm for q and one for k
        for width in (att["num_attention_heads"] * hd, att["num_kv_heads"] * hd):
            if prefix and f"{prefix}_h{width}" not in names:
                out.append(Difference("qk_norm", f"want {prefix}_h{width} (full-width q/k norm)", []))

    # -- the dense MLP's activation
    mlp = facts.get("mlp") or {}
    inter = mlp.get("intermediate")
    acts = of_op(docs, "activation")
    if mlp.get("kind") == "gated" and isinstance(inter, int):
        kernel = ACT_KERNEL.get(mlp.get("act"))
        for tp in tps:
            if inter % tp == 0 and f"{kernel}_h{2 * inter // tp}" not in names:
                out.append(Difference("mlp", f"tp{tp}: want {kernel}_h{2 * inter // tp}",
                                      [x["name"] for x in acts]))
    elif mlp.get("kind") == "non_gated" and isinstance(inter, int):
        wrong = [x["name"] for x in acts if any(x["name"].endswith(f"_h{2 * inter // tp}") for tp in tps)]
        if wrong:
            out.append(Difference("mlp", f"gated activation for a non-gated MLP: {wrong}", wrong))
    elif mlp.get("kind") == "gated":
        out.append(Difference("mlp", f"per-layer MLP widths ({inter})", [x["name"] for x in acts]))

    # -- rotary embedding
    rope = facts.get("rope") or {}
    ropes = of_op(docs, "rope")
    rd = rope.get("rotary_dim") or 0
    if rd and rope.get("style"):
        ok = [x for x in ropes if const(x, "rotary_dim") == rd and f"_{rope['style']}_style_" in x["name"]]
        if not ok:
            out.append(Difference("rope", f"want rotary_dim {rd} {rope['style']}, got {[x['name'] for x in ropes]}",
                                  [x["name"] for x in ropes]))
    elif ropes:
        out.append(Difference("rope", "rope definitions for a model without RoPE", [x["name"] for x in ropes]))

    # -- mixture of experts
    moe = facts.get("moe")
    moes = of_op(docs, "moe")
    if moe:
        if not moes:
            out.append(Difference("moe", "no MoE definitions", []))
        else:
            ks = {int(m.group(1)) for x in moes for m in [re.search(r"_topk(\d+)_", x["name"])] if m}
            es = {const(x, "num_experts") for x in moes} - {None}
            if ks != {moe["top_k"]} or (es and es != {moe["num_experts"]}):
                out.append(Difference("moe", f"top_k {ks} / experts {es}, want {moe['top_k']} / {moe['num_experts']}",
                                      [x["name"] for x in moes]))
            ds = [x["name"] for x in moes if "ds_routing" in x["name"]]
            if moe.get("scoring") == "softmax" and ds:
                out.append(Difference("moe.routing", "DeepSeek (sigmoid) routing for a softmax router", ds))
    elif moes:
        out.append(Difference("moe", "MoE definitions for a dense model", [x["name"] for x in moes]))
    return out


@pytest.mark.parametrize("slug", SLUGS)
def test_corpus_model_compiles_right_or_says_what_it_cannot_model(slug):
    facts = facts_of(slug)
    result = compiled(slug, facts["tp"])
    docs = [p.doc for p in result.planned]
    diffs = differences(facts, docs)
    limits = LIMITS.get(slug, {})
    unexplained = [d for d in diffs if d.area not in limits]
    assert not unexplained, f"{slug} compiled silently wrong:\n" + "\n".join(f"  {d.area}: {d.text}" for d in unexplained)
    status = {d["name"]: [t for t in d["tags"] if t.startswith("status:")] for d in docs}
    for d in diffs:
        subject = limits[d.area]
        said = [f for f in result.findings if f.subject == subject]
        assert said, f"{slug}: {d.area} differs ({d.text}) but defc reported nothing about '{subject}'"
        verified = [n for n in d.definitions if status.get(n) == ["status:verified"]]
        assert not verified, f"{slug}: {d.area} differs ({d.text}) yet these are status:verified: {verified}"
    stale = sorted(set(limits) - {d.area for d in diffs})
    assert not stale, f"{slug}: LIMITS lists {stale}, which defc now gets right: remove them"


def test_corpus_is_large_and_covers_every_feature():
    assert len(SLUGS) >= 20
    features = set()
    for slug in SLUGS:
        f = facts_of(slug)
        features |= set(f.get("features") or [])
        assert f["source"]["repo"] and re.fullmatch(r"[0-9a-f]{40}", str(f["source"]["commit"])), slug
    for want in ["uniform_sliding_window", "alternating_sliding_window", "logit_softcap", "gemma_norm", "layernorm",
                 "non_gated_mlp", "mla_no_q_lora", "softmax_grouped_moe", "shared_experts", "hybrid_linear_attention",
                 "gated_attention_output", "nested_partial_rotary", "heterogeneous_layers", "null_field", "list_field",
                 "wrapper_config"]:
        assert want in features, want


@pytest.mark.parametrize("slug", ["gemma-2-9b", "phi-2", "starcoder2-15b"])
def test_an_architecture_defc_does_not_know_is_never_compiled_silently_wrong(slug, tmp_path):
    """The same config under an architecture name the table has no row for: what the row would
    have said (norm kind, MLP kind, q/k norms, sliding layout) is assumed, and every difference
    from the hand facts falls on definitions that defc reports and leaves without status:verified."""
    import json
    with open(os.path.join(CORPUS, slug, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    config["architectures"] = ["SomeNewModelForCausalLM"]
    path = tmp_path / slug / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    facts = facts_of(slug)
    result = P.compile_model(P.CompileOptions(model=str(path), tp=list(facts["tp"]), out=str(tmp_path / "o")))
    docs = [p.doc for p in result.planned]
    assumed = {f.subject for f in result.findings if f.kind == "assumed"}
    assert "norm_kind" in assumed                # (Starcoder2's MLP kind comes from its mlp_type key)
    assert "mlp_kind" in assumed or "mlp_type" in config
    status = {d["name"]: [t for t in d["tags"] if t.startswith("status:")] for d in docs}
    diffs = differences(facts, docs)
    assert diffs, f"{slug}: the assumptions happen to be right; pick a model they get wrong"
    for d in diffs:
        verified = [n for n in d.definitions if status.get(n) == ["status:verified"]]
        assert not verified, f"{slug}: {d.area} differs ({d.text}) yet these are status:verified: {verified}"
    # what the assumptions reach is exactly what is unverified: norms (and MLP / q/k norm users)
    unverified = {n for n, s in status.items() if s == ["status:unverified"]}
    assert any(n.startswith(("rmsnorm_", "fused_add_rmsnorm_")) for n in unverified)
