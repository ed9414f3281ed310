"""Prometheus metrics: ``taskq worker --metrics-port PORT``.

A worker records what happens to its jobs in prometheus-client metrics; queue depths
and live workers are read from Redis when the endpoint is scraped. With
``--processes N`` the children write to prometheus-client's multiprocess files
(``PROMETHEUS_MULTIPROC_DIR``, set up by the supervisor) and the parent serves the
sum over all of them, so one scrape covers every process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .broker import Broker

log = logging.getLogger(__name__)


#: Outcomes counted by taskq_jobs_finished_total.
OUTCOMES = ("done", "failed", "retried", "dead", "stalled", "aborted")

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """The metrics one worker process updates. Thread-safe (prometheus-client)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.finished = Counter(
            "taskq_jobs_finished",
            "Jobs finished, by task and outcome",
            ["task", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "taskq_job_duration_seconds",
            "Time a job ran, by task",
            ["task"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.wait = Histogram(
            "taskq_job_wait_seconds",
            "Time from push to start, by task",
            ["task"],
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "taskq_jobs_in_progress",
            "Jobs running now",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.reconnects = Counter(
            "taskq_redis_reconnects",
            "Redis operations retried after an error (Redis down or restarting)",
            registry=registry,
        )

    def job_started(self, task: str, enqueued_at: float) -> None:
        self.in_progress.inc()
        self.wait.labels(task).observe(max(0.0, time.time() - enqueued_at))

    def job_ended(self, task: str, outcome: str, seconds: float) -> None:
        self.in_progress.dec()
        self.count(task, "retried" if outcome == "scheduled" else outcome)
        self.duration.labels(task).observe(seconds)

    def count(self, task: str, outcome: str) -> None:
        if outcome in OUTCOMES:
            self.finished.labels(task, outcome).inc()


class RedisCollector(Collector):
    """Queue depths and live workers, read from Redis at each scrape."""

    def __init__(self, broker: Broker, heartbeat_timeout: float) -> None:
        self.broker = broker
        self.heartbeat_timeout = heartbeat_timeout

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "taskq_queue_depth", "Jobs waiting, by queue and state", labels=["queue", "state"]
        )
        alive = GaugeMetricFamily(
            "taskq_workers_alive", "Workers with a live heartbeat", labels=["queue"]
        )
        try:
            since = time.time() - self.heartbeat_timeout
            for queue in self.broker.queue_names():
                info = self.broker.queue_info(queue, since)
                for state in ("queued", "in_progress", "delayed", "dead"):
                    depth.add_metric([queue, state], info[state])
                alive.add_metric([queue], len(info["workers"]))
        except Exception as exc:  # a scrape must not fail because Redis is away
            log.warning("metrics: cannot read queues from Redis: %s", exc)
        yield depth
        yield alive


class MetricsServer:
    """/metrics served from a thread; ``close()`` stops it."""

    def __init__(self, registry: CollectorRegistry, server: WSGIServer) -> None:
        self.registry = registry
        self._server = server

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(
    port: int,
    broker: Broker,
    heartbeat_timeout: float,
    multiprocess_dir: str | None = None,
    host: str = "0.0.0.0",
) -> MetricsServer:
    """Serve /metrics on ``port`` (all interfaces: Prometheus scrapes from outside).

    With ``multiprocess_dir`` (the supervisor of ``--processes``), the job metrics
    served are the sum of those the children write there.
    """
    registry = CollectorRegistry()
    if multiprocess_dir:
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    registry.register(RedisCollector(broker, heartbeat_timeout))
    server, _ = start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return MetricsServer(registry, server)
