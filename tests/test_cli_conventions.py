"""CLI conventions (issue 16): -q/-v everywhere, compile's summary, filters that select nothing,
trace's own default folder, exit codes 0/1/2/3, results on stdout and diagnostics on stderr,
--format json for lint and validate, progress only on a terminal."""
from __future__ import annotations

import io
import json
import os

import pytest

from conftest import ROOT
from defc.cli import COMMANDS, build_parser, main

LLAMA_DUMPS = os.path.join(ROOT, "reports", "gpu", "dumps", "llama-3.1-8b-tp1")


def run(capsys, *argv):
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


# -- -q/-v on every command ----------------------------------------------------------------------

def test_every_command_takes_quiet_and_verbose():
    ap = build_parser()
    sub = next(a for a in ap._subparsers._group_actions)            # the COMMAND action
    assert set(sub.choices) == set(COMMANDS)
    for name, p in sub.choices.items():
        opts = {o for a in p._actions for o in a.option_strings}
        assert {"-q", "--quiet", "-v", "--verbose"} <= opts, name


def test_quiet_with_verbose_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compile", "--model", "llama-3.1-8b", "-q", "-v"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("usage: defc compile") and "defc: usage error: " in err


# -- compile: a summary by default, per-file lines with -v, nothing with -q -----------------------

def test_compile_prints_a_summary_per_file_lines_with_verbose_and_nothing_with_quiet(tmp_path, capsys):
    out = str(tmp_path / "o")
    two = ["compile", "rmsnorm", "--model", "llama-3.1-8b", "--model", "qwen3-8b", "--tp", "1"]
    code, text, err = run(capsys, *two, "--out", out)
    # llama-3.1-8b (rms_norm_eps 1e-5) writes the hidden-size-4096 norms first; qwen3-8b (1e-6) shares
    # their names: the file keeps llama's reference, and the compile says so (never silently)
    kept = sorted(line for line in err.splitlines())
    assert code == 0 and len(kept) == 2, err
    for line, name in zip(kept, ["fused_add_rmsnorm_h4096", "rmsnorm_h4096"]):
        assert line.startswith(f"defc: warning: qwen3-8b: {name} is shared with another model")
        assert "'EPS = 1e-05' kept, 'EPS = 1e-06' this model's" in line
    lines = text.splitlines()
    assert lines[0].startswith("llama-3.1-8b: compiled ") and lines[1].startswith("qwen3-8b: compiled ")
    assert "merged" in lines[1] and lines[2].startswith("2 models: wrote ")
    assert not [line for line in lines if line.startswith("  ")]       # no per-file lines
    code, text, err = run(capsys, *two, "--out", str(tmp_path / "v"), "-v")
    assert code == 0 and "  merged: " in text and "  new: " in text and "serving config(s): tp1" in text
    code, text, err = run(capsys, *two, "--out", str(tmp_path / "q"), "-q")
    assert code == 0 and text == "" and sorted(err.splitlines()) == kept   # warnings survive -q
    assert os.listdir(str(tmp_path / "q" / "definitions"))                # it did write


def test_unknown_config_keys_are_one_line_per_model_unless_verbose_and_survive_quiet(tmp_path, capsys):
    import json
    from defc.compiler.models import resolve_model
    config = dict(resolve_model("llama-3.1-8b", None, None).config, alpha_knob=1, beta_knob=2, gamma_knob=3)
    folder = tmp_path / "odd-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    argv = ["compile", "rmsnorm", "--model", str(folder / "config.json"), "--dry-run"]
    code, text, err = run(capsys, *argv, "-q")
    assert code == 0 and "status  op_type" in text              # -q: a dry run still shows its table
    warned = [line for line in err.splitlines() if "unknown" in line]
    code, text, err = run(capsys, *argv, "-v")
    each = [line for line in err.splitlines() if "is unknown" in line]          # -v: one line per key
    assert len(each) == 3 and len(warned) == 1 and warned[0].startswith("defc: warning: odd-model: ")
    assert "3 config keys are unknown (alpha_knob, beta_knob, gamma_knob)" in warned[0]


# -- a filter that selects nothing is an error naming what exists ---------------------------------

def test_op_types_nonsense_is_an_error_listing_the_op_types(tmp_path, capsys):
    code, text, err = run(capsys, "compile", "--model", "llama-3.1-8b", "--op-types", "nonsense",
                          "--out", str(tmp_path / "o"))
    assert code == 2 and "unknown op_type 'nonsense'" in err and "rmsnorm" in err and "page_append" in err
    assert not os.path.exists(tmp_path / "o")


def test_a_family_name_given_to_op_types_names_its_op_types(tmp_path, capsys):
    code, text, err = run(capsys, "compile", "--model", "llama-3.1-8b", "--op-types", "page",
                          "--out", str(tmp_path / "o"))
    assert code == 2 and "'page' is a spec (family), not an op_type; its op_types: page_append" in err


def test_an_op_type_the_model_lacks_names_the_models_op_types(tmp_path, capsys):
    code, text, err = run(capsys, "compile", "--model", "llama-3.1-8b", "--op-types", "mla_paged",
                          "--out", str(tmp_path / "o"))
    assert code == 2 and "--op-types mla_paged selects nothing for llama-3.1-8b" in err
    assert "gqa_paged" in err.split("its op_types:")[1]
    # with something left, the rest is a note
    code, text, err = run(capsys, "compile", "--model", "llama-3.1-8b", "--op-types", "mla_paged,rmsnorm",
                          "--out", str(tmp_path / "o"))
    assert code == 0 and "defc: note: --op-types mla_paged selects nothing" in err


def test_a_named_spec_that_does_not_apply_says_its_requires(tmp_path, capsys):
    code, text, err = run(capsys, "compile", "moe", "--model", "llama-3.1-8b", "--out", str(tmp_path / "o"))
    assert code == 2 and "specs/moe.yaml does not apply to llama-3.1-8b: its requires 'is_moe' is false" in err
    code, text, err = run(capsys, "compile", "moe", "rmsnorm", "--model", "llama-3.1-8b", "--model",
                          "qwen3-30b-a3b", "--tp", "1", "--dry-run")
    assert code == 0 and "defc: note: specs/moe.yaml does not apply to llama-3.1-8b: its requires" in err
    assert "qwen3-30b-a3b" not in err


def test_spec_uses_reports_requires_per_spec():
    from defc.compiler.pipeline import CompileOptions, spec_uses
    uses = {u.family: u for u in spec_uses(CompileOptions(model="llama-3.1-8b", specs=["moe", "rmsnorm"]))}
    assert uses["moe"].definitions == 0 and uses["moe"].requires == "is_moe"
    assert uses["rmsnorm"].definitions > 0 and uses["rmsnorm"].requires is None


def test_validate_filters_that_select_nothing_are_errors(tmp_path, capsys):
    ds = str(tmp_path / "ds")
    assert main(["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", ds, "-q"]) == 0
    code, text, err = run(capsys, "validate", ds, "--op-types", "moe", "--no-report")
    assert code == 2 and "no op_type 'moe' in this dataset (it has: rmsnorm)" in err
    code, text, err = run(capsys, "validate", ds, "--definitions", "rmsnorm_h1", "--no-report")
    assert code == 2 and "no definition 'rmsnorm_h1'" in err and "rmsnorm_h4096" in err


# -- trace's default output is not compile's ------------------------------------------------------

def test_trace_stages_into_its_own_folder_so_the_next_compile_has_no_collisions(tmp_path, monkeypatch, capsys):
    pytest.importorskip("flashinfer")
    monkeypatch.chdir(tmp_path)
    code, text, err = run(capsys, "trace", "--backend", "replay", "--model", "llama-3.1-8b", "--tp", "1",
                          "--specs", "rmsnorm")
    assert code == 0, err
    assert os.listdir(tmp_path / "tmp" / "traced-dataset" / "definitions" / "rmsnorm")
    assert not (tmp_path / "tmp" / "flashinfer-trace").exists()
    code, text, err = run(capsys, "compile", "rmsnorm", "--model", "llama-3.1-8b", "--tp", "1")
    assert code == 0 and "collision" not in text + err


# -- exit codes -----------------------------------------------------------------------------------

def test_exit_codes(tmp_path, capsys, monkeypatch):
    # 2: usage (argparse) and bad input are told apart by their message
    with pytest.raises(SystemExit) as e:
        main(["compile", "--no-such-option"])
    assert e.value.code == 2 and "defc: usage error: unrecognized arguments" in capsys.readouterr().err
    code, text, err = run(capsys, "compile", "--model", "no-such-model")
    assert code == 2 and err.startswith("defc: error: ") and "usage" not in err
    # 1: findings (a collision)
    out = tmp_path / "o"
    assert main(["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", str(out), "-q"]) == 0
    victim = out / "definitions" / "rmsnorm" / "rmsnorm_h4096.json"
    doc = json.loads(victim.read_text())
    doc["axes"]["hidden_size"]["value"] = 1234
    victim.write_text(json.dumps(doc))
    code, text, err = run(capsys, "compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", str(out))
    assert code == 1 and "collision" in err
    # 3: an internal error
    import defc.cmd_models as M

    def boom(args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(M, "run_models", boom)
    code, text, err = run(capsys, "models")
    assert code == 3 and err.startswith("defc: internal error: RuntimeError: a bug")


def test_diff_exits_0_when_every_difference_is_explained(capsys):
    code, text, err = run(capsys, "diff", "--model", "llama-3.1-8b", "--tp", "1", LLAMA_DUMPS)
    assert code == 0, err
    assert "0 row(s) without a named cause" in text and "renamed" in text and "differs" in text
    code, text, err = run(capsys, "diff", "--model", "llama-3.1-8b", "--tp", "1", LLAMA_DUMPS, "--format", "json")
    rep = json.loads(text)
    assert code == 0 and rep["unexplained_rows"] == 0 and not rep["clean"]


def test_diff_exits_1_on_an_unexplained_row(tmp_path, capsys):
    import shutil
    ds = tmp_path / "p"
    shutil.copytree(os.path.join(LLAMA_DUMPS, "fi_trace_llama-3.1-8b_tp1_ep1_ps1"), ds)
    code, text, err = run(capsys, "diff", "--model", "llama-3.1-8b", "--tp", "1", "--specs", "rmsnorm", str(ds))
    assert code == 1 and "defc: unexplained: unexpected " in err


# -- results on stdout, diagnostics on stderr; --format json -------------------------------------

def test_lint_summary_on_stdout_and_json(capsys):
    code, text, err = run(capsys, "lint", "rmsnorm", "--no-render")
    assert code == 0 and text == "lint: clean\n" and err == ""
    code, text, err = run(capsys, "lint", "rmsnorm", "--no-render", "--format", "json")
    rep = json.loads(text)
    assert code == 0 and rep["errors"] == 0 and rep["clean"] and rep["problems"] == []


def test_lint_json_lists_problems(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("op_type: x\nfamily: [\n")
    code, text, err = run(capsys, "lint", str(bad), "--no-render", "--format", "json")
    rep = json.loads(text)
    assert code == 1 and rep["errors"] >= 1
    p = rep["problems"][0]
    assert p["severity"] == "error" and p["file"].endswith("bad.yaml") and p["message"]


def test_validate_format_json(tmp_path, capsys):
    ds = str(tmp_path / "ds")
    assert main(["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", ds, "-q"]) == 0
    code, text, err = run(capsys, "validate", ds, "--format", "json", "--no-report")
    rep = json.loads(text)
    assert code == 0 and rep["errors"] == 0 and rep["definitions"]["rmsnorm/rmsnorm_h4096"] == "ok"
    code, text, err = run(capsys, "validate", ds, "-q", "--no-report")
    assert code == 0 and text == ""


def test_coverage_write_reports_on_stdout(tmp_path, capsys):
    dest = tmp_path / "m.md"
    code, text, err = run(capsys, "coverage", "--matrix", "--models", "llama-3.1-8b", "--write", str(dest))
    assert code == 0 and text.startswith("wrote ") and err == "" and dest.exists()


# -- progress: only on a terminal ----------------------------------------------------------------

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_shows_only_on_a_terminal():
    from defc.output import Progress
    plain = io.StringIO()
    with Progress(3, "work", stream=plain) as bar:
        for i in range(3):
            bar.start(f"item{i}")
            bar.advance()
    assert plain.getvalue() == ""
    term = _Terminal()
    with Progress(3, "work", stream=term) as bar:
        for i in range(3):
            bar.start(f"item{i}")
            bar.advance()
    assert "work" in term.getvalue() and "3/3" in term.getvalue()
    quiet = _Terminal()
    with Progress(3, "work", stream=quiet, enabled=False) as bar:
        bar.advance()
    assert quiet.getvalue() == ""


def test_validate_shows_progress_on_a_terminal(tmp_path, capsys, monkeypatch):
    import sys
    ds = str(tmp_path / "ds")
    assert main(["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", ds, "-q"]) == 0
    capsys.readouterr()
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["validate", ds, "--no-report"]) == 0
    assert "validate" in term.getvalue() and "2/2" in term.getvalue()
    term2 = _Terminal()
    monkeypatch.setattr(sys, "stderr", term2)
    assert main(["validate", ds, "--no-report", "-q"]) == 0
    assert term2.getvalue() == ""


def test_a_quiet_dry_run_of_several_models_names_each_row_s_model(tmp_path, capsys):
    code, text, err = run(capsys, "compile", "rmsnorm", "--model", "llama-3.1-8b", "--model", "qwen3-8b", "--tp", "1",
                          "--dry-run", "-q", "--out", str(tmp_path / "o"))
    rows = [line.split() for line in text.splitlines() if line and not line.startswith(("model", "-"))]
    assert code == 0 and text.splitlines()[0].split()[:2] == ["model", "status"]
    # llama-3.1-8b: the two h4096 norms; qwen3-8b merges its tags into them and adds the per-head q/k norm
    assert sorted((r[0], r[1], r[3]) for r in rows) == [
        ("llama-3.1-8b", "new", "fused_add_rmsnorm_h4096"), ("llama-3.1-8b", "new", "rmsnorm_h4096"),
        ("qwen3-8b", "merged", "fused_add_rmsnorm_h4096"), ("qwen3-8b", "merged", "rmsnorm_h4096"),
        ("qwen3-8b", "new", "rmsnorm_h128")]
    code, text, err = run(capsys, "compile", "rmsnorm", "--model", "llama-3.1-8b", "--tp", "1", "--dry-run", "-q",
                          "--out", str(tmp_path / "o"))
    assert text.splitlines()[0].split()[0] == "status"          # one model: no model column
