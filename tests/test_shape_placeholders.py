"""Tensor shape entries that are {placeholders} naming an axis (docs/spec-format.md, "Names")."""
import os
import shutil

import pytest

from defc.compiler.errors import DefcError, DefcErrors
from defc.compiler.paths import SPECS_DIR
from defc.compiler.pipeline import CompileOptions, compile_model

SPEC = """\
family: picks
definitions:
  - id: picks
    name: "picks_e{e_local}"
    when: "is_moe"
    let: {w_axis: '"num_experts" if ep == 1 else "num_local_experts"', e_local: "num_experts / ep"}
    axes:
      n: {type: var}
      num_experts: {value: num_experts}
      num_local_experts: {value: "num_experts / ep", when: "ep > 1"}
    inputs:
      w: {shape: ["{w_axis}", n], dtype: float32}
    outputs:
      y: {shape: [n, "{w_axis}"], dtype: float32}
    reference: {template: reference/rmsnorm.py.j2, params: {eps: eps, hidden_size: num_experts}}
"""


def _specs(tmp_path, text):
    d = tmp_path / "specs"
    d.mkdir(exist_ok=True)
    shutil.copy(os.path.join(SPECS_DIR, "_model_facts.yaml"), d)
    (d / "picks.yaml").write_text(text)
    return str(d)


def _compile(tmp_path, text, ep):
    opts = CompileOptions(model="qwen3-30b-a3b", specs=["picks"], tp=[8], ep=[ep],
                          specs_dir=_specs(tmp_path, text), out=str(tmp_path / "out"))
    return {p.doc["name"]: p.doc for p in compile_model(opts).planned}


def test_placeholder_picks_the_axis_per_serving_config(tmp_path):
    one = _compile(tmp_path, SPEC, ep=1)["picks_e128"]
    assert one["inputs"]["w"]["shape"] == ["num_experts", "n"]
    assert one["outputs"]["y"]["shape"] == ["n", "num_experts"]
    assert "num_local_experts" not in one["axes"]
    eight = _compile(tmp_path, SPEC, ep=8)["picks_e16"]
    assert eight["inputs"]["w"]["shape"] == ["num_local_experts", "n"]
    assert eight["axes"]["num_local_experts"]["value"] == 16


def test_placeholder_must_name_a_present_axis(tmp_path):
    bad = SPEC.replace("""'"num_experts" if ep == 1 else "num_local_experts"'""", """'"num_local_experts"'""")
    with pytest.raises(DefcError) as e:
        _compile(tmp_path, bad, ep=1)
    assert "uses axis 'num_local_experts', which is not present" in str(e.value)
    assert "picks.yaml:" in str(e.value)


def test_placeholder_must_be_defined(tmp_path):
    bad = SPEC.replace('["{w_axis}", n]', '["{nowhere}", n]')
    with pytest.raises(DefcError) as e:
        _compile(tmp_path, bad, ep=1)
    assert "'{nowhere}'" in str(e.value) and "not defined" in str(e.value)


def test_only_whole_entry_placeholders_pass_the_schema(tmp_path):
    bad = SPEC.replace('["{w_axis}", n]', '["x{w_axis}", n]')
    with pytest.raises((DefcError, DefcErrors)) as e:
        _compile(tmp_path, bad, ep=1)
    assert "picks.yaml:" in str(e.value)
