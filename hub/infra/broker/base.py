"""What every broker shares: the :class:`Broker` interface, the message types and the
channel names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hub.events import Event
from hub.infra.store.base import AppendResult

__all__ = [
    "PLATFORM_INBOX",
    "Broker",
    "Message",
    "Notice",
    "Receiver",
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


class Receiver(Protocol):
    """Where a broker delivers: this instance's local channels
    (:class:`~hub.domain.channels.Channels`)."""

    def deliver(self, channel: str, message: Message) -> None:
        """Hand ``message`` to the local subscribers of ``channel``; never blocks."""

    def resync(self) -> None:
        """Messages may have been lost (a reconnect): every subscriber re-reads the log."""


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
        # A membership the append ended carries the stream up to its ending event.
        for tenant, joined_at, left_at in result.left:
            if joined_at <= event.pos <= left_at:
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

    async def start(self, receiver: Receiver) -> None:
        """Begin delivering to ``receiver``: this instance's own publishes on every channel
        they route to, another instance's on the channels subscribed here; and tell it to
        resync when messages may have been lost (a reconnect)."""

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
