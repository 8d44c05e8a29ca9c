"""Plain-text tables and JSON output shared by the commands."""
from __future__ import annotations

import json
import sys
from typing import List, Sequence


def table(headers: Sequence[str], rows: List[Sequence], out=None) -> None:
    out = out or sys.stdout
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    fmt = "  ".join("{:<%d}" % w for w in widths)
    print(fmt.format(*headers).rstrip(), file=out)
    print(fmt.format(*["-" * w for w in widths]).rstrip(), file=out)
    for r in rows:
        print(fmt.format(*r).rstrip(), file=out)


def emit_json(obj, out=None) -> None:
    json.dump(obj, out or sys.stdout, indent=2, ensure_ascii=False)
    (out or sys.stdout).write("\n")


def comma_list(text):
    if text is None:
        return None
    return [p.strip() for p in str(text).split(",") if p.strip()]


# -- conventions shared by the commands -----------------------------------------------------------
# Results (tables, summaries, JSON) go to stdout; diagnostics (warnings, gaps, errors, progress)
# to stderr.  -q/--quiet drops result lines (never diagnostics, never what --format json asks
# for); -v/--verbose adds detail (one line per file, every warning in full).

def verbosity(args) -> int:
    """-1 with -q/--quiet, 1 with -v/--verbose, else 0."""
    if getattr(args, "quiet", False):
        return -1
    return 1 if getattr(args, "verbose", False) else 0


def diagnostic(text: str) -> None:
    """One ``defc: …`` line on stderr."""
    print(f"defc: {text}", file=sys.stderr)


class Progress:
    """A progress bar on stderr while work runs: rich's, only when stderr is a terminal (and not
    -q); otherwise it shows nothing.  ``log(line)`` prints a line above the bar (plainly to
    ``out`` without one)."""

    def __init__(self, total: int, description: str, enabled: bool = True, stream=None, out=None):
        self.stream = stream or sys.stderr
        self.out = out
        self.total = total
        self.description = description
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(enabled and isatty and isatty())
        self._bar = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeElapsedColumn)
            console = Console(file=self.stream, force_terminal=True)
            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("{task.fields[item]}"), console=console,
                            transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total or None, item="")
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        return False

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total or None)

    def start(self, item: str) -> None:
        """The item now being worked on."""
        if self._bar is not None:
            self._bar.update(self._task, item=item[:60])

    def advance(self, item: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, item=item[:60])

    def log(self, text: str, out=None) -> None:
        out = out or self.out or sys.stdout
        if self._bar is not None and out is self.stream:
            self._bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=out)
            out.flush()
