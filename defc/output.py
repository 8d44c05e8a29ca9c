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
