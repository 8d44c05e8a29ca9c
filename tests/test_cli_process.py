"""The ``defc`` command line as a process: parsers built for one command, the exit status and
output of the ``defc`` script, a closed pipe, a profiler."""
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import pytest

from defc import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _help(argv):
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        cli.build_parser(cli._command(argv)).parse_args(argv)
    return out.getvalue()


def test_each_command_module_registers_the_commands_it_is_listed_for():
    """The whole parser knows every command; a command's own parser knows it too."""
    for name in cli.COMMANDS:
        assert _help_whole([name, "--help"]).startswith(f"usage: defc {name}")
        assert _help([name, "--help"]).startswith(f"usage: defc {name}")


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_a_command_parsed_by_its_own_parser_as_by_the_whole_one(name):
    whole = _help_whole([name, "--help"])
    assert _help([name, "--help"]) == whole
    assert _help(["--debug", name, "--help"]) == whole


def _help_whole(argv):
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit):
        cli.build_parser().parse_args(argv)
    return out.getvalue()


def test_command_named_by_a_command_line():
    assert cli._command(["--debug", "compile", "--model", "x"]) == "compile"
    assert cli._command(["--version"]) is None
    assert cli._command(["--", "compile"]) is None
    assert cli._command(["nonsense"]) == "nonsense"          # the whole parser reports it


def test_unknown_command_is_reported_with_every_choice(capsys):
    with pytest.raises(SystemExit):
        cli.main(["nonsense"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nonsense'" in err and "compile" in err and "gap-report" in err


def _run(args, tmp_path, code, **kw):
    """A process running ``code`` (Python) with defc.cli importable from the checkout."""
    env = dict(os.environ, DEFC_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code] + args, cwd=tmp_path, env=env, capture_output=True,
                          text=True, **kw)


ENTRY = "import sys; sys.argv[0] = 'defc'; from defc.cli import entry; entry()"


def test_the_defc_script_exits_with_the_status_and_all_its_output(tmp_path):
    out = tmp_path / "out"
    proc = _run(["compile", "--model", "llama-3.1-8b", "--out", str(out), "--format", "json"], tmp_path, ENTRY)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)                      # flushed whole before the process ended
    written = {os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs}
    assert written == {os.path.relpath(d["path"], out) for d in report["definitions"]} | {"manifest.json"}
    bad = _run(["compile", "--model", "no-such-model", "--out", str(out)], tmp_path, ENTRY)
    assert bad.returncode == 2 and bad.stderr.startswith("defc: ") and "Traceback" not in bad.stderr


def test_the_defc_script_into_a_closed_pipe_ends_quietly(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, "compile", "--all-models", "--dry-run",
                             "--out", str(tmp_path / "out")], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, DEFC_CACHE_DIR=str(tmp_path / "cache"),
                                                             PYTHONPATH=ROOT))
    proc.stdout.readline()
    proc.stdout.close()                                   # like `defc compile ... | head -1`
    err = proc.stderr.read().decode()
    assert proc.wait() == 0
    assert "Traceback" not in err


def test_the_defc_script_under_a_profiler_writes_the_profile(tmp_path):
    profile = tmp_path / "defc.prof"
    proc = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "defc.cli", "compile",
                           "--model", "llama-3.1-8b", "--out", str(tmp_path / "o")], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ, DEFC_CACHE_DIR=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stderr
    import pstats
    assert any("compile_models" in name for _, _, name in pstats.Stats(str(profile)).stats)
