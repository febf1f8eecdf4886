"""Brokers: how committed events travel between hub instances.

A broker carries two kinds of message on named channels: committed events
(:class:`~hub.events.Event`) and :class:`Notice` s (ephemeral frames such as a
driver's location, never stored). Channels are ``stream:{streamId}``,
``inbox:{tenant}`` and ``inbox:*`` (the platform's view of every stream).

- :class:`MemoryBroker` — this process only (``HUB_REDIS_URL`` unset).
- ``RedisBroker`` (``hub.infra.broker.redis``) — pub/sub between instances; lossy by
  nature, so it tells its :class:`Receiver` to resync after a reconnect and
  subscribers repair every gap from the durable log.

The broker never decides who may see what: it delivers to its :class:`Receiver`, the
local :class:`~hub.domain.channels.Channels`, which hands messages to subscribers.
"""

from __future__ import annotations

from hub.infra.broker.base import (
    PLATFORM_INBOX,
    Broker,
    Message,
    Notice,
    Receiver,
    inbox_channel,
    routes,
    stream_channel,
)
from hub.infra.broker.memory import MemoryBroker

__all__ = [
    "PLATFORM_INBOX",
    "Broker",
    "MemoryBroker",
    "Message",
    "Notice",
    "Receiver",
    "inbox_channel",
    "routes",
    "stream_channel",
]
