"""Forked compile workers (compiler/workers.py) and what a compile shares between its models.

* ``map_forked`` returns every result in order, whatever the number of processes; an item whose
  worker raised or died comes back MISSING (never a wrong value), so the caller redoes it; a
  process with other threads does not fork.  The test process has usually imported torch (which
  starts a thread), so what needs forking runs in a fresh interpreter (tests/fork_scenarios.py);
* a multi-model compile with workers makes exactly the definitions of one without, raises the
  same error for a bad model, and still gives each model's instances;
* one compile loads each template once, yet a template edited between two compiles of one
  process is seen;
* definition texts are byte for byte what json.dumps(indent=2) writes.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from compiler import pipeline as P
from compiler.paths import TEMPLATES_DIR
from compiler.workers import MISSING, can_fork, default_jobs, map_forked

MODELS = ["llama-3.1-8b", "qwen3-8b", "llama-3.1-70b", "qwen3-235b-a22b", "gpt-oss-20b"]
SCENARIOS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fork_scenarios.py")
FORKS = sys.platform.startswith("linux") and hasattr(os, "fork")    # a fresh process can fork here


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DEFC_NO_RESULT_CACHE", "1")


def fresh(scenario, tmp_path, **env):
    """Run a scenario of tests/fork_scenarios.py in a new, single-threaded interpreter."""
    e = dict(os.environ, DEFC_CACHE_DIR=str(tmp_path / "cache"), DEFC_NO_RESULT_CACHE="1",
             SCENARIO_OUT=str(tmp_path / "o"), **env)
    e.pop("DEFC_JOBS", None)
    proc = subprocess.run([sys.executable, SCENARIOS, scenario], capture_output=True, text=True, env=e, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["can_fork"] == FORKS          # the scenarios do fork where forking is possible
    return out


def test_results_in_order_whatever_the_processes(tmp_path):
    out = fresh("order", tmp_path)
    for jobs in ("1", "2", "3"):
        assert out[jobs]["values"] == [x * x for x in range(20)] and out[jobs]["here"]
    assert out["1"]["processes"] == 1
    if FORKS:
        assert out["2"]["processes"] == 2 and 2 <= out["3"]["processes"] <= 3    # the work was shared


def test_a_failed_item_comes_back_missing(tmp_path):
    values = fresh("failure", tmp_path)["values"]
    assert values[5] is None
    assert all(v is None or v == i + 100 for i, v in enumerate(values))


def test_a_failed_item_stops_its_process_and_the_rest_is_left_to_the_caller():
    def work(x):
        if x == 5:
            raise ValueError("bad item")
        return x + 100
    out = map_forked(list(range(12)), work, 1)
    assert out[:5] == [100, 101, 102, 103, 104] and all(v is MISSING for v in out[5:])


def test_a_worker_that_dies_loses_nothing_but_its_items(tmp_path):
    values = fresh("crash", tmp_path)["values"]
    assert all(v is None or v == -i for i, v in enumerate(values))
    assert any(v is not None for v in values)
    if FORKS:
        assert any(v is None for v in values)        # what the worker took before it died


def test_default_jobs(monkeypatch):
    monkeypatch.setenv("DEFC_JOBS", "3")
    assert default_jobs(27) == 3 and default_jobs(4) == 2 and default_jobs(1) == 1
    monkeypatch.setenv("DEFC_JOBS", "1")
    assert default_jobs(27) == 1
    monkeypatch.setenv("DEFC_JOBS", "many")
    assert default_jobs(27) == 1
    monkeypatch.delenv("DEFC_JOBS")
    assert 1 <= default_jobs(27) <= 8


def test_workers_make_what_one_process_makes(tmp_path):
    out = fresh("same_definitions", tmp_path)
    assert out["slugs"] == MODELS
    assert out["docs_same"] and out["servings_same"] and out["instances_same"]
    assert (out["from_workers"] > 0) == FORKS


@pytest.mark.parametrize("where", [1, 3])
def test_a_bad_model_raises_the_same_error_with_workers(tmp_path, where):
    cfg = tmp_path / "broken" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text('{"model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 2}')
    errors = fresh("bad_model", tmp_path, SCENARIO_WHERE=str(where), SCENARIO_CONFIG=str(cfg))["errors"]
    assert errors[0] == errors[1] and "model broken" in errors[0] and "does not have" in errors[0]


def test_the_catalogue_compiled_with_workers_is_the_catalogue_compiled_without(tmp_path):
    trees = []
    for jobs in ("2", "1"):
        out = tmp_path / f"jobs{jobs}"
        env = dict(os.environ, DEFC_CACHE_DIR=str(tmp_path / "cache"), DEFC_NO_RESULT_CACHE="1", DEFC_JOBS=jobs)
        proc = subprocess.run([sys.executable, "-m", "defc.cli", "compile", "--all-models", "--quantization", "all",
                               "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        trees.append((proc.stdout.replace(str(out), "OUT"),
                      {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}))
    assert len(trees[0][1]) > 700
    assert trees[0] == trees[1]                  # the same report and the same bytes


def test_a_template_edited_between_two_compiles_is_seen(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    opts = P.CompileOptions(model="llama-3.1-8b", specs=["rmsnorm"], template_dirs=[str(templates)],
                            out=str(tmp_path / "o"))
    before = P.model_definitions(opts).docs
    page = templates / "definition.json.j2"
    page.write_text(page.read_text().replace('"description": {{ description | tojson }}',
                                             '"description": {{ (description ~ " (edited)") | tojson(indent=2) }}'))
    after = P.model_definitions(opts).docs
    assert [d["description"] + " (edited)" for d, _ in before] == [d["description"] for d, _ in after]


def test_one_compile_loads_each_template_once(tmp_path, monkeypatch):
    from compiler import render as R
    loaded = []
    real = R.environment

    wrapped = set()

    def spy(dirs):
        env = real(dirs)
        if id(env) in wrapped:
            return env
        wrapped.add(id(env))
        real_get = env.get_template

        def get(name, parent=None, globals=None):
            if parent is None:                  # a page, not an {% include %} inside one
                loaded.append(name)
            return real_get(name, parent, globals)
        monkeypatch.setattr(env, "get_template", get)
        return env
    monkeypatch.setattr(R, "environment", spy)
    mds = P.models_definitions(MODELS[:2], P.CompileOptions(out=str(tmp_path / "o")), jobs=1)
    assert sum(len(md.docs) for md in mds) > 2 * len(set(loaded))
    assert len(loaded) == len(set(loaded))                  # no template looked up twice


@pytest.mark.parametrize("doc", [
    {}, {"a": []}, {"a": {}}, {"é": "ü → ∞", "q": "\"\\\n\t\x01"}, {"n": [1, -2, 3.5, 1e-07, 1e300, True, False, None]},
    {"deep": [[[]], [{}], [{"x": [1]}]]}, {"nan": float("nan")}, {"inf": [float("-inf")]}, {1: "int key"},
    {"t": (1, 2)}, {"big": 2 ** 80}, {"b": True, "i": 1},
])
def test_definition_text_is_exactly_json_dumps(doc):
    import json
    from compiler.write import dumps
    assert dumps(doc) == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def test_definition_texts_of_the_whole_catalogue_are_exactly_json_dumps(tmp_path):
    import json
    from compiler.models import catalogue_slugs
    from compiler.write import dumps
    mds = P.models_definitions(catalogue_slugs(), P.CompileOptions(quantization=["all"], out=str(tmp_path)), jobs=1)
    docs = [doc for md in mds for doc, _ in md.docs]
    assert len(docs) > 1000
    for doc in docs:
        assert dumps(doc) == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    # each model's file texts are made with its definitions (by a worker, or here), and are those
    for md in mds:
        assert md.texts == [json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for doc, _ in md.docs]


def test_texts_kept_for_the_result_cache_are_the_files_texts(tmp_path, monkeypatch):
    from compiler.write import dumps
    monkeypatch.delenv("DEFC_NO_RESULT_CACHE")
    opts = P.CompileOptions(model="deepseek-v3", quantization=["all"], out=str(tmp_path / "o"))
    made, read = P.model_definitions(opts), P.model_definitions(opts)
    assert not made.cached and read.cached
    assert made.texts == read.texts == [dumps(d) for d, _ in made.docs] and read.docs == made.docs


def test_no_fork_while_other_threads_run():
    import threading
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not can_fork()
        out = map_forked(list(range(6)), lambda x: (os.getpid(), x * x), 3)   # done here, alone
        assert [v for _, v in out] == [x * x for x in range(6)] and {p for p, _ in out} == {os.getpid()}
    finally:
        stop.set()
        t.join()
