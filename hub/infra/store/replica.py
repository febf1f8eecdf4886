"""The streams store on a libSQL primary and a read replica (``HUB_STREAMS_READ_DB``).

:class:`ReplicaStore` is a :class:`hub.infra.store.Store` over two
:class:`~hub.infra.store.remote.RemoteStore` instances: the primary (``HUB_STREAMS_DB``)
and a read replica of it (``HUB_STREAMS_READ_DB``; with sqld, a server started with
``--primary-grpc-url``, docs/deploy.md "Primary and replica"). Everything that writes or
decides goes to the primary: appends, ``stream_info`` (the members and last ``seq`` that
authorize an append or a read), ``stream_opcodes``, ``find_streams`` (dispatch, timers,
the GPS, the archiver), ``delete_stream`` and ``ping``. The event pages go to the replica:
``read_stream`` and ``read_inbox``, which serve replays, gap repairs, resyncs, inbox hints
and ``GET /api/streams/{id}``, the bulk of what the log is read for.

**The rule: the replica's page is used only as far as it is known to be complete.** A
replica is some past state of the primary, whole transactions of it (sqld ships the
primary's WAL frames and applies them commit by commit). ``seq`` grows within a stream
and ``pos`` across them in commit order, and no committed row is changed afterwards
(only an archived stream's events are deleted, after they went to the archive). Hence:

- **A full page** (``limit`` events) is exactly the primary's page: the events after
  ``since`` that the replica holds are the first ones the primary holds, and anything
  committed later comes after them. It is returned as it is, and the primary is not asked.
  (For an inbox the memberships that select the events are rows of the same
  transactions: a span begins at the event naming the tenant and ends at the one ending
  it, so an event the replica holds is in the same inboxes on the primary.)
- **A short page** may be short because the replica lags. It is completed from the
  primary: the primary is asked for the events after the replica's last one (or after
  ``since`` when the replica had none), as many as the page has room for, and the page
  is the replica's events followed by the primary's. The primary's answer is the tail
  of its own page, read during the call, so the whole page is what the primary alone
  would have answered then. When the replica is up to date (the usual case) that is an
  empty answer from the primary's index, one cheap round trip; when it lags, the primary
  sends only what the replica lacked.

So a read through this store misses nothing the primary held when the read was made,
the same guarantee as reading the primary alone: a subscriber that saw a live event
with ``seq`` N and reads the log for the gap below it gets every ``seq`` up to N, from
the replica as far as it has them and from the primary for the rest; a replay after
subscribing includes everything committed before it; the archiver reads all of a
stream before deleting it. No caller needs to pass what it knows (the
:class:`~hub.infra.store.Store` interface is unchanged) and the embedded store is
unaffected. The primary failing fails a short page as it fails any read (503).

The one difference from the primary alone: a replica that has not yet applied an
archiving (:meth:`delete_stream`) still holds the stream's events, and a page may return
them. They are the events the archive holds, and whether a stream is archived is read on
the primary (``stream_info``), so readers move on to the archive as they would.

**A replica that fails or is slow is skipped.** One request to it may take
:data:`REPLICA_TIMEOUT_S`; past that, or on any error (down, refusing, not yet holding
the schema), the read goes to the primary whole and the replica is left alone for
:data:`REPLICA_RETRY_S` (every page from the primary meanwhile), then tried again.
Whatever the replica does, it adds at most :data:`REPLICA_TIMEOUT_S` to a read (the
primary's own time-outs bound the rest). Each change (failing, answering again) is logged once.

Every statement sent to the replica is a single ``SELECT``: sqld runs those on the
replica itself, while a transaction (``BEGIN``, hence a libsql-client batch) is sent on
to the primary, and so is every statement a new replica gets before it has applied the
primary's first frames. :attr:`ReplicaStore.reads` counts the pages by where they came
from.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from hub.events import Event, NewEvent
from hub.infra.store.base import AppendResult, CommitListener, StreamInfo
from hub.infra.store.remote import RemoteStore

__all__ = ["REPLICA_RETRY_S", "REPLICA_TIMEOUT_S", "ReplicaStore"]

log = logging.getLogger("hub.store")

# Limits (see README "Limits").
REPLICA_TIMEOUT_S = 1.0  # one request to the replica; then the primary
REPLICA_RETRY_S = 5.0  # a replica that failed is left alone this long


class ReplicaStore:
    """The streams store on a primary and a read replica (see the module docstring)."""

    def __init__(self, primary: RemoteStore, replica: RemoteStore) -> None:
        self.primary = primary
        self.replica = replica
        # Pages read, by source: "replica" (full, or completed by an empty answer of the
        # primary), "completed" (the primary added what the replica lacked), "primary"
        # (the replica failed or is being left alone).
        self.reads: Counter[str] = Counter()
        self._resting_until = 0.0  # time.monotonic() until which the replica is skipped
        self._failing: str | None = None  # why the replica last failed (None: it answers)

    # -- lifecycle -----------------------------------------------------------------

    async def open(self, listener: CommitListener | None = None) -> None:
        """Open the primary (schema, migrations), then the replica (nothing written; a
        replica that is down now is only skipped until it answers)."""
        await self.primary.open(listener)
        try:
            await self.replica.open()
        except BaseException:
            await self.primary.close()
            raise

    async def close(self) -> None:
        await self.primary.close()
        await self.replica.close()

    # -- the primary -------------------------------------------------------------------

    async def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        first: bool = False,
        expected: int | None = None,
    ) -> AppendResult:
        return await self.primary.append(stream_id, events, first=first, expected=expected)

    async def delete_stream(self, stream_id: str) -> int:
        return await self.primary.delete_stream(stream_id)

    async def stream_info(self, stream_id: str) -> StreamInfo | None:
        return await self.primary.stream_info(stream_id)

    async def stream_opcodes(self, stream_id: str, among: Sequence[int]) -> dict[int, int]:
        return await self.primary.stream_opcodes(stream_id, among)

    async def find_streams(
        self,
        *,
        having: int | None = None,
        lacking: int | Sequence[int] | None = None,
        member: str | None = None,
        limit: int = 1000,
    ) -> list[str]:
        return await self.primary.find_streams(
            having=having, lacking=lacking, member=member, limit=limit
        )

    async def streams_of_members(
        self,
        members: Sequence[str],
        *,
        having: int | None = None,
        lacking: int | Sequence[int] | None = None,
        limit: int = 1000,
    ) -> dict[str, list[str]]:
        return await self.primary.streams_of_members(
            members, having=having, lacking=lacking, limit=limit
        )

    async def ping(self) -> None:
        await self.primary.ping()

    # -- pages: the replica, completed from the primary ------------------------------

    async def read_stream(self, stream_id: str, since: int, limit: int) -> list[Event]:
        page = await self._from_replica(lambda: self.replica.read_stream(stream_id, since, limit))
        if page is None:
            return await self.primary.read_stream(stream_id, since, limit)
        if len(page) >= limit:
            self.reads["replica"] += 1
            return page
        after = page[-1].seq if page else since
        return self._completed(page, await self.primary.read_stream(
            stream_id, after, limit - len(page)))  # fmt: skip

    async def read_inbox(self, tenant: str | None, since: int, limit: int) -> list[Event]:
        page = await self._from_replica(lambda: self.replica.read_inbox(tenant, since, limit))
        if page is None:
            return await self.primary.read_inbox(tenant, since, limit)
        if len(page) >= limit:
            self.reads["replica"] += 1
            return page
        after = page[-1].pos if page else since
        return self._completed(page, await self.primary.read_inbox(
            tenant, after, limit - len(page)))  # fmt: skip

    def _completed(self, page: list[Event], rest: list[Event]) -> list[Event]:
        self.reads["completed" if rest else "replica"] += 1
        return page + rest

    async def _from_replica(self, read: Callable[[], Awaitable[list[Event]]]) -> list[Event] | None:
        """The replica's page; None when it failed now or lately (read the primary)."""
        if time.monotonic() < self._resting_until:
            self.reads["primary"] += 1
            return None
        try:
            page = await read()
        except Exception as exc:  # Unavailable, or an answer that is not a page of events
            self._resting_until = time.monotonic() + REPLICA_RETRY_S
            self.reads["primary"] += 1
            if self._failing is None:
                log.warning("the streams DB's read replica failed, reading from the primary"
                            " (trying it again every %g s): %s", REPLICA_RETRY_S, exc)  # fmt: skip
            self._failing = str(exc) or type(exc).__name__
            return None
        if self._failing is not None:
            self._failing = None
            log.warning("the streams DB's read replica answers again")
        return page
