"""Step 11: archive finished streams to object storage, then delete them from the streams DB.

Order of work, so that nothing is ever lost: read every event of the stream, write the
archive object and read it back to compare (the archive does both), and only then
delete the events (the stream's row stays, marked archived, keeping its ``seq``
counter and members). If the store fails nothing is deleted and the stream is tried
again later with backoff; a crash in between leaves a delivered stream that is found
again at start-up and archived again, idempotently. Subscribers of the stream get
``{"type": "archived"}`` and close 1000.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from hub.events import Event, Opcode
from hub.infra.archive import Archive
from hub.infra.broker import Broker, Notice
from hub.infra.store import Store
from hub.metrics import Metrics
from hub.timing import DueQueue

__all__ = ["Archiver", "archived_frame"]

log = logging.getLogger("hub.archiver")

MAX_SCHEDULED = 100_000  # streams waiting to be archived
MAX_BACKOFF = 60.0
PAGE = 1000


def archived_frame(stream_id: str) -> str:
    return json.dumps({"type": "archived", "streamId": stream_id})


class Archiver:
    """Owns the archiving task; ``schedule()`` after delivery, ``archive_now()`` on demand.

    It reads and deletes through the ``store``, writes to the ``archive`` and tells the
    stream's subscribers on every instance through the ``broker``.
    """

    def __init__(self, store: Store, archive: Archive, broker: Broker, metrics: Metrics, *,
                 delay: float) -> None:  # fmt: skip
        self.store = store
        self.archive = archive
        self.broker = broker
        self.metrics = metrics
        self.delay = delay
        self._due: DueQueue[str] = DueQueue()
        self._tries: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the task and pick up delivered streams a crash left unarchived."""
        self._task = asyncio.create_task(self._run(), name="hub-archiver")
        try:
            for final in (Opcode.ORDER_DELIVER, Opcode.ORDER_CANCEL):
                for stream_id in await self.store.find_streams(having=final):
                    self.schedule(stream_id)
        except Exception:
            log.exception("could not list streams left to archive")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def schedule(self, stream_id: str, delay: float | None = None) -> None:
        if len(self._due) >= MAX_SCHEDULED:
            log.error("archive queue full; %s is archived at the next start", stream_id)
            return
        self._due.put(stream_id, time.monotonic() + (self.delay if delay is None else delay))

    async def read_all(self, stream_id: str) -> list[Event]:
        events: list[Event] = []
        while True:
            page = await self.store.read_stream(stream_id, events[-1].seq if events else 0, PAGE)
            events += page
            if len(page) < PAGE:
                return events

    async def archive_now(self, stream_id: str) -> int:
        """Archive one stream; returns how many events went to the archive."""
        async with self._lock:
            info = await self.store.stream_info(stream_id)
            if info is None or info.archived:
                return 0
            events = await self.read_all(stream_id)
            await self.archive.put(stream_id, events)
            await self.store.delete_stream(stream_id)
        self.metrics.archived.inc()
        self.broker.publish_notice(Notice(stream_id, archived_frame(stream_id), final=True))
        return len(events)

    async def _run(self) -> None:
        while True:
            stream_id = await self._due.next()
            try:
                await self.archive_now(stream_id)
                self._tries.pop(stream_id, None)
            except Exception as exc:
                self.metrics.archive_failures.inc()
                n = self._tries[stream_id] = self._tries.get(stream_id, 0) + 1
                backoff = min(MAX_BACKOFF, 0.5 * 2**n)
                log.warning("archiving %s failed (%s); retrying in %.1fs", stream_id, exc, backoff)
                self.schedule(stream_id, backoff)
