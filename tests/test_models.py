"""Models: catalogue, local config.json, the Hugging Face cache and offline mode, cookbook configs."""
import json
import os
import shutil

import pytest

from defc.compiler.errors import DefcError
from defc.compiler.models import catalogue_slugs, resolve_model
from defc.compiler.serving import load_snapshot, read_cookbook
from conftest import data_path

REQUIRED = """llama-3.1-8b llama-3.1-70b llama-3.1-405b llama-3.2-3b llama-3.3-70b llama-4-scout llama-4-maverick
qwen2.5-7b qwen2.5-72b qwen3-8b qwen3-14b qwen3-32b qwen3-30b-a3b qwen3-235b-a22b qwen3-next-80b-a3b deepseek-v3
deepseek-r1 deepseek-v3.2 kimi-k2 minimax-m2 gemma-3-27b mixtral-8x22b nemotron-h-8b phi-4-14b gpt-oss-120b
gpt-oss-20b glm-4.6""".split()


def test_catalogue_has_every_required_model_with_real_facts():
    assert set(REQUIRED) <= set(catalogue_slugs())
    with open(data_path("model_config_facts.json")) as fh:
        real = json.load(fh)
    assert set(real) == set(REQUIRED)
    for slug in REQUIRED:
        m = resolve_model(slug)
        assert m.hf_repo_id and "/" in m.hf_repo_id
        # the bundled facts are the real config.json's (its top-level keys other than private ones
        # and objects, vendored in tests/data/model_config_facts.json)
        for k, v in real[slug].items():
            assert m.config[k] == v, (slug, k)


def test_unknown_model_suggests_close_slugs():
    with pytest.raises(DefcError) as e:
        resolve_model("llama-3.1-8")
    assert "unknown model 'llama-3.1-8'" in str(e.value) and "llama-3.1-8b" in str(e.value)


def test_local_config_file_and_folder(tmp_path):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "num_attention_heads": 4, "num_key_value_heads": 2, "_name_or_path": "acme/Tiny-Llama"}
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(cfg))
    assert resolve_model(str(tmp_path / "tiny")).slug == "tiny-llama"
    assert resolve_model(str(tmp_path / "tiny" / "config.json")).config["hidden_size"] == 64
    with pytest.raises(DefcError, match="no such file"):
        resolve_model(str(tmp_path / "nope" / "config.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DefcError, match=r"bad.json:1:2: error: invalid JSON"):
        resolve_model(str(tmp_path / "bad.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DefcError, match="must be a JSON object"):
        resolve_model(str(tmp_path / "list.json"))


def _seed_hf_cache(cache, repo_id, config):
    """Lay out a config.json the way huggingface_hub caches it."""
    folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    os.makedirs(os.path.join(folder, "refs"))
    with open(os.path.join(folder, "refs", "main"), "w") as fh:
        fh.write(commit)
    snap = os.path.join(folder, "snapshots", commit)
    os.makedirs(snap)
    with open(os.path.join(snap, "config.json"), "w") as fh:
        json.dump(config, fh)


def test_hub_offline_uses_the_cache_and_fails_clearly_without_it(tmp_path, monkeypatch):
    cache = str(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as C
    monkeypatch.setattr(C, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    with pytest.raises(DefcError) as e:
        resolve_model(None, hf_repo_id="acme/Missing-7B")
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE is set" in str(e.value)
    cfg = resolve_model("qwen3-8b").config
    _seed_hf_cache(cache, "Qwen/Qwen3-8B", cfg)
    m = resolve_model(None, hf_repo_id="Qwen/Qwen3-8B")
    assert m.config["num_attention_heads"] == 32
    assert m.slug == "qwen3-8b"           # recognised as the catalogue model
    assert m.origin == "hf://Qwen/Qwen3-8B"
    # a repo id given as --model goes to the hub too
    assert resolve_model("Qwen/Qwen3-8B").config == cfg
    with pytest.raises(DefcError, match="not a Hugging Face repo id"):
        resolve_model(None, hf_repo_id="no-slash")


def test_cookbook_rows_and_bad_cookbook(tmp_path):
    # tests/data/cookbook: the cookbook's kimi-k2.yaml (serving configurations), vendored
    rows = read_cookbook(data_path("cookbook"))
    kimi = {(r.tp, r.ep, r.dp, r.dp_attention) for r in rows if r.model_path == "moonshotai/Kimi-K2-Instruct"}
    assert kimi == {(8, 1, 1, False), (8, 1, 4, True), (8, 4, 1, False)}
    # the bundled snapshot (catalogue/cookbook.json) holds the same rows for the models this YAML lists
    key = lambda r: (r.model_path, r.version, r.hardware, r.name, r.tp, r.ep, r.dp, r.dp_attention, r.quantization)
    paths = {r.model_path for r in rows}
    assert sorted(map(key, rows)) == sorted(key(r) for r in load_snapshot() if r.model_path in paths)
    src = data_path("cookbook", "v0.5.6", "kimi-k2.yaml")
    text = open(src).read().replace("tp: 8", "tp: 0", 1)
    (tmp_path / "v0.5.6").mkdir()
    (tmp_path / "v0.5.6" / "kimi-k2.yaml").write_text(text)
    with pytest.raises(DefcError) as e:
        read_cookbook(str(tmp_path))
    assert "kimi-k2.yaml:" in str(e.value) and "tp must be a positive integer, got 0" in str(e.value)
    shutil.rmtree(tmp_path / "v0.5.6")
    (tmp_path / "v0.5.6").mkdir()
    (tmp_path / "v0.5.6" / "kimi-k2.yaml").write_text(open(src).read().replace("ep: 4", "ep: 3", 1))
    with pytest.raises(DefcError, match="ep 3 does not divide tp 8"):
        read_cookbook(str(tmp_path))
