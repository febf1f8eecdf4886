"""hub.timing's DueQueue: the keys of the archiver's, the order timers' and the GPS
writer's schedules, handed out when their time comes."""

from __future__ import annotations

import asyncio
import time

from hub.timing import DueQueue


async def test_next_hands_out_keys_in_time_order() -> None:
    queue: DueQueue[str] = DueQueue()
    now = time.monotonic()
    queue.put("later", now + 0.05)
    queue.put("now", now)
    assert await queue.next() == "now"
    t0 = time.monotonic()
    assert await queue.next() == "later"
    assert time.monotonic() - t0 >= 0.03


async def test_a_waiting_next_cancelled_as_a_key_arrives_is_cancelled() -> None:
    """The task that waits in next() for a key's time is cancelled (its owner's close) in
    the very turn in which another key is put. On Python 3.11 asyncio.wait_for returned
    instead of raising then (CPython gh-86296): next() went on waiting, the cancellation
    lost, and its owner's close waited forever for the task."""
    queue: DueQueue[str] = DueQueue()
    queue.put("far", time.monotonic() + 3600)
    task = asyncio.create_task(queue.next())
    await asyncio.sleep(0.01)  # waiting for "far"
    queue.put("another", time.monotonic() + 3600)  # wakes it...
    task.cancel()  # ...in the same turn as its cancellation
    done, _ = await asyncio.wait([task], timeout=1)
    assert task in done, "next() swallowed its cancellation and went on waiting"
    assert task.cancelled()
