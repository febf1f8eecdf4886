"""The local registry of subscribers: which connection listens to which channel.

:class:`Channels` subscribes the broker to a channel when its first local subscriber
arrives and unsubscribes when the last one leaves, and hands each message to every
local subscriber of its channel. A message is encoded once (by the event itself),
however many subscribers it reaches; handing it over never blocks (each subscriber
owns a bounded queue and its own overflow policy).
"""

from __future__ import annotations

from typing import Protocol

from hub.infra.broker import Broker, Message
from hub.timing import KeyedLocks

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
        # Broker (un)subscribes of one channel never interleave.
        self._locked: KeyedLocks[str] = KeyedLocks()

    def __len__(self) -> int:
        return sum(len(s) for s in self._subs.values())

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
