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
MODELS = [("llama-3.1-8b", []), ("deepseek-v3", ["--tp", "8", "--ep", "8"]), ("qwen3-30b-a3b", []),
          ("deepseek-v3.2", ["--tp", "8", "--ep", "8"]), ("qwen3-next-80b-a3b", ["--tp", "2"]), ("nemotron-h-8b", [])]


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


def _scenario_of(name):
    """uuid -> the scenario (batch, qo_len, kv_len) of each workload the dataset fixture asked for."""
    from defc.runners import workloads as W
    cfg = W.config()
    return {W.workload_uuid(name, sc["name"], cfg.get("seed", 0)): sc for sc in W.scenarios(cfg, ["smoke", "decode"])}


def _slots_by_row(x):
    return [[v for v in row if v >= 0] for row in x.tolist()]


# state-pool slot inputs and the axis that sizes their pool (the definitions' own docs)
SLOT_INPUTS = {"initial_state_indices": "pool_size", "state_batch_indices": "state_cache_size"}
# the cookbook serves Qwen3-Next with EAGLE, --speculative-num-draft-tokens 4
MTP_DRAFT_TOKENS = 4


def test_state_slots_and_sparse_indices(dataset):
    """Index structures of the hybrid and sparse-attention kernels, per workload against the serving
    point it was made for: state-pool slots distinct and inside the pool, one per sequence; sparse
    attention rows pick distinct token slots of their own sequence's tokens up to themselves (all of
    them when there are at most topk, -1 after), no page shared between sequences; the indexer's
    seq_lens and block table those of the sequences; GDN prefill's cu_seqlens the scenario's."""
    model, out, _ = dataset
    ts = fib.TraceSet.from_path(out)
    seen = set()
    for name, traces in sorted(ts.workloads.items()):
        defn = ts.definitions[name]
        scen = _scenario_of(name)
        for t in traces:
            sc = scen[t.workload.uuid]
            v = _check_workload(defn, t.workload, out)
            b, q, kv = sc["batch"], sc["qo_len"], sc["kv_len"]
            for k, pool in SLOT_INPUTS.items():
                if k in defn.inputs:
                    ids = v[k].tolist()
                    assert len(ids) == b and len(set(ids)) == b, (name, ids)
                    assert 0 <= min(ids) and max(ids) < v[pool], (name, ids, v[pool])
                    seen.add(k)
            if defn.op_type == "gdn" and "seq_len" in t.workload.axes:           # MTP at a decode step
                assert q == 1 and t.workload.axes["seq_len"] == MTP_DRAFT_TOKENS and v["batch_size"] == b
                seen.add("gdn_mtp")
            if "cu_seqlens" in defn.inputs:
                assert v["cu_seqlens"].tolist() == [i * q for i in range(b + 1)], name
                seen.add("cu_seqlens")
            if defn.op_type == "mamba_ssu":                  # per-head parameters tied along head_dim
                assert q == 1
                for k in ("dt", "A", "D", "dt_bias"):
                    x = v[k]
                    assert isinstance(x, torch.Tensor) and torch.equal(x, x[..., :1].expand_as(x)), (name, k)
            if "sparse_indices" in defn.inputs:
                ps, topk = v["page_size"], v["topk"]
                rows = _slots_by_row(v["sparse_indices"])
                assert len(rows) == b * q
                x = v["sparse_indices"]
                for r, row in enumerate(rows):           # valid entries first, then -1 padding
                    assert (x[r, len(row):] == -1).all()
                    assert len(set(row)) == len(row) and max(row) < v["num_pages"] * ps
                seqs = [rows[i * q:(i + 1) * q] for i in range(b)]
                pages = [set(s // ps for row in rs for s in row) for rs in seqs]
                assert sum(len(p) for p in pages) == len(set().union(*pages)), "a page shared by two sequences"
                for rs in seqs:
                    for j, row in enumerate(rs):         # token kv - q + j sees kv - q + j + 1 tokens
                        assert len(row) == min(kv - q + j + 1, topk), (name, sc["name"], j)
                        if j and len(row) <= topk and len(rs[j - 1]) < topk:
                            assert set(rs[j - 1]) < set(row)      # its own sequence's earlier tokens
                    assert len({s // ps for row in rs for s in row}) <= -(-kv // ps)
                seen.add("sparse_indices")
            if "block_table" in defn.inputs:
                ps = v["page_size"]
                assert v["seq_lens"].tolist() == [kv] * b
                used = v["block_table"][:, :-(-kv // ps)].flatten().tolist()
                assert len(set(used)) == len(used) and max(used) < v["num_pages"], name
                assert v["block_table"].shape[1] * ps >= v["topk"]
                seen.add("block_table")
    want = {"deepseek-v3.2": {"sparse_indices", "block_table"},
            "qwen3-next-80b-a3b": {"initial_state_indices", "gdn_mtp", "cu_seqlens"},
            "nemotron-h-8b": {"state_batch_indices"}}.get(model, set())
    assert want <= seen, want - seen


def test_sparse_indices_at_the_smoke_points(tmp_path):
    """Hand-counted: at smoke_decode_b2_kv17 each of the 2 rows holds the 17 tokens of its sequence
    (one 64-token page, offsets 0..16); at smoke_prefill_b2_q5_kv9 the 5 new tokens of a sequence see
    5..9 tokens."""
    out = str(tmp_path / "d")
    _defc("compile", "--model", "deepseek-v3.2", "--tp", "8", "--ep", "8", "--out", out, "-q", "dsa_paged")
    _defc("workloads", out, "--model", "deepseek-v3.2", "--tp", "8", "--ep", "8", "--scenarios", "smoke",
          "--no-solutions")
    ts = fib.TraceSet.from_path(out)
    name = "dsa_sparse_attention_h16_ckv512_kpe64_topk2048_ps64"
    by = {t.workload.axes["num_tokens"]: _check_workload(ts.definitions[name], t.workload, out)
          for t in ts.workloads[name]}
    assert sorted(by) == [2, 10]
    for row in _slots_by_row(by[2]["sparse_indices"]):
        assert sorted(s % 64 for s in row) == list(range(17)) and len({s // 64 for s in row}) == 1
    assert [len(r) for r in _slots_by_row(by[10]["sparse_indices"])] == [5, 6, 7, 8, 9] * 2
    (ix,) = ts.workloads["dsa_topk_indexer_fp8_h64_d128_topk2048_ps64"]
    assert ix.workload.axes["batch_size"] == 2 and ix.workload.axes["max_num_pages"] == 2048 // 64


def test_families_covered(dataset):
    model, out, _ = dataset
    ops = set(os.listdir(os.path.join(out, "workloads")))
    want = {"llama-3.1-8b": {"rmsnorm", "gemm", "activation", "sampling", "gqa_paged", "gqa_ragged", "rope"},
            "deepseek-v3": {"mla_paged", "mla_ragged", "moe", "gemm_fp8", "sampling", "rope"},
            "qwen3-30b-a3b": {"moe", "gqa_paged", "sampling", "rope"},
            "deepseek-v3.2": {"dsa_paged", "gemm_fp8", "moe", "sampling"},
            "qwen3-next-80b-a3b": {"gdn", "gqa_paged", "moe", "sampling"},
            "nemotron-h-8b": {"mamba_ssu", "gqa_paged", "sampling"}}[model]
    assert want <= ops, want - ops


# the models added for their hybrid / sparse-attention kernels: the op types whose references run
HYBRID_AND_SPARSE = {"deepseek-v3.2": {"dsa_paged"}, "qwen3-next-80b-a3b": {"gdn"}, "nemotron-h-8b": {"mamba_ssu"}}


def test_references_run_on_smoke(dataset):
    model, out, _ = dataset
    from flashinfer_bench.bench.utils import gen_inputs, load_safetensors
    ts = fib.TraceSet.from_path(out)
    smoke = _smoke_uuids()
    ran, ops = 0, set()
    only = HYBRID_AND_SPARSE.get(model)            # the other families run for the first three models
    for name, traces in sorted(ts.workloads.items()):
        defn = ts.definitions[name]
        if only and defn.op_type not in only:
            continue
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
            ops.add(defn.op_type)
    assert ran >= (1 if only else 5)
    assert (only or set()) <= ops, only - ops


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
    # vocab 129280, qk_rope_head_dim 64 (interleaved)
    "deepseek-v3.2": {("top_k_top_p_sampling_from_probs_v129280", "top_k"), ("top_p_sampling_from_probs_v129280", "top_p"),
                      ("rope_with_cos_sin_cache_gptj_style_d64_rd64", "positions")},
    # vocab 151936, head_dim 256 with partial_rotary_factor 0.25: 64 rotated dims
    "qwen3-next-80b-a3b": {("top_k_sampling_from_probs_v151936", "probs"),
                           ("rope_with_cos_sin_cache_neox_style_d256_rd64", "cos_sin_cache")},
    # vocab 131072 (no rotary embedding)
    "nemotron-h-8b": {("top_k_renorm_probs_v131072", "top_k"), ("top_p_sampling_from_probs_v131072", "top_p")},
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


def test_mxfp4_quantize_gets_workloads_and_fp4_moe_skip_says_why(tmp_path):
    """gpt-oss-20b: the MXFP4 activation quantize runs at every step (M = the step's tokens); the FP4
    MoE stays skipped: its float32 FP4-grid weights (32 x 5760 x 2880) are over the blob limit and
    flashinfer-bench's random cannot stand in (normal floats; no uint8 generator at all)."""
    from flashinfer_bench.bench.utils import _rand_tensor
    with pytest.raises(ValueError, match="Unsupported random dtype"):
        _rand_tensor([2], torch.uint8, torch.device("cpu"))
    out = str(tmp_path / "d")
    _defc("compile", "--model", "gpt-oss-20b", "--out", out, "-q", "quantize", "moe")
    text = _defc("workloads", out, "--model", "gpt-oss-20b", "--scenarios", "smoke", "--no-solutions", "-v")
    ts = fib.TraceSet.from_path(out)
    wls = ts.workloads["mxfp4_quantize_k2880"]
    assert sorted(t.workload.axes["M"] for t in wls) == [2, 10]
    for t in wls:
        _check_workload(ts.definitions["mxfp4_quantize_k2880"], t.workload, out)
    (line,) = [ln for ln in text.splitlines() if ln.startswith("skipped trtllm_fp4_block_scale_moe_")]
    assert f"{32 * 5760 * 2880 * 4:,}-byte blob" in line and "'e2m1'" in line, line
