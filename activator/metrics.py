"""Prometheus metrics: HTTP traffic per route, and calls per KO version and endpoint.

Each app owns its own ``CollectorRegistry`` (built in ``create_app``), so several apps in one
process (tests) never collide. With ``--workers N`` each worker counts its own traffic.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The counters and histograms one app updates."""

    def __init__(self) -> None:
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
        self.items = Counter(
            "kgrid_ko_items",
            "Inputs scored (a batch counts each item)",
            ["ko", "version", "endpoint"],
            registry=self.registry,
        )
        self.served = Gauge("kgrid_kos_served", "KO versions being served", registry=self.registry)
        self.failed = Gauge("kgrid_kos_failed", "KO versions on the shelf that failed to load", registry=self.registry)
        self.generation = Gauge("kgrid_shelf_generation", "Reloads published so far", registry=self.registry)

    def observe_call(self, ko: str, version: str, endpoint: str, seconds: float, items: int, status: int) -> None:
        self.calls.labels(ko, version, endpoint).inc()
        self.items.labels(ko, version, endpoint).inc(items)
        self.latency.labels(ko, version, endpoint).observe(seconds)
        if status >= 400:
            self.errors.labels(ko, version, endpoint, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
