"""HTTP endpoints of the event log besides appends (those are :mod:`hub.edge.append`):
``GET /api/streams/{id}`` (live or archived, the same events) and the platform's
``POST /api/streams/{id}/archive``."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from hub.domain.archiver import Archiver
from hub.domain.auth import TokenCache
from hub.domain.node import Node
from hub.domain.orders.rules import STATUS_OPCODES, order_status, status_of
from hub.edge.http import Raw, int_param, ok, principal
from hub.errors import Forbidden
from hub.events import check_stream_id

__all__ = ["READ_LIMIT_DEFAULT", "READ_LIMIT_MAX", "StreamsHttp"]

READ_LIMIT_DEFAULT = 1000
READ_LIMIT_MAX = 10_000


class StreamsHttp:
    """Reading a stream and archiving it."""

    def __init__(self, node: Node, archiver: Archiver, tokens: TokenCache) -> None:
        self.node = node
        self.archiver = archiver
        self.tokens = tokens

    async def read(self, request: Request) -> Response:
        stream_id = check_stream_id(request.path_params["stream_id"])
        since = int_param(request, "since", 0)
        limit = int_param(request, "limit", READ_LIMIT_DEFAULT, maximum=READ_LIMIT_MAX)
        who = principal(request, self.tokens)
        node = self.node
        info = await node.read(who, stream_id)
        events = await node.read_events(stream_id, since, limit, archived=info.archived)
        if since == 0 and len(events) < limit:  # the whole stream
            status = order_status(events)
        elif info.archived:  # a page of an archived stream: the steps are in the whole of it
            whole = await node.read_events(stream_id, 0, info.last_seq, archived=True)
            status = order_status(whole)
        else:  # a page of it: ask the store which steps the stream has reached
            status = status_of(await node.stream_opcodes(stream_id, STATUS_OPCODES))
        payload = (
            f'{{"streamId":{json.dumps(stream_id)},'
            f'"status":{json.dumps("archived" if info.archived else "active")},'
            f'"orderStatus":{json.dumps(status)},"lastSeq":{info.last_seq},'
            '"events":[' + ",".join(e.json for e in events) + "]}"
        )
        return Raw(payload)

    async def archive(self, request: Request) -> Response:
        stream_id = check_stream_id(request.path_params["stream_id"])
        who = principal(request, self.tokens)
        if not who.is_platform:
            raise Forbidden("only the platform archives streams")
        await self.node.read(who, stream_id)  # 404 when it does not exist
        count = await self.archiver.archive_now(stream_id)
        return ok({"streamId": stream_id, "status": "archived", "archivedEvents": count})
