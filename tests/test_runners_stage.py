"""defc stage: every named normalisation/repair rule, the rule engine's errors, and staging real
FlashInfer dumps into a dataset (tags, Definition validity, no overwrite, crash leftovers)."""
from __future__ import annotations

import copy
import json
import os

import pytest

from test_runners_common import copy_dumps, real_dumps


def _doc(**kw):
    d = {"name": "x_h8", "op_type": "x", "description": "d", "tags": ["fi_api:flashinfer.x", "status:verified"],
         "axes": {"n": {"type": "var"}, "h": {"type": "const", "value": 8}},
         "inputs": {"a": {"shape": ["n", "h"], "dtype": "bfloat16"}},
         "outputs": {"out": {"shape": ["n", "h"], "dtype": "bfloat16"}},
         "reference": "import torch\n\ndef _x_reference(a):\n    return a\n"}
    d.update(kw)
    return d


def _gqa(stage, h, kv, d, ps):
    doc = _doc(name=f"gqa_paged_{stage}_h{h}_kv{kv}_d{d}_ps{ps}", op_type="gqa_paged")
    doc["axes"] = {"num_qo_heads": {"type": "const", "value": h}, "num_kv_heads": {"type": "const", "value": kv},
                   "head_dim": {"type": "const", "value": d}, "page_size": {"type": "const", "value": ps}}
    return doc


# rule name -> (document, source, check(outcome, original))
CASES = {
    "skip-plan-records": (_doc(outputs={}), "sglang",
                          lambda o, d: o.skipped and o.skipped[0] == "skip-plan-records"),
    "skip-no-reference": ({k: v for k, v in _doc().items() if k != "reference"}, "replay",
                          lambda o, d: o.skipped and o.skipped[0] == "skip-no-reference"),
    "reference-run": (_doc(reference="def helper():\n    return 1\n\ndef _x_reference(a):\n    return _x_reference_impl(a) if False else a\n"),
                      "replay",
                      lambda o, d: "def run(a):" in o.doc["reference"] and "_x_reference(" not in o.doc["reference"]
                      and "def helper" in o.doc["reference"]),
    "index-tensors-int32": (_doc(inputs={"q": {"shape": ["n", "h"], "dtype": "bfloat16"},
                                         "kv_indptr": {"shape": ["n"], "dtype": "unknown", "optional": True},
                                         "qo_indptr": {"shape": ["n"], "dtype": "unknown", "optional": True}}),
                            "sglang",
                            lambda o, d: o.doc["inputs"]["kv_indptr"]["dtype"] == "int32"
                            and o.doc["inputs"]["qo_indptr"]["dtype"] == "int32"),
    "unpassed-optional-inputs": (_doc(inputs={"a": {"shape": ["n", "h"], "dtype": "bfloat16"},
                                              "state": {"shape": ["n", "h"], "dtype": "unknown", "optional": True}}),
                                 "replay", lambda o, d: list(o.doc["inputs"]) == ["a"]),
    "inplace-outputs-renamed": (_doc(inputs={"query": {"shape": ["n", "h"], "dtype": "bfloat16"},
                                             "key": {"shape": ["n", "h"], "dtype": "bfloat16"}},
                                     outputs={"query": {"shape": ["n", "h"], "dtype": "bfloat16"},
                                              "key": {"shape": ["n", "h"], "dtype": "bfloat16"}}),
                                "replay", lambda o, d: list(o.doc["outputs"]) == ["query_out", "key_out"]),
    "inplace-outputs-dropped": (_doc(inputs={"a": {"shape": ["n", "h"], "dtype": "bfloat16"},
                                             "residual": {"shape": ["n", "h"], "dtype": "bfloat16"}},
                                     outputs={"out": {"shape": ["n", "h"], "dtype": "bfloat16"},
                                              "residual": {"shape": ["n", "h"], "dtype": "bfloat16"}}),
                                "replay", lambda o, d: list(o.doc["outputs"]) == ["out"]),
    "unknown-dtype-from-same-shape": (_doc(inputs={"k": {"shape": ["n", "h"], "dtype": "float16"},
                                                   "cache": {"shape": ["p", "h"], "dtype": "unknown"}},
                                           axes={"n": {"type": "var"}, "p": {"type": "var"}, "h": {"type": "const", "value": 8}},
                                           outputs={"cache_out": {"shape": ["p", "h"], "dtype": "float16"}}),
                                      "replay", lambda o, d: o.doc["inputs"]["cache"]["dtype"] == "float16"),
    "non-numeric-scalar-inputs": (_doc(inputs={"a": {"shape": ["n", "h"], "dtype": "bfloat16"},
                                               "return_lse_base": {"shape": None, "dtype": "string", "optional": True},
                                               "scale": {"shape": None, "dtype": "float32", "optional": True}}),
                                  "replay", lambda o, d: list(o.doc["inputs"]) == ["a", "scale"]),
    "workspace-bytes-int8": (_doc(inputs={"a": {"shape": ["n", "h"], "dtype": "bfloat16"},
                                          "workspace_buffer": {"shape": ["w"], "dtype": "uint8"}},
                                  axes={"n": {"type": "var"}, "w": {"type": "var"}, "h": {"type": "const", "value": 8}}),
                             "replay", lambda o, d: o.doc["inputs"]["workspace_buffer"]["dtype"] == "int8"),
    "uint8-bytes-int8": (_doc(inputs={"hidden_states": {"shape": ["n", "num_packed_hidden"], "dtype": "uint8"}},
                              axes={"n": {"type": "var"}, "num_packed_hidden": {"type": "const", "value": 4}}),
                         "replay", lambda o, d: o.doc["inputs"]["hidden_states"]["dtype"] == "int8"),
    "uint8-bytes-int8-outputs": (_doc(outputs={"x_fp4": {"shape": ["n", "h"], "dtype": "uint8"}}),
                                 "replay", lambda o, d: o.doc["outputs"]["x_fp4"]["dtype"] == "int8"),
    "const-axis-without-value": (_doc(axes={"n": {"type": "var"}, "h": {"type": "const", "value": 8},
                                            "page_size": {"type": "const"}}),
                                 "replay", lambda o, d: o.doc["axes"]["page_size"] == {"type": "var"}),
    "dumper-only-keys": (_doc(check="def standard_check(): pass", init="def init(): pass"), "replay",
                         lambda o, d: "check" not in o.doc and "init" not in o.doc),
    "tensor-param-key": (_doc(outputs={"out": {"shape": ["n", "h"], "dtype": "bfloat16", "param": "input"}}),
                         "replay", lambda o, d: o.doc["outputs"]["out"] == {"shape": ["n", "h"], "dtype": "bfloat16"}),
    # repair rules
    "sglang-3d-kv-paged-gqa": (_gqa("decode", 32, 128, 128, 8), "sglang",
                               lambda o, d: o.doc["name"] == "gqa_paged_decode_h32_kv8_d128_ps1"
                               and o.doc["axes"]["num_kv_heads"]["value"] == 8 and o.doc["axes"]["page_size"]["value"] == 1),
    "mla-paged-prefill-under-decode-name": (
        _doc(name="mla_paged_decode_h16_ckv512_kpe64_ps1", op_type="mla_paged"), "replay",
        lambda o, d: o.doc["name"] == "mla_paged_decode_h16_ckv512_kpe64_ps1"
        and ("mla_paged_prefill_causal_h16_ckv512_kpe64_ps1", "mla-paged-prefill-under-decode-name") in o.also_as),
}


def test_every_rule_has_a_case():
    from defc.runners.rules import load_rules
    from defc.runners.stage import REPAIR_RULES, STAGE_RULES
    names = [r.name for r in load_rules(STAGE_RULES) + load_rules(REPAIR_RULES)]
    assert sorted(names) == sorted(CASES), "each rule in runners/*_rules.yaml needs a case here"
    for r in load_rules(STAGE_RULES) + load_rules(REPAIR_RULES):
        assert r.why and len(r.why) > 20


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule(rule):
    from defc.runners.stage import normalise
    doc, source, check = CASES[rule]
    before = copy.deepcopy(doc)
    out = normalise(doc, source)
    assert rule in out.fired, out.fired
    assert check(out, doc), json.dumps(out.doc, indent=1)[:800]
    assert doc == before  # the input is never modified


def test_repairs_are_conditional():
    from defc.runners.stage import normalise
    # a replay dump (true 4-D cache) is never "repaired", nor a real kv == head_dim model outside SGLang
    out = normalise(_gqa("decode", 32, 128, 128, 8), "replay")
    assert "sglang-3d-kv-paged-gqa" not in out.fired and out.doc["name"] == "gqa_paged_decode_h32_kv128_d128_ps8"
    out = normalise(_gqa("decode", 32, 8, 128, 1), "sglang")
    assert "sglang-3d-kv-paged-gqa" not in out.fired
    out = normalise(_gqa("decode", 32, 128, 128, 8), "sglang", repair=False)
    assert out.doc["name"] == "gqa_paged_decode_h32_kv128_d128_ps8"


@pytest.mark.parametrize("text,expect", [
    ("rules:\n  - name: a\n    why: w\n    bogus: 1\n    drop_keys: [x]\n", "bad.yaml:4:5: error: rules[0].bogus: unknown rule field 'bogus'"),
    ("rules:\n  - name: a\n    why: w\n    when: 'x +'\n    drop_keys: [x]\n", "bad.yaml:4:5: error: rules[0].when: bad formula"),
    ("rules:\n  - {name: a, why: w, drop_keys: [x]}\n  - {name: a, why: w, drop_keys: [y]}\n", "bad.yaml:3:6: error: rules[1].name: duplicate rule name 'a'"),
    ("rules:\n  - {name: a, why: w}\n", "bad.yaml:2:5: error: rules[0]: rule 'a' has no action"),
    ("rules:\n  - {name: a, why: w, drop: true}\n", "error: rules[0].drop: 'drop' needs 'each:'"),
    ("rules:\n  - {name: a, why: w, each: inputs, skip: no}\n", "'skip' applies to whole documents"),
    ("rules:\n  - {name: a, why: w, rename_function: {pattern: 'def (x', to: run}}\n", "bad regular expression"),
    ("rules: 3\n", "a rule file needs a top-level 'rules:' list"),
])
def test_bad_rule_files_are_one_line_located_errors(tmp_path, monkeypatch, text, expect):
    from defc.compiler.errors import DefcError
    from defc.runners.rules import load_rules
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(DefcError) as e:
        load_rules(str(tmp_path / "bad.yaml"))
    msg = str(e.value)
    assert expect in msg and "\n" not in msg, msg


def _definitions(ds):
    out = {}
    for root, _, files in os.walk(os.path.join(ds, "definitions")):
        for f in files:
            with open(os.path.join(root, f)) as fh:
                out[f[:-5]] = json.load(fh)
    return out


def test_stage_real_dumps(tmp_path, capsys):
    from flashinfer_bench.data import Definition
    from defc.cli import main
    dumps = copy_dumps(str(tmp_path / "fi_trace_llama-3.1-8b_tp1_ep1_ps1"), "direct")
    ds = str(tmp_path / "ds")
    assert main(["stage", dumps, "--model", "llama-3.1-8b", "--tp", "1", "--out", ds, "--source", "flashinfer"]) == 0
    docs = _definitions(ds)
    assert set(docs) == {"rmsnorm_h4096", "fused_add_rmsnorm_h4096", "mla_paged_decode_h16_ckv512_kpe64_ps1"}
    for d in docs.values():
        Definition.model_validate(d)                     # loads in flashinfer-bench
        assert "model:llama-3.1-8b" in d["tags"] and "tp:1" in d["tags"]
        assert not any(t.startswith(("ep:", "quantization:")) for t in d["tags"])   # ep 1 / bf16 are not tagged
        assert "check" not in d and "init" not in d and "def run(" in d["reference"]
    assert list(docs["fused_add_rmsnorm_h4096"]["outputs"]) == ["output"]
    assert os.path.exists(os.path.join(ds, "definitions", "rmsnorm", "rmsnorm_h4096.json"))
    out = capsys.readouterr().out
    assert "3 new" in out and "inplace-outputs-dropped" in out
    # again: equal content is left alone
    assert main(["stage", dumps, "--model", "llama-3.1-8b", "--tp", "1", "--out", ds]) == 0
    assert "3 unchanged" in capsys.readouterr().out
    # another TP: same structure, so the tag is merged in
    assert main(["stage", dumps, "--model", "llama-3.1-8b", "--tp", "2", "--out", ds]) == 0
    assert "tp:2" in _definitions(ds)["rmsnorm_h4096"]["tags"] and "3 merged" in capsys.readouterr().out


def test_stage_never_overwrites_a_different_definition(tmp_path, capsys):
    from defc.cli import main
    dumps = copy_dumps(str(tmp_path / "d"), "direct")
    ds = tmp_path / "ds"
    target = ds / "definitions" / "rmsnorm" / "rmsnorm_h4096.json"
    target.parent.mkdir(parents=True)
    other = _doc(name="rmsnorm_h4096", op_type="rmsnorm", reference="def run(a):\n    return a\n")
    target.write_text(json.dumps(other))
    before = target.read_bytes()
    rc = main(["stage", dumps, "--model", "llama-3.1-8b", "--tp", "1", "--out", str(ds)])
    captured = capsys.readouterr()
    assert rc == 1 and target.read_bytes() == before
    assert "collision" in captured.out and "1 collision" in captured.out
    assert "not staged" in captured.err
    assert not list(target.parent.glob("*.bak"))


def test_stage_sglang_pass_repairs_and_skips(tmp_path, capsys):
    from defc.cli import main
    dumps = copy_dumps(str(tmp_path / "p"), "sglang_like", "sglang", model="llama-3.1-8b", tp=1, ep=1,
                       page_size=1, quantization="bf16")
    ds = str(tmp_path / "ds")
    assert main(["stage", dumps, "--out", ds, "--format", "json"]) == 0     # model and tp from the marker
    rep = json.loads(capsys.readouterr().out)
    by = {r["name"]: r for r in rep["items"]}
    assert by["gqa_paged_decode_h32_kv8_d128_ps1"]["dumped_as"] == "gqa_paged_decode_h32_kv128_d128_ps8"
    assert "sglang-3d-kv-paged-gqa" in by["gqa_paged_decode_h32_kv8_d128_ps1"]["rules"]
    assert by["gqa_paged_prefill_h32_kv8_d128_ps1"]["status"] == "new"
    assert by["gqa_paged_decode_plan_h32_kv8_d128_ps1"]["status"] == "skipped"
    docs = _definitions(ds)
    assert set(docs) == {"gqa_paged_decode_h32_kv8_d128_ps1", "gqa_paged_prefill_h32_kv8_d128_ps1",
                         "gqa_ragged_h32_kv8_d128", "top_k_top_p_sampling_v128256"}
    d = docs["gqa_paged_decode_h32_kv8_d128_ps1"]
    assert d["axes"]["num_kv_heads"]["value"] == 8 and d["inputs"]["kv_indices"]["dtype"] == "int32"


def test_stage_survives_a_pass_killed_mid_write(tmp_path, capsys):
    from defc.cli import main
    dumps = copy_dumps(str(tmp_path / "p"), "direct")
    with open(os.path.join(real_dumps(), "sglang_like", "gqa_ragged_h32_kv8_d128.json")) as fh:
        text = fh.read()
    (tmp_path / "p" / "gqa_ragged_h32_kv8_d128.json").write_text(text[: len(text) // 2])
    (tmp_path / "p" / "list.json").write_text("[1, 2]")
    ds = str(tmp_path / "ds")
    rc = main(["stage", dumps, "--model", "llama-3.1-8b", "--tp", "1", "--out", ds])
    out = capsys.readouterr().out
    assert rc == 1 and out.count("unreadable") >= 2 and "killed mid-write" in out
    assert set(_definitions(ds)) == {"rmsnorm_h4096", "fused_add_rmsnorm_h4096", "mla_paged_decode_h16_ckv512_kpe64_ps1"}


def test_stage_bad_input_is_one_line(tmp_path, capsys):
    from defc.cli import main
    dumps = copy_dumps(str(tmp_path / "p"), "direct")
    assert main(["stage", dumps, "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--model is required" in err and "Traceback" not in err
    assert main(["stage", str(tmp_path / "nope"), "--model", "llama-3.1-8b", "--tp", "1"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
