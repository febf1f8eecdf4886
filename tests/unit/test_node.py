"""The stream node on real parts: a commit's way to the subscribers, who may read and
write, and the members it remembers."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.errors import Forbidden, NotFound, Unavailable
from hub.events import Opcode
from hub.infra.broker import PLATFORM_INBOX, Message
from hub.infra.store import StreamInfo
from hub.infra.store.file import FileStore
from tests.unit.parts import (
    CUSTOMER,
    DRIVER,
    PLATFORM,
    RESTAURANT,
    STRANGER,
    STREAM,
    event,
    order_create,
    running_node,
)


class Recorder:
    """A subscriber that keeps what it is offered."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def offer(self, message: Message) -> None:
        self.messages.append(message)

    def resync(self) -> None:
        pass


class CountingStore(FileStore):
    """The embedded store, counting how often the node asks it for a stream's info."""

    infos = 0

    async def stream_info(self, stream_id: str) -> StreamInfo | None:
        self.infos += 1
        return await super().stream_info(stream_id)


async def test_an_append_reaches_the_subscribers_before_it_is_answered(tmp_path: Path) -> None:
    """Committed events travel store -> node -> broker -> channels -> subscribers (the
    stream's, each member's inbox, the platform's) before append returns."""
    async with running_node(tmp_path) as node:
        stream, inbox, platform = Recorder(), Recorder(), Recorder()
        await node.subscribe("stream:" + STREAM, stream)
        await node.subscribe("inbox:" + RESTAURANT.tenant, inbox)
        await node.subscribe(PLATFORM_INBOX, platform)
        result = await node.append(CUSTOMER, STREAM, [order_create()])
        paid = await node.append(CUSTOMER, STREAM, [event(Opcode.INVOICE_PAYMENT)])
        sent = result.events + paid.events
        assert stream.messages == sent
        assert inbox.messages == sent
        assert platform.messages == sent
        assert [e.seq for e in sent] == [1, 2]


async def test_an_unsubscribed_subscriber_hears_nothing_more(tmp_path: Path) -> None:
    """After unsubscribe, the node's commits no longer reach the subscriber."""
    async with running_node(tmp_path) as node:
        sub = Recorder()
        await node.subscribe("stream:" + STREAM, sub)
        created = await node.append(CUSTOMER, STREAM, [order_create()])
        await node.unsubscribe("stream:" + STREAM, sub)
        await node.append(CUSTOMER, STREAM, [event()])
        assert sub.messages == created.events


async def test_members_of_a_commit_are_remembered(tmp_path: Path) -> None:
    """Once the node committed the event naming a customer or a restaurant, their appends
    need no read of the stream's info from the store. A driver's do: its membership ends
    at a TASK_UNASSIGN that another instance may have written."""
    store = CountingStore(f"file:{tmp_path / 'streams.db'}")
    async with running_node(tmp_path, store=store) as node:
        await node.append(CUSTOMER, STREAM, [order_create()])
        asked = store.infos
        await node.append(RESTAURANT, STREAM, [event(Opcode.TASK_CREATE)])
        await node.append(CUSTOMER, STREAM, [event(Opcode.INVOICE_PAYMENT)])
        assert store.infos == asked
        await node.commit(STREAM, [event(Opcode.TASK_ASSIGN, payload={"driver": DRIVER.tenant})])
        await node.append(DRIVER, STREAM, [event(Opcode.ORDER_SHIP)])
        assert store.infos == asked + 1


async def test_a_driver_unassigned_elsewhere_may_no_longer_append(tmp_path: Path) -> None:
    """A TASK_UNASSIGN committed through another node (another instance) ends the driver's
    membership here too: its next append is refused and writes nothing."""
    url = f"file:{tmp_path / 'streams.db'}"
    async with running_node(tmp_path) as here:
        await here.append(CUSTOMER, STREAM, [order_create()])
        await here.commit(STREAM, [event(Opcode.TASK_ASSIGN, payload={"driver": DRIVER.tenant})])
        await here.append(DRIVER, STREAM, [event(Opcode.ORDER_SHIP)])  # a member: remembered
        other = FileStore(url)
        await other.open()
        try:
            await other.append(STREAM, [event(Opcode.TASK_UNASSIGN, payload={
                "driver": DRIVER.tenant, "reason": "declined"})])  # fmt: skip
        finally:
            await other.close()
        before = (await here.stream_info(STREAM)).last_seq  # type: ignore[union-attr]
        with pytest.raises(Forbidden):
            await here.append(DRIVER, STREAM, [event(Opcode.ORDER_SHIP)])
        assert (await here.stream_info(STREAM)).last_seq == before  # type: ignore[union-attr]


async def test_a_non_member_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """A tenant the stream does not name may neither read nor append (403), whether the
    stream exists or not; the platform gets 404 for a missing stream."""
    async with running_node(tmp_path) as node:
        await node.append(CUSTOMER, STREAM, [order_create()])
        with pytest.raises(Forbidden):
            await node.read(STRANGER, STREAM)
        with pytest.raises(Forbidden):
            await node.append(STRANGER, STREAM, [event(Opcode.INVOICE_PAYMENT)])
        with pytest.raises(Forbidden):
            await node.read(STRANGER, "ord-missing")
        with pytest.raises(NotFound):
            await node.read(PLATFORM, "ord-missing")
        assert [e.seq for e in await node.read_events(STREAM, 0, 100, archived=False)] == [1]
        assert (await node.read(CUSTOMER, STREAM)).last_seq == 1


async def test_an_archived_stream_missing_from_the_archive_is_unavailable(tmp_path: Path) -> None:
    """Reading an archived stream whose archive object cannot be found is a 503, not an
    empty stream."""
    async with running_node(tmp_path) as node:
        with pytest.raises(Unavailable):
            await node.read_events(STREAM, 0, 100, archived=True)
