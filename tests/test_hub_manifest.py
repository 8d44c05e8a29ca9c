"""The Hugging Face Hub (revisions, the commit a config was read at, cache snapshot folders, an
unreachable Hub) and the dataset manifest (OUT/manifest.json).  The Hub is never reached: a
cache laid out as huggingface_hub lays it out, in tmp, with HF_HUB_OFFLINE=1."""
import json
import os
import subprocess
import sys
import time

import pytest

from defc.compiler.errors import DefcError
from defc.compiler.manifest import file_sha256
from defc.compiler.models import resolve_model
from defc.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = "1" * 40          # refs/main
V2 = "2" * 40            # refs/v2 (a tag): num_hidden_layers 7


def seed_cache(cache, repo_id, config):
    """models--org--name/snapshots/<commit>/config.json for two commits, refs/main and refs/v2."""
    folder = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    for ref, commit, layers in (("main", MAIN, config["num_hidden_layers"]), ("v2", V2, 7)):
        with open(os.path.join(folder, "refs", ref), "w") as fh:
            fh.write(commit)
        snap = os.path.join(folder, "snapshots", commit)
        os.makedirs(snap, exist_ok=True)
        with open(os.path.join(snap, "config.json"), "w") as fh:
            json.dump(dict(config, num_hidden_layers=layers), fh)
    return folder


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding acme/Tiny-8B (llama-3.1-8b's config) and Qwen/Qwen3-8B."""
    import huggingface_hub.constants as C
    cache = str(tmp_path / "hf" / "hub")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(C, "HF_HUB_CACHE", cache)        # read by huggingface_hub when it is imported
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    seed_cache(cache, "acme/Tiny-8B", resolve_model("llama-3.1-8b").config)
    seed_cache(cache, "Qwen/Qwen3-8B", resolve_model("qwen3-8b").config)
    return cache


def test_hub_model_by_repo_id_at_a_revision_records_the_commit(hub):
    m = resolve_model("acme/Tiny-8B")
    assert (m.slug, m.hf_repo_id, m.revision, m.commit) == ("tiny-8b", "acme/Tiny-8B", None, MAIN)
    assert m.config["num_hidden_layers"] == 32
    for m in (resolve_model("acme/Tiny-8B@v2"), resolve_model(None, hf_repo_id="acme/Tiny-8B", revision="v2"),
              resolve_model(None, hf_repo_id="acme/Tiny-8B@v2"), resolve_model("acme/Tiny-8B", revision="v2")):
        assert (m.slug, m.revision, m.commit, m.config["num_hidden_layers"]) == ("tiny-8b", "v2", V2, 7)
        assert m.origin == "hf://acme/Tiny-8B@v2"
    assert resolve_model("acme/Tiny-8B@" + V2).commit == V2            # a commit as the revision
    with pytest.raises(DefcError, match="name different revisions"):
        resolve_model("acme/Tiny-8B@main", revision="v2")
    with pytest.raises(DefcError, match=r"applies to a Hugging Face repo id, not 'llama-3.1-8b' "
                                        r"\(--hf-repo-id meta-llama/.* --revision v2\)"):
        resolve_model("llama-3.1-8b", revision="v2")
    with pytest.raises(DefcError, match="'acme/Tiny-8B@v9' is not in the Hugging Face cache and HF_HUB_OFFLINE"):
        resolve_model("acme/Tiny-8B@v9")


def test_a_snapshot_folder_of_the_hf_cache_is_its_repo_at_its_commit(hub):
    snap = os.path.join(hub, "models--acme--Tiny-8B", "snapshots", V2)
    for path in (snap, os.path.join(snap, "config.json")):
        m = resolve_model(path)
        assert (m.slug, m.hf_repo_id, m.commit) == ("tiny-8b", "acme/Tiny-8B", V2)    # not model:<folder hash>
        assert m.cookbook_model_paths == ["acme/Tiny-8B"]
    m = resolve_model(os.path.join(hub, "models--Qwen--Qwen3-8B", "snapshots", MAIN))
    assert (m.slug, m.hf_repo_id, m.commit) == ("qwen3-8b", "Qwen/Qwen3-8B", MAIN)   # the catalogue's slug


def test_cli_revision_and_repo_at_rev(hub, tmp_path, capsys):
    out = str(tmp_path / "ds")
    assert main(["compile", "rmsnorm", "--tp", "1", "--hf-repo-id", "acme/Tiny-8B", "--revision", "v2",
                 "--out", out]) == 0
    assert main(["compile", "rmsnorm", "--tp", "1", "--model", "acme/Tiny-8B@v2", "--model", "qwen3-8b",
                 "--out", out]) == 0
    assert main(["compile", "--tp", "1", "--model", "qwen3-8b", "--revision", "v2", "--out", out]) == 2
    assert main(["compile", "--tp", "1", "--model", "acme/Tiny-8B", "--model", "qwen3-8b", "--revision", "v2",
                 "--out", out]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = [x for x in lines if x.startswith("defc: error:")]
    # the fixture's eps (1e-5) is not qwen3-8b's (1e-6): their shared h4096 norms keep the first reference, said
    assert all("_h4096 is shared with another model" in x for x in lines if x not in err)
    assert err == ["defc: error: --revision: --revision applies to a Hugging Face repo id, not 'qwen3-8b' "
                   "(--hf-repo-id Qwen/Qwen3-8B --revision v2)",
                   "defc: error: --revision: --revision names one model's revision: give one --model ORG/NAME "
                   "(or ORG/NAME@REV for each model)"]
    with open(os.path.join(out, "manifest.json")) as fh:
        src = json.load(fh)["models"]["tiny-8b"]["source"]
    assert (src["kind"], src["repo_id"], src["revision"], src["commit"]) == ("hub", "acme/Tiny-8B", "v2", V2)


@pytest.mark.parametrize("cached", [False, True])
def test_an_unreachable_hub_fails_at_once_with_one_line(cached, tmp_path):
    """Not offline, the Hub unreachable: one request, no retries (huggingface_hub's own download
    retried for ~25 s, twice); the cached copy is used when there is one."""
    cache = str(tmp_path / "hf" / "hub")
    if cached:
        seed_cache(cache, "acme/Tiny-8B", resolve_model("llama-3.1-8b").config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=cache,
               DEFC_NO_CACHE="1", PYTHONPATH=ROOT)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "defc.cli", "compile", "rmsnorm", "--tp", "1",
                           "--model", "acme/Tiny-8B", "--out", str(tmp_path / "ds")],
                          env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert took < 8, (took, proc.stderr[-2000:])
    if cached:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("defc: error: ") and "the Hugging Face Hub cannot be reached" in lines[0]
    assert "set HF_HUB_OFFLINE=1" in lines[0] and "local config" in lines[0] and "127.0.0.1:9" in lines[0]
    assert not os.path.exists(tmp_path / "ds")


def _manifest(out):
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _files(out):
    return sorted(os.path.relpath(os.path.join(d, f), out).replace(os.sep, "/")
                  for d, _, fs in os.walk(os.path.join(out, "definitions")) for f in fs)


def test_manifest_after_one_and_after_two_compiles(hub, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEFC_NO_CACHE", "1")
    out = str(tmp_path / "ds")
    assert main(["compile", "--model", "qwen3-8b", "--dry-run", "--out", out]) == 0
    assert not os.path.exists(os.path.join(out, "manifest.json"))          # a dry run records nothing
    assert main(["compile", "rmsnorm", "rope", "--model", "qwen3-8b", "--tp", "1,2", "--out", out]) == 0
    one = _manifest(out)
    assert one["format"] == 1 and one["generator"].startswith("defc ")
    assert list(one["models"]) == ["qwen3-8b"]
    q = one["models"]["qwen3-8b"]
    assert q["source"] == {"kind": "catalogue", "slug": "qwen3-8b", "file": "catalogue/models/qwen3-8b.yaml",
                           "sha256": file_sha256(os.path.join(ROOT, "catalogue", "models", "qwen3-8b.yaml")),
                           "hf_repo_id": "Qwen/Qwen3-8B"}
    assert [(s["tp"], s["ep"], s["dp"]) for s in q["servings"]] == [(1, 1, 1), (2, 1, 1)]
    assert q["options"]["specs"] == ["rmsnorm", "rope"] and q["options"]["tp"] == [1, 2]
    assert q["definitions"] == _files(out)
    inputs = one["inputs"][q["inputs"]]
    assert inputs["defc_version"] and len(inputs["compiler_sha256"]) == 64
    assert inputs["specs"] == {"specs/rmsnorm.yaml": file_sha256(os.path.join(ROOT, "specs", "rmsnorm.yaml")),
                               "specs/rope.yaml": file_sha256(os.path.join(ROOT, "specs", "rope.yaml")),
                               "specs/_model_facts.yaml": file_sha256(os.path.join(ROOT, "specs", "_model_facts.yaml"))}
    assert inputs["templates"]["templates/definition.json.j2"] == file_sha256(
        os.path.join(ROOT, "templates", "definition.json.j2"))
    assert inputs["cookbook"]["path"] == "catalogue/cookbook.json"

    # a second compile (another model, other specs) adds its entry and keeps the first one
    assert main(["compile", "rmsnorm", "--tp", "1", "--model", "acme/Tiny-8B@v2", "--out", out]) == 0
    two = _manifest(out)
    assert sorted(two["models"]) == ["qwen3-8b", "tiny-8b"]
    assert two["models"]["qwen3-8b"] == q and two["inputs"][q["inputs"]] == inputs
    t = two["models"]["tiny-8b"]
    assert t["source"]["commit"] == V2 and t["source"]["revision"] == "v2" and t["source"]["repo_id"] == "acme/Tiny-8B"
    assert t["source"]["sha256"] == file_sha256(os.path.join(hub, "models--acme--Tiny-8B", "snapshots", V2,
                                                             "config.json"))
    assert len(two["inputs"]) == 2 and t["inputs"] != q["inputs"]
    assert set(t["definitions"]) <= set(_files(out)) and t["definitions"]

    # compiling the same model again replaces its own entry only; inputs nobody uses are dropped
    snap = os.path.join(hub, "models--acme--Tiny-8B", "snapshots", MAIN)
    assert main(["compile", "rmsnorm", "rope", "--model", snap, "--tp", "1", "--out", out]) == 0
    three = _manifest(out)
    t = three["models"]["tiny-8b"]
    assert (t["source"]["kind"], t["source"]["commit"], t["source"]["file"]) == \
        ("hub", MAIN, os.path.join(snap, "config.json"))
    assert three["models"]["qwen3-8b"] == q and set(three["inputs"]) == {q["inputs"]}      # same specs as qwen's
    capsys.readouterr()


def test_a_manifest_that_is_not_defcs_stops_the_write(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEFC_NO_CACHE", "1")
    out = tmp_path / "ds"
    out.mkdir()
    (out / "manifest.json").write_text('{"nodes": {}}')
    assert main(["compile", "rmsnorm", "--tp", "1", "--model", "qwen3-8b", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json: error: not a defc dataset manifest" in err[0]
    assert _files(str(out)) == [] and (out / "manifest.json").read_text() == '{"nodes": {}}'


def test_a_compile_that_writes_nothing_keeps_the_manifest_current_but_a_collision_leaves_it(hub, tmp_path, capsys,
                                                                                            monkeypatch):
    monkeypatch.setenv("DEFC_NO_CACHE", "1")
    out = str(tmp_path / "ds")
    # rmsnorm reads hidden_size only: v2 (7 layers) and main give the same files
    assert main(["compile", "rmsnorm", "--tp", "1", "--model", "acme/Tiny-8B@v2", "--out", out]) == 0
    assert main(["compile", "rmsnorm", "--tp", "1", "--model", "acme/Tiny-8B", "--out", out]) == 0
    assert "0 new" in capsys.readouterr().out
    src = _manifest(out)["models"]["tiny-8b"]["source"]
    assert (src["revision"], src["commit"]) == (None, MAIN)               # every file unchanged, the record updated
    target = os.path.join(out, _manifest(out)["models"]["tiny-8b"]["definitions"][0])
    with open(target) as fh:
        doc = json.load(fh)
    for tensor in doc["inputs"].values():
        tensor["dtype"] = "float16"                                        # someone else's definition
    with open(target, "w") as fh:
        json.dump(doc, fh)
    before = open(os.path.join(out, "manifest.json")).read()
    assert main(["compile", "rmsnorm", "--tp", "1", "--model", "acme/Tiny-8B@v2", "--out", out]) == 1
    assert "collision" in capsys.readouterr().err
    assert open(os.path.join(out, "manifest.json")).read() == before     # only collisions: left as it is
