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


def _pyrepr(v: Any) -> str:
    """A Python literal for a value (used as ``{{ x | py }}`` in reference templates)."""
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
MAX_TEMPLATE_REPEAT = 1_000_000


def _tojson(value: Any, indent: Optional[int] = None) -> str:
    """``{{ x | tojson }}``: plain JSON, exactly ``json.dumps(x, ensure_ascii=False)``.  Templates
    render JSON and Python source, not HTML, so Jinja's HTML-safe variant (which also escapes
    ``<>&'``) is not needed; the values parsed back are the same either way."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


@lru_cache(maxsize=8)
def environment(dirs: Tuple[str, ...]):
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.exceptions import SecurityError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """The sandbox limits range(); this also bounds ``**`` and ``*``, which it leaves alone, so
        ``{{ x ** 10**9 }}`` or ``{{ 'x' * 10**10 }}`` fail at once instead of hanging."""
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(left, int) and isinstance(right, int) \
                    and abs(right) > MAX_TEMPLATE_EXPONENT and abs(left) > 1:
                raise SecurityError(f"exponent {right} is too large (at most {MAX_TEMPLATE_EXPONENT})")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_TEMPLATE_REPEAT:
                        raise SecurityError(f"repeating a {type(seq).__name__} would make more than "
                                            f"{MAX_TEMPLATE_REPEAT} items")
            return super().call_binop(context, operator, left, right)

    env = BoundedSandbox(loader=FileSystemLoader(list(dirs)), undefined=StrictUndefined,
                         autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.filters["py"] = _pyrepr
    return env


def template_dirs(extra: Optional[List[str]] = None) -> Tuple[str, ...]:
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
            template = self._templates.get(name)
            if template is None:
                template = self._templates[name] = environment(self.dirs).get_template(name)
            return template.render(context)
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
