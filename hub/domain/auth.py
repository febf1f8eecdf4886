"""Identity and access (docs/protocol.md §2): tokens, roles, and who may read or append what.

A token is a JWT with ``sub`` (a tenant id) and ``role``: HS256 signed with ``HUB_SECRET``,
or, with ``HUB_JWKS_URL`` set, RS256, ES256 or EdDSA signed by an identity provider whose
keys that JWKS serves (:class:`Jwks`). Membership of a stream is conferred only by the
events that name a tenant (ORDER_CREATE's customer and restaurant, TASK_ASSIGN's driver)
and is recorded by the store; this module decides, given a principal and what the store
knows, whether an action is allowed.

Verifying a token (:meth:`TokenCache.principal`) is synchronous and never waits for the
network: it uses the JWKS keys fetched last. Fetching them is blocking urllib (PyJWT's
:class:`~jwt.PyJWKClient`), so it runs in a worker thread, awaited through
:meth:`TokenCache.prepare` (or :meth:`TokenCache.authenticate`) by whoever is about to
verify a token whose ``kid`` is not known yet: the app does so for every HTTP request
before it is routed, the WebSocket transport before it admits a socket or takes a refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import jwt

from hub.config import Settings
from hub.errors import Forbidden, NotFound, Unauthorized, Unprocessable
from hub.events import TENANT_ID_RE, NewEvent, Opcode
from hub.infra.store import StreamInfo

if TYPE_CHECKING:
    from jwt.types import Options

__all__ = [
    "Jwks",
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


# The identity provider's algorithms (docs/protocol.md §2); HS256 is the hub's own.
JWKS_ALGORITHMS = frozenset({"RS256", "ES256", "EdDSA"})
JWKS_LIFESPAN = 300.0  # seconds a fetched key set is used before the next use refetches it
JWKS_TIMEOUT = 10.0  # seconds one fetch may take

log = logging.getLogger("hub.auth")


class Jwks:
    """An identity provider's signing keys, served as a JWKS at ``url``.

    :meth:`key` looks a ``kid`` up in the key set fetched last, without I/O. :meth:`ensure`
    fetches the set again when ``kid`` is not in it (or it is older than :data:`JWKS_LIFESPAN`),
    at most once every ``cooldown`` seconds, however many tokens with unknown kids come (a
    failed fetch counts too, so an identity provider that is down is not hammered). The
    fetch is :class:`jwt.PyJWKClient`'s (http and https only, no redirects, a timeout) and
    runs in the loop's default executor; callers that arrive while one runs await that
    one. A fetch that fails keeps the keys fetched before. Nothing here is a task: the
    fetch's future completes on its own, and a caller that is cancelled stops waiting
    for it without stopping it.
    """

    def __init__(self, url: str, *, issuer: str | None = None, audience: str | None = None,
                 cooldown: float = 60.0, lifespan: float = JWKS_LIFESPAN,
                 timeout: float = JWKS_TIMEOUT) -> None:  # fmt: skip
        self.url = url
        self.issuer = issuer
        self.audience = audience
        self.cooldown = cooldown
        self.lifespan = lifespan
        # The set is cached here (read without a lock or a thread), not in the client.
        self._client = jwt.PyJWKClient(url, cache_jwk_set=False, timeout=timeout)
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched: float | None = None  # time.monotonic() of the last fetch that worked
        self._tried: float | None = None  # and of the last one started
        self._fetch: asyncio.Future[dict[str, jwt.PyJWK]] | None = None  # the one running
        self.fetches = 0  # fetches started

    @classmethod
    def from_settings(cls, settings: Settings) -> Jwks | None:
        if settings.jwks_url is None:
            return None
        return cls(settings.jwks_url, issuer=settings.jwt_issuer,
                   audience=settings.jwt_audience, cooldown=settings.jwks_cooldown)  # fmt: skip

    def key(self, kid: str) -> jwt.PyJWK | None:
        """The key ``kid`` of the set fetched last (None: unknown)."""
        return self._keys.get(kid)

    def wants(self, kid: str) -> bool:
        """Whether :meth:`ensure` would fetch (or join a fetch) for ``kid`` now."""
        if self._fetch is not None:
            return True
        now = time.monotonic()
        if kid in self._keys and self._fetched is not None and now - self._fetched < self.lifespan:
            return False
        return self._tried is None or now - self._tried >= self.cooldown

    async def ensure(self, kid: str) -> None:
        """Fetch the key set if ``kid`` needs it and the cooldown allows; never raises
        (what the keys then say is :meth:`TokenCache.principal`'s to tell)."""
        if not self.wants(kid):
            return
        fetch = self._fetch
        if fetch is None:
            self._tried = time.monotonic()
            self.fetches += 1
            fetch = self._fetch = asyncio.get_running_loop().run_in_executor(None, self._download)
            fetch.add_done_callback(self._downloaded)
        with contextlib.suppress(Exception):
            await asyncio.shield(fetch)

    def _download(self) -> dict[str, jwt.PyJWK]:
        """The set's signing keys of the allowed algorithms, by kid (in a worker thread)."""
        keys = self._client.get_signing_keys(refresh=True)  # those with a kid, use sig or none
        usable = {k.key_id: k for k in keys if k.key_id and k.algorithm_name in JWKS_ALGORITHMS}
        if not usable:
            raise jwt.PyJWKClientError("the JWKS has no RS256, ES256 or EdDSA signing key")
        return usable

    def _downloaded(self, fetch: asyncio.Future[dict[str, jwt.PyJWK]]) -> None:
        self._fetch = None
        if fetch.cancelled():
            return
        exc = fetch.exception()
        if exc is not None:
            log.warning("JWKS fetch from %s failed (the keys fetched before stay): %s",
                        self.url, exc)  # fmt: skip
            return
        self._keys = fetch.result()
        self._fetched = time.monotonic()


class TokenCache:
    """Remembers tokens already verified (until they expire), so that a busy client's
    every request does not pay for HMAC (or RSA) and JSON again. Bounded; oldest dropped
    first. With ``jwks``, tokens of the identity provider are verified too."""

    def __init__(self, secret: str, size: int = 10_000, *, jwks: Jwks | None = None) -> None:
        self.secret = secret
        self.size = size
        self.jwks = jwks
        self._seen: OrderedDict[str, tuple[Principal, float | None]] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenCache:
        return cls(settings.secret, jwks=Jwks.from_settings(settings))

    def principal(self, token: str | None) -> Principal:
        """Verify ``token`` (or remember it verified); raise :class:`Unauthorized`.

        A token of the identity provider whose ``kid`` is not among the keys fetched last
        is refused: await :meth:`prepare` first to have them fetched."""
        if token:
            hit = self._seen.get(token)
            if hit is not None and (hit[1] is None or hit[1] > time.time()):
                self._seen.move_to_end(token)
                return hit[0]
        who, exp = _decode(self.secret, token, self.jwks)
        assert token is not None
        self._seen[token] = (who, exp)
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return who

    async def prepare(self, token: str | None) -> None:
        """Have the JWKS fetched if ``token`` names a key not known yet (see :class:`Jwks`);
        nothing to do without a JWKS, for an HS256 token or for one verified before."""
        jwks = self.jwks
        if jwks is None or not token or token in self._seen:
            return
        kid = _jwks_kid(token)
        if kid is not None:
            await jwks.ensure(kid)

    async def authenticate(self, token: str | None) -> Principal:
        """:meth:`prepare`, then :meth:`principal`."""
        await self.prepare(token)
        return self.principal(token)


def _jwks_kid(token: str) -> str | None:
    """The ``kid`` of a token signed with one of :data:`JWKS_ALGORITHMS` (None otherwise,
    or when the header cannot be read)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None
    kid = header.get("kid")
    return kid if header.get("alg") in JWKS_ALGORITHMS and isinstance(kid, str) else None


def _verify(secret: str, token: str, jwks: Jwks | None) -> dict[str, Any]:
    """The claims of ``token``, verified (raises PyJWT's errors or :class:`Unauthorized`).

    HS256 with ``secret``; with ``jwks``, also the identity provider's algorithms, each
    with the key its ``kid`` names (whose algorithm must be the token's: PyJWK checks it),
    ``iss`` and ``aud`` checked when they are configured."""
    required = ["sub", "role"]
    options: Options = {"require": required}
    if jwks is not None:
        header = jwt.get_unverified_header(token)
        alg = header.get("alg")
        if alg in JWKS_ALGORITHMS:
            kid = header.get("kid")
            key = jwks.key(kid) if isinstance(kid, str) else None
            if key is None:
                raise Unauthorized("invalid token: no key with its kid", code="invalid_token")
            if key.algorithm_name != alg:  # PyJWT checks it too; an RS256 key is RS256 only
                raise Unauthorized(f"invalid token: its key is not an {alg} key",
                                   code="invalid_token")  # fmt: skip
            if jwks.issuer is not None:
                required.append("iss")
            if jwks.audience is not None:
                required.append("aud")
            else:
                options["verify_aud"] = False  # checked when HUB_JWT_AUDIENCE is set
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=[alg], options=options,
                                                issuer=jwks.issuer, audience=jwks.audience)
            return claims
    claims = jwt.decode(token, secret, algorithms=["HS256"], options=options)
    return claims


def _decode(secret: str, token: str | None,
            jwks: Jwks | None = None) -> tuple[Principal, float | None]:  # fmt: skip
    if not token:
        raise Unauthorized("a bearer token is required")
    try:
        claims = _verify(secret, token, jwks)
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired", code="token_expired") from None
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {exc}", code="invalid_token") from None
    except OverflowError:  # PyJWT's int() of an "exp" of Infinity (JSON as Python reads it)
        raise Unauthorized("invalid token: a time claim out of range",
                           code="invalid_token") from None  # fmt: skip
    for claim in ("exp", "nbf", "iat"):
        # PyJWT compares int(value), so "exp": "1796463842" passes its check; a cache that
        # took such a string for "no expiry" would honour the token for ever.
        value = claims.get(claim)
        if claim in claims and (isinstance(value, bool) or not isinstance(value, int | float)
                                or not math.isfinite(value)):  # fmt: skip
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
