"""Events: the model, the seed's opcodes, the wire shape of client input, and encoding.

A client sends a *draft* (``opcode`` and optional ``id``, ``nodeId``, ``pointId``,
``delta``, ``payload``, ``ts``), alone or as ``{"events": [...]}``. Both shapes are
declared once, as the msgspec Structs :class:`EventDraft` and :class:`EventBatch`: msgspec
decodes a request body straight into them (:func:`parse_body`, the append hot path), the
OpenAPI document is generated from them (:mod:`hub.edge.openapi`), and what they refuse
is answered with the same error as always (:class:`Refusal`, declared next to the rule
it explains). :func:`_build` adds the checks a JSON Schema cannot express (a payload's
depth and encoded size, ``name`` matching ``opcode``, a parseable ``ts``) and makes a
:class:`NewEvent`. The store turns a ``NewEvent`` into a committed :class:`Event` with its
per-stream ``seq`` and global ``pos``. An ``Event`` encodes itself once (:attr:`Event.json`,
:attr:`Event.frame`) however many subscribers it reaches.

What a rule refuses is answered as :mod:`hub.refusals` says (the error declared next to
each rule; a refused body walked again in declaration order for the first fault).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from json.encoder import encode_basestring as _quote
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from hub.errors import BadRequest, HubError, PayloadTooLarge, Unprocessable
from hub.refusals import Refusal, explain_struct, literal, loads_json, refusal_of, refuse

__all__ = [
    "MAX_BATCH",
    "MAX_DEPTH",
    "MAX_PAYLOAD_BYTES",
    "OPCODES",
    "STREAM_ID_PATTERN",
    "STREAM_ID_RE",
    "TENANT_FIELDS",
    "TENANT_ID_PATTERN",
    "TENANT_ID_RE",
    "Event",
    "EventBatch",
    "EventDraft",
    "NewEvent",
    "Opcode",
    "OpcodeName",
    "anchored",
    "check_stream_id",
    "check_tenant_id",
    "format_ts",
    "json_depth",
    "now_ts",
    "parse_body",
    "parse_draft",
    "parse_drafts",
]

# -- ids and limits ----------------------------------------------------------------------

# Patterns as the contract writes them (and as JSON Schema, i.e. ECMA-262, reads them).
TENANT_ID_PATTERN = "^[a-z0-9][a-z0-9-]{0,62}$"
STREAM_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
REF_MAX = 128  # nodeId / pointId length cap
MAX_DEPTH = 32  # nesting levels of a payload
MAX_PAYLOAD_BYTES = 64 << 10  # a payload, compact UTF-8 JSON
MAX_BATCH = 100  # events of one append


def anchored(pattern: str) -> str:
    """``pattern`` (``^...$``) spelled so that Python reads it as ECMA-262 does.

    Python's ``$`` also matches before a final newline (msgspec checks patterns with
    :func:`re.search`); ``(?!\\n)`` rules that out and means nothing to ECMA-262, where
    ``$`` is the end. One spelling then serves msgspec, :mod:`re` and JSON Schema.
    """
    assert pattern.startswith("^"), pattern
    assert pattern.endswith("$"), pattern
    return pattern[:-1] + "(?!\\n)$"


TENANT_ID_RE = re.compile(anchored(TENANT_ID_PATTERN))
STREAM_ID_RE = re.compile(anchored(STREAM_ID_PATTERN))


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


def json_depth(value: object, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a parsed JSON value, counting no further than ``limit + 1``."""
    depth = 0
    level: list[Any] = [value] if isinstance(value, dict | list) else []
    while level and depth <= limit:
        depth += 1
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v)
                 if isinstance(c, dict | list)]  # fmt: skip
    return depth


# -- opcodes -----------------------------------------------------------------------------


class Opcode(IntEnum):
    """The seed's opcodes (docs/protocol.md §3) and those of orders that do not go as
    planned (§6), in the seed's families."""

    SALE_OUT = 102
    SALE_RETURN = 103
    INVOICE_PAYMENT = 203
    INVOICE_REFUND = 204
    TASK_CREATE = 301
    TASK_ASSIGN = 302
    TASK_START = 303
    TASK_DONE = 305
    TASK_UNASSIGN = 306
    ACCOUNT_PAYIN = 401
    ACCOUNT_PAYOUT = 402
    ORDER_CREATE = 501
    ORDER_SHIP = 502
    ORDER_DELIVER = 503
    ORDER_CANCEL = 504


OPCODES: dict[int, str] = {op.value: op.name for op in Opcode}

if TYPE_CHECKING:
    OpcodeName = str
else:
    OpcodeName = Literal[tuple(OPCODES.values())]  # an opcode's name, e.g. "ORDER_CREATE"


# -- time --------------------------------------------------------------------------------


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


# -- the wire shape of an append ---------------------------------------------------------

# Each field's rule and the words of its refusal, in one place.
_OPCODE = Meta(extra=refuse("unknown opcode {value!r}", code="unknown_opcode"))
_NAME = Meta(
    description="Must be the opcode's name when given.",
    extra=refuse("name {value!r} does not match opcode {body[opcode]}"),
)
_STREAM_ID = Meta(
    description="Must equal the URL's when given.",
    extra=refuse("streamId in the body differs from the URL"),
)
_ID = Meta(
    pattern=anchored(STREAM_ID_PATTERN),
    description="Drawn by the hub when absent; a retry with the same id and content returns"
    " the stored event.",
    extra=refuse("id must match " + literal(STREAM_ID_PATTERN)),
)
_DELTA = Meta(
    description="A finite number (0 when absent).",
    extra=refuse("delta must be a finite number"),
)
_PAYLOAD = Meta(
    description=f"At most {MAX_PAYLOAD_BYTES} bytes encoded (413 too_large over it) and"
    f" {MAX_DEPTH} levels deep (422 too_deep over it); {{}} when absent. The fields naming"
    " tenants (ORDER_CREATE's customer and restaurant, TASK_ASSIGN's driver) must be tenant"
    " ids when present (400 invalid_tenant_id).",
    extra=refuse("payload must be a JSON object"),
)
_TS = Meta(
    max_length=64,
    description="ISO 8601 with a timezone; now when absent.",
    extra=refuse("ts must be an ISO 8601 string"),
)
_REF = Meta(
    min_length=1,
    max_length=REF_MAX,
    extra=refuse("{name} must be a string of {min_length}..{max_length} characters or null"),
)
_EVENTS = Meta(
    min_length=1,
    max_length=MAX_BATCH,
    description=f"1..{MAX_BATCH} events (422 empty_batch when empty, 413 batch_too_large over"
    f" {MAX_BATCH}).",
    extra=refuse(
        "events must be a list",
        min_length=Refusal("empty batch", code="empty_batch"),
        max_length=Refusal("at most {max_length} events per batch", PayloadTooLarge,
                           "batch_too_large"),
    ),
)  # fmt: skip


class EventDraft(Struct, forbid_unknown_fields=True, rename="camel"):
    """One event as a client sends it (docs/protocol.md §4). Fields are checked in this order."""

    refusals: ClassVar[dict[str, Any]] = refuse(
        "an event must be a JSON object", unknown="unknown field(s): {names}"
    )

    opcode: Annotated[Opcode, _OPCODE]
    name: Annotated[OpcodeName, _NAME] | UnsetType = UNSET
    stream_id: Annotated[str, _STREAM_ID] | UnsetType = UNSET
    id: Annotated[str, _ID] | None = None
    delta: Annotated[float, _DELTA] | None = None
    payload: Annotated[dict[str, Any], _PAYLOAD] | None = None
    ts: Annotated[str, _TS] | None = None
    node_id: Annotated[str, _REF] | None = None
    point_id: Annotated[str, _REF] | None = None


class EventBatch(Struct, forbid_unknown_fields=True):
    """Several events, committed all or nothing."""

    refusals: ClassVar[dict[str, Any]] = refuse(
        "body must be a JSON object",
        BadRequest,
        unknown=Refusal("a batch body holds only 'events'"),
    )

    events: Annotated[list[EventDraft], _EVENTS]


class NewEvent(Struct, frozen=True, gc=False):
    """A validated event not yet committed. ``payload`` is its JSON encoding.

    A frozen Struct, not a dataclass: made once per event on the write path, where a
    frozen dataclass's ``__init__`` cost more than decoding the event did.
    """

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


_DRAFT = msgspec.json.Decoder(EventDraft)
_BATCH = msgspec.json.Decoder(EventBatch)
_encode = msgspec.json.Encoder().encode
# The strict encoder of Python objects that did not come through msgspec (they may hold
# NaN, Infinity or lone surrogates, which are not JSON).
_PLAIN_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def parse_body(
    body: bytes | bytearray,
    *,
    stream_id: str,
    max_batch: int = MAX_BATCH,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> list[NewEvent]:
    """Validate a request body's bytes: one event, or ``{"events": [...]}``.

    msgspec decodes the bytes straight into the Structs; a body it refuses (or JSON only
    Python's parser reads: NaN, Infinity, lone surrogates, UTF-16) is parsed by
    :mod:`json` and answered by :func:`parse_drafts`, as it always was.
    """
    try:
        drafts = [_DRAFT.decode(body)]
    except (msgspec.DecodeError, RecursionError):
        try:
            drafts = _BATCH.decode(body).events
        except (msgspec.DecodeError, RecursionError):
            return parse_drafts(loads_json(body), stream_id=stream_id, max_batch=max_batch,
                                max_payload_bytes=max_payload_bytes)  # fmt: skip
    if len(drafts) > max_batch:
        raise refusal_of(EventBatch, "events", "max_length")(max_length=max_batch)
    events = [_build(d, stream_id, max_payload_bytes, trusted=True) for d in drafts]
    _check_unique(events)
    return events


def parse_drafts(
    body: object,
    *,
    stream_id: str,
    max_batch: int = MAX_BATCH,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> list[NewEvent]:
    """Validate a parsed request body: one event, or ``{"events": [...]}`` (1..max_batch)."""
    if not isinstance(body, dict) or "events" in body:
        found = explain_struct(body, EventBatch, items=False)  # then each event in turn
        if found is not None:
            raise found[1]
        assert isinstance(body, dict)  # else it was refused
        drafts = body["events"]
        if len(drafts) > max_batch:
            raise refusal_of(EventBatch, "events", "max_length")(max_length=max_batch)
    else:
        drafts = [body]
    events = [parse_draft(d, stream_id=stream_id, max_payload_bytes=max_payload_bytes)
              for d in drafts]  # fmt: skip
    _check_unique(events)
    return events


def parse_draft(
    draft: object, *, stream_id: str, max_payload_bytes: int = MAX_PAYLOAD_BYTES
) -> NewEvent:
    """Validate one client-supplied event (a parsed JSON object) for ``stream_id``."""
    try:
        decoded = msgspec.convert(draft, EventDraft)
    except (msgspec.ValidationError, OverflowError):
        raise _refused(draft, stream_id, max_payload_bytes) from None
    return _build(decoded, stream_id, max_payload_bytes, trusted=False)


def _refused(draft: object, stream_id: str, max_payload_bytes: int) -> HubError:
    """The first fault of a draft msgspec refused, in the order the fields are declared.

    The checks of :func:`_build` belong to their fields too: those of the fields before
    the one that failed come first.
    """
    found = explain_struct(draft, EventDraft)
    if found is None:
        return Unprocessable("invalid event")  # msgspec refused what no rule explains
    failed, refused = found
    if failed is not None and isinstance(draft, dict):
        names = [f.encode_name for f in msgspec.structs.fields(EventDraft)]
        before = {k: draft[k] for k in names[: names.index(failed)] if k in draft}
        if before:
            try:
                _build(msgspec.convert(before, EventDraft), stream_id, max_payload_bytes,
                       trusted=False)  # fmt: skip
            except HubError as exc:
                return exc
            except (msgspec.ValidationError, OverflowError):
                pass
    return refused


def _build(d: EventDraft, stream_id: str, max_payload_bytes: int, *, trusted: bool) -> NewEvent:
    """A decoded draft's remaining checks, field by field; its :class:`NewEvent`.

    ``trusted``: decoded by msgspec from bytes, so every number is finite and every
    string is valid Unicode (Python objects are checked for both here).
    """
    opcode = int(d.opcode)
    if d.name is not UNSET and d.name != OPCODES[opcode]:
        raise refusal_of(EventDraft, "name")(value=d.name, body={"opcode": opcode})
    if d.stream_id is not UNSET and d.stream_id != stream_id:
        raise refusal_of(EventDraft, "streamId")()
    delta = 0.0 if d.delta is None else d.delta
    if not trusted and not math.isfinite(delta):
        raise refusal_of(EventDraft, "delta")()
    payload = {} if d.payload is None else d.payload
    if not trusted:
        if json_depth(payload) > MAX_DEPTH:
            raise Unprocessable(f"payload nested deeper than {MAX_DEPTH} levels", code="too_deep")
        try:
            _PLAIN_JSON(payload).encode()
        except (ValueError, TypeError, RecursionError):
            raise Unprocessable("payload must be plain JSON (no NaN, Infinity, bad text)") from None
    encoded = _encode(payload)
    if (trusted and encoded.count(b"{") + encoded.count(b"[") > MAX_DEPTH  # else not deeper
            and json_depth(payload) > MAX_DEPTH):  # fmt: skip
        raise Unprocessable(f"payload nested deeper than {MAX_DEPTH} levels", code="too_deep")
    if len(encoded) > max_payload_bytes:
        raise PayloadTooLarge(f"payload over {max_payload_bytes} bytes encoded")
    for key in TENANT_FIELDS.get(opcode, ()):
        if key in payload:
            _check_payload_tenant(key, payload[key])
    ts = now_ts() if d.ts is None else _parse_ts(d.ts)
    if not trusted:
        for key, ref in (("nodeId", d.node_id), ("pointId", d.point_id)):
            if ref is not None and not _utf8(ref):
                raise refusal_of(EventDraft, key)()
    return NewEvent(
        id=new_event_id() if d.id is None else d.id,
        opcode=opcode,
        node_id=d.node_id,
        point_id=d.point_id,
        delta=float(delta),
        payload=encoded.decode(),
        ts=ts,
        ts_given=d.ts is not None,
        fresh_id=d.id is None,
    )


# The payload fields that name tenants (docs/protocol.md §2: they confer membership, and the order
# flow opens those tenants' databases). A value outside the tenant id pattern is refused
# like a tenant id in a path: 400 before it reaches a database or a file name.
TENANT_FIELDS: dict[int, tuple[str, ...]] = {
    Opcode.ORDER_CREATE: ("customer", "restaurant"),
    Opcode.TASK_ASSIGN: ("driver",),
}


def _check_payload_tenant(key: str, value: object) -> None:
    if not isinstance(value, str) or not TENANT_ID_RE.match(value):
        raise BadRequest(f"payload.{key} must be a tenant id matching {TENANT_ID_PATTERN}",
                         code="invalid_tenant_id")  # fmt: skip


def _check_unique(events: list[NewEvent]) -> None:
    if len(events) > 1 and len({e.id for e in events}) != len(events):
        raise Unprocessable("duplicate event id in batch")


def _parse_ts(value: str) -> str:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise refusal_of(EventDraft, "ts")() from None
    if dt.tzinfo is None:
        raise Unprocessable("ts must carry a timezone (e.g. a trailing Z)")
    try:
        return format_ts(dt)
    except (OverflowError, ValueError):
        raise Unprocessable("ts is out of range") from None


def _utf8(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


# -- committed events ----------------------------------------------------------------------


def _canonical(payload: str) -> str:
    """One spelling per JSON value (key order ignored; ``true`` stays distinct from ``1``)."""
    return json.dumps(json.loads(payload), sort_keys=True, separators=(",", ":"))


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


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
        """The event as a JSON object (docs/protocol.md §3), encoded once."""
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
        """True when ``new`` is a retry of this event (docs/protocol.md §3 idempotency)."""
        return (
            self.opcode == new.opcode
            and self.node_id == new.node_id
            and self.point_id == new.point_id
            and self.delta == new.delta
            and _canonical(self.payload) == _canonical(new.payload)
            and (not new.ts_given or self.ts == new.ts)
        )
