"""Input drift against a KO's declared development population: SMD and PSI (learning-loop.md §3).

SMD: (mean_new - mean_dev) / sqrt((sd_new² + sd_dev²)/2) for a number; for a level share p,
(p_new - p_dev) / sqrt((p_new(1-p_new) + p_dev(1-p_dev))/2). |SMD| > 0.1 is the usual flag.
PSI: Σ (a_b - e_b)·ln(a_b/e_b) over the development deciles (e_b = 0.1), empty bins floored at
1e-4. Both thresholds are habit, not validated; the report shows the numbers, the alerts come only
from declared performance ranges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from kgrid_py.metadata import InputSummary

__all__ = ["PSI_FLOOR", "SMD_FLAG", "psi", "smd", "summary_drift"]

SMD_FLAG = 0.1
PSI_FLOOR = 1e-4


def smd(values: ArrayLike, mean: float, sd: float) -> float:
    """Standardised mean difference of ``values`` from a development mean and SD."""
    x = np.asarray(values, dtype=np.float64)
    return float((x.mean() - mean) / np.sqrt((x.var(ddof=1) + sd**2) / 2))


def share_smd(p_new: float, p_dev: float) -> float:
    denominator = np.sqrt((p_new * (1 - p_new) + p_dev * (1 - p_dev)) / 2)
    return float((p_new - p_dev) / denominator) if denominator > 0 else 0.0


def psi(values: ArrayLike, deciles: ArrayLike) -> float:
    """Population stability index of ``values`` over bins cut at the development deciles."""
    x = np.asarray(values, dtype=np.float64)
    cuts = np.asarray(deciles, dtype=np.float64)
    counts = np.bincount(np.searchsorted(cuts, x, side="right"), minlength=cuts.size + 1)
    actual = np.maximum(counts / x.size, PSI_FLOOR)
    expected = np.full(cuts.size + 1, 1.0 / (cuts.size + 1))
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def summary_drift(values: np.ndarray, summary: InputSummary) -> dict[str, Any]:
    """Drift of one input (numbers, or labels for a levelled input) from its declared summary."""
    out: dict[str, Any] = {"name": summary.name, "n": int(values.size), "approximate": summary.approximate}
    if values.size < 2:
        out["status"] = "no values"
        return out
    if summary.levels:
        labels = values.astype(str)
        out["levels"] = {}
        for level, p_dev in summary.levels.items():
            p_new = float(np.mean(labels == level))
            out["levels"][level] = {"share": p_new, "development": p_dev, "smd": share_smd(p_new, p_dev)}
        out["smd"] = max((v["smd"] for v in out["levels"].values()), key=abs)
        return out
    x = values.astype(np.float64)
    x = x[np.isfinite(x)]
    out.update({"mean": float(x.mean()), "sd": float(x.std(ddof=1))})
    if summary.mean is not None:
        out["development_mean"] = summary.mean
    if summary.mean is not None and summary.sd is not None:
        out["development_sd"] = summary.sd
        out["smd"] = smd(x, summary.mean, summary.sd)
    if summary.deciles:
        out["psi"] = psi(x, summary.deciles)
    return out
