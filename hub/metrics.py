"""Prometheus metrics of one hub instance, on a registry of its own (served at /metrics)."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["HEALTH_CHECKS", "Metrics"]

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only add noise to every scrape


class _FramesSent(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily("hub_ws_frames_sent", "Frames sent to clients")
        family.add_metric([], self.metrics.frames_sent)
        yield family


class _Commits(Collector):
    """``hub_store_commits_total``, read from the streams store at scrape time (the
    embedded store counts its group commits; a store that does not exports nothing)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        source = self.metrics.commits_source
        count = source() if source is not None else None
        if count is not None:
            family = CounterMetricFamily(
                "hub_store_commits",
                "Group commits of the streams DB (events appended / commits: the mean batch)",
            )
            family.add_metric([], count)
            yield family


HEALTH_CHECKS = ("streams_db", "broker", "tenant_dbs", "public_db")

# Per-route HTTP latency: from the request reaching its route to its status line.
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _total(counter: Counter) -> float:
    """A counter's value (the sum over its children), through the public collect()."""
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


class Metrics:
    """Every metric the hub exports. One instance per app (tests run several)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        # The standard process_* series (CPU, memory, open fds, start time) and python_info.
        # Linux only for process_*: elsewhere the collector exports nothing.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.db_writes = Counter(
            "hub_db_writes", "Rows inserted or updated, by database", ["target"], registry=r
        )
        for target in ("streams", "tenant", "public"):
            self.db_writes.labels(target)
        self.events_appended = Counter(
            "hub_events_appended", "Events committed to the streams DB", registry=r
        )
        self.append_latency = Histogram(
            "hub_append_latency_seconds",
            "Time from an append request reaching the store to its commit",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.http_errors = Counter(
            "hub_http_errors", "Requests answered with an error, by code", ["code"], registry=r
        )
        # WebSocket fan-out.
        self.connections = Gauge("hub_ws_connections", "Open WebSocket connections", registry=r)
        self.subscriptions = Gauge(
            "hub_ws_subscriptions", "Active stream and inbox subscriptions", registry=r
        )
        # Frames sent: a plain int bumped per frame (the hottest path), read at scrape time.
        self.frames_sent = 0
        r.register(_FramesSent(self))
        self.slow_fallbacks = Counter(
            "hub_ws_slow_consumer_fallbacks",
            "Times a subscriber fell behind and was switched to reading from the store",
            registry=r,
        )
        self.stalled_closes = Counter(
            "hub_ws_stalled_closes", "Sockets closed with 4008 (drained nothing)", registry=r
        )
        self.ws_sessions = Gauge(
            "hub_ws_sessions",
            "WebSockets counted under their tenant's cap (open, or closed and not gone yet)",
            registry=r,
        )
        self.ws_closing = Gauge(
            "hub_ws_closing",
            "WebSockets closed whose connection is not gone yet (the client has not taken"
            " what was queued; still counted under their tenant's cap)",
            registry=r,
        )
        self.ws_aborted = Counter(
            "hub_ws_aborted",
            "Closing WebSockets whose client took nothing (not even the close frame) for the"
            " close grace: their connection was reset",
            registry=r,
        )
        self.control_paused = Counter(
            "hub_ws_control_paused",
            "Times a socket stopped reading its client's frames while 64 replies (pongs,"
            " error frames) waited to be sent (backpressure on a burst; nothing is dropped)",
            registry=r,
        )

        # Redis.
        self.redis_reconnects = Counter(
            "hub_redis_reconnects", "Times the Redis pub/sub connection was re-established",
            registry=r,
        )
        self.backfilled = Counter(
            "hub_backfilled_events",
            "Events sent from the store after a resync (Redis loss or reconnect)",
            registry=r,
        )
        # Orders, GPS and archiving.
        self.gps_pings = Counter("hub_gps_pings", "GPS pings accepted", registry=r)
        self.gps_dropped = Counter(
            "hub_gps_pings_dropped", "GPS pings dropped by the per-driver rate limit", registry=r
        )
        self.archived = Counter("hub_streams_archived", "Streams archived", registry=r)
        self.archive_failures = Counter(
            "hub_archive_failures", "Archive attempts that failed (retried later)", registry=r
        )

        # Connections (hub.edge.server): read deadlines, the cap, the open-file limit.
        self.read_timeouts = Counter(
            "hub_http_read_timeouts",
            "Connections closed because a request's headers (HUB_HEADER_TIMEOUT) or body"
            " (HUB_BODY_TIMEOUT) did not arrive in time, by phase",
            ["phase"], registry=r,
        )  # fmt: skip
        for phase in ("headers", "body"):
            self.read_timeouts.labels(phase)
        self.connections_evicted = Counter(
            "hub_connections_evicted",
            "Connections waiting on their client closed to make room at HUB_MAX_CONNECTIONS",
            registry=r,
        )
        self.connections_refused = Counter(
            "hub_connections_refused",
            "Connections closed at once (http: no room at HUB_MAX_CONNECTIONS) or WebSocket"
            " upgrades answered 503 (websocket: their share of it is full), by kind",
            ["kind"], registry=r,
        )  # fmt: skip
        for kind in ("http", "websocket"):
            self.connections_refused.labels(kind)
        self.connections_open = Gauge(
            "hub_connections_open", "Client connections open, HTTP and WebSocket", registry=r
        )
        self.connections_max = Gauge(
            "hub_connections_max", "Client connections allowed (HUB_MAX_CONNECTIONS)", registry=r
        )
        self.open_fds = Gauge(
            "hub_open_fds", "File descriptors open in the process (counted every 1 to 10 s)",
            registry=r,
        )  # fmt: skip
        self.fd_limit = Gauge(
            "hub_fd_limit", "The process's open-file limit (soft RLIMIT_NOFILE)", registry=r
        )

        self.gc_pause = Histogram(
            "hub_gc_pause_seconds", "Cyclic garbage collector pauses, by generation",
            ["generation"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
        )  # fmt: skip
        self._gc_started = 0.0

        # Operations (hub.edge.ops): per-route latency, the health checks, group commits.
        self.http_latency = Histogram(
            "hub_http_request_duration_seconds",
            "HTTP requests by route template and method: time from the request reaching its"
            " route to its status line (the first byte of a streamed answer)",
            ["route", "method"], registry=r, buckets=HTTP_BUCKETS,
        )  # fmt: skip
        self.health = Gauge(
            "hub_health_ok",
            "1 while a /healthz check is ok, 0 while it fails (as of the last /healthz,"
            " /readyz or /api/ops/instance, or of a scrape 5 s or more after the last check)",
            ["check"], registry=r,
        )  # fmt: skip
        for check in HEALTH_CHECKS:
            self.health.labels(check).set(1)
        self.commits_source: Callable[[], int | None] | None = None
        r.register(_Commits(self))

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._gc_started
            self.gc_pause.labels(str(info.get("generation", "?"))).observe(pause)

    def watch_gc(self) -> None:
        """Time every collection into ``hub_gc_pause_seconds`` (until :meth:`unwatch_gc`)."""
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def totals(self) -> dict[str, float]:
        """The counters the platform console turns into rates (hub.edge.ops)."""
        out = {
            "frames": float(self.frames_sent),
            "events": _total(self.events_appended),
            "fallbacks": _total(self.slow_fallbacks),
        }
        for m in self.db_writes.collect():
            for s in m.samples:
                if s.name.endswith("_total"):
                    out[f"writes.{s.labels['target']}"] = s.value
        return out

    def render(self) -> bytes:
        return generate_latest(self.registry)
