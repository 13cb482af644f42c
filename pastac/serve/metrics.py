"""The serving figures in Prometheus' text format (``GET /metrics``), kept by ``prometheus_client``.

Gauges are read from the engine when scraped (requests running and waiting,
tokens per second over the last ten seconds, KV slots and bytes); histograms
are observed as the engine steps (queries per step, step time, time to first
token, inter-token latency: the time between a request's consecutive steps).
Each app has a registry of its own, so that several can live in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from pastac.runtime.batch import BatchEngine

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class _EngineCollector(Collector):
    """The engine's gauges and counters, read at each scrape."""

    def __init__(self, batch: BatchEngine) -> None:
        self.batch = batch

    def collect(self) -> Iterator[Metric]:
        """The engine's figures now."""
        s = self.batch.stats()
        gauges = (
            ("pastac_requests_running", "Requests being decoded.", s["requests_running"]),
            ("pastac_requests_waiting", "Requests queued for admission.", s["requests_waiting"]),
            ("pastac_tokens_per_second", "Tokens placed per second over the last ten seconds.", s["tokens_per_s"]),
            ("pastac_kv_slots_used", "KV cache slots held by running requests.", s["kv_slots_used"]),
            ("pastac_kv_slots_total", "KV cache slots in the shared cache.", s["kv_slots_total"]),
            ("pastac_kv_bytes_used", "Bytes of keys and values held by running requests.", s["kv_bytes_used"]),
            ("pastac_kv_bytes_allocated", "Bytes of the shared cache's keys and values.", s["kv_bytes_allocated"]),
        )
        for name, text, value in gauges:
            yield GaugeMetricFamily(name, text, value=value)
        yield CounterMetricFamily("pastac_steps", "Forward passes run.", value=s["steps"])
        yield CounterMetricFamily("pastac_tokens", "Tokens placed, prompts included.", value=s["tokens"])
        yield CounterMetricFamily("pastac_requests_finished", "Requests that ended.", value=s["requests_finished"])


class PrometheusMetrics:
    """The engine's ``Metrics``, observed into histograms, and the app's registry."""

    def __init__(self, batch: BatchEngine) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(batch))
        self.rows = Histogram(
            "pastac_rows_per_step", "Queries in one forward pass.", buckets=ROW_BUCKETS, registry=self.registry
        )
        self.step_seconds = Histogram(
            "pastac_step_seconds",
            "Time of one forward pass and sampling.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "pastac_time_to_first_token_seconds",
            "From a request's arrival to the end of the step that sampled its first token.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.itl = Histogram(
            "pastac_inter_token_latency_seconds",
            "Between a request's consecutive steps.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def step(self, rows: int, requests: int, seconds: float) -> None:
        """A step ran ``rows`` queries of ``requests`` requests in ``seconds``."""
        self.rows.observe(rows)
        self.step_seconds.observe(seconds)

    def first_token(self, seconds: float) -> None:
        """The step that sampled a request's first token ended ``seconds`` after it arrived."""
        self.ttft.observe(seconds)

    def inter_token(self, seconds: float) -> None:
        """A request's step ended ``seconds`` after its previous one."""
        self.itl.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
