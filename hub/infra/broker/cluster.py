"""Redis Cluster topology for the broker: which master serves a channel's hash slot.

Whether the sharded channels live on a cluster is asked once (``INFO cluster``); the slot
map comes from ``CLUSTER SLOTS``, asked of any known master or of ``HUB_REDIS_URL`` itself,
and is asked again when marked stale; each master gets one small client, made on first use
and dropped from the map when it stops being a master. See :mod:`hub.infra.broker.redis` for how
the publisher and the listener use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

__all__ = ["CLIENT_OPTIONS", "Rerouted", "Topology", "by_slot", "node_url", "parse_slots"]

log = logging.getLogger("hub.redis")

SLOTS = 16384  # Redis Cluster hash slots
CLIENT_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2, "socket_timeout": 10, "health_check_interval": 0,
}  # fmt: skip


class Rerouted(RedisError):
    """The cluster's slot map changed under a listener session."""


def node_url(url: str, host: str, port: int) -> str:
    """``url`` (scheme, credentials, options) pointed at one cluster node, database 0."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    netloc = f"{userinfo}@{address}" if userinfo else address
    return urlunsplit((parts.scheme, netloc, "", parts.query, ""))


def parse_slots(reply: Any, asked_host: str) -> tuple[list[str | None], list[str]]:
    """A ``CLUSTER SLOTS`` reply as (slot -> master "host:port", sorted masters)."""
    slots: list[str | None] = [None] * SLOTS
    masters: set[str] = set()
    for entry in reply:
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        if host == "?":  # the node's endpoint is unknown: leave its slots uncovered
            continue
        name = f"{host or asked_host}:{int(primary[1])}"  # "" = the node that answered
        masters.add(name)
        slots[start : end + 1] = [name] * (end - start + 1)
    return slots, sorted(masters)


def by_slot(route: list[str | None], names: Iterable[str]) -> dict[str, list[list[str]]]:
    """Channel names grouped by master, then by slot (one SSUBSCRIBE may not span slots)."""
    out: dict[str, dict[int, list[str]]] = {}
    for name in names:
        slot = key_slot(name.encode())
        node = route[slot] if route else None
        if node is None:
            raise Rerouted(f"slot {slot} of {name} has no master")
        out.setdefault(node, {}).setdefault(slot, []).append(name)
    return {node: list(groups.values()) for node, groups in out.items()}


class Topology:
    """One broker's view of the cluster: cluster or not, the slot map, a client per master."""

    def __init__(self, url: str, cluster: bool | None) -> None:
        self.url = url
        self.cluster = cluster  # None until the server has been asked
        self.slots: list[str | None] = []  # the latest slot map (slot -> "host:port")
        self.masters: list[str] = []
        self.stale = True  # ask CLUSTER SLOTS again before the next use
        self._nodes: dict[str, aioredis.Redis] = {}  # "host:port" -> client of that master
        self._mode_lock = asyncio.Lock()
        self._lock = asyncio.Lock()

    async def is_cluster(self, client: aioredis.Redis) -> bool:
        """Whether the sharded channels live on a Redis Cluster (asked once, then kept)."""
        if self.cluster is None:
            async with self._mode_lock:
                if self.cluster is None:
                    try:
                        info = await client.info("cluster")
                    except ResponseError as exc:  # INFO refused (an ACL): take one server
                        log.warning("INFO cluster refused (%s): using one Redis endpoint", exc)
                        info = {}
                    self.cluster = bool(info.get("cluster_enabled"))
                    if self.cluster:
                        log.info("Redis Cluster: sharded channels follow the slot map")
        return self.cluster

    def node(self, name: str) -> aioredis.Redis:
        """The client of master ``name`` ("host:port"), created on first use."""
        client = self._nodes.get(name)
        if client is None:
            host, _, port = name.rpartition(":")
            client = aioredis.from_url(node_url(self.url, host, int(port)), **CLIENT_OPTIONS)
            self._nodes[name] = client
        return client

    async def route(self, seed: aioredis.Redis, *, fresh: bool = False) -> list[str | None]:
        """The slot map, asked again (``CLUSTER SLOTS``) when stale or ``fresh``."""
        async with self._lock:
            if fresh or self.stale or not self.slots:
                await self._load(seed)
            return self.slots

    async def _load(self, seed: aioredis.Redis) -> None:
        seed_host = urlsplit(self.url).hostname or ""
        asks: list[tuple[aioredis.Redis, str]] = [
            (self.node(name), name.rpartition(":")[0]) for name in self.masters
        ]
        asks.append((seed, seed_host))  # HUB_REDIS_URL, also when the known masters fail
        error: Exception = RedisError("no cluster node answered")
        for client, host in asks:
            try:
                reply = await cast(Any, client).execute_command("CLUSTER", "SLOTS")
            except (RedisError, OSError) as exc:
                error = exc
                continue
            try:
                slots, masters = parse_slots(reply, host)
            except (ValueError, TypeError, IndexError) as exc:
                error = RedisError(f"unreadable CLUSTER SLOTS reply: {exc!r}")
                continue
            break
        else:
            raise error
        self.slots, self.masters, self.stale = slots, masters, False
        for name, node in list(self._nodes.items()):
            if name not in masters:  # no longer a master: drop its idle connections (the
                with contextlib.suppress(Exception):  # client stays, closed by close())
                    await node.connection_pool.disconnect(inuse_connections=False)

    async def close(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            with contextlib.suppress(Exception):
                await node.aclose()
