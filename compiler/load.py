"""Stage 1, load: read YAML/JSON files into plain data plus a map of where each value sits.

ruamel.yaml's round-trip loader keeps line/column information and rejects duplicate keys;
here that becomes a :class:`Located` document whose ``where(path)`` answers a
:class:`~compiler.errors.Location` for any key path, so later stages can report
``specs/moe.yaml:41:7: error: ...`` without carrying ruamel objects around.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Dict, Optional, Tuple

from . import cache
from .errors import DefcError, Location

Path = Tuple[Any, ...]


class Located:
    """Plain data read from ``file`` and the 1-based (line, col) of every key path in it.

    ``positions`` may be given as the JSON text the parse cache keeps them in: they are needed only
    to report an error, so that text is parsed the first time they are asked for."""

    __slots__ = ("file", "data", "_positions", "_positions_json", "digest")

    def __init__(self, file: str, data: Any, positions: Optional[Dict[Path, Tuple[int, int]]] = None,
                 positions_json: Optional[str] = None):
        self.file = file
        self.data = data
        self.digest: Optional[str] = None     # sha256 of the text it was read from (load_yaml)
        self._positions = positions if positions is not None or positions_json is not None else {}
        self._positions_json = positions_json

    @property
    def positions(self) -> Dict[Path, Tuple[int, int]]:
        if self._positions is None:
            self._positions = {tuple(p): (l, c) for p, l, c in json.loads(self._positions_json)}
            self._positions_json = None
        return self._positions

    def where(self, path: Path = ()) -> Location:
        path = tuple(path)
        positions = self.positions
        while path:
            if path in positions:
                line, col = positions[path]
                return Location(self.file, line, col)
            path = path[:-1]
        return Location(self.file, 1, 1)


def display_path(path: str) -> str:
    """A path as shown in messages: relative to the working directory when that is shorter."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("../../") and len(rel) < len(path) else path


def _yaml():
    from ruamel.yaml import YAML
    y = YAML(typ="rt")
    y.allow_duplicate_keys = False
    return y


MAX_NODES = 1_000_000      # values a document may expand to through aliases (billion laughs)
MAX_FILE_BYTES = 16 * 1024 * 1024      # a spec, config, cookbook YAML, dump or dataset file
MAX_EXPANDED_BYTES = 16 * 1024 * 1024  # the text a YAML document's scalars add up to, aliases expanded
MAX_NESTING = 100          # containers inside containers in a YAML or JSON document
_CORE_TAGS = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "seq", "map")}


def _tag_problem(node) -> Optional[str]:
    """An explicit non-core tag (``!!python/object/apply:...``, ``!foo``) is refused, not interpreted."""
    tag = getattr(node, "tag", None)
    value = getattr(tag, "value", tag) if tag is not None else None
    if isinstance(value, str) and value and value not in _CORE_TAGS:
        shown = "!!" + value[len("tag:yaml.org,2002:"):] if value.startswith("tag:yaml.org,2002:") else value
        return f"YAML tag '{shown}' is not allowed"
    return None


def _expanded_size(node, memo: Dict[int, Tuple[int, int]], depth: int = 0) -> Tuple[int, int]:
    """How many values, and how many bytes of scalar text, a node expands to once aliases are
    copied (shared nodes counted once per use); deeper than MAX_NESTING is refused."""
    if not isinstance(node, (dict, list)):
        return 1, (len(node) if isinstance(node, str) else 8)
    if depth > MAX_NESTING:
        raise DefcError(f"invalid YAML: nested more than {MAX_NESTING} levels deep")
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = (1, 0)                 # a node that contains itself counts once
    n, size = 1, 0
    items = list(node.items()) if isinstance(node, dict) else [(None, v) for v in node]
    for k, v in items:
        vn, vs = _expanded_size(v, memo, depth + 1)
        n += vn
        size += vs + (len(k) if isinstance(k, str) else 8)
        if n > MAX_NODES:
            raise DefcError(f"invalid YAML: aliases expand to more than {MAX_NODES} values")
        if size > MAX_EXPANDED_BYTES:
            raise DefcError(f"invalid YAML: aliases expand to more than {MAX_EXPANDED_BYTES} bytes of text")
    memo[key] = (n, size)
    return n, size


def _plain(node, path: Path, positions: Dict[Path, Tuple[int, int]]):
    """Convert ruamel's commented containers into dict/list, recording positions."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
    problem = _tag_problem(node) if isinstance(node, (CommentedMap, CommentedSeq, TaggedScalar)) else None
    if problem:
        at = positions.get(path, (0, 0))
        raise DefcError(problem, Location("", *at))
    if isinstance(node, TaggedScalar):
        return str(node.value)
    if isinstance(node, CommentedMap):
        out = {}
        for k in node:
            try:
                line, col = node.lc.key(k)
                positions[path + (k,)] = (line + 1, col + 1)
            except (KeyError, TypeError, AttributeError):
                pass
            if not isinstance(k, (str, int, float, bool)) or k is None:
                at = positions.get(path + (k,), positions.get(path, (0, 0)))
                raise DefcError(f"mapping key {k!r} must be a string", Location("", *at))
            out[k] = _plain(node[k], path + (k,), positions)
        return out
    if isinstance(node, CommentedSeq):
        out = []
        for i, v in enumerate(node):
            try:
                line, col = node.lc.item(i)
                positions[path + (i,)] = (line + 1, col + 1)
            except (KeyError, TypeError, AttributeError):
                pass
            out.append(_plain(v, path + (i,), positions))
        return out
    # scalars: ruamel returns str subclasses, ScalarFloat, ScalarBoolean, ints...
    from ruamel.yaml.scalarstring import ScalarString
    if isinstance(node, ScalarString):
        return str(node)
    if isinstance(node, bool):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if node is None or isinstance(node, str):
        return node
    # timestamps, binary, anchors of other types: keep as text so the schema can reject them
    return str(node)


def read_bytes(path: str, what: str = "file", limit: int = MAX_FILE_BYTES) -> bytes:
    """A regular file's bytes (never a FIFO, device or socket: those could block or never end),
    at most ``limit`` of them; anything else is a one-line DefcError."""
    import stat
    shown = display_path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DefcError(f"{what} not found", Location(shown)) from None
    except OSError as e:
        raise DefcError(f"cannot read {what}: {e.strerror}", Location(shown)) from None
    if stat.S_ISDIR(st.st_mode):
        raise DefcError(f"{what} is a directory, expected a file", Location(shown))
    if not stat.S_ISREG(st.st_mode):
        raise DefcError(f"{what} is not a regular file (a device, FIFO or socket is not read)", Location(shown))
    if st.st_size > limit:
        raise DefcError(f"{what} is larger than {limit} bytes ({st.st_size})", Location(shown))
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):      # replaced between stat and open
                raise DefcError(f"{what} is not a regular file", Location(shown))
            with os.fdopen(fd, "rb") as fh:
                fd = -1
                raw = fh.read(limit + 1)
        finally:
            if fd >= 0:
                os.close(fd)
    except IsADirectoryError:
        raise DefcError(f"{what} is a directory, expected a file", Location(shown)) from None
    except OSError as e:
        raise DefcError(f"cannot read {what}: {e.strerror}", Location(shown)) from None
    if len(raw) > limit:
        raise DefcError(f"{what} is larger than {limit} bytes", Location(shown))
    return raw


def nesting_depth_problem(data: Any, limit: int = MAX_NESTING) -> bool:
    """True when lists/dicts are nested more than ``limit`` deep (checked without recursion)."""
    stack = [(data, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list)):
            if d > limit:
                return True
            stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return False


def read_text(path: str, what: str = "file") -> str:
    shown = display_path(path)
    raw = read_bytes(path, what)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DefcError(f"not valid UTF-8 (byte {e.start})", Location(shown, line, 1)) from None


def load_yaml(path: str, what: str = "YAML file") -> Located:
    """Load one YAML document with positions; any problem becomes a one-line DefcError.

    ruamel's round-trip parser is slow, so a successful parse is cached (data + positions, as
    JSON) under ~/.cache/defc keyed by a hash of the text; only valid documents are cached, so
    every error is still found by a real parse.
    """
    shown = display_path(path)
    text = read_text(path, what)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    key = f"yaml-{cache.VERSION}-{digest}"
    hit = cache.get(key)
    if hit is not None:
        located = Located(shown, hit[0], positions_json=hit[1])
    else:
        located = _parse_yaml(text, shown)
        if _json_exact(located.data):  # else (e.g. integer keys) parsed every time
            cache.put(key, located.data, located.positions)
    located.digest = digest
    return located


def _json_exact(x) -> bool:
    """True when JSON would give back exactly this value (string keys, finite numbers)."""
    if isinstance(x, dict):
        return all(isinstance(k, str) and _json_exact(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_json_exact(v) for v in x)
    if isinstance(x, float):
        return x == x and x not in (float("inf"), float("-inf"))
    return x is None or isinstance(x, (str, int, bool))


def _yaml_error(e, shown: str) -> DefcError:
    """A ruamel parse error as one located line."""
    from ruamel.yaml.error import MarkedYAMLError
    if isinstance(e, MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        problem = (e.problem or e.context or "invalid YAML").strip()
        return DefcError(f"invalid YAML: {problem}",
                         Location(shown, mark.line + 1 if mark else 0, mark.column + 1 if mark else 0))
    return DefcError(f"invalid YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}", Location(shown))


def _flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow collections ([...] and {...}) in text, brackets inside
    quoted scalars and comments not counted (an upper bound good enough to refuse a bomb cheaply)."""
    depth = deepest = 0
    for m in re.finditer(r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\n]|'')*'|#[^\n]*|[\[\]{}]", text):
        c = m.group(0)
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth = max(0, depth - 1)
    return deepest


def _parse_yaml(text: str, shown: str) -> Located:
    from ruamel.yaml.error import YAMLError
    from ruamel.yaml.constructor import DuplicateKeyError
    if "\x00" in text:
        raise DefcError("file contains a NUL character", Location(shown, text[: text.index("\x00")].count("\n") + 1, 1))
    if _flow_depth(text) > MAX_NESTING:          # refused before ruamel builds a node per level
        raise DefcError(f"invalid YAML: nested more than {MAX_NESTING} levels deep", Location(shown))
    try:
        node = _yaml().load(text)
    except DuplicateKeyError as e:
        mark = e.problem_mark
        key = str(e.problem).split('"')[1] if '"' in str(e.problem) else ""
        msg = f"duplicate key '{key}'" if key else "duplicate key"
        raise DefcError(msg, Location(shown, mark.line + 1 if mark else 0, mark.column + 1 if mark else 0)) from None
    except YAMLError as e:
        raise _yaml_error(e, shown) from None
    except RecursionError:
        raise DefcError("invalid YAML: nested too deeply", Location(shown)) from None
    positions: Dict[Path, Tuple[int, int]] = {}
    try:
        _expanded_size(node, {})
        data = _plain(node, (), positions)
    except DefcError as e:
        at = e.location
        raise DefcError(e.message, Location(shown, at.line, at.col) if at else Location(shown)) from None
    except RecursionError:
        raise DefcError("invalid YAML: nested too deeply", Location(shown)) from None
    return Located(shown, data, positions)


class _NotJSONConstant(ValueError):
    pass


def _no_constant(name: str):
    """Python's json accepts NaN and Infinity; JSON (and a model config) does not."""
    raise _NotJSONConstant(name)


class _DuplicateJSONKey(ValueError):
    pass


def _unique_pairs(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateJSONKey(k)
        out[k] = v
    return out


def _text_position(text: str, start: int) -> Tuple[int, int]:
    return text.count("\n", 0, start) + 1, start - text.rfind("\n", 0, start)


def parse_json_text(text: str, shown: str) -> Any:
    """JSON text to data: duplicate keys, NaN/Infinity and nesting deeper than MAX_NESTING are
    errors (one located line)."""
    try:
        data = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_pairs)
    except _DuplicateJSONKey as e:
        key = e.args[0]
        hits = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
        at = _text_position(text, hits[1]) if len(hits) > 1 else (0, 0)
        raise DefcError(f"invalid JSON: duplicate key {json.dumps(key, ensure_ascii=False)}", Location(shown, *at)) from None
    except _NotJSONConstant as e:
        m = re.search(r"(?<![\w.\"])" + re.escape(e.args[0]) + r"(?![\w\"])", text)
        at = (text.count("\n", 0, m.start()) + 1, m.start() - text.rfind("\n", 0, m.start())) if m else (0, 0)
        raise DefcError(f"invalid JSON: {e.args[0]} is not a JSON number", Location(shown, *at)) from None
    except json.JSONDecodeError as e:
        raise DefcError(f"invalid JSON: {e.msg}", Location(shown, e.lineno, e.colno)) from None
    except RecursionError:
        raise DefcError(f"invalid JSON: nested more than {MAX_NESTING} levels deep", Location(shown)) from None
    if nesting_depth_problem(data):
        raise DefcError(f"invalid JSON: nested more than {MAX_NESTING} levels deep", Location(shown))
    return data


def load_json(path: str, what: str = "JSON file") -> Any:
    return parse_json_text(read_text(path, what), display_path(path))


def load_safe_yaml(path: str, what: str = "YAML file") -> Any:
    """Fast load without positions (catalogue and cookbook data)."""
    shown = display_path(path)
    text = read_text(path, what)
    key = cache.text_key("safe", text)
    hit = cache.get(key)                # ruamel has no C loader here: cache like load_yaml
    if hit is not None:
        return hit[0]
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError
    y = YAML(typ="safe", pure=False)
    y.allow_duplicate_keys = False
    try:
        data = y.load(text)
        try:
            _expanded_size(data, {})
        except DefcError as e:
            raise DefcError(e.message, Location(shown)) from None
        if _json_exact(data):
            cache.put(key, data)
        return data
    except YAMLError as e:
        raise _yaml_error(e, shown) from None
    except RecursionError:
        raise DefcError("invalid YAML: nested too deeply", Location(shown)) from None
