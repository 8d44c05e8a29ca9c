"""Comparing ``defc verify``'s two sides, output by output, with per-dtype tolerances (mismatch fraction
and, for low precision, cosine similarity)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .verify_inputs import RecipeError


@dataclass
class OutputCheck:
    name: str
    ok: bool
    max_abs: Optional[float] = None
    max_rel: Optional[float] = None
    mismatch_pct: Optional[float] = None
    cos_sim: Optional[float] = None
    tolerance: Dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "", {})}


def tolerance_for(out_name: str, dtype: str, vb: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
    tol = dict((cfg.get("tolerances") or {}).get(dtype) or {"max_mismatch_pct": 0.0})
    over = vb.get("tolerance") or {}
    if not isinstance(over, dict):
        raise RecipeError("verify.tolerance must be a mapping")
    for key in ("*", out_name):
        v = over.get(key)
        if isinstance(v, dict):
            tol.update(v)
    return tol


def compare(name: str, ours, theirs, tol: Dict[str, Any]) -> OutputCheck:
    import torch
    if not isinstance(ours, torch.Tensor) or not isinstance(theirs, torch.Tensor):
        ok = ours == theirs
        return OutputCheck(name, bool(ok), tolerance=tol, note="" if ok else f"{theirs!r} != {ours!r}")
    a = theirs.detach().to("cpu")
    b = ours.detach().to("cpu")
    reshaped = ""
    if tuple(a.shape) != tuple(b.shape):
        if a.numel() != b.numel():
            return OutputCheck(name, False, tolerance=tol, note=f"shape {tuple(a.shape)} vs reference {tuple(b.shape)}")
        # the API's own layout of the same elements (e.g. heads flattened into one dimension)
        reshaped = f"compared as {tuple(b.shape)} (returned as {tuple(a.shape)})"
        a = a.reshape(b.shape)
    if a.numel() == 0:
        return OutputCheck(name, True, tolerance=tol)
    floats = a.is_floating_point() or b.is_floating_point()
    maxpct = float(tol.get("max_mismatch_pct", 0.0))
    if not floats:
        if {a.dtype, b.dtype} == {torch.uint8, torch.int8}:   # the same bytes (e.g. UE8M0 scales)
            a, b = a.view(torch.uint8), b.view(torch.uint8)
        bad = (a.to(torch.int64) != b.to(torch.int64))
        pct = 100.0 * bad.float().mean().item()
        diff = (a.to(torch.int64) - b.to(torch.int64)).abs()
        return OutputCheck(name, pct <= maxpct, float(diff.max().item()), None, round(pct, 4), None, tol)
    if "float4" in str(a.dtype) or "float4" in str(b.dtype):
        a, b = fp4_values(a), fp4_values(b)
    af, bf = a.to(torch.float32), b.to(torch.float32)
    both_inf = torch.isinf(af) & torch.isinf(bf) & (torch.sign(af) == torch.sign(bf))
    nan_same = torch.isnan(af) & torch.isnan(bf)
    fin = torch.isfinite(af) & torch.isfinite(bf)
    diff = torch.where(fin, (af - bf).abs(), torch.zeros_like(af))
    rel = diff / bf.abs().clamp_min(1e-6)
    rtol, atol = float(tol.get("rtol", 0.0)), float(tol.get("atol", 0.0))
    close = (fin & (diff <= atol + rtol * bf.abs())) | both_inf | nan_same
    pct = 100.0 * (1.0 - close.float().mean().item())
    cos = None
    if fin.any():
        x, y = af[fin], bf[fin]
        nx, ny = x.norm().item(), y.norm().item()
        cos = 1.0 if nx == 0 and ny == 0 else (0.0 if nx == 0 or ny == 0 else float((x * y).sum().item() / (nx * ny)))
    ok = pct <= maxpct
    note = ""
    if "min_cos_sim" in tol and cos is not None and cos < float(tol["min_cos_sim"]):
        ok = False
        note = f"cosine similarity {cos:.6f} < {tol['min_cos_sim']}"
    if not ok and not note:
        note = f"{pct:.3f}% of elements outside atol {atol} + rtol {rtol}·|ref| (allowed {maxpct}%)"
    if reshaped:
        note = f"{note}; {reshaped}" if note else reshaped
    return OutputCheck(name, ok, _r(diff.max().item()), _r(rel.max().item()), round(pct, 4),
                       None if cos is None else round(cos, 7), tol, note)


E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def fp4_values(t):
    """Packed float4_e2m1 (two per byte) → float32 values, last dimension doubled (low nibble first)."""
    import torch
    u = t.view(torch.uint8).to(torch.int64)
    lut = torch.tensor(E2M1, dtype=torch.float32)
    return torch.stack([lut[u & 15], lut[u >> 4]], dim=-1).reshape(*u.shape[:-1], u.shape[-1] * 2)


def _r(x: float) -> float:
    return float(f"{x:.4g}")
