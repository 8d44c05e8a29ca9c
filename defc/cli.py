"""The ``defc`` command line.  Each command lives in its own module with ``register(sub)``."""
from __future__ import annotations

import argparse
import errno
import importlib
import io
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
    "workloads": "defc.cmd_workloads",
    "cost": "defc.cmd_cost",
}


# Exit statuses (README: "Exit codes").
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class Parser(argparse.ArgumentParser):
    """argparse with defc's usage errors: the usage line, then ``defc: usage error: …`` (exit 2).
    Bad input (a spec, a config, an option's value) says ``defc: error: …`` or
    ``defc: FILE:LINE:COL: error: …``, also exit 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"defc: usage error: {message}\n")


def _add_verbosity(p: argparse.ArgumentParser, default) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="print no result lines (warnings and errors still go to stderr)")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="print every detail (e.g. one line per file)")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of every command, or only of ``command``'s module (enough to parse a command
    line that names it: importing and building the others costs a start-up ~10 ms)."""
    ap = Parser(prog="defc", description="Compile FlashInfer-Bench Definition JSONs from YAML specs, "
                "model configs and serving configs.",
                epilog="Exit status: 0 ok, 1 findings (collisions, gaps, lint/validate errors, failed checks, "
                       "unexplained diff rows), 2 bad input or usage, 3 internal error.")
    ap.add_argument("--version", action="version", version=f"defc {__version__}")
    ap.add_argument("--debug", action="store_true", help="show a traceback on errors")
    _add_verbosity(ap, False)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    modules = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in modules:
        importlib.import_module(name).register(sub)
    for p in sub.choices.values():      # -q/-v on every command (after it too: `defc compile -q`)
        _add_verbosity(p, argparse.SUPPRESS)
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


def _usable_streams() -> None:
    """A closed stdout or stderr (``defc models >&-``) becomes the null device: output to it is
    dropped quietly instead of failing the command."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, os.fdopen(os.open(os.devnull, os.O_WRONLY), "w", encoding="utf-8"))
            continue
        try:
            os.fstat(stream.fileno())
        except (AttributeError, ValueError, io.UnsupportedOperation):
            continue                    # not a real file (a test's capture): leave it
        except OSError:
            setattr(sys, name, os.fdopen(os.open(os.devnull, os.O_WRONLY), "w", encoding="utf-8"))


def _quiet_exit_flush() -> None:
    """Flush stdout now; if the reader went away (a closed pipe), drop what is left so that
    Python's own flush at exit has nothing to complain about."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass


def main(argv=None) -> int:
    """Run one defc command; its exit status."""
    _usable_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("DEFC_DEBUG") == "1"
    ap = build_parser(_command(argv))
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help(sys.stderr)
        return EXIT_USAGE
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
    from defc.compiler.errors import DefcError, DefcErrors
    try:
        return int(args.func(args) or 0)
    except DefcErrors as e:
        if debug:
            _print_traceback()
        for err in e.errors:
            print(f"defc: {err}", file=sys.stderr)
        return EXIT_USAGE
    except DefcError as e:
        if debug:
            _print_traceback()
        print(f"defc: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("defc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_exit_flush()
        return 0
    except OSError as e:
        if e.errno in (errno.EPIPE, errno.EBADF):       # stdout or stderr closed under us
            _quiet_exit_flush()
            return 0
        if debug:
            _print_traceback()
        print(f"defc: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a bug in defc: one line unless --debug
        if debug:
            _print_traceback()
        print(f"defc: internal error: {type(e).__name__}: {e} (run with --debug for a traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def entry() -> None:
    """The ``defc`` script."""
    code = main()
    _quiet_exit_flush()
    sys.exit(code)


if __name__ == "__main__":
    entry()
