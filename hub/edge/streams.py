"""HTTP endpoints of the event log besides appends (those are :mod:`hub.edge.append`):
``GET /api/streams/{id}`` (live or archived, the same events) and the platform's
``POST /api/streams/{id}/archive``.

An answer holds at most ``limit`` events and :data:`READ_BYTES` of them (or one event,
however large): the client reads on with ``since`` = the last ``seq`` it got until it
reaches ``lastSeq`` (docs/protocol.md §4.1). The events are read in chunks, and what the
answer may hold while it is built is taken from the caller's tenant's
:class:`~hub.domain.sessions.ReadBudget` first (the same budget as its replays).
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from hub.domain.archiver import Archiver
from hub.domain.auth import TokenCache
from hub.domain.node import Node
from hub.domain.orders.rules import STATUS_OPCODES, status_of
from hub.domain.sessions import EVENT_MAX, ReadBudget
from hub.edge.http import Raw, int_param, ok, principal
from hub.errors import Forbidden, Unavailable
from hub.events import check_stream_id

__all__ = ["READ_BYTES", "READ_LIMIT_DEFAULT", "READ_LIMIT_MAX", "StreamsHttp"]

READ_LIMIT_DEFAULT = 1000
READ_LIMIT_MAX = 10_000
# The events of one answer take this much at most (or one event): 10,000 events of 64 KiB
# were one string of 640 MB. Then the client reads on with since.
READ_BYTES = 4 << 20
READ_CHUNK = 64  # events read at once, at least (more while the budget taken allows)
READ_CHUNK_MAX = 500


class _ArchivedMeanwhile(Exception):
    """A live stream's events ended short of the ``lastSeq`` its row gave: Step 11 moved
    them to the archive in between (it deletes them only once the archive holds them)."""


class StreamsHttp:
    """Reading a stream and archiving it."""

    def __init__(self, node: Node, archiver: Archiver, tokens: TokenCache, *,
                 budget: ReadBudget | None = None, wait: float = 30.0) -> None:  # fmt: skip
        self.node = node
        self.archiver = archiver
        self.tokens = tokens
        self.budget = budget  # None: reads are not counted
        self.wait = wait  # seconds a read waits for its tenant's budget, then 503

    async def read(self, request: Request) -> Response:
        stream_id = check_stream_id(request.path_params["stream_id"])
        since = int_param(request, "since", 0)
        limit = int_param(request, "limit", READ_LIMIT_DEFAULT, maximum=READ_LIMIT_MAX)
        who = principal(request, self.tokens)
        node = self.node
        info = await node.read(who, stream_id)
        # What building the answer may hold: its events (at most READ_BYTES and one event)
        # twice (the pieces, then the body joined), and one chunk read meanwhile.
        count = max(1, min(limit, info.last_seq - since))
        answer = min(READ_BYTES + EVENT_MAX, count * EVENT_MAX)
        taken = 2 * answer + min(count, READ_CHUNK) * EVENT_MAX
        budget = self.budget
        if budget is not None:
            await budget.acquire_within(who.tenant, taken, self.wait)
        try:
            try:
                return await self._answer(stream_id, since, limit, info.archived,
                                          info.last_seq, taken)  # fmt: skip
            except _ArchivedMeanwhile:  # the archive holds every event: answer from it
                return await self._answer(stream_id, since, limit, True, info.last_seq, taken)
        finally:
            if budget is not None:
                budget.release(who.tenant, taken)

    async def _answer(self, stream_id: str, since: int, limit: int, archived: bool,
                      last_seq: int, taken: int) -> Response:  # fmt: skip
        node = self.node
        parts: list[bytes] = [b""]  # the head, once the order's status is known
        count = size = 0
        opcodes: dict[int, int] = {}  # opcode -> the seq of its last event
        after, whole = since, False
        while count < limit:
            # As many events as the bytes taken allow besides what the answer holds.
            want = min(limit - count, READ_CHUNK_MAX, max(1, (taken - 2 * size) // EVENT_MAX))
            rows = await node.read_events(stream_id, after, want, archived=archived)
            got, full = len(rows), False
            rows.reverse()
            while rows:  # each event dropped once encoded (with the JSON it keeps)
                event = rows.pop()
                piece = event.json.encode()
                if count and size + len(piece) > READ_BYTES:
                    full = True
                    break
                if count:
                    parts.append(b",")
                parts.append(piece)
                size += len(piece)
                count += 1
                opcodes[event.opcode] = event.seq
                after = event.seq
            rows.clear()  # what did not fit
            if full:
                break
            if got < want:  # the end of the stream
                if not archived and after < last_seq and await self._archived(stream_id):
                    raise _ArchivedMeanwhile  # Step 11 took its events since its row was read
                whole = since == 0  # every event of it is in this answer
                break
        if whole:
            status = status_of(opcodes)
        elif archived:  # a page of an archived stream: the steps are in the whole of it
            found = await node.archive.opcodes(stream_id)
            if found is None:
                raise Unavailable("the archived stream cannot be read right now")
            status = status_of(found)
        else:  # a page of it: ask the store which steps the stream has reached
            status = status_of(await node.stream_opcodes(stream_id, STATUS_OPCODES))
        parts[0] = (
            f'{{"streamId":{json.dumps(stream_id)},'
            f'"status":{json.dumps("archived" if archived else "active")},'
            f'"orderStatus":{json.dumps(status)},"lastSeq":{last_seq},"events":['
        ).encode()
        parts.append(b"]}")
        body = b"".join(parts)
        del parts
        return Raw(body)

    async def _archived(self, stream_id: str) -> bool:
        info = await self.node.stream_info(stream_id)
        return info is not None and info.archived

    async def archive(self, request: Request) -> Response:
        stream_id = check_stream_id(request.path_params["stream_id"])
        who = principal(request, self.tokens)
        if not who.is_platform:
            raise Forbidden("only the platform archives streams")
        await self.node.read(who, stream_id)  # 404 when it does not exist
        count = await self.archiver.archive_now(stream_id)
        return ok({"streamId": stream_id, "status": "archived", "archivedEvents": count})
