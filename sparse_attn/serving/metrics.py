"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

Names (all prefixed ``sparse_attn_``):

* ``requests_total{endpoint, code}``: answered HTTP requests by endpoint and status code;
* ``request_latency_seconds{endpoint}``: time from the request's arrival to its answer;
* ``queue_depth``: requests accepted and waiting for a batch;
* ``batch_rows``: rows (sum of the requests' batch dimension) per model call;
* ``batch_requests``: requests merged into one model call;
* ``batch_latency_seconds``: wall time of one model call (merge, run, split).
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811 - re-export
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

__all__ = ["CONTENT_TYPE", "ServerMetrics"]


class ServerMetrics:
    """The server's counters, gauges and histograms (see the module docstring).

    Args:
        queue_depth: zero-argument callable read at scrape time (the batcher's queue length).
    """

    def __init__(self, queue_depth=None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sparse_attn_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sparse_attn_request_latency_seconds",
            "Time from a request's arrival to its answer (seconds).",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Gauge(
            "sparse_attn_queue_depth",
            "Requests accepted and waiting for a batch.",
            registry=self.registry,
        )
        if queue_depth is not None:
            self.queue.set_function(queue_depth)
        self.batch_rows = Histogram(
            "sparse_attn_batch_rows",
            "Rows (sum of the batch dimension of the merged requests) per model call.",
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            "sparse_attn_batch_requests",
            "Requests merged into one model call.",
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "sparse_attn_batch_latency_seconds",
            "Wall time of one model call: merge, run, split (seconds).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint=endpoint, code=str(code)).inc()
        self.latency.labels(endpoint=endpoint).observe(seconds)

    def observe_batch(self, n_requests: int, n_rows: int, seconds: float) -> None:
        self.batch_requests.observe(n_requests)
        self.batch_rows.observe(n_rows)
        self.batch_latency.observe(seconds)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
