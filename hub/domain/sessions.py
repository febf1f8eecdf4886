"""This instance's open sessions (WebSocket, and any transport after it): how many each
subject holds, which ones the stall sweeper watches, and how many bytes of read pages
each tenant holds (:class:`ReadBudget`).

:class:`Sessions` is the one owner of both tables (centrifuge calls it the ``Hub``):
a transport asks :meth:`Sessions.admit` before it serves a principal and calls
:meth:`Sessions.release` once the connection is gone (not when it has done with it: a
closed socket whose client reads nothing still holds a descriptor and kernel buffers,
until the transport reaps it); it :meth:`Sessions.watch` es a connection
while the connection sends, and one sweeper task (not a timer per socket) asks every
watched connection to close itself if it has been stuck in one send for longer than
``stall_timeout`` (docs/protocol.md §5: 4008 after 30 s).

:class:`ReadBudget` bounds the memory one tenant makes the hub hold for its reads: a
replay page of a subscription, an answer of ``GET /api/streams/{id}``. A reader takes
the bytes its read may need before it reads (the worst case: :data:`EVENT_MAX` per event
asked for), gives back what the read did not keep at once, and the rest once the page
is sent; a tenant whose budget is used up waits, in order, while other tenants go on
(docs/protocol.md §8, ``HUB_TENANT_READ_BUDGET``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Protocol

from hub.domain.auth import Principal
from hub.errors import Busy
from hub.events import MAX_PAYLOAD_BYTES, Event

__all__ = ["EVENT_BYTES", "EVENT_MAX", "READ_BUDGET", "ReadBudget", "Sessions", "Watched",
           "clip"]  # fmt: skip

READ_BUDGET = 64 << 20  # bytes of read pages one tenant may hold at once (default)
SWEEP_SLICE = 500  # connections the stall sweeper checks before it lets the loop run others
# What an event costs in a page besides its payload (ids, ts, names, the object), about;
# and the most one event can cost (its payload at the limit, every other field too).
EVENT_BYTES, EVENT_MAX = 256, MAX_PAYLOAD_BYTES + 1024


def clip(events: list[Event], max_bytes: int) -> int:
    """Keep the first of ``events`` whose sizes add up to ``max_bytes`` at most (at least
    one), dropping the rest in place; returns the size of those kept. An event's size is
    ``len(payload)`` plus :data:`EVENT_BYTES`."""
    size = 0
    for i, event in enumerate(events):
        n = len(event.payload) + EVENT_BYTES
        if i and size + n > max_bytes:
            del events[i:]
            break
        size += n
    return size


class Watched(Protocol):
    """A connection the sweeper checks for stalls."""

    def check_stall(self, cutoff: float) -> None:
        """Close if one send has been waiting since before ``cutoff`` (``time.monotonic``)."""


class Sessions:
    """Open sessions per subject (a tenant in one role), capped; and the stall sweeper.

    ``start()``/``close()`` are called by the app's lifespan; ``close()`` is idempotent.
    """

    def __init__(self, *, max_per_subject: int, stall_timeout: float,
                 read_budget: int = READ_BUDGET) -> None:  # fmt: skip
        self.max_per_subject = max_per_subject
        self.stall_timeout = stall_timeout
        self.budget = ReadBudget(read_budget)  # bytes of read pages per tenant
        self._open: dict[tuple[str, str], int] = {}  # (tenant, role) -> sessions it holds
        self._watched: set[Watched] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Sessions open now."""
        return sum(self._open.values())

    def admit(self, who: Principal) -> bool:
        """Count one more session of ``who``; False (nothing counted) when it is at its cap."""
        subject = (who.tenant, who.role)
        held = self._open.get(subject, 0)
        if held >= self.max_per_subject:
            return False
        self._open[subject] = held + 1
        return True

    def release(self, who: Principal) -> None:
        """One session admitted for ``who`` has ended (its connection is gone)."""
        subject = (who.tenant, who.role)
        left = self._open.get(subject, 0) - 1
        if left > 0:
            self._open[subject] = left
        else:
            self._open.pop(subject, None)

    def watch(self, conn: Watched) -> None:
        """Have the sweeper check ``conn`` for stalls until :meth:`unwatch`."""
        self._watched.add(conn)

    def unwatch(self, conn: Watched) -> None:
        self._watched.discard(conn)

    def sweep(self, now: float) -> None:
        """Check every watched connection once, in one go (the sweeper task does the same
        in slices)."""
        cutoff = now - self.stall_timeout
        for conn in tuple(self._watched):
            conn.check_stall(cutoff)

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="hub-stall-sweeper")

    async def close(self) -> None:
        """Stop the sweeper (awaited). Idempotent."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _sweep(self) -> None:
        period = max(0.05, min(1.0, self.stall_timeout / 4))
        while True:
            await asyncio.sleep(period)
            await self._sweep_once(time.monotonic() - self.stall_timeout)

    async def _sweep_once(self, cutoff: float) -> None:
        """One pass, a slice at a time: in one go, a pass over 8,000 sockets held the loop
        ~10 ms each second (bench/city.py), a step's frames waiting behind it. A pass of its
        own, so that no connection stays referenced from here between two passes."""
        for i, conn in enumerate(tuple(self._watched), 1):
            conn.check_stall(cutoff)
            if i % SWEEP_SLICE == 0:
                await asyncio.sleep(0)


class ReadBudget:
    """Bytes of read pages each tenant holds, at most ``limit`` (one read alone may take
    more: a tenant holding nothing is never kept waiting).

    :meth:`acquire` waits, first come first served among one tenant's reads, until the
    bytes fit; :meth:`release` gives bytes back. Every acquire must be released, on
    every path: a read cancelled while it waits takes nothing.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used: dict[str, int] = {}  # tenant -> bytes it holds (none: absent)
        self._waiting: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}

    def used(self, tenant: str) -> int:
        return self._used.get(tenant, 0)

    def waiting(self, tenant: str) -> int:
        """Reads of ``tenant`` waiting for their bytes."""
        queue = self._waiting.get(tenant)
        return 0 if queue is None else len(queue)

    async def acquire(self, tenant: str, n: int) -> None:
        """Take ``n`` bytes of ``tenant``'s budget, waiting until they fit."""
        used = self._used.get(tenant, 0)
        queue = self._waiting.get(tenant)
        if queue is None and (not used or used + n <= self.limit):
            self._used[tenant] = used + n
            return
        if queue is None:
            queue = self._waiting[tenant] = deque()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, waiter)
        queue.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(tenant, n)  # granted, then cancelled before it could run
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(entry)
                self._grant(tenant)  # the ones behind may fit now
            raise

    async def acquire_within(self, tenant: str, n: int, seconds: float) -> None:
        """:meth:`acquire`, or :class:`~hub.errors.Busy` (503, nothing taken) after waiting
        ``seconds``: what an HTTP read waits for its tenant's budget."""
        try:
            async with asyncio.timeout(seconds):  # (not wait_for: see hub.timing.DueQueue)
                await self.acquire(tenant, n)
        except TimeoutError:
            raise Busy("too many reads of this tenant at once; retry later") from None

    def release(self, tenant: str, n: int) -> None:
        """Give back ``n`` bytes of ``tenant``'s and let its waiting reads in."""
        if n <= 0:
            return
        left = self._used.get(tenant, 0) - n
        if left > 0:
            self._used[tenant] = left
        else:
            self._used.pop(tenant, None)
        if tenant in self._waiting:
            self._grant(tenant)

    def _grant(self, tenant: str) -> None:
        queue = self._waiting.get(tenant)
        if queue is None:
            return
        while queue:
            n, waiter = queue[0]
            if waiter.done():  # cancelled: its task removes nothing more
                queue.popleft()
                continue
            used = self._used.get(tenant, 0)
            if used and used + n > self.limit:
                break
            queue.popleft()
            self._used[tenant] = used + n
            waiter.set_result(None)
        if not queue:
            del self._waiting[tenant]
