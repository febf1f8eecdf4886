"""Identity and access (docs/protocol.md §2): tokens, roles, and who may read or append what.

A token is an HS256 JWT with ``sub`` (a tenant id) and ``role``. Membership of a
stream is conferred only by the events that name a tenant (ORDER_CREATE's customer
and restaurant, TASK_ASSIGN's driver) and is recorded by the store; this module
decides, given a principal and what the store knows, whether an action is allowed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import jwt

from hub.errors import Forbidden, NotFound, Unauthorized, Unprocessable
from hub.events import TENANT_ID_RE, NewEvent, Opcode
from hub.infra.store import StreamInfo

__all__ = [
    "Principal",
    "Role",
    "TokenCache",
    "authorize_append",
    "authorize_read",
    "check_client_ids",
    "decode_token",
    "issue_token",
]


class Role(StrEnum):
    CUSTOMER = "customer"
    RESTAURANT = "restaurant"
    DRIVER = "driver"
    PLATFORM = "platform"


# Opcodes each role may append through the generic event API (docs/protocol.md §2).
APPEND_OPCODES: dict[Role, frozenset[int]] = {
    Role.CUSTOMER: frozenset({Opcode.ORDER_CREATE, Opcode.INVOICE_PAYMENT}),
    Role.RESTAURANT: frozenset(
        {Opcode.TASK_CREATE, Opcode.TASK_START, Opcode.TASK_DONE, Opcode.SALE_OUT}
    ),
    Role.DRIVER: frozenset({Opcode.ORDER_SHIP, Opcode.ORDER_DELIVER}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a tenant acting in one role."""

    tenant: str
    role: Role
    # When the token it came from expires (unix seconds); None: never. Not part of who it is.
    exp: float | None = field(default=None, compare=False)

    @property
    def is_platform(self) -> bool:
        return self.role is Role.PLATFORM


def issue_token(secret: str, tenant: str, role: str, *, ttl: float | None = None) -> str:
    """Sign a token for ``tenant`` in ``role`` (no expiry unless ``ttl`` seconds)."""
    if not TENANT_ID_RE.match(tenant):
        raise ValueError(f"invalid tenant id {tenant!r}")
    claims: dict[str, object] = {"sub": tenant, "role": Role(role).value, "iat": int(time.time())}
    if ttl is not None:
        claims["exp"] = int(time.time() + ttl)
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_token(secret: str, token: str | None) -> Principal:
    """Verify ``token`` and return its principal, or raise :class:`Unauthorized`."""
    return _decode(secret, token)[0]


class TokenCache:
    """Remembers tokens already verified (until they expire), so that a busy client's
    every request does not pay for HMAC and JSON again. Bounded; oldest dropped first."""

    def __init__(self, secret: str, size: int = 10_000) -> None:
        self.secret = secret
        self.size = size
        self._seen: OrderedDict[str, tuple[Principal, float | None]] = OrderedDict()

    def principal(self, token: str | None) -> Principal:
        if token:
            hit = self._seen.get(token)
            if hit is not None and (hit[1] is None or hit[1] > time.time()):
                self._seen.move_to_end(token)
                return hit[0]
        who, exp = _decode(self.secret, token)
        assert token is not None
        self._seen[token] = (who, exp)
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return who


def _decode(secret: str, token: str | None) -> tuple[Principal, float | None]:
    if not token:
        raise Unauthorized("a bearer token is required")
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["sub", "role"]}
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired", code="token_expired") from None
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {exc}", code="invalid_token") from None
    for claim in ("exp", "nbf", "iat"):
        # PyJWT compares int(value), so "exp": "1796463842" passes its check; a cache that
        # took such a string for "no expiry" would honour the token for ever.
        value = claims.get(claim)
        if claim in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise Unauthorized(f"token claim {claim!r} must be a number", code="invalid_token")
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not TENANT_ID_RE.match(sub):
        raise Unauthorized("token subject is not a valid tenant id", code="invalid_token")
    exp = claims.get("exp")
    expires = None if exp is None else float(exp)
    try:
        who = Principal(sub, Role(str(role)), expires)
    except ValueError:
        raise Unauthorized(f"unknown role {role!r}", code="invalid_token") from None
    return who, expires


def authorize_read(who: Principal, info: StreamInfo | None) -> None:
    """Allow members and the platform to read a stream; nobody else learns it exists."""
    if who.is_platform:
        if info is None:
            raise NotFound("no such stream")
        return
    if info is None or who.tenant not in info.members:
        raise Forbidden("not a member of this stream")


def check_client_ids(who: Principal, stream_id: str, events: Sequence[NewEvent]) -> None:
    """422 ``reserved_id`` for an id a client chose in the order flow's namespace.

    The order steps give their events the ids ``{streamId}.{step}`` (``ord-5001.pay``,
    ``ord-5001.assign``, docs/protocol.md §4.2) and tell by those ids which steps are done.
    Only the hub and the platform may write them: a party that wrote ``ord-5001.assign``
    first would make Step 6 fail after it claimed a driver, or pass a step for done. The
    answer depends on the id and the URL alone, never on what the stream holds.
    """
    if who.is_platform:
        return
    reserved = stream_id + "."
    for ev in events:
        if not ev.fresh_id and ev.id.startswith(reserved):
            raise Unprocessable(f"event ids {reserved}* are the order steps'; choose another id",
                                code="reserved_id")  # fmt: skip


def authorize_append(who: Principal, info: StreamInfo | None, events: Sequence[NewEvent]) -> bool:
    """Check an append through the generic event API; return True if it must open the stream.

    A customer's ORDER_CREATE must name the customer itself and be the stream's first
    event (the store enforces "first" atomically). Apart from that and the platform, the
    writer must be a member, counting memberships conferred earlier in the same batch.
    """
    if who.is_platform:
        return False
    allowed = APPEND_OPCODES[who.role]
    members = set(info.members) if info is not None else set()
    first = False
    for i, ev in enumerate(events):
        if ev.opcode not in allowed:
            raise Forbidden(f"a {who.role} may not append opcode {ev.opcode}")
        if ev.opcode == Opcode.ORDER_CREATE:
            payload = ev.payload_obj
            if payload.get("customer") != who.tenant:
                raise Forbidden("ORDER_CREATE must name the customer itself")
            if i != 0 or (info is not None and info.last_seq > 0 and who.tenant not in members):
                raise Forbidden("ORDER_CREATE may only open a new stream")
            first = True
            for key in ("customer", "restaurant"):
                value = payload.get(key)
                if isinstance(value, str):
                    members.add(value)
            continue
        if who.tenant not in members:
            raise Forbidden("not a member of this stream")
    return first
