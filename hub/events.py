"""Events: the model, the seed's opcodes, validation of client input, and encoding.

A client sends a *draft* (``opcode`` and optional ``id``, ``nodeId``, ``pointId``,
``delta``, ``payload``, ``ts``); :func:`parse_draft` validates it into a
:class:`NewEvent`. The store turns a ``NewEvent`` into a committed :class:`Event`
with its per-stream ``seq`` and global ``pos``. An ``Event`` encodes itself once
(:attr:`Event.json`, :attr:`Event.frame`) however many subscribers it reaches.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quote
from typing import Any

from hub.errors import BadRequest, PayloadTooLarge, Unprocessable

__all__ = [
    "OPCODES",
    "STREAM_ID_RE",
    "TENANT_ID_RE",
    "Event",
    "NewEvent",
    "Opcode",
    "check_stream_id",
    "check_tenant_id",
    "format_ts",
    "json_depth",
    "now_ts",
    "parse_draft",
    "parse_drafts",
]

TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
STREAM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
_REF_MAX = 128  # nodeId / pointId length cap
MAX_DEPTH = 32  # nesting levels of a payload


def json_depth(value: object, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a parsed JSON value, counting no further than ``limit + 1``."""
    depth = 0
    level: list[Any] = [value] if isinstance(value, dict | list) else []
    while level and depth <= limit:
        depth += 1
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v)
                 if isinstance(c, dict | list)]  # fmt: skip
    return depth


class Opcode:
    """The seed's opcodes."""

    SALE_OUT = 102
    INVOICE_PAYMENT = 203
    TASK_CREATE = 301
    TASK_ASSIGN = 302
    TASK_START = 303
    TASK_DONE = 305
    ACCOUNT_PAYIN = 401
    ACCOUNT_PAYOUT = 402
    ORDER_CREATE = 501
    ORDER_SHIP = 502
    ORDER_DELIVER = 503


OPCODES: dict[int, str] = {
    value: name for name, value in vars(Opcode).items() if not name.startswith("_")
}


def check_tenant_id(value: object) -> str:
    """Return ``value`` if it is a valid tenant id, else raise :class:`BadRequest`."""
    if isinstance(value, str) and TENANT_ID_RE.match(value):
        return value
    raise BadRequest("invalid tenant id", code="invalid_tenant_id")


def check_stream_id(value: object) -> str:
    """Return ``value`` if it is a valid stream id, else raise :class:`BadRequest`."""
    if isinstance(value, str) and STREAM_ID_RE.match(value):
        return value
    raise BadRequest("invalid stream id", code="invalid_stream_id")


def format_ts(dt: datetime) -> str:
    """ISO 8601 UTC with milliseconds: ``2026-11-27T12:30:00.000Z``."""
    dt = dt.astimezone(UTC)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
        f"{dt.second:02d}.{dt.microsecond // 1000:03d}Z"
    )


_second: tuple[int, str] = (-1, "")  # the current second, formatted once


def now_ts() -> str:
    """``format_ts`` of now (formatting each second once: every append takes a ``ts``)."""
    global _second
    t = time.time()
    sec = int(t)
    if sec != _second[0]:
        _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_second[1]}.{int((t - sec) * 1000):03d}Z"


def _parse_ts(value: object) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise Unprocessable("ts must be an ISO 8601 string")
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise Unprocessable("ts must be an ISO 8601 string") from None
    if dt.tzinfo is None:
        raise Unprocessable("ts must carry a timezone (e.g. a trailing Z)")
    try:
        return format_ts(dt)
    except (OverflowError, ValueError):
        raise Unprocessable("ts is out of range") from None


def _ref(draft: dict[str, Any], key: str) -> str | None:
    value = draft.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > _REF_MAX or not _utf8(value):
        raise Unprocessable(f"{key} must be a string of 1..{_REF_MAX} characters or null")
    return value


def _utf8(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated event not yet committed. ``payload`` is its JSON encoding."""

    id: str
    opcode: int
    node_id: str | None
    point_id: str | None
    delta: float
    payload: str
    ts: str
    ts_given: bool
    fresh_id: bool = False  # the hub drew the id just now: it cannot be stored already

    @property
    def payload_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.payload)
        return obj


_FIELDS = {"id", "opcode", "name", "streamId", "nodeId", "pointId", "delta", "payload", "ts"}


_ids: list[str] = []  # unused random ids (os.urandom is a syscall: one per 256 ids)
os.register_at_fork(after_in_child=_ids.clear)  # a child must not reuse the parent's


def new_event_id() -> str:
    """An id for an event its writer did not name: 128 random bits, like a uuid4's.

    Unpredictable on purpose: ids are unique across all streams, so a guessable next id
    would let one tenant take another's.
    """
    if not _ids:
        raw = os.urandom(16 * 256).hex()
        _ids.extend(raw[i : i + 32] for i in range(0, len(raw), 32))
    return "evt-" + _ids.pop()


def parse_draft(
    draft: object, *, stream_id: str, max_payload_bytes: int = 64 << 10
) -> NewEvent:
    """Validate one client-supplied event for ``stream_id``."""
    if not isinstance(draft, dict):
        raise Unprocessable("an event must be a JSON object")
    unknown = set(draft) - _FIELDS
    if unknown:
        raise Unprocessable(f"unknown field(s): {', '.join(sorted(unknown))}")
    opcode = draft.get("opcode")
    if isinstance(opcode, bool) or not isinstance(opcode, int) or opcode not in OPCODES:
        raise Unprocessable(f"unknown opcode {opcode!r}", code="unknown_opcode")
    if "name" in draft and draft["name"] != OPCODES[opcode]:
        raise Unprocessable(f"name {draft['name']!r} does not match opcode {opcode}")
    if "streamId" in draft and draft["streamId"] != stream_id:
        raise Unprocessable("streamId in the body differs from the URL")
    raw_id = draft.get("id")
    if raw_id is None:
        event_id = new_event_id()
    elif isinstance(raw_id, str) and STREAM_ID_RE.match(raw_id):
        event_id = raw_id
    else:
        raise Unprocessable("id must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    delta = draft.get("delta", 0)
    if delta is None:
        delta = 0
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise Unprocessable("delta must be a finite number")
    try:
        delta = float(delta)
    except OverflowError:
        raise Unprocessable("delta must be a finite number") from None
    if not math.isfinite(delta):
        raise Unprocessable("delta must be a finite number")
    payload = draft.get("payload", {})
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise Unprocessable("payload must be a JSON object")
    if json_depth(payload) > MAX_DEPTH:
        raise Unprocessable(f"payload nested deeper than {MAX_DEPTH} levels", code="too_deep")
    try:
        encoded = _PAYLOAD_ENCODE(payload)
        size = len(encoded.encode())
    except (ValueError, TypeError, RecursionError):
        raise Unprocessable("payload must be plain JSON (no NaN, Infinity, bad text)") from None
    if size > max_payload_bytes:
        raise PayloadTooLarge(f"payload over {max_payload_bytes} bytes encoded")
    ts_given = draft.get("ts") is not None
    ts = _parse_ts(draft["ts"]) if ts_given else now_ts()
    return NewEvent(
        id=event_id,
        opcode=opcode,
        node_id=_ref(draft, "nodeId"),
        point_id=_ref(draft, "pointId"),
        delta=float(delta),
        payload=encoded,
        ts=ts,
        ts_given=ts_given,
        fresh_id=raw_id is None,
    )


def parse_drafts(
    body: object, *, stream_id: str, max_batch: int = 100, max_payload_bytes: int = 64 << 10
) -> list[NewEvent]:
    """Validate a request body: one event, or ``{"events": [...]}`` (1..max_batch)."""
    if isinstance(body, dict) and "events" in body:
        if set(body) != {"events"}:
            raise Unprocessable("a batch body holds only 'events'")
        drafts = body["events"]
        if not isinstance(drafts, list):
            raise Unprocessable("events must be a list")
        if not drafts:
            raise Unprocessable("empty batch", code="empty_batch")
        if len(drafts) > max_batch:
            raise PayloadTooLarge(f"at most {max_batch} events per batch", code="batch_too_large")
    elif isinstance(body, dict):
        drafts = [body]
    else:
        raise BadRequest("body must be a JSON object")
    events = [
        parse_draft(d, stream_id=stream_id, max_payload_bytes=max_payload_bytes) for d in drafts
    ]
    ids = [e.id for e in events]
    if len(set(ids)) != len(ids):
        raise Unprocessable("duplicate event id in batch")
    return events


def _canonical(payload: str) -> str:
    """One spelling per JSON value (key order ignored; ``true`` stays distinct from ``1``)."""
    return json.dumps(json.loads(payload), sort_keys=True, separators=(",", ":"))


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_PAYLOAD_ENCODE = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False
).encode


def _dumps(value: object) -> str:
    """``json.dumps(value, ensure_ascii=False)``, compact, without building an encoder."""
    if isinstance(value, str):
        return _quote(value)  # what the encoder itself does with a str
    return "null" if value is None else _ENCODE(value)


@dataclass(frozen=True, slots=True)
class Event:
    """A committed event. ``payload`` is its stored JSON text."""

    id: str
    stream_id: str
    seq: int
    pos: int
    opcode: int
    node_id: str | None
    point_id: str | None
    delta: float
    payload: str
    ts: str
    _json: str | None = field(default=None, compare=False, repr=False)
    _frame: str | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        return OPCODES.get(self.opcode, str(self.opcode))

    @property
    def payload_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.payload)
        return obj

    def _fields(self) -> str:
        delta: float | int = int(self.delta) if self.delta.is_integer() else self.delta
        return (
            f'"id":{_dumps(self.id)},"streamId":{_dumps(self.stream_id)},'
            f'"seq":{self.seq},"pos":{self.pos},"opcode":{self.opcode},'
            f'"name":{_dumps(self.name)},"nodeId":{_dumps(self.node_id)},'
            f'"pointId":{_dumps(self.point_id)},"delta":{_dumps(delta)},'
            f'"payload":{self.payload},"ts":{_dumps(self.ts)}'
        )

    @property
    def json(self) -> str:
        """The event as a JSON object (CONTRACT §3), encoded once."""
        text = self._json
        if text is None:
            text = "{" + self._fields() + "}"
            object.__setattr__(self, "_json", text)
        return text

    @property
    def frame(self) -> str:
        """The WebSocket frame ``{"type": "event", ...}``, encoded once."""
        text = self._frame
        if text is None:
            text = '{"type":"event",' + self._fields() + "}"
            object.__setattr__(self, "_frame", text)
        return text

    def same_content(self, new: NewEvent) -> bool:
        """True when ``new`` is a retry of this event (CONTRACT §3 idempotency)."""
        return (
            self.opcode == new.opcode
            and self.node_id == new.node_id
            and self.point_id == new.point_id
            and self.delta == new.delta
            and _canonical(self.payload) == _canonical(new.payload)
            and (not new.ts_given or self.ts == new.ts)
        )
