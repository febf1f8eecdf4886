"""One subscription's delivery state, on a real embedded store and the memory broker:
replay, then live, exactly once, through overflows, gaps, resyncs and archiving."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from hub.domain.archiver import Archiver
from hub.domain.subscription import REPLAY_PAGE, open_inbox, open_stream
from hub.events import Opcode
from hub.infra.broker import MemoryBroker
from tests.unit.parts import (
    CUSTOMER,
    PLATFORM,
    RESTAURANT,
    STREAM,
    counter,
    drain,
    event,
    order_create,
    other_instance,
    running_node,
    seqs,
)


async def test_replay_then_live_frame_then_live_events(tmp_path: Path) -> None:
    """Events after since are replayed, then the live frame, then each new event once."""
    async with running_node(tmp_path) as node:
        await node.commit(STREAM, [order_create(), event(), event()], first=True)
        sub = await open_stream(node, CUSTOMER, STREAM, 1, queue_max=16)
        frames = await drain(sub)
        assert seqs(frames) == [2, 3]
        assert frames[-1] == {"type": "live", "streamId": STREAM, "seq": 3}

        await node.commit(STREAM, [event()])
        await node.commit(STREAM, [event(), event()])
        assert seqs(await drain(sub)) == [4, 5, 6]
        assert await drain(sub) == []
        await sub.close()


async def test_live_event_sent_once_in_order(tmp_path: Path) -> None:
    """A live event is sent exactly once, as the event frame of the contract."""
    async with running_node(tmp_path) as node:
        await node.commit(STREAM, [order_create()], first=True)
        sub = await open_stream(node, CUSTOMER, STREAM, 0, queue_max=16)
        assert [f["type"] for f in await drain(sub)] == ["event", "live"]
        result = await node.commit(STREAM, [event(Opcode.INVOICE_PAYMENT)])
        assert await drain(sub) == [json.loads(result.events[0].frame)]
        assert await drain(sub) == []
        await sub.close()


async def test_events_arriving_during_the_replay_are_neither_doubled_nor_lost(
    tmp_path: Path,
) -> None:
    """An event both read by the replay and delivered live is sent once; one committed
    after the replay's read comes after the live frame; none is missing."""
    async with running_node(tmp_path) as node:
        created = await node.commit(STREAM, [order_create(), event()], first=True)
        sub = await open_stream(node, CUSTOMER, STREAM, 0, queue_max=16)
        await node.commit(STREAM, [event()])  # before the replay's read: the log has it
        await sub.read()  # the replay's first page: seq 1..3
        sub.offer(created.events[1])  # delivered late by the broker: already in the page
        await node.commit(STREAM, [event()])  # after the read: queued live
        frames = await drain(sub)
        assert [f["type"] for f in frames] == ["event"] * 3 + ["live", "event"]
        assert seqs(frames) == [1, 2, 3, 4]


async def test_concurrent_commits_while_subscribing_reach_it_exactly_once(
    tmp_path: Path,
) -> None:
    """Commits racing the subscription's start and replay: every seq once, in order."""
    async with running_node(tmp_path) as node:
        await node.commit(STREAM, [order_create()], first=True)

        async def writer() -> None:
            for _ in range(40):
                await node.commit(STREAM, [event()])

        task = asyncio.create_task(writer())
        sub = await open_stream(node, CUSTOMER, STREAM, 0, queue_max=1024)
        got: list[int] = []
        async with asyncio.timeout(10):  # a lost event never comes: fail, do not hang
            while got[-1:] != [41]:
                got += seqs(await drain(sub))
                await asyncio.sleep(0)
        await task
        assert got == list(range(1, 42))


async def test_replay_longer_than_a_page_is_read_page_by_page(tmp_path: Path) -> None:
    """A replay of more than one page sends every event once, then the live frame."""
    async with running_node(tmp_path) as node:
        await node.commit(STREAM, [order_create()], first=True)
        for _ in range(REPLAY_PAGE // 100 + 1):
            await node.commit(STREAM, [event() for _ in range(100)])
        sub = await open_stream(node, CUSTOMER, STREAM, 0, queue_max=16)
        frames = await drain(sub)
        total = 1 + (REPLAY_PAGE // 100 + 1) * 100
        assert seqs(frames) == list(range(1, total + 1))
        assert frames[-1] == {"type": "live", "streamId": STREAM, "seq": total}


async def test_queue_overflow_falls_back_to_the_log_then_goes_live_again(tmp_path: Path) -> None:
    """A full queue is dropped and counted; the events come from the log, in order, once;
    then live events are queued again."""
    async with running_node(tmp_path) as node:
        await node.commit(STREAM, [order_create()], first=True)
        sub = await open_stream(node, CUSTOMER, STREAM, 0, queue_max=2)
        await drain(sub)
        for _ in range(5):  # nothing sent meanwhile: the third one overflows
            await node.commit(STREAM, [event()])
        assert sub.fallback
        assert counter(node, "hub_ws_slow_consumer_fallbacks") == 1
        assert seqs(await drain(sub)) == [2, 3, 4, 5, 6]

        await node.commit(STREAM, [event()])
        assert not sub.fallback  # live again: from the queue, not the log
        assert seqs(await drain(sub)) == [7]


async def test_a_gap_in_live_events_is_filled_from_the_log(tmp_path: Path) -> None:
    """An event another instance wrote (never delivered here) is read from the log when the
    next live event shows the gap, and both are sent in order."""
    async with running_node(tmp_path) as node, other_instance(tmp_path) as (other, _):
        await node.commit(STREAM, [order_create()], first=True)
        sub = await open_stream(node, CUSTOMER, STREAM, 0, queue_max=16)
        await drain(sub)
        await other.commit(STREAM, [event()])  # seq 2: no broker links the instances
        await node.commit(STREAM, [event()])  # seq 3 arrives live: a gap after 1
        assert seqs(await drain(sub)) == [2, 3]


async def test_a_resync_backfills_what_the_broker_lost(tmp_path: Path) -> None:
    """After a resync (the broker reconnected) the subscription reads the log after the
    last seq it sent, and counts what it backfilled."""
    async with running_node(tmp_path) as node, other_instance(tmp_path) as (other, _):
        await node.commit(STREAM, [order_create()], first=True)
        stream = await open_stream(node, CUSTOMER, STREAM, 0, queue_max=16)
        inbox = await open_inbox(node, RESTAURANT, 0, queue_max=16)
        await drain(stream)
        await drain(inbox)
        await other.commit(STREAM, [event(), event()])
        assert await drain(stream) == []  # nothing arrived
        stream.resync()
        inbox.resync()
        assert seqs(await drain(stream)) == [2, 3]
        assert seqs(await drain(inbox)) == [2, 3]
        assert counter(node, "hub_backfilled_events") == 4


async def test_archiving_ends_the_subscription_with_the_archived_frame(tmp_path: Path) -> None:
    """When the stream is archived, what was not sent yet comes from the archive, then the
    archived frame, and the subscription has ended."""
    broker = MemoryBroker()
    async with (
        running_node(tmp_path, broker=broker) as node,
        other_instance(tmp_path) as (other, _),
    ):
        await node.commit(STREAM, [order_create()], first=True)
        sub = await open_stream(node, CUSTOMER, STREAM, 0, queue_max=16)
        await drain(sub)
        await node.commit(STREAM, [event()])  # queued, not sent before archiving
        await other.commit(STREAM, [event()])  # never delivered here
        archiver = Archiver(node.store, node.archive, broker, node.metrics, delay=0)
        assert await archiver.archive_now(STREAM) == 3  # the store holds none of them now
        frames = await drain(sub)
        assert seqs(frames) == [2, 3]
        assert frames[-1] == {"type": "archived", "streamId": STREAM}
        assert sub.ended


async def test_an_archiving_announced_elsewhere_is_found_by_a_resync(tmp_path: Path) -> None:
    """A stream archived by another instance whose notice was lost: the resync finds the
    stream archived, sends the rest from the archive, then the archived frame."""
    async with running_node(tmp_path) as node, other_instance(tmp_path) as (other, archiver):
        await node.commit(STREAM, [order_create()], first=True)
        sub = await open_stream(node, CUSTOMER, STREAM, 0, queue_max=16)
        await drain(sub)
        await other.commit(STREAM, [event()])
        await archiver.archive_now(STREAM)
        assert await drain(sub) == []  # nothing reached this instance
        sub.resync()
        frames = await drain(sub)
        assert seqs(frames) == [2]
        assert frames[-1] == {"type": "archived", "streamId": STREAM}
        assert sub.ended


async def test_subscribing_to_an_archived_stream_replays_the_archive(tmp_path: Path) -> None:
    """An archived stream's subscription replays from the archive after since, sends no
    live frame, then the archived frame."""
    async with running_node(tmp_path) as node:
        await node.commit(STREAM, [order_create(), event(), event()], first=True)
        await Archiver(node.store, node.archive, MemoryBroker(), node.metrics,
                       delay=0).archive_now(STREAM)  # fmt: skip
        sub = await open_stream(node, CUSTOMER, STREAM, 1, queue_max=16)
        frames = await drain(sub)
        assert seqs(frames) == [2, 3]
        assert frames[-1] == {"type": "archived", "streamId": STREAM}
        assert [f["type"] for f in frames].count("live") == 0
        assert sub.ended


async def test_the_platform_may_follow_a_stream_before_it_exists(tmp_path: Path) -> None:
    """The platform's subscription to a stream not written yet gets its events live."""
    async with running_node(tmp_path) as node:
        sub = await open_stream(node, PLATFORM, STREAM, 0, queue_max=16)
        assert await drain(sub) == [{"type": "live", "streamId": STREAM, "seq": 0}]
        await node.commit(STREAM, [order_create()], first=True)
        assert seqs(await drain(sub)) == [1]
