"""Compiled templates kept in the package's __pycache__: reused only for the same source and the
same rules, never trusted over the sandbox, and written only where Python would write bytecode."""
import os
import shutil
import sys

import pytest
from jinja2 import Environment

from compiler import render
from compiler.errors import DefcError
from compiler.paths import TEMPLATES_DIR


@pytest.fixture
def kept(tmp_path, monkeypatch):
    """Compiled templates go to a folder of the test's own; every environment is made anew."""
    folder = tmp_path / "compiled"
    monkeypatch.setattr(render, "COMPILED_TEMPLATES_DIR", str(folder))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    render.environment.cache_clear()
    yield folder
    render.environment.cache_clear()


@pytest.fixture
def compiles(monkeypatch):
    """The names of the templates Jinja compiles from source."""
    seen = []
    real = Environment.compile

    def spy(self, source, name=None, filename=None, *a, **kw):
        seen.append(name)
        return real(self, source, name, filename, *a, **kw)
    monkeypatch.setattr(Environment, "compile", spy)
    return seen


def _fresh_renderer(dirs):
    render.environment.cache_clear()
    return render.Renderer(dirs)


def test_templates_are_compiled_once_and_then_loaded(kept, compiles):
    dirs = render.template_dirs([])
    first = _fresh_renderer(dirs).template_text("definition.json.j2", _definition_context())
    assert compiles == ["definition.json.j2"] and len(os.listdir(kept)) == 1
    again = _fresh_renderer(dirs).template_text("definition.json.j2", _definition_context())
    assert compiles == ["definition.json.j2"] and again == first


def test_an_edited_template_is_compiled_again(kept, compiles, tmp_path):
    folder = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, folder)
    page = folder / "definition.json.j2"
    dirs = render.template_dirs([str(folder)])
    before = _fresh_renderer(dirs).template_text("definition.json.j2", _definition_context())
    page.write_text(page.read_text().replace('"name": {{ name | tojson }}', '"name": {{ (name ~ "_v2") | tojson }}'))
    after = _fresh_renderer(dirs).template_text("definition.json.j2", _definition_context())
    assert compiles == ["definition.json.j2", "definition.json.j2"]
    assert '"name": "probe"' in before and '"name": "probe_v2"' in after


def test_a_damaged_compiled_template_is_compiled_again(kept, compiles):
    dirs = render.template_dirs([])
    want = _fresh_renderer(dirs).template_text("definition.json.j2", _definition_context())
    (only,) = os.listdir(kept)
    data = (kept / only).read_bytes()
    for damaged in (data[: len(data) // 2], b"", b"j2 not a compiled template"):
        (kept / only).write_bytes(damaged)
        assert _fresh_renderer(dirs).template_text("definition.json.j2", _definition_context()) == want
    assert compiles == ["definition.json.j2"] * 4


def test_code_compiled_under_other_rules_is_neither_read_nor_kept(kept, compiles, monkeypatch):
    """The file names carry a digest of render.py and Jinja's version: a change of the sandbox
    or the environment's options makes every template compile again, and the old files go."""
    dirs = render.template_dirs([])
    _fresh_renderer(dirs).template_text("definition.json.j2", _definition_context())
    (old,) = os.listdir(kept)
    os.rename(kept / old, kept / ("0123456789abcdef-" + old.split("-", 1)[1]))
    _fresh_renderer(dirs).template_text("definition.json.j2", _definition_context())
    assert compiles == ["definition.json.j2"] * 2
    assert os.listdir(kept) == [old]


def test_nothing_is_written_when_python_writes_no_bytecode(kept, compiles, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    _fresh_renderer(render.template_dirs([])).template_text("definition.json.j2", _definition_context())
    assert not kept.exists()


def test_an_unwritable_folder_only_costs_the_compile(tmp_path, monkeypatch, compiles):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(render, "COMPILED_TEMPLATES_DIR", str(blocker / "compiled"))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    try:
        text = _fresh_renderer(render.template_dirs([])).template_text("definition.json.j2", _definition_context())
    finally:
        render.environment.cache_clear()
    assert '"name": "probe"' in text and compiles == ["definition.json.j2"]


def test_a_template_loaded_compiled_is_still_sandboxed(kept, compiles, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "evil.j2").write_text("{{ ''.__class__.__mro__ }}{{ 2 ** 100000000 }}\n")
    dirs = render.template_dirs([str(folder)])
    for _ in range(2):                                   # compiled, then loaded from the kept file
        with pytest.raises(DefcError, match="sandbox forbids: access to attribute '__class__'"):
            _fresh_renderer(dirs).template_text("evil.j2", {})
    assert compiles == ["evil.j2"] and len(os.listdir(kept)) == 1
    (folder / "evil.j2").write_text("{{ 2 ** 100000000 }}\n")
    with pytest.raises(DefcError, match="exponent 100000000 is too large"):
        _fresh_renderer(dirs).template_text("evil.j2", {})


def _definition_context():
    return {"name": "probe", "description": "d", "op_type": "probe", "tags": ["status:verified"],
            "axes": {"n": {"type": "const", "value": 4}}, "constraints": [],
            "inputs": {"x": {"shape": ["n"], "dtype": "float32"}}, "outputs": {"y": {"shape": ["n"], "dtype": "float32"}},
            "reference": "def run(x):\n    return x\n"}


def test_an_error_names_the_template_line_it_happened_on(kept, tmp_path):
    """Rendering reports the template's own line (Jinja maps the generated code back to it), for a
    template compiled from source and for one loaded compiled."""
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "late.j2").write_text("line one\n{% set x = 1 %}\nline three {{ x }}\n{{ nope.deeper }}\n")
    dirs = render.template_dirs([str(folder)])
    for _ in range(2):
        with pytest.raises(DefcError) as e:
            _fresh_renderer(dirs).template_text("late.j2", {})
        assert e.value.location.line == 4 and "'nope' is undefined" in e.value.message
    assert _fresh_renderer(dirs).template_text("late.j2", {"nope": {"deeper": 5}}) == "line one\nline three 1\n5\n"
