"""defc lint: every problem of a spec in one run, located, beyond the schema."""
import os
import shutil

from conftest import ROOT

from defc.authoring.lint import lint, tag_problem
from defc.compiler.load import display_path
from defc.cli import main

FEW = ["llama-3.1-8b", "deepseek-v3", "qwen3-30b-a3b"]


def workspace(tmp_path, spec_text=None, name="demo", templates=None):
    """A specs/ folder with the project's model facts (and a spec), and a templates/ folder."""
    specs = tmp_path / "specs"
    specs.mkdir(exist_ok=True)
    shutil.copy(os.path.join(ROOT, "specs", "_model_facts.yaml"), specs / "_model_facts.yaml")
    tdir = tmp_path / "templates"
    (tdir / "reference").mkdir(parents=True, exist_ok=True)
    for rel, text in (templates or {}).items():
        (tdir / rel).write_text(text)
    path = None
    if spec_text is not None:
        path = specs / f"{name}.yaml"
        path.write_text(spec_text)
    return str(specs), str(tdir), str(path) if path else None


def lines(problems):
    return [str(p) for p in problems]


GOOD_REF = """import torch

HIDDEN_SIZE = {{ hidden_size }}


@torch.no_grad()
def run(x):
    assert x.shape[-1] == HIDDEN_SIZE
    return x.clone()
"""

BAD_SPEC = """family: demo
definitions:
  - id: demo
    name: "demo_h{hidden_size}_x{nope}"
    description: "uses {hiden_size}"
    tags: ["stage:decode", "colour:red", "flag", {tag: "tp:{tp}", when: 'tp > 1'}]
    axes:
      batch_size: {type: var}
      hidden_size: {value: hiden_size}
    inputs:
      x: {shape: [batch_size, hidden_size], dtype: bfloat16}
    outputs:
      y: {shape: [batch_size, hidden_size], dtype: bfloat16}
    reference:
      template: reference/demo.py.j2
  - id: other
    name: "other_h{hidden_size}"
    axes:
      batch_size: {type: var}
      hidden_size: {value: hidden_size}
    inputs:
      x: {shape: [batch_size, hidden_size], dtype: bfloat16}
    outputs:
      y: {shape: [batch_size, hidden_size], dtype: bfloat16}
    reference:
      template: reference/missing.py.j2
"""


def test_rmsnorm_spec_is_clean():
    problems = lint([os.path.join(ROOT, "specs", "rmsnorm.yaml")], models=FEW)
    assert [p for p in problems if p.severity == "error"] == []


def test_every_problem_in_one_run_with_locations(tmp_path):
    ref = GOOD_REF.replace("return x.clone()", "return x.clone() * {{ scale }}")
    specs, tdir, path = workspace(tmp_path, BAD_SPEC, templates={"reference/demo.py.j2": ref})
    got = lines(lint([path], specs_dir=specs, extra_templates=[tdir], models=FEW))
    shown = display_path(path)
    tshown = display_path(os.path.join(tdir, "reference", "demo.py.j2"))
    want = [
        f"{shown}:4:5: error: definitions[0].name: placeholder 'nope' is not a config field",
        f"{shown}:5:5: error: definitions[0].description: placeholder 'hiden_size' is not a config field",
        f"{shown}:6:28: error: definitions[0].tags[1]: tag 'colour:red' has unknown namespace 'colour'",
        f"{shown}:6:42: error: definitions[0].tags[2]: tag 'flag' is neither 'namespace:value' nor a known flag",
        f"{shown}:9:21: error: definitions[0].axes.hidden_size.value: unknown name 'hiden_size'",
        f"{shown}:26:7: error: definitions[1].reference.template: template 'reference/missing.py.j2' not found",
        f"{tshown}:9:1: error: template variable 'scale' is not provided for definition 'demo'",
    ]
    for w in want:
        assert any(g.startswith(w) for g in got), (w, got)
    assert any("did you mean 'hidden_size'?" in g for g in got if ":9:21:" in g)
    assert len([g for g in got if ": error: " in g]) == len(want)


def test_cli_exit_codes_and_one_line_messages(tmp_path, capsys):
    specs, tdir, path = workspace(tmp_path, BAD_SPEC, templates={"reference/demo.py.j2": GOOD_REF})
    rc = main(["lint", "--specs-dir", specs, "--templates", tdir, "--models", "llama-3.1-8b", path])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in out + err
    *problems, summary = out.strip().splitlines()        # the problems, then the counts: all on stdout
    for line in problems:
        assert ": error: " in line or ": warning: " in line
    assert summary.startswith("lint: ") and "error(s)" in summary and err == ""


def test_yaml_syntax_error_is_located(tmp_path):
    specs, tdir, path = workspace(tmp_path, "family: demo\ndefinitions:\n  - id: [unclosed\n")
    got = lines(lint([path], specs_dir=specs, extra_templates=[tdir]))
    assert len(got) == 1 and got[0].startswith(display_path(path) + ":") and "invalid YAML" in got[0]


def test_rendering_against_the_catalogue(tmp_path):
    """Errors that only show when rendered for real models: integrality, run, the Definition schema."""
    spec = """family: demo
definitions:
  - id: thirds
    name: "thirds_h{hidden_size}"
    axes:
      batch_size: {type: var, description: rows}
      hidden_size: {value: hidden_size / 3, description: a third}
    inputs:
      x: {shape: [batch_size, hidden_size], dtype: bfloat16, description: in}
    outputs:
      y: {shape: [batch_size, hidden_size], dtype: bfloat16, description: out}
    reference:
      template: reference/demo.py.j2
  - id: norun
    name: "norun_h{hidden_size}"
    axes:
      batch_size: {type: var, description: rows}
      hidden_size: {value: hidden_size, description: h}
    inputs:
      x: {shape: [batch_size, hidden_size], dtype: bfloat16, description: in}
    outputs:
      y: {shape: [batch_size, hidden_size], dtype: bfloat16, description: out}
    reference:
      template: reference/norun.py.j2
  - id: badconstraint
    name: "badc_h{hidden_size}"
    constraints: ["batch_size = 2"]
    axes:
      batch_size: {type: var, description: rows}
      hidden_size: {value: hidden_size, description: h}
    inputs:
      x: {shape: [batch_size, hidden_size], dtype: bfloat16, description: in}
    outputs:
      y: {shape: [batch_size, hidden_size], dtype: bfloat16, description: out}
    reference:
      template: reference/demo.py.j2
"""
    specs, tdir, path = workspace(tmp_path, spec, templates={
        "reference/demo.py.j2": GOOD_REF, "reference/norun.py.j2": "def forward(x):\n    return x\n"})
    got = lines(lint([path], specs_dir=specs, extra_templates=[tdir], models=["llama-3.1-8b", "qwen3-8b"]))
    shown = display_path(path)
    # 4096 / 3 is not an integer: reported once for the formula, with the model, counting the others
    third = [g for g in got if g.startswith(f"{shown}:7:")]
    assert len(third) == 1 and "4096/3 is not an integer" in third[0] and "(and 1 more model)" in third[0]
    assert any(g.startswith(f"{shown}:24:7: error:") and "top-level function 'run'" in g for g in got), got
    assert any(g.startswith(f"{shown}:25:5: error:") and "flashinfer_bench rejects" in g and "constraint" in g.lower()
               for g in got), got


def test_name_pattern_must_mention_varying_const_axes(tmp_path, capsys):
    spec = """family: demo
definitions:
  - id: demo
    name: "demo_h{hidden_size}"
    description: "a demo"
    axes:
      batch_size: {type: var, description: rows}
      hidden_size: {value: hidden_size, description: h}
      heads: {value: num_attention_heads, description: heads}
      block: {value: 128, description: fixed}
    inputs:
      x: {shape: [batch_size, hidden_size], dtype: bfloat16, description: in}
      w: {shape: [heads, block], dtype: bfloat16, description: w}
    outputs:
      y: {shape: [batch_size, hidden_size], dtype: bfloat16, description: out}
    reference:
      template: reference/demo.py.j2
"""
    specs, tdir, path = workspace(tmp_path, spec, templates={
        "reference/demo.py.j2": GOOD_REF.replace("def run(x):", "def run(x, w):")})
    got = lines(lint([path], specs_dir=specs, extra_templates=[tdir], models=FEW))
    warn = [g for g in got if "does not mention const axis" in g]
    assert len(warn) == 1 and "'heads'" in warn[0] and ": warning: " in warn[0] and "32" in warn[0]
    assert not any(": error: " in g for g in got), got
    assert main(["lint", "--specs-dir", specs, "--templates", tdir, "--models", "llama-3.1-8b,deepseek-v3", path]) == 0
    assert main(["lint", "--strict", "--specs-dir", specs, "--templates", tdir, "--models",
                 "llama-3.1-8b,deepseek-v3", path]) == 1
    capsys.readouterr()


def test_default_targets_include_the_facts(tmp_path):
    specs, tdir, _ = workspace(tmp_path)
    facts = os.path.join(specs, "_model_facts.yaml")
    with open(facts) as fh:
        text = fh.read()
    with open(facts, "w") as fh:
        fh.write(text.replace("\nfacts:\n", "\nfacts:\n  broken_fact: 'hiden_size * 2'\n  bad_syntax: 'a +'\n", 1))
    got = lines(lint([], specs_dir=specs, extra_templates=[tdir]))
    assert any("facts.broken_fact" in g and ": warning: " in g and "hiden_size" in g for g in got), got
    assert any("facts.bad_syntax" in g and ": error: " in g for g in got), got


def test_tag_rules():
    assert tag_problem("stage:decode") is None
    assert tag_problem("fused") is None
    assert tag_problem("tp:{tp}") is None
    assert tag_problem("tp:0")[0] == "error"
    assert tag_problem("status:maybe")[0] == "error"
    assert "did you mean 'stage'" in tag_problem("stag:decode")[1]
    assert tag_problem("stage: decode")[0] == "error"


def test_dump_difference_patterns_and_names(tmp_path):
    from defc.authoring.lint import dump_difference_problems
    from defc.compiler.load import load_yaml
    p = tmp_path / "dd.yaml"
    p.write_text("family: demo\n"
                 "dump_differences:\n"
                 "  - {name: a, fields: [inputs.x, 'axes.*_dim', op_type], why: w}\n"
                 "definitions:\n"
                 "  - id: x\n"
                 "    dump_differences:\n"
                 "      - {name: a, fields: [inputs.y.shape], why: w}\n"
                 "      - {name: b, fields: [input.z, outputs.o.dtype, tags], why: w}\n")
    got = [f"{e.location.line}:{e.location.col}: {e.message}" for e in dump_difference_problems(load_yaml(str(p)))]
    assert got == ["7:10: dump difference 'a' is named twice for the same definitions",
                   "8:28: field pattern 'input.z' names no field defc diff reports (op_type, tags[.NS], "
                   "axes.X[.type|.value], inputs.X[.shape|.dtype], outputs.X[.shape|.dtype])"]


RECIPE_SPEC = """family: demo
definitions:
  - id: demo
    name: "demo_h{hidden_size}"
    description: "a demo"
    fi_api: flashinfer.norm.rmsnorm
    axes:
      batch_size: {type: var, description: rows}
      hidden_size: {value: hidden_size, description: h}
    inputs:
      x: {shape: [batch_size, hidden_size], dtype: bfloat16, description: in}
      w: {shape: [hidden_size], dtype: bfloat16, description: w}
    outputs:
      y: {shape: [batch_size, hidden_size], dtype: bfloat16, description: out}
    reference:
      template: reference/demo.py.j2
    trace:
      vars: {batch_sise: 3}
      args: {input: xx, weight: {tensor: w, shape: [hiden_size]}, eps: {value: rms_eps}, bias: {tensr: x}}
    verify:
      inputs: {x: {normal: 1}, ww: {normal: 1}}
      kernel: {returns: [yy], from_args: {y: input}, argz: {}}
      tolerance: {z: {rtol: 1}}
"""


def test_trace_and_verify_blocks_are_checked(tmp_path):
    """A typo in a trace:/verify: block is a located lint error, not a failure at trace/verify time."""
    specs, tdir, path = workspace(tmp_path, RECIPE_SPEC, templates={
        "reference/demo.py.j2": GOOD_REF.replace("def run(x):", "def run(x, w):")})
    got = lines(lint([path], specs_dir=specs, extra_templates=[tdir], models=["llama-3.1-8b"]))
    shown = display_path(path)
    want = [
        f"{shown}:18:14: error: definitions[0].trace.vars.batch_sise: 'batch_sise' is no axis of definition 'demo'",
        f"{shown}:19:14: error: definitions[0].trace.args.input: 'xx' is no input or output of definition 'demo' "
        f"(has: x, w, y); did you mean 'x'?",
        f"{shown}:19:53: error: definitions[0].trace.args.weight.shape[0]: unknown name 'hiden_size'",
        f"{shown}:19:73: error: definitions[0].trace.args.eps.value: unknown name 'rms_eps'",
        f"{shown}:19:97: error: definitions[0].trace.args.bias.tensr: unknown trace argument field 'tensr'",
        f"{shown}:21:32: error: definitions[0].verify.inputs.ww: 'ww' is no input of definition 'demo'",
        f"{shown}:22:26: error: definitions[0].verify.kernel.returns[0]: 'yy' is no output of definition 'demo'",
        f"{shown}:22:54: error: definitions[0].verify.kernel.argz: unknown verify.kernel field 'argz'",
        f"{shown}:23:19: error: definitions[0].verify.tolerance.z: 'z' is no output of definition 'demo'",
    ]
    for w in want:
        assert any(g.startswith(w) for g in got), (w, got)
    assert len([g for g in got if ": error: " in g]) == len(want), got


def test_recipe_field_sets_are_the_runners():
    """lint's copies of the trace:/verify: field sets (authoring/ does not import runners/)."""
    from defc.authoring import lint as L
    from defc.runners import recipes, verify
    assert L.TRACE_TOP_KEYS == recipes.TOP_KEYS and L.TRACE_CALL_KEYS == recipes.CALL_KEYS
    assert L.VERIFY_KEYS == verify.VERIFY_KEYS and L.VERIFY_KERNEL_KEYS == verify.KERNEL_KEYS
    assert L.VERIFY_ALTERNATIVE_KEYS == verify.ALTERNATIVE_KEYS and L.VERIFY_TEMPLATE_KEYS == verify.TEMPLATE_KEYS


def test_run_parameters_must_be_the_inputs_in_order(tmp_path):
    spec = RECIPE_SPEC.split("    trace:")[0]
    for run, want in (("def run(w, x):", "run()'s parameters are the inputs in another order: run(w, x) but the "
                                          "inputs are (x, w)"),
                      ("def run(x, v, extra):", "run()'s parameters do not match the inputs (no parameter for input "
                                                "w; parameters v, extra are no input)"),
                      ("def run(x, w, scale=1.0):", None)):
        specs, tdir, path = workspace(tmp_path, spec, templates={"reference/demo.py.j2": GOOD_REF.replace(
            "def run(x):", run)})
        got = lines(lint([path], specs_dir=specs, extra_templates=[tdir], models=["llama-3.1-8b"]))
        errs = [g for g in got if ": error: " in g]
        if want is None:
            assert errs == [], errs
        else:
            assert len(errs) == 1 and f"{display_path(path)}:16:7: error: definitions[0].reference.template: " \
                                       f"{want}" in errs[0], errs


def test_unknown_filter_is_a_located_error(tmp_path, capsys):
    ref = GOOD_REF.replace("HIDDEN_SIZE = {{ hidden_size }}", "HIDDEN_SIZE = {{ hidden_size | nosuch }}")
    specs, tdir, path = workspace(tmp_path, RECIPE_SPEC.split("    trace:")[0].replace(
        "      w: {shape: [hidden_size], dtype: bfloat16, description: w}\n", ""),
        templates={"reference/demo.py.j2": ref})
    rc = main(["lint", "--specs-dir", specs, "--templates", tdir, "--models", "llama-3.1-8b", path])
    out, err = capsys.readouterr()
    assert rc == 1 and "internal error" not in out + err, out + err
    tshown = display_path(os.path.join(tdir, "reference", "demo.py.j2"))
    assert f"{tshown}:3:1: error: template error: No filter named 'nosuch'." in out.splitlines(), out


def test_fresh_scaffold_warns_about_stub_and_catch_all_when(tmp_path, monkeypatch):
    """A scaffold lints without errors, but its stub reference and its every-model when: are warned about."""
    from defc.authoring.scaffold import scaffold
    monkeypatch.setenv("DEFC_NO_FLASHINFER", "1")
    specs, tdir, _ = workspace(tmp_path)
    sc = scaffold("myrms", specs_dir=specs, templates_dir=tdir, fi_api="flashinfer.norm.rmsnorm")
    got = lines(lint([sc.spec_path], specs_dir=specs, extra_templates=[tdir]))
    assert not [g for g in got if ": error: " in g], got
    warn = [g for g in got if ": warning: " in g]
    assert any("definitions[0].when: when: 'defined(hidden_size)' holds for every catalogue model" in g
               for g in warn), warn
    assert any("the reference is a stub (run() raises NotImplementedError)" in g for g in warn), warn
    # a literal always-true when: is warned about whatever models are linted
    with open(sc.spec_path) as fh:
        text = fh.read().replace('when: "defined(hidden_size)"', 'when: "1 == 1"')
    with open(sc.spec_path, "w") as fh:
        fh.write(text)
    got = lines(lint([sc.spec_path], specs_dir=specs, extra_templates=[tdir], models=["llama-3.1-8b"]))
    assert any("when: '1 == 1' is always true" in g and ": warning: " in g for g in got), got
    # the catalogue's own specs: no definition's when: holds for every model
    assert not [g for g in lines(lint([os.path.join(ROOT, "specs", "rmsnorm.yaml")])) if "when: '" in g]


def test_compile_names_an_undefined_template_variable(tmp_path, capsys):
    ref = GOOD_REF.replace("HIDDEN_SIZE = {{ hidden_size }}", "HIDDEN_SIZE = {{ hiden_size | py }}")
    specs, tdir, path = workspace(tmp_path, RECIPE_SPEC.split("    trace:")[0].replace(
        "      w: {shape: [hidden_size], dtype: bfloat16, description: w}\n", ""),
        templates={"reference/demo.py.j2": ref})
    rc = main(["compile", "--specs-dir", specs, "--templates", tdir, "--model", "llama-3.1-8b",
               "--out", str(tmp_path / "ds"), path])
    err = capsys.readouterr().err
    tshown = display_path(os.path.join(tdir, "reference", "demo.py.j2"))
    assert rc != 0 and "StrictUndefined" not in err, err
    assert f"{tshown}:3:1: error: template uses an undefined value: 'hiden_size' is undefined" in err, err
