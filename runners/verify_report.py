"""``defc verify``'s results and its report (JSON and Markdown, with the environment it ran in)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from defc.compiler.paths import PROJECT_ROOT
from defc.compiler.write import atomic_write_text

from .verify_calls import fi_version
from .verify_compare import OutputCheck


STATUS_ORDER = ("fail", "error", "pass", "not-run")


@dataclass
class Result:
    definition: str
    op_type: str
    fi_api: str
    status: str = "not-run"           # pass | fail | error | not-run
    side: str = ""                    # kernel | alternative | template
    ran: str = ""                     # what ran on the other side
    why: str = ""                     # why not (not-run), what failed (error / fail)
    sizes: Dict[str, int] = field(default_factory=dict)
    outputs: List[OutputCheck] = field(default_factory=list)
    differences: List[str] = field(default_factory=list)
    seconds: float = 0.0
    not_run_kernel: str = ""          # when an alternative ran: why the named kernel did not

    @property
    def max_abs(self) -> Optional[float]:
        vals = [o.max_abs for o in self.outputs if o.max_abs is not None]
        return max(vals) if vals else None

    @property
    def max_rel(self) -> Optional[float]:
        vals = [o.max_rel for o in self.outputs if o.max_rel is not None]
        return max(vals) if vals else None

    def as_dict(self) -> Dict[str, Any]:
        d = {"definition": self.definition, "op_type": self.op_type, "fi_api": self.fi_api, "status": self.status,
             "side": self.side, "ran": self.ran, "why": self.why, "sizes": self.sizes,
             "max_abs": self.max_abs, "max_rel": self.max_rel,
             "outputs": [o.as_dict() for o in self.outputs], "differences": self.differences,
             "seconds": round(self.seconds, 3)}
        if self.not_run_kernel:
            d["named_kernel_not_run"] = self.not_run_kernel
        return d

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "Result":
        r = Result(d["definition"], d.get("op_type", ""), d.get("fi_api", ""), d.get("status", "error"),
                   d.get("side", ""), d.get("ran", ""), d.get("why", ""), d.get("sizes") or {},
                   [OutputCheck(**o) for o in d.get("outputs") or []], d.get("differences") or [],
                   float(d.get("seconds") or 0.0), d.get("named_kernel_not_run", ""))
        return r


def environment(device: str, defc_version: str) -> Dict[str, Any]:
    env: Dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch
        env["torch"] = torch.__version__
        if device.startswith("cuda") and torch.cuda.is_available():
            env["device"] = torch.cuda.get_device_name()
            a, b = torch.cuda.get_device_capability()
            env["compute_capability"] = f"{a}.{b}"
            env["cuda"] = torch.version.cuda
        else:
            env["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    except Exception as e:
        env["torch"] = f"(not importable: {e})"
    env["flashinfer"] = fi_version()
    env["defc"] = defc_version
    try:
        rev = subprocess.run(["git", "-C", PROJECT_ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0:
            env["defc_commit"] = rev.stdout.strip()
            dirty = subprocess.run(["git", "-C", PROJECT_ROOT, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            if dirty.returncode == 0 and dirty.stdout.strip():
                env["defc_commit"] += "+local changes"     # the working tree is not that commit
    except Exception:
        pass
    return env


def summary(results: Sequence[Result]) -> Dict[str, int]:
    out = {s: 0 for s in STATUS_ORDER}
    for r in results:
        out[r.status] = out.get(r.status, 0) + 1
    out["total"] = len(results)
    return out


def report_data(model: str, servings: str, command: str, device: str, results: Sequence[Result],
                started: str, seconds: float, complete: bool, env: Dict[str, Any]) -> Dict[str, Any]:
    return {"tool": "defc verify", "model": model, "serving": servings, "command": command,
            "date": started, "seconds": round(seconds, 1), "complete": complete,
            "environment": env, "device_option": device,
            "summary": summary(results), "results": [r.as_dict() for r in results]}


def _fmt(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.3g}"


def _tol_text(r: Result) -> str:
    seen = []
    for o in r.outputs:
        t = o.tolerance
        if not t:
            continue
        parts = []
        if "rtol" in t or "atol" in t:
            parts.append(f"rtol {t.get('rtol', 0):g} atol {t.get('atol', 0):g}")
        if t.get("max_mismatch_pct"):
            parts.append(f"≤{t['max_mismatch_pct']:g}% off")
        if "min_cos_sim" in t:
            parts.append(f"cos≥{t['min_cos_sim']:g}")
        if not parts:
            parts.append("exact")
        s = f"{o.name}: " + ", ".join(parts)
        if s not in seen:
            seen.append(s)
    return "; ".join(seen)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(data: Dict[str, Any]) -> str:
    env = data["environment"]
    s = data["summary"]
    lines = [f"# defc verify — {data['model']} ({data['serving']}, --device {data['device_option']})", "",
             f"- device: {env.get('device', '?')}" + (f" (SM {env['compute_capability']}, CUDA {env.get('cuda')})"
                                                      if env.get("compute_capability") else ""),
             f"- torch {env.get('torch')}, flashinfer {env.get('flashinfer')}, defc {env.get('defc')}"
             + (f" ({env['defc_commit']})" if env.get("defc_commit") else "") + f", Python {env.get('python')}",
             f"- date: {data['date']}; {data['seconds']} s" + ("" if data["complete"] else " — INCOMPLETE (cut short)"),
             f"- command: `{data['command']}`",
             f"- {s['total']} definitions: {s['pass']} pass, {s['fail']} fail, {s['error']} error, "
             f"{s['not-run']} not run", "",
             "| definition | fi_api | other side: what ran, or why not | max abs err | max rel err | tolerance "
             "| result | s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        what = r["ran"] if r["status"] in ("pass", "fail") else r["why"]
        if r["status"] in ("pass", "fail") and r.get("named_kernel_not_run"):
            what += f" — named kernel not run: {r['named_kernel_not_run']}"
        if r["status"] == "fail":
            what += f" — {r['why']}"
        if r.get("differences"):
            what += f" — named differences: {', '.join(r['differences'])}"
        res = Result.from_dict(r)
        lines.append("| " + " | ".join(_md_cell(x) for x in (
            r["definition"], r["fi_api"] or "—", what, _fmt(r["max_abs"]), _fmt(r["max_rel"]),
            _tol_text(res) if r["status"] in ("pass", "fail") else "", r["status"].upper(),
            f"{r['seconds']:.2f}")) + " |")
    lines.append("")
    lines.append("Var-axis sizes used, per definition: see the JSON report (`results[].sizes`).")
    return "\n".join(lines) + "\n"


def write_report(report_dir: str, stem: str, data: Dict[str, Any]) -> Tuple[str, str]:
    os.makedirs(report_dir, exist_ok=True)
    jp = os.path.join(report_dir, stem + ".json")
    mp_ = os.path.join(report_dir, stem + ".md")
    atomic_write_text(jp, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(mp_, report_markdown(data))
    return jp, mp_


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
