"""Resolving dotted API names (``flashinfer.norm.rmsnorm``, ``pkg.mod.Class.method``)."""
from __future__ import annotations

import importlib
from typing import Any, Optional, Tuple


class DottedNameError(LookupError):
    """The name does not resolve; the message says why."""


def locate(path: str) -> Tuple[Optional[Any], Any]:
    """(owner, object) for the longest importable module prefix followed by attributes.

    ``owner`` is the object the last attribute was read from (a class for methods), or None
    when the path names a module."""
    parts = [p for p in str(path).split(".") if p]
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        except Exception as e:  # a module that fails to import for another reason
            raise DottedNameError(f"cannot import {'.'.join(parts[:i])}: {type(e).__name__}: {e}") from None
        owner = None
        for p in parts[i:]:
            try:
                owner, obj = obj, getattr(obj, p)
            except AttributeError:
                raise DottedNameError(f"no '{path}'") from None
        return owner, obj
    raise DottedNameError(f"cannot import any module of '{path}'")


def resolve(path: str) -> Optional[Any]:
    """The object a dotted name names, or None."""
    try:
        return locate(path)[1]
    except DottedNameError:
        return None
