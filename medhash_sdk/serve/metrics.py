"""Prometheus metrics of one service (its own registry, served at GET /metrics)."""
from __future__ import annotations

from typing import Any, Callable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, items: Callable[[], float]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("medhash_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("medhash_request_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.items = Gauge("medhash_items", "items in the index", registry=r)
        self.items.set_function(items)
        self.encode_errors = Counter("medhash_encode_errors", "inputs that could not be decoded or encoded",
                                     ["source"], registry=r)
        self.batch = Histogram("medhash_encoder_batch_size", "images per model run",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.scan = Histogram("medhash_scan_batch_size", "searches per scan of the codes",
                              buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.commit = Histogram("medhash_commit_group_size", "writes per database commit",
                                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.commit_seconds = Histogram("medhash_commit_seconds", "time of one group commit",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.dicom = Counter("medhash_dicom_instances", "DICOM instances received (C-STORE, STOW-RS)",
                             ["via", "outcome"], registry=r)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def on_batch(self, n: int, seconds: float) -> None:
        self.batch.observe(n)

    def on_commit(self, n: int, seconds: float) -> None:
        self.commit.observe(n)
        self.commit_seconds.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - clearer error than a bare AttributeError
        raise AttributeError(f"Metrics has no metric {name!r}")
