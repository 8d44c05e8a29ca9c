"""Errors that reach the user as one line: ``file:line:col: error: message``.

Every stage raises :class:`DefcError` for bad input.  The CLI prints ``str(err)`` and exits
with a non-zero code; a traceback is only shown with ``--debug``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Location:
    """A place in an input file (1-based line and column; 0 means unknown)."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.col or 1}"
        return self.file


class DefcError(Exception):
    """A user-facing error with an optional location and field path."""

    def __init__(self, message: str, location: Optional[Location] = None,
                 field: Optional[str] = None, severity: str = "error"):
        super().__init__(message)
        self.message = message
        self.location = location
        self.field = field
        self.severity = severity

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        field = f"{self.field}: " if self.field else ""
        text = f"{where}{self.severity}: {field}{self.message}"
        # one line, always
        return " ".join(text.split("\n"))


class DefcErrors(DefcError):
    """Several errors found in one pass (lint, schema checks)."""

    def __init__(self, errors: list):
        self.errors = list(errors)
        super().__init__(str(self.errors[0]) if self.errors else "no errors")

    def __str__(self) -> str:  # the first error; callers that want all iterate .errors
        return str(self.errors[0])
