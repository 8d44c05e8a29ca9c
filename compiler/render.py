"""Stage 4, render: an evaluated instance → a Definition dict, through Jinja templates.

Templates run in Jinja's sandbox with StrictUndefined: a template cannot reach Python
internals (``''.__class__`` and friends raise SecurityError) and a misspelt variable is an error,
not an empty string.  The reference template renders the ``run(...)`` source; the definition
template (default ``definition.json.j2``) renders the JSON document around it.
"""
from __future__ import annotations

import json
import os
import traceback
from functools import lru_cache
from typing import Any, Dict, List, Optional, Tuple

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


@lru_cache(maxsize=8)
def environment(dirs: Tuple[str, ...]):
    from jinja2 import FileSystemLoader, StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    env = ImmutableSandboxedEnvironment(loader=FileSystemLoader(list(dirs)), undefined=StrictUndefined,
                                        autoescape=False, keep_trailing_newline=True, trim_blocks=True,
                                        lstrip_blocks=True)
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
    env.filters["py"] = _pyrepr
    return env


def template_dirs(extra: Optional[List[str]] = None) -> Tuple[str, ...]:
    return tuple(os.path.abspath(d) for d in (list(extra or []) + [TEMPLATES_DIR]))


def _template_error(e: Exception, name: str, dirs: Tuple[str, ...]) -> DefcError:
    from jinja2 import TemplateNotFound, TemplateSyntaxError, UndefinedError
    from jinja2.exceptions import SecurityError
    if isinstance(e, TemplateNotFound):
        return DefcError(f"template '{e.name}' not found in {', '.join(display_path(d) for d in dirs)}",
                         Location(display_path(os.path.join(dirs[-1], name))))
    if isinstance(e, TemplateSyntaxError):
        path = e.filename or os.path.join(dirs[-1], name)
        return DefcError(f"template syntax error: {e.message}", Location(display_path(path), e.lineno or 0, 1))
    # find the template frame for the line number
    line, path = 0, os.path.join(dirs[-1], name)
    for fr in traceback.extract_tb(e.__traceback__):
        if fr.filename and fr.filename.endswith(".j2"):
            line, path = fr.lineno, fr.filename
    if isinstance(e, SecurityError):
        return DefcError(f"template tried something the sandbox forbids: {e}", Location(display_path(path), line, 1))
    if isinstance(e, UndefinedError):
        return DefcError(f"template uses an undefined value: {e.message}", Location(display_path(path), line, 1))
    return DefcError(f"template failed: {type(e).__name__}: {e}", Location(display_path(path), line, 1))


def render_template(name: str, context: Dict[str, Any], dirs: Tuple[str, ...]) -> str:
    env = environment(dirs)
    try:
        return env.get_template(name).render(**context)
    except Exception as e:  # every Jinja failure becomes one located line
        raise _template_error(e, name, dirs) from None


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


def render(inst: Instance, models: List[str], dirs: Tuple[str, ...]) -> Dict[str, Any]:
    reference = render_template(inst.reference_template, reference_context(inst), dirs)
    ctx = {"name": inst.name, "description": inst.description, "op_type": inst.op_type,
           "tags": base_tags(inst, models), "axes": inst.axes, "constraints": inst.constraints,
           "inputs": inst.inputs, "outputs": inst.outputs, "reference": reference,
           "params": inst.params, "quantization": inst.quantization}
    text = render_template(inst.template, ctx, dirs)
    tpath = display_path(os.path.join(dirs[-1], inst.template))
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DefcError(f"template did not render valid JSON for {inst.name}: {e.msg} (rendered line {e.lineno})",
                        Location(tpath)) from None
    if not isinstance(doc, dict):
        raise DefcError(f"template must render a JSON object for {inst.name}", Location(tpath))
    missing = [k for k in ("name", "op_type", "axes", "inputs", "outputs", "reference") if k not in doc]
    if missing:
        raise DefcError(f"rendered definition {inst.name} lacks {', '.join(missing)}", Location(tpath))
    ordered = {k: doc[k] for k in KEY_ORDER if k in doc}
    ordered.update({k: v for k, v in doc.items() if k not in ordered})
    return ordered
