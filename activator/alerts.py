"""The ``kgrid_monitor_alert`` gauge: 1 where a KO version's function has left a range it declares at a site.

Computed by a periodic task, not by scrapes: every ``interval_s`` (default 10 minutes), soon after
the shelf is first loaded, and a few seconds after ``POST /outcomes`` stored new rows. Each pass
runs :func:`kgrid_py.learning.monitor.monitor` over the server's capture store, one served
function at a time on a worker thread (never on the event loop), with the monitoring pages'
default window (the longest horizon plus a year). Only functions whose outcome declares ranges
are monitored. Labels: ``ko``, ``version``, ``function``, ``site``, ``metric`` (the declared
range's metric) and ``horizon`` (the risk output, empty for a continuous outcome); 0 means the
metric is inside its range or cannot be judged yet ("insufficient data" never alerts). Series are
bounded by ``max_series`` (further ones are dropped and logged); a pass that fails keeps the last
values and logs why. ``kgrid_monitor_alert_refreshed`` is the Unix time of the last good pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Gauge

from activator.monitoring import default_since
from kgrid_py.learning.monitor import monitor
from kgrid_py.learning.store import CaptureStore

__all__ = ["ALERT_INTERVAL_S", "MAX_ALERT_SERIES", "AlertGauge", "Labels", "alert_series"]

ALERT_INTERVAL_S = 600.0
MAX_ALERT_SERIES = 1000
_SETTLE_S = 2.0  # after new outcomes, wait this long so a burst of posts costs one pass

log = logging.getLogger("activator.alerts")

Labels = tuple[str, str, str, str, str, str]  # ko, version, function, site, metric, horizon


def alert_series(report: dict[str, Any], ranges: Iterable[str]) -> dict[Labels, float]:
    """One 0/1 value per (site, horizon, declared metric) of a monitoring report."""
    ko = report["ko"]
    alerted = {(a["site"], a["horizon"] or "", a["metric"]) for a in report["alerts"]}
    metrics = list(dict.fromkeys(ranges))
    out: dict[Labels, float] = {}
    for section in report["sites"]:
        horizons = [p["horizon"] or "" for p in section["performance"]] or [""]
        for horizon in horizons:
            for metric in metrics:
                key = (ko["id"], ko["version"], ko["function"], section["site"], metric, horizon)
                out[key] = 1.0 if (section["site"], horizon, metric) in alerted else 0.0
    return out


class AlertGauge:
    """The gauge and the task that refreshes it."""

    def __init__(
        self,
        registry: CollectorRegistry,
        interval_s: float = ALERT_INTERVAL_S,
        max_series: int = MAX_ALERT_SERIES,
    ) -> None:
        self.interval_s = interval_s
        self.max_series = max_series
        self.gauge = Gauge(
            "kgrid_monitor_alert",
            "1 when a monitored metric is outside the range its KO declares, else 0",
            ["ko", "version", "function", "site", "metric", "horizon"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.refreshed = Gauge(
            "kgrid_monitor_alert_refreshed",
            "Unix time of the last complete alert pass",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.passes = 0
        self._current: set[Labels] = set()
        self._due = False

    def request_refresh(self) -> None:
        """Ask for a pass soon (new outcomes were stored); safe to call from the event loop."""
        self._due = True

    async def run(self, state: Any) -> None:
        """The periodic task (started in the lifespan); returns at once when capture is off."""
        if state.capture is None:
            return
        store = state.capture.writer.store
        while not state.registry.ready:
            await anyio.sleep(0.2)
        while True:
            try:
                values = await anyio.to_thread.run_sync(self.compute, store, state.registry.current)
                self.publish(values)
            except Exception:  # keep the last values and try again next time
                log.exception("monitor alert pass failed")
            waited = 0.0
            while waited < self.interval_s and not self._due:
                await anyio.sleep(0.5)
                waited += 0.5
            if self._due:
                await anyio.sleep(_SETTLE_S)
                self._due = False

    def compute(self, store: CaptureStore, snapshot: Any) -> dict[Labels, float]:
        """Every monitored function's series (on a worker thread: it reads the whole window)."""
        values: dict[Labels, float] = {}
        for _entry, ko in snapshot.served():
            for function in ko.metadata.functions:
                outcome = function.outcome
                if outcome is None or not outcome.ranges:
                    continue
                report = monitor(store, ko.id, ko.version, function, since=default_since(function))
                values.update(alert_series(report, (r.metric for r in outcome.ranges)))
        if len(values) > self.max_series:
            log.warning("monitor alerts: %d series, keeping the first %d", len(values), self.max_series)
            values = dict(list(values.items())[: self.max_series])
        return values

    def publish(self, values: dict[Labels, float]) -> None:
        """Set the new values and drop series that no longer exist."""
        for labels in self._current - set(values):
            self.gauge.remove(*labels)
        for labels, value in values.items():
            self.gauge.labels(*labels).set(value)
        self._current = set(values)
        self.refreshed.set(time.time())
        self.passes += 1
