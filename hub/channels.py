"""The local registry of subscribers: which connection listens to which channel.

:class:`Channels` subscribes the broker to a channel when its first local subscriber
arrives and unsubscribes when the last one leaves, and hands each message to every
local subscriber of its channel. A message is encoded once (by the event itself),
however many subscribers it reaches; handing it over never blocks (each subscriber
owns a bounded queue and its own overflow policy).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

from hub.broker import Broker, Message

__all__ = ["Channels", "Subscriber"]


class Subscriber(Protocol):
    def offer(self, message: Message) -> None:
        """Take a message; must not block or raise."""

    def resync(self) -> None:
        """Messages may have been lost upstream: re-read from the log."""


class Channels:
    """This instance's channel -> subscribers table."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._subs: dict[str, set[Subscriber]] = {}
        # Per-channel lock (with its number of users) so that broker (un)subscribes of
        # one channel never interleave; dropped when nobody holds or waits for it.
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self._subs.values())

    @asynccontextmanager
    async def _locked(self, channel: str) -> AsyncIterator[None]:
        entry = self._locks.get(channel)
        if entry is None:
            entry = self._locks[channel] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[channel]

    async def add(self, channel: str, sub: Subscriber) -> None:
        """Register ``sub``; returns once the broker delivers ``channel`` here."""
        async with self._locked(channel):
            subs = self._subs.get(channel)
            if subs is None:
                await self.broker.subscribe(channel)
                subs = self._subs[channel] = set()
            subs.add(sub)

    async def remove(self, channel: str, sub: Subscriber) -> None:
        async with self._locked(channel):
            subs = self._subs.get(channel)
            if subs is None or sub not in subs:
                return
            subs.discard(sub)
            if not subs:
                del self._subs[channel]
                await self.broker.unsubscribe(channel)

    def deliver(self, channel: str, message: Message) -> None:
        subs = self._subs.get(channel)
        if subs:
            for sub in tuple(subs):
                sub.offer(message)

    def resync(self) -> None:
        for subs in tuple(self._subs.values()):
            for sub in tuple(subs):
                sub.resync()
