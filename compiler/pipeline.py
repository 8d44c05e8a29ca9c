"""The compile pipeline: load → check → evaluate → render → write, for one model.

``compile_model(options)`` returns a :class:`CompileResult` with every planned file; nothing is
written until every definition of the run has been evaluated, rendered and placed, so bad
input stops the run before the dataset is touched.  ``write_planned`` then applies the plan.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .check import Spec, field_name, load_spec
from .errors import DefcError, Location
from .load import display_path
from .evaluate import Evaluator, Instance
from .facts import load_facts, model_env, quant_key
from .models import ModelInfo, resolve_model
from .paths import DEFAULT_COOKBOOK, DEFAULT_OUT, SPECS_DIR
from .render import render, template_dirs
from .serving import Serving, default_servings, explicit_servings, rows_for
from .write import Planned, apply_many, check_component, clean_stale_temps, plan


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

    def count(self, status: str) -> int:
        return sum(1 for p in self.planned if p.status == status)


def spec_paths(specs: Sequence[str], specs_dir: str = SPECS_DIR) -> List[str]:
    """Spec files from paths or bare family names; all of specs_dir when none are given."""
    if not specs:
        found = sorted(p for p in glob.glob(os.path.join(specs_dir, "*.yaml"))
                       if not os.path.basename(p).startswith("_"))
        if not found:
            raise DefcError("no spec files (*.yaml) in this folder", Location(display_path(specs_dir)))
        return found
    out = []
    families = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(specs_dir, "*.yaml"))
                      if not os.path.basename(p).startswith("_"))
    for s in specs:
        if os.path.exists(s):
            out.append(s)
        elif os.path.exists(os.path.join(specs_dir, f"{s}.yaml")):
            out.append(os.path.join(specs_dir, f"{s}.yaml"))
        elif os.sep in s or s.endswith((".yaml", ".yml")):
            raise DefcError("spec file not found", Location(display_path(s)), field="SPEC")
        else:
            raise DefcError(f"no spec '{s}' (a path, or one of: {', '.join(families)})", field="SPEC")
    return out


def load_specs(paths: Sequence[str]) -> List[Spec]:
    return [load_spec(p) for p in paths]


def servings_for(model: ModelInfo, opts: CompileOptions, facts) -> (List[Serving], List[str]):
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


def _prerender_key(inst: Instance) -> str:
    return json.dumps([inst.op_type, inst.axes, inst.inputs, inst.outputs, inst.constraints,
                       inst.reference_template, inst.params, inst.template], sort_keys=True, default=str)


def compile_model(opts: CompileOptions) -> CompileResult:
    model = resolve_model(opts.model, opts.config, opts.hf_repo_id)
    facts = load_facts(opts.specs_dir)
    specs = load_specs(spec_paths(opts.specs, opts.specs_dir))
    servings, notes = servings_for(model, opts, facts)
    probe = model_env(model.config, Serving().symbols(), facts, model.slug, model.origin)
    default_quant = quant_key(facts, probe.get("quant_method"))
    qsel = None
    if opts.quantization:
        qsel = ["all"] if "all" in opts.quantization else [quant_key(facts, q) for q in opts.quantization]
    ev = Evaluator(model.slug, qsel)
    by_name: Dict[str, List[Instance]] = {}
    keys: Dict[str, str] = {}
    for s in servings:
        env = model_env(model.config, s.symbols(), facts, model.slug, model.origin)
        for spec in specs:
            for inst in ev.run(spec, env, s, default_quant):
                if opts.op_types and inst.op_type not in opts.op_types:
                    continue
                k = _prerender_key(inst)
                if inst.name in by_name and keys[inst.name] != k:
                    first = by_name[inst.name][0]
                    raise DefcError(
                        f"two different definitions are named '{inst.name}' (from {first.spec.path} "
                        f"'{first.def_id}' at {first.serving.label()} and '{inst.def_id}' at {s.label()}); "
                        f"make the name pattern tell them apart",
                        inst.spec.where(("definitions", inst.def_index, "name")), "name")
                keys[inst.name] = k
                by_name.setdefault(inst.name, []).append(inst)
    dirs = template_dirs(list(opts.template_dirs))
    planned: List[Planned] = []
    for name, insts in by_name.items():
        doc = render(insts[0], [model.slug], dirs)
        for other in insts[1:]:
            for t in other.tags:
                if t not in doc["tags"]:
                    doc["tags"].append(t)
        _check_file_names(doc, insts[0])
        p = plan(opts.out, doc, force=opts.force, skip_existing=opts.skip_existing)
        p.sources = sorted({i.serving.label() for i in insts})
        planned.append(p)
    planned.sort(key=lambda p: (p.doc.get("op_type", ""), p.doc.get("name", "")))
    return CompileResult(model, servings, planned, notes, by_name)


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
    roots = sorted({os.path.dirname(os.path.dirname(p.path)) for p in result.planned})
    for root in roots:
        for folder in [root] + sorted(glob.glob(os.path.join(glob.escape(root), "*", ""))):
            clean_stale_temps(folder)
    apply_many(result.planned)
