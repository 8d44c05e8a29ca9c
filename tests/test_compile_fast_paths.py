"""The fast paths of a compile give exactly what the plain paths give.

* a multi-model compile (``compile_models`` / ``defc compile --model a --model b``) writes the same
  bytes and reports the same statuses as compiling the models one after another;
* the exact-int/Fraction formula evaluator agrees with sympy (``reference_mode``) on every formula
  of every spec for every catalogue model, and on a battery of awkward formulas;
* the result cache returns what a real compile makes, and misses when any input changes.
"""
import json
import os
import re
import shutil
from fractions import Fraction

import pytest

from compiler import formula as F
from compiler import pipeline as P
from compiler import result_cache
from compiler.models import catalogue_slugs
from compiler.paths import SPECS_DIR, TEMPLATES_DIR
from defc.cli import main

# models that share definitions (tag merges) and some that do not
MODELS = ["llama-3.1-8b", "qwen3-8b", "llama-3.1-70b", "qwen3-235b-a22b"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFC_CACHE_DIR", str(tmp_path / "cache"))


def files(root):
    out = {}
    for r, _, fs in os.walk(root):
        for f in fs:
            p = os.path.join(r, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out


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
    from compiler import write as W
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
# formulas: the fast path against sympy

def _kind(v):
    """A value as a comparable, exact description: numbers by exact value and by whether sympy
    would hold a Float; lists item by item."""
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, (int, Fraction)):
        return ("exact", Fraction(v))
    if isinstance(v, float):
        return ("float", v)
    if F._is_sympy(v):
        if v.is_Rational:
            return ("exact", Fraction(int(v.p), int(v.q)))
        if v.is_Float:
            return ("float", float(v))
        return ("sympy", str(v))
    if isinstance(v, (list, tuple)):
        return ("list", [_kind(x) for x in v])
    return (type(v).__name__, v)


def _outcome(f, env):
    try:
        return ("value", _kind(f.evaluate(env)))
    except F.FormulaError as e:
        return ("error", type(e).__name__, str(e))


def test_fast_formulas_agree_with_sympy_over_the_catalogue(monkeypatch):
    compared = []
    real = F.Formula.evaluate

    def both(self, env):
        fast = _outcome_real(self, env)
        with F.reference_mode():
            slow = _outcome_real(self, env)
        assert fast == slow, (self.source, fast, slow)
        compared.append(self.source)
        return real(self, env)

    def _outcome_real(f, env):
        try:
            return ("value", _kind(real(f, env)))
        except F.FormulaError as e:
            return ("error", type(e).__name__, str(e))

    monkeypatch.setattr(F.Formula, "evaluate", both)
    monkeypatch.setenv("DEFC_NO_RESULT_CACHE", "1")
    P.compile_models(catalogue_slugs(), P.CompileOptions(quantization=["all"], out="/nonexistent-defc-out"))
    assert len(compared) > 10000 and len(set(compared)) > 200


@pytest.mark.parametrize("text", [
    "a / b", "a // b", "a % b", "-a % b", "a % -b", "(a / b) % 1", "a ** 2", "a ** -2", "b ** -1",
    "max(a, b / 3)", "min(a / 7, b)", "ceil(a / b)", "floor(-a / b)", "cdiv(a, b)", "cdiv(0, a)",
    "a - a", "x - x", "x / x", "0 * x", "x ** 0", "floor(x) % 1", "(2 * (x // 2)) % 2", "a * b + a",
    "2 * a * a + 2 * b", "a * f", "f * f", "f * f * 3", "f + 1", "floor(a * f)", "ceil(f * b)", "-f",
    "a * g", "big * f", "a < f", "a == f", "f == 2", "a in [1, 2, 3]", "a in [True]", "a in l",
    "s in l", "s == 'x'", "a == 'x'", "a < s", "len(l)", "len(l) * a", "l[0]", "l[5]", "n + 1",
    "u + 1", "t * 2", "a / z", "a % z", "a // z", "z ** -1", "(1 / 0) if z else 1", "a if b else c", "not z",
    "defined(u) and u > 1", "a / 3 > 1", "a / 3 == 4 / 3", "q * 2", "q > 1", "max(q, 1)", "-(a / 3)",
    "e * 2", "floor(e)", "m * 2",
])
def test_fast_formulas_agree_with_sympy_on_awkward_cases(text):
    import sympy
    env = {"a": 12, "b": 8, "c": 3, "f": 0.5, "g": 0.1, "big": 2 ** 60 + 1, "l": [1, 2, "x"], "s": "x",
           "n": None, "t": True, "z": 0, "q": Fraction(7, 3), "e": 2.5e-310, "m": sympy.Rational(5, 2)}
    f = F.parse(text)
    fast = _outcome(f, env)
    with F.reference_mode():
        slow = _outcome(f, env)
    assert fast == slow


def test_exact_results_are_sympy_free_and_sympy_stays_unimported_on_exact_values():
    env = {"h": 7168, "tp": 3, "f": 0.25}
    assert F.parse("h / tp").evaluate(env) == Fraction(7168, 3)
    assert type(F.parse("h / 128").evaluate(env)) is int
    assert F.parse("floor(h * f)").evaluate(env) == 1792
    assert F.to_python(F.parse("h / tp").evaluate(env)) == 7168 / 3


# ---------------------------------------------------------------------------------------------
# the result cache

def test_result_cache_hit_is_a_real_compile_and_misses_on_change(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    shutil.copytree(SPECS_DIR, specs)
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    opts = P.CompileOptions(model="llama-3.1-8b", specs=["rmsnorm"], specs_dir=str(specs),
                            template_dirs=[str(templates)], out=str(tmp_path / "o"))
    first = P.model_definitions(opts)
    assert not first.cached
    again = P.model_definitions(opts)
    assert again.cached and again.docs == first.docs
    assert set(again.instances) == set(first.instances)          # evaluated when asked for

    def refuse(*a, **k):
        raise AssertionError("evaluated despite a cache hit")
    monkeypatch.setattr(P, "evaluate_model", refuse)
    assert P.model_definitions(opts).cached
    monkeypatch.undo()
    monkeypatch.setenv("DEFC_CACHE_DIR", str(tmp_path / "cache"))

    # any input that changes the definitions is part of the key
    text = (specs / "rmsnorm.yaml").read_text()
    (specs / "rmsnorm.yaml").write_text(text + "\n# changed\n")
    assert not P.model_definitions(opts).cached
    assert P.model_definitions(opts).cached
    (templates / "definition.json.j2").write_text((templates / "definition.json.j2").read_text() + "\n")
    assert not P.model_definitions(opts).cached
    assert not P.model_definitions(P.CompileOptions(**{**opts.__dict__, "tp": [2]})).cached
    assert not P.model_definitions(P.CompileOptions(**{**opts.__dict__, "quantization": ["all"]})).cached

    # a corrupt entry is a miss, and the compile is still right
    for name in os.listdir(tmp_path / "cache"):
        if name.startswith(result_cache.FORMAT):
            (tmp_path / "cache" / name).write_text('{"data": {"definitions": [[1, 2]]}, "positions": []}')
    md = P.model_definitions(opts)
    assert not md.cached and md.docs == P.model_definitions(opts).docs

    monkeypatch.setenv("DEFC_NO_RESULT_CACHE", "1")
    assert not P.model_definitions(opts).cached


def test_parse_cache_gives_the_data_and_positions_of_a_fresh_parse(tmp_path, monkeypatch):
    """Every spec and the model facts, parsed by ruamel and read back from the parse cache (whose
    positions are parsed only when an error needs them): the same data and the same locations."""
    import glob
    from compiler import load
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


@pytest.mark.parametrize("quantization", [None, ["all"]])
def test_instances_reused_across_serving_configs_are_those_evaluated_there(quantization, monkeypatch):
    """Every catalogue model at every cookbook serving config: the instances an Evaluator reuses
    from another serving config (a definition that reads the same values there) equal, field by
    field — symbol table, serving config and origins included — those a fresh evaluation gives."""
    from dataclasses import fields
    from compiler import evaluate as E
    from compiler.facts import model_env
    moved = []
    real = E.Evaluator._moved
    monkeypatch.setattr(E.Evaluator, "_moved", lambda self, *a: moved.append(1) or real(self, *a))
    opts = P.CompileOptions(quantization=quantization)
    facts = P.load_facts(opts.specs_dir)
    specs = P.CompileRun().specs(P.spec_paths(None, opts.specs_dir))
    total = 0
    for slug in catalogue_slugs():
        model = P.resolve_model(slug, None, None)
        servings, _ = P.servings_for(model, opts, facts)
        fast, plain = E.Evaluator(slug, quantization), E.Evaluator(slug, quantization, reuse=False)
        for s in servings:
            env = model_env(model.config, s.symbols(), facts, slug, model.origin)
            for spec in specs:
                got, want = fast.run(spec, env, s, "bf16"), plain.run(spec, env, s, "bf16")
                assert len(got) == len(want)
                for a, b in zip(got, want):
                    for f in fields(a):
                        assert getattr(a, f.name) == getattr(b, f.name), (slug, s.label(), a.name, f.name)
                    assert a.serving is s and json.dumps(a.params) == json.dumps(b.params)
                    total += 1
    assert total > 1000 and len(moved) > 0.25 * total


def test_reuse_halves_the_evaluations_of_the_catalogue(monkeypatch):
    """Most definitions (GEMMs, norms, sampling) read no serving symbol: at the second and later
    serving configs of a model they are reused, not evaluated."""
    from compiler import evaluate as E
    made = []
    real = E.Evaluator._instance
    monkeypatch.setattr(E.Evaluator, "_instance", lambda self, *a: made.append(1) or real(self, *a))
    opts = P.CompileOptions(quantization=["all"], out="/nonexistent-defc-out")
    monkeypatch.setenv("DEFC_NO_RESULT_CACHE", "1")
    monkeypatch.setenv("DEFC_JOBS", "1")                 # every evaluation in this process
    results = P.compile_models(catalogue_slugs(), opts)
    instances = sum(len(v) for r in results for v in r.instances.values())
    assert instances > 2000 and len(made) < 0.6 * instances


@pytest.mark.parametrize("value", [
    "a\"b\n\u00e9\u4e2d\u2028", "", 1, -7, 2**70, 1.5, -0.0, 1e300, float("nan"), float("inf"), True, False, None,
    [], {}, [1, [2, {"a": [None, True, "x"]}]], {"k": {"shape": ["a", "b"], "dtype": "f"}},
    {1: "int key", False: "b", None: "n", 2.5: "f"}, (1, 2), [(3, {"t": (4,)})]])
def test_tojson_filter_is_json_dumps(value):
    from compiler.render import _tojson
    assert _tojson(value) == json.dumps(value, ensure_ascii=False)
    assert _tojson(value, indent=2) == json.dumps(value, ensure_ascii=False, indent=2)


def test_tojson_filter_refuses_what_json_refuses():
    from compiler.render import _tojson
    with pytest.raises(TypeError):
        _tojson({"x": object()})


def test_a_text_that_passed_its_schema_is_not_validated_again(tmp_path, monkeypatch):
    """schema_errors remembers (parse cache, by text digest) a text that passed; one that failed is
    validated, and its errors reported, every time."""
    from compiler import check, load
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
