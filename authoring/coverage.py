"""Coverage: which definitions the catalogue predicts, which a dataset has, and where the rest come from.

``predict(models, ...)`` runs the compile API for each catalogue model without writing anything and
returns, per model, the planned definitions (each with its dataset status: ``new`` = missing).  A
missing definition can come from a trace pass when its spec's ``fi_api`` has a FlashInfer trace
template (checked against FlashInfer's registry when ``flashinfer`` is importable, else against the
bundled list ``authoring/data/fi_trace_apis.json`` that ``defc coverage --write-fi-api-list``
regenerates); otherwise it must be compiled (Path B).

``matrix(...)`` counts definitions per family per model (``defc coverage --matrix``, which generates
docs/model-families.md).  ``gaps(...)`` groups the predicted definitions whose API has no trace
template, or that have no FlashInfer API at all, into follow-up issues (``defc gap-report``).
"""
from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import inspect
import io
import json
import os
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from defc.compiler.errors import DefcError, DefcErrors
from defc.compiler.load import display_path
from defc.compiler.paths import SPECS_DIR

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
BUNDLED_APIS = os.path.join(DATA_DIR, "fi_trace_apis.json")
NOWHERE = os.path.join(os.sep, "nonexistent-defc-dataset")   # an out folder that never exists


# ---------------------------------------------------------------------------------------------
# fast batch compiles: the compile API re-reads specs and the cookbook on every call; a batch over
# the whole catalogue reads each once.

@contextlib.contextmanager
def cached_inputs() -> Iterator[None]:
    """Within the block, spec files and cookbook data are read once (keyed by path and mtime)."""
    from defc.compiler import pipeline, serving
    from defc.compiler.check import load_spec
    spec_cache: Dict[Tuple[str, float], Any] = {}
    snap_cache: Dict[Tuple[str, float], Any] = {}
    book_cache: Dict[str, Any] = {}
    orig_load_specs, orig_snapshot, orig_read = pipeline.load_specs, serving.load_snapshot, serving.read_cookbook

    def _mtime(p):
        try:
            return os.path.getmtime(p)
        except OSError:
            return -1.0

    def load_specs(paths):
        out = []
        for p in paths:
            k = (os.path.abspath(p), _mtime(p))
            if k not in spec_cache:
                spec_cache[k] = load_spec(p)
            out.append(spec_cache[k])
        return out

    def load_snapshot(path=serving.SNAPSHOT):
        k = (os.path.abspath(path), _mtime(path))
        if k not in snap_cache:
            snap_cache[k] = orig_snapshot(path)
        return snap_cache[k]

    def read_cookbook(root):
        k = os.path.abspath(root)
        if k not in book_cache:
            book_cache[k] = orig_read(root)
        return book_cache[k]

    from defc.compiler import models
    entry_cache: Dict[Tuple[str, float], Any] = {}
    orig_entry = models.load_catalogue_entry

    def load_catalogue_entry(slug):
        p = os.path.join(models.catalogue_dir(), f"{slug}.yaml")
        k = (p, _mtime(p))
        if k not in entry_cache:
            entry_cache[k] = orig_entry(slug)
        e = entry_cache[k]
        return type(e)(**{**vars(e), "config": e.config, "cookbook_model_paths": list(e.cookbook_model_paths)})

    pipeline.load_specs, serving.load_snapshot, serving.read_cookbook = load_specs, load_snapshot, read_cookbook
    models.load_catalogue_entry = load_catalogue_entry
    try:
        yield
    finally:
        pipeline.load_specs, serving.load_snapshot, serving.read_cookbook = orig_load_specs, orig_snapshot, orig_read
        models.load_catalogue_entry = orig_entry


def usable_specs(specs: Sequence[str] = (), specs_dir: str = SPECS_DIR) -> Tuple[List[str], List[DefcError]]:
    """Spec paths that load and check cleanly, and the problems of those that do not."""
    from defc.compiler.check import load_spec
    from defc.compiler.pipeline import spec_paths
    good, bad = [], []
    for p in spec_paths(list(specs), specs_dir):
        try:
            load_spec(p)
            good.append(p)
        except DefcErrors as e:
            bad.extend(e.errors)
        except DefcError as e:
            bad.append(e)
    return good, bad


# ---------------------------------------------------------------------------------------------
# predictions

@dataclass
class Predicted:
    name: str
    op_type: str
    family: str
    spec: str
    def_id: str
    fi_api: Optional[str]
    status: str                 # the spec's status: verified | unverified | reference
    path: str                   # where it belongs in the dataset
    dataset_status: str         # new (missing) | unchanged | merged (present) | collision (present, differs)
    servings: List[str] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return self.dataset_status != "new"


@dataclass
class ModelPrediction:
    model: str
    servings: List[str]
    definitions: List[Predicted] = field(default_factory=list)
    error: Optional[DefcError] = None
    findings: List[Any] = field(default_factory=list)        # compiler.diagnose.Finding


def predict(models: Optional[Sequence[str]] = None, specs: Sequence[str] = (), specs_dir: str = SPECS_DIR,
            template_dirs: Sequence[str] = (), dataset: str = NOWHERE, cookbook: Optional[str] = None,
            quantization: Optional[List[str]] = None) -> Tuple[List[ModelPrediction], List[DefcError]]:
    """Compile every model (default: the catalogue) in memory; problems come back, nothing is raised."""
    from defc.compiler.models import catalogue_slugs
    from defc.compiler.pipeline import CompileOptions, compile_model
    good, problems = usable_specs(specs, specs_dir)
    slugs = list(models) if models else catalogue_slugs()
    out: List[ModelPrediction] = []
    if not good:
        return out, problems
    with cached_inputs():
        for slug in slugs:
            opts = CompileOptions(model=slug, specs=good, specs_dir=specs_dir, template_dirs=list(template_dirs),
                                  out=dataset, cookbook=cookbook, quantization=quantization)
            try:
                res = compile_model(opts)
            except DefcErrors as e:
                out.append(ModelPrediction(slug, [], error=e.errors[0]))
                problems.extend(e.errors)
                continue
            except DefcError as e:
                out.append(ModelPrediction(slug, [], error=e))
                problems.append(e)
                continue
            mp = ModelPrediction(res.model.slug, [s.label() + (f" {s.quantization}" if s.quantization else "")
                                                  for s in res.servings], findings=list(res.findings))
            for p in res.planned:
                inst = res.instances[p.doc["name"]][0] if p.doc.get("name") in res.instances else None
                mp.definitions.append(Predicted(
                    name=p.doc.get("name", ""), op_type=p.doc.get("op_type", ""),
                    family=inst.spec.family if inst else "", spec=display_path(inst.spec.path) if inst else "",
                    def_id=inst.def_id if inst else "", fi_api=inst.fi_api if inst else None,
                    status=inst.status if inst else "", path=display_path(p.path), dataset_status=p.status,
                    servings=list(p.sources)))
            out.append(mp)
    return out, problems


# ---------------------------------------------------------------------------------------------
# FlashInfer's trace registry

@dataclass
class TraceRegistry:
    """Which FlashInfer APIs have trace templates, and which public names exist without one."""

    traced: Dict[str, List[str]]          # api name (incl. public aliases) -> template labels
    untraced: List[str]                   # public FlashInfer callables with no trace template
    source: str                           # "flashinfer X.Y (live)" or the bundled file
    aliases: Dict[str, str] = field(default_factory=dict)    # public alias -> the fi_api FlashInfer records
    op_types: Dict[str, str] = field(default_factory=dict)   # template label -> its op_type

    def has_template(self, api: Optional[str]) -> bool:
        return bool(api) and (api in self.traced or f"{api}.run" in self.traced)

    def canonical(self, api: Optional[str]) -> Optional[str]:
        """The fi_api FlashInfer records for a traced name (a public alias, or a class for its ``run``)."""
        for name in (api, f"{api}.run") if api else ():
            if name in self.traced:
                return self.aliases.get(name, name)
        return None

    def templates(self) -> List[Tuple[str, str, str]]:
        """(fi_api, label, op_type) of every trace template, each under the fi_api FlashInfer records."""
        return [(api, lab, self.op_types.get(lab, "")) for api, labs in self.traced.items()
                if api not in self.aliases for lab in labs]

    def exists(self, api: Optional[str]) -> Optional[bool]:
        """True / False when known; None when the bundled list cannot tell."""
        if not api:
            return False
        if self.has_template(api) or api in self._untraced_set:
            return True
        if self.source.endswith("(live)"):
            return resolves(api)
        parent = api.rsplit(".", 1)[0]
        if parent in self._untraced_set or parent in self.traced:
            return True      # a method of a known class
        return None if self.source.startswith("bundled") else False

    def __post_init__(self):
        self._untraced_set = set(self.untraced)


def flashinfer_importable() -> bool:
    if os.environ.get("DEFC_NO_FLASHINFER") == "1":
        return False
    import importlib.util
    return importlib.util.find_spec("flashinfer") is not None


def _import_flashinfer():
    """Import flashinfer and the submodules that register templates only when imported."""
    saved = os.environ.pop("FLASHINFER_TRACE_DUMP_DIR", None)
    err, sys.stderr = sys.stderr, io.StringIO()      # flashinfer prints warnings on CPU-only machines
    try:
        import flashinfer  # noqa: F401
        import pkgutil
        for m in pkgutil.iter_modules(flashinfer.__path__, "flashinfer."):
            if m.name.rsplit(".", 1)[-1].startswith("_"):
                continue
            try:
                importlib.import_module(m.name)
            except Exception:   # optional GPU-only dependencies (triton, nvshmem, …)
                pass
            except SystemExit:
                pass
        return flashinfer
    finally:
        sys.stderr = err
        if saved is not None:
            os.environ["FLASHINFER_TRACE_DUMP_DIR"] = saved


def _canonical(obj, aliases) -> Optional[str]:
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(mod, str) or not isinstance(qual, str) or not mod.startswith("flashinfer"):
        return None
    name = f"{mod}.{qual}"
    return aliases.get(name, name)


@dataclass(frozen=True)
class TraceEntry:
    """One trace template FlashInfer attaches to an API: ``fi_api`` is the name FlashInfer records in
    the ``fi_api:`` tag, ``defined_as`` the function's own ``module.qualname`` (they differ where
    FlashInfer keeps a moved API's old name), ``label`` the template's name prefix (else its op_type)."""
    fi_api: str
    defined_as: str
    template: Any
    label: str


def _public_functions() -> Iterator[Any]:
    """Every function reachable as a public attribute (or a public method, ``__call__`` included, of a
    public class) of a loaded public FlashInfer module, each once, in module-name order."""
    seen = set()
    for modname in sorted(sys.modules):
        mod = sys.modules.get(modname)
        if mod is None or not (modname == "flashinfer" or modname.startswith("flashinfer.")):
            continue
        if any(part.startswith("_") for part in modname.split(".")[1:]):
            continue
        for attr, obj in sorted(vars(mod).items()):
            if attr.startswith("_"):
                continue
            found = [obj]
            if isinstance(obj, type):
                found += [v for k, v in vars(obj).items() if not k.startswith("_") or k == "__call__"]
            for fn in found:
                if isinstance(fn, (staticmethod, classmethod)):
                    fn = fn.__func__
                if inspect.isfunction(fn) and id(fn) not in seen:
                    seen.add(id(fn))
                    yield fn


@functools.lru_cache(maxsize=None)
def _trace_argument(fn) -> Any:
    """The ``trace=`` argument of ``fn``'s ``@flashinfer_api(trace=NAME)`` decorator (a TraceTemplate,
    or a dispatch callable listing its templates in ``.templates``), read from the source; else None."""
    original = inspect.unwrap(fn)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(original)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    for dec in node.decorator_list:
        if isinstance(dec, ast.Call) and ast.unparse(dec.func).rsplit(".", 1)[-1] == "flashinfer_api":
            for kw in dec.keywords:
                if kw.arg == "trace" and isinstance(kw.value, ast.Name) and not kw.value.id.startswith("_"):
                    return getattr(original, "__globals__", {}).get(kw.value.id)
    return None


@functools.lru_cache(maxsize=None)
def _recorded_fi_api(fn) -> Optional[str]:
    """The name FlashInfer writes in the ``fi_api:`` tag, from the public ``fn.fi_trace()`` called
    without arguments (nothing is dumped: FLASHINFER_TRACE_DUMP_DIR is unset meanwhile); None when
    that needs real arguments."""
    saved = os.environ.pop("FLASHINFER_TRACE_DUMP_DIR", None)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            doc = fn.fi_trace()
    except Exception:
        return None
    finally:
        if saved is not None:
            os.environ["FLASHINFER_TRACE_DUMP_DIR"] = saved
    tags = doc.get("tags") if isinstance(doc, dict) else None
    for tag in tags if isinstance(tags, list) else ():
        if isinstance(tag, str) and tag.startswith("fi_api:"):
            return tag[len("fi_api:"):]
    return None


def trace_entries() -> List[TraceEntry]:
    """The trace templates of the FlashInfer APIs loaded so far, through public names only: the
    public functions carrying FlashInfer's public ``fi_trace`` attribute, the templates their
    ``@flashinfer_api(trace=...)`` names (a TraceTemplate, or every TraceTemplate in a dispatch
    callable's ``.templates``), and the fi_api name that ``fi_trace`` records."""
    from flashinfer.trace import TraceTemplate
    out: List[TraceEntry] = []
    for fn in _public_functions():
        if getattr(fn, "fi_trace", None) is None:
            continue
        trace = _trace_argument(fn)
        if isinstance(trace, TraceTemplate):
            templates = [trace]
        else:
            templates = [t for t in (getattr(trace, "templates", None) or ()) if isinstance(t, TraceTemplate)]
        if not templates:
            continue
        defined_as = f"{fn.__module__}.{fn.__qualname__}"
        fi_api = _recorded_fi_api(fn) or defined_as
        out += [TraceEntry(fi_api, defined_as, t, t.name_prefix or t.op_type) for t in templates]
    return out


def trace_aliases(entries: Sequence[TraceEntry]) -> Dict[str, str]:
    """``module.qualname`` -> the fi_api FlashInfer records, where the two differ."""
    return {e.defined_as: e.fi_api for e in entries if e.defined_as != e.fi_api}


def live_registry() -> TraceRegistry:
    fi = _import_flashinfer()
    entries = trace_entries()
    aliases = trace_aliases(entries)
    traced: Dict[str, List[str]] = {}
    op_types: Dict[str, str] = {}
    for e in entries:
        labels = traced.setdefault(e.fi_api, [])
        if e.label not in labels:
            labels.append(e.label)
        op_types.setdefault(e.label, e.template.op_type)
    canonical = dict(traced)
    public_names: Dict[str, str] = {}

    def alias(public: str, canon: str):
        if public != canon and public not in canonical:
            public_names.setdefault(public, canon)
        labels = traced.setdefault(public, [])
        for lab in canonical[canon]:
            if lab not in labels:
                labels.append(lab)

    api_modules = {"flashinfer"} | {n.rsplit(".", 1)[0] for n in canonical}
    public_objs: Dict[str, Any] = {}
    for modname, mod in list(sys.modules.items()):
        if mod is None or not (modname == "flashinfer" or modname.startswith("flashinfer.")):
            continue
        if any(part.startswith("_") for part in modname.split(".")[1:]):
            continue
        for attr in list(vars(mod)):
            if attr.startswith("_"):
                continue
            obj = vars(mod).get(attr)
            public = f"{modname}.{attr}"
            if isinstance(obj, type):
                hit = False
                for meth in vars(obj):
                    if meth.startswith("_"):
                        continue
                    c = _canonical(vars(obj)[meth], aliases)
                    if c in canonical:
                        alias(f"{public}.{meth}", c)
                        hit = True
                if not hit and _canonical(obj, aliases):
                    public_objs[public] = obj
                if hit:
                    api_modules.add(modname)
            elif callable(obj):
                c = _canonical(obj, aliases)
                if c in canonical:
                    alias(public, c)
                    api_modules.add(modname)
                elif c:
                    public_objs[public] = obj
    # APIs without a template: public FlashInfer callables of the modules that host traced APIs
    untraced = sorted(p for p in public_objs if p.rsplit(".", 1)[0] in api_modules and p not in traced)
    version = getattr(fi, "__version__", "?")
    return TraceRegistry({k: traced[k] for k in sorted(traced)}, untraced, f"flashinfer {version} (live)",
                         {k: public_names[k] for k in sorted(public_names)}, {k: op_types[k] for k in sorted(op_types)})


def resolves(api: str) -> bool:
    """Whether a dotted FlashInfer name imports (flashinfer must be importable)."""
    from defc.compiler.dotted import resolve
    return resolve(api) is not None


def bundled_registry(path: str = BUNDLED_APIS) -> TraceRegistry:
    if not os.path.exists(path):
        return TraceRegistry({}, [], "bundled (missing)")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    return TraceRegistry(dict(data.get("traced") or {}), list(data.get("untraced") or []),
                         f"bundled {display_path(path)} ({data.get('flashinfer', '?')})",
                         dict(data.get("aliases") or {}), dict(data.get("op_types") or {}))


def registry(live: Optional[bool] = None) -> TraceRegistry:
    """FlashInfer's registry when importable (or live=True), else the bundled list."""
    if live is None:
        live = flashinfer_importable()
    return live_registry() if live else bundled_registry()


def write_bundled(path: str = BUNDLED_APIS) -> TraceRegistry:
    from defc.compiler.write import atomic_write_text
    reg = live_registry()
    data = {"generated_by": "defc coverage --write-fi-api-list", "flashinfer": reg.source.replace(" (live)", ""),
            "traced": reg.traced, "untraced": reg.untraced, "aliases": reg.aliases, "op_types": reg.op_types}
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False) + "\n")
    return reg


# ---------------------------------------------------------------------------------------------
# reports

def source_of(p: Predicted, reg: TraceRegistry) -> str:
    """'trace' when a trace pass can produce it, else 'compile' (Path B)."""
    if p.fi_api and p.status != "unverified" and reg.has_template(p.fi_api):
        return "trace"
    return "compile"


def coverage_rows(preds: List[ModelPrediction], reg: TraceRegistry) -> List[Dict[str, Any]]:
    rows = []
    for mp in preds:
        present = [d for d in mp.definitions if d.present]
        missing = [d for d in mp.definitions if not d.present]
        rows.append({
            "model": mp.model, "servings": mp.servings,
            "error": str(mp.error) if mp.error else None,
            "predicted": len(mp.definitions), "present": len(present), "missing": len(missing),
            "definitions": [{"name": d.name, "op_type": d.op_type, "family": d.family, "path": d.path,
                             "present": d.present, "dataset_status": d.dataset_status, "fi_api": d.fi_api,
                             "status": d.status,
                             "source": None if d.present else source_of(d, reg)} for d in mp.definitions],
        })
    return rows


def coverage_markdown(rows: List[Dict[str, Any]], dataset: str, reg: TraceRegistry) -> str:
    lines = [f"# Coverage of {display_path(dataset)}", "",
             f"Trace templates: {reg.source}. `trace` = a trace pass can produce it; "
             f"`compile` = Path B (defc compile).", "",
             "| model | predicted | present | missing | from trace | compile |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['model']} | error | | | | |")
            continue
        miss = [d for d in r["definitions"] if not d["present"]]
        lines.append(f"| {r['model']} | {r['predicted']} | {r['present']} | {r['missing']} | "
                     f"{sum(d['source'] == 'trace' for d in miss)} | {sum(d['source'] == 'compile' for d in miss)} |")
    for r in rows:
        lines += ["", f"## {r['model']}", ""]
        if r["error"]:
            lines.append(f"compile failed: `{r['error']}`")
            continue
        lines.append(f"serving configs: {', '.join(r['servings'])}")
        lines.append("")
        lines += ["| definition | op_type | in dataset | source | fi_api |", "|---|---|---|---|---|"]
        for d in sorted(r["definitions"], key=lambda d: (d["op_type"], d["name"])):
            have = {"new": "missing", "collision": "differs"}.get(d["dataset_status"], "yes")
            lines.append(f"| `{d['name']}` | {d['op_type']} | {have} | {d['source'] or ''} | "
                         f"{('`' + d['fi_api'] + '`') if d['fi_api'] else '—'} |")
    return "\n".join(lines) + "\n"


def matrix(preds: List[ModelPrediction]) -> Tuple[List[str], List[str], Dict[Tuple[str, str], int]]:
    families = sorted({d.family for mp in preds for d in mp.definitions})
    models = [mp.model for mp in preds]
    counts: Dict[Tuple[str, str], int] = {}
    for mp in preds:
        for d in mp.definitions:
            counts[(mp.model, d.family)] = counts.get((mp.model, d.family), 0) + 1
    return models, families, counts


def matrix_markdown(preds: List[ModelPrediction], title: bool = True,
                    corpus: Optional[List[ModelPrediction]] = None, corpus_dir: str = "") -> str:
    models, families, counts = matrix(preds + (corpus or []))
    lines = []
    if title:
        how = "defc coverage --matrix" + (f" --corpus {corpus_dir}" if corpus else "") + " --write docs/model-families.md"
        lines += ["# Models × op families", "",
                  f"<!-- generated by `{how}`; do not edit -->", "",
                  "Number of Definition JSONs `defc compile` predicts for each catalogue model (over its "
                  "sgl-cookbook serving configurations, own quantization), per op family (one spec in `specs/`).", ""]
    lines += _count_table(preds, families, counts)
    if corpus:
        lines += ["", "## Models outside the catalogue", "",
                  f"The real config.json files of `{corpus_dir}` (each with facts written by hand from its SGLang "
                  "implementation, checked by tests/test_corpus.py), compiled at TP 1: definitions per family, then "
                  "what defc reported — gaps (families not emitted), unmodelled config keys and assumed facts "
                  "(their definitions are not status:verified), unknown keys.", ""]
        lines += _count_table(corpus, families, counts)
        lines += ["", "| model | gaps | unmodelled | assumed | unknown keys |", "|---|---|---|---|---|"]
        for mp in corpus:
            by_kind = {k: sorted({f.subject for f in mp.findings if f.kind == k})
                       for k in ("gap", "unmodelled", "assumed", "unknown")}
            lines.append(f"| {mp.model} | " + " | ".join(", ".join(by_kind[k]) or "·" for k in by_kind) + " |")
    return "\n".join(lines) + "\n"


def _count_table(preds: List[ModelPrediction], families: List[str], counts) -> List[str]:
    lines = []
    lines.append("| model | " + " | ".join(families) + " | total |")
    lines.append("|---|" + "---:|" * (len(families) + 1))
    by_model = {mp.model: mp for mp in preds}
    models = [mp.model for mp in preds]
    for m in models:
        if by_model[m].error:
            lines.append(f"| {m} | " + " | ".join("error" for _ in families) + " | error |")
            continue
        cells = [str(counts.get((m, f), 0) or "·") for f in families]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {sum(counts.get((m, f), 0) for f in families)} |")
    totals = [sum(counts.get((m, f), 0) for m in models) for f in families]
    lines.append("| **sum** | " + " | ".join(str(t) for t in totals) + f" | {sum(totals)} |")
    return lines


# ---------------------------------------------------------------------------------------------
# gap report

@dataclass
class Gap:
    kind: str                       # no-template | no-api | unknown-api
    key: str                        # the fi_api, or family/def_id when there is none
    family: str
    spec: str
    def_id: str
    fi_api: Optional[str]
    definitions: Dict[str, Predicted] = field(default_factory=dict)   # name -> one prediction
    models: Dict[str, List[str]] = field(default_factory=dict)        # name -> models


def gaps(preds: List[ModelPrediction], reg: TraceRegistry) -> List[Gap]:
    out: Dict[Tuple[str, str], Gap] = {}
    for mp in preds:
        for d in mp.definitions:
            if d.fi_api and d.status != "unverified":
                if reg.has_template(d.fi_api):
                    continue
                known = reg.exists(d.fi_api)
                kind = "no-template" if known else "unknown-api"
                key = d.fi_api
            else:
                kind, key = "no-api", f"{d.family}/{d.def_id}"
            g = out.get((kind, key))
            if g is None:
                g = out[(kind, key)] = Gap(kind, key, d.family, d.spec, d.def_id, d.fi_api)
            g.definitions.setdefault(d.name, d)
            ms = g.models.setdefault(d.name, [])
            if mp.model not in ms:
                ms.append(mp.model)
    order = {"no-template": 0, "unknown-api": 1, "no-api": 2}
    return sorted(out.values(), key=lambda g: (order[g.kind], g.key))


def spec_apis(specs: Sequence[str] = (), specs_dir: str = SPECS_DIR) -> Tuple[Dict[str, List[str]], List[DefcError]]:
    """FlashInfer API -> the specs whose definitions name it (as ``fi_api``, or as the ``api`` of a ``trace:``
    recipe or of one of its ``calls``), and the problems of specs that do not load."""
    from defc.compiler.check import load_spec
    good, problems = usable_specs(specs, specs_dir)
    out: Dict[str, List[str]] = {}
    for path in good:
        for d in load_spec(path).definitions:
            trace = d.get("trace") if isinstance(d.get("trace"), dict) else {}
            calls = [trace] + [c for c in (trace.get("calls") or []) if isinstance(c, dict)]
            for api in [d.get("fi_api")] + [c.get("api") for c in calls]:
                if isinstance(api, str) and api and display_path(path) not in out.setdefault(api, []):
                    out[api].append(display_path(path))
    return out, problems


def uncovered_templates(reg: TraceRegistry, apis) -> List[Tuple[str, str, str]]:
    """(fi_api, label, op_type) of the trace templates whose API none of ``apis`` names (public aliases and a
    class for its ``run`` count as the API), by op_type."""
    covered = {reg.canonical(a) for a in apis}
    return sorted((t for t in reg.templates() if t[0] not in covered), key=lambda t: (t[2], t[0], t[1]))


def uncovered_markdown(rows: List[Tuple[str, str, str]], reg: TraceRegistry) -> str:
    lines = [f"## Trace templates no defc spec covers ({len(rows)}; {reg.source})", "",
             "FlashInfer APIs with a trace template that no spec definition names (as `fi_api` or in its `trace:` "
             "recipe): candidates for a new spec (`defc new-op NAME --from-fi-api API`).", ""]
    if not rows:
        return "\n".join(lines + ["Every trace template's API is named by a spec."]) + "\n"
    lines += ["| fi_api | template | op_type |", "|---|---|---|"]
    lines += [f"| `{api}` | {label} | {op_type} |" for api, label, op_type in rows]
    return "\n".join(lines) + "\n"


def gap_issue(g: Gap, reg: TraceRegistry) -> Tuple[str, str]:
    """(title, Markdown body) of a follow-up issue for one gap."""
    names = sorted(g.definitions)
    example = g.definitions[names[0]]
    models = sorted({m for ms in g.models.values() for m in ms})
    defs = "\n".join(f"- `{n}` — `{g.definitions[n].path}` (models: {', '.join(sorted(g.models[n]))})" for n in names)
    if g.kind == "no-template":
        title = f"Trace template for `{g.fi_api}` ({example.op_type})"
        need = (f"`{g.fi_api}` exists in FlashInfer ({reg.source}) but has no `TraceTemplate`: decorate it with "
                f"`@flashinfer_api(trace=...)` so that a trace pass (`FLASHINFER_TRACE_DUMP=1`, or `.fi_trace()`) "
                f"writes the definitions below instead of defc compiling them by hand (Path B).")
        accept = [f"`{g.fi_api}.fi_trace(...)` returns a definition for each shape below, with the same name, "
                  f"op_type `{example.op_type}`, axes (const values included), inputs and outputs as the hand-written file",
                  "every emitted dtype is concrete (no `unknown`) and no name is both an input and an output",
                  "the reference defines a top-level `run(...)` and `flashinfer_bench.data.Definition` accepts the output",
                  "`defc diff` against the hand-written definitions reports no structural difference",
                  "afterwards `defc coverage` lists these definitions as `trace` instead of `compile`"]
    elif g.kind == "unknown-api":
        title = f"`{g.fi_api}` is named by spec {g.spec} but not found in FlashInfer"
        need = (f"The spec's `fi_api` `{g.fi_api}` is neither a traced API nor a known public FlashInfer callable "
                f"({reg.source}). Either the API was renamed (fix `fi_api` in {g.spec}, definition `{g.def_id}`) or it "
                f"still has to be written in FlashInfer.")
        accept = [f"`fi_api` in {g.spec} (`{g.def_id}`) names an importable FlashInfer API, or the definition is "
                  f"marked `status: unverified` with `fi_api: null`",
                  "`defc lint` is clean", "`defc gap-report` no longer lists this entry as unknown"]
    else:
        title = f"Kernel request: FlashInfer kernel for `{g.family}` / `{g.def_id}` ({example.op_type})"
        need = (f"No FlashInfer API implements `{g.def_id}` of family `{g.family}` (spec {g.spec}: "
                f"`fi_api` is {('`' + g.fi_api + '`') if g.fi_api else 'null'}, status `{example.status}`). "
                f"The definitions below exist only as hand-written (compiled) definitions with a PyTorch reference.")
        accept = ["a FlashInfer API computes this op for the shapes below and matches the reference within the "
                  "tolerances of the definition's `verify` block",
                  "the API carries a `TraceTemplate` whose output equals the hand-written definitions structurally",
                  f"the spec sets `fi_api` and `status: verified` for `{g.def_id}`; `defc lint` stays clean"]
    body = [f"## {title}", "", "### What is needed", "", need, "",
            f"### Hand-written definitions ({len(names)}, models: {', '.join(models)})", "", defs, "",
            f"Spec: `{g.spec}` (definition `{g.def_id}`); regenerate with `defc compile --model MODEL {g.family}`.", "",
            "### Acceptance", ""] + [f"- [ ] {a}" for a in accept]
    return title, "\n".join(body) + "\n"
