"""The compile pipeline: load → check → evaluate → render → write, for one model or several.

``compile_model(options)`` returns a :class:`CompileResult` with every planned file; nothing is
written until every definition of the run has been evaluated, rendered and placed, so bad
input stops the run before the dataset is touched.  ``write_planned`` then applies the plan.

``compile_models(models, options)`` does the same for several models into one dataset: the
result is what compiling them one after another gives (each later model's definitions are placed
against what the earlier ones would have written), but every model is evaluated before anything
is written and each file is written once (``write_planned_many``).

A model's rendered definitions are kept in the result cache (see cache), keyed by the content
of everything that makes them; placing them in the dataset always happens anew.
"""
from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .check import Spec, field_name, load_spec
from .errors import DefcError, Location
from .load import display_path
from .diagnose import Finding, config_names, findings, unverified
from .evaluate import Evaluator, Gap, Instance, MissingField
from .facts import load_facts, model_env, quant_key
from .models import ModelInfo, resolve_model
from . import cache, manifest
from .paths import DEFAULT_COOKBOOK, DEFAULT_OUT, MODEL_FACTS, SPECS_DIR
from .render import Renderer, template_dirs
from .serving import Serving, default_servings, explicit_servings, rows_for
from .write import (WRITES, DatasetLock, Listing, Planned, dumps, apply_many, atomic_write_text, check_component,
                    clean_stale_temps, check_folder, final_writes, lock_timeout, plan, replan)


@dataclass
class CompileOptions:
    model: Optional[str] = None
    specs: Sequence[str] = ()
    config: Optional[str] = None
    hf_repo_id: Optional[str] = None
    tp: Optional[List[int]] = None
    ep: Optional[List[int]] = None
    dp: Optional[List[int]] = None
    quantization: Optional[List[str]] = None     # None: own; ["all"]; or keys
    op_types: Optional[List[str]] = None
    out: str = DEFAULT_OUT
    cookbook: Optional[str] = None
    force: bool = False
    skip_existing: bool = True
    specs_dir: str = SPECS_DIR
    template_dirs: Sequence[str] = ()


@dataclass
class CompileResult:
    model: ModelInfo
    servings: List[Serving]
    planned: List[Planned]
    notes: List[str] = field(default_factory=list)
    instances: Dict[str, List[Instance]] = field(default_factory=dict)
    findings: List[Finding] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for p in self.planned if p.status == status)


def spec_paths(specs: Sequence[str], specs_dir: str = SPECS_DIR) -> List[str]:
    """Spec files from paths or bare family names; all of specs_dir when none are given."""
    if not specs:
        found = sorted(p for p in glob.glob(os.path.join(specs_dir, "*.yaml"))
                       if not os.path.basename(p).startswith("_"))
        if not found:
            raise DefcError("no spec files (*.yaml) in this folder", Location(display_path(specs_dir)))
        for p in found:
            _inside(p, specs_dir)
        return found
    out = []
    families = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(specs_dir, "*.yaml"))
                      if not os.path.basename(p).startswith("_"))
    for s in specs:
        if os.path.exists(s):
            out.append(s)
        elif os.path.exists(os.path.join(specs_dir, f"{s}.yaml")):
            out.append(_inside(os.path.join(specs_dir, f"{s}.yaml"), specs_dir))
        elif os.sep in s or s.endswith((".yaml", ".yml")):
            raise DefcError("spec file not found", Location(display_path(s)), field="SPEC")
        else:
            raise DefcError(f"no spec '{s}' (a path, or one of: {', '.join(families)})", field="SPEC")
    return out


def _inside(path: str, root: str) -> str:
    """A spec found in the specs folder must be inside it: a symlink leading out is refused (a
    path the user names is taken as named)."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, top]) != top:
        raise DefcError(f"spec is a symlink to {real}, outside the specs folder; refused", Location(display_path(path)))
    return path


def load_specs(paths: Sequence[str]) -> List[Spec]:
    return [load_spec(p) for p in paths]


def servings_for(model: ModelInfo, opts: CompileOptions, facts) -> Tuple[List[Serving], List[str]]:
    cookbook_dir = opts.cookbook
    if cookbook_dir is None and os.path.isdir(DEFAULT_COOKBOOK):
        cookbook_dir = DEFAULT_COOKBOOK
    rows = rows_for(model.cookbook_model_paths, cookbook_dir)
    cook = default_servings(rows, lambda w: quant_key(facts, w))
    explicit_q = None
    if opts.quantization and "all" not in opts.quantization and len(opts.quantization) == 1:
        explicit_q = opts.quantization[0]
    if opts.tp or opts.ep or opts.dp:
        return explicit_servings(opts.tp, opts.ep, opts.dp, cook, explicit_q)
    if cook:
        src = "cookbook " + (cookbook_dir if cookbook_dir else "snapshot")
        return cook, [f"{len(cook)} serving config(s) from the {src}"]
    return [Serving(1, 1, 1, False, explicit_q, ("default tp=1",))], ["no cookbook entry: TP=1"]


def _same_definition(a: Instance, b: Instance) -> bool:
    """Two instances render the same definition (tags aside).  Reference parameters are compared
    as JSON, where 1, 1.0 and true differ as they do in the rendered source."""
    return (a.op_type, a.axes, a.inputs, a.outputs, a.constraints, a.reference_template, a.template) == \
        (b.op_type, b.axes, b.inputs, b.outputs, b.constraints, b.reference_template, b.template) and \
        (a.params == b.params and json.dumps(a.params, sort_keys=True, default=str)
         == json.dumps(b.params, sort_keys=True, default=str))


def evaluate_model(opts: CompileOptions, model: ModelInfo, facts, specs: List[Spec],
                   servings: List[Serving]) -> Tuple[Dict[str, List[Instance]], List[Finding]]:
    """Every definition instance of the model at every serving config, grouped by name (a name
    that two different definitions produce is an error), and the model's findings (see
    diagnose): the instances a finding reaches are marked ``unverified``.  A family that needs a
    config field the model lacks is a gap; the other families are still evaluated."""
    probe = model_env(model.config, Serving().symbols(), facts, model.slug, model.origin)
    default_quant = quant_key(facts, probe.get("quant_method"))
    qsel = None
    if opts.quantization:
        qsel = ["all"] if "all" in opts.quantization else [quant_key(facts, q) for q in opts.quantization]
    ev = Evaluator(model.slug, qsel, config_names(facts))
    by_name: Dict[str, List[Instance]] = {}
    envs = []
    for s in servings:
        env = model_env(model.config, s.symbols(), facts, model.slug, model.origin)
        envs.append(env)
        for spec in specs:
            try:
                insts = ev.run(spec, env, s, default_quant)
            except MissingField as e:
                at = e.location
                ev.gaps.append(Gap(spec.family, None, s.label(),
                                   f"needs config field '{e.config_field}', which {model.slug} does not have",
                                   f"{at.file}:{at.line}" if at else spec.path))
                continue
            for inst in insts:
                if opts.op_types and inst.op_type not in opts.op_types:
                    continue
                same = by_name.get(inst.name)
                if same is not None:
                    first = same[0]
                    if not _same_definition(first, inst):
                        raise DefcError(
                            f"two different definitions are named '{inst.name}' (from {first.spec.path} "
                            f"'{first.def_id}' at {first.serving.label()} and '{inst.def_id}' at {s.label()}); "
                            f"make the name pattern tell them apart",
                            inst.spec.where(("definitions", inst.def_index, "name")), "name")
                    same.append(inst)
                else:
                    by_name[inst.name] = [inst]
    found = findings(model.config, facts, specs, envs, by_name, ev.gaps)
    for name in unverified(found):
        for inst in by_name[name]:
            if inst.status == "verified":
                inst.status = "unverified"
    return by_name, found


def op_types_of(spec: Spec) -> List[str]:
    """The op_types a spec's definitions declare (each definition's own, else the spec's)."""
    top = spec.data.get("op_type") or spec.family
    return sorted({str(d.get("op_type") or top) for d in spec.definitions if isinstance(d, dict)} or {str(top)})


@dataclass
class SpecUse:
    """What one spec gives a model (see :func:`spec_uses`)."""
    path: str
    family: str
    op_types: List[str]                 # what its definitions declare
    definitions: int                    # instances it yields over the serving configs (before --op-types)
    requires: Optional[str] = None      # its `requires` formula, when that holds at none of the serving configs
    gaps: int = 0                       # gaps it reported (a missing config field, a declared gap)


def spec_uses(opts: CompileOptions) -> List[SpecUse]:
    """For each spec of ``opts`` and its model: how many definitions it yields, and when none
    because its ``requires`` holds at no serving config, that formula.  Evaluates again (nothing
    is cached or rendered): meant for explaining a compile that selected nothing."""
    model = resolve_model(opts.model, opts.config, opts.hf_repo_id)
    facts = load_facts(opts.specs_dir)
    servings, _ = servings_for(model, opts, facts)
    default_quant = quant_key(facts, model_env(model.config, Serving().symbols(), facts, model.slug,
                                               model.origin).get("quant_method"))
    qsel = None
    if opts.quantization:
        qsel = ["all"] if "all" in opts.quantization else [quant_key(facts, q) for q in opts.quantization]
    envs = [model_env(model.config, s.symbols(), facts, model.slug, model.origin) for s in servings]
    out = []
    for spec in load_specs(spec_paths(opts.specs, opts.specs_dir)):
        ev = Evaluator(model.slug, qsel, config_names(facts))
        held, n, missing = False, 0, 0
        for s, env in zip(servings, envs):
            if not ev.requires(spec, env, s, default_quant):
                continue
            held = True
            try:
                n += len(ev.run(spec, env, s, default_quant))
            except MissingField:
                missing += 1
        out.append(SpecUse(spec.path, spec.family, op_types_of(spec), n,
                           None if held else str(spec.data.get("requires")), missing + len(ev.gaps)))
    return out


class LazyInstances(Mapping):
    """A model's instances, evaluated when first asked for (a compile whose definitions came from
    the result cache did not need them)."""

    def __init__(self, evaluate):
        self._evaluate = evaluate
        self._data: Optional[Dict[str, List[Instance]]] = None

    def _get(self) -> Dict[str, List[Instance]]:
        if self._data is None:
            self._data = self._evaluate()
        return self._data

    def __getitem__(self, name):
        return self._get()[name]

    def __iter__(self):
        return iter(self._get())

    def __len__(self):
        return len(self._get())


@dataclass
class ModelDefinitions:
    """One model's rendered definitions, before they are placed in a dataset."""

    model: ModelInfo
    servings: List[Serving]
    notes: List[str]
    docs: List[Tuple[Dict[str, Any], List[str]]]     # (definition, serving configs it comes from)
    instances: Mapping                               # name -> [Instance], evaluated when first asked for
    texts: List[str]                                 # each definition as its file (write.dumps)
    findings: List[Finding]                          # what could not be modelled (see diagnose)


class CompileRun:
    """What the models of one compile share: the specs (loaded once), a Renderer per template
    folder list (templates loaded once) and the digests of the shared inputs for the result
    cache (worked out once)."""

    def __init__(self):
        self._renderers: Dict[Tuple[str, ...], Renderer] = {}
        self._specs: Dict[Tuple[str, ...], List[Spec]] = {}
        self._parts: Dict[Tuple, Dict[str, str]] = {}
        self.to_store: List[Tuple[Tuple, ModelInfo, Dict[str, str], ModelDefinitions]] = []

    def specs(self, paths: Sequence[str]) -> List[Spec]:
        key = tuple(paths)
        if key not in self._specs:
            self._specs[key] = load_specs(paths)
        return self._specs[key]

    def renderer(self, dirs: Tuple[str, ...]) -> Renderer:
        if dirs not in self._renderers:
            self._renderers[dirs] = Renderer(dirs)
        return self._renderers[dirs]

    def shared_parts(self, what: Tuple) -> Dict[str, str]:
        if what not in self._parts:
            self._parts[what] = cache.shared_parts(*what)
        return self._parts[what]

    def store_results(self) -> None:
        """Put the models made in this run into the result cache, unless a spec, template or
        defc itself changed while they were made (then their keys would not match them)."""
        for what in {w for w, _, _, _ in self.to_store}:
            if cache.shared_parts(*what) != self._parts[what]:
                return
        for _, model, parts, md in self.to_store:
            cache.put_result(model, parts, md.docs, md.texts, [f.to_json() for f in md.findings])
        self.to_store.clear()


def model_definitions(opts: CompileOptions, run: CompileRun) -> ModelDefinitions:
    """Evaluate and render one model: each definition once, with the tags of every serving config
    that produces it.  Definitions made before from the same inputs come from the result cache."""
    model = resolve_model(opts.model, opts.config, opts.hf_repo_id)
    facts = load_facts(opts.specs_dir)
    paths = spec_paths(opts.specs, opts.specs_dir)
    servings, notes = servings_for(model, opts, facts)
    dirs = template_dirs(list(opts.template_dirs))

    def evaluate():
        return evaluate_model(opts, model, facts, run.specs(paths), servings)

    parts = None
    if cache.results_enabled():
        what = (dirs, tuple(paths), os.path.join(os.path.abspath(opts.specs_dir), MODEL_FACTS))
        parts = {**run.shared_parts(what),
                 **cache.model_parts(model, servings, {"quantization": opts.quantization, "op_types": opts.op_types})}
        hit = cache.get_result(model, parts)
        if hit is not None:
            return ModelDefinitions(model, servings, notes, hit[0], LazyInstances(lambda: evaluate()[0]), hit[1],
                                    [Finding.from_json(f) for f in hit[2]])
    by_name, found = evaluate()
    docs = []
    renderer = run.renderer(dirs)
    for name, insts in by_name.items():
        doc = renderer.render(insts[0], [model.slug])
        for other in insts[1:]:
            for t in other.tags:
                if t not in doc["tags"]:
                    doc["tags"].append(t)
        _check_file_names(doc, insts[0])
        docs.append((doc, sorted({i.serving.label() for i in insts})))
    md = ModelDefinitions(model, servings, notes, docs, by_name, [dumps(doc) for doc, _ in docs], found)
    if parts is not None:
        run.to_store.append((what, model, parts, md))
    return md


def _result(md: ModelDefinitions, planned: List[Planned]) -> CompileResult:
    planned.sort(key=lambda p: (p.doc.get("op_type", ""), p.doc.get("name", "")))
    return CompileResult(md.model, md.servings, planned, md.notes, md.instances, md.findings)


def compile_model(opts: CompileOptions) -> CompileResult:
    """Compile the model of opts (a catalogue slug, a config path or repo id, or opts.config /
    opts.hf_repo_id): :func:`compile_models` for one model."""
    return compile_models([opts.model], opts)[0]


def compile_models(models: Sequence[Optional[str]], opts: CompileOptions) -> List[CompileResult]:
    """Compile several models into one dataset, as compiling them one after another would (the
    same files, statuses and tag merges), but with every model evaluated before anything is
    written, and each file written once: a later model's definitions are planned against what the
    earlier ones would have left (``plan(..., current=...)``), not against the disk.  Write the
    results with :func:`write_planned_many`."""
    current: Dict[str, Planned] = {}
    listing = Listing()
    results = []
    run = CompileRun()
    mds = [model_definitions(replace(opts, model=slug), run) for slug in models]
    run.store_results()
    for md in mds:
        planned = []
        for (doc, sources), text in zip(md.docs, md.texts):
            p = plan(opts.out, doc, force=opts.force, skip_existing=opts.skip_existing, current=current,
                     listing=listing)
            p.sources = sources
            if p.status == "new" and p.doc is doc:
                p.text = text            # a new file is written as the text made when it was rendered
            if p.status in WRITES:
                current[p.path] = p
            planned.append(p)
        results.append(_result(md, planned))
    return results


def _check_file_names(doc: Dict[str, Any], inst: Instance) -> None:
    """op_type and name become path components: refuse anything that could leave OUT/definitions,
    pointing at the spec field (or the template) that produced it."""
    for key, what in (("op_type", "op_type"), ("name", "definition name")):
        try:
            check_component(doc.get(key), what)
        except DefcError as e:
            path = ("definitions", inst.def_index, key)
            how = f" (rendered by template {inst.template})" if doc.get(key) != getattr(inst, key) else ""
            raise DefcError(e.message + how, inst.spec.where(path), field_name(path)) from None


def write_planned(result: CompileResult) -> None:
    """Write the plan: folders first (so a file in the way fails before any write), then each file
    atomically.  Temp files that a killed earlier run left in the dataset are removed first."""
    write_planned_many([result])


def write_planned_many(results: Sequence[CompileResult], opts: Optional[CompileOptions] = None) -> None:
    """Write the plans of :func:`compile_models` (or of one model): each file once, with its last
    planned content.  Under the dataset's lock (another compile into the same folder waits its
    turn) every file is planned again against the folder as it is now, so what another process
    wrote since the compile planned is merged with or reported as a collision — the results'
    ``planned`` lists are updated to say what was done.  Temp files that a killed earlier run left
    in the dataset are removed first.  Given the compile's options, the dataset's
    ``manifest.json`` records these models (see manifest), under the same lock, when the compile
    writes a file, or finds a manifest and no collision (a compile that only reports collisions
    leaves the dataset as it is)."""
    writes = any(p.status in WRITES for r in results for p in r.planned)
    roots = sorted({os.path.dirname(os.path.dirname(os.path.dirname(p.path))) for r in results for p in r.planned})
    # the manifest records a compile that writes a file, and is kept up to date by one that finds
    # every file as it would write it (decided under the lock: another compile may be writing)
    record = opts is not None and len(roots) == 1 and (writes or os.path.isdir(roots[0]))
    with ExitStack() as stack:
        if writes or record:
            timeout = lock_timeout()          # a bad DEFC_LOCK_TIMEOUT is reported before anything is made
            for folder in sorted({os.path.dirname(p.path) for r in results for p in r.planned if p.status in WRITES}):
                check_folder(folder)          # a file in the way is reported where it is, before any write
            for root in roots:                # one dataset in practice; sorted, so never a deadlock
                stack.enter_context(DatasetLock(root, timeout))
        if writes:
            for r, again in zip(results, replan([r.planned for r in results])):
                r.planned[:] = again
        if record:
            planned = [p for r in results for p in r.planned]
            record = any(p.status in WRITES for p in planned) or (
                not any(p.status == "collision" for p in planned)
                and os.path.lexists(os.path.join(roots[0], manifest.MANIFEST)))
        old = manifest.read(os.path.join(roots[0], manifest.MANIFEST)) if record else None   # before any write
        for root in roots:
            base = os.path.join(root, "definitions")
            for folder in [base] + sorted(glob.glob(os.path.join(glob.escape(base), "*", ""))):
                clean_stale_temps(folder)
        if writes:
            apply_many(final_writes([p for r in results for p in r.planned]))
        if record:
            _write_manifest(roots[0], old, _manifest_inputs(opts), results, opts)


def _manifest_inputs(opts: CompileOptions) -> Dict[str, Any]:
    """The shared inputs of a compile as the manifest records them (specs, templates, cookbook)."""
    paths = spec_paths(opts.specs, opts.specs_dir) + [os.path.join(opts.specs_dir, MODEL_FACTS)]
    cookbook = opts.cookbook
    if cookbook is None and os.path.isdir(DEFAULT_COOKBOOK):
        cookbook = DEFAULT_COOKBOOK
    return manifest.inputs_record(paths, template_dirs(list(opts.template_dirs)), cookbook)


def _write_manifest(root: str, old: Dict[str, Any], inputs: Dict[str, Any], results: Sequence[CompileResult],
                    opts: CompileOptions) -> None:
    """Record the compiled models in ``root/manifest.json`` (the dataset lock is held)."""
    options = {"specs": [s if not os.path.exists(s) else os.path.abspath(s) for s in opts.specs],
               "op_types": opts.op_types, "quantization": opts.quantization,
               "tp": opts.tp, "ep": opts.ep, "dp": opts.dp, "force": opts.force,
               "templates": [os.path.abspath(d) for d in opts.template_dirs]}
    key = manifest.inputs_id(inputs)
    doc = manifest.merged(old, inputs, [manifest.model_record(r, root, key, options) for r in results])
    path = os.path.join(root, manifest.MANIFEST)
    if old and manifest.text(old) == manifest.text(doc):
        return                                  # unchanged: left as it is
    try:
        atomic_write_text(path, manifest.text(doc))
    except OSError as e:
        raise DefcError(f"cannot write: {e.strerror or e}", Location(display_path(path))) from None
