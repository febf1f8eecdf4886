"""Prometheus metrics of one hub instance, on a registry of its own (served at /metrics)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

__all__ = ["Metrics"]

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only add noise to every scrape


class Metrics:
    """Every metric the hub exports. One instance per app (tests run several)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
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
        self.frames_sent = Counter("hub_ws_frames_sent", "Frames sent to clients", registry=r)
        self.slow_fallbacks = Counter(
            "hub_ws_slow_consumer_fallbacks",
            "Times a subscriber fell behind and was switched to reading from the store",
            registry=r,
        )
        self.stalled_closes = Counter(
            "hub_ws_stalled_closes", "Sockets closed with 4008 (drained nothing)", registry=r
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
