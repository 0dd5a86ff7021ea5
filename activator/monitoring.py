"""The catalogue's monitoring pages: ``monitor()`` reports computed off the event loop, cached, and plotted.

A report reads every captured call of one function in its window, so it is the costliest thing a
page can ask for. Three bounds keep it cheap: a default window (``since``) a year longer than the
function's longest outcome horizon, one computation at a time per worker (a lock, so a burst of
reloads cannot pile up threads), and a cache per (version, function, site, window, registry
generation) with a short TTL. Plots are matplotlib PNGs drawn from the cached report with the
object-oriented API (no pyplot: its global state is not safe across threads), served by their own
routes so the page's Content-Security-Policy (``img-src 'self'``) holds.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import anyio

from kgrid_py.learning.monitor import monitor
from kgrid_py.learning.store import CaptureStore
from kgrid_py.metadata import FunctionSpec

__all__ = [
    "CACHE_TTL_S",
    "LABELS",
    "MAX_WINDOW_DAYS",
    "MonitorCache",
    "ReportKey",
    "calibration_png",
    "default_since",
    "metric_rows",
    "volume_png",
]

CACHE_TTL_S = 60.0
MAX_CACHED = 32
MAX_WINDOW_DAYS = 10 * 366
MIN_WINDOW_DAYS = 365


@dataclass(frozen=True)
class ReportKey:
    """What a report depends on; ``generation`` changes whenever the shelf is reloaded."""

    ko_id: str
    version: str
    function: str
    site: str | None
    since: dt.date
    generation: int


def default_since(function: FunctionSpec, today: dt.date | None = None) -> dt.date:
    """The default window's start: the longest outcome horizon plus a year (outcomes need time to accrue)."""
    today = today or dt.datetime.now(dt.UTC).date()
    horizons = [h.days for h in function.outcome.horizons] if function.outcome else []
    days = max([MIN_WINDOW_DAYS, *(h + 365 for h in horizons)])
    return today - dt.timedelta(days=min(days, MAX_WINDOW_DAYS))


class MonitorCache:
    """Recent reports and their plots, computed one at a time on a worker thread."""

    def __init__(self, ttl_s: float = CACHE_TTL_S, size: int = MAX_CACHED) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._entries: OrderedDict[ReportKey, tuple[float, dict[str, Any], dict[Any, bytes]]] = OrderedDict()
        self._lock = anyio.Lock()
        self.computed = 0  # reports computed (not served from the cache), for tests and metrics

    def _fresh(self, key: ReportKey) -> tuple[float, dict[str, Any], dict[Any, bytes]] | None:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return None
        self._entries.move_to_end(key)
        return entry

    async def report(self, store: CaptureStore, key: ReportKey, function: FunctionSpec) -> dict[str, Any]:
        """The report for ``key``: from the cache while fresh, else computed (raises StoreError, MonitorError)."""
        entry = self._fresh(key)
        if entry is not None:
            return entry[1]
        async with self._lock:
            entry = self._fresh(key)  # another request may have computed it while this one waited
            if entry is not None:
                return entry[1]
            run = functools.partial(monitor, store, key.ko_id, key.version, function, site=key.site, since=key.since)
            report = await anyio.to_thread.run_sync(run)
            self.computed += 1
            self._entries[key] = (time.monotonic(), report, {})
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return report

    async def plot(self, key: ReportKey, report: dict[str, Any], name: tuple[str, ...], draw: Any) -> bytes:
        """A PNG of ``report`` (``draw(report) -> bytes``), kept with the report while it is cached."""
        entry = self._entries.get(key)
        plots = entry[2] if entry is not None and entry[1] is report else {}
        if name not in plots:
            async with self._lock:
                plots[name] = await anyio.to_thread.run_sync(draw, report)
        return plots[name]


LABELS = {
    "observed_risk": "Observed risk",
    "observed_expected": "O:E (observed : expected)",
    "calibration_slope": "Calibration slope",
    "calibration_intercept": "Calibration intercept",
    "c_index": "Discrimination (Uno's C)",
    "auc": "Discrimination (AUC)",
    "brier": "Brier score",
    "ici": "ICI (integrated calibration index)",
    "bias": "Bias (median measured - predicted)",
    "rmse": "RMSE",
    "p30": "P30",
}


def metric_rows(report: dict[str, Any], site: str) -> list[dict[str, Any]]:
    """Per horizon of one site: its counts and each metric as text, flagged 'alert' or 'insufficient'."""
    section = next(s for s in report["sites"] if s["site"] == site)
    alerts = {(a["horizon"], a["metric"]) for a in report["alerts"] if a["site"] == site}
    out = []
    for perf in section["performance"]:
        rows = []
        for key, label in LABELS.items():
            metric = perf.get(key)
            if not isinstance(metric, dict):
                continue
            if "value" in metric:
                low_high = metric.get("ci95")
                ci = f"{low_high[0]:.3f} to {low_high[1]:.3f}" if low_high else ""
                flag = "alert" if (perf["horizon"], key) in alerts else ""
                rows.append({"key": key, "label": label, "value": f"{metric['value']:.3f}", "ci": ci, "flag": flag})
            else:
                status = metric.get("status", "not estimable")
                rows.append({"key": key, "label": label, "value": status, "ci": "", "flag": "insufficient"})
        out.append(
            {
                "horizon": perf["horizon"],
                "days": perf.get("horizon_days"),
                "n": perf.get("n"),
                "events": perf.get("events"),
                "competing": perf.get("competing_events"),
                "rows": rows,
                "plot": bool(perf.get("curve")),
            }
        )
    return out


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # imported on first use: most servers never draw a plot

    return Figure(figsize=(width, height), dpi=96)


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def volume_png(volume: list[dict[str, Any]]) -> bytes:
    """Calls per week (bars), refused calls (red bars) and calls with warnings (a line)."""
    fig = _figure(7.5, 2.6)
    ax = fig.subplots()
    weeks = list(range(len(volume)))
    ax.bar(weeks, [v["calls"] for v in volume], color="#8fa8bf", label="calls")
    ax.bar(weeks, [v["refused"] for v in volume], color="#b3261e", label="refused")
    ax.plot(weeks, [v["warned"] for v in volume], color="#b25e00", marker="o", ms=3, label="with warnings")
    step = max(1, len(volume) // 8)
    ax.set_xticks(weeks[::step], [v["week"] for v in volume][::step], fontsize=7)
    ax.set_ylabel("calls per week (from Monday)")
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def calibration_png(performance: dict[str, Any]) -> bytes:
    """Observed against predicted risk at one horizon: the smoothed curve, its 95% band and the diagonal."""
    curve = performance["curve"]
    fig = _figure(4.2, 4.2)
    ax = fig.subplots()
    top = max(max(curve["grid"]), max(curve["high"]), max(curve["observed"])) * 1.05
    ax.plot([0, top], [0, top], color="#666", lw=1, ls="--", label="ideal")
    ax.fill_between(curve["grid"], curve["low"], curve["high"], color="#4a7", alpha=0.25, label="95% band")
    ax.plot(curve["grid"], curve["observed"], color="#1e5631", lw=2, label="observed (smoothed)")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("predicted risk")
    ax.set_ylabel("observed risk")
    days = performance.get("horizon_days")
    ax.set_title(f"{performance.get('horizon') or ''}{f' ({days:.0f} days)' if days else ''}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)
