"""The local registry of subscribers: which subscription listens to which channel.

:class:`Channels` subscribes the broker to a channel when its first local subscriber
arrives and unsubscribes when the last one leaves. It is the broker's
:class:`~hub.infra.broker.Receiver`: the broker calls :meth:`Channels.deliver` with the
messages this instance published and those of the channels it subscribed to (a channel
with no local subscriber is dropped here), and :meth:`Channels.resync` when
messages may have been lost; both hand on to every local :class:`Subscriber` (a
:class:`~hub.domain.subscription.Subscription`). A message is encoded once (by the event
itself), however many subscribers it reaches; handing it over never blocks (each
subscriber owns a bounded queue and its own overflow policy).
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
    """This instance's channel -> subscribers table; the broker's receiver."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
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
                await self._broker.subscribe(channel)
                subs = self._subs[channel] = set()
            subs.add(sub)

    async def remove(self, channel: str, sub: Subscriber) -> None:
        """Unregister ``sub`` (nothing if it is not there); the last one out unsubscribes
        the broker."""
        async with self._locked(channel):
            subs = self._subs.get(channel)
            if subs is None or sub not in subs:
                return
            subs.discard(sub)
            if not subs:
                del self._subs[channel]
                await self._broker.unsubscribe(channel)

    # Receiver (called by the broker; never blocks).
    def deliver(self, channel: str, message: Message) -> None:
        """Offer ``message`` to every local subscriber of ``channel``."""
        subs = self._subs.get(channel)
        if subs:
            for sub in tuple(subs):
                sub.offer(message)

    def resync(self) -> None:
        """Tell every local subscriber to re-read the log (messages may have been lost)."""
        for subs in tuple(self._subs.values()):
            for sub in tuple(subs):
                sub.resync()
