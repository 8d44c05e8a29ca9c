"""defc trace: the SGLang path through a stand-in `sglang` (tests/stand_in_sglang) that records what it
saw and writes dumps through real FlashInfer calls; the replay backend; recipes; dry runs."""
from __future__ import annotations

import glob
import json
import os

import pytest

from test_runners_common import real_dumps

HERE = os.path.dirname(os.path.abspath(__file__))
STAND_IN = os.path.join(HERE, "stand_in_sglang")


def _records(folder):
    out = []
    for p in sorted(glob.glob(os.path.join(folder, "record_*.json"))):
        with open(p) as fh:
            out.append({e["event"]: e for e in json.load(fh)})
    return out


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", STAND_IN)
    monkeypatch.setenv("SGLANG_STAND_IN_RECORD", str(tmp_path / "records"))
    monkeypatch.delenv("FLASHINFER_TRACE_DUMP", raising=False)
    monkeypatch.delenv("FLASHINFER_TRACE_DUMP_DIR", raising=False)
    return tmp_path


def test_sglang_passes_per_page_size_env_before_import_and_crash_safety(stand_in, monkeypatch, capsys):
    from defc.cli import main
    monkeypatch.setenv("SGLANG_STAND_IN_MODE", "crash@16")      # the ps16 pass dies mid-generation
    rc = main(["trace", "--model", "llama-3.1-8b", "--tp", "1", "--page-size", "1,16", "--skip-gpu-check"])
    cap = capsys.readouterr()
    assert rc == 1
    recs = {r["engine"]["kwargs"]["page_size"]: r for r in _records(str(stand_in / "records"))}
    assert sorted(recs) == [1, 16]                              # one pass per page size
    for ps, r in recs.items():
        folder = stand_in / "tmp" / "dumps" / f"fi_trace_llama-3.1-8b_tp1_ep1_ps{ps}"
        imp = r["import"]
        # the environment was there before sglang (and so flashinfer) was imported
        assert imp["env"] == {"FLASHINFER_TRACE_DUMP": "1", "FLASHINFER_TRACE_DUMP_DIR": str(folder)}
        assert imp["flashinfer_already_imported"] is False
        kw = r["engine"]["kwargs"]
        assert kw["model_path"] == "meta-llama/Llama-3.1-8B-Instruct" and kw["attention_backend"] == "flashinfer"
        assert kw["disable_cuda_graph"] is True and kw["disable_radix_cache"] is True
        assert kw["tp_size"] == 1 and "mem_fraction_static" in kw and "ep_size" not in kw
        sp = r["generate"]["sampling_params"]
        assert sp["top_k"] > 0 and 0 < sp["top_p"] < 1 and sp["max_new_tokens"] > 0
        assert (folder / "_defc_trace.log").exists()            # the log is kept
    ok = stand_in / "tmp" / "dumps" / "fi_trace_llama-3.1-8b_tp1_ep1_ps1"
    bad = stand_in / "tmp" / "dumps" / "fi_trace_llama-3.1-8b_tp1_ep1_ps16"
    assert "shutdown" in recs[1] and "shutdown" not in recs[16]
    assert json.loads((ok / "_defc_pass.json").read_text())["status"] == "ok"
    m = json.loads((bad / "_defc_pass.json").read_text())
    assert m["status"] == "failed" and m["exit_code"] == 17 and m["phase"] == "generating"
    assert sorted(p.name for p in bad.glob("[!_]*.json")) == ["gqa_ragged_h32_kv8_d128.json"]   # kept
    # the finished pass was staged (mislabel repaired), the crashed one was not
    staged = {os.path.basename(p)[:-5]: p for p in glob.glob(str(stand_in / "tmp" / "traced-dataset" / "definitions" / "*" / "*.json"))}
    assert set(staged) == {"gqa_paged_decode_h32_kv8_d128_ps1", "gqa_ragged_h32_kv8_d128", "top_k_top_p_sampling_v128256"}
    with open(staged["gqa_ragged_h32_kv8_d128"]) as fh:
        assert {"model:llama-3.1-8b", "tp:1"} <= set(json.load(fh)["tags"])
    assert "tp1 ep1 ps16 failed: the pass exited with code 17" in cap.err and "_defc_trace.log" in cap.err
    assert "Traceback" not in cap.err
    # diff against the compiled predictions: the repaired decode dump pairs up by name
    rc = main(["diff", str(ok), "--model", "llama-3.1-8b", "--format", "json"])
    rows = {r["predicted"]: r for r in json.loads(capsys.readouterr().out)["rows"] if r["predicted"]}
    assert rows["gqa_paged_decode_h32_kv8_d128_ps1"]["dumped"] == "gqa_paged_decode_h32_kv8_d128_ps1"


def test_timeout_kills_the_pass_and_its_workers(stand_in, monkeypatch, capsys):
    from defc.cli import main
    monkeypatch.setenv("SGLANG_STAND_IN_MODE", "hang")
    rc = main(["trace", "--model", "llama-3.1-8b", "--tp", "2", "--skip-gpu-check", "--timeout", "5", "--no-stage"])
    cap = capsys.readouterr()
    assert rc == 1 and "timed out after 5s" in cap.err
    folder = stand_in / "tmp" / "dumps" / "fi_trace_llama-3.1-8b_tp2_ep1_ps1"
    m = json.loads((folder / "_defc_pass.json").read_text())
    assert m["status"] == "timeout" and m["phase"] == "generating" and m["engine"]["tp_size"] == 2
    (rec,) = _records(str(stand_in / "records"))
    pid = rec["worker"]["pid"]
    with pytest.raises(ProcessLookupError):   # the engine's worker process died with the pass
        for _ in range(50):
            os.kill(pid, 0)
            import time
            time.sleep(0.1)
    assert (folder / "_defc_trace.log").read_text().count("phase: generating") == 1
    assert not (stand_in / "tmp" / "traced-dataset").exists() and not (stand_in / "tmp" / "flashinfer-trace").exists()


def test_missing_gpu_and_missing_sglang_say_use_replay(stand_in, monkeypatch, capsys):
    from defc.cli import main
    rc = main(["trace", "--model", "llama-3.1-8b", "--tp", "1"])           # no --skip-gpu-check, CPU torch
    err = capsys.readouterr().err
    assert rc == 2 and "no CUDA GPU" in err and "--backend replay" in err and "Traceback" not in err
    monkeypatch.setenv("PYTHONPATH", str(stand_in / "nothing"))
    rc = main(["trace", "--model", "llama-3.1-8b", "--tp", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "sglang is not importable" in err and "--backend replay" in err
    assert not _records(str(stand_in / "records"))               # sglang was never imported


def test_trace_never_clobbers_a_foreign_folder(stand_in, capsys):
    from defc.cli import main
    folder = stand_in / "tmp" / "dumps" / "fi_trace_llama-3.1-8b_tp1_ep1_ps1"
    folder.mkdir(parents=True)
    (folder / "precious.json").write_text("{}")
    rc = main(["trace", "--model", "llama-3.1-8b", "--tp", "1", "--skip-gpu-check"])
    assert rc == 2 and "was not made by defc trace" in capsys.readouterr().err
    assert (folder / "precious.json").read_text() == "{}" and len(os.listdir(folder)) == 1


def test_dry_run_lists_passes(stand_in, capsys):
    from defc.cli import main
    assert main(["trace", "--model", "qwen3-30b-a3b", "--tp", "2,4", "--ep", "2", "--page-size", "1,64",
                 "--quantization", "fp8", "--dry-run", "--format", "json"]) == 0
    passes = json.loads(capsys.readouterr().out)["passes"]
    assert [p["pass"] for p in passes] == ["tp2 ep2 ps1", "tp2 ep2 ps64", "tp4 ep2 ps1", "tp4 ep2 ps64"]
    assert passes[0]["folder"].endswith("fi_trace_qwen3-30b-a3b_tp2_ep2_ps1_fp8")
    assert "ep_size=2" in passes[0]["what"] and "quantization='fp8'" in passes[0]["what"]
    assert not (stand_in / "tmp").exists()


def test_replay_backend_writes_what_the_real_dumper_writes(stand_in, capsys):
    from defc.cli import main
    rc = main(["trace", "--backend", "replay", "--model", "llama-3.1-8b", "--tp", "1", "--specs", "rmsnorm"])
    assert rc == 0, capsys.readouterr()
    folder = stand_in / "tmp" / "dumps" / "fi_trace_llama-3.1-8b_tp1_ep1_ps1"
    for name in ("rmsnorm_h4096", "fused_add_rmsnorm_h4096"):
        with open(os.path.join(real_dumps(), "direct", f"{name}.json")) as fh:
            real = json.load(fh)
        with open(folder / f"{name}.json") as fh:
            assert json.load(fh) == real           # byte-for-byte the template's output for these shapes
    m = json.loads((folder / "_defc_pass.json").read_text())
    assert m["backend"] == "replay" and {d["status"] for d in m["definitions"]} == {"dumped"}
    capsys.readouterr()
    assert main(["diff", str(folder), "--model", "llama-3.1-8b", "--specs", "rmsnorm"]) == 0
    assert "2 matched" in capsys.readouterr().out


def test_recipes_evaluate_and_bind_defaults(tmp_path):
    from defc.compiler.pipeline import CompileOptions, compile_model
    from defc.runners.flashinfer_api import resolve_api
    from defc.runners.recipes import SeqArg, TensorArg, bind_like_dumper, calls_for
    spec = tmp_path / "toy.yaml"
    spec.write_text(open(os.path.join(HERE, "..", "specs", "rmsnorm.yaml")).read().split("definitions:")[0]
                    .replace("family: rmsnorm", "family: toy") + """definitions:
  - id: toy
    name: "toy_decode_h{num_qo_heads}"
    fi_api: flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper
    axes:
      batch_size: {type: var}
      num_pages: {type: var}
      num_qo_heads: {value: num_attention_heads}
      head_dim: {value: 'hidden_size / num_attention_heads'}
    inputs:
      q: {shape: [batch_size, num_qo_heads, head_dim], dtype: bfloat16}
      k_cache: {shape: [num_pages, num_qo_heads, head_dim], dtype: bfloat16}
    outputs:
      output: {shape: [batch_size, num_qo_heads, head_dim], dtype: bfloat16}
    reference: {template: reference/rmsnorm.py.j2, params: {eps: eps, hidden_size: hidden_size}}
    trace:
      vars: {batch_size: 3, num_pages: 'batch_size * 2'}
      args:
        q: q
        paged_kv_cache: {tuple: [k_cache, {tensor: k_cache, dtype: float16}]}
        window_left: {value: 'head_dim - 1'}
""")
    res = compile_model(CompileOptions(model="llama-3.1-8b", specs=[str(spec)], tp=[1], out=str(tmp_path / "none")))
    inst = res.instances["toy_decode_h32"][0]
    (call,) = calls_for(inst)
    assert call.api == "flashinfer.decode.BatchDecodeWithPagedKVCacheWrapper"
    assert call.kwargs["q"] == TensorArg((3, 32, 128), "bfloat16", "q")
    assert call.kwargs["paged_kv_cache"] == SeqArg("tuple", (TensorArg((6, 32, 128), "bfloat16", "k_cache"),
                                                             TensorArg((6, 32, 128), "float16", "k_cache")))
    assert call.kwargs["window_left"] == 127
    api = resolve_api(call.api)                       # a wrapper class resolves to its traced run()
    assert api.__name__ == "run" and hasattr(api, "fi_trace")
    bound = bind_like_dumper(api, {"q": 1, "paged_kv_cache": 2}, True)
    assert bound["return_lse"] is False and bound["q"] == 1 and "self" not in bound


@pytest.mark.parametrize("trace,expect", [
    ("args: {input: nope}", "trace.args.input.tensor: definition 'rmsnorm_h4096': no input or output named 'nope'"),
    ("args: {input: hidden_states, eps: {value: 'eps +'}}", "trace.args.eps.value: definition 'rmsnorm_h4096': bad formula"),
    ("args: {input: {shape: [batch_size]}}", "a free tensor needs a dtype"),
    ("argz: {}", "unknown trace field 'argz'"),
    ("args: {input: hidden_states, bogus: {value: 1}}", "arguments do not fit the API's signature"),
])
def test_bad_recipes_are_one_line_located_errors(tmp_path, monkeypatch, trace, expect):
    from defc.compiler.errors import DefcError
    from defc.compiler.pipeline import CompileOptions, compile_model
    from defc.runners.flashinfer_api import resolve_api
    from defc.runners.recipes import bind_like_dumper, calls_for, materialize
    monkeypatch.chdir(tmp_path)
    text = open(os.path.join(HERE, "..", "specs", "rmsnorm.yaml")).read()
    first = text.index("    trace:")
    end = text.index("\n", text.index("args:", first))
    spec = tmp_path / "rmsnorm.yaml"
    spec.write_text(text[:first] + "    trace: {" + trace.replace("args:", "args:", 1) + "}" + text[end:])
    res = compile_model(CompileOptions(model="llama-3.1-8b", specs=[str(spec)], tp=[1], out=str(tmp_path / "none")))
    with pytest.raises(DefcError) as e:
        for call in calls_for(res.instances["rmsnorm_h4096"][0]):
            api = resolve_api(call.api)
            bind_like_dumper(api, {k: materialize(v) for k, v in call.kwargs.items()}, call.defaults)
    msg = str(e.value)
    assert expect in msg and "\n" not in msg, msg
    if "signature" not in expect:
        assert msg.startswith("rmsnorm.yaml:") and ": error: " in msg


@pytest.mark.parametrize("model,tp", [("llama-3.1-8b", 1), ("deepseek-v3", 8), ("qwen3-30b-a3b", 1),
                                      ("qwen3-next-80b-a3b", 2), ("nemotron-h-8b", 1)])   # + gdn, mamba_ssu
def test_every_spec_recipe_replays_into_a_definition_that_pairs_up(model, tp):
    """Every trace: recipe in specs/ (today rmsnorm's; the other families' as they add theirs) must
    call its API, give a dump that stages into a valid Definition, and pair with its prediction."""
    from defc.compiler.predictions import compile_predictions
    from defc.runners.diff import Observed, Prediction, Report, reconcile
    from defc.runners.recipes import calls_for
    from defc.runners.replay import trace_call
    from defc.runners.stage import normalise, validate
    res = compile_predictions(model, [tp], None, None)
    with_recipe = [n for n, insts in res.instances.items() if insts[0].trace]
    assert with_recipe, "no spec gives a trace: recipe"
    docs = {p.doc["name"]: p.doc for p in res.planned}
    for name in with_recipe:
        inst = res.instances[name][0]
        for call in calls_for(inst):
            out = normalise(trace_call(call), "replay")
            assert not out.skipped, (name, out.skipped)
            assert validate(dict(out.doc, tags=out.doc["tags"] + ["model:x"])) == "", name
            obs = Observed(out.doc, "replay", "replay", out.doc["name"], out.fired, out.also_as)
            rep = reconcile([Prediction(name, docs[name], res.instances[name])], [obs], Report(model, []),
                            lambda p: ("unexplained", ""))
            assert rep.rows[0]["status"] in ("matched", "differs", "renamed"), (name, out.doc["name"], rep.rows)


@pytest.mark.parametrize("model,tp,ep", [("gpt-oss-20b", 1, 1), ("deepseek-v3", 8, 8), ("qwen3-next-80b-a3b", 4, 1)])
def test_quantized_recipes_replay_and_pair_up(model, tp, ep):
    """The recipes of every quantization variant (each instance, so NVFP4 and MXFP4 of a shared FP4
    definition both run) call their API and pair with their prediction.  The packed FP4 / MX scale
    tensors the APIs take are uint8, which flashinfer-bench's Definition has no dtype for, so the
    only validation problem allowed is a uint8 dtype."""
    from defc.compiler.predictions import compile_predictions
    from defc.runners.diff import Observed, Prediction, Report, reconcile
    from defc.runners.recipes import calls_for
    from defc.runners.replay import trace_call
    from defc.runners.stage import normalise, validate
    res = compile_predictions(model, [tp], [ep], ["all"])
    docs = {p.doc["name"]: p.doc for p in res.planned}
    seen = set()
    for name, insts in res.instances.items():
        for inst in insts:
            if not inst.trace:
                continue
            for call in calls_for(inst):
                out = normalise(trace_call(call), "replay")
                problem = validate(dict(out.doc, tags=out.doc["tags"] + ["model:x"]))
                assert problem == "" or "uint8" in str(out.doc), (name, problem)
                obs = Observed(out.doc, "replay", "replay", out.doc["name"], out.fired, out.also_as)
                rep = reconcile([Prediction(name, docs[name], insts)], [obs], Report(model, []),
                                lambda p: ("unexplained", ""))
                assert rep.rows[0]["status"] in ("matched", "differs", "renamed"), (name, out.doc["name"], rep.rows)
                seen.add(inst.env.get("quantization"))
    assert {"fp8", "nvfp4", "mxfp4"} <= seen, seen
