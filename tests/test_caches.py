"""The caches and the multi-model compile give exactly what the plain paths give.

* a multi-model compile (``compile_models`` / ``defc compile --model a --model b``) writes the same
  bytes and reports the same statuses as compiling the models one after another;
* the result cache returns what a real compile makes, misses when any input changes, and says why;
* the parse cache gives the data and positions of a fresh parse.
"""
import json
import logging
import os
import re
import shutil

import pytest

from defc.compiler import pipeline as P
from defc.compiler.paths import SPECS_DIR, TEMPLATES_DIR
from conftest import read_tree
from defc.cli import main

# models that share definitions (tag merges) and some that do not
MODELS = ["llama-3.1-8b", "qwen3-8b", "llama-3.1-70b", "qwen3-235b-a22b"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFC_CACHE_DIR", str(tmp_path / "cache"))


files = read_tree


def statuses(results):
    return [(r.model.slug, [(p.status, os.path.basename(p.path), p.detail, p.sources) for p in r.planned])
            for r in results]


def sequential(models, out, **kw):
    results = []
    for m in models:
        r = P.compile_model(P.CompileOptions(model=m, out=out, **kw))
        P.write_planned(r)
        results.append(r)
    return results


def multi(models, out, **kw):
    results = P.compile_models(models, P.CompileOptions(out=out, **kw))
    P.write_planned_many(results)
    return results


def dataset_with_history(root):
    """A dataset an earlier compile left, then edited: one file with a dropped tag (merged back),
    one with other content under the same name (a collision), one unreadable file."""
    sequential(["llama-3.1-8b"], root, specs=["rmsnorm", "gemm"])
    d = os.path.join(root, "definitions")
    rms = os.path.join(d, "rmsnorm", "rmsnorm_h4096.json")
    doc = json.load(open(rms))
    doc["tags"] = [t for t in doc["tags"] if not t.startswith("tp:")]
    with open(rms, "w") as fh:
        json.dump(doc, fh, indent=2)
    fused = os.path.join(d, "rmsnorm", "fused_add_rmsnorm_h4096.json")
    doc = json.load(open(fused))
    doc["axes"]["hidden_size"]["value"] = 999
    with open(fused, "w") as fh:
        json.dump(doc, fh)
    gemm = sorted(os.listdir(os.path.join(d, "gemm")))[0]
    with open(os.path.join(d, "gemm", gemm), "w") as fh:
        fh.write("{not json")


@pytest.mark.parametrize("force", [False, True])
def test_multi_model_compile_is_sequential_compile(tmp_path, force):
    a, b = str(tmp_path / "seq"), str(tmp_path / "multi")
    dataset_with_history(a)
    shutil.copytree(a, b)
    kw = dict(quantization=["all"], force=force)
    seq = sequential(MODELS, a, **kw)
    mul = multi(MODELS, b, **kw)
    assert statuses(mul) == statuses(seq)
    got, want = files(b), files(a)
    assert got == want
    assert any(s == "merged" for _, rows in statuses(seq) for s, *_ in rows)
    assert any(s == ("replaced" if force else "collision") for _, rows in statuses(seq) for s, *_ in rows)
    if force:
        assert any(k.endswith(".bak") for k in got)


def test_multi_model_compile_writes_each_file_once(tmp_path, monkeypatch):
    from defc.compiler import write as W
    written = []
    real = W.atomic_write_many

    def spy(items, batch=64):
        written.extend(p for p, _ in items)
        return real(items, batch)
    monkeypatch.setattr(W, "atomic_write_many", spy)
    results = multi(MODELS, str(tmp_path / "o"), quantization=["all"])
    assert len(written) == len(set(written)) == len(files(str(tmp_path / "o")))
    versions = sum(1 for r in results for p in r.planned if p.status in ("new", "merged"))
    assert versions > len(written)          # tag merges happened in memory


def test_cli_several_models(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for m in MODELS[:3]:
        assert main(["compile", "rmsnorm", "--model", m, "--out", a]) == 0
    assert main(["compile", "rmsnorm", "--out", b] + [x for m in MODELS[:3] for x in ("--model", m)]) == 0
    text = capsys.readouterr().out
    assert files(a) == files(b)
    assert "3 models: wrote" in text and "merged" in text
    assert main(["compile", "rmsnorm", "--out", b, "--format", "json", "--dry-run",
                 "--model", MODELS[0], "--model", MODELS[1]]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in doc["models"]] == MODELS[:2]
    assert main(["compile", "--all-models", "--model", "llama-3.1-8b", "--out", b]) == 2
    assert "exclude each other" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the result cache

def one_model(opts, caplog):
    """One model's definitions, as a compile makes and stores them; and whether the result cache
    gave them, with the reason it logged."""
    caplog.clear()
    run = P.CompileRun()
    with caplog.at_level(logging.DEBUG, logger="defc"):
        md = P.model_definitions(opts, run)
    run.store_results()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("result cache:")]
    assert len(said) <= 1
    return md, (said[0] if said else "")


def test_result_cache_hit_is_a_real_compile_and_misses_on_change(tmp_path, monkeypatch, caplog):
    specs = tmp_path / "specs"
    shutil.copytree(SPECS_DIR, specs)
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    opts = P.CompileOptions(model="llama-3.1-8b", specs=["rmsnorm"], specs_dir=str(specs),
                            template_dirs=[str(templates)], out=str(tmp_path / "o"))
    first, why = one_model(opts, caplog)
    assert why == "result cache: llama-3.1-8b not reused: no entry stored for this model"
    again, why = one_model(opts, caplog)
    assert why == "result cache: llama-3.1-8b reused"
    assert again.docs == first.docs and again.texts == first.texts
    assert set(again.instances) == set(first.instances)          # evaluated when asked for

    def refuse(*a, **k):
        raise AssertionError("evaluated despite a cache hit")
    monkeypatch.setattr(P, "evaluate_model", refuse)
    assert one_model(opts, caplog)[1].endswith(" reused")
    monkeypatch.undo()
    monkeypatch.setenv("DEFC_CACHE_DIR", str(tmp_path / "cache"))

    # any input that changes the definitions is part of the key, and a miss names it
    text = (specs / "rmsnorm.yaml").read_text()
    (specs / "rmsnorm.yaml").write_text(text + "\n# changed\n")
    assert one_model(opts, caplog)[1] == \
        f"result cache: llama-3.1-8b not reused: changed since it was stored: spec {specs / 'rmsnorm.yaml'}"
    assert one_model(opts, caplog)[1].endswith(" reused")
    (templates / "definition.json.j2").write_text((templates / "definition.json.j2").read_text() + "\n")
    assert one_model(opts, caplog)[1].endswith(f"changed since it was stored: templates {templates}")
    assert one_model(P.CompileOptions(**{**opts.__dict__, "tp": [2]}), caplog)[1].endswith(
        "changed since it was stored: serving configs")
    assert one_model(P.CompileOptions(**{**opts.__dict__, "quantization": ["all"]}), caplog)[1].endswith(
        "changed since it was stored: options, serving configs")

    # a corrupt entry is a miss, and the compile is still right
    for name in os.listdir(tmp_path / "cache"):
        if name.startswith("defs-"):
            (tmp_path / "cache" / name).write_text('{"data": [[1, 2]], "positions": "[]"}')
    md, why = one_model(opts, caplog)
    assert why.endswith("not reused: its entry is damaged")
    assert md.docs == one_model(opts, caplog)[0].docs

    monkeypatch.setenv("DEFC_NO_RESULT_CACHE", "1")
    assert one_model(opts, caplog)[1] == ""


def test_result_cache_is_not_stored_when_a_spec_changes_during_the_compile(tmp_path, monkeypatch, caplog):
    specs = tmp_path / "specs"
    shutil.copytree(SPECS_DIR, specs)
    opts = P.CompileOptions(model="llama-3.1-8b", specs=["rmsnorm"], specs_dir=str(specs), out=str(tmp_path / "o"))
    run = P.CompileRun()
    P.model_definitions(opts, run)
    (specs / "rmsnorm.yaml").write_text((specs / "rmsnorm.yaml").read_text() + "\n# edited meanwhile\n")
    run.store_results()
    assert not [n for n in os.listdir(tmp_path / "cache") if n.startswith("defs-")]


def test_debug_flag_says_why_a_model_was_not_reused(tmp_path, capsys):
    args = ["compile", "rmsnorm", "--model", "llama-3.1-8b", "--out", str(tmp_path / "o")]
    assert main(["--debug"] + args) == 0
    assert main(["--debug"] + args + ["--tp", "2"]) == 0
    err = capsys.readouterr().err
    assert "defc: result cache: llama-3.1-8b not reused: changed since it was stored: serving configs" in err


def test_parse_cache_gives_the_data_and_positions_of_a_fresh_parse(tmp_path, monkeypatch):
    """Every spec and the model facts, parsed by ruamel and read back from the parse cache (whose
    positions are parsed only when an error needs them): the same data and the same locations."""
    import glob
    from defc.compiler import load
    for path in sorted(glob.glob(os.path.join(SPECS_DIR, "*.yaml"))):
        fresh = load.load_yaml(path)
        cached = load.load_yaml(path)
        assert cached._positions is None                 # from the cache, positions not parsed yet
        assert cached.data == fresh.data
        assert cached.positions == fresh.positions and len(fresh.positions) > 10
        monkeypatch.setenv("DEFC_NO_CACHE", "1")
        assert load.load_yaml(path).positions == fresh.positions
        monkeypatch.delenv("DEFC_NO_CACHE")


def test_error_from_a_cached_spec_is_located_as_from_a_fresh_one(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    text = open(os.path.join(SPECS_DIR, "rmsnorm.yaml"), encoding="utf-8").read()
    spec.write_text(text.replace("hidden_size", "hidden_size / 3", 1))
    lines = []
    for _ in range(2):                                   # first parse, then from the parse cache
        assert main(["compile", str(spec), "--model", "llama-3.1-8b", "--out", str(tmp_path / "o")]) == 2
        lines.append(capsys.readouterr().err.strip())
    assert lines[0] == lines[1]
    assert re.match(r"defc: \S*bad\.yaml:\d+:\d+: error: definitions\[0\]\.name: ", lines[0]), lines[0]


def test_a_text_that_passed_its_schema_is_not_validated_again(tmp_path, monkeypatch):
    """schema_errors remembers (parse cache, by text digest) a text that passed; one that failed is
    validated, and its errors reported, every time."""
    from defc.compiler import check, load
    validated = []
    real = check._validator
    monkeypatch.setattr(check, "_validator", lambda name: validated.append(name) or real(name))
    good = os.path.join(SPECS_DIR, "rmsnorm.yaml")
    assert check.schema_errors(load.load_yaml(good), "spec.schema.json") == []
    assert check.schema_errors(load.load_yaml(good), "spec.schema.json") == []
    assert validated == ["spec.schema.json"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(good, encoding="utf-8").read().replace("family: rmsnorm", "family: rmsnorm\nbogus: 1", 1))
    for _ in range(2):
        errs = check.schema_errors(load.load_yaml(str(bad)), "spec.schema.json")
        assert [e.field for e in errs] == ["bogus"]
    assert validated == ["spec.schema.json"] * 3
