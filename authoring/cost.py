"""Roofline cost of a model's definitions (``defc cost``).

A definition of a spec may declare ``cost:`` (docs/spec-format.md, "Cost"): ``flops``,
``bytes_read`` and ``bytes_written`` of one call on one GPU (per-rank shapes), and
``calls_per_step`` (calls in one forward step of the model), formulas over the definition's
symbols and const axes, with its var axes (and helper values) bound by ``vars``, in order, from a
scenario's symbols (``authoring/data/cost_scenarios.yaml``: stage, num_seqs, q_len, kv_len,
kv_page_size; num_tokens = num_seqs * q_len).  Layer counts (how many layers of each kind a model
has: ``moe_layers``, ``swa_layers``, ``gdn_layers``, ...) are data too
(``authoring/data/cost_layers.yaml``), derived from the config fields and facts the specs read; a
count the config does not make knowable stays undefined and the definitions whose calls need it
are listed as not costed.  Nothing of it is emitted in the Definition: the model is compiled in
memory and each instance's cost is evaluated here with the formula language.

The roofline time of a call is max(flops / peak FLOP/s, bytes / bandwidth) at one GPU's peaks
(``authoring/data/cost_gpus.yaml``, with sources); a definition's share of the step is its calls
times that time over the sum of all costed definitions'.  ``write_side_files`` puts each costed
definition's formulas and numbers beside a dataset (``DATASET/cost/{op_type}/{name}.json``).
"""
from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from defc.compiler import formula as F
from defc.compiler.errors import DefcError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
GPUS = os.path.join(DATA, "cost_gpus.yaml")
SCENARIOS = os.path.join(DATA, "cost_scenarios.yaml")
LAYERS = os.path.join(DATA, "cost_layers.yaml")
SCENARIO_SYMBOLS = ("stage", "num_seqs", "q_len", "kv_len", "kv_page_size", "num_tokens")
COUNTS = ("flops", "bytes_read", "bytes_written")


def _yaml(path: str) -> Any:
    from ruamel.yaml import YAML
    with open(path, encoding="utf-8") as f:
        return YAML(typ="safe").load(f)


def load_gpus(path: str = GPUS) -> Dict[str, dict]:
    out = {}
    for key, g in (_yaml(path) or {}).items():
        out[key] = {**g, "bf16_flops_per_s": float(g["bf16_flops_per_s"]), "bytes_per_s": float(g["bytes_per_s"])}
    return out


def load_scenarios(path: str = SCENARIOS) -> Dict[str, Dict[str, Any]]:
    """Scenario name -> its symbols (num_tokens derived, the file's kv_page_size as default)."""
    doc = _yaml(path) or {}
    out = {}
    for name, sc in (doc.get("scenarios") or {}).items():
        out[name] = scenario_symbols(sc, doc.get("kv_page_size", 1))
    return out


def scenario_symbols(sc: Dict[str, Any], kv_page_size: int = 1) -> Dict[str, Any]:
    s = {"kv_page_size": kv_page_size, **sc}
    if s.get("stage") not in ("decode", "prefill"):
        raise DefcError(f"scenario stage must be decode or prefill, not {s.get('stage')!r}", field="stage")
    for k in ("num_seqs", "q_len", "kv_len"):
        if not isinstance(s.get(k), int) or s[k] < 1:
            raise DefcError(f"scenario {k} must be a positive integer, not {s.get(k)!r}", field=k)
    s["num_tokens"] = s["num_seqs"] * s["q_len"]
    return s


# --- layer counts -------------------------------------------------------------------------------

def load_layers(path: str = LAYERS) -> List[Tuple[str, list]]:
    """The layer-count table: (name, alternatives) in file order.  An alternative is a formula, or
    a mapping with an optional ``when`` and either ``value`` (a formula) or ``count`` (a formula
    giving a list or string) with ``of`` (a formula): how many items equal it (characters of a
    string)."""
    out = []
    for name, alts in ((_yaml(path) or {}).get("layers") or {}).items():
        alts = alts if isinstance(alts, list) else [alts]
        parsed = []
        for a in alts:
            a = a if isinstance(a, dict) else {"value": a}
            if ("value" in a) == ("count" in a) or ("count" in a) != ("of" in a):
                raise DefcError(f"{os.path.basename(path)}: layers.{name}: an alternative needs value, or count with of",
                                field=f"layers.{name}")
            parsed.append({k: F.parse(v) for k, v in a.items() if k in ("when", "value", "count", "of")})
        out.append((name, parsed))
    return out


_LAYERS: Optional[List[Tuple[str, list]]] = None


def layer_counts(env: Dict[str, Any], table: Optional[List[Tuple[str, list]]] = None) -> Dict[str, int]:
    """Each layer count of the table that the model's symbols make knowable (first alternative
    whose names are defined and whose when holds); the others are left out."""
    global _LAYERS
    if table is None:
        if _LAYERS is None:
            _LAYERS = load_layers()
        table = _LAYERS
    env = dict(env)
    out: Dict[str, int] = {}
    for name, alts in table:
        for a in alts:
            try:
                if "when" in a and not F.truth(a["when"], env):
                    continue
                if "value" in a:
                    v = F.to_python(a["value"].evaluate(env))
                else:
                    seq, item = a["count"].evaluate(env), F.to_python(a["of"].evaluate(env))
                    v = seq.count(item) if isinstance(seq, str) else sum(1 for x in seq if F.to_python(x) == item)
            except F.UndefinedSymbol:
                continue
            except (F.FormulaError, TypeError) as e:
                raise DefcError(f"cost_layers.yaml: layers.{name}: {e}", field=f"layers.{name}") from None
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise DefcError(f"cost_layers.yaml: layers.{name} is {v!r}, not a layer count", field=f"layers.{name}")
            out[name] = env[name] = v
            break
    return out


def layer_names() -> List[str]:
    global _LAYERS
    if _LAYERS is None:
        _LAYERS = load_layers()
    return [n for n, _ in _LAYERS]


# --- one definition at one scenario ----------------------------------------------------------------

@dataclass
class Cost:
    """One definition at one scenario: a call's counts and the calls of one step."""

    name: str
    op_type: str
    labels: List[str]
    flops: int
    bytes_read: int
    bytes_written: int
    calls: int
    inst: Any = field(default=None, repr=False, compare=False)
    env: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def seconds(self, gpu: dict) -> float:
        return max(self.flops / gpu["bf16_flops_per_s"], self.bytes / gpu["bytes_per_s"])


@dataclass
class ScenarioCosts:
    scenario: str
    symbols: Dict[str, Any]
    costs: List[Cost] = field(default_factory=list)
    not_costed: List[str] = field(default_factory=list)      # names without a cost: block, or whose count is unknown
    not_run: List[str] = field(default_factory=list)         # names whose cost: when is false (another variant runs)
    why_not: Dict[str, str] = field(default_factory=dict)    # name -> the unknown layer count, where that is why


class Uncountable(Exception):
    """A cost formula needs a layer count the model's config does not make knowable."""


_PARSED: Dict[Any, F.Formula] = {}


def _parse(text: Any) -> F.Formula:
    f = _PARSED.get(text)
    if f is None:
        f = _PARSED[text] = F.parse(text)
    return f


def _eval(text: Any, env: Dict[str, Any], inst, what: str) -> Any:
    try:
        return F.to_python(_parse(text).evaluate(env))
    except F.UndefinedSymbol as e:
        if e.name in layer_names():
            raise Uncountable(e.name) from None
        raise DefcError(f"cost.{what} of definition '{inst.def_id}' ({inst.name}): {e}", field=f"cost.{what}") from None
    except F.FormulaError as e:
        raise DefcError(f"cost.{what} of definition '{inst.def_id}' ({inst.name}): {e}",
                        field=f"cost.{what}") from None


def _count(v: Any, inst, what: str) -> int:
    """A count must be a non-negative whole number (a fraction is a wrong formula)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "denominator"):
        raise DefcError(f"cost.{what} of '{inst.name}' is {v!r}, not a number", field=f"cost.{what}")
    if hasattr(v, "denominator") and v.denominator != 1 or isinstance(v, float) and not v.is_integer():
        raise DefcError(f"cost.{what} of '{inst.name}' is {v}, not a whole number", field=f"cost.{what}")
    v = int(v)
    if v < 0:
        raise DefcError(f"cost.{what} of '{inst.name}' is negative ({v})", field=f"cost.{what}")
    return v


def _block(inst) -> Optional[dict]:
    return (inst.spec.definitions[inst.def_index] or {}).get("cost") or None


def cost_env(inst, symbols: Dict[str, Any], layers: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    env = dict(inst.env)
    env.update(inst.const_axes)
    env.update(layer_counts(inst.env) if layers is None else layers)
    env.update(symbols)
    return env


def instance_cost(inst, symbols: Dict[str, Any], layers: Optional[Dict[str, int]] = None) -> Optional[Cost]:
    """The cost of one evaluated instance at a scenario; None when its definition has no cost: block
    or the block's when is false for it (the definition does not run at this serving configuration:
    another quantization variant does).  Raises Uncountable when a layer count it needs is unknown."""
    block = _block(inst)
    if not block:
        return None
    env = cost_env(inst, symbols, layers)
    if "when" in block and not _truthy(_eval(block["when"], env, inst, "when")):
        return None
    for axis, text in (block.get("vars") or {}).items():
        env[axis] = _eval(text, env, inst, f"vars.{axis}")
    counts = {k: _count(_eval(block[k], env, inst, k), inst, k) for k in COUNTS}
    calls = _count(_eval(block.get("calls_per_step", 0), env, inst, "calls_per_step"), inst, "calls_per_step")
    return Cost(inst.name, inst.op_type, [str(inst.env.get("label", ""))], calls=calls, inst=inst, env=env, **counts)


def _truthy(v: Any) -> bool:
    return bool(v)


def costs_for(instances, serving, symbols: Dict[str, Any], scenario: str = "") -> ScenarioCosts:
    """Every definition of one serving configuration (a Serving, or its label) at a scenario.  Cases
    that give the same definition (one shape used by two projections) add their calls."""
    out = ScenarioCosts(scenario, symbols)
    layers: Optional[Dict[str, int]] = None
    for name in sorted(instances):
        mine = [i for i in instances[name]
                if (i.serving.label() == serving if isinstance(serving, str) else i.serving == serving)]
        if not mine:
            continue
        if layers is None:
            layers = layer_counts(mine[0].env)
        found: Optional[Cost] = None
        unknown = ""
        blocks = False
        for inst in mine:
            blocks = blocks or _block(inst) is not None
            try:
                c = instance_cost(inst, symbols, layers)
            except Uncountable as e:
                unknown = str(e)
                continue
            if c is None:
                continue
            if found is None:
                found = c
            else:
                found.calls += c.calls
                found.labels += [lb for lb in c.labels if lb not in found.labels]
        if found is None and blocks and not unknown:
            out.not_run.append(name)
        elif found is None:
            out.not_costed.append(name)
            if unknown:
                out.why_not[name] = f"layer count {unknown} unknown"
        else:
            out.costs.append(found)
    return out


def model_costs(model: str, scenarios: Sequence[str], tp: int = 1, all_scenarios: Optional[Dict] = None,
                config=None, ep: Optional[int] = None, quantization: Optional[str] = None,
                dp: Optional[int] = None, with_serving: bool = False):
    """Compile the model in memory at ``tp`` / ``ep`` / ``dp`` / ``quantization`` (nothing is
    written) and cost its first serving configuration at each scenario (``with_serving``: also
    return that configuration's label with its quantization, e.g. ``tp8 ep8 fp8``)."""
    from defc.compiler.predictions import compile_predictions
    all_scenarios = all_scenarios if all_scenarios is not None else load_scenarios()
    for s in scenarios:
        if s not in all_scenarios:
            raise DefcError(f"no scenario '{s}' (one of: {', '.join(all_scenarios)})", field="--scenario")
    result = compile_predictions(model, [tp], [ep] if ep else None, [quantization] if quantization else None, config=config,
                                 dp=[dp] if dp else None)
    serving = result.servings[0]
    out = [costs_for(result.instances, serving, all_scenarios[s], s) for s in scenarios]
    quant = next((i.quantization for insts in result.instances.values() for i in insts if i.serving == serving),
                 serving.quantization or "")
    return (out, f"{serving.label()} {quant}".strip()) if with_serving else out


def rows(sc: ScenarioCosts, gpu: dict) -> List[dict]:
    """One row per costed definition, by time in the step (largest first)."""
    step = sum(c.calls * c.seconds(gpu) for c in sc.costs)
    out = []
    for c in sc.costs:
        t = c.seconds(gpu)
        out.append({"definition": c.name, "op_type": c.op_type, "cases": c.labels, "flops": c.flops,
                    "bytes_read": c.bytes_read, "bytes_written": c.bytes_written,
                    "bound": _bound(c, gpu),
                    "roofline_us": t * 1e6, "calls_per_step": c.calls, "step_us": c.calls * t * 1e6,
                    "share": (c.calls * t / step) if step else 0.0})
    out.sort(key=lambda r: (-r["step_us"], r["definition"]))
    return out


def _bound(c: Cost, gpu: dict) -> str:
    return "compute" if c.flops / gpu["bf16_flops_per_s"] >= c.bytes / gpu["bytes_per_s"] else "memory"


# --- side files: DATASET/cost/{op_type}/{name}.json ------------------------------------------------

def symbolic_text(text: Any, env: Dict[str, Any], keep) -> str:
    """A cost formula with every name except ``keep`` (the var axes and the scenario symbols) put
    in: sub-expressions that read none of ``keep`` are evaluated, and the rest is simplified by
    sympy where it is pure arithmetic.  ``2 * M * N * K`` at N 6144, K 4096 -> ``50331648*M``."""
    keep = set(keep)
    tree = ast.parse(str(text).strip(), mode="eval").body

    def fold(node):
        if isinstance(node, ast.IfExp) and not (_parse(ast.unparse(node.test)).symbols & keep):
            return fold(node.body if F.to_python(_parse(ast.unparse(node.test)).evaluate(env)) else node.orelse)
        if isinstance(node, ast.expr) and not (_parse(ast.unparse(node)).symbols & keep):
            v = F.to_python(_parse(ast.unparse(node)).evaluate(env))
            return ast.Constant(v)
        for name, value in ast.iter_fields(node):
            if isinstance(value, ast.expr) and not (isinstance(node, ast.Call) and name == "func"):
                setattr(node, name, fold(value))
            elif isinstance(value, list):
                setattr(node, name, [fold(v) if isinstance(v, ast.expr) else v for v in value])
        return node

    out = ast.unparse(fold(tree))
    try:
        expr = F.parse(out).expr
    except F.FormulaError:
        expr = None
    if expr is None:
        return out
    text = str(expr)                           # sympy's spellings back to the formula language's
    for a, b in (("ceiling(", "ceil("), ("Max(", "max("), ("Min(", "min(")):
        text = text.replace(a, b)
    return text


def side_doc(model: str, serving_label: str, gpu_key: str, gpu: dict, per_scenario: List[Tuple[str, Cost]]) -> dict:
    """The side file of one definition: its cost formulas over its var axes, the helper vars that
    vary with the scenario and the scenario symbols (everything else put in), and per scenario the
    var values, counts, calls and roofline."""
    first = per_scenario[0][1]
    block = _block(first.inst)
    var_axes = {k for k, v in first.inst.axes.items() if v.get("type") == "var"}
    # vars that vary with the scenario stay names (the axes always); constant helpers are put in
    varying = set(var_axes) | set(SCENARIO_SYMBOLS)
    formulas: Dict[str, Any] = {"vars": {}}
    for name, text in (block.get("vars") or {}).items():
        formulas["vars"][name] = symbolic_text(text, first.env, varying)
        if name in var_axes or _parse(text).symbols & varying:
            varying.add(name)
    for k in COUNTS:
        formulas[k] = symbolic_text(block[k], first.env, varying)
    formulas["calls_per_step"] = symbolic_text(block.get("calls_per_step", 0), first.env, varying)
    scen = {}
    for s, c in per_scenario:
        scen[s] = {"vars": {a: c.env[a] for a in (block.get("vars") or {}) if a in varying},
                   "flops": c.flops, "bytes_read": c.bytes_read, "bytes_written": c.bytes_written,
                   "calls_per_step": c.calls, "bound": _bound(c, gpu), "roofline_us": round(c.seconds(gpu) * 1e6, 6)}
    entry = {"cases": first.labels, "why": str(block.get("why", "")), "formulas": formulas,
             "gpu": {"key": gpu_key, "name": gpu["name"], "bf16_flops_per_s": gpu["bf16_flops_per_s"],
                     "bytes_per_s": gpu["bytes_per_s"]},
             "scenarios": scen}
    return {"name": first.name, "op_type": first.op_type, "costs": {f"{model} {serving_label}": entry}}


def side_path(out: str, op_type: str, name: str) -> str:
    from defc.compiler.write import check_component
    return os.path.join(out, "cost", check_component(op_type, "op_type"), check_component(name, "definition name") + ".json")


def write_side_files(out: str, model: str, serving_label: str, gpu_key: str, gpu: dict,
                     results: List[ScenarioCosts], force: bool = False) -> Dict[str, List[str]]:
    """Write ``out/cost/{op_type}/{name}.json`` for each costed definition, atomically.  A file
    already there keeps its entries for other models / serving configurations (this one's is added)
    and this one's other scenarios; an entry of this model and serving whose formulas, GPU or a
    scenario's numbers differ is a collision, reported and left as it is unless ``force``.  Returns the paths by outcome: new, updated, unchanged, collision."""
    from defc.compiler.write import atomic_write_text
    by_name: Dict[str, List[Tuple[str, Cost]]] = {}
    for sc in results:
        for c in sc.costs:
            by_name.setdefault(c.name, []).append((sc.scenario, c))
    done: Dict[str, List[str]] = {"new": [], "updated": [], "unchanged": [], "collision": []}
    key = f"{model} {serving_label}"
    for name in sorted(by_name):
        doc = side_doc(model, serving_label, gpu_key, gpu, by_name[name])
        path = side_path(out, doc["op_type"], name)
        status = "new"
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    old = json.load(f)
                assert isinstance(old, dict) and isinstance(old.get("costs"), dict)
            except (OSError, ValueError, AssertionError):
                if not force:
                    done["collision"].append(path)
                    continue
                old = None
            if old is not None:
                mine = json.loads(json.dumps(doc["costs"][key]))
                theirs = old["costs"].get(key)
                if theirs == mine:
                    done["unchanged"].append(path)
                    continue
                if theirs is not None and not force:
                    merged = _merge_entry(theirs, mine)
                    if merged is None:
                        done["collision"].append(path)
                        continue
                    if merged == theirs:
                        done["unchanged"].append(path)
                        continue
                    mine = merged
                doc = {**old, "costs": dict(sorted({**old["costs"], key: mine}.items()))}
                status = "updated"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        done[status].append(path)
    return done


def _merge_entry(old: dict, new: dict) -> Optional[dict]:
    """One model's entry written before and now: the same formulas, cases and GPU, scenarios
    added (a scenario with other numbers is a collision: None)."""
    if {k: v for k, v in old.items() if k != "scenarios"} != {k: v for k, v in new.items() if k != "scenarios"}:
        return None
    scen = dict(old.get("scenarios") or {})
    for name, v in new["scenarios"].items():
        if name in scen and scen[name] != v:
            return None
        scen[name] = v
    return {**old, "scenarios": dict(sorted(scen.items()))}


# --- text ------------------------------------------------------------------------------------------

def _si(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def command_line(model: str, gpu_key: str, tp: int, ep: Optional[int] = None, quantization: Optional[str] = None) -> str:
    return (f"defc cost --model {model} --gpu {gpu_key}" + (f" --tp {tp}" if tp != 1 else "")
            + (f" --ep {ep}" if ep and ep != 1 else "") + (f" --quantization {quantization}" if quantization else "")
            + " --format markdown")


def markdown(model: str, tp: int, gpu_key: str, gpu: dict, results: List[ScenarioCosts], ep: Optional[int] = None,
             quantization: Optional[str] = None, serving: str = "") -> str:
    title = serving or f"tp{tp}"
    lines = [f"# Roofline cost: {model} ({title}) on {gpu['name']}", "",
             f"Generated by `{command_line(model, gpu_key, tp, ep, quantization)}`.  "
             f"Peaks: {gpu['bf16_flops_per_s'] / 1e12:.1f} TFLOP/s dense BF16, {gpu['bytes_per_s'] / 1e12:.2f} TB/s "
             f"({gpu['source']}).  Roofline µs = max(FLOPs / peak, bytes / bandwidth) for one call on one GPU "
             "(per-rank shapes); step µs = calls per step × roofline µs; share = of the sum over the costed "
             "definitions (a lower bound of the step: no launch overheads, no communication, no kernels without "
             "a `cost:` block; FP8/FP4 GEMMs are timed at the BF16 peak, so compute-bound ones are overestimated).", ""]
    for sc in results:
        sym = sc.symbols
        lines += [f"## {sc.scenario}", "",
                  f"{sym['stage']}: {sym['num_seqs']} sequence(s), {sym['q_len']} new token(s) each, KV length "
                  f"{sym['kv_len']}, page size {sym['kv_page_size']}.", "",
                  "| definition | FLOPs | bytes | bound | roofline µs | calls/step | step µs | share |",
                  "|---|---:|---:|---|---:|---:|---:|---:|"]
        rs = rows(sc, gpu)
        for r in rs:
            if not r["calls_per_step"]:
                continue
            lines.append(f"| {r['definition']} | {_si(r['flops'])} | {_si(r['bytes_read'] + r['bytes_written'])} | "
                         f"{r['bound']} | {r['roofline_us']:.2f} | {r['calls_per_step']} | {r['step_us']:.1f} | "
                         f"{100 * r['share']:.1f}% |")
        total = sum(r["step_us"] for r in rs)
        lines += ["", f"Step lower bound: **{total:.1f} µs** ({total / 1e3:.3f} ms)."]
        idle = sorted([r["definition"] for r in rs if not r["calls_per_step"]] + sc.not_run)
        if idle:
            lines += ["", "Not called in this step (another stage, page size or quantization variant runs): "
                      + ", ".join(idle) + "."]
        if sc.not_costed:
            lines += ["", "Not costed (no `cost:` block for this case, or a layer count the config does not give): "
                      + ", ".join(n + (f" ({sc.why_not[n]})" if n in sc.why_not else "") for n in sc.not_costed) + "."]
        lines.append("")
    return "\n".join(lines)
