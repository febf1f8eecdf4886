"""The in-process broker (``HUB_REDIS_URL`` unset): one process, delivery at once."""

from __future__ import annotations

from hub.infra.broker.base import Notice, Receiver, routes, stream_channel
from hub.infra.store.base import AppendResult

__all__ = ["MemoryBroker"]


class MemoryBroker:
    """The in-process broker: publishing delivers at once to this process's channels."""

    ordered = True

    def __init__(self) -> None:
        self._receiver: Receiver | None = None

    async def start(self, receiver: Receiver) -> None:
        self._receiver = receiver

    async def close(self) -> None:
        self._receiver = None

    def publish(self, result: AppendResult) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        for channel, event in routes(result):
            receiver.deliver(channel, event)

    def publish_notice(self, notice: Notice) -> None:
        if self._receiver is not None:
            self._receiver.deliver(stream_channel(notice.stream_id), notice)

    async def subscribe(self, channel: str) -> None:
        return None

    async def unsubscribe(self, channel: str) -> None:
        return None

    def health(self) -> str:
        return "ok"
