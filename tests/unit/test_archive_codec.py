"""The archive's encoding: an archived event reads back as the very event that was stored."""

from __future__ import annotations

from hub.events import Event, parse_draft
from hub.infra.archive import decode_events, encode_events


def stored(seq: int, payload: object) -> Event:
    draft = parse_draft({"opcode": 203, "payload": payload}, stream_id="ord-1")
    ts = "2026-12-05T10:00:00.000Z"
    return Event(draft.id or f"e{seq}", "ord-1", seq, 100 + seq, draft.opcode, draft.node_id,
                 draft.point_id, draft.delta, draft.payload, ts)  # fmt: skip


def test_archived_events_read_back_byte_for_byte() -> None:
    """Event.json after the archive equals Event.json before, exponents and non-ASCII too."""
    events = [
        stored(1, {"amount": 1e16, "tiny": 1e-7, "name": "Shawarma ü 🍢", "n": 12345678901234}),
        stored(2, {"nested": {"list": [1, 2.5, None, True], "empty": {}}}),
    ]
    back = decode_events("ord-1", encode_events("ord-1", events))
    assert [e.json for e in back] == [e.json for e in events]
    assert back == events
