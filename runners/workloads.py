"""Flashinfer-bench workloads for a compiled dataset (``defc workloads``, ``defc compile --workloads``;
the baseline solutions beside them are runners/solutions.py).

For every definition under DATASET/definitions and every serving scenario of runners/workloads.yaml
that applies to it, one workload line in DATASET/workloads/{op_type}/{name}.jsonl (a flashinfer-bench
``Trace`` with solution and evaluation null).  Var axes come from the scenario: through the spec's
``verify.sequences`` layout (indptr / indices / last-page lengths / page tables consistent with each
other, at the scenario's batch and lengths and the definition's page size) or through the family's
``vars`` formulas.  Inputs are built by the spec's verify builders, or the family's ``inputs`` where
a workload wants serving values (sampling thresholds).  Integer and bool tensors (index structures,
top-k ids, positions) and float tensors whose values matter (distributions, thresholds, positive
scales, rotation tables: any builder but ``normal``/``bytes``) are stored as safetensors under
blob/workloads/…; scalars as scalars (sm_scale = 1/sqrt(head_dim), …); other float tensors as
``random``.  A definition that cannot be given valid inputs
is skipped with a named reason, never written.  Seeded: the same inputs give the same uuids and bytes.

torch and safetensors are imported here only (never on the compile path)."""
from __future__ import annotations

import json
import os
import random
import uuid as _uuid
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from defc.compiler.errors import DefcError
from defc.compiler.load import load_safe_yaml

from .verify_inputs import (RecipeError, build_tensor, builder_kind, constraint_problem, default_tensor, int_value,
                            sequence_layout, torch_dtype, truth)

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workloads.yaml")
UUID_NS = _uuid.UUID("6f1c3a52-5d0e-4c1b-9d7e-2a9e0b7c4d11")
# float inputs built with these are left to flashinfer-bench's `random` (a normal distribution, which is
# what they make); every other builder makes values that matter (distributions, thresholds, positive
# scales, rotation tables, …), stored
RANDOM_FLOAT_BUILDERS = ("normal", "bytes")


class Skip(Exception):
    """This (definition, scenario) gets no workload; the message says why."""


class NotApplicable(Skip):
    """The scenario is not this kind of step (a prefill point for a decode kernel, …)."""


def config() -> Dict[str, Any]:
    data = load_safe_yaml(DATA, "workload scenarios")
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), dict):
        raise DefcError("runners/workloads.yaml must be a mapping with 'scenarios'")
    return data


def scenarios(cfg: Dict[str, Any], sets: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    names = list(sets or cfg.get("default_sets") or list(cfg["scenarios"]))
    out = []
    for s in names:
        if s not in cfg["scenarios"]:
            raise DefcError(f"no scenario set '{s}' (runners/workloads.yaml has: {', '.join(cfg['scenarios'])})",
                            field="--scenarios")
        for sc in cfg["scenarios"][s]:
            sc = dict(sc)
            sc["set"] = s
            sc["tokens"] = sc["batch"] * sc["qo_len"]
            sc["kv_tokens"] = sc["batch"] * sc["kv_len"]
            out.append(sc)
    return out


def _seed(*parts) -> int:
    return zlib.crc32("\0".join(str(p) for p in parts).encode())


def workload_uuid(defn_name: str, scenario: str, seed: int) -> str:
    return str(_uuid.uuid5(UUID_NS, f"{defn_name}/{scenario}/{seed}"))


@dataclass
class Built:
    axes: Dict[str, int]                         # var axes
    inputs: Dict[str, Dict[str, Any]]            # flashinfer-bench input specs
    tensors: Dict[str, Any]                      # stored tensors (name -> CPU tensor)


def build_workload(defn: Dict[str, Any], inst, sc: Dict[str, Any], cfg: Dict[str, Any], seed: int) -> Built:
    """Var axes and input specs of one definition at one scenario (raises Skip)."""
    import torch
    from defc.authoring.validate import Unsolvable, choose_axes
    name = defn["name"]
    s = _seed(seed, name, sc["name"])
    rng = random.Random(s)
    gen = torch.Generator().manual_seed(s)
    axes = defn.get("axes") or {}
    inputs = defn.get("inputs") or {}
    var = [k for k, a in axes.items() if a.get("type") == "var"]
    vb = (getattr(inst, "verify", None) or {}) if inst is not None else {}
    env: Dict[str, Any] = dict(inst.env) if inst is not None else {}
    values: Dict[str, int] = {k: int(a["value"]) for k, a in axes.items() if a.get("type") == "const"}
    env.update(values)
    env.update({k: sc[k] for k in ("batch", "qo_len", "kv_len", "tokens", "kv_tokens")})
    fam = (cfg.get("families") or {}).get(defn.get("op_type"), {}) or {}
    arrays: Dict[str, Any] = {}
    preset: Dict[str, int] = {}
    given: Dict[str, List[int]] = {}

    def bind(axis, n, why):
        if axis in values and values[axis] != n:
            raise Skip(f"axis '{axis}' would be {values[axis]} and {n} ({why})")
        if n <= 0:
            raise Skip(f"axis '{axis}' would be {n} ({why})")
        if axis in var:
            preset[axis] = n
        values[axis] = n
        env[axis] = n

    seq = vb.get("sequences") if isinstance(vb, dict) else None
    if seq is None:
        seq = fam.get("sequences")
    specs: Dict[str, Dict[str, Any]] = {}
    if seq is not None:
        q = seq.get("qo_len", 1)
        decode = q == 1 or q == [1, 1]
        if decode and sc["qo_len"] != 1:
            raise NotApplicable(f"a decode definition (one query token per sequence); scenario {sc['name']} has qo_len {sc['qo_len']}")
        if not decode and sc["qo_len"] == 1 and sc["set"] != "smoke" and not fam.get("every_step"):
            raise NotApplicable(f"a prefill definition; scenario {sc['name']} is a decode step")
        lay = dict(seq)
        lay.update({"count": sc["batch"], "qo_len": sc["qo_len"], "kv_len": sc["kv_len"]})
        try:
            arrays, scal = sequence_layout(lay, env, rng)
        except RecipeError as e:
            raise Skip(f"sequence layout: {e}") from None
        env.update(scal)
        for k, b in (vb.get("inputs") or {}).items():
            if not isinstance(b, dict) or k not in inputs:
                continue
            if "when" in b and not truth(b["when"], env, f"verify.inputs.{k}.when"):
                continue
            specs[k] = b
        specs.update(_family_inputs(fam, defn, inputs, env))
        for k, b in specs.items():
            if "layout" not in b:
                continue
            arr = arrays[b["layout"]]
            shape = inputs[k].get("shape") or []
            dims = [len(arr)] + ([len(arr[0])] if arr and isinstance(arr[0], list) else [])
            if len(dims) != len(shape):
                raise Skip(f"layout array '{b['layout']}' does not fit input '{k}'")
            for a, n in zip(shape, dims):
                bind(a, n, f"layout '{b['layout']}'")
            if len(shape) == 1:
                given[k] = list(arr)
        fvars = {k: f for k, f in (fam.get("vars") or {}).items() if k in var}     # serving values first
        for k, f in fvars.items():
            bind(k, int_value(f, env, f"families.{defn.get('op_type')}.vars.{k}"), "scenario")
        for k, f in (vb.get("vars") or {}).items():
            if k in axes and k not in fvars:
                bind(k, int_value(f, env, f"verify.vars.{k}"), "verify.vars")
    elif fam:
        if fam.get("decode_only") and sc["qo_len"] != 1:
            raise NotApplicable(f"{defn.get('op_type')} runs once per decoded sequence; scenario {sc['name']} is not a decode step")
        for k, f in (fam.get("vars") or {}).items():
            if k in axes and k in var:
                bind(k, int_value(f, env, f"families.{defn.get('op_type')}.vars.{k}"), "scenario")
        missing = [k for k in var if k not in values and k not in (fam.get("solved") or [])]
        if missing:
            raise Skip(f"var axis '{missing[0]}' has no scenario value (runners/workloads.yaml families.{defn.get('op_type')})")
        for k, b in ((vb.get("inputs") or {}) if isinstance(vb, dict) else {}).items():
            if isinstance(b, dict) and k in inputs and ("when" not in b or truth(b["when"], env, k)):
                specs[k] = b
        specs.update(_family_inputs(fam, defn, inputs, env))
    else:
        raise Skip(f"no sequence layout in the spec's verify block and no scenario mapping for op_type "
                   f"'{defn.get('op_type')}' (runners/workloads.yaml families)")
    try:
        vals, indptrs = choose_axes(dict(defn), rng, preset=preset, given=given)
    except Unsolvable as e:
        raise Skip(f"cannot size the axes: {e}") from None
    for k, v in vals.items():
        values.setdefault(k, v)
        env.setdefault(k, v)
    bad = [k for k in var if values.get(k, 0) <= 0]
    if bad:
        raise Skip(f"var axis '{bad[0]}' would be {values.get(bad[0])}")
    var_min = min([values[k] for k in var] or [2])
    limit = int(cfg.get("blob_limit_bytes", 1 << 28))
    out_inputs: Dict[str, Dict[str, Any]] = {}
    tensors: Dict[str, Any] = {}
    scope: Dict[str, Any] = dict(values)
    for k, t in inputs.items():
        shape = t.get("shape")
        dims = None if shape is None else tuple(values[a] for a in shape)
        dt = t["dtype"]
        b = specs.get(k)
        if dims is None:
            v = (build_tensor(b, None, dt, env, arrays, gen, k) if b is not None
                 else default_tensor(None, dt, var_min, gen))
            if hasattr(v, "item"):
                v = v.item()
            out_inputs[k] = {"type": "scalar", "value": v}
            scope[k] = v
            continue
        tdt = torch_dtype(dt)
        integral = not tdt.is_floating_point
        # tied values (a broadcast parameter) matter too: random would vary along the tied dims
        store = integral or (b is not None and (builder_kind(b, k) not in RANDOM_FLOAT_BUILDERS or "scale" in k
                                                 or bool(b.get("tie"))))
        if not store:
            out_inputs[k] = {"type": "random"}
            scope[k] = torch.empty(dims, dtype=tdt, device="meta")
            continue
        nbytes = 1
        for n in dims:
            nbytes *= n
        nbytes *= torch.empty((), dtype=tdt).element_size()
        if nbytes > limit:
            why = "an integer tensor" if integral else f"its values matter (builder '{builder_kind(b, k)}')"
            raise Skip(f"input '{k}' would be a {nbytes:,}-byte blob (limit {limit:,}: blob_limit_bytes); "
                       f"{why}, so flashinfer-bench's random cannot stand in")
        if b is not None:
            x = build_tensor(b, dims, dt, env, arrays, gen, k)
        elif k in indptrs:
            x = torch.tensor(indptrs[k], dtype=tdt)
        else:
            x = default_tensor(dims, dt, var_min, gen)
        x = x.contiguous().clone()
        tensors[k] = x
        out_inputs[k] = {"type": "safetensors"}
        scope[k] = x
    problem = constraint_problem(defn, scope)
    if problem:
        raise Skip(problem)
    return Built({k: values[k] for k in var}, out_inputs, tensors)


def _family_inputs(fam, defn, inputs, env) -> Dict[str, Dict[str, Any]]:
    """The family's input builders (serving values, replacing verify's) that apply to this definition."""
    out = {}
    for k, b in (fam.get("inputs") or {}).items():
        if not isinstance(b, dict):
            raise DefcError(f"runners/workloads.yaml: families.{defn.get('op_type')}.inputs.{k}: a builder is a "
                            f"mapping (e.g. {{uniform: [0, 1]}})")
        if k in inputs and ("when" not in b or truth(b["when"], env, k)):
            out[k] = b
    return out


# ---------------------------------------------------------------------------------------------
# a dataset

@dataclass
class Report:
    written: List[Tuple[str, str, str]] = field(default_factory=list)      # (definition, scenario, uuid)
    skipped: List[Tuple[str, str, str]] = field(default_factory=list)      # (definition, scenario, why)
    not_applicable: List[Tuple[str, str, str]] = field(default_factory=list)
    collisions: List[str] = field(default_factory=list)                    # paths left as they were


def read_definitions(dataset: str) -> List[Tuple[str, Dict[str, Any]]]:
    root = os.path.join(dataset, "definitions")
    if not os.path.isdir(root):
        raise DefcError(f"{dataset}: no definitions/ folder (run defc compile --out {dataset} first)")
    out = []
    for op in sorted(os.listdir(root)):
        d = os.path.join(root, op)
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            if f.endswith(".json"):
                with open(os.path.join(d, f), encoding="utf-8") as fh:
                    out.append((op, json.load(fh)))
    return out


def instances_for(model: str, tp=None, ep=None, quantization=None, dp=None) -> Dict[str, Any]:
    """name -> the compile instance (its env and verify block) for the model's definitions."""
    from defc.compiler.predictions import compile_predictions
    r = compile_predictions(model, tp, ep, quantization, (), dp=dp)
    return {p.doc["name"]: r.instances[p.doc["name"]][0] for p in r.planned}


def merged_lines(path: str, lines: List[Dict[str, Any]], force: bool) -> Tuple[Optional[str], bool]:
    """(text, lost): a workload file's text with these lines added to those it has (by uuid: a
    user's or another scenario set's workloads stay), or None when it holds a different workload
    under one of these uuids or is not a workload file; with force these lines win instead, and
    ``lost`` says old content was dropped (the caller keeps a backup)."""
    lost = False
    try:
        with open(path, encoding="utf-8") as fh:
            old = [json.loads(x) for x in fh.read().splitlines() if x.strip()]
        if not all(isinstance(x, dict) and isinstance(x.get("workload"), dict) for x in old):
            raise ValueError("not workload lines")
    except FileNotFoundError:
        old = []
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        if not force:
            return None, False
        old, lost = [], True
    index = {x["workload"].get("uuid"): i for i, x in enumerate(old)}
    for ln in lines:
        i = index.get(ln["workload"]["uuid"])
        if i is None:
            index[ln["workload"]["uuid"]] = len(old)
            old.append(ln)
        elif old[i] != ln:
            if not force:
                return None, False
            old[i], lost = ln, True
    return "".join(json.dumps(x) + "\n" for x in old), lost


def write_workloads(dataset: str, instances: Dict[str, Any], sets: Optional[Sequence[str]] = None,
                    seed: Optional[int] = None, names: Optional[Sequence[str]] = None, force: bool = False) -> Report:
    """Write the workloads (call under the dataset lock): new blobs and lines are added, what is
    there already and equal is left, a different file or line under defc's name is a collision
    (left as it is, reported) unless force (the old file kept as .bak)."""
    from safetensors.torch import save as st_bytes
    from defc.compiler.write import write_side_file, write_superset
    cfg = config()
    seed = int(cfg.get("seed", 0) if seed is None else seed)
    scs = scenarios(cfg, sets)
    rep = Report()
    for op, defn in read_definitions(dataset):
        name = defn["name"]
        if names and name not in names:
            continue
        inst = instances.get(name)
        lines = []
        if inst is None:
            for sc in scs:
                rep.skipped.append((name, sc["name"], "the model's compile does not emit this definition "
                                                      "(another model's or a staged trace): no spec instance"))
        else:
            for sc in scs:
                try:
                    b = build_workload(defn, inst, sc, cfg, seed)
                except NotApplicable as e:
                    rep.not_applicable.append((name, sc["name"], str(e)))
                    continue
                except Skip as e:
                    rep.skipped.append((name, sc["name"], str(e)))
                    continue
                except RecipeError as e:
                    rep.skipped.append((name, sc["name"], f"verify block: {e}"))
                    continue
                uid = workload_uuid(name, sc["name"], seed)
                if b.tensors:
                    rel = f"blob/workloads/{op}/{name}/{uid}.safetensors"
                    # no metadata: its order in the header is not stable
                    if write_side_file(os.path.join(dataset, rel), st_bytes(b.tensors), force) == "collision":
                        rep.collisions.append(rel)
                        continue
                    for k in b.tensors:
                        b.inputs[k] = {"type": "safetensors", "path": rel, "tensor_key": k}
                lines.append({"definition": name,
                              "workload": {"uuid": uid, "axes": b.axes, "inputs": b.inputs},
                              "solution": None, "evaluation": None})
                rep.written.append((name, sc["name"], uid))
        if lines:
            rel = os.path.join("workloads", op, f"{name}.jsonl")
            path = os.path.join(dataset, rel)
            text, lost = merged_lines(path, lines, force)
            if text is None:
                rep.collisions.append(rel)
            elif lost:                   # --force over a different file or line: the old file kept as .bak
                write_side_file(path, text.encode("utf-8"), force=True)
            else:                        # what was there is all still in it: no backup needed
                write_superset(path, text.encode("utf-8"))
    return rep
