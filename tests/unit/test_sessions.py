"""The sessions registry: a cap per subject and the stall sweeper."""

from __future__ import annotations

import asyncio

from hub.domain.sessions import Sessions
from tests.unit.parts import CUSTOMER, RESTAURANT


class Conn:
    """A watched connection that keeps the cutoffs it was checked against."""

    def __init__(self, sending_since: float | None) -> None:
        self.sending_since = sending_since
        self.closed = False
        self.closing = asyncio.Event()

    def check_stall(self, cutoff: float) -> None:
        if self.sending_since is not None and self.sending_since < cutoff:
            self.closed = True
            self.closing.set()


def test_a_subject_is_capped_and_a_release_frees_a_place() -> None:
    """admit refuses a subject at its cap (others unaffected) until one is released."""
    sessions = Sessions(max_per_subject=2, stall_timeout=30)
    assert sessions.admit(CUSTOMER)
    assert sessions.admit(CUSTOMER)
    assert not sessions.admit(CUSTOMER)
    assert sessions.admit(RESTAURANT)
    sessions.release(CUSTOMER)
    assert sessions.admit(CUSTOMER)
    assert len(sessions) == 3


async def test_a_sweep_closes_only_what_has_been_stuck_longer_than_the_timeout() -> None:
    """A sweep at time t closes a connection sending since before t - stall_timeout."""
    sessions = Sessions(max_per_subject=1, stall_timeout=30)
    stuck, busy, idle, gone = Conn(100.0), Conn(120.0), Conn(None), Conn(0.0)
    for conn in (stuck, busy, idle, gone):
        sessions.watch(conn)
    sessions.unwatch(gone)
    sessions.sweep(now=140.0)
    assert (stuck.closed, busy.closed, idle.closed, gone.closed) == (True, False, False, False)


async def test_the_sweeper_runs_until_closed() -> None:
    """Started, the sweeper checks watched connections by itself; close stops it, twice safely."""
    sessions = Sessions(max_per_subject=1, stall_timeout=0.2)
    conn = Conn(0.0)  # time.monotonic() is far past 0.2
    sessions.watch(conn)
    await sessions.start()
    async with asyncio.timeout(5):
        await conn.closing.wait()
    await sessions.close()
    await sessions.close()


async def test_the_sweeper_lets_the_loop_run_between_slices() -> None:
    """A pass over many connections is cut in slices: other tasks run between them, so one
    pass does not hold the loop for every socket of the instance at once."""
    sessions = Sessions(max_per_subject=1, stall_timeout=0.2)
    order: list[str] = []

    class Counted(Conn):
        def check_stall(self, cutoff: float) -> None:
            order.append("check")
            super().check_stall(cutoff)

    conns = [Counted(0.0) for _ in range(2_000)]
    for conn in conns:
        sessions.watch(conn)

    async def other() -> None:
        while not all(c.closed for c in conns):
            order.append("other")
            await asyncio.sleep(0)

    await sessions.start()
    try:
        async with asyncio.timeout(5):
            await other()
    finally:
        await sessions.close()
    assert all(c.closed for c in conns)
    first, last = order.index("check"), len(order) - order[::-1].index("check")
    longest = max(len(run) for run in "".join(
        "c" if x == "check" else " " for x in order[first:last]).split())  # fmt: skip
    assert longest <= 500, longest  # never every connection in one go
    assert "other" in order[first:last]
