"""defc compile end to end: serving configs, errors, dry-run, skip-existing, merges and collisions."""
import json
import os

import pytest

from conftest import specs_folder
from defc.cli import main

HEADS_SPEC = """\
family: heads
definitions:
  - id: heads
    name: "heads_h{num_qo_heads}_kv{num_kv_heads}"
    tags: ["tp:{tp}", {tag: "dp:{attn_dp}", when: "attn_dp > 1"}]
    axes:
      n: {type: var}
      num_qo_heads: {value: "num_attention_heads / attn_tp"}
      num_kv_heads: {value: "max(1, num_kv_heads_total / attn_tp)"}
    inputs:
      x: {shape: [n, num_qo_heads], dtype: bfloat16}
    outputs:
      y: {shape: [n, num_qo_heads], dtype: bfloat16}
    reference: {template: reference/rmsnorm.py.j2, params: {eps: eps, hidden_size: num_qo_heads}}
  - id: experts
    name: "experts_e{num_local_experts}"
    when: "is_moe"
    tags: ["ep:{ep}"]
    axes:
      n: {type: var}
      num_local_experts: {value: "num_experts / ep"}
    inputs:
      x: {shape: [n, num_local_experts], dtype: float32}
    outputs:
      y: {shape: [n, num_local_experts], dtype: float32}
    reference: {template: reference/rmsnorm.py.j2, params: {eps: eps, hidden_size: num_local_experts}}
"""


@pytest.fixture
def specs(tmp_path):
    return specs_folder(tmp_path, heads=HEADS_SPEC)


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def names(out):
    """The definitions written under out (not manifest.json)."""
    return sorted(os.path.basename(p)[:-5] for r, _, fs in os.walk(os.path.join(out, "definitions"))
                  for p in [os.path.join(r, f) for f in fs] if p.endswith(".json"))


def test_cookbook_dp_attention_and_ep_configs(specs, tmp_path, capsys):
    out = str(tmp_path / "o")
    code, text, err = run(["compile", "--specs-dir", specs, "--model", "deepseek-v3", "--out", out], capsys)
    assert code == 0, err
    # cookbook: tp8, tp8 + dp8 DP-attention (attention TP 1), tp8 ep8
    assert "tp8 dp8-attn" in text and "tp8 ep8" in text
    got = names(out)
    assert "heads_h16_kv16" in got and "heads_h128_kv128" in got
    assert "experts_e256" in got and "experts_e32" in got
    h128 = json.load(open(os.path.join(out, "definitions", "heads", "heads_h128_kv128.json")))
    assert "dp:8" in h128["tags"] and "tp:8" in h128["tags"] and "model:deepseek-v3" in h128["tags"]
    out2 = str(tmp_path / "k")
    code, text, err = run(["compile", "--specs-dir", specs, "--model", "kimi-k2", "--out", out2], capsys)
    assert code == 0, err
    got = names(out2)
    # 64 heads: tp8 → 8; tp8 with dp4 attention → attention TP 2 → 32; 384 experts / ep4 → 96
    assert {"heads_h8_kv8", "heads_h32_kv32", "experts_e384", "experts_e96"} <= set(got)


def test_plain_tp_models_ignore_dp_attention(specs, tmp_path, capsys):
    out = str(tmp_path / "o")
    code, text, err = run(["compile", "--specs-dir", specs, "--model", "llama-3.1-70b", "--out", out], capsys)
    assert code == 0, err
    # Llama splits attention by the plain tp even in the cookbook's dp-attention entry
    assert names(out) == ["heads_h16_kv2"]


def test_kv_heads_replicate_below_one(specs, tmp_path, capsys):
    code, _, err = run(["compile", "--specs-dir", specs, "--model", "qwen3-235b-a22b", "--tp", "8",
                        "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert "heads_h8_kv1" in names(str(tmp_path / "o"))


def test_non_integer_split_is_one_located_line(specs, tmp_path, capsys):
    code, out, err = run(["compile", "--specs-dir", specs, "--model", "qwen3-14b", "--tp", "3",
                          "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "heads.yaml:8:" in lines[0]
    assert "'num_attention_heads / attn_tp' = 40/3 is not an integer (attn_tp=3, num_attention_heads=40)" in lines[0]
    assert "model qwen3-14b at tp3" in lines[0]
    assert not os.path.exists(tmp_path / "o")   # nothing written


def test_missing_config_field_names_field_and_model(specs, tmp_path, capsys):
    spec = HEADS_SPEC.replace("num_attention_heads / attn_tp", "kv_lora_rank / attn_tp")
    open(os.path.join(specs, "heads.yaml"), "w").write(spec)
    # a second family the model can be described by still compiles
    open(os.path.join(specs, "other.yaml"), "w").write(
        HEADS_SPEC.replace("family: heads", "family: other").replace('name: "heads_h{', 'name: "other_h{'))
    code, _, err = run(["compile", "--specs-dir", specs, "--model", "llama-3.1-8b", "--out", str(tmp_path / "o")], capsys)
    assert code == 1                            # compiled with gaps
    lines = err.strip().splitlines()
    gap = [x for x in lines if x.startswith("defc: gap: llama-3.1-8b: heads: not compiled at tp1")]
    assert len(gap) == 1 and "needs config field 'kv_lora_rank', which llama-3.1-8b does not have" in gap[0]
    assert "heads.yaml:8" in gap[0]
    assert lines[-1].startswith("defc: compiled with gaps: 1 ")
    assert os.listdir(tmp_path / "o" / "definitions") == ["other"]


def test_unknown_model_and_bad_options(tmp_path, capsys):
    code, _, err = run(["compile", "--model", "no-such-model", "--out", str(tmp_path)], capsys)
    assert code == 2 and "unknown model 'no-such-model'" in err
    code, _, err = run(["compile", "--model", "llama-3.1-8b", "--tp", "2,x", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--tp: expected a comma list of positive integers, got 'x'" in err
    code, _, err = run(["compile", "nosuchfamily", "--model", "llama-3.1-8b", "--out", str(tmp_path)], capsys)
    assert code == 2 and "no spec 'nosuchfamily'" in err


def test_dry_run_writes_nothing_and_reports(tmp_path, capsys):
    out = str(tmp_path / "o")
    code, text, err = run(["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", out, "--dry-run"], capsys)
    assert code == 0 and not os.path.exists(out)
    assert "new     rmsnorm  rmsnorm_h4096" in text and "would write 2 definitions" in text
    code, text, err = run(["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", out, "--dry-run",
                           "--format", "json"], capsys)
    doc = json.loads(text)
    assert doc["dry_run"] is True and {d["name"] for d in doc["definitions"]} == {"rmsnorm_h4096", "fused_add_rmsnorm_h4096"}
    assert all(d["status"] == "new" for d in doc["definitions"])


def test_skip_existing_merge_and_collision(tmp_path, capsys):
    out = str(tmp_path / "o")
    assert run(["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", out], capsys)[0] == 0
    path = os.path.join(out, "definitions", "rmsnorm", "rmsnorm_h4096.json")
    before = open(path).read()
    mtime = os.stat(path).st_mtime_ns
    # same model again: everything unchanged, nothing rewritten
    code, text, _ = run(["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", out], capsys)
    assert code == 0 and "2 unchanged" in text and os.stat(path).st_mtime_ns == mtime
    # a second model with the same hidden size: its model tag is merged into the same file
    code, text, _ = run(["compile", "rmsnorm", "--model", "qwen3-8b", "--out", out], capsys)
    assert code == 0 and "merged" in text
    doc = json.load(open(path))
    assert doc["tags"].count("model:llama-3.1-8b") == 1 and "model:qwen3-8b" in doc["tags"]
    assert doc["reference"] == json.loads(before)["reference"]     # the first reference is kept
    # a file with other content under the same name is a collision: reported, left alone
    other = dict(doc, axes={"batch_size": {"type": "var"}, "hidden_size": {"type": "const", "value": 999}})
    with open(path, "w") as fh:
        json.dump(other, fh)
    snapshot = open(path).read()
    code, text, err = run(["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", out], capsys)
    assert code == 1 and "collision" in text and "axis 'hidden_size'" in text
    assert open(path).read() == snapshot
    # --force replaces it and keeps the old file as .bak
    code, text, err = run(["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", out, "--force"], capsys)
    assert code == 0 and open(path + ".bak").read() == snapshot
    assert json.load(open(path))["axes"]["hidden_size"]["value"] == 4096


def test_local_config_with_explicit_tp(specs, tmp_path, capsys):
    cfg = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 256,
           "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-6}
    p = tmp_path / "m" / "config.json"
    p.parent.mkdir()
    p.write_text(json.dumps(cfg))
    out = str(tmp_path / "o")
    code, text, err = run(["compile", "--specs-dir", specs, "--model", str(p), "--tp", "1,2,4", "--out", out], capsys)
    assert code == 0, err
    assert names(out) == ["heads_h2_kv1", "heads_h4_kv1", "heads_h8_kv2"]
    # tp=3 with ep=2 is not a valid combination; it is skipped with a note
    code, text, err = run(["compile", "--specs-dir", specs, "--model", str(p), "--tp", "2,3", "--ep", "2",
                           "--out", str(tmp_path / "o2"), "--dry-run"], capsys)
    assert code == 0 and "skipped tp=3 ep=2: ep must divide tp" in text
