"""Brokers: how committed events travel between hub instances.

A broker carries two kinds of message on named channels: committed events
(:class:`~hub.events.Event`) and :class:`Notice` s (ephemeral frames such as a
driver's location, never stored). Channels are ``stream:{streamId}``,
``inbox:{tenant}`` and ``inbox:*`` (the platform's view of every stream).

- :class:`MemoryBroker` — this process only (``HUB_REDIS_URL`` unset).
- ``RedisBroker`` (``hub.broker_redis``) — pub/sub between instances; lossy by
  nature, so it reports reconnects through ``on_resync`` and subscribers repair
  every gap from the durable log.

The broker never decides who may see what: it delivers to the local
:class:`~hub.channels.Channels`, which hands messages to subscribers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hub.events import Event
from hub.store import AppendResult

__all__ = [
    "PLATFORM_INBOX",
    "Broker",
    "Deliver",
    "MemoryBroker",
    "Message",
    "Notice",
    "inbox_channel",
    "routes",
    "stream_channel",
]

PLATFORM_INBOX = "inbox:*"


def stream_channel(stream_id: str) -> str:
    return "stream:" + stream_id


def inbox_channel(tenant: str | None) -> str:
    return PLATFORM_INBOX if tenant is None else "inbox:" + tenant


@dataclass(frozen=True, slots=True)
class Notice:
    """An ephemeral frame for a stream's subscribers (not stored, may be dropped).

    ``final`` notices (the stream was archived) end the subscription after delivery.
    """

    stream_id: str
    frame: str
    final: bool = False


Message = Event | Notice
Deliver = Callable[[str, Message], None]


def routes(result: AppendResult) -> list[tuple[str, Event]]:
    """Every (channel, event) an append's new events go to, in commit order."""
    out: list[tuple[str, Event]] = []
    members = sorted(result.members.items())
    stream = stream_channel(result.stream_id)
    for event in result.new:
        out.append((stream, event))
        for tenant, joined_at in members:
            if event.pos >= joined_at:
                out.append((inbox_channel(tenant), event))
        out.append((PLATFORM_INBOX, event))
    return out


class Broker(Protocol):
    """Publish/subscribe between hub instances.

    ``ordered`` is True when messages arrive in commit (``pos``) order across all
    streams, as in one process; when False, inbox subscribers treat live events as
    hints and read them from the store in ``pos`` order.
    """

    ordered: bool

    async def start(self, deliver: Deliver, on_resync: Callable[[], None]) -> None:
        """Begin delivering messages of subscribed channels to ``deliver``.

        ``on_resync`` is called when messages may have been lost (a reconnect).
        """

    async def close(self) -> None:
        """Stop delivering and release connections. Idempotent."""

    def publish(self, result: AppendResult) -> None:
        """Send an append's new events on; called in commit order, never blocks."""

    def publish_notice(self, notice: Notice) -> None:
        """Send an ephemeral frame to a stream's subscribers; never blocks."""

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel`` from now on (returns once the subscription is live)."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""

    def health(self) -> str:
        """``"ok"`` or a short description of what is failing."""


class MemoryBroker:
    """The in-process broker: publishing delivers at once to this process's channels."""

    ordered = True

    def __init__(self) -> None:
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver, on_resync: Callable[[], None]) -> None:
        self._deliver = deliver

    async def close(self) -> None:
        self._deliver = None

    def publish(self, result: AppendResult) -> None:
        deliver = self._deliver
        if deliver is None:
            return
        for channel, event in routes(result):
            deliver(channel, event)

    def publish_notice(self, notice: Notice) -> None:
        if self._deliver is not None:
            self._deliver(stream_channel(notice.stream_id), notice)

    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    def health(self) -> str:
        return "ok"
