"""Baseline solutions (runners/solutions.py): the generated FlashInfer solution passes FlashInfer the
very arguments ``defc verify --device cuda`` passes (the call verified on GPUs, reports/gpu/), and
returns the definition's outputs in the definition's shapes.

No GPU here, so the FlashInfer object the generated module looks up is replaced by a recorder: the
generated ``run()`` is executed on the same CPU inputs verify builds, and what it hands the API
(constructor, plan(), the call) is compared value by value with verify's own resolution."""
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("flashinfer")

from defc.runners import solutions as S  # noqa: E402
from defc.runners.verify import VerifyOptions, compile_for  # noqa: E402
from defc.runners.verify_calls import api_object, device_copies, kernel_call_args, resolve_args  # noqa: E402
from defc.runners.verify_inputs import NotRun, build_case, defaults  # noqa: E402
from defc.runners.verify_sides import alternative_for  # noqa: E402

MODELS = [  # (model, serving options): together every family with a FlashInfer call mapping
    ("llama-3.1-8b", {}),
    ("gpt-oss-20b", {}),                                   # sinks (the alternative wrapper), sliding window
    ("gemma-3-27b", {}),                                   # soft-free sliding window, gemma norms
    ("deepseek-v3", {"tp": [8], "ep": [8]}),               # MLA, FP8 GEMM, MoE
    ("deepseek-v3.2", {"tp": [8], "ep": [8]}),             # DSA sparse attention
    ("qwen3-next-80b-a3b", {"tp": [2]}),                   # GDN
    ("nemotron-h-8b", {}),                                 # Mamba
]
MAX_NUMEL = 1 << 24     # per input; larger definitions (whole MoE weights) are counted, not compared


class Recorder:
    """Stands in for FlashInfer's API: records how it is constructed, planned and called."""

    def __init__(self, outputs):
        self.calls = {}
        self.outputs = outputs

    def api(self, path):
        rec, outputs = self.calls, self.outputs
        rec["api"] = path

        def call(*a, **kw):
            rec["positional"], rec["args"] = list(a), kw
            return outputs()
        if path.split(".")[-1][:1].isupper():
            class Obj:
                def __init__(self, **kw):
                    rec["init"] = kw

                def plan(self, **kw):
                    rec["plan"] = kw

                def __getattr__(self, name):
                    rec["method"] = name
                    return call
            return Obj
        return call


def same(a, b, where):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape), (where, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), (where, sorted(a), sorted(b))
        for k in a:
            same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (tuple, list)):
        assert isinstance(b, (tuple, list)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6), where
    else:
        assert a == b, where


def generated_module(src):
    ns = {"__name__": "baseline_solution"}
    exec(compile(src, "<generated>", "exec"), ns)  # noqa: S102  (the generated solution, as flashinfer-bench runs it)
    return ns


def check_one(doc, inst):
    """Compare every generated FlashInfer solution of one definition with verify's call."""
    sols, why = S.flashinfer_solutions(doc, inst)
    if not sols:
        return [], why
    case = build_case(doc, inst, inst.verify, 0, defaults(), MAX_NUMEL)
    kb = (inst.verify or {}).get("kernel") or {}
    blocks = {"flashinfer": kb, "flashinfer_alternative": alternative_for(kb, case.env)}
    for stem, sol in sols:
        block = blocks[stem]
        label = "kernel" if stem == "flashinfer" else "kernel.alternative"
        tensors = device_copies(case, "cpu")
        api, positional, args = kernel_call_args(block, inst, case, "cpu", tensors, label)
        owner, attr, _ = api_object(api)
        returns = block.get("returns")
        names = list(doc["outputs"]) if returns is None else returns
        shapes = dict(zip(doc["outputs"], [tuple(case.values[a] for a in (t["shape"] or []))
                                           for t in doc["outputs"].values()]))

        def outputs():        # the API's results, flattened: the solution must give them the definition's shapes
            vals = [torch.arange(torch.Size(shapes[n]).numel()).to(torch.float32) for n in names if n]
            return None if not vals else vals[0] if len(vals) == 1 else tuple(vals)
        rec = Recorder(outputs)
        ns = generated_module(sol["sources"][0]["content"])
        ns["_api"] = rec.api
        got = ns["run"](*[v for v in case.inputs.values()])
        c = rec.calls
        assert c["api"] == (api if owner is None or attr != "run" or api.split(".")[-1][:1].isupper()
                            else api.rsplit(".", 1)[0]), (doc["name"], c["api"], api)
        same(c["positional"], positional, f"{doc['name']} {stem} positional")
        same(c["args"], args, f"{doc['name']} {stem} args")
        if owner is not None:
            same(c["init"], resolve_args(block.get("init") or {}, case, "cpu", "init", tensors),
                 f"{doc['name']} {stem} init")
            if "plan" in block:
                same(c["plan"], resolve_args(block["plan"], case, "cpu", "plan", tensors), f"{doc['name']} {stem} plan")
            assert c.get("method", "run") == attr
        outs = list(got) if isinstance(got, tuple) else [got]
        assert len(outs) == len(doc["outputs"]), doc["name"]
        for (o, shape), v in zip(shapes.items(), outs):
            assert tuple(v.shape) == shape, (doc["name"], stem, o, tuple(v.shape), shape)
    return [s for s, _ in sols], why


@pytest.mark.parametrize("model,serving", MODELS, ids=[m for m, _ in MODELS])
def test_generated_flashinfer_calls_pass_what_verify_passes(model, serving):
    _, items = compile_for(VerifyOptions(model=model, **serving))
    compared, too_big, without = [], [], []
    for doc, inst in items:
        try:
            stems, why = check_one(doc, inst)
        except NotRun as e:
            too_big.append((doc["name"], str(e)))
            continue
        if stems:
            compared.append(doc["name"])
        else:
            without.append((doc["name"], why))
    assert compared, model
    # every definition with a FlashInfer API gets a FlashInfer solution, or says why not
    for name, why in without:
        assert why and all(w for w in why), name
    by_name = {doc["name"]: (doc, inst) for doc, inst in items}
    for name, why in too_big:          # only inputs over the CPU size cap go uncompared; still generated
        assert "elements" in why, (name, why)
        doc, inst = by_name[name]
        sols, no = S.flashinfer_solutions(doc, inst)
        assert sols or no, name
        for _, sol in sols:
            assert "def run(" + ", ".join(doc["inputs"]) + "):" in sol["sources"][0]["content"]
    print(f"{model}: {len(compared)} compared, {len(too_big)} over the CPU cap, {len(without)} without a call", too_big, without)


def test_every_family_with_a_call_mapping_is_generated():
    # which families the models above reach with a generated FlashInfer call (written by hand from
    # the specs' verify.kernel / trace: blocks): none may fall back to reference-only silently
    want = {"gqa_paged", "gqa_ragged", "mla_paged", "mla_ragged", "dsa_paged", "rmsnorm", "rope", "activation",
            "cascade_merge", "page_append", "sampling", "gdn", "mamba_ssu", "gemm_fp8", "moe"}
    seen = set()
    for model, serving in MODELS:
        _, items = compile_for(VerifyOptions(model=model, **serving))
        for doc, inst in items:
            sols, _ = S.flashinfer_solutions(doc, inst)
            if sols:
                seen.add(doc["op_type"])
    assert want <= seen, sorted(want - seen)


def test_sink_definitions_get_the_sink_wrapper_and_say_why_the_default_is_left_out():
    _, items = compile_for(VerifyOptions(model="gpt-oss-20b", names=["gqa_paged_decode_h64_kv8_d64_ps1_sink"]))
    doc, inst = items[0]
    sols, why = S.flashinfer_solutions(doc, inst)
    assert [s for s, _ in sols] == ["flashinfer_alternative"]
    assert "BatchAttentionWithAttentionSinkWrapper" in sols[0][1]["sources"][0]["content"]
    assert any("Hopper" in w for w in why)


def test_compile_with_workloads_gives_a_dataset_flashinfer_bench_loads(tmp_path):
    # defc compile --workloads: definitions, workloads and both baseline solutions in one command
    fib = pytest.importorskip("flashinfer_bench")
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = str(tmp_path / "ds")
    cmd = [sys.executable, "-m", "defc.cli", "compile", "--model", "llama-3.1-8b", "--out", out, "--workloads",
           "--scenarios", "smoke"]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "baseline solution(s) (18 calling FlashInfer, 5 definition(s) without one" in r.stdout, r.stdout
    ts = fib.TraceSet.from_path(out)
    assert len(ts.definitions) == 23 and set(ts.workloads) == set(ts.definitions)
    by_def = {d: sorted(s.name.rsplit("__", 1)[1] for s in sols) for d, sols in ts.solutions.items()}
    assert set(by_def) == set(ts.definitions)
    gemm = [d for d in by_def if d.startswith("gemm_")]
    # the bf16 GEMMs name no FlashInfer API (as curated): the reference only
    assert len(gemm) == 5 and all(by_def[d] == ["baseline_reference"] for d in gemm)
    assert all(by_def[d] == ["baseline_flashinfer", "baseline_reference"] for d in by_def if d not in gemm), by_def
    for sols in ts.solutions.values():
        for s in sols:
            if s.name.endswith("baseline_flashinfer"):
                assert s.spec.dependencies == ["torch", "flashinfer"] and not s.spec.destination_passing_style
    # again: the same bytes
    files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(out, "solutions")) for f in fs)
    before = {p: open(p, "rb").read() for p in files}
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert before == {p: open(p, "rb").read() for p in files}


@pytest.mark.parametrize("model,tp,ep", [("deepseek-v3", 8, 8), ("qwen3-30b-a3b", 1, 1), ("gpt-oss-20b", 1, 1),
                                         ("qwen3-next-80b-a3b", 2, 1)])
def test_moe_calls_at_the_verify_reduction_pass_what_verify_passes(model, tp, ep, tmp_path):
    # whole MoE weights are over the CPU cap: the same reduction as tests/test_verify_moe.py (hidden 256,
    # 16 experts, per-rank intermediate 128, the model's routing keys and serving config)
    import json
    from test_verify_moe import reduced_config
    path = tmp_path / f"{model}.json"
    path.write_text(json.dumps(reduced_config(model, tp // ep)))
    _, items = compile_for(VerifyOptions(model=str(path), tp=[tp], ep=[ep], quantization=["all"], specs=["moe"]))
    compared, without = [], []
    for doc, inst in items:
        try:
            stems, why = check_one(doc, inst)
        except NotRun as e:           # e.g. FP4 weights at this reduction: named by verify
            assert "elements" not in str(e), (doc["name"], str(e))
            continue
        compared += [(doc["name"], s) for s in stems]
        if not stems:
            without.append((doc["name"], why))
    if model == "gpt-oss-20b":
        # its MoE is FP4 (MXFP4): the spec only traces it (packed weights as a stand-in), so no
        # FlashInfer baseline is generated, and each definition says why
        assert not compared and without
        assert all(any("tracing stand-in" in w for w in why) for _, why in without), without
    else:
        assert compared, model


def test_tied_mamba_parameters_reach_the_kernel_as_broadcast_views():
    # FlashInfer's selective_state_update takes dt, dt_bias, D per head and A per head as stride-0
    # broadcasts (as SGLang serves them); a workload stores them as full tensors (tied values), so the
    # solution must make the broadcast views again
    _, items = compile_for(VerifyOptions(model="nemotron-h-8b", op_types=["mamba_ssu"]))
    doc, inst = items[0]
    sols, why = S.flashinfer_solutions(doc, inst)
    assert [s for s, _ in sols] == ["flashinfer"], why
    case = build_case(doc, inst, inst.verify, 0, defaults(), MAX_NUMEL)
    full = {k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in case.inputs.items()}
    rec = Recorder(lambda: torch.zeros(tuple(case.values[a] for a in doc["outputs"]["output"]["shape"])))
    ns = generated_module(sols[0][1]["sources"][0]["content"])
    ns["_api"] = rec.api
    ns["run"](*full.values())
    args = rec.calls["args"]
    for name, dims in (("dt", [-1]), ("D", [-1]), ("dt_bias", [-1]), ("A", [-1, -2])):
        t = args[name]
        assert all(t.stride(d) == 0 for d in dims), (name, t.stride())
        assert torch.equal(t, full[name])                    # the same values
    assert args["x"].is_contiguous() and args["x"].stride(-1) == 1


def _cli(root, *args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "defc.cli", *args], cwd=root, capture_output=True, text=True)


def test_workload_and_solution_files_are_never_overwritten_silently(tmp_path):
    import json
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = str(tmp_path / "ds")
    r = _cli(root, "compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", out, "--workloads", "--scenarios", "smoke")
    assert r.returncode == 0, r.stderr
    wl = os.path.join(out, "workloads", "rmsnorm", "rmsnorm_h4096.jsonl")
    sol = os.path.join(out, "solutions", "baseline", "rmsnorm", "rmsnorm_h4096", "flashinfer.json")
    smoke = [json.loads(x) for x in open(wl)]
    assert len(smoke) == 2                                   # the two smoke points
    # another scenario set adds its lines; the smoke ones stay
    r = _cli(root, "workloads", out, "--model", "llama-3.1-8b", "--scenarios", "decode", "--definitions", "rmsnorm_h4096")
    assert r.returncode == 0, r.stderr
    both = [json.loads(x) for x in open(wl)]
    assert both[:2] == smoke and len(both) == 2 + 4
    # a user's own workload and an edited defc workload; a hand-edited solution
    mine = json.loads(json.dumps(both[2]))
    mine["workload"]["uuid"] = "my-own-workload"
    both[0]["workload"]["axes"]["batch_size"] = 999
    edited = "".join(json.dumps(x) + "\n" for x in both + [mine])
    open(wl, "w").write(edited)
    open(sol, "w").write('{"edited": true}\n')
    r = _cli(root, "workloads", out, "--model", "llama-3.1-8b", "--scenarios", "smoke,decode", "--definitions", "rmsnorm_h4096")
    assert r.returncode == 1
    assert f"defc: collision: {wl}: differs from what defc writes; left as it is" in r.stderr
    assert f"defc: collision: {sol}: differs from what defc writes; left as it is" in r.stderr
    assert open(wl).read() == edited and open(sol).read() == '{"edited": true}\n'
    # --force: defc's workload line and solution back, the user's own line kept, the old files as .bak
    r = _cli(root, "workloads", out, "--model", "llama-3.1-8b", "--scenarios", "smoke,decode", "--definitions",
             "rmsnorm_h4096", "--force")
    assert r.returncode == 0, r.stderr
    now = [json.loads(x) for x in open(wl)]
    assert now[0] == smoke[0] and now[-1] == mine and len(now) == 7
    assert open(wl + ".bak").read() == edited and open(sol + ".bak").read() == '{"edited": true}\n'
    assert json.load(open(sol))["name"] == "rmsnorm_h4096__baseline_flashinfer"


def test_two_workload_runs_at_once_lose_no_line(tmp_path):
    # both take the dataset lock in turn: the file ends with both scenario sets' lines, in either order
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = str(tmp_path / "ds")
    assert _cli(root, "compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", out, "-q").returncode == 0
    cmds = [[sys.executable, "-m", "defc.cli", "workloads", out, "--model", "llama-3.1-8b", "--scenarios", s, "-q"]
            for s in ("smoke", "decode")]
    procs = [subprocess.Popen(c, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for name in ("rmsnorm_h4096", "fused_add_rmsnorm_h4096"):
        lines = [json.loads(x) for x in open(os.path.join(out, "workloads", "rmsnorm", f"{name}.jsonl"))]
        assert len(lines) == 2 + 4 and len({x["workload"]["uuid"] for x in lines}) == 6, name
