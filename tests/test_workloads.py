"""defc workloads: a compiled dataset gets flashinfer-bench workloads and baseline solutions that
flashinfer_bench's TraceSet loads; every workload is valid against its definition; references run
on the smoke workloads."""
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")
fib = pytest.importorskip("flashinfer_bench")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFC = [sys.executable, "-c", "import sys; from defc.cli import main; sys.exit(main())"]
MODELS = [("llama-3.1-8b", []), ("deepseek-v3", ["--tp", "8", "--ep", "8"]), ("qwen3-30b-a3b", [])]


def _defc(*args):
    r = subprocess.run(DEFC + list(args), cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
    return r.stdout


@pytest.fixture(scope="module", params=MODELS, ids=[m for m, _ in MODELS])
def dataset(request, tmp_path_factory):
    model, serving = request.param
    out = str(tmp_path_factory.mktemp(model))
    _defc("compile", "--model", model, *serving, "--out", out, "-q")
    text = _defc("workloads", out, "--model", model, *serving, "--scenarios", "smoke,decode")
    return model, out, text


def _check_workload(defn, wl, root):
    var = [k for k, a in defn.axes.items() if a.type == "var"]
    assert sorted(wl.axes) == sorted(var)
    assert all(wl.axes[k] > 0 for k in var)
    assert sorted(wl.inputs) == sorted(defn.inputs)
    shapes = dict(zip(defn.inputs, defn.get_input_shapes(wl.axes)))
    scope = dict(wl.axes)
    scope.update({k: a.value for k, a in defn.axes.items() if a.type == "const"})
    for name, spec in defn.inputs.items():
        inp = wl.inputs[name]
        if spec.shape is None:
            assert inp.type == "scalar", name
            scope[name] = inp.value
            continue
        assert inp.type in ("random", "safetensors"), name
        if spec.dtype.startswith("int") or spec.dtype == "bool":
            assert inp.type == "safetensors", f"{name}: an index/int tensor must be stored"
        if inp.type == "safetensors":
            assert not os.path.isabs(inp.path)
            t = st.load_file(os.path.join(root, inp.path))[inp.tensor_key]
            assert tuple(t.shape) == tuple(shapes[name]), name
            assert str(t.dtype) == "torch." + spec.dtype, name
            scope[name] = t
        else:
            scope[name] = torch.empty(shapes[name], device="meta")
    for c in defn.constraints or []:
        assert eval(c, {"__builtins__": {}}, dict(scope)), (defn.name, c)   # noqa: S307
    return scope


def test_traceset_loads(dataset):
    model, out, text = dataset
    ts = fib.TraceSet.from_path(out)
    assert ts.definitions and ts.workloads
    assert set(ts.workloads) <= set(ts.definitions)
    # one baseline solution per definition, for its definition
    assert set(ts.solutions) == set(ts.definitions)
    assert "skipped" in text or "0 skipped" in text


def test_every_workload_valid(dataset):
    model, out, _ = dataset
    ts = fib.TraceSet.from_path(out)
    n = 0
    for name, traces in ts.workloads.items():
        for t in traces:
            _check_workload(ts.definitions[name], t.workload, out)
            n += 1
    assert n > 20


def test_paged_index_structures(dataset):
    """Hand-checked facts of the smoke decode point (2 sequences of 17 cached tokens)."""
    model, out, _ = dataset
    ts = fib.TraceSet.from_path(out)
    for name, traces in ts.workloads.items():
        if "_paged_decode_" not in name:
            continue
        defn = ts.definitions[name]
        ps = defn.axes["page_size"].value
        t = [t for t in traces if t.workload.axes["batch_size"] == 2][0].workload
        sc = _check_workload(defn, t, out)
        pages = -(-17 // ps)
        assert sc["kv_indptr"].tolist() == [0, pages, 2 * pages]
        ids = sc["kv_indices"].tolist()
        assert len(set(ids)) == len(ids) and max(ids) < t.axes["num_pages"]
        if "kv_last_page_len" in sc:
            assert sc["kv_last_page_len"].tolist() == [17 - (pages - 1) * ps] * 2


def test_families_covered(dataset):
    model, out, _ = dataset
    ops = set(os.listdir(os.path.join(out, "workloads")))
    want = {"llama-3.1-8b": {"rmsnorm", "gemm", "activation", "sampling", "gqa_paged", "gqa_ragged"},
            "deepseek-v3": {"mla_paged", "mla_ragged", "moe", "gemm_fp8", "sampling"},
            "qwen3-30b-a3b": {"moe", "gqa_paged", "sampling"}}[model]
    assert want <= ops, want - ops


def test_references_run_on_smoke(dataset):
    model, out, _ = dataset
    from flashinfer_bench.bench.utils import gen_inputs, load_safetensors
    ts = fib.TraceSet.from_path(out)
    ran = 0
    for name, traces in sorted(ts.workloads.items()):
        defn = ts.definitions[name]
        for t in traces:
            if any(v > 64 for k, v in t.workload.axes.items() if "page" not in k and "indices" not in k):
                continue                                     # smoke points only
            if defn.op_type in ("moe", "gemm_fp8", "gemm") and defn.op_type != "gemm":
                continue                                     # dequantised weights: too big for a test
            safe = load_safetensors(defn, t.workload, ts.root) if any(
                i.type == "safetensors" for i in t.workload.inputs.values()) else None
            args = gen_inputs(defn, t.workload, "cpu", safe)
            ns = {}
            exec(compile(defn.reference, name, "exec"), ns)  # noqa: S102
            ns["run"](*args)
            ran += 1
    assert ran >= 5


def test_reproducible(tmp_path):
    out = str(tmp_path / "d")
    _defc("compile", "--model", "llama-3.1-8b", "--out", out, "-q", "gqa_paged", "sampling")
    def snap():
        _defc("workloads", out, "--model", "llama-3.1-8b", "--scenarios", "smoke")
        files = {}
        for d, _, fs in os.walk(out):
            for f in fs:
                if "/definitions" not in d:
                    files[os.path.relpath(os.path.join(d, f), out)] = open(os.path.join(d, f), "rb").read()
        return files
    a = snap()
    b = snap()
    assert a == b and any(k.endswith(".safetensors") for k in a)
