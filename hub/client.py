"""A Python client for backend services: the hub's HTTP API and self-healing subscriptions.

::

    from hub.client import HubClient, Conflict

    async with HubClient("http://hub:8000", token_provider=get_token) as hub:
        async for event in hub.stream("ord-5001", since=last_seq):   # or hub.inbox(since=pos)
            handle(event)                          # an Event: seq, pos, opcode, name, payload...
            last_seq = event.seq

What a subscription (:meth:`HubClient.stream`, :meth:`HubClient.inbox`) guarantees, as the
hub's contract (docs/protocol.md §5, "The guarantee") lets a client guarantee it:

- **Every event once, in order.** It remembers the ``seq`` (stream) or ``pos`` (inbox) of
  the last event it queued, reconnects after any close with ``since`` set to it, and drops
  anything at or below it. This holds across dropped connections, hub restarts and moves to
  another instance (set :attr:`HubClient.base_url`; the next connection uses it).
- **Reconnects** after 1001/1012 (the hub stops or restarts), 1011, 4008 (stalled), 4029,
  network errors and a refused handshake, with exponential backoff and full jitter
  (a delay drawn from ``[0, min(max_delay, min_delay * 2**attempt)]``); the attempt count
  starts again once a connection makes progress (an event or the ``live`` frame).
- **Stops** with :class:`Unauthorized` on close 4401 (with a ``token_provider``: only after
  one more attempt with a fresh token fails too), :class:`Forbidden` on 4403,
  :class:`HubError` on 1008 (a malformed request: the hub's ``error`` frame), and
  :class:`Unreachable` after ``max_retries`` failed attempts in a row (default: never).
- **Ends normally** on ``archived`` (the hub then closes with 1000). An inbox never ends by
  itself.
- **Bounded.** Frames go through a queue of ``queue_size`` items per subscription. When the
  consumer is slower than the hub, the reader stops reading the socket (the ``websockets``
  library then stops reading the TCP connection): the hub drops its live frames for this
  socket and feeds it from the log at the pace it drains, or closes it with 4008 after 30 s,
  and the subscription resumes with ``since``. Nothing is lost either way; memory stays
  bounded.
- **Token refresh** (with ``token_provider``, a sync or async callable returning a token):
  before the token's ``exp`` (read from the JWT, not verified) the subscription asks the
  provider for a new one and sends ``{"type": "auth", "token": T}`` on the open socket; the
  hub answers ``{"type": "auth", "exp": ...}``. A hub that answers with an ``error`` frame
  (``unknown_frame``: a hub without the frame) or does not answer within ``auth_timeout``
  gets a new connection with the new token instead, resuming with ``since``. HTTP calls use
  the same token and ask the provider again once on a 401.

By default a subscription yields :class:`Event` objects only. With ``frames=True`` it yields
every frame the hub sends, in the order it sends them: events as :class:`Event`, the others
(``live``, ``location``, ``archived``, ``auth``, ``error``, ``presence``, ``arriving``, …) as
:class:`Frame`. Either way a subscription is iterated once; leaving the ``async for`` (or the
``async with``) closes its socket.

HTTP calls raise :class:`HubError` subclasses by status, carrying the hub's
``{"error": {"code", "message"}}``: :class:`BadRequest` 400, :class:`Unauthorized` 401,
:class:`Forbidden` 403, :class:`NotFound` 404, :class:`Conflict` 409 (``.code`` says which:
``out_of_turn``, ``already_done``, ``too_far``, …), :class:`PayloadTooLarge` 413,
:class:`Unprocessable` 422, :class:`Unavailable` 503 (retryable; ``.retry_after``), and
:class:`Unreachable` when the hub cannot be reached (status 0; a request that timed out may
have been carried out, so retry only what is idempotent: appends with an ``id``, order steps).

HTTP needs ``httpx`` (``pip install 'hub-streams[client]'``); subscriptions need only
``websockets``, a dependency of the hub. This module is standalone: it imports nothing else
from the hub.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast, overload
from urllib.parse import quote

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

if TYPE_CHECKING:
    import httpx

__all__ = [
    "BadRequest",
    "Conflict",
    "Event",
    "Forbidden",
    "Frame",
    "HubClient",
    "HubError",
    "NotFound",
    "OrderCreated",
    "PayloadTooLarge",
    "StepResult",
    "StreamPage",
    "Subscription",
    "TokenProvider",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "Unreachable",
    "token_claims",
]

TokenProvider = Callable[[], "str | Awaitable[str]"]

# Close codes (docs/protocol.md §6); kept here so that the client imports nothing of the hub.
NORMAL = 1000
POLICY_VIOLATION = 1008
ABNORMAL = 1006
UNAUTHORIZED = 4401
FORBIDDEN = 4403
_ARCHIVED = -1  # a session's outcome: the stream was archived (not a close code)
_REFRESH = -2  # a session's outcome: reconnect now with the new token


# -- errors -----------------------------------------------------------------------------


class HubError(Exception):
    """An error the hub answered (or a failure to reach it, :class:`Unreachable`).

    ``status`` is the HTTP status (0: not reached), ``code`` and ``message`` the hub's error
    body, ``close_code`` the WebSocket close code when it came from a socket.
    """

    status: int = 0
    default_code: str = "error"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        body: Any = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        if status is not None:
            self.status = status
        self.body = body
        self.close_code = close_code

    def __str__(self) -> str:
        where = f"close {self.close_code}" if self.close_code else f"HTTP {self.status}"
        return f"{self.code}: {self.message} ({where})"


class BadRequest(HubError):
    status, default_code = 400, "bad_request"


class Unauthorized(HubError):
    """401, or close 4401: no token or a bad one (expired, wrong signature)."""

    status, default_code = 401, "unauthorized"


class Forbidden(HubError):
    """403, or close 4403: not allowed (not a member, no such stream, wrong role)."""

    status, default_code = 403, "forbidden"


class NotFound(HubError):
    status, default_code = 404, "not_found"


class Conflict(HubError):
    """409: ``code`` is ``out_of_turn``, ``already_done``, ``too_far``, ``conflict``, …"""

    status, default_code = 409, "conflict"


class PayloadTooLarge(HubError):
    status, default_code = 413, "too_large"


class Unprocessable(HubError):
    status, default_code = 422, "invalid_body"


class Unavailable(HubError):
    """503: nothing was written; retry (after ``retry_after`` seconds when the hub says).
    Except ``.code == "stopped"``: the instance stopped before the request was done, which
    may have been carried out, so retry only what is idempotent (as for :class:`Unreachable`)."""

    status, default_code, retryable = 503, "unavailable", True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class Unreachable(HubError):
    """The hub could not be reached (connection refused, timeout, reset)."""

    status, default_code, retryable = 0, "unreachable", True


_BY_STATUS: dict[int, type[HubError]] = {
    cls.status: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge,
                Unprocessable, Unavailable)
}  # fmt: skip


def _error_for(status: int, data: Any, text: str, retry_after: str | None = None) -> HubError:
    err = data.get("error") if isinstance(data, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    code = code if isinstance(code, str) and code else f"http_{status}"
    message = message if isinstance(message, str) and message else (text[:200] or f"HTTP {status}")
    cls = _BY_STATUS.get(status, HubError)
    if cls is Unavailable:
        after: float | None = None
        if retry_after:
            try:
                after = float(retry_after)
            except ValueError:
                after = None
        return Unavailable(message, code=code, status=status, body=data, retry_after=after)
    return cls(message, code=code, status=status, body=data)


# -- what the hub sends ------------------------------------------------------------------


class Event(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """A committed event (docs/protocol.md §3); attribute names in snake case
    (``stream_id``, ``node_id``, ``point_id``), ``to_dict()`` gives the contract's JSON."""

    id: str
    stream_id: str
    seq: int
    pos: int
    opcode: int
    name: str
    node_id: str | None = None
    point_id: str | None = None
    delta: float = 0.0
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    ts: str = ""  # ISO 8601 UTC, e.g. 2026-11-27T12:30:00.000Z

    def to_dict(self) -> dict[str, Any]:
        return cast(dict[str, Any], msgspec.to_builtins(self))


@dataclass(frozen=True, slots=True)
class Frame:
    """Any other frame from the hub (``frames=True``): ``type`` and the frame as sent."""

    type: str
    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


class StreamPage(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """``GET /api/streams/{id}``: one page; read on with ``since=last event's seq`` until
    ``last_seq`` is reached."""

    stream_id: str
    status: str  # "active" | "archived"
    order_status: str | None = None
    last_seq: int | None = None
    events: list[Event] = msgspec.field(default_factory=list)


class StepResult(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An order step's answer: the order's status after it and the events it wrote."""

    order_id: str
    order_status: str | None = None
    events: list[Event] = msgspec.field(default_factory=list)


class OrderCreated(StepResult, frozen=True, kw_only=True, rename="camel"):
    """``POST /api/orders`` (Step 1)."""

    stream_id: str
    total: float
    currency: str


def token_claims(token: str | None) -> dict[str, Any] | None:
    """A JWT's claims, NOT verified (the hub verifies): for ``exp``; None when not a JWT."""
    if not token:
        return None
    try:
        part = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "hub.client's HTTP calls need httpx: pip install 'hub-streams[client]'"
        ) from exc
    return httpx


# -- the client ----------------------------------------------------------------------------

T = TypeVar("T")


class HubClient:
    """The hub's HTTP API and subscriptions with one identity.

    ``token`` is a fixed token; ``token_provider`` a callable (sync or async) returning a
    fresh one, called when none is held yet, before the held one expires, and once more after
    a 401/4401. Give either, both (``token`` first, then the provider), or none (every call
    then gets 401).
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        token_provider: TokenProvider | None = None,
        timeout: float = 10.0,
        min_delay: float = 0.5,
        max_delay: float = 15.0,
        max_retries: int | None = None,
        queue_size: int = 256,
        refresh_before: float = 60.0,
        auth_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.base_url = base_url  # http(s)://host[:port][/prefix]; may be changed at any time
        self.timeout = timeout
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.max_retries = max_retries
        self.queue_size = queue_size
        self.refresh_before = refresh_before
        self.auth_timeout = auth_timeout
        self.ping_interval = ping_interval
        self._token_value = token
        self._obtained = time.time()
        self._provider = token_provider
        self._token_lock = asyncio.Lock()
        self._http = http
        self._own_http = http is None
        self._subscriptions: set[Subscription[Any]] = set()

    @property
    def base_url(self) -> str:
        return self._base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be http(s)://…, not {value!r}")
        self._base_url = value.rstrip("/")

    async def __aenter__(self) -> HubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every open subscription and the HTTP client (if this client made it)."""
        await asyncio.gather(*(sub.aclose() for sub in list(self._subscriptions)))
        if self._http is not None and self._own_http:
            await self._http.aclose()
            self._http = None

    # -- tokens ------------------------------------------------------------------------

    def _refresh_at(self, token: str | None) -> float | None:
        """When ``token`` should be replaced (unix seconds); None: never (no ``exp``)."""
        claims = token_claims(token) or {}
        exp = _number(claims.get("exp"))
        if exp is None:
            return None
        start = _number(claims.get("iat"))
        lifetime = max(0.0, exp - (start if start is not None else self._obtained))
        return exp - min(self.refresh_before, lifetime / 3)

    def _due(self, token: str) -> bool:
        at = self._refresh_at(token)
        return at is not None and time.time() >= at

    async def _token(self) -> str | None:
        """The token to use now (from the provider when none is held or it is due)."""
        current = self._token_value
        if self._provider is None or (current is not None and not self._due(current)):
            return current
        return await self._fresh_token(current)

    async def _fresh_token(self, stale: str | None) -> str | None:
        """A token other than ``stale`` from the provider (or one another caller just got)."""
        if self._provider is None:
            return self._token_value
        async with self._token_lock:
            current = self._token_value
            if current is not None and current != stale and not self._due(current):
                return current
            value = self._provider()
            if inspect.isawaitable(value):
                value = await value
            if not isinstance(value, str) or not value:
                raise TypeError(f"token_provider returned {type(value).__name__}, not a token")
            self._token_value, self._obtained = value, time.time()
            return value

    # -- subscriptions -----------------------------------------------------------------

    @overload
    def stream(
        self, stream_id: str, since: int = 0, *, frames: Literal[False] = False
    ) -> Subscription[Event]: ...
    @overload
    def stream(
        self, stream_id: str, since: int = 0, *, frames: Literal[True]
    ) -> Subscription[Event | Frame]: ...
    def stream(self, stream_id: str, since: int = 0, *, frames: bool = False) -> Any:
        """One stream's events with ``seq > since``, then live, until it is archived."""
        path = f"/ws/streams/{quote(stream_id, safe='')}"
        return Subscription(self, path, "seq", since, frames=frames)

    @overload
    def inbox(self, since: int = 0, *, frames: Literal[False] = False) -> Subscription[Event]: ...
    @overload
    def inbox(self, since: int = 0, *, frames: Literal[True]) -> Subscription[Event | Frame]: ...
    def inbox(self, since: int = 0, *, frames: bool = False) -> Any:
        """The token's tenant's inbox: every event with ``pos > since`` of its streams."""
        return Subscription(self, "/ws/inbox", "pos", since, frames=frames)

    # -- HTTP --------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = cast("httpx.AsyncClient", _httpx().AsyncClient(timeout=self.timeout))
            self._own_http = True
        return self._http

    async def request(
        self, method: str, path: str, body: Any = None, *, params: Mapping[str, Any] | None = None
    ) -> Any:
        """Call the hub (``path`` from ``/``); the decoded JSON answer, or a HubError."""
        httpx_ = _httpx()
        http = self._client()
        token = await self._token()
        content = None if body is None else msgspec.json.encode(body)
        for attempt in range(2):
            headers = {"accept": "application/json"}
            if content is not None:
                headers["content-type"] = "application/json"
            if token:
                headers["authorization"] = f"Bearer {token}"
            try:
                response = await http.request(
                    method, self._base_url + path, content=content, headers=headers,
                    params=dict(params) if params else None,
                )  # fmt: skip
            except httpx_.TransportError as exc:
                raise Unreachable(f"{method} {path}: {exc!r}") from exc
            if response.status_code == 401 and attempt == 0 and self._provider is not None:
                token = await self._fresh_token(token)
                continue
            break
        text = response.text
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        if response.is_success:
            return data
        raise _error_for(response.status_code, data, text, response.headers.get("retry-after"))

    async def _typed(self, kind: type[Any], method: str, path: str, body: Any = None,
                     params: Mapping[str, Any] | None = None) -> Any:  # fmt: skip
        data = await self.request(method, path, body, params=params)
        try:
            return msgspec.convert(data, kind)
        except msgspec.ValidationError as exc:
            raise HubError(f"unexpected answer to {method} {path}: {exc}", code="bad_response",
                           status=200, body=data) from exc  # fmt: skip

    async def append(
        self, stream_id: str, events: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> list[Event]:
        """Append one event draft or a batch (≤ 100, all or nothing); the stored events.
        Name an ``id`` to make a retry safe (the same content again answers the stored one)."""
        body: Any = dict(events) if isinstance(events, Mapping) else {"events": list(events)}
        got = await self._typed(_Appended, "POST", f"/api/streams/{_q(stream_id)}/events", body)
        return cast(list[Event], got.events)

    async def read(self, stream_id: str, since: int = 0, *, limit: int | None = None) -> StreamPage:
        """One page of a stream's events with ``seq > since`` (archived streams too)."""
        params: dict[str, Any] = {"since": since}
        if limit is not None:
            params["limit"] = limit
        page = await self._typed(StreamPage, "GET", f"/api/streams/{_q(stream_id)}",
                                 params=params)  # fmt: skip
        return cast(StreamPage, page)

    async def archive(self, stream_id: str) -> dict[str, Any]:
        """Archive a stream now (the platform): seed Step 11."""
        got = await self.request("POST", f"/api/streams/{_q(stream_id)}/archive", {})
        return cast(dict[str, Any], got)

    async def order(self, order_id: str) -> dict[str, Any]:
        """``GET /api/orders/{id}``: what the apps show of an order (the hub's JSON)."""
        return cast(dict[str, Any], await self.request("GET", f"/api/orders/{_q(order_id)}"))

    async def create_order(
        self,
        restaurant: str,
        items: Sequence[Mapping[str, Any]],
        delivery_address: str,
        *,
        notes: str | None = None,
        order_id: str | None = None,
        delivery_location: Mapping[str, float] | None = None,
    ) -> OrderCreated:
        """Step 1 (a customer): ``items`` are ``{"productId", "qty"}``; ``order_id`` makes a
        retry safe (409 ``already_done`` the second time)."""
        location = None if delivery_location is None else dict(delivery_location)
        body = _body(restaurant=restaurant, items=[dict(i) for i in items],
                     deliveryAddress=delivery_address, notes=notes, orderId=order_id,
                     deliveryLocation=location)  # fmt: skip
        return cast(OrderCreated, await self._typed(OrderCreated, "POST", "/api/orders", body))

    async def _step(self, order_id: str, step: str, body: dict[str, Any]) -> StepResult:
        got = await self._typed(StepResult, "POST", f"/api/orders/{_q(order_id)}/{step}", body)
        return cast(StepResult, got)

    async def pay(self, order_id: str, method: str = "card", card_last4: str | None = None
                  ) -> StepResult:  # fmt: skip
        """Step 2 (the order's customer)."""
        return await self._step(order_id, "pay", _body(method=method, cardLast4=card_last4))

    async def accept(self, order_id: str, *, chef: str | None = None, station: str | None = None,
                     est_minutes: int | None = None) -> StepResult:  # fmt: skip
        """Steps 3 and 4 (the order's restaurant): the stock is taken here."""
        body = _body(chef=chef, station=station, estMinutes=est_minutes)
        return await self._step(order_id, "accept", body)

    async def ready(self, order_id: str, *, actual_minutes: int | None = None) -> StepResult:
        """Step 5, then Step 6 (the nearest idle driver), by the order's restaurant."""
        return await self._step(order_id, "ready", _body(actualMinutes=actual_minutes))

    async def pickup(self, order_id: str, *, confirmed_items: int | None = None) -> StepResult:
        """Step 8 (the assigned driver)."""
        return await self._step(order_id, "pickup", _body(confirmedItems=confirmed_items))

    async def deliver(self, order_id: str, lat: float, lng: float) -> StepResult:
        """Step 10, then Step 11 after ``HUB_ARCHIVE_DELAY`` (the assigned driver); 409
        ``too_far`` from further than ``HUB_DELIVER_RADIUS`` from the drop-off."""
        return await self._step(order_id, "deliver", {"lat": lat, "lng": lng})

    async def cancel(self, order_id: str, reason: str | None = None) -> StepResult:
        """Cancel (customer while placed/paid, restaurant before ready, platform)."""
        return await self._step(order_id, "cancel", _body(reason=reason))

    async def decline(self, order_id: str, reason: str | None = None) -> StepResult:
        """The assigned driver gives the order back before pickup."""
        return await self._step(order_id, "decline", _body(reason=reason))


class _Appended(msgspec.Struct, frozen=True):
    events: list[Event]


def _q(value: str) -> str:
    return quote(value, safe="")


def _body(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


# -- a subscription --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None = None


class Subscription(Generic[T]):
    """A self-healing subscription: ``async for item in sub`` (see the module docstring).

    ``cursor`` is the ``seq`` (stream) or ``pos`` (inbox) of the last event queued for the
    consumer (persist the last one you *processed* to resume after a restart of your own);
    ``connects`` counts the connections opened, ``refreshes`` the tokens the hub took on an
    open socket; ``archived`` is set once the stream was archived.
    """

    def __init__(self, client: HubClient, path: str, key: Literal["seq", "pos"], since: int,
                 *, frames: bool) -> None:  # fmt: skip
        if not isinstance(since, int) or isinstance(since, bool) or since < 0:
            raise ValueError(f"since must be an integer >= 0, not {since!r}")
        self._client = client
        self.path = path
        self.key = key
        self.cursor = since
        self.frames = frames
        self.connects = 0
        self.refreshes = 0
        self.archived = False
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue(client.queue_size)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._iterated = False
        self._auth_reply: asyncio.Future[bool] | None = None
        self._fallback = False
        self._admitted = False
        self._advanced = False
        self._last_error: dict[str, Any] | None = None

    # -- the consumer's side ------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (``async for`` and ``async with`` do it)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name=f"hub-client {self.path}")
            self._client._subscriptions.add(self)

    async def __aenter__(self) -> Subscription[T]:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[T]:
        if self._iterated:
            raise RuntimeError("a subscription is iterated once; open a new one")
        self._iterated = True
        return self._items()

    async def _items(self) -> AsyncIterator[T]:
        self.start()
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the socket and stop (idempotent); a waiting ``async for`` ends."""
        if self._closed:
            return
        self._closed = True
        self._client._subscriptions.discard(self)
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        while not self._queue.empty():  # wake a consumer waiting in another task
            self._queue.get_nowait()
        self._queue.put_nowait(_End())

    # -- the reader ----------------------------------------------------------------------

    async def _put(self, item: Event | Frame) -> None:
        await self._queue.put(cast(T, item))

    async def _run(self) -> None:
        error: BaseException | None = None
        try:
            await self._follow()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # HubError, or a bug: the consumer sees it either way
            error = exc
        await self._queue.put(_End(error))

    async def _follow(self) -> None:
        client = self._client
        attempt = 0
        retried_401 = False
        while True:
            token = await client._token()
            code = await self._session(token)
            if code == _ARCHIVED:
                return
            if code == _REFRESH:
                attempt = 0
                continue
            if self._admitted:
                retried_401 = False
            if code == UNAUTHORIZED:
                if client._provider is not None and not retried_401:
                    retried_401 = True
                    await client._fresh_token(client._token_value)  # ask the provider again
                    continue
                raise Unauthorized("the hub refused the token", close_code=code)
            if code == FORBIDDEN:
                raise Forbidden(f"not allowed to subscribe to {self.path}", close_code=code)
            if code == POLICY_VIOLATION:
                err = self._last_error or {}
                raise HubError(str(err.get("message") or "the hub refused the request"),
                               code=str(err.get("code") or "policy_violation"),
                               body=err, close_code=code)  # fmt: skip
            if self._advanced:
                attempt = 0
            if client.max_retries is not None and attempt >= client.max_retries:
                raise Unreachable(f"{self.path}: gave up after {attempt} attempts (last close "
                                  f"{code})", close_code=code)  # fmt: skip
            cap = min(client.max_delay, client.min_delay * 2**attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(0, cap))

    def _url(self) -> str:
        base = self._client.base_url
        scheme = "wss" if base.startswith("https://") else "ws"
        return f"{scheme}://{base.split('://', 1)[1]}{self.path}?since={self.cursor}"

    async def _session(self, token: str | None) -> int:
        """One connection, until it closes; the close code, or _ARCHIVED / _REFRESH."""
        client = self._client
        self._admitted = self._advanced = self._fallback = False
        self._last_error = None
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            ws = await connect(
                self._url(), additional_headers=headers, open_timeout=client.timeout,
                ping_interval=client.ping_interval, ping_timeout=client.ping_interval,
                close_timeout=2, max_size=4 << 20, max_queue=16,
            )  # fmt: skip
        except InvalidStatus as exc:  # the hub answers refusals as close codes; a proxy may not
            status = exc.response.status_code
            return {401: UNAUTHORIZED, 403: FORBIDDEN}.get(status, ABNORMAL)
        except (OSError, TimeoutError, WebSocketException):
            return ABNORMAL
        self.connects += 1
        refresher = None
        if client._provider is not None and client._refresh_at(token) is not None:
            refresher = asyncio.create_task(self._refresh(ws, token))
        try:
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed as exc:
                    if self._fallback:
                        return _REFRESH
                    return exc.rcvd.code if exc.rcvd is not None else ABNORMAL
                if await self._frame(raw):
                    return _ARCHIVED
        finally:
            if refresher is not None:
                refresher.cancel()
                await asyncio.gather(refresher, return_exceptions=True)
            await ws.close()

    async def _frame(self, raw: str | bytes) -> bool:
        """Act on one frame; True when the stream was archived."""
        try:
            frame = json.loads(raw)
        except ValueError:
            return False
        if not isinstance(frame, dict):
            return False
        self._admitted = True
        kind = frame.get("type")
        if kind == "event":
            key = frame.get(self.key)
            if not isinstance(key, int) or key <= self.cursor:
                return False  # already delivered
            await self._put(msgspec.convert(frame, Event))
            self.cursor = key
            self._advanced = True
            return False
        if kind == "live":
            self._advanced = True
        elif kind == "archived":
            self.archived = True
        elif kind == "auth":
            self.refreshes += 1
            self._answer_auth(True)
        elif kind == "error":
            err = frame.get("error")
            self._last_error = err if isinstance(err, dict) else None
            self._answer_auth(False)  # only auth frames are sent: an error answers one
        if self.frames:
            await self._put(Frame(str(kind), frame))
        return kind == "archived"

    def _answer_auth(self, ok: bool) -> None:
        fut = self._auth_reply
        if fut is not None and not fut.done():
            fut.set_result(ok)

    async def _refresh(self, ws: ClientConnection, token: str | None) -> None:
        """Replace the socket's token before it expires; reconnect when the hub cannot."""
        client = self._client
        current = token
        while True:
            at = client._refresh_at(current)
            if at is None:
                return
            await asyncio.sleep(max(0.0, at - time.time()))
            new = await client._fresh_token(current)
            old_exp = _number((token_claims(current) or {}).get("exp")) or 0.0
            new_exp = _number((token_claims(new) or {}).get("exp"))
            if not new or new == current or (new_exp is not None and new_exp <= old_exp):
                return  # nothing fresher: the hub closes 4401 at exp, then one more try
            fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._auth_reply = fut
            try:
                await ws.send(json.dumps({"type": "auth", "token": new}))
                ok = await asyncio.wait_for(fut, client.auth_timeout)
            except ConnectionClosed:
                return
            except TimeoutError:
                ok = False
            finally:
                self._auth_reply = None
            if not ok:  # an older hub (unknown_frame), or no answer: a new connection
                self._fallback = True
                await ws.close(NORMAL, "reconnecting with a fresh token")
                return
            current = new
