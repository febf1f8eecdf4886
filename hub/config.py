"""Settings: every knob of the hub, read once from the environment (docs/protocol.md §1).

``Settings.from_env()`` is the only place that reads ``os.environ``; the result is
frozen and passed down to :func:`hub.edge.app.create_app`.
"""

from __future__ import annotations

import os
import re
import secrets
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hub.events import MAX_BATCH, MAX_PAYLOAD_BYTES

__all__ = ["DEFAULT_MAP_ATTRIBUTION", "Settings", "SettingsError", "check_map_tiles",
           "check_tenant_admin"]

# Tile providers require their attribution on the map (OpenStreetMap's tile policy).
DEFAULT_MAP_ATTRIBUTION = "© OpenStreetMap contributors"
MAP_ATTRIBUTION_MAX = 300  # characters
# The placeholders a tile URL template may hold (Leaflet's): {z}, {x} and {y} (or {-y},
# TMS rows), {s} a subdomain, {r} "@2x" on high-density screens.
_TILE_PLACEHOLDERS = {"z", "x", "y", "-y", "s", "r"}


class SettingsError(ValueError):
    """A setting is malformed (e.g. a non-numeric ``HUB_ARCHIVE_DELAY``)."""


def _float(env: Mapping[str, str], name: str, default: float, *,
           minimum: float | None = None) -> float:  # fmt: skip
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and not minimum <= value < float("inf"):
        raise SettingsError(f"{name} must be a number of at least {minimum:g}, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int | None, *,
         minimum: int = 1) -> int | None:  # fmt: skip
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _limit(env: Mapping[str, str], name: str, default: int, *, minimum: int,
           maximum: int | None = None) -> int:  # fmt: skip
    """A whole-number limit between ``minimum`` and ``maximum`` (docs/protocol.md §8)."""
    value = _int(env, name, default, minimum=minimum)
    assert value is not None
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (case-insensitive); unset: the first."""
    raw = (env.get(name) or choices[0]).strip().lower()
    if raw not in choices:
        raise SettingsError(f"{name} must be {' or '.join(choices)}, got {raw!r}")
    return raw


def _auto_flag(env: Mapping[str, str], name: str) -> bool | None:
    """A yes/no setting that may be left to the hub: unset or ``auto`` -> None."""
    raw = (env.get(name) or "").strip().lower()
    if raw in {"", "auto"}:
        return None
    if raw in {"1", "true", "yes"}:
        return True
    if raw in {"0", "false", "no"}:
        return False
    raise SettingsError(f"{name} must be 1, 0 or auto, got {raw!r}")


def check_tenant_admin(admin_url: str, template: str) -> None:
    """Refuse ``HUB_TENANT_ADMIN_URL`` unless it is an http(s) URL and ``template``
    (``HUB_TENANT_DB``) names each tenant's sqld namespace: a remote URL whose host's first
    label holds ``{tenant}`` (hub.infra.namespaces). The key (its password) is never shown."""
    parts = urllib.parse.urlsplit(admin_url)
    try:
        parts.port  # noqa: B018 - a malformed port raises
    except ValueError as exc:
        raise SettingsError(f"HUB_TENANT_ADMIN_URL: {exc}") from None
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise SettingsError("HUB_TENANT_ADMIN_URL must be an http:// or https:// URL (sqld's"
                            " --admin-listen-addr)")  # fmt: skip
    if template.partition(":")[0].lower() not in {"libsql", "wss", "ws", "https", "http"}:
        raise SettingsError("HUB_TENANT_ADMIN_URL needs a remote HUB_TENANT_DB (ws://, wss://,"
                            " http://, https:// or libsql://)")  # fmt: skip
    label, dot, rest = urllib.parse.urlsplit(template).netloc.rpartition("@")[2].partition(".")
    if "{tenant}" not in label or not dot or not rest.partition(":")[0]:
        raise SettingsError("HUB_TENANT_ADMIN_URL needs HUB_TENANT_DB to name the tenant in the"
                            " first label of its host (the namespace), e.g."
                            " ws://{tenant}.db.internal:8080")  # fmt: skip


def check_map_tiles(template: str) -> None:
    """Refuse ``HUB_MAP_TILES`` unless it is an http(s) URL template of map tiles with
    ``{z}``, ``{x}`` and ``{y}`` (or ``{-y}``), and no other placeholder than ``{s}`` and
    ``{r}``. The browsers fetch it as it is, so it carries no user:password@ either."""
    example = "e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    if any(c.isspace() or not c.isprintable() for c in template):
        raise SettingsError("HUB_MAP_TILES must be a URL without spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(template)
        parts.port  # noqa: B018 - a malformed port raises
    except ValueError as exc:
        raise SettingsError(f"HUB_MAP_TILES: {exc}") from None
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise SettingsError(f"HUB_MAP_TILES must be an http:// or https:// URL template,"
                            f" {example}")  # fmt: skip
    if "@" in parts.netloc:
        raise SettingsError("HUB_MAP_TILES must not carry a user or password (the browsers"
                            " fetch the tiles; a key goes in the query)")  # fmt: skip
    names = re.findall(r"{([^{}]*)}", template)
    unknown = sorted(set(names) - _TILE_PLACEHOLDERS)
    if unknown:
        raise SettingsError(f"HUB_MAP_TILES may hold only {{z}}, {{x}}, {{y}} (or {{-y}}), {{s}}"
                            f" and {{r}}, not {{{unknown[0]}}}")  # fmt: skip
    if "z" not in names or "x" not in names or ("y" not in names and "-y" not in names):
        raise SettingsError(f"HUB_MAP_TILES must contain {{z}}, {{x}} and {{y}}, {example}")


def _load_or_create_secret(data_dir: Path) -> str:
    """Return the secret kept in ``data_dir/secret``, creating it once (0600)."""
    path = data_dir / "secret"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        value = path.read_text().strip()
        if value:
            return value
        raise SettingsError(f"{path} exists but is empty; delete it or set HUB_SECRET") from None
    value = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


@dataclass(frozen=True, slots=True)
class Settings:
    """The hub's configuration. Defaults match docs/protocol.md §1."""

    data_dir: Path = Path("./data")
    streams_db: str = ""
    # A read replica of a remote streams_db: event pages read from it (hub.infra.store.replica).
    streams_read_db: str | None = None
    tenant_db: str = ""
    public_db: str = ""
    # sqld's admin API creating each tenant DB's namespace on demand (hub.infra.namespaces);
    # its password is the admin key, hence no repr.
    tenant_admin_url: str | None = field(default=None, repr=False)
    db_auth_token: str | None = None
    redis_url: str | None = None
    redis_sharded: bool = False
    redis_cluster: bool | None = None  # sharded on a Redis Cluster; None: ask the server
    redis_prefix: str = "hub:"  # channel name prefix: one per deployment sharing a Redis
    archive_url: str = ""
    secret: str = field(default="", repr=False)
    # Tokens from an identity provider (docs/protocol.md §2): RS256, ES256 and EdDSA tokens
    # verified against this JWKS (hub.domain.auth.Jwks); iss and aud checked when set. An
    # unknown kid refetches the JWKS, at most once every jwks_cooldown seconds.
    jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwks_cooldown: float = 60.0
    archive_delay: float = 0.0
    delivery_fee: float = 5.00
    driver_payout: float = 12.00
    # Orders that do not go as planned (docs/protocol.md §6): an assigned driver silent this
    # long before pickup is unassigned; a paid order no kitchen accepts this long is
    # cancelled (0: never); deliver farther than this (metres) from the drop-off is refused.
    driver_timeout: float = 120.0
    accept_timeout: float = 900.0
    deliver_radius: float = 500.0
    # Tracking (docs/protocol.md §5 "Tracking frames"): an assigned driver whose positions
    # stop this long is announced `unreachable` to the order's subscribers.
    presence_timeout: float = 30.0
    log_format: str = "text"  # HUB_LOG_FORMAT: text or json (hub.edge.logs)
    # The web UI's street map (GET /api/config): a {z}/{x}/{y} tile URL template and the
    # tile provider's attribution, shown on the map; None: the schematic map.
    map_tiles: str | None = None
    map_attribution: str = DEFAULT_MAP_ATTRIBUTION

    # Limits and timeouts (additions to the contract; docs/protocol.md §8). Each has an
    # environment variable (from_env); the payload and batch limits may only be lowered:
    # the wire Structs of hub.events are declared with MAX_PAYLOAD_BYTES and MAX_BATCH.
    max_body_bytes: int = 1 << 20
    max_payload_bytes: int = MAX_PAYLOAD_BYTES  # the event model's limits (hub.events)
    max_batch: int = MAX_BATCH
    ws_stall_timeout: float = 30.0
    ws_queue_frames: int = 1024
    # A client frame over this (UTF-8 bytes) is answered with an error frame and the
    # socket stays open (hub.edge.ws); uvicorn's ws_max_size (1 MiB under `hub serve`)
    # closes the socket with 1009 above that.
    ws_max_frame_bytes: int = 64 << 10
    ws_max_per_token: int = 256  # open sockets per tenant and role
    # Server-Sent Events (hub.edge.sse): a comment goes out on a response that sent nothing
    # for this many seconds (proxies close idle responses). HUB_SSE_KEEPALIVE.
    sse_keepalive: float = 15.0
    # Bytes of read pages (replays, GET /api/streams/{id} answers) one tenant may hold at
    # once; its further reads wait (hub.domain.sessions.ReadBudget).
    tenant_read_budget: int = 64 << 20
    # uvicorn's ws_max_size under `hub serve` and `hub demo`: a frame over it closes 1009.
    ws_max_size: int = 1 << 20
    # Tenant DBs kept open (LRU), within the open-file limit; None: 4096 (hub.infra.tenants).
    tenant_max_open: int | None = None
    # Browser origins allowed to open sockets: () = the hub's own origin only; ("*",) = any.
    allowed_origins: tuple[str, ...] = ()
    # Connections (hub.edge.server; docs/deploy.md "Slow clients and the open-file limit").
    header_timeout: float = 10.0  # a request's line and headers must arrive within this
    body_timeout: float = 30.0  # and its body within this of its headers
    keep_alive_timeout: int = 5  # an idle connection between requests is closed after this
    # Open connections, HTTP and WebSocket; None: half the open-file limit less 64.
    max_connections: int | None = None

    def __post_init__(self) -> None:
        if self.ws_max_frame_bytes > self.ws_max_size:
            raise SettingsError(f"HUB_WS_MAX_FRAME_BYTES ({self.ws_max_frame_bytes}) must not"
                                f" exceed HUB_WS_MAX_SIZE ({self.ws_max_size})")  # fmt: skip
        if self.jwks_url is not None and not self.jwks_url.lower().startswith(
                ("http://", "https://")):  # fmt: skip
            raise SettingsError(f"HUB_JWKS_URL must be an http:// or https:// URL,"
                                f" got {self.jwks_url!r}")  # fmt: skip
        if self.jwks_url is None and (self.jwt_issuer or self.jwt_audience):
            raise SettingsError("HUB_JWT_ISSUER and HUB_JWT_AUDIENCE are checked on the tokens"
                                " of HUB_JWKS_URL: set HUB_JWKS_URL too")  # fmt: skip
        if self.map_tiles is not None:
            check_map_tiles(self.map_tiles)
        attribution = self.map_attribution
        if len(attribution) > MAP_ATTRIBUTION_MAX or not attribution.isprintable():
            raise SettingsError(f"HUB_MAP_ATTRIBUTION must be printable text of at most"
                                f" {MAP_ATTRIBUTION_MAX} characters")  # fmt: skip
        # Fill the defaults that derive from data_dir.
        d = self.data_dir
        if not self.streams_db:
            object.__setattr__(self, "streams_db", f"file:{d / 'streams.db'}")
        if self.streams_read_db is not None and not all(
                url.partition(":")[0].lower() in {"libsql", "wss", "ws", "https", "http"}
                for url in (self.streams_db, self.streams_read_db)):  # fmt: skip
            raise SettingsError("HUB_STREAMS_READ_DB is a read replica of a remote HUB_STREAMS_DB:"
                                " both must be libsql://, wss://, ws://, https:// or http://"
                                " URLs")  # fmt: skip
        if not self.tenant_db:
            object.__setattr__(self, "tenant_db", f"file:{d / 'tenants' / '{tenant}.db'}")
        if self.tenant_admin_url is not None:
            check_tenant_admin(self.tenant_admin_url, self.tenant_db)
        if not self.public_db:
            object.__setattr__(self, "public_db", f"file:{d / 'public.db'}")
        if not self.archive_url:
            object.__setattr__(self, "archive_url", f"file://{d.resolve() / 'archive'}")
        if not self.secret:
            object.__setattr__(self, "secret", _load_or_create_secret(d))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (``os.environ`` when omitted)."""
        e = os.environ if env is None else env
        return cls(
            data_dir=Path(e.get("HUB_DATA_DIR") or "./data"),
            streams_db=e.get("HUB_STREAMS_DB", ""),
            streams_read_db=(e.get("HUB_STREAMS_READ_DB") or "").strip() or None,
            tenant_db=e.get("HUB_TENANT_DB", ""),
            public_db=e.get("HUB_PUBLIC_DB", ""),
            tenant_admin_url=(e.get("HUB_TENANT_ADMIN_URL") or "").strip() or None,
            db_auth_token=e.get("HUB_DB_AUTH_TOKEN") or None,
            redis_url=e.get("HUB_REDIS_URL") or None,
            redis_sharded=(e.get("HUB_REDIS_SHARDED") or "").lower() in {"1", "true", "yes"},
            redis_cluster=_auto_flag(e, "HUB_REDIS_CLUSTER"),
            redis_prefix=e.get("HUB_REDIS_PREFIX") or "hub:",
            archive_url=e.get("HUB_ARCHIVE_URL", ""),
            secret=e.get("HUB_SECRET", ""),
            jwks_url=(e.get("HUB_JWKS_URL") or "").strip() or None,
            jwt_issuer=e.get("HUB_JWT_ISSUER") or None,
            jwt_audience=e.get("HUB_JWT_AUDIENCE") or None,
            jwks_cooldown=_float(e, "HUB_JWKS_COOLDOWN", 60.0, minimum=1),
            archive_delay=_float(e, "HUB_ARCHIVE_DELAY", 0.0),
            delivery_fee=_float(e, "HUB_DELIVERY_FEE", 5.00),
            driver_payout=_float(e, "HUB_DRIVER_PAYOUT", 12.00),
            driver_timeout=_float(e, "HUB_DRIVER_TIMEOUT", 120.0, minimum=0.1),
            accept_timeout=_float(e, "HUB_ACCEPT_TIMEOUT", 900.0, minimum=0),
            deliver_radius=_float(e, "HUB_DELIVER_RADIUS", 500.0, minimum=0),
            presence_timeout=_float(e, "HUB_PRESENCE_TIMEOUT", 30.0, minimum=0.1),
            log_format=_choice(e, "HUB_LOG_FORMAT", ("text", "json")),
            map_tiles=(e.get("HUB_MAP_TILES") or "").strip() or None,
            map_attribution=(e.get("HUB_MAP_ATTRIBUTION") or "").strip()
            or DEFAULT_MAP_ATTRIBUTION,
            max_body_bytes=_limit(e, "HUB_MAX_BODY_BYTES", 1 << 20, minimum=1024),
            max_payload_bytes=_limit(e, "HUB_MAX_PAYLOAD_BYTES", MAX_PAYLOAD_BYTES, minimum=2,
                                     maximum=MAX_PAYLOAD_BYTES),
            max_batch=_limit(e, "HUB_MAX_BATCH", MAX_BATCH, minimum=1, maximum=MAX_BATCH),
            ws_queue_frames=_limit(e, "HUB_WS_QUEUE_FRAMES", 1024, minimum=1),
            ws_max_frame_bytes=_limit(e, "HUB_WS_MAX_FRAME_BYTES", 64 << 10, minimum=256),
            ws_max_size=_limit(e, "HUB_WS_MAX_SIZE", 1 << 20, minimum=256),
            ws_max_per_token=_limit(e, "HUB_WS_MAX_PER_TENANT", 256, minimum=1),
            ws_stall_timeout=_float(e, "HUB_WS_STALL_TIMEOUT", 30.0),
            sse_keepalive=_float(e, "HUB_SSE_KEEPALIVE", 15.0, minimum=0.05),
            tenant_read_budget=_limit(e, "HUB_TENANT_READ_BUDGET", 64 << 20, minimum=64 << 10),
            tenant_max_open=_int(e, "HUB_TENANT_MAX_OPEN", None),
            header_timeout=_float(e, "HUB_HEADER_TIMEOUT", 10.0),
            body_timeout=_float(e, "HUB_BODY_TIMEOUT", 30.0),
            keep_alive_timeout=_int(e, "HUB_KEEP_ALIVE_TIMEOUT", 5) or 5,
            max_connections=_int(e, "HUB_MAX_CONNECTIONS", None, minimum=2),
            allowed_origins=tuple(
                o.strip().rstrip("/") for o in (e.get("HUB_ALLOWED_ORIGINS") or "").split(",")
                if o.strip()
            ),
        )
