"""Claims: which hub instance does something once (a tracking frame announced once).

A claim is a key taken for a while: the first :meth:`Claims.claim` of a key wins, every
later one (on any instance sharing the claims) loses until the key expires.

- :class:`MemoryClaims` — this process only (``HUB_REDIS_URL`` unset).
- :class:`RedisClaims` — ``SET key NX PX ttl`` on the Redis that links the instances.
  It fails open: when Redis does not answer (an outage, a cluster slot elsewhere) the
  claim is granted, so an announcement may go out twice rather than never; the
  subscribers drop the repeat (:mod:`hub.domain.tracking`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Protocol

__all__ = ["Claims", "MemoryClaims", "RedisClaims"]

log = logging.getLogger("hub.claims")

MEMORY_KEYS = 100_000  # claims remembered at once (the oldest forgotten first)
REDIS_TIMEOUT = 1.0  # seconds a claim waits for Redis before it is granted anyway


class Claims(Protocol):
    async def claim(self, key: str, ttl: float) -> bool:
        """True for the first claim of ``key`` within ``ttl`` seconds, on any instance."""

    async def close(self) -> None:
        """Release connections. Idempotent."""


class MemoryClaims:
    """Claims in this process: a bounded table of keys and when they expire."""

    def __init__(self, *, max_keys: int = MEMORY_KEYS) -> None:
        self._keys: OrderedDict[str, float] = OrderedDict()
        self.max_keys = max_keys

    async def claim(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        until = self._keys.get(key)
        if until is not None and until > now:
            return False
        self._keys[key] = now + ttl
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return True

    async def close(self) -> None:
        self._keys.clear()


class RedisClaims:
    """Claims shared by every instance on one Redis (``{prefix}claim:{key}``)."""

    def __init__(self, url: str, *, prefix: str = "hub:", cluster: bool | None = False) -> None:
        self.url = url
        self.prefix = prefix
        self.cluster = cluster
        self._client: Any = None
        self._failing = False

    def _redis(self) -> Any:
        if self._client is None:
            from hub.infra.broker.cluster import CLIENT_OPTIONS  # the redis extra

            if self.cluster:
                from redis.asyncio.cluster import RedisCluster

                self._client = RedisCluster.from_url(self.url, socket_connect_timeout=2,
                                                     socket_timeout=2)  # fmt: skip
            else:
                import redis.asyncio as aioredis

                self._client = aioredis.from_url(self.url, **CLIENT_OPTIONS)
        return self._client

    async def claim(self, key: str, ttl: float) -> bool:
        try:
            won = await asyncio.wait_for(
                self._redis().set(self.prefix + "claim:" + key, b"1", nx=True,
                                  px=max(1, int(ttl * 1000))),
                REDIS_TIMEOUT,
            )  # fmt: skip
        except Exception as exc:  # Redis down, a slot elsewhere, a timeout: grant it
            if not self._failing:
                log.warning("claims in redis fail (%s); announcing without them", exc)
            self._failing = True
            return True
        self._failing = False
        return bool(won)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.aclose(), 2.0)
            except Exception as exc:
                log.warning("closing the claims' Redis client: %s", exc or type(exc).__name__)
