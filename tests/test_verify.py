"""defc verify (runners/verify.py) on CPU: every compiled definition's reference against FlashInfer's
template reference (reached through .fi_trace) — the check CI runs — plus the named differences, the
GPU-side call recipes (bound to the API signatures without a GPU) and --backend flashinfer's dump pass.

GPU reports made with --device cuda on an H100 are in reports/gpu/ (docs/gpu.md)."""
from __future__ import annotations

import glob
import json
import os
import re

import pytest

from conftest import ROOT

pytest.importorskip("torch")
pytest.importorskip("flashinfer")

from defc.runners.verify import VerifyOptions, check_block, check_kernel_call, compile_for, verify_model, verify_one  # noqa: E402
from defc.runners.verify_calls import device_copies, kernel_call_args, resolve_arg, tensor_expr  # noqa: E402
from defc.runners.verify_compare import compare, fp4_values  # noqa: E402
from defc.runners.verify_inputs import RecipeError, build_case, defaults, sequence_layout  # noqa: E402
from defc.runners.verify_sides import alternative_for, call_template, run_reference_text, skip_reason  # noqa: E402


def _run(model, **kw):
    opts = VerifyOptions(model=model, **kw)
    _, results = verify_model(opts)
    return {r.definition: r for r in results}


def _bad(results):
    return {n: f"{r.status}: {r.why}" for n, r in results.items() if r.status in ("fail", "error")}


# ---------------------------------------------------------------------------------------------
# the acceptance runs (CLI, with reports)

@pytest.mark.parametrize("model,args,min_pass", [
    ("llama-3.1-8b", [], 17),
    ("deepseek-v3", [], 20),
])
def test_defc_verify_cpu_passes(model, args, min_pass, tmp_path, capsys):
    from defc.cli import main
    rc = main(["verify", "--model", model, "--device", "cpu", "--report", str(tmp_path), "--quiet"] + args)
    out = capsys.readouterr().out
    assert rc == 0, out
    (jp,) = glob.glob(str(tmp_path / f"verify-{model}-*-cpu.json"))
    data = json.load(open(jp))
    assert data["complete"] and data["summary"]["fail"] == 0 and data["summary"]["error"] == 0
    assert data["summary"]["pass"] >= min_pass, data["summary"]
    for r in data["results"]:                     # every not-run says why
        assert r["status"] != "not-run" or r["why"]
        if r["status"] == "pass":
            assert r["ran"].startswith("template reference") and r["outputs"]
    md = open(jp[:-5] + ".md").read()
    assert "| definition | fi_api | other side" in md and "flashinfer" in md and "command: `defc verify" in md
    # the attention, MLA, norm, rope and sampling definitions are among those compared
    passed = {r["definition"] for r in data["results"] if r["status"] == "pass"}
    wanted = ("gqa_paged_decode", "gqa_paged_prefill", "rmsnorm", "rope", "top_k_sampling") if model.startswith("llama") \
        else ("mla_paged_decode", "mla_paged_prefill", "rmsnorm", "gemm_fp8_nt_groupwise_n2112")
    for w in wanted:
        assert any(p.startswith(w) for p in passed), (w, sorted(passed))


def test_tiny_deepseek_moe_and_mla_agree_with_flashinfer_templates(tmp_path):
    """The full-size MoE exceeds the CPU size limit; a DeepSeek-V3-shaped config with small dims
    checks the same spec (DeepSeek routing, FP8 block scales) against FlashInfer's template."""
    from ruamel.yaml import YAML
    cfg = YAML(typ="safe").load(open(os.path.join(ROOT, "catalogue", "models", "deepseek-v3.yaml")))["config"]
    cfg.update(hidden_size=256, moe_intermediate_size=128, n_routed_experts=16, n_group=4, topk_group=2,
               num_experts_per_tok=4, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=64,
               q_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, vocab_size=1000,
               intermediate_size=512, num_hidden_layers=2, first_k_dense_replace=1)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    res = _run(str(path), tp=[1], op_types=["moe", "mla_paged"])
    assert not _bad(res)
    moe = [r for n, r in res.items() if n.startswith("moe_fp8_block_scale_ds_routing")]
    assert moe and all(r.status == "pass" for r in moe)
    assert sum(1 for n, r in res.items() if n.startswith("mla_paged") and r.status == "pass") == 4


# ---------------------------------------------------------------------------------------------
# named differences: each is real (without it the sides disagree) and applied only where it says

def _one(model, name, **kw):
    c, items = compile_for(VerifyOptions(model=model, names=[name], **kw))
    assert items, name
    return items[0]


def _without_template_overrides(inst):
    import copy
    inst2 = copy.copy(inst)
    vb = copy.deepcopy(inst.verify)
    for k in ("sequences", "vars", "inputs"):
        (vb.get("template") or {}).pop(k, None)
    vb.pop("differences", None)
    inst2.verify = vb
    return inst2


def test_difference_template_reads_whole_last_page():
    cfg = defaults()
    for model, name, kw in (("llama-3.1-8b", "gqa_paged_decode_h32_kv8_d128_ps64", {}),
                            ("deepseek-v3", "mla_paged_decode_h16_ckv512_kpe64_ps64", {"tp": [8], "ep": [8]})):
        doc, inst = _one(model, name, **kw)
        r = verify_one(doc, inst, "cpu", cfg)
        assert r.status == "pass" and "template-reads-whole-last-page" in r.differences
        # with partial last pages FlashInfer's template reads the stale slots and disagrees
        r2 = verify_one(doc, _without_template_overrides(inst), "cpu", cfg)
        assert r2.status == "fail", (name, r2.status, r2.why)


def test_difference_template_is_decode():
    cfg = defaults()
    doc, inst = _one("deepseek-v3", "mla_paged_prefill_causal_h16_ckv512_kpe64_ps1", tp=[8], ep=[8])
    r = verify_one(doc, inst, "cpu", cfg)
    assert r.status == "pass" and "template-is-decode" in r.differences
    # several new tokens per sequence: the decode template (one query per sequence) cannot follow
    r2 = verify_one(doc, _without_template_overrides(inst), "cpu", cfg)
    assert r2.status in ("fail", "error"), r2.why


def test_difference_template_mxfp4_scale_rounds_down():
    import torch
    doc, inst = _one("gpt-oss-20b", "mxfp4_quantize_k2880")
    r = verify_one(doc, inst, "cpu", defaults())
    assert r.status == "not-run" and "template-mxfp4-scale-rounds-down" in r.why
    # the two scale exponents: ceil here, floor in the template, equal only on exact powers of two
    case = build_case(doc, inst, inst.verify, 0, defaults())
    ours = run_reference_text(doc["reference"], doc["name"], list(case.inputs.values()))
    _, theirs = call_template({}, {}, inst, case, doc)
    s_ours = ours[1].view(torch.uint8).to(torch.int64)
    s_theirs = theirs["scales"].view(torch.uint8).to(torch.int64)
    x = case.inputs["input"].float().reshape(s_ours.shape[0], s_ours.shape[1], -1)
    raw = x.abs().amax(-1) / 6.0
    exact = torch.log2(raw) == torch.floor(torch.log2(raw))
    assert torch.equal(s_ours[exact], s_theirs[exact])
    assert torch.equal(s_ours[~exact], s_theirs[~exact] + 1) and (~exact).any()


def test_sink_definitions_run_the_attention_sink_wrapper_instead_of_the_default_one():
    # the default paged wrappers ignore sinks= on Hopper: for _sink definitions the kernel is
    # skipped (saying why) and FlashInfer's AttentionSink variant is the kernel side
    for name in ("gqa_paged_decode_h64_kv8_d64_ps1_sink", "gqa_paged_prefill_causal_h64_kv8_d64_ps64_swa128_sink"):
        doc, inst = _one("gpt-oss-20b", name)
        kb = inst.verify["kernel"]
        env = dict(inst.env)
        assert "do not apply it on Hopper" in skip_reason(kb["skip"], env, "skip")
        alt = alternative_for(kb, env)
        assert alt["api"] == "flashinfer.BatchAttentionWithAttentionSinkWrapper"
        # the call binds to the wrapper's constructor, plan() and run(q, paged_kv_cache, *args)
        assert check_kernel_call(doc, inst) == []
        case = build_case(doc, inst, inst.verify, 0, defaults())
        api, positional, args = kernel_call_args(alt, inst, case, "cpu", device_copies(case, "cpu"), "alt")
        assert positional[2] is not None and tuple(positional[2].shape) == (64,)     # sinks [num_qo_heads]
        assert positional[3] == pytest.approx(64 ** -0.5) and args == {"return_lse": True}
    # a model without sinks: neither the skip nor the alternative applies
    doc2, inst2 = _one("llama-3.1-8b", "gqa_paged_decode_h32_kv8_d128_ps1")
    assert skip_reason(inst2.verify["kernel"].get("skip"), dict(inst2.env), "skip") is None
    assert alternative_for(inst2.verify["kernel"], dict(inst2.env)) is None
    assert check_kernel_call(doc2, inst2) == []


def test_a_sink_of_no_weight_gives_the_no_sink_computation():
    import torch
    doc, inst = _one("gpt-oss-20b", "gqa_paged_decode_h64_kv8_d64_ps1_sink")
    vb = inst.verify
    case = build_case(doc, inst, {**vb, "inputs": {**vb["inputs"], "sinks": {"fill": -1.0e4}}}, 0, defaults())
    out, lse = run_reference_text(doc["reference"], doc["name"], list(case.inputs.values()))
    case.inputs["sinks"] = torch.full_like(case.inputs["sinks"], float("-inf"))
    out2, lse2 = run_reference_text(doc["reference"], doc["name"], list(case.inputs.values()))
    assert torch.equal(out, out2) and torch.allclose(lse, lse2)


def test_dsa_sparse_attention_is_compared_with_flashinfers_sparse_mla_template_at_page_size_1():
    res = _run("deepseek-v3.2", tp=[8], ep=[8], op_types=["dsa_paged"])
    r1 = res["dsa_sparse_attention_h16_ckv512_kpe64_topk2048_ps1"]
    assert r1.status == "pass", r1.why
    from flashinfer.trace.templates.attention import trtllm_batch_decode_mla_sparse_trace
    assert trtllm_batch_decode_mla_sparse_trace.reference.__name__ in r1.ran      # FlashInfer's public template
    (out,) = [o for o in r1.outputs if o.name == "output"]
    assert out.ok and out.max_abs is not None          # compared, not skipped
    # at page size 64 FlashInfer's template reads block_tables entries as pages, not token slots
    r64 = res["dsa_sparse_attention_h16_ckv512_kpe64_topk2048_ps64"]
    assert r64.status == "not-run" and "page id" in r64.why


def test_dsa_template_gets_the_softmax_scale():
    # bmm1_scale reaches FlashInfer's template through its **kwargs: a wrong scale must fail
    doc, inst = _one("deepseek-v3.2", "dsa_sparse_attention_h16_ckv512_kpe64_topk2048_ps1", tp=[8], ep=[8])
    vb = dict(inst.verify)
    vb["template"] = {**vb["template"], "args": {"bmm1_scale": 0.5}}
    inst.verify = vb
    r = verify_one(doc, inst, "cpu", defaults())
    assert r.status == "fail"


def test_cat_and_full_arguments():
    import torch
    doc, inst = _one("deepseek-v3.2", "dsa_sparse_attention_h16_ckv512_kpe64_topk2048_ps64", tp=[8], ep=[8])
    case = build_case(doc, inst, inst.verify, 0, defaults())
    t = device_copies(case, "cpu")
    q = resolve_arg({"cat": ["q_nope", "q_pe"], "shape": ["num_tokens", 1, "num_qo_heads", "d_qk"]},
                    case, "cpu", "q", t)
    assert tuple(q.shape) == (3, 1, 16, 576)
    assert torch.equal(q[:, 0, :, :512], t["q_nope"]) and torch.equal(q[:, 0, :, 512:], t["q_pe"])
    sl = resolve_arg({"full": ["num_tokens"], "fill": "num_pages * page_size", "dtype": "int32"}, case, "cpu", "s", t)
    assert sl.dtype == torch.int32 and sl.tolist() == [4096] * 3
    with pytest.raises(RecipeError, match="cat takes a list of at least two tensors"):
        resolve_arg({"cat": ["q_nope"]}, case, "cpu", "q", t)
    with pytest.raises(RecipeError, match="cannot concatenate"):
        resolve_arg({"cat": ["q_nope", "ckv_cache"], "dim": 0}, case, "cpu", "q", t)


def test_expr_arguments_compute_elementwise_from_inputs_and_nothing_else():
    import torch
    t = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([2.0, -1.0])}
    v = tensor_expr("exp(-exp(a) * softplus(b + 1)) + 2 ** 3", t, {"k": 2}, "x")
    want = torch.exp(-torch.exp(t["a"]) * torch.nn.functional.softplus(t["b"] + 1)) + 8
    assert torch.allclose(v, want)
    assert torch.allclose(tensor_expr("sigmoid(b) * k", t, {"k": 2}, "x"), torch.sigmoid(t["b"]) * 2)
    for bad, msg in [("__import__('os')", "only numbers, names"), ("a.real", "only numbers, names"),
                     ("lambda: 1", "only numbers, names"), ("nope + 1", "unknown name 'nope'"),
                     ("2 ** 2 ** 30", "exponent too large"), ("exp(a", "is not an expression")]:
        with pytest.raises(RecipeError, match=re.escape(msg)):
            tensor_expr(bad, t, {}, "x")


def test_gdn_kernels_get_the_gates_scale_and_layout_the_definitions_use():
    doc, inst = _one("qwen3-next-80b-a3b", "gdn_prefill_qk8_v16_d128_k_last", tp=[2])
    case = build_case(doc, inst, inst.verify, 0, defaults())
    t = device_copies(case, "cpu")
    api, pos, args = kernel_call_args(inst.verify["kernel"], inst, case, "cpu", t, "kernel")
    import torch
    g = torch.exp(-torch.exp(t["A_log"].float()) * torch.nn.functional.softplus(t["a"].float() + t["dt_bias"].float()))
    assert args["g"].dtype == torch.float32 and torch.allclose(args["g"], g)
    assert torch.allclose(args["beta"], torch.sigmoid(t["b"].float())) and args["scale"] == t["scale"]
    assert check_kernel_call(doc, inst) == []
    doc, inst = _one("qwen3-next-80b-a3b", "gdn_decode_qk8_v16_d128_k_last", tp=[2])
    assert inst.verify["kernel"]["api"].endswith("gated_delta_rule_decode_pretranspose")
    assert check_kernel_call(doc, inst) == []


def test_fp8_groupwise_gemm_has_a_hopper_alternative_with_column_major_activation_scales():
    doc, inst = _one("deepseek-v3", "gemm_fp8_nt_groupwise_n2112_k7168", tp=[8], ep=[8])
    alt = alternative_for(inst.verify["kernel"], dict(inst.env))
    assert alt["api"] == "flashinfer.gemm.fp8_blockscale_gemm_sm90" and alt["requires_sm"] == [90]
    case = build_case(doc, inst, inst.verify, 0, defaults())
    t = device_copies(case, "cpu")
    _, _, args = kernel_call_args(alt, inst, case, "cpu", t, "alt")
    s = args["input_scale"]
    assert s.shape == t["a_scale"].shape and s.equal(t["a_scale"]) and s.stride() == (1, s.shape[0])
    assert check_kernel_call(doc, inst) == []


def test_an_unknown_alternative_field_is_an_error():
    with pytest.raises(RecipeError, match="unknown verify.kernel.alternative field 'bogus'"):
        check_block({"kernel": {"alternative": {"api": "x", "bogus": 1}}})


def test_every_named_difference_has_a_test():
    text = open(__file__).read()
    names = set()
    for p in glob.glob(os.path.join(ROOT, "specs", "*.yaml")):
        for m in re.finditer(r"(?<!dump_)differences:\s*\n((?:\s+- name: .*\n(?:\s{10,}.*\n)*)+)", open(p).read()):
            names |= set(re.findall(r"- name: ([\w-]+)", m.group(1)))
    assert names >= {"template-reads-whole-last-page", "template-is-decode", "template-mxfp4-scale-rounds-down"}
    for n in names:
        assert f"test_difference_{n.replace('-', '_')}" in text, f"named difference {n} has no test"


# ---------------------------------------------------------------------------------------------
# the GPU side without a GPU

@pytest.mark.parametrize("model,kw", [("llama-3.1-8b", {}), ("deepseek-v3", {"tp": [8], "ep": [8]}),
                                      ("gpt-oss-20b", {}), ("nemotron-h-8b", {}), ("qwen3-next-80b-a3b", {})])
def test_kernel_calls_bind_to_the_flashinfer_signatures(model, kw):
    _, items = compile_for(VerifyOptions(model=model, **kw))
    problems = [p for d, i in items for p in check_kernel_call(d, i)]
    assert not problems, problems


def test_sequence_layout_is_consistent():
    import random
    arrays, sc = sequence_layout({"count": 4, "qo_len": [1, 5], "kv_len": [1, 50], "page_size": 16}, {},
                                 random.Random(3))
    assert len(set(arrays["page_indices"])) == len(arrays["page_indices"]) == sc["seq_used_pages"]
    assert max(arrays["page_indices"]) < sc["seq_num_pages"]
    for b in range(4):
        n = arrays["page_indptr"][b + 1] - arrays["page_indptr"][b]
        assert (n - 1) * 16 + arrays["last_page_len"][b] == arrays["kv_lens"][b]
        assert 1 <= arrays["last_page_len"][b] <= 16 and arrays["kv_lens"][b] >= arrays["qo_lens"][b]
    assert arrays["positions"][-1] == arrays["kv_lens"][-1] - 1 and len(arrays["batch_indices"]) == sc["seq_total_qo"]


def test_compare_measures():
    import torch
    tol = {"rtol": 0.01, "atol": 0.01, "max_mismatch_pct": 0.0}
    a = torch.ones(4, 8)
    assert compare("x", a, a.clone(), tol).ok
    b = a.clone()
    b[0, 0] = 2.0
    c = compare("x", a, b, tol)
    assert not c.ok and c.max_abs == 1.0 and abs(c.mismatch_pct - 100 / 32) < 1e-6
    assert compare("x", a, a.reshape(32), tol).ok                      # flattened layout of the same values
    assert not compare("x", a, torch.ones(5), tol).ok
    assert not compare("x", a, -a, {**tol, "max_mismatch_pct": 100.0, "min_cos_sim": 0.99}).ok
    u = torch.tensor([200, 3], dtype=torch.uint8)
    assert compare("s", u.view(torch.int8), u, {"max_mismatch_pct": 0.0}).ok   # the same UE8M0 bytes
    fp4 = torch.tensor([[0x21, 0xF7]], dtype=torch.uint8)
    assert fp4_values(fp4).tolist() == [[0.5, 1.0, 6.0, -6.0]]


def test_broadcast_inputs_stay_broadcast_on_copy():
    doc, inst = _one("nemotron-h-8b", "mamba_ssu_decode_h128_d64_s128_ng8")
    case = build_case(doc, inst, inst.verify, 0, defaults())
    dt = device_copies(case, "cpu")["dt"]
    assert dt.stride(-1) == 0 and dt.stride(1) == 1         # as served: the kernel checks these strides
    assert len(set(case.inputs["state_batch_indices"].tolist())) == case.values["batch_size"]


def test_flashinfer_backend_dump_pass_on_cpu(tmp_path):
    """--backend flashinfer without a GPU: the real API calls run under FLASHINFER_TRACE_DUMP=1 in a child;
    the dumper writes before the kernel, so the dumps exist and the kernels' failures are recorded."""
    from defc.runners.trace import plan_passes
    from defc.runners.verify_dump import run_flashinfer_pass
    p = plan_passes("llama-3.1-8b", [(1, 1)], [1], str(tmp_path / "dumps"), "flashinfer")[0]
    res = run_flashinfer_pass(p, "llama-3.1-8b", None, ("rmsnorm",), 120, None, "", device="cpu")
    assert res.status == "ok", res.detail
    names = sorted(os.path.basename(x)[:-5] for x in glob.glob(os.path.join(p.folder, "*.json"))
                   if not os.path.basename(x).startswith("_"))
    assert names == ["fused_add_rmsnorm_h4096", "rmsnorm_h4096"]
    marker = json.load(open(os.path.join(p.folder, "_defc_pass.json")))
    assert marker["backend"] == "flashinfer" and marker["status"] == "ok"
    assert {r["status"] for r in marker["definitions"]} == {"dumped"}
    assert all(r["kernel"].startswith("failed") for r in marker["definitions"])   # no CUDA here
    # defc diff reads the pass unchanged
    from defc.runners.common import find_dump_sets
    from defc.compiler.predictions import compile_predictions
    from defc.runners.diff import diff
    rep = diff(compile_predictions("llama-3.1-8b", [1], [1], None, ("rmsnorm",)), find_dump_sets(p.folder))
    assert {r["status"] for r in rep.rows if r["predicted"]} <= {"matched", "renamed"}


def test_a_partial_run_names_its_op_types_in_the_report(tmp_path, capsys):
    from defc.cli import main
    assert main(["verify", "--model", "llama-3.1-8b", "--op-types", "rmsnorm", "--report", str(tmp_path), "--quiet"]) == 0
    capsys.readouterr()
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["verify-llama-3.1-8b-tp1-rmsnorm-cpu.json",
                                                            "verify-llama-3.1-8b-tp1-rmsnorm-cpu.md"]
