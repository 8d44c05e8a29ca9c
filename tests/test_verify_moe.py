"""defc verify on CPU for the MoE family: every catalogue model's MoE definitions (at a reduction that
keeps the routing semantics) against FlashInfer's template references, and each named MoE difference
shown to be real (without it the two sides disagree).

The reduction: hidden_size 256, 16 routed experts, per-rank expert intermediate size 128 (the config's
expert intermediate size set to 128 * tp / ep); every routing key (scoring_func, topk_method / bias,
n_group, topk_group, norm_topk_prob, routed_scaling_factor, top_k) and the serving config (tp, ep, so
the EP offset of rank 1) are the model's own.  The full-size run is a documented command whose report
is committed (reports/moe-cpu/README.md)."""
from __future__ import annotations

import copy
import json
import os

import pytest

from conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("flashinfer")

from defc.runners.verify import VerifyOptions, compile_for, verify_model, verify_one  # noqa: E402
from defc.runners.verify_inputs import defaults  # noqa: E402

EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")
# a documented, named reason a row is not compared (tests/test_family_moe.py checks it instead)
NAMED_NOT_RUN = ("template-routed-fp4-plain-ids",)


def reduced_config(model: str, moe_tp: int) -> dict:
    from ruamel.yaml import YAML
    cfg = YAML(typ="safe").load(open(os.path.join(ROOT, "catalogue", "models", f"{model}.yaml")))["config"]
    cfg = copy.deepcopy(cfg)
    text = cfg.get("text_config")
    tgt = text if isinstance(text, dict) and any(k in text for k in EXPERT_KEYS) else cfg
    tgt["hidden_size"] = 256
    for k in EXPERT_KEYS:
        if k in tgt:
            tgt[k] = 16
    tgt["moe_intermediate_size" if "moe_intermediate_size" in tgt else "intermediate_size"] = 128 * moe_tp
    return cfg


def _verify_reduced(tmp_path, model, tp, ep, **kw):
    path = tmp_path / f"{model}.json"
    path.write_text(json.dumps(reduced_config(model, tp // ep)))
    _, results = verify_model(VerifyOptions(model=str(path), tp=[tp], ep=[ep], quantization=["all"],
                                            specs=["moe"], **kw))
    return {r.definition: r for r in results}


# every catalogue MoE model at a serving config of its cookbook (EP > 1 where the cookbook has one)
MODELS = [("deepseek-v3", 8, 8), ("kimi-k2", 8, 4), ("glm-4.6", 8, 8), ("minimax-m2", 4, 4),
          ("mixtral-8x22b", 8, 1), ("qwen3-30b-a3b", 1, 1), ("qwen3-235b-a22b", 8, 2),
          ("qwen3-next-80b-a3b", 2, 1), ("llama-4-scout", 8, 1), ("gpt-oss-20b", 1, 1)]


@pytest.mark.parametrize("model,tp,ep", MODELS)
def test_every_moe_definition_runs_on_cpu(model, tp, ep, tmp_path):
    res = _verify_reduced(tmp_path, model, tp, ep)
    assert res
    for name, r in res.items():
        if r.status == "not-run":
            assert r.why.startswith(NAMED_NOT_RUN), (name, r.why)
            continue
        assert r.status == "pass", (name, r.status, r.why)
        assert r.ran.startswith("template reference"), r.ran
    # the logits-routed bf16 definition is compared through the per-routing FP8 block-scale template
    bf16 = [r for n, r in res.items() if n.startswith("trtllm_bf16_moe")]
    for r in bf16:
        assert "template-default-routing-only" in r.differences
        assert "trtllm_fp8_block_scale_moe" in r.ran or "fp8_block_scale" in r.ran


def _without(inst, *drop):
    inst2 = copy.copy(inst)
    vb = copy.deepcopy(inst.verify)
    for k in drop:
        vb.pop(k, None)
    inst2.verify = vb
    return inst2


def _one(tmp_path, model, tp, ep, prefix, quantization="all"):
    path = tmp_path / f"{model}-one.json"
    path.write_text(json.dumps(reduced_config(model, tp // ep)))
    _, items = compile_for(VerifyOptions(model=str(path), tp=[tp], ep=[ep], quantization=[quantization],
                                         specs=["moe"]))
    found = [(d, i) for d, i in items if d["name"].startswith(prefix)]
    assert len(found) == 1, [d["name"] for d, _ in items]
    return found[0]


def test_difference_template_default_routing_only(tmp_path):
    """FlashInfer's trtllm_bf16_moe template reference routes Default-style whatever routing_method_type
    says: DeepSeek-V3's bf16 MoE at tp8 ep8 (rank 1) disagrees with it, and agrees with FlashInfer's
    DeepSeek-routing FP8 block-scale template reference at unit scales (the comparison defc verify makes)."""
    cfg = defaults()
    doc, inst = _one(tmp_path, "deepseek-v3", 8, 8, "trtllm_bf16_moe")
    r = verify_one(doc, inst, "cpu", cfg)
    assert r.status == "pass" and "template-default-routing-only" in r.differences, r.why
    own = _without(inst, "template", "differences")
    own.verify["template"] = {"args": {"routing_bias": "routing_bias"}}
    r2 = verify_one(doc, own, "cpu", cfg)
    assert r2.status == "fail", (r2.status, r2.why)
    assert "_trtllm_bf16_moe_reference" in r2.ran
    # a Renormalize model disagrees with it too (FlashInfer's template never renormalises)
    doc, inst = _one(tmp_path, "qwen3-30b-a3b", 1, 1, "trtllm_bf16_moe")
    own = _without(inst, "template", "differences")
    own.verify["template"] = {"args": {"routing_bias": {"value": None}}}
    assert verify_one(doc, own, "cpu", cfg).status == "fail"


def test_default_routing_agrees_with_flashinfers_own_bf16_template(tmp_path):
    """Where the routing is Default (softmax, top-k, no renormalisation: Qwen1.5-MoE, DeepSeek-V2-Lite),
    FlashInfer's own trtllm_bf16_moe template reference and the definition agree."""
    cfg_json = json.load(open(os.path.join(ROOT, "tests", "corpus", "qwen1.5-moe-a2.7b", "config.json")))
    cfg_json.update(hidden_size=256, num_experts=16, moe_intermediate_size=128)
    path = tmp_path / "qwen15.json"
    path.write_text(json.dumps(cfg_json))
    _, items = compile_for(VerifyOptions(model=str(path), tp=[1], quantization=["bf16"], specs=["moe"]))
    (doc, inst), = [(d, i) for d, i in items if d["name"].startswith("trtllm_bf16_moe")]
    assert "ROUTING = 'default'" in doc["reference"]
    own = _without(inst, "template", "differences")
    own.verify["template"] = {"args": {"routing_bias": {"value": None}}}
    r = verify_one(doc, own, "cpu", defaults())
    assert r.status == "pass" and "_trtllm_bf16_moe_reference" in r.ran, r.why


def test_difference_template_llama4_weight_on_output(tmp_path):
    """(The FP8 block-scale row carries the difference too; its FP8 tolerance, sized for the kernel's
    re-quantised SwiGLU output, is too loose to tell the two placements apart at these magnitudes.)"""
    cfg = defaults()
    for prefix in ("trtllm_fp8_per_tensor_scale_moe", "trtllm_bf16_moe"):
        doc, inst = _one(tmp_path, "llama-4-scout", 8, 1, prefix)
        r = verify_one(doc, inst, "cpu", cfg)
        assert r.status == "pass" and "template-llama4-weight-on-output" in r.differences, (prefix, r.why)
        # with ordinary logits (weights sigmoid(logit) < 1) the weight's place matters
        inst2 = _without(inst)
        inst2.verify["differences"] = [d for d in inst2.verify["differences"]
                                       if d["name"] != "template-llama4-weight-on-output"]
        inst2.verify.setdefault("inputs", {})["routing_logits"] = {"normal": 1}
        r2 = verify_one(doc, inst2, "cpu", cfg)
        assert r2.status == "fail", (prefix, r2.status, r2.why)


def test_difference_fp4_swiglu_oa_ignored(tmp_path):
    doc, inst = _one(tmp_path, "gpt-oss-20b", 1, 1, "trtllm_fp4_block_scale_moe")
    cfg = defaults()
    r = verify_one(doc, inst, "cpu", cfg)
    assert r.status == "pass" and r.differences == ["template-fp4-swiglu-oa-ignored"], r.why
    inst2 = _without(inst, "differences")
    inst2.verify["inputs"] = {**inst2.verify["inputs"], "gemm1_alpha": {"fill": 1.702}, "gemm1_beta": {"fill": 1.0},
                              "gemm1_clamp_limit": {"fill": 7.0}}
    assert verify_one(doc, inst2, "cpu", cfg).status == "fail"


def test_ep_rank_one_offset_is_exercised(tmp_path):
    """The EP > 1 rows run as rank 1 (local_expert_offset = num_local_experts): a wrong offset disagrees."""
    cfg = defaults()
    doc, inst = _one(tmp_path, "deepseek-v3", 8, 8, "moe_fp8_block_scale_ds_routing")
    assert verify_one(doc, inst, "cpu", cfg).status == "pass"
    inst2 = _without(inst)
    inst2.verify["inputs"] = {**inst2.verify["inputs"], "local_expert_offset": {"value": 0}}
    inst2.verify["template"] = {"args": {"local_expert_offset": {"value": 2}}}   # the template as rank 1
    assert verify_one(doc, inst2, "cpu", cfg).status == "fail"
