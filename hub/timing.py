"""Small asyncio building blocks shared by the hub's services.

- :class:`KeyedLocks` — one lock per key (a channel, an order), created on demand and
  dropped when nobody holds or waits for it, so the table never outgrows what is in use.
- :class:`DueQueue` — keys due at a time (a GPS write, a stream to archive), taken in
  time order by one owner task that sleeps until the next one is due or a nearer one
  is added.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

__all__ = ["DueQueue", "KeyedLocks"]

K = TypeVar("K", bound=Hashable)


class KeyedLocks(Generic[K]):
    """``async with locks(key):`` serializes the holders of one key."""

    def __init__(self) -> None:
        self._locks: dict[K, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def __call__(self, key: K) -> AsyncIterator[None]:
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]


class DueQueue(Generic[K]):
    """Keys with a due time (``time.monotonic()``); :meth:`next` waits for the earliest."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, K]] = []
        self._count = 0  # tie-breaker: keys need not be comparable
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._due)

    def put(self, key: K, when: float) -> None:
        self._count += 1
        heapq.heappush(self._due, (when, self._count, key))
        self._wake.set()

    async def next(self) -> K:
        """The next key whose time has come (waits until then)."""
        while True:
            if not self._due:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._due[0][0] - time.monotonic()
            if wait > 0:
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a
                # cancellation that comes as the event is set (CPython gh-86296), and the
                # task that owns this queue would then never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                continue
            return heapq.heappop(self._due)[2]
