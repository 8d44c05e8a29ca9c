"""Forked compile workers (compiler/workers.py) and what a compile shares between its models.

* ``map_forked`` returns every result in order, whatever the number of processes; an item whose
  worker raised or died comes back MISSING (never a wrong value), so the caller redoes it;
* a multi-model compile with workers makes exactly the definitions of one without, raises the
  same error for a bad model, and still gives each model's instances;
* one compile loads each template once, yet a template edited between two compiles of one
  process is seen;
* definition texts are byte for byte what json.dumps(indent=2) writes.
"""
import os
import shutil
import time

import pytest

from compiler import pipeline as P
from compiler.errors import DefcError
from compiler.paths import TEMPLATES_DIR
from compiler.workers import MISSING, can_fork, default_jobs, map_forked

MODELS = ["llama-3.1-8b", "qwen3-8b", "llama-3.1-70b", "qwen3-235b-a22b", "gpt-oss-20b"]
needs_fork = pytest.mark.skipif(not can_fork(), reason="forked workers are Linux-only; elsewhere jobs=1 runs")


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DEFC_NO_RESULT_CACHE", "1")


def _square(x):
    time.sleep(0.01)
    return (os.getpid(), x * x)


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_results_in_order_whatever_the_processes(jobs):
    out = map_forked(list(range(20)), _square, jobs)
    assert [v for _, v in out] == [x * x for x in range(20)]
    pids = {p for p, _ in out}
    if jobs > 1 and can_fork():
        assert len(pids) > 1 and os.getpid() in pids      # the work was shared
    else:
        assert pids == {os.getpid()}


@pytest.mark.parametrize("jobs", [1, 3])
def test_a_failed_item_comes_back_missing(jobs):
    def work(x):
        time.sleep(0.005)
        if x == 5:
            raise ValueError("bad item")
        return x + 100
    out = map_forked(list(range(12)), work, jobs)
    assert out[5] is MISSING
    assert all(v is MISSING or v == i + 100 for i, v in enumerate(out))
    if jobs == 1:       # a process stops at its first failure: the caller redoes the rest in order
        assert out[:5] == [100, 101, 102, 103, 104] and all(v is MISSING for v in out[5:])


@needs_fork
def test_a_worker_that_dies_loses_nothing_but_its_items():
    parent = os.getpid()

    def work(x):
        if os.getpid() != parent:
            os._exit(7)                                     # a crash, not an exception
        time.sleep(0.05)                                    # the worker gets items meanwhile
        return -x
    out = map_forked(list(range(10)), work, 2)
    assert all(v is MISSING or v == -i for i, v in enumerate(out))
    assert any(v is MISSING for v in out) and any(v is not MISSING for v in out)


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
    opts = P.CompileOptions(quantization=["all"], out=str(tmp_path / "o"))
    one = P.models_definitions(MODELS, opts, jobs=1)
    shared = P.models_definitions(MODELS, opts, jobs=3)
    assert [m.model.slug for m in shared] == MODELS
    assert [m.docs for m in shared] == [m.docs for m in one]
    assert [m.servings for m in shared] == [m.servings for m in one]
    for a, b in zip(one, shared):       # instances: evaluated again where a worker made the docs
        assert set(a.instances) == set(b.instances)
        name = next(iter(a.instances))
        assert a.instances[name][0].axes == b.instances[name][0].axes


@pytest.mark.parametrize("where", [1, 3])
def test_a_bad_model_raises_the_same_error_with_workers(tmp_path, where):
    cfg = tmp_path / "broken" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text('{"model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 2}')
    models = MODELS[:where] + [str(cfg)] + MODELS[where:]
    opts = P.CompileOptions(out=str(tmp_path / "o"))
    errors = []
    for jobs in (1, 3):
        with pytest.raises(DefcError) as e:
            P.models_definitions(models, opts, jobs=jobs)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "model broken" in errors[0] and "does not have" in errors[0]


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
    mds = P.models_definitions(catalogue_slugs(), P.CompileOptions(quantization=["all"], out=str(tmp_path)), jobs=2)
    docs = [doc for md in mds for doc, _ in md.docs]
    assert len(docs) > 1000
    for doc in docs:
        assert dumps(doc) == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    # texts made by a worker (or for the result cache) are the same texts
    assert all(md.texts is None or md.texts == [dumps(d) for d, _ in md.docs] for md in mds)
    assert any(md.texts is not None for md in mds) == can_fork()
