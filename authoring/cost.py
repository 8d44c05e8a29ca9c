"""Roofline cost of a model's definitions (``defc cost``).

A definition of a spec may declare ``cost:`` (docs/spec-format.md): ``flops``, ``bytes_read`` and
``bytes_written`` of one call, and ``calls_per_step`` (calls in one forward step of the model),
formulas over the definition's symbols and const axes, with its var axes bound by ``vars`` from a
scenario's symbols (``authoring/data/cost_scenarios.yaml``: stage, num_seqs, q_len, kv_len,
kv_page_size; num_tokens = num_seqs * q_len).  Nothing of it is emitted in the Definition: the
model is compiled in memory and each instance's cost is evaluated here with the formula language.

The roofline time of a call is max(flops / peak FLOP/s, bytes / bandwidth) at one GPU's peaks
(``authoring/data/cost_gpus.yaml``, with sources); a definition's share of the step is its calls
times that time over the sum of all costed definitions'.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from defc.compiler import formula as F
from defc.compiler.errors import DefcError

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
GPUS = os.path.join(DATA, "cost_gpus.yaml")
SCENARIOS = os.path.join(DATA, "cost_scenarios.yaml")
SCENARIO_SYMBOLS = ("stage", "num_seqs", "q_len", "kv_len", "kv_page_size", "num_tokens")


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
    not_costed: List[str] = field(default_factory=list)      # names without a cost: block (or its when false)


_PARSED: Dict[Any, F.Formula] = {}


def _eval(text: Any, env: Dict[str, Any], inst, what: str) -> Any:
    f = _PARSED.get(text)
    if f is None:
        f = _PARSED[text] = F.parse(text)
    try:
        return F.to_python(f.evaluate(env))
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


def instance_cost(inst, symbols: Dict[str, Any]) -> Optional[Cost]:
    """The cost of one evaluated instance at a scenario; None when its definition has no cost: block
    or the block's when is false for it."""
    block = (inst.spec.definitions[inst.def_index] or {}).get("cost")
    if not block:
        return None
    env = dict(inst.env)
    env.update(inst.const_axes)
    env.update(symbols)
    if "when" in block and not F.truth(F.parse(block["when"]), env):
        return None
    for axis, text in (block.get("vars") or {}).items():
        env[axis] = _eval(text, env, inst, f"vars.{axis}")
    counts = {k: _count(_eval(block[k], env, inst, k), inst, k) for k in ("flops", "bytes_read", "bytes_written")}
    calls = _count(_eval(block.get("calls_per_step", 0), env, inst, "calls_per_step"), inst, "calls_per_step")
    return Cost(inst.name, inst.op_type, [str(inst.env.get("label", ""))], calls=calls, **counts)


def costs_for(instances, serving_label: str, symbols: Dict[str, Any], scenario: str = "") -> ScenarioCosts:
    """Every definition of one serving configuration at a scenario.  Cases that give the same
    definition (one shape used by two projections) add their calls."""
    out = ScenarioCosts(scenario, symbols)
    for name in sorted(instances):
        mine = [i for i in instances[name] if i.serving.label() == serving_label]
        if not mine:
            continue
        found: Optional[Cost] = None
        for inst in mine:
            c = instance_cost(inst, symbols)
            if c is None:
                continue
            if found is None:
                found = c
            else:
                found.calls += c.calls
                found.labels += [lb for lb in c.labels if lb not in found.labels]
        if found is None:
            out.not_costed.append(name)
        else:
            out.costs.append(found)
    return out


def model_costs(model: str, scenarios: Sequence[str], tp: int = 1, all_scenarios: Optional[Dict] = None,
                config=None) -> List[ScenarioCosts]:
    """Compile the model in memory at TP ``tp`` (nothing is written) and cost it at each scenario."""
    from defc.compiler.predictions import compile_predictions
    all_scenarios = all_scenarios if all_scenarios is not None else load_scenarios()
    for s in scenarios:
        if s not in all_scenarios:
            raise DefcError(f"no scenario '{s}' (one of: {', '.join(all_scenarios)})", field="--scenario")
    result = compile_predictions(model, [tp], None, None, config=config)
    serving = result.servings[0].label()
    return [costs_for(result.instances, serving, all_scenarios[s], s) for s in scenarios]


def rows(sc: ScenarioCosts, gpu: dict) -> List[dict]:
    """One row per costed definition, by time in the step (largest first)."""
    step = sum(c.calls * c.seconds(gpu) for c in sc.costs)
    out = []
    for c in sc.costs:
        t = c.seconds(gpu)
        out.append({"definition": c.name, "op_type": c.op_type, "cases": c.labels, "flops": c.flops,
                    "bytes_read": c.bytes_read, "bytes_written": c.bytes_written,
                    "bound": "compute" if c.flops / gpu["bf16_flops_per_s"] >= c.bytes / gpu["bytes_per_s"] else "memory",
                    "roofline_us": t * 1e6, "calls_per_step": c.calls, "step_us": c.calls * t * 1e6,
                    "share": (c.calls * t / step) if step else 0.0})
    out.sort(key=lambda r: (-r["step_us"], r["definition"]))
    return out


def _si(n: float) -> str:
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def markdown(model: str, tp: int, gpu_key: str, gpu: dict, results: List[ScenarioCosts]) -> str:
    lines = [f"# Roofline cost: {model} (tp{tp}) on {gpu['name']}", "",
             f"Generated by `defc cost --model {model} --gpu {gpu_key}"
             + (f" --tp {tp}" if tp != 1 else "") + " --format markdown`.  "
             f"Peaks: {gpu['bf16_flops_per_s'] / 1e12:.1f} TFLOP/s dense BF16, {gpu['bytes_per_s'] / 1e12:.2f} TB/s "
             f"({gpu['source']}).  Roofline µs = max(FLOPs / peak, bytes / bandwidth) for one call; step µs = "
             "calls per step × roofline µs; share = of the sum over the costed definitions (a lower bound of the step: "
             "no launch overheads, no communication, no kernels without a `cost:` block).", ""]
    for sc in results:
        sym = sc.symbols
        lines += [f"## {sc.scenario}", "",
                  f"{sym['stage']}: {sym['num_seqs']} sequence(s), {sym['q_len']} new token(s) each, KV length "
                  f"{sym['kv_len']}, page size {sym['kv_page_size']}.", "",
                  "| definition | FLOPs | bytes | bound | roofline µs | calls/step | step µs | share |",
                  "|---|---:|---:|---|---:|---:|---:|---:|"]
        rs = rows(sc, gpu)
        for r in rs:
            lines.append(f"| {r['definition']} | {_si(r['flops'])} | {_si(r['bytes_read'] + r['bytes_written'])} | "
                         f"{r['bound']} | {r['roofline_us']:.2f} | {r['calls_per_step']} | {r['step_us']:.1f} | "
                         f"{100 * r['share']:.1f}% |")
        total = sum(r["step_us"] for r in rs)
        lines += ["", f"Step lower bound: **{total:.1f} µs** ({total / 1e3:.3f} ms)."]
        if sc.not_costed:
            lines += ["", "Not costed (no `cost:` block for this case): " + ", ".join(sc.not_costed) + "."]
        lines.append("")
    return "\n".join(lines)
