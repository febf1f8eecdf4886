"""Errors and close codes: what each one means for a client.

Exception tree (each carries an HTTP status and a stable ``code`` string)::

    HubError
    ├── BadRequest          400  malformed request, invalid id, bad JSON
    ├── Unauthorized        401  no token, bad token          (WebSocket close 4401)
    ├── Forbidden           403  not allowed / not a member   (WebSocket close 4403)
    ├── NotFound            404  (the platform only: stream does not exist)
    ├── Conflict            409  same event id, other content
    ├── PayloadTooLarge     413  body or payload over its limit
    ├── Unprocessable       422  well-formed JSON that is not a valid event
    └── Unavailable         503  the streams DB is locked or overloaded; retry
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "BadRequest",
    "Busy",
    "CloseCode",
    "Conflict",
    "Forbidden",
    "HubError",
    "NotFound",
    "PayloadTooLarge",
    "Stopped",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
]


class HubError(Exception):
    """Base of every error the hub reports to a client."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def body(self) -> dict[str, dict[str, str]]:
        """The contract's error body: ``{"error": {"code", "message"}}``."""
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(HubError):
    status, code = 400, "bad_request"


class Unauthorized(HubError):
    status, code = 401, "unauthorized"


class Forbidden(HubError):
    status, code = 403, "forbidden"


class NotFound(HubError):
    status, code = 404, "not_found"


class Conflict(HubError):
    status, code = 409, "conflict"


class PayloadTooLarge(HubError):
    status, code = 413, "too_large"


class Unprocessable(HubError):
    status, code = 422, "invalid_event"


class Unavailable(HubError):
    status, code = 503, "unavailable"


class Busy(Unavailable):
    """Unavailable for now because it is busy (too much waiting, a lock held elsewhere),
    not because it is failing: the client retries, and health does not count it."""


class Stopped(Unavailable):
    """The server stopped (its graceful shutdown ran out) before the request was done.
    Unlike every other refusal it may have been carried out: the client sends it again,
    which the hub never carries out twice (ids, order steps)."""

    code = "stopped"


class CloseCode(IntEnum):
    """WebSocket close codes the hub uses, and what the client should do."""

    NORMAL = 1000  # done (e.g. the stream was archived); do not reconnect
    GOING_AWAY = 1001  # hub shutting down; reconnect with since
    PROTOCOL_ERROR = 1002  # the client broke the WebSocket protocol
    UNSUPPORTED_DATA = 1003  # binary frame where text is expected
    POLICY_VIOLATION = 1008  # a malformed request (e.g. a bad since); fix it first
    TOO_BIG = 1009  # frame over the size limit
    INTERNAL_ERROR = 1011  # hub fault or keepalive timeout; reconnect with since
    SERVICE_RESTART = 1012  # hub restarting; reconnect with since
    UNAUTHORIZED = 4401  # no or bad token; do not reconnect with the same token
    FORBIDDEN = 4403  # not allowed; do not reconnect
    STALLED = 4008  # the socket drained nothing for too long; reconnect with since
    TOO_MANY = 4029  # too many connections for this token; back off, then reconnect

    @property
    def reconnect(self) -> bool:
        """True when a client should reconnect (with ``since``) after this close."""
        return self in {
            CloseCode.GOING_AWAY,
            CloseCode.INTERNAL_ERROR,
            CloseCode.SERVICE_RESTART,
            CloseCode.STALLED,
            CloseCode.TOO_MANY,
        }
