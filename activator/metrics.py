"""Prometheus metrics: HTTP traffic per route, and calls per KO version and endpoint.

Each app owns its own ``CollectorRegistry`` (built in ``create_app``), so several apps in one
process (tests) never collide. With ``--workers N``, ``kgrid serve`` runs prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a fresh folder per server): every worker writes
its counters there and ``/metrics``, whichever worker answers, sums them, so counters never
appear to reset between scrapes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "method_label", "status_label"]

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# Label values a client chooses must come from a fixed set, or every new value is a new time series
# (memory in the server and in Prometheus): methods beyond these are "other", routes are templates
# (or "(unmatched)"), statuses are the 100-599 range.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in _METHODS else "other"


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


class Metrics:
    """The counters and histograms one app updates."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "kgrid_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "kgrid_http_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.calls = Counter(
            "kgrid_ko_requests",
            "KO calls by KO, version and endpoint",
            ["ko", "version", "endpoint"],
            registry=self.registry,
        )
        self.errors = Counter(
            "kgrid_ko_errors",
            "KO calls answered with an error, by status",
            ["ko", "version", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kgrid_ko_request_duration_seconds",
            "KO call latency (inputs to outputs)",
            ["ko", "version", "endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        # Where single calls ran (activator.dispatch decides from each function's measured cost).
        self.dispatched = Counter(
            "kgrid_ko_dispatched",
            "Single KO calls by where they ran: inline on the event loop, or in the inference pool",
            ["ko", "version", "endpoint", "where"],
            registry=self.registry,
        )
        self.items = Counter(
            "kgrid_ko_items",
            "Inputs scored (a batch counts each item)",
            ["ko", "version", "endpoint"],
            registry=self.registry,
        )
        # Across workers: the largest value of a live worker (they serve the same shelf).
        self.served = Gauge(
            "kgrid_kos_served", "KO versions being served", registry=self.registry, multiprocess_mode="livemax"
        )
        self.failed = Gauge(
            "kgrid_kos_failed",
            "KO versions on the shelf that failed to load",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.generation = Gauge(
            "kgrid_shelf_generation", "Reloads published so far", registry=self.registry, multiprocess_mode="livemax"
        )
        self.capture_lost = Counter(
            "kgrid_capture_lost_records",
            "Call records not stored (capture policy best-effort, store unavailable)",
            registry=self.registry,
        )
        # Records over commits is the group commit's group size: what each record's share of a commit costs.
        self.capture_commits = Counter(
            "kgrid_capture_commits", "Group commits of call records to the capture store", registry=self.registry
        )
        self.capture_records = Counter(
            "kgrid_capture_records", "Call records committed to the capture store", registry=self.registry
        )
        self._call_children: dict[tuple[str, str, str], tuple[Any, Any, Any, Any, Any]] = {}
        self._http_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe_call(
        self,
        ko: str,
        version: str,
        endpoint: str,
        seconds: float,
        items: int,
        status: int,
        inline: bool | None = None,
    ) -> None:
        """One call (or batch) answered; ``inline`` says where a single call ran (None: not dispatched)."""
        key = (ko, version, endpoint)
        children = self._call_children.get(key)
        if children is None:  # label lookups take a lock each: do them once per KO endpoint
            children = self._call_children[key] = (
                self.calls.labels(*key),
                self.items.labels(*key),
                self.latency.labels(*key),
                self.dispatched.labels(*key, "inline"),
                self.dispatched.labels(*key, "pool"),
            )
        calls, scored, latency, on_loop, in_pool = children
        calls.inc()
        scored.inc(items)
        latency.observe(seconds)
        if inline is not None:
            (on_loop if inline else in_pool).inc()
        if status >= 400:
            self.errors.labels(ko, version, endpoint, str(status)).inc()

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method_label(method), route, status_label(status))
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self.http_requests.labels(*key),
                self.http_latency.labels(route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        multiprocess.MultiProcessCollector(combined, path=str(self.multiprocess_dir))
        return generate_latest(combined)

    def close(self) -> None:
        """A worker that stops takes its live gauges with it (its counters stay in the sums)."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), path=str(self.multiprocess_dir))
