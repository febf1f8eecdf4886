"""The hub's wire shapes: every request body, response body and WebSocket frame, declared
once as a msgspec Struct.

From these classes come request validation (:func:`decode`, and
:func:`hub.events.parse_body` for appends), the OpenAPI document (:mod:`hub.edge.openapi`)
and the AsyncAPI document (:mod:`hub.edge.asyncapi`). Limits and patterns are written
once, in ``Meta`` constraints; the words a client gets when it breaks one are declared
next to it (:func:`~hub.events.refuse`), so errors keep their codes, statuses and messages.

- :mod:`.events`: event drafts and batches (declared in :mod:`hub.events`, the base layer
  that validates them), stored events, stream reads, the error body;
- :mod:`.orders`: the order flow's request and response bodies, with a ``decode_*``
  function for each request body;
- :mod:`.frames`: every WebSocket frame in both directions, and the close codes;
- :mod:`.ops`: ``/healthz``.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from hub.domain.orders import rules
from hub.errors import HubError, Unprocessable
from hub.refusals import Refusal, explain, literal, loads_json, refusal_of, refuse

__all__ = [
    "ORDER_STATUS",
    "ORDER_STATUSES",
    "OrderStatus",
    "Refusal",
    "decode",
    "literal",
    "refusal_of",
    "refuse",
]

T = TypeVar("T")

# The order flow's own table: the status each opcode moves an order to; the statuses in
# step order; an order's status as a wire type (docs/protocol.md §4).
ORDER_STATUS: dict[int, str] = {int(k): v for k, v in rules.ORDER_STATUS.items()}
ORDER_STATUSES: tuple[str, ...] = rules.STATUSES

if TYPE_CHECKING:
    OrderStatus = str
else:
    OrderStatus = Literal[ORDER_STATUSES]


@cache
def _decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(tp)


def decode(data: bytes | bytearray | object, tp: type[T] | Any, *,
           invalid: HubError | None = None) -> T:  # fmt: skip
    """``data`` (a body's bytes, or JSON already parsed) as a ``tp``, or the hub's error.

    Bytes go straight to msgspec. What it refuses is parsed by :mod:`json` (400
    ``invalid_json`` when that fails too, as every JSON body always was) and answered by
    the refusal its Struct declares for the first fault, in field order
    (:func:`hub.events.explain`). ``invalid``: the error when no declared rule explains
    a refusal (never expected).
    """
    if isinstance(data, bytes | bytearray):
        key: Any = tp
        try:
            value: T = _decoder(key).decode(data)
        except (msgspec.DecodeError, RecursionError):
            data = loads_json(data)
        else:
            return value
    try:
        value = msgspec.convert(data, tp)
    except (msgspec.ValidationError, OverflowError) as exc:
        refused = explain(data, tp)
        raise (refused or invalid or Unprocessable(str(exc))) from None
    refused = explain(data, tp)  # numbers msgspec took that JSON has not (NaN, Infinity)
    if refused is not None:
        raise refused
    return value
