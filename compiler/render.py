"""Stage 4, render: an evaluated instance → a Definition dict, through Jinja templates.

Templates run in Jinja's sandbox with StrictUndefined: a template cannot reach Python
internals (``''.__class__`` and friends raise SecurityError) and a misspelt variable is an error,
not an empty string.  The reference template renders the ``run(...)`` source; the definition
template (default ``definition.json.j2``) renders the JSON document around it.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

from .check import field_name
from .errors import DefcError, Location
from .evaluate import Instance
from .load import display_path
from .paths import TEMPLATES_DIR

KEY_ORDER = ("name", "description", "op_type", "tags", "axes", "constraints", "inputs", "outputs", "reference")


def _defined(v: Any) -> None:
    """An undefined template variable given to a filter raises Jinja's UndefinedError, which names
    it (``'hiden_size' is undefined``), instead of a TypeError about its class."""
    from jinja2 import Undefined
    if isinstance(v, Undefined):
        str(v)  # StrictUndefined: raises UndefinedError naming the variable
        raise TypeError("an undefined value cannot be written")


def _pyrepr(v: Any) -> str:
    """A Python literal for a value (used as ``{{ x | py }}`` in reference templates)."""
    _defined(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (bool, int, str, type(None))):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_pyrepr(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_pyrepr(k)}: {_pyrepr(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as a Python literal")


MAX_TEMPLATE_EXPONENT = 64
MAX_TEMPLATE_REPEAT = 1_000_000     # items a `*` repeat may make
MAX_TEMPLATE_OPS = 1_000_000        # loop iterations, calls, operators, attribute reads per render
MAX_TEMPLATE_OUTPUT = 4_000_000     # characters a render may produce (and any one value may hold)
MAX_TEMPLATE_DEPTH = 100            # nested macro / function calls
MAX_TEMPLATE_WIDTH = 10_000         # a width, count or indent given to a filter or str method
MAX_TEMPLATE_BYTES = 1_000_000      # a template file
_CALL_COST = 10                     # a call counts as this many operations

# str methods a template may call: those whose result is at most their input's size, and those
# bounded below (widths, replace, join, format)
_SAFE_STR_METHODS = frozenset(
    "capitalize casefold count endswith find index isalnum isalpha isascii isdecimal isdigit isidentifier "
    "islower isnumeric isprintable isspace istitle isupper lower lstrip partition removeprefix removesuffix "
    "rfind rindex rpartition rsplit rstrip split splitlines startswith strip swapcase title upper encode "
    "center ljust rjust zfill expandtabs replace join format format_map".split())
_FORMAT_WIDTH = None
_WIDTH_FILTERS = frozenset(["center", "batch", "slice", "indent", "truncate", "wordwrap"])
MAX_TEMPLATE_INT_BITS = 4096        # an integer a template computes


def _format_widths(fmt: str):
    """The widths and precisions of a %-format or str.format string (None for a '*' width)."""
    import re
    import string
    global _FORMAT_WIDTH
    if _FORMAT_WIDTH is None:
        _FORMAT_WIDTH = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
    for m in _FORMAT_WIDTH.finditer(fmt):
        for g in m.groups():
            if g is not None:
                yield None if g == "*" else int(g)
    try:
        for _, _, spec, _ in string.Formatter().parse(fmt):
            for d in re.findall(r"\d+|\{", spec or ""):
                yield None if d == "{" else int(d)
    except ValueError:
        return


def _tojson(value: Any, indent: Optional[int] = None) -> str:
    """``{{ x | tojson }}``: plain JSON, exactly ``json.dumps(x, ensure_ascii=False)``.  Templates
    render JSON and Python source, not HTML, so Jinja's HTML-safe variant (which also escapes
    ``<>&'``) is not needed; the values parsed back are the same either way."""
    _defined(value)
    return json.dumps(value, ensure_ascii=False, indent=indent)


class TemplateBudget:
    """What one render may spend: operations, output characters and call depth."""

    __slots__ = ("ops", "out", "depth")

    def __init__(self):
        self.ops = 0
        self.out = 0
        self.depth = 0

    def spend(self, ops: int = 1, out: int = 0) -> None:
        self.ops += ops
        self.out += out
        if self.ops > MAX_TEMPLATE_OPS or self.out > MAX_TEMPLATE_OUTPUT:
            self._over()

    def _over(self) -> None:
        from jinja2.exceptions import SecurityError
        if self.ops > MAX_TEMPLATE_OPS:
            raise SecurityError(f"template ran more than {MAX_TEMPLATE_OPS} operations (loop iterations, calls)")
        if self.out > MAX_TEMPLATE_OUTPUT:
            raise SecurityError(f"template output would be longer than {MAX_TEMPLATE_OUTPUT} characters")


def _check_size(value: Any, what: str = "a value") -> Any:
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_TEMPLATE_OUTPUT:
        from jinja2.exceptions import SecurityError
        unit = "characters" if isinstance(value, str) else "items"
        raise SecurityError(f"{what} would hold more than {MAX_TEMPLATE_OUTPUT} {unit}")
    return value


def _check_width(n: Any, what: str) -> None:
    from jinja2.exceptions import SecurityError
    if n is None:
        raise SecurityError(f"{what}: a '*' or nested width is not allowed")
    if isinstance(n, str):
        n = len(n)
    if isinstance(n, int) and not isinstance(n, bool) and abs(n) > MAX_TEMPLATE_WIDTH:
        raise SecurityError(f"{what}: {n} is more than the {MAX_TEMPLATE_WIDTH} allowed")


def _check_format(fmt: Any, what: str) -> None:
    if isinstance(fmt, str):
        for w in _format_widths(fmt):
            _check_width(w, what)


def _estimate_replace(s: str, old: str, new: str, count: Any = -1) -> int:
    n = (len(s) + 1) if old == "" else s.count(old)
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(s) + n * (len(new) - len(old))


def _check_estimate(size: int, what: str) -> None:
    from jinja2.exceptions import SecurityError
    if size > MAX_TEMPLATE_OUTPUT:
        raise SecurityError(f"{what} would make more than {MAX_TEMPLATE_OUTPUT} characters")


def _check_str_call(obj, args, kwargs) -> None:
    """Before a str method runs: refuse those that could make a huge string."""
    from jinja2.exceptions import SecurityError
    s, name = obj.__self__, obj.__name__
    what = f"str.{name}"
    if name not in _SAFE_STR_METHODS:
        raise SecurityError(f"{what} is not allowed in templates")
    if name in ("center", "ljust", "rjust", "zfill", "expandtabs"):
        for a in list(args) + list(kwargs.values()):
            _check_width(a, what)
    elif name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        _check_estimate(_estimate_replace(s, args[0], args[1], args[2] if len(args) > 2 else -1), what)
    elif name == "join" and args and isinstance(args[0], (list, tuple, str)):
        _check_estimate(len(s) * max(0, len(args[0]) - 1), what)
    elif name in ("format", "format_map"):
        _check_format(s, what)


def _bounded_filters(filters: Dict[str, Any]) -> Dict[str, Any]:
    """Jinja's filters with their widths and counts bounded (filters run without the sandbox's
    call hook), and every result's size checked."""
    import functools
    from jinja2.exceptions import SecurityError

    def wrap(name, fn):
        skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0     # context / environment first

        @functools.wraps(fn)
        def bounded(*args, **kwargs):
            value = args[skip] if len(args) > skip else None
            rest = args[skip + 1:]
            if name in _WIDTH_FILTERS:
                for a in list(rest) + list(kwargs.values()):
                    if isinstance(a, int) and not isinstance(a, bool):
                        _check_width(a, f"filter {name}")
            if name == "format":
                _check_format(value, "filter format")
            elif name == "indent":
                width = rest[0] if rest else kwargs.get("width", 4)
                _check_width(width, "filter indent")
                if isinstance(value, str):
                    w = len(width) if isinstance(width, str) else int(width)
                    _check_estimate(len(value) + (value.count("\n") + 1) * w, "filter indent")
            elif name == "replace" and isinstance(value, str) and len(rest) >= 2:
                _check_estimate(_estimate_replace(value, str(rest[0]), str(rest[1]),
                                                  rest[2] if len(rest) > 2 else kwargs.get("count", -1)),
                                "filter replace")
            elif name == "join" and isinstance(value, (list, tuple, str)):
                sep = rest[0] if rest else kwargs.get("d", "")
                _check_estimate(len(str(sep)) * max(0, len(value) - 1), "filter join")
            elif name == "wordwrap" and isinstance(value, str):
                wrap_with = rest[2] if len(rest) > 2 else kwargs.get("wrapstring") or "\n"
                _check_estimate(len(value) * (1 + len(str(wrap_with))), "filter wordwrap")
            elif name == "tojson":
                indent = rest[0] if rest else kwargs.get("indent")
                if isinstance(indent, int) and indent > 16:
                    raise SecurityError("filter tojson: an indent of more than 16 is not allowed")
            elif name == "sum":
                start = rest[1] if len(rest) > 1 else kwargs.get("start", 0)
                if not isinstance(start, (int, float)):
                    raise SecurityError("filter sum: only numbers can be summed")
            return _check_size(fn(*args, **kwargs), f"filter {name}")
        return bounded

    return {name: wrap(name, fn) for name, fn in filters.items()}


def _bounded_range(*args):
    """range() whose length is bounded (iterating it is charged per item like any loop)."""
    from jinja2.exceptions import SecurityError
    r = range(*args)
    if len(r) > MAX_TEMPLATE_REPEAT:
        raise SecurityError(f"range of {len(r)} items is too large (at most {MAX_TEMPLATE_REPEAT})")
    return r


def _literal_size(nodes_: List[Any]) -> int:
    """Characters a block writes as literal text (its own and its nested blocks')."""
    from jinja2 import nodes
    total = 0
    for n in nodes_:
        if isinstance(n, nodes.TemplateData):
            total += len(n.data)
        elif isinstance(n, nodes.Const) and isinstance(n.value, str):
            total += len(n.value)
        for child in n.iter_child_nodes():
            total += _literal_size([child])
    return total


def _metered_tree(tree):
    """Each ``for`` loop iterates through ``defc_iter`` (charging the budget per item, with the
    literal text its body writes) and each ``~`` result has its size checked."""
    from jinja2 import nodes
    from jinja2.visitor import NodeTransformer

    class Meter(NodeTransformer):
        def visit_For(self, node):
            node = self.generic_visit(node)
            node.iter = nodes.Filter(node.iter, "defc_iter", [nodes.Const(_literal_size(node.body))], [], None, None,
                                     lineno=node.iter.lineno)
            return node

        def visit_Concat(self, node):
            return nodes.Filter(self.generic_visit(node), "defc_value", [], [], None, None, lineno=node.lineno)

    return Meter().visit(tree)


class SafeLoader:
    """Templates from a list of folders: regular files only, no larger than MAX_TEMPLATE_BYTES,
    and never through a symlink that leads outside the folder the template was found in."""

    def __new__(cls, dirs: Tuple[str, ...]):
        from jinja2 import BaseLoader, TemplateNotFound
        from jinja2.exceptions import SecurityError
        from jinja2.loaders import split_template_path
        import stat

        class _Loader(BaseLoader):
            def get_source(self, environment, template):
                pieces = split_template_path(template)
                for root in dirs:
                    path = os.path.join(root, *pieces)
                    if not os.path.lexists(path):
                        continue
                    real, real_root = os.path.realpath(path), os.path.realpath(root)
                    if os.path.commonpath([real, real_root]) != real_root:
                        raise SecurityError(f"template '{template}' is a symlink that leads outside "
                                            f"{display_path(root)}")
                    try:
                        st = os.stat(real)
                    except OSError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        if stat.S_ISDIR(st.st_mode):
                            continue
                        raise SecurityError(f"template '{template}' is not a regular file")
                    if st.st_size > MAX_TEMPLATE_BYTES:
                        raise SecurityError(f"template '{template}' is larger than {MAX_TEMPLATE_BYTES} bytes")
                    with open(real, "rb") as fh:
                        raw = fh.read(MAX_TEMPLATE_BYTES + 1)
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise SecurityError(f"template '{template}' is not UTF-8 (byte {e.start})") from None
                    mtime = st.st_mtime_ns
                    return text, os.path.normpath(path), (lambda: _mtime(real) == mtime)
                raise TemplateNotFound(template)
        return _Loader()


def _mtime(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


@lru_cache(maxsize=8)
def environment(dirs: Tuple[str, ...]):
    from jinja2 import StrictUndefined, pass_context
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """Jinja's sandbox with a budget for each render (see :meth:`Renderer.template_text`):
        loop iterations, calls and operators count as operations, output and every value built
        have a size limit, calls a depth limit; widths and repeats given to filters, ``%`` and
        str methods are bounded, and ``lipsum`` is gone."""
        intercepted_binops = frozenset(["*", "**", "%", "+", "//", "/", "-"])

        budget = TemplateBudget()

        def compile(self, source, name=None, filename=None, raw=False, defer_init=False):
            if isinstance(source, str):
                source = self.parse(source, name, filename)
            return super().compile(_metered_tree(source), name, filename, raw, defer_init)

        def call_binop(self, context, operator, left, right):
            self.budget.spend()
            if operator == "**" and isinstance(left, int) and isinstance(right, int) \
                    and abs(right) > MAX_TEMPLATE_EXPONENT and abs(left) > 1:
                raise SecurityError(f"exponent {right} is too large (at most {MAX_TEMPLATE_EXPONENT})")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_TEMPLATE_REPEAT:
                        raise SecurityError(f"repeating a {type(seq).__name__} would make more than "
                                            f"{MAX_TEMPLATE_REPEAT} items")
            if operator == "**" and isinstance(left, int) and isinstance(right, int) \
                    and abs(left).bit_length() * abs(right) > 2 * MAX_TEMPLATE_INT_BITS:
                raise SecurityError(f"{operator!r} would make an integer of more than {MAX_TEMPLATE_INT_BITS} bits")
            if operator == "%" and isinstance(left, str):
                _check_format(left, "'%' formatting")
            out = super().call_binop(context, operator, left, right)
            if isinstance(out, int) and out.bit_length() > MAX_TEMPLATE_INT_BITS:
                raise SecurityError(f"{operator!r} made an integer of more than {MAX_TEMPLATE_INT_BITS} bits")
            return _check_size(out)

        def call(__self, __context, __obj, *args, **kwargs):
            budget = __self.budget
            budget.spend(_CALL_COST)
            if isinstance(getattr(__obj, "__self__", None), str):
                _check_str_call(__obj, args, kwargs)
            if budget.depth >= MAX_TEMPLATE_DEPTH:
                raise SecurityError(f"calls nested more than {MAX_TEMPLATE_DEPTH} deep")
            budget.depth += 1
            try:
                return _check_size(super().call(__context, __obj, *args, **kwargs))
            finally:
                budget.depth -= 1

        def getattr(self, obj, attribute):
            self.budget.spend()
            if isinstance(obj, str) and attribute in ("format", "format_map"):
                _check_format(obj, f"str.{attribute}")
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            self.budget.spend()
            return super().getitem(obj, argument)

    def finalize(value):
        BoundedSandbox.budget.spend(0, len(value) if isinstance(value, str) else 16)
        return value

    @pass_context
    def defc_iter(context, iterable, literal):
        budget = BoundedSandbox.budget
        for item in iterable:
            budget.spend(1, literal)
            yield item

    env = BoundedSandbox(loader=SafeLoader(dirs), undefined=StrictUndefined, finalize=finalize,
                         autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.globals.pop("lipsum", None)
    env.globals["range"] = _bounded_range
    env.filters["tojson"] = _tojson
    env.filters["py"] = _pyrepr
    env.filters = _bounded_filters(env.filters)
    env.filters["defc_iter"] = defc_iter
    env.filters["defc_value"] = lambda v: _check_size(v, "a joined string")
    return env


def _check_template_tree(root: str) -> None:
    """Every entry of a template folder is a folder or a regular file, and no symlink leads outside it
    (its files are read whole to key the result cache: a FIFO would block, /dev/zero never end)."""
    import stat
    real_root = os.path.realpath(root)
    for sub, dirs, files in os.walk(root):
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(sub, name)
            real = os.path.realpath(path)
            if os.path.commonpath([real, real_root]) != real_root:
                raise DefcError(f"a symlink that leads outside the template folder {display_path(root)} "
                                f"(to {display_path(real)})", Location(display_path(path)), "--templates")
            try:
                mode = os.stat(path).st_mode
            except OSError as e:
                raise DefcError(f"cannot read: {e.strerror}", Location(display_path(path)), "--templates") from None
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise DefcError("not a regular file (a template folder holds only files and folders)",
                                Location(display_path(path)), "--templates")
            if stat.S_ISREG(mode) and os.stat(path).st_size > MAX_TEMPLATE_BYTES:
                raise DefcError(f"template is larger than {MAX_TEMPLATE_BYTES} bytes", Location(display_path(path)),
                                "--templates")


def template_dirs(extra: Optional[List[str]] = None) -> Tuple[str, ...]:
    """The template folders: each --templates folder (it must be one), then the project's."""
    for d in extra or []:
        if not os.path.exists(d):
            raise DefcError("template folder not found", Location(display_path(d)), "--templates")
        if not os.path.isdir(d):
            raise DefcError("not a folder (--templates names a folder of templates)", Location(display_path(d)),
                            "--templates")
        _check_template_tree(d)
    return tuple(os.path.abspath(d) for d in (list(extra or []) + [TEMPLATES_DIR]))


def template_file(name: str, dirs: Tuple[str, ...]) -> str:
    """The file a template name resolves to (the first folder that has it)."""
    for d in dirs:
        p = os.path.join(d, name)
        if os.path.isfile(p):
            return p
    return os.path.join(dirs[-1], name)


def _template_error(e: Exception, name: str, dirs: Tuple[str, ...]) -> DefcError:
    """One located line for a Jinja failure; a top-level template that is missing has no location
    (the caller knows which spec field named it)."""
    import traceback
    from jinja2 import TemplateNotFound, TemplateSyntaxError, UndefinedError
    from jinja2.exceptions import SecurityError
    # find the template frame for the line number
    line, path = 0, None
    for fr in traceback.extract_tb(e.__traceback__):
        if fr.filename and fr.filename.endswith(".j2"):
            line, path = fr.lineno, fr.filename
    if isinstance(e, TemplateNotFound):
        where = ", ".join(display_path(d) for d in dirs)
        if path is None:
            return DefcError(f"template '{e.name}' not found in {where}")
        return DefcError(f"included template '{e.name}' not found in {where}", Location(display_path(path), line, 1))
    if isinstance(e, TemplateSyntaxError):
        path = e.filename or template_file(name, dirs)
        return DefcError(f"template syntax error: {e.message}", Location(display_path(path), e.lineno or 0, 1))
    path = path or template_file(name, dirs)
    if isinstance(e, SecurityError):
        return DefcError(f"template tried something the sandbox forbids: {e}", Location(display_path(path), line, 1))
    if isinstance(e, RecursionError):
        return DefcError("template recursion is too deep (does it include itself?)", Location(display_path(path), line, 1))
    if isinstance(e, UndefinedError):
        return DefcError(f"template uses an undefined value: {e.message}", Location(display_path(path), line, 1))
    return DefcError(f"template failed: {type(e).__name__}: {e}", Location(display_path(path), line, 1))


def base_tags(inst: Instance, models: List[str]) -> List[str]:
    tags = [f"status:{inst.status}"]
    if inst.fi_api:
        tags.append(f"fi_api:{inst.fi_api}")
    tags += [f"model:{m}" for m in models]
    for t in inst.tags:
        if t not in tags:
            tags.append(t)
    return tags


def reference_context(inst: Instance) -> Dict[str, Any]:
    ctx: Dict[str, Any] = {}
    ctx.update(inst.params)
    ctx.update(inst.const_axes)
    ctx.update({"name": inst.name, "op_type": inst.op_type, "axes": inst.const_axes, "params": inst.params,
                "inputs": inst.inputs, "outputs": inst.outputs, "quantization": inst.quantization})
    return ctx


def _named_by_spec(e: DefcError, inst: Instance, key: Tuple) -> DefcError:
    """An error without a location (a missing template) points at the spec field that names it."""
    if e.location is not None:
        return e
    path = ("definitions", inst.def_index) + key
    return DefcError(e.message, inst.spec.where(path), field_name(path))


def _template_location(inst: Instance, dirs: Tuple[str, ...]) -> Location:
    """Where the definition template of an instance is (for an error: a lookup on disk)."""
    return Location(display_path(template_file(inst.template, dirs)))


class Renderer:
    """Renders instances for one compile: each template is loaded (and checked against its file)
    once, not at every render.  Make a new one for each compile: a template edited in between is
    then seen."""

    def __init__(self, dirs: Tuple[str, ...]):
        self.dirs = dirs
        self._templates: Dict[str, Any] = {}

    def template_text(self, name: str, context: Dict[str, Any]) -> str:
        try:
            env = environment(self.dirs)
            template = self._templates.get(name)
            if template is None:
                template = self._templates[name] = env.get_template(name)
            budget = type(env).budget = TemplateBudget()
            parts = []
            for chunk in template.generate(context):
                budget.spend(0, len(chunk))
                parts.append(chunk)
            return "".join(parts)
        except Exception as e:  # every Jinja failure becomes one located line
            raise _template_error(e, name, self.dirs) from None

    def reference(self, inst: Instance) -> str:
        try:
            return self.template_text(inst.reference_template, reference_context(inst))
        except DefcError as e:
            raise _named_by_spec(e, inst, ("reference", "template")) from None

    def render(self, inst: Instance, models: List[str]) -> Dict[str, Any]:
        """An instance's Definition dict."""
        reference = self.reference(inst)
        ctx = {"name": inst.name, "description": inst.description, "op_type": inst.op_type,
               "tags": base_tags(inst, models), "axes": inst.axes, "constraints": inst.constraints,
               "inputs": inst.inputs, "outputs": inst.outputs, "reference": reference,
               "params": inst.params, "quantization": inst.quantization}
        try:
            text = self.template_text(inst.template, ctx)
        except DefcError as e:
            raise _named_by_spec(e, inst, ("template",)) from None
        return _definition(inst, text, self.dirs)


def render(inst: Instance, models: List[str], dirs: Tuple[str, ...]) -> Dict[str, Any]:
    """An instance's Definition dict (a one-off; a compile uses one Renderer for all)."""
    return Renderer(dirs).render(inst, models)


def _definition(inst: Instance, text: str, dirs: Tuple[str, ...]) -> Dict[str, Any]:
    """The rendered definition text, parsed and checked, with its keys in the usual order."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DefcError(f"template did not render valid JSON for {inst.name}: {e.msg} (rendered line {e.lineno})",
                        _template_location(inst, dirs)) from None
    if not isinstance(doc, dict):
        raise DefcError(f"template must render a JSON object for {inst.name}", _template_location(inst, dirs))
    missing = [k for k in ("name", "op_type", "axes", "inputs", "outputs", "reference") if k not in doc]
    if missing:
        raise DefcError(f"rendered definition {inst.name} lacks {', '.join(missing)}", _template_location(inst, dirs))
    ordered = {k: doc[k] for k in KEY_ORDER if k in doc}
    ordered.update({k: v for k, v in doc.items() if k not in ordered})
    return ordered
