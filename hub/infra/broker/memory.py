"""The in-process broker (``HUB_REDIS_URL`` unset): one process, delivery at once."""

from __future__ import annotations

from collections.abc import Callable

from hub.infra.broker.base import Deliver, Notice, routes, stream_channel
from hub.infra.store.base import AppendResult

__all__ = ["MemoryBroker"]


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
