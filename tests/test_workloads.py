"""defc workloads: a compiled dataset gets flashinfer-bench workloads and baseline solutions that
flashinfer_bench's TraceSet loads; every workload is valid against its definition; references run
on the smoke workloads."""
import functools
import inspect
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


def _smoke_uuids():
    """The uuids of the smoke workloads (runners/workloads.yaml's smoke set; seeded names)."""
    from defc.runners import workloads as W
    cfg = W.config()
    return lambda name: {W.workload_uuid(name, sc["name"], cfg.get("seed", 0))
                         for sc in W.scenarios(cfg, ["smoke"])}


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
    want = {"llama-3.1-8b": {"rmsnorm", "gemm", "activation", "sampling", "gqa_paged", "gqa_ragged", "rope"},
            "deepseek-v3": {"mla_paged", "mla_ragged", "moe", "gemm_fp8", "sampling", "rope"},
            "qwen3-30b-a3b": {"moe", "gqa_paged", "sampling", "rope"}}[model]
    assert want <= ops, want - ops


def test_references_run_on_smoke(dataset):
    model, out, _ = dataset
    from flashinfer_bench.bench.utils import gen_inputs, load_safetensors
    ts = fib.TraceSet.from_path(out)
    smoke = _smoke_uuids()
    ran = 0
    for name, traces in sorted(ts.workloads.items()):
        defn = ts.definitions[name]
        for t in traces:
            if t.workload.uuid not in smoke(name):
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
    _defc("compile", "--model", "llama-3.1-8b", "--out", out, "-q", "gqa_paged", "sampling", "rope")
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


# ---------------------------------------------------------------------------------------------
# value ranges: FlashInfer's template inits as the oracle

@functools.lru_cache(maxsize=None)
def _template_inits():
    """name_prefix -> init of every FlashInfer trace template that has one (for APIs whose fi_init
    dispatches on call arguments, e.g. the MoE routing method)."""
    import importlib
    import pkgutil
    import flashinfer.trace.templates as T
    from flashinfer.trace.template import TraceTemplate
    out = {}
    for m in pkgutil.iter_modules(T.__path__):
        try:
            mod = importlib.import_module(f"{T.__name__}.{m.name}")
        except Exception:                                   # a module needing a GPU-only package
            continue
        for v in vars(mod).values():
            if isinstance(v, TraceTemplate) and v.init is not None and v.name_prefix:
                out[v.name_prefix] = v.init
    return out


def _init_of(api, names):
    """The init of the template for this definition: the API's fi_init, or where that dispatches
    (**kwargs), the template whose name prefix one of the definition's names (its own, the
    dumper's aliases) starts with."""
    from defc.runners.flashinfer_api import resolve_api
    fn = getattr(resolve_api(api), "fi_init", None)
    if fn is None:
        return None
    if any(p.kind != p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        return fn
    inits = _template_inits()
    hits = [p for p in inits if any(n.startswith(p + "_") for n in names)]
    assert hits, (api, names)
    return inits[max(hits, key=len)]


# sizes for calling an init small (its other parameters: the definition's const axes, else the init's
# defaults); the properties below do not depend on sizes
SMALL = {"batch_size": 3, "num_tokens": 5, "nnz": 5, "nnz_kv": 5, "seq_len": 3, "M": 3, "total_q": 5, "max_seq_len": 24,
         "hidden_size": 256, "intermediate_size": 128, "num_local_experts": 2, "N": 256, "K": 256}


def _positive(x):
    return bool((torch.as_tensor(x) > 0).all())


def _stochastic_rows(x):
    return bool((x >= 0).all()) and torch.allclose(x.double().sum(-1), torch.ones(x.shape[0], dtype=torch.float64),
                                                   atol=1e-4)


def _rotation_table(x):
    h = x.shape[-1] // 2
    return bool((x.abs() <= 1).all()) and torch.allclose(x[:, :h] ** 2 + x[:, h:] ** 2, torch.ones_like(x[:, :h]),
                                                         atol=1e-5)


def _int_in(x, lo, hi):
    t = torch.as_tensor(x)
    return not t.is_floating_point() and bool(((t >= lo) & (t <= hi)).all())


# input name -> what FlashInfer's inits make of it (tests/utils of FlashInfer, through the templates'
# init docstrings): (inputs, sizes) -> bool, checked on the init's output first (the oracle agrees)
PROPERTIES = {
    "probs": lambda v, n: _stochastic_rows(v["probs"]),                                 # softmax rows
    "top_k": lambda v, n: _int_in(v["top_k"], 1, v["probs"].shape[-1]),                 # 1 <= k <= vocab
    "top_p": lambda v, n: bool(((v["top_p"] > 0) & (v["top_p"] <= 1)).all()),           # 0 < p <= 1
    "positions": lambda v, n: _int_in(v["positions"], 0, v["cos_sin_cache"].shape[0] - 1),   # rows of the cache
    "cos_sin_cache": lambda v, n: _rotation_table(v["cos_sin_cache"]),                   # cos | sin halves
    "a_scale": lambda v, n: _positive(v["a_scale"]),
    "b_scale": lambda v, n: _positive(v["b_scale"]),
    "hidden_states_scale": lambda v, n: _positive(v["hidden_states_scale"]),
    "gemm1_weights_scale": lambda v, n: _positive(v["gemm1_weights_scale"]),
    "gemm2_weights_scale": lambda v, n: _positive(v["gemm2_weights_scale"]),
    "routed_scaling_factor": lambda v, n: _positive(v["routed_scaling_factor"]),
    "local_expert_offset": lambda v, n: _int_in(v["local_expert_offset"], 0,
                                                n["num_experts"] - n["num_local_experts"]),
}
# (input, why) where the definition's dtype is not the init's, on purpose
DTYPE_DIFFERENCES = {
    "positions": "SGLang passes int64 positions to apply_rope_with_cos_sin_cache (the init builds int32)",
}
# what must have been checked per model (definition prefix, input), by hand from the model configs
MUST_CHECK = {
    "llama-3.1-8b": {("top_k_sampling_from_probs_v128256", "probs"), ("top_k_sampling_from_probs_v128256", "top_k"),
                     ("top_p_sampling_from_probs_v128256", "top_p"), ("top_k_renorm_probs_v128256", "top_k"),
                     ("top_k_top_p_sampling_from_probs_v128256", "top_p"),
                     ("rope_with_cos_sin_cache_neox_style_d128_rd128", "positions"),
                     ("rope_with_cos_sin_cache_neox_style_d128_rd128", "cos_sin_cache")},
    "deepseek-v3": {("top_k_top_p_sampling_from_probs_v129280", "top_k"),
                    ("rope_with_cos_sin_cache_gptj_style_d64_rd64", "cos_sin_cache"),
                    ("gemm_fp8_nt_groupwise_n7168_k2048", "a_scale"), ("gemm_fp8_nt_groupwise_n7168_k2048", "b_scale"),
                    ("moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048", "gemm1_weights_scale"),
                    ("moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048", "routed_scaling_factor"),
                    ("moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048", "local_expert_offset")},
    "qwen3-30b-a3b": {("top_p_sampling_from_probs_v151936", "probs"),
                      ("rope_with_cos_sin_cache_neox_style_d128_rd128", "positions"),
                      ("moe_fp8_block_scale_renorm_topk8_e128_h2048_i768", "hidden_states_scale")},
}


def test_values_follow_flashinfer_inits(dataset):
    """Every definition whose FlashInfer template has an init: on each smoke workload, the inputs
    whose values matter are stored (not flashinfer-bench's normal `random`) with the properties the
    init's own inputs have (distributions, thresholds in range, positions inside the cache, a
    rotation table, positive scales), and stored tensors have the init's dtypes."""
    model, out, _ = dataset
    from defc.runners import workloads as W
    serving = dict(MODELS)[model]
    opts = dict(zip(serving[::2], serving[1::2]))
    inst = W.instances_for(model, [int(opts["--tp"])] if "--tp" in opts else None,
                           [int(opts["--ep"])] if "--ep" in opts else None)
    ts = fib.TraceSet.from_path(out)
    smoke = _smoke_uuids()
    checked = set()
    for name, defn in sorted(ts.definitions.items()):
        api = [t[len("fi_api:"):] for t in defn.tags or [] if t.startswith("fi_api:")]
        if not api or name not in ts.workloads:
            continue
        init = _init_of(api[0], [name] + [a["name"] for a in inst[name].aliases])
        if init is None:
            continue
        params = inspect.signature(init).parameters
        consts = {k: a.value for k, a in defn.axes.items() if a.type == "const"}
        kw = {k: SMALL[k] if k in SMALL else consts[k] if k in consts else 2 for k, p in params.items()
              if k in SMALL or k in consts or (p.default is p.empty and p.kind == p.KEYWORD_ONLY)}
        try:
            ref = init(device="cpu", **kw)
        except ModuleNotFoundError as e:                  # e.g. an init that needs triton (GPU only)
            assert e.name in ("triton",), e
            continue
        ref = ref.get("run", ref) | ref.get("plan", {}) if "run" in ref else ref
        sizes = {**consts, **kw}
        for k, prop in PROPERTIES.items():
            if k in defn.inputs and k in ref and ref[k] is not None:
                assert prop(ref, sizes), f"{name}: FlashInfer's init itself breaks the property of '{k}'"
        for t in ts.workloads[name]:
            if t.workload.uuid not in smoke(name):
                continue
            vals, stored = {}, set()
            for k, inp in t.workload.inputs.items():
                if inp.type == "safetensors":
                    vals[k] = st.load_file(os.path.join(out, inp.path))[inp.tensor_key]
                    stored.add(k)
                elif inp.type == "scalar":
                    vals[k] = inp.value
                    stored.add(k)
            wsizes = {**consts, **t.workload.axes}
            for k, prop in PROPERTIES.items():
                if k not in defn.inputs or k not in ref or ref[k] is None:
                    continue
                assert k in stored, f"{name}: '{k}' is left to flashinfer-bench's random (a normal distribution)"
                assert prop(vals, wsizes), f"{name}: '{k}' does not have the values FlashInfer's init gives it"
                checked.add((name, k))
            for k, x in vals.items():
                r = ref.get(k)
                if isinstance(x, torch.Tensor) and isinstance(r, torch.Tensor) and k not in DTYPE_DIFFERENCES:
                    assert x.dtype == r.dtype, (name, k, x.dtype, r.dtype)
    assert MUST_CHECK[model] <= checked, MUST_CHECK[model] - checked
