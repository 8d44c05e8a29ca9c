"""The ``defc`` command line.  Each command lives in its own module with ``register(sub)``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__

# One module per command; each has register(subparsers) that sets func=run on its parser.
COMMANDS = [
    "defc.cmd_compile",
    "defc.cmd_models",
    "defc.cmd_trace", "defc.cmd_stage", "defc.cmd_diff",
    "defc.cmd_lint",
    "defc.cmd_validate",
    "defc.cmd_verify",
    "defc.cmd_new_op",
    "defc.cmd_coverage",
    "defc.cmd_gap_report",
]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="defc", description="Compile FlashInfer-Bench Definition JSONs from YAML specs, "
                                 "model configs and serving configs.")
    ap.add_argument("--version", action="version", version=f"defc {__version__}")
    ap.add_argument("--debug", action="store_true", help="show a traceback on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return ap


def _print_traceback() -> None:
    import traceback        # only for --debug: not loaded at every start-up
    traceback.print_exc()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DEFC_DEBUG") == "1"
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
