"""defc diff: predictions (compile API) vs real FlashInfer dumps and staged datasets."""
from __future__ import annotations

import json

import pytest

from test_runners_common import copy_dumps


def _diff_json(capsys, *argv):
    from defc.cli import main
    rc = main(["diff", *argv, "--format", "json"])
    rep = json.loads(capsys.readouterr().out)
    return rc, rep, {(r["predicted"] or r["dumped"]): r for r in rep["rows"]}


def test_rmsnorm_dumps_match_the_compiled_definitions(tmp_path, capsys):
    from defc.cli import main
    p = copy_dumps(str(tmp_path / "p"), "direct", "flashinfer", model="llama-3.1-8b", tp=1, ep=1, page_size=1)
    rc, rep, rows = _diff_json(capsys, p, "--model", "llama-3.1-8b", "--specs", "rmsnorm")
    assert rows["rmsnorm_h4096"]["status"] == "matched"
    assert rows["fused_add_rmsnorm_h4096"]["status"] == "matched"
    # the MLA dump is not predicted by the rmsnorm spec
    assert rows["mla_paged_decode_h16_ckv512_kpe64_ps1"]["status"] == "unexpected"
    assert rc == 1 and rep["summary"]["matched"] == 2 and rep["summary"]["unexpected"] == 1
    # the human table, and a clean run exits 0
    (tmp_path / "p" / "mla_paged_decode_h16_ckv512_kpe64_ps1.json").unlink()
    assert main(["diff", p, "--model", "llama-3.1-8b", "--specs", "rmsnorm"]) == 0
    out = capsys.readouterr().out
    assert "matched  rmsnorm" in out and "2 matched" in out


def test_llama_tp1_against_a_sglang_pass(tmp_path, capsys):
    """What `defc compile --model llama-3.1-8b --tp 1` predicts vs what a SGLang pass dumps."""
    p = copy_dumps(str(tmp_path / "fi_trace_llama-3.1-8b_tp1_ep1_ps1"), "sglang_like", "sglang",
                   model="llama-3.1-8b", tp=1, ep=1, page_size=1, quantization="bf16")
    rc, rep, rows = _diff_json(capsys, p, "--model", "llama-3.1-8b", "--tp", "1")
    assert rc == 0 and rep["tp"] == [1] and rep["unexplained_rows"] == 0   # every difference has a named cause
    # the mislabelled 3-D-KV decode dump is repaired to the true name and pairs with the prediction
    dec = rows["gqa_paged_decode_h32_kv8_d128_ps1"]
    assert dec["status"] in ("matched", "differs") and dec["dumped"] == "gqa_paged_decode_h32_kv8_d128_ps1"
    assert dec["dumped_as"] == "gqa_paged_decode_h32_kv128_d128_ps8" and "sglang-3d-kv-paged-gqa" in dec["rules"]
    assert not [d for d in dec["diffs"] if d["field"].startswith("axes")]   # every axis agrees after the repair
    # the repaired paged prefill dump pairs with the curated _causal name
    pre = rows["gqa_paged_prefill_causal_h32_kv8_d128_ps1"]
    assert pre["status"] == "renamed" and pre["dumped"] == "gqa_paged_prefill_h32_kv8_d128_ps1"
    # the dumper's names for ragged prefill and sampling are renames
    assert rows["gqa_ragged_prefill_causal_h32_kv8_d128"]["status"] == "renamed"
    assert rows["gqa_ragged_prefill_causal_h32_kv8_d128"]["dumped"] == "gqa_ragged_h32_kv8_d128"
    assert rows["top_k_top_p_sampling_from_probs_v128256"]["status"] == "renamed"
    # norms go through sgl_kernel: missing, not routed
    for n in ("rmsnorm_h4096", "fused_add_rmsnorm_h4096"):
        assert rows[n]["status"] == "missing" and rows[n]["reason"] == "not-routed" and "norms-sgl-kernel" in rows[n]["how"]
    # page size 64 is never what SGLang hands FlashInfer
    assert rows["gqa_paged_decode_h32_kv8_d128_ps64"]["reason"] == "not-exercised"
    assert "paged-attention-page-size-one" in rows["gqa_paged_decode_h32_kv8_d128_ps64"]["how"]
    # top-k-only sampling is never called by SGLang
    assert rows["top_k_sampling_from_probs_v128256"]["reason"] == "not-routed"
    # plan() records are ignored, not unexpected; nothing is unexpected
    assert rows["gqa_paged_decode_plan_h32_kv8_d128_ps1"]["status"] == "ignored"
    assert rep["summary"]["unexpected"] == 0
    for r in rep["rows"]:
        if r["status"] == "missing":
            assert r["reason"] in ("not-routed", "not-exercised", "no-template", "unexplained") and r["how"]
    assert not [r for r in rep["rows"] if r["status"] == "missing" and r["reason"] == "unexplained"]


def test_a_pass_at_one_page_size_explains_the_others(tmp_path, capsys):
    p = copy_dumps(str(tmp_path / "p"), "direct", "replay", model="llama-3.1-8b", tp=1, ep=1, page_size=1,
                   definitions=[{"definition": "rmsnorm_h4096", "status": "dumped", "dumped_as": "rmsnorm_h4096"}])
    (tmp_path / "p" / "fused_add_rmsnorm_h4096.json").unlink()
    rc, rep, rows = _diff_json(capsys, p, "--model", "llama-3.1-8b", "--specs", "rmsnorm,gqa_paged")
    assert rows["gqa_paged_decode_h32_kv8_d128_ps64"]["how"] == "variant not exercised: no pass at page size 64"
    assert rows["fused_add_rmsnorm_h4096"]["status"] == "missing"
    rc, rep, rows = _diff_json(capsys, p, "--model", "llama-3.1-8b", "--specs", "rmsnorm", "--tp", "1,2")
    assert rows["rmsnorm_h4096"]["status"] == "matched"     # same shapes at tp2; tp is not compared


def test_dataset_and_mla_rule(tmp_path, capsys):
    """A staged dataset diffs too; the MLA decode dump also stands for paged prefill (rule)."""
    from defc.cli import main
    p = copy_dumps(str(tmp_path / "p"), "direct", "flashinfer", model="deepseek-v3", tp=8, ep=1, page_size=1)
    ds = str(tmp_path / "ds")
    assert main(["stage", p, "--out", ds]) == 0
    capsys.readouterr()
    rc, rep, rows = _diff_json(capsys, ds, "--model", "deepseek-v3", "--tp", "8", "--specs", "mla_paged")
    assert rep["sources"][0].startswith("dataset")
    assert rows["mla_paged_decode_h16_ckv512_kpe64_ps1"]["status"] in ("matched", "differs")
    pre = rows["mla_paged_prefill_causal_h16_ckv512_kpe64_ps1"]
    assert pre["status"] == "renamed" and pre["dumped"] == "mla_paged_decode_h16_ckv512_kpe64_ps1"
    # the rmsnorm dumps staged for deepseek-v3 are unexpected for the mla_paged spec
    assert rows["rmsnorm_h4096"]["status"] == "unexpected"


def test_reconcile_rules_aliases_and_signatures():
    """The matching itself, on synthetic documents: rule names, one-to-one const-axis pairing."""
    from defc.runners.diff import Observed, Prediction, Report, reconcile

    def doc(name, op, stage, api, **axes):
        return {"name": name, "op_type": op, "tags": [f"fi_api:{api}", f"stage:{stage}"],
                "axes": {k: {"type": "const", "value": v} for k, v in axes.items()},
                "inputs": {"q": {"shape": ["h"], "dtype": "bfloat16"}}, "outputs": {}}
    preds = [Prediction("mla_decode_h16", doc("mla_decode_h16", "mla_paged", "decode", "W.run", h=16), []),
             Prediction("mla_prefill_h16", doc("mla_prefill_h16", "mla_paged", "prefill", "W", h=16), []),
             Prediction("p_decode_h8", doc("p_decode_h8", "p", "decode", "D", h=8), []),
             Prediction("p_prefill_h8", doc("p_prefill_h8", "p", "prefill", "P", h=8), []),
             Prediction("lonely_h1", doc("lonely_h1", "p", "decode", "D", h=1), [])]
    obs = [Observed(doc("mla_decode_h16", "mla_paged", "decode", "W.run", h=16), "f1", "sglang", "mla_decode_h16",
                    [], [("mla_prefill_h16", "some-rule")]),
           Observed(doc("x_prefill_8", "p", "prefill", "P.run", h=8), "f2", "sglang", "x_prefill_8", [], []),
           Observed(doc("x_decode_8", "p", "decode", "D.run", h=8), "f3", "sglang", "x_decode_8", [], []),
           Observed(doc("stray", "q", "decode", "Q", h=3), "f4", "sglang", "stray", [], [])]
    rep = reconcile(preds, obs, Report("m", []), lambda p: ("unexplained", "because"))
    rows = {r["predicted"] or r["dumped"]: r for r in rep.rows}
    assert rows["mla_decode_h16"]["status"] == "matched"
    assert rows["mla_prefill_h16"]["status"] == "renamed" and "rule some-rule" in rows["mla_prefill_h16"]["how"]
    # the class and its `.run` method name one API: only the stage tag differs
    assert rows["mla_prefill_h16"]["diffs"] == [{"field": "tags.stage", "predicted": ["stage:prefill"],
                                                 "dumped": ["stage:decode"]}]
    # same op_type and const axes: decode and prefill are told apart by fi_api and stage tags
    assert rows["p_decode_h8"]["dumped"] == "x_decode_8" and rows["p_prefill_h8"]["dumped"] == "x_prefill_8"
    assert rows["lonely_h1"]["status"] == "missing" and rows["stray"]["status"] == "unexpected"
    assert not rep.clean and rep.summary()["renamed"] == 3


def _route_cases():
    llama = {"tp": 1, "attn_dp": 1, "architecture": "LlamaForCausalLM", "page_size": 1}
    ds_tp8 = {"tp": 8, "attn_dp": 1, "architecture": "DeepseekV3ForCausalLM", "n_group": 8, "topk_group": 4,
              "num_experts": 256, "top_k": 8}
    gptoss = {"architecture": "GptOssForCausalLM"}
    return {
        "allreduce-norm-fusion": ("flashinfer.norm.fused_add_rmsnorm", "rmsnorm", "fused_add_rmsnorm_h7168", ds_tp8),
        "norms-sgl-kernel": ("flashinfer.norm.rmsnorm", "rmsnorm", "rmsnorm_h4096", llama),
        "gpt-oss-router-gemm": ("flashinfer.gemm.tinygemm_bf16", "gemm", "gemm_n32_k2880", gptoss),
        "gemm-cublas-deepgemm": ("flashinfer.gemm.gemm_base.gemm_fp8_nt_groupwise", "gemm", "g", ds_tp8),
        "activation-jit": ("flashinfer.activation.silu_and_mul", "activation", "silu_and_mul_h28672", llama),
        "rope-jit": ("flashinfer.rope.apply_rope_with_cos_sin_cache", "rope", "rope", llama),
        "kv-append-jit": ("flashinfer.page.append_paged_kv_cache", "page_append", "a", llama),
        "paged-attention-page-size-one": ("flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper", "gqa_paged",
                                          "gqa_paged_decode_h32_kv8_d128_ps64", dict(llama, page_size=64)),
        "gqa-paged-prefill-needs-prefix": ("flashinfer.prefill.BatchPrefillWithPagedKVCacheWrapper", "gqa_paged",
                                           "gqa_paged_prefill_causal_h32_kv8_d128_ps1", llama),
        "cascade-other": ("flashinfer.cascade.merge_states", "cascade_merge", "merge_states_h32_d128", llama),
        "mla-paged-prefill-needs-prefix": ("flashinfer.mla.BatchMLAPagedAttentionWrapper", "mla_paged",
                                           "mla_paged_prefill_causal_h16_ckv512_kpe64_ps1", dict(ds_tp8, page_size=1)),
        "attention-wrappers": ("flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper", "gqa_paged",
                               "gqa_paged_decode_h32_kv8_d128_ps1", llama),
        "sampling-joint": ("flashinfer.sampling.top_k_top_p_sampling_from_probs", "sampling", "s", llama),
        "sampling-min-p": ("flashinfer.sampling.min_p_sampling_from_probs", "sampling", "s", llama),
        "sampling-other": ("flashinfer.sampling.top_p_sampling_from_probs", "sampling", "s", llama),
        "deepseek-routing": ("flashinfer.fused_moe.fused_topk_deepseek", "moe", "fused_topk_deepseek_e256_k8", ds_tp8),
        "moe-triton": ("flashinfer.fused_moe.trtllm_fp8_block_scale_moe", "moe", "moe_fp8", ds_tp8),
        "gdn-prefill": ("flashinfer.gdn_prefill.chunk_gated_delta_rule", "gdn", "gdn_prefill", {}),
        "gdn-decode-triton": ("flashinfer.gdn_decode.gated_delta_rule_decode", "gdn", "gdn_decode", {}),
        "mamba-triton": ("flashinfer.mamba.selective_state_update", "mamba_ssu", "m", {}),
    }


def test_every_routing_rule_has_a_case():
    from defc.runners.diff import load_routes
    assert sorted(r.name for r in load_routes()) == sorted(_route_cases())


@pytest.mark.parametrize("rule", sorted(_route_cases()))
def test_routing_rule(rule):
    from defc.runners.diff import load_routes, route_for
    api, op, name, env = _route_cases()[rule]
    got = route_for(load_routes(), api, op, name, env)
    assert got is not None and got.name == rule
    # at TP1 the norm fusion does not apply; Llama never gets it
    if rule == "allreduce-norm-fusion":
        assert route_for(load_routes(), api, op, name, dict(env, tp=1)).name == "norms-sgl-kernel"
        assert route_for(load_routes(), api, op, name, dict(env, architecture="LlamaForCausalLM")).name == "norms-sgl-kernel"


def test_diff_bad_input_is_one_line(tmp_path, capsys):
    from defc.cli import main
    assert main(["diff", str(tmp_path / "none"), "--model", "llama-3.1-8b"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such folder" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main(["diff", str(tmp_path / "empty"), "--model", "llama-3.1-8b"]) == 2
    assert "no dumps here" in capsys.readouterr().err
    p = copy_dumps(str(tmp_path / "p"), "direct")
    assert main(["diff", p, "--model", "no-such-model"]) == 2
    assert "no-such-model" in capsys.readouterr().err


# FlashInfer's templates differ from the curated form in known ways; each spec names them.  The
# models cover every family: attention (sinks, sliding windows, MLA and DSA at EP 8), gated delta
# net, Mamba2, FP4/FP8 GEMMs, quantizers and MoE (--quantization all replays one FP4 flavour per
# name, so gpt-oss's NVFP4 recipes are exercised on their own).
@pytest.mark.parametrize("model,args", [
    ("llama-3.1-8b", ["--tp", "1"]),
    ("deepseek-v3", ["--tp", "8", "--ep", "8"]),
    ("qwen3-next-80b-a3b", []),
    ("gpt-oss-20b", []),
    ("nemotron-h-8b", []),
    ("gemma-3-27b", []),
    ("deepseek-v3.2", ["--tp", "8", "--ep", "8"]),
    ("qwen3-30b-a3b", ["--quantization", "all"]),
    ("gpt-oss-20b", ["--quantization", "nvfp4"]),
])
def test_every_field_difference_of_a_replay_has_a_named_cause(model, args, tmp_path, capsys):
    from defc.cli import main
    assert main(["trace", "--model", model, *args, "--backend", "replay", "--dumps", str(tmp_path), "--no-stage"]) == 0
    capsys.readouterr()
    rc, rep, rows = _diff_json(capsys, str(tmp_path), "--model", model, *args)
    assert rep["field_differences"]["unexplained"] == 0, [
        (r["predicted"], d) for r in rep["rows"] if r["predicted"] for d in r["diffs"] if "cause" not in d]
    assert rep["field_differences"]["explained"] > 20
    differs = [r for r in rep["rows"] if r["status"] == "differs"]
    assert differs and all("every field difference has a named cause" in r["how"] for r in differs)
    for r in rep["rows"]:
        for d in r["diffs"] if r["predicted"] else ():          # conflict rows compare two dumps
            assert d["cause"] in r["causes"] and r["causes"][d["cause"]]     # the why travels with the row
    # a renamed row's field differences have their causes too; long whys are in the legend, not the table
    for r in rep["rows"]:
        if r["status"] == "renamed" and r["diffs"]:
            assert "every field difference has a named cause" in r["how"], r
        if r["status"] == "renamed" and r["how"].startswith("spec alias"):
            assert r["alias"]["why"] and r["alias"]["why"] not in r["how"], r
        assert len(r["how"]) <= 120, r["how"]
    # the text report shows the cause on each line and the legend once
    main(["diff", str(tmp_path), "--model", model, *args, "--all-diffs"])
    out = capsys.readouterr().out
    assert "causes (the specs' dump_differences):" in out
    if any(r.get("alias") for r in rep["rows"]):
        assert "aliases (why FlashInfer's dumper names a definition so; the spec's alias pattern):" in out
    assert "0 without" in out and "[no named cause]" not in out
    if model == "llama-3.1-8b":
        assert "[template-return-lse-input]" in out


def test_conflicting_dumps_are_not_counted_as_unexplained_field_differences():
    from defc.runners.diff import Report
    rep = Report("m", [], rows=[
        {"status": "differs", "predicted": "a", "dumped": "a",
         "diffs": [{"field": "inputs.x", "predicted": "t", "dumped": None, "cause": "c"},
                   {"field": "inputs.y", "predicted": "t", "dumped": None}]},
        {"status": "conflict", "predicted": "", "dumped": "b",
         "diffs": [{"field": "axes.k.value", "predicted": 1, "dumped": 2}]}])
    assert rep.field_summary() == {"explained": 1, "unexplained": 1}


def test_cause_matching_by_field_pattern_and_side():
    from defc.runners.diff import cause_of
    known = [{"name": "only-dumped-scalars", "fields": ["inputs.*_scale"], "side": "dumped", "why": "w"},
             {"name": "shape", "fields": ["inputs.q.shape"], "why": "w"}]
    assert cause_of({"field": "inputs.ckv_scale", "predicted": None, "dumped": "float32 scalar"}, known)["name"] \
        == "only-dumped-scalars"
    # the same field present only on the predicted side is not covered by a side: dumped cause
    assert cause_of({"field": "inputs.ckv_scale", "predicted": "float32 scalar", "dumped": None}, known) is None
    assert cause_of({"field": "inputs.q.shape", "predicted": ["a"], "dumped": ["b"]}, known)["name"] == "shape"
    assert cause_of({"field": "inputs.k.shape", "predicted": ["a"], "dumped": ["b"]}, known) is None


@pytest.mark.parametrize("stem,model,args", [
    ("deepseek-v3-tp8-ep8", "deepseek-v3", ["--tp", "8", "--ep", "8"]),
    ("llama-3.1-8b-tp1", "llama-3.1-8b", ["--tp", "1"]),
])
def test_the_committed_h100_dumps_are_fully_explained(stem, model, args, capsys):
    """reports/gpu/dumps holds what FlashInfer's dumper wrote on the H100 (defc trace --backend flashinfer);
    the committed diff is reproducible from them, and every difference has its cause."""
    import os
    from conftest import ROOT
    dumps = os.path.join(ROOT, "reports", "gpu", "dumps", stem)
    rc, rep, rows = _diff_json(capsys, dumps, "--model", model, *args)
    committed = json.load(open(os.path.join(ROOT, "reports", "gpu", f"diff-{stem}.json")))
    assert rep["summary"] == committed["summary"]
    assert rep["summary"]["unexpected"] == 0 and rep["field_differences"]["unexplained"] == 0
    for r in rep["rows"]:
        if r["status"] == "missing":          # each has its reason: no API, or the call failed on this GPU
            assert r["reason"] in ("no-template", "call-failed", "not-exercised"), r
        if r["status"] == "differs":
            assert "every field difference has a named cause" in r["how"]


def test_in_place_rope_dumps_of_a_partial_rotary_model_are_explained(tmp_path, capsys):
    """SGLang calls apply_rope_with_cos_sin_cache_inplace: its dump is a spec alias of the rope definition,
    and its fi_api tag difference (like every other field difference of the renamed row) has a named cause."""
    import os
    from conftest import ROOT
    from defc.cli import main
    with open(os.path.join(ROOT, "specs", "rope.yaml")) as fh:
        text = fh.read()
    recipe = "    trace:                   # defc trace --backend replay (docs/trace.md)\n"
    assert recipe in text
    spec = tmp_path / "rope.yaml"       # the same spec, replayed through the in-place API
    spec.write_text(text.replace(recipe, "    trace:\n      api: flashinfer.rope.apply_rope_with_cos_sin_cache_inplace\n"))
    dumps = tmp_path / "dumps"
    assert main(["trace", "--model", "qwen3-next-80b-a3b", "--tp", "2", "--page-size", "1", "--backend", "replay",
                 "--specs", str(spec), "--dumps", str(dumps), "--no-stage"]) == 0
    capsys.readouterr()
    rc, rep, rows = _diff_json(capsys, str(dumps), "--model", "qwen3-next-80b-a3b", "--tp", "2", "--specs", "rope")
    r = rows["rope_with_cos_sin_cache_neox_style_d256_rd64"]
    assert r["status"] == "renamed" and r["dumped"] == "rope_cos_sin_cache_inplace_d256"
    assert r["how"] == "spec alias: every field difference has a named cause (18)"
    assert r["alias"]["pattern"] == "rope_cos_sin_cache_inplace_d{head_size}"
    fi_api = [d for d in r["diffs"] if d["field"] == "tags.fi_api"]
    assert fi_api == [{"field": "tags.fi_api", "predicted": ["fi_api:flashinfer.rope.apply_rope_with_cos_sin_cache"],
                       "dumped": ["fi_api:flashinfer.rope.apply_rope_with_cos_sin_cache_inplace"],
                       "cause": "in-place-api"}]
    assert r["unexplained"] == 0 and rep["field_differences"]["unexplained"] == 0
    assert "in-place-api" in r["causes"]
    main(["diff", str(dumps), "--model", "qwen3-next-80b-a3b", "--tp", "2", "--specs", "rope", "--all-diffs"])
    out = capsys.readouterr().out
    assert "[in-place-api]" in out and "[no named cause]" not in out
    assert "  rope_cos_sin_cache_inplace_d{head_size}: the in-place API" in out


def test_tag_differences_are_one_field_per_namespace():
    """A cause can name one tag namespace (tags.fi_api); `tags` still covers them all."""
    from defc.runners.diff import cause_of, field_diffs
    pred = {"op_type": "x", "tags": ["fi_api:a.f", "stage:decode", "fused"]}
    dump = {"op_type": "x", "tags": ["fi_api:a.f_inplace", "stage:decode", "status:verified"]}
    ds = field_diffs(pred, dump, [])
    assert ds == [{"field": "tags.fi_api", "predicted": ["fi_api:a.f"], "dumped": ["fi_api:a.f_inplace"]},
                  {"field": "tags.fused", "predicted": ["fused"], "dumped": []},
                  {"field": "tags.status", "predicted": [], "dumped": ["status:verified"]}]
    api = [{"name": "api", "fields": ["tags.fi_api"], "side": "both", "why": "w"}]
    assert [cause_of(d, api) and cause_of(d, api)["name"] for d in ds] == ["api", None, None]
    only_dumped = [{"name": "dumper-tags", "fields": ["tags.*"], "side": "dumped", "why": "w"}]
    assert [cause_of(d, only_dumped) and cause_of(d, only_dumped)["name"] for d in ds] == [None, None, "dumper-tags"]
    assert all(cause_of(d, [{"name": "all", "fields": ["tags"], "why": "w"}]) for d in ds)
