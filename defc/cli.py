"""The ``defc`` command line.  Each command lives in its own module with ``register(sub)``."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import List, Optional

from . import __version__

# Each command's module; its register(subparsers) adds the command's parser and sets func=run.
COMMANDS = {
    "compile": "defc.cmd_compile",
    "models": "defc.cmd_models", "cookbook-snapshot": "defc.cmd_models",
    "trace": "defc.cmd_trace", "stage": "defc.cmd_stage", "diff": "defc.cmd_diff",
    "lint": "defc.cmd_lint",
    "validate": "defc.cmd_validate",
    "verify": "defc.cmd_verify",
    "new-op": "defc.cmd_new_op",
    "coverage": "defc.cmd_coverage",
    "gap-report": "defc.cmd_gap_report",
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of every command, or only of ``command``'s module (enough to parse a command
    line that names it: importing and building the others costs a start-up ~10 ms)."""
    ap = argparse.ArgumentParser(prog="defc", description="Compile FlashInfer-Bench Definition JSONs from YAML specs, "
                                 "model configs and serving configs.")
    ap.add_argument("--version", action="version", version=f"defc {__version__}")
    ap.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).register(sub)
    return ap


def _command(argv: List[str]) -> Optional[str]:
    """The command a command line names: its first argument that is not an option (defc's own
    options take no value)."""
    for a in argv:
        if a == "--":
            return None
        if not a.startswith("-"):
            return a
    return None


def _print_traceback() -> None:
    import traceback        # only for --debug: not loaded at every start-up
    traceback.print_exc()


def main(argv=None) -> int:
    """Run one defc command; its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DEFC_DEBUG") == "1"
    ap = build_parser(_command(argv))
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    log = logging.getLogger("defc")
    shown = logging.StreamHandler(sys.stderr)
    shown.setFormatter(logging.Formatter("defc: %(message)s"))
    if debug:           # what defc logs, e.g. why the result cache did not reuse a model
        log.addHandler(shown)
        log.setLevel(logging.DEBUG)
    try:
        return _run(args, debug)
    finally:
        if debug:
            log.removeHandler(shown)
            log.setLevel(logging.NOTSET)


def _run(args, debug: bool) -> int:
    from compiler.errors import DefcError, DefcErrors
    try:
        return int(args.func(args) or 0)
    except DefcErrors as e:
        if debug:
            _print_traceback()
        for err in e.errors:
            print(f"defc: {err}", file=sys.stderr)
        return 2
    except DefcError as e:
        if debug:
            _print_traceback()
        print(f"defc: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("defc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in defc: one line unless --debug
        if debug:
            _print_traceback()
        print(f"defc: internal error: {type(e).__name__}: {e} (run with --debug for a traceback)", file=sys.stderr)
        return 3


def entry() -> None:
    """The ``defc`` script."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
