"""defc validate: flashinfer-bench's schema and newer checks, reports, and CPU runs of the references."""
import glob
import json
import os
import random

from defc.authoring.validate import choose_axes, validate_dataset
from conftest import compile_defs
from defc.cli import main

REF_SEGMENT_SUM = """import torch


def run(x, indptr, lens, scale):
    batch = indptr.shape[0] - 1
    assert x.shape[0] == int(indptr[-1].item())
    assert lens.shape == (batch,)
    out = torch.stack([x[int(indptr[b]):int(indptr[b + 1])].float().sum(0) for b in range(batch)])
    return (out * scale).to(x.dtype)
"""


def segment_sum(name="segsum_d8", reference=REF_SEGMENT_SUM, out_dtype="bfloat16", x_dtype="bfloat16"):
    """A paged-style definition: ragged rows addressed by an indptr, as the attention families have."""
    return {
        "name": name, "description": "Sum of each sequence's rows.", "op_type": "segsum",
        "tags": ["status:reference", "stage:prefill"],
        "axes": {"total": {"type": "var", "description": "rows"}, "len_indptr": {"type": "var", "description": "b+1"},
                 "batch_size": {"type": "var", "description": "sequences"},
                 "d": {"type": "const", "value": 8, "description": "width"}},
        "constraints": ["len_indptr == batch_size + 1", "total == indptr[-1].item()"],
        "inputs": {"x": {"shape": ["total", "d"], "dtype": x_dtype, "description": "rows"},
                   "indptr": {"shape": ["len_indptr"], "dtype": "int32", "description": "offsets"},
                   "lens": {"shape": ["batch_size"], "dtype": "int32", "description": "lengths"},
                   "scale": {"shape": None, "dtype": "float32", "description": "scale"}},
        "outputs": {"y": {"shape": ["batch_size", "d"], "dtype": out_dtype, "description": "sums"}},
        "reference": reference,
    }


def put(root, doc, op_dir=None, fname=None, raw=None):
    d = os.path.join(root, "definitions", op_dir or doc["op_type"])
    os.makedirs(d, exist_ok=True)
    p = os.path.join(d, (fname or doc["name"]) + ".json")
    with open(p, "w") as fh:
        fh.write(raw if raw is not None else json.dumps(doc, indent=2))
    return p


def by_def(report):
    out = {}
    for f in report.findings:
        out.setdefault(f.definition, []).append(f)
    return out


def test_compiled_rmsnorm_validates_and_references_run(tmp_path, capsys):
    compile_defs(tmp_path, "llama-3.1-8b", specs=["rmsnorm"])
    ds = str(tmp_path / "ds")
    assert main(["validate", ds, "--run-references"]) == 0
    out = capsys.readouterr().out
    assert "2 definitions: 2 ok, 0 warning, 0 error; 2 reference(s) run on CPU" in out
    reports = glob.glob(os.path.join(ds, "reports", "report-*.txt"))
    assert len(reports) == 1 and "--- rmsnorm/rmsnorm_h4096 [OK] ---" in open(reports[0]).read()
    # a second run in the same second never overwrites the first report
    assert main(["validate", ds]) == 0
    assert len(glob.glob(os.path.join(ds, "reports", "report-*.txt"))) == 2
    assert len(glob.glob(os.path.join(ds, "reports", "report-*.json"))) == 2
    capsys.readouterr()


def test_layout_schema_and_flashinfer_bench_checks(tmp_path, capsys):
    root = str(tmp_path / "ds")
    good = segment_sum()
    put(root, good)
    put(root, good, op_dir="other")                                     # duplicate name, wrong folder
    put(root, dict(good, name="renamed"), fname="segsum_misnamed")       # file name != name
    bad = segment_sum("bad_d8")
    bad["inputs"]["x"]["dtype"] = "unknown"
    bad["outputs"]["lens"] = {"shape": ["batch_size"], "dtype": "int32", "description": "dup"}
    bad["axes"]["d"]["value"] = 0
    bad["axes"]["orphan"] = {"type": "var", "description": "in no input"}
    bad["tags"] = ["status:verified", "colour:red"]
    bad["reference"] = "def forward(x):\n    return x\n"
    del bad["description"]
    del bad["inputs"]["lens"]["description"]
    put(root, bad)
    syn = segment_sum("syntax_d8", reference="def run(x:\n    pass\n")
    put(root, syn)
    put(root, None, op_dir="segsum", fname="broken", raw='{"name": "broken",\n  "op_type": }\n')
    os.makedirs(os.path.join(root, "definitions", "deep", "er"))
    with open(os.path.join(root, "definitions", "deep", "er", "x.json"), "w") as fh:
        fh.write("{}")
    rep = validate_dataset(root)
    f = by_def(rep)
    msgs = {k: [x.message for x in v] for k, v in f.items()}
    assert any(m.startswith("duplicate definition name:") for m in msgs["segsum/segsum_d8"])
    assert "definition op_type mismatch: path says 'other', JSON says 'segsum'" in msgs["other/segsum_d8"]
    assert "definition name mismatch: path says 'segsum_misnamed', JSON says 'renamed'" in msgs["segsum/segsum_misnamed"]
    b = msgs["segsum/bad_d8"]
    for want in ("inputs.x: dtype 'unknown' is not concrete", "'lens' is both an input and an output",
                 "const axis 'd' must be positive, got 0", "var axis 'orphan' appears in no input shape",
                 "tag 'colour:red' has unknown namespace", "reference does not define a top-level function 'run'",
                 "missing description", "missing description: inputs.lens"):
        assert any(m.startswith(want) for m in b), (want, b)
    levels = {x.message: x.level for x in f["segsum/bad_d8"]}
    assert levels["missing description"] == "WARNING" and levels["missing description: inputs.lens"] == "WARNING"
    assert any(m.startswith("reference does not compile") for m in msgs["segsum/syntax_d8"])
    broken = f["segsum/broken"][0]
    assert (broken.line, broken.col) == (2, 14) and broken.message.startswith("parse error: invalid JSON")
    assert any("flashinfer-bench skips it" in x.message for x in rep.findings)
    # located lines: the dtype error points at the "dtype" key of inputs.x in the file
    dt = [x for x in f["segsum/bad_d8"] if "not concrete" in x.message][0]
    with open(os.path.join(root, "definitions", "segsum", "bad_d8.json")) as fh:
        assert '"dtype": "unknown"' in fh.read().splitlines()[dt.line - 1]
    assert main(["validate", root, "--no-report"]) == 1
    out = capsys.readouterr().out
    assert "[ERROR] " in out and "[WARNING] " in out and "Traceback" not in out
    for line in out.splitlines():
        if line.startswith("[ERROR] "):
            assert ": error: " in line and line.split(" ")[1].count(":") >= 3
    # a valid definition the schema accepts stays clean
    assert "segsum/segsum_d8" in rep.definitions


def test_references_run_on_consistent_inputs(tmp_path, capsys):
    root = str(tmp_path / "ds")
    put(root, segment_sum())
    put(root, segment_sum("fp8in_d8", x_dtype="float8_e4m3fn", out_dtype="float8_e4m3fn"))
    put(root, segment_sum("wrongshape_d8", reference=REF_SEGMENT_SUM.replace("return (out * scale)", "return (out[:1] * scale)")))
    put(root, segment_sum("wrongdtype_d8", out_dtype="float32"))
    put(root, segment_sum("raises_d8", reference="def run(x, indptr, lens, scale):\n    raise ValueError('nope')\n"))
    put(root, segment_sum("twice_d8", reference=REF_SEGMENT_SUM.replace("return (out * scale).to(x.dtype)",
                                                                          "return out, out")))
    rep = validate_dataset(root, run_references=True)
    msgs = {k: [x.message for x in v] for k, v in by_def(rep).items()}
    assert "segsum/segsum_d8" not in msgs and "segsum/fp8in_d8" not in msgs
    assert rep.ran == 2
    assert any(m.startswith("output 'y': shape (1, 8), expected (") for m in msgs["segsum/wrongshape_d8"])
    assert "output 'y': dtype bfloat16, expected float32" in msgs["segsum/wrongdtype_d8"]
    assert any(m.startswith("reference raised ValueError: nope") for m in msgs["segsum/raises_d8"])
    assert any(m.startswith("run returned 2 value(s), the definition declares 1 output(s)") for m in msgs["segsum/twice_d8"])
    capsys.readouterr()


def test_axis_values_satisfy_constraints():
    rng = random.Random(0)
    values, indptrs = choose_axes(segment_sum(), rng)
    assert values["len_indptr"] == values["batch_size"] + 1
    assert values["total"] == indptrs["indptr"][-1] and len(indptrs["indptr"]) == values["len_indptr"]
    gated = {"axes": {"n": {"type": "var"}, "h": {"type": "const", "value": 64}, "half": {"type": "var"}},
             "constraints": ["h == 2 * half"], "inputs": {"x": {"shape": ["n", "h"], "dtype": "bfloat16"}}}
    values, _ = choose_axes(gated, rng)
    assert values["half"] == 32 and values["n"] >= 1


def test_large_definitions_are_skipped_with_a_warning(tmp_path):
    root = str(tmp_path / "ds")
    big = segment_sum("big_d8")
    big["axes"]["d"]["value"] = 1 << 22
    big["name"] = "big_d8"
    put(root, big)
    rep = validate_dataset(root, run_references=True, max_numel=1 << 20)
    f = rep.findings
    assert len(f) == 1 and f[0].level == "WARNING" and "reference not run" in f[0].message and "--max-numel" in f[0].message
