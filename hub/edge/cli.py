"""The command line: hub serve, hub demo, hub seed, hub token, hub check (python -m hub).

Every command reads the same environment as the app (HUB_DATA_DIR and the rest); the help
texts list it (ENVIRONMENT below). A malformed setting, or a setting that needs an extra that
is not installed, is one line on stderr and exit status 2 (docs/protocol.md §1, §9).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import importlib.util
import json
import logging.config
import os
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from hub import __version__
from hub.config import Settings, SettingsError
from hub.domain.auth import Role, issue_token

__all__ = ["ENVIRONMENT", "build_parser", "main", "preflight"]

DESCRIPTION = """\
hub: a real-time WebSocket stream hub for delivery platforms. Every order is a durable,
ordered log of events, committed to the streams DB before it is sent live to the customer,
kitchen and driver apps. Full specification: docs/protocol.md."""

# Every environment variable the hub reads, its default and what it is (docs/protocol.md §1).
ENVIRONMENT: tuple[tuple[str, str, str], ...] = (
    ("HUB_DATA_DIR", "./data", "embedded databases, the archive and the generated secret"),
    ("HUB_STREAMS_DB", "file:$HUB_DATA_DIR/streams.db",
     "the shared streams DB: file:PATH, or libsql://, wss://, https:// (turso extra)"),
    ("HUB_STREAMS_READ_DB", "none (every read on HUB_STREAMS_DB)",
     "a read replica of a remote HUB_STREAMS_DB: pages of events are read there"),
    ("HUB_TENANT_DB", "file:$HUB_DATA_DIR/tenants/{tenant}.db",
     "tenant DB URL template, {tenant} replaced by the tenant id"),
    ("HUB_PUBLIC_DB", "file:$HUB_DATA_DIR/public.db", "the public discovery DB"),
    ("HUB_TENANT_ADMIN_URL", "none (tenant DBs must exist)",
     "sqld's admin API: creates a tenant DB's namespace on demand, http://[:KEY@]host:port"),
    ("HUB_DB_AUTH_TOKEN", "none", "auth token for remote libSQL URLs"),
    ("HUB_REDIS_URL", "none (this process only)", "Redis linking instances (redis extra)"),
    ("HUB_REDIS_SHARDED", "0", "1: Redis 7 sharded pub/sub (SSUBSCRIBE/SPUBLISH)"),
    ("HUB_REDIS_CLUSTER", "auto", "with HUB_REDIS_SHARDED: 1 a cluster node, 0 one endpoint"),
    ("HUB_REDIS_PREFIX", "hub:", "Redis channel name prefix, one per deployment"),
    ("HUB_ARCHIVE_URL", "file://$HUB_DATA_DIR/archive",
     "where finished streams go: file:///path or s3://bucket/prefix (s3 extra)"),
    ("HUB_SECRET", "generated into $HUB_DATA_DIR/secret", "HS256 key for tokens"),
    ("HUB_JWKS_URL", "none (HS256 tokens only)",
     "an identity provider's JWKS: RS256, ES256 and EdDSA tokens verified with its keys"),
    ("HUB_JWT_ISSUER", "none (not checked)", "with HUB_JWKS_URL: the iss those tokens need"),
    ("HUB_JWT_AUDIENCE", "none (not checked)", "with HUB_JWKS_URL: the aud those tokens need"),
    ("HUB_JWKS_COOLDOWN", "60", "least seconds between two fetches of the JWKS"),
    ("HUB_ARCHIVE_DELAY", "0", "seconds after delivery before a stream is archived"),
    ("HUB_DELIVERY_FEE", "5.00", "added to every order's total"),
    ("HUB_DRIVER_PAYOUT", "12.00", "paid to the driver per delivery"),
    ("HUB_DRIVER_TIMEOUT", "120", "seconds a silent assigned driver keeps an order"),
    ("HUB_ACCEPT_TIMEOUT", "900", "seconds a paid order waits for a kitchen (0: never)"),
    ("HUB_DELIVER_RADIUS", "500", "metres from the drop-off deliver is accepted"),
    ("HUB_PRESENCE_TIMEOUT", "30", "seconds without a position before a driver is unreachable"),
    ("HUB_MAP_TILES", "none (the schematic map)",
     "the web UI's street map: a tile URL template with {z}, {x}, {y}"),
    ("HUB_MAP_ATTRIBUTION", "© OpenStreetMap contributors",
     "the tile provider's attribution, shown on the map"),
    ("HUB_LOG_FORMAT", "text", "text or json (one JSON object per line)"),
    ("HUB_ALLOWED_ORIGINS", "the hub's own origin",
     "browser origins allowed to open WebSockets, comma-separated, * for any"),
    ("HUB_TENANT_MAX_OPEN", "4096, fitted to the open-file limit", "tenant DBs kept open"),
    ("HUB_WS_STALL_TIMEOUT", "30", "seconds a socket may drain nothing before close 4008"),
    ("HUB_SSE_KEEPALIVE", "15", "seconds an event stream may send nothing before a comment"),
    ("HUB_HEADER_TIMEOUT", "10", "seconds for a request's line and headers"),
    ("HUB_BODY_TIMEOUT", "30", "seconds for a request's body after its headers"),
    ("HUB_KEEP_ALIVE_TIMEOUT", "5", "whole seconds an idle connection is kept"),
    ("HUB_MAX_CONNECTIONS", "half the open-file limit less 64",
     "open connections, HTTP and WebSocket"),
    ("HUB_MAX_BODY_BYTES", "1048576", "request body, every JSON endpoint (at least 1024)"),
    ("HUB_MAX_PAYLOAD_BYTES", "65536", "event payload, encoded (may only be lowered)"),
    ("HUB_MAX_BATCH", "100", "events per append (may only be lowered)"),
    ("HUB_WS_MAX_FRAME_BYTES", "65536", "client frame answered with frame_too_large above"),
    ("HUB_WS_MAX_SIZE", "1048576", "frame closing the socket 1009 (hub serve, hub demo)"),
    ("HUB_WS_QUEUE_FRAMES", "1024", "live events queued per subscriber before the store"),
    ("HUB_WS_MAX_PER_TENANT", "256", "sockets per tenant and role, per instance (then 4029)"),
    ("HUB_TENANT_READ_BUDGET", "67108864 (64 MiB)",
     "bytes of read pages one tenant may hold at once; its further reads wait"),
    ("PORT", "8000", "the port when --port is not given"),
)


def environment_help() -> str:
    """The help texts' list of environment variables, with their defaults."""
    width = max(len(name) for name, _, _ in ENVIRONMENT)
    lines = ["environment (every variable optional; read once, at start):"]
    for name, default, meaning in ENVIRONMENT:
        lines.append(f"  {name:<{width}}  {meaning}")
        lines.append(f"  {'':<{width}}  default: {default}")
    return "\n".join(lines)


_REMOTE_SCHEMES = {"libsql", "wss", "ws", "https", "http"}


def _scheme(url: str) -> str:
    return url.split(":", 1)[0].lower() if ":" in url else ""


def preflight(settings: Settings) -> None:
    """Refuse, as one :class:`SettingsError` line, what would fail later with a traceback:
    a database URL of an unknown kind, a tenant template without ``{tenant}``, and a
    setting whose extra is not installed."""
    databases = (("HUB_STREAMS_DB", settings.streams_db), ("HUB_TENANT_DB", settings.tenant_db),
                 ("HUB_PUBLIC_DB", settings.public_db))  # fmt: skip
    for name, url in databases:
        if _scheme(url) not in {"file", *_REMOTE_SCHEMES}:
            raise SettingsError(f"{name} must be a file:, libsql://, wss://, ws://, https:// or"
                                f" http:// URL, got {_scheme(url) or url!r}")  # fmt: skip
    if "{tenant}" not in settings.tenant_db:
        raise SettingsError("HUB_TENANT_DB must contain {tenant} (one database per tenant)")
    if _scheme(settings.archive_url) not in {"file", "s3"}:
        raise SettingsError(f"unsupported archive URL {settings.archive_url!r}:"
                            " use file:///path or s3://bucket/prefix")  # fmt: skip
    needs: list[tuple[str, str]] = []  # (setting, extra)
    if settings.redis_url and importlib.util.find_spec("redis") is None:
        needs.append(("HUB_REDIS_URL", "redis"))
    remote = [name for name, url in databases if _scheme(url) in _REMOTE_SCHEMES]
    if remote and importlib.util.find_spec("libsql_client") is None:
        needs.append((" and ".join(remote) + " (a remote DB)", "turso"))
    if _scheme(settings.archive_url) == "s3" and importlib.util.find_spec("obstore") is None:
        needs.append(("HUB_ARCHIVE_URL (s3://)", "s3"))
    if needs:
        what = "; ".join(f"{setting} needs the {extra} extra" for setting, extra in needs)
        extras = ",".join(extra for _, extra in needs)
        raise SettingsError(f"{what}: pip install 'hub-streams[{extras}]'")


def _settings() -> Settings:
    settings = Settings.from_env()
    preflight(settings)
    return settings


def _configure_logging(settings: Settings, level: str) -> dict[str, Any]:
    """Every logger in ``HUB_LOG_FORMAT`` from now on; the same config goes to uvicorn."""
    from hub.edge.logs import log_config

    config = log_config(settings.log_format, level)
    logging.config.dictConfig(config)
    return config


def _port(args: argparse.Namespace) -> int:
    if args.port is not None:
        return int(args.port)
    raw = os.environ.get("PORT") or "8000"
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"PORT must be a whole number, got {raw!r}") from None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hub.edge.app import create_app
    from hub.edge.server import uvicorn_options

    settings = _settings()
    port = _port(args)
    config = _configure_logging(settings, args.log_level)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=port,
        log_level=args.log_level,
        log_config=config,
        timeout_graceful_shutdown=args.graceful_timeout,
        ws_max_size=settings.ws_max_size,
        # Compression is per frame per subscriber: it costs more CPU than fan-out itself.
        ws_per_message_deflate=False,
        # Read deadlines, keep-alive, the connection cap (hub.edge.server).
        **uvicorn_options(settings, app.state.node.metrics, args.http),
    )
    return 0


async def _seed_async(settings: Settings) -> None:
    from hub.domain.seed import load_seed
    from hub.infra.tenants import Tenants

    tenants = Tenants(settings.tenant_db, settings.public_db, auth_token=settings.db_auth_token,
                      admin_url=settings.tenant_admin_url, other_dbs=(settings.streams_db,))
    try:
        await load_seed(tenants)
    finally:
        await tenants.close()


def _seed(args: argparse.Namespace) -> int:
    settings = _settings()
    asyncio.run(_seed_async(settings))
    print("seeded: bab-hara (restaurant, menu, stock), rami (idle driver), ali (customer)")
    return 0


class _Client:
    """A tiny JSON-over-HTTP client for ``hub demo --play`` (stdlib only)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={
            "authorization": f"Bearer {token}", "content-type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


def print_table(events: list[dict[str, Any]]) -> None:
    """The stream as the seed's "Full Event Stream" table."""
    print("|   # | opcode | Name            | nodeId     |  delta | payload"
          + " " * 52 + "| ts       |")  # fmt: skip
    print("| --: | -----: | :-------------- | :--------- | -----: | :" + "-" * 58 + " | :------- |")
    for e in events:
        payload = json.dumps(e["payload"], ensure_ascii=False)
        if len(payload) > 58:
            payload = payload[:55] + "..."
        print(f"| {e['seq']:>3} | {e['opcode']:>6} | {e['name']:<15} | {e['nodeId'] or '':<10} |"
              f" {e['delta']:>6.2f} | {payload:<58} | {e['ts'][11:19]} |")  # fmt: skip


def play(base: str, secret: str, *, pause: float = 1.5, say: Any = print) -> list[dict[str, Any]]:
    """Drive the seed's whole order through the HTTP API; returns the final stream."""
    from hub.domain.seed import CUSTOMER, DRIVER, RESTAURANT

    c = _Client(base)
    tok = {r: issue_token(secret, t, r) for t, r in
           ((CUSTOMER, "customer"), (RESTAURANT, "restaurant"), (DRIVER, "driver"))}  # fmt: skip
    ops = issue_token(secret, "ops", "platform")

    def step(label: str, method: str, path: str, role: str, body: Any) -> Any:
        status, out = c.call(method, path, tok[role], body)
        if status >= 300:
            raise SystemExit(f"{label} failed: {status} {out}")
        say(f"  {label:<34} -> {out.get('orderStatus', status)}")
        time.sleep(pause)
        return out

    order_id = "ord-5001"
    status, _ = c.call("GET", f"/api/streams/{order_id}", ops)
    if status != 404:
        order_id = f"ord-5001-{int(time.time())}"
    say(f"Playing order {order_id}:")
    step("Step 1  Ali places the order", "POST", "/api/orders", "customer", {
        "orderId": order_id, "restaurant": RESTAURANT, "deliveryAddress": "Marina Walk",
        "notes": "Extra garlic sauce",
        "items": [{"productId": "prod-shw", "qty": 2}, {"productId": "prod-lbn", "qty": 1}]})
    step("Step 2  Ali pays", "POST", f"/api/orders/{order_id}/pay", "customer",
         {"method": "card", "cardLast4": "4242"})
    step("Steps 3-4  kitchen accepts", "POST", f"/api/orders/{order_id}/accept", "restaurant",
         {"chef": "Hassan", "station": "grill", "estMinutes": 15})
    step("Steps 5-6  ready, driver assigned", "POST", f"/api/orders/{order_id}/ready",
         "restaurant", {"actualMinutes": 12})  # fmt: skip
    route = [(25.2640 + i * 0.0001, 55.3310 + i * 0.0001) for i in range(1, 6)]
    for lat, lng in route:
        c.call("POST", "/api/motion", tok["driver"], {"lat": lat, "lng": lng})
        time.sleep(pause / 5)
    say("  Step 7  Rami rides to the restaurant (GPS)")
    step("Step 8  Rami picks up", "POST", f"/api/orders/{order_id}/pickup", "driver",
         {"confirmedItems": 3})
    dest = (25.0805, 55.1403)
    for i in range(1, 9):
        lat = 25.2650 + (dest[0] - 25.2650) * i / 8
        lng = 55.3320 + (dest[1] - 55.3320) * i / 8
        c.call("POST", "/api/motion", tok["driver"], {"lat": lat, "lng": lng})
        time.sleep(pause / 4)
    say("  Step 9  Rami rides to Marina Walk (GPS)")
    step("Step 10 delivered, payouts", "POST", f"/api/orders/{order_id}/deliver", "driver",
         {"lat": dest[0], "lng": dest[1]})  # fmt: skip
    for _ in range(50):
        status, out = c.call("GET", f"/api/streams/{order_id}", ops)
        if out.get("status") == "archived":
            say("  Step 11 stream archived")
            break
        time.sleep(0.2)
    return list(out["events"])


def _demo(args: argparse.Namespace) -> int:
    import threading

    import uvicorn

    from hub.edge.app import create_app
    from hub.edge.server import uvicorn_options

    settings = _settings()
    config = _configure_logging(settings, "warning")
    asyncio.run(_seed_async(settings))
    port = _port(args)
    base = f"http://{args.host}:{port}"
    from hub.domain.seed import CUSTOMER, DRIVER, RESTAURANT

    print("hub demo: embedded databases in", settings.data_dir.resolve())
    # --play sends the driver's GPS itself: the driver page must not simulate a ride too.
    gps = "off" if args.play else "sim"
    tokens = {role: issue_token(settings.secret, tenant, kind) for role, tenant, kind in (
        ("customer", CUSTOMER, "customer"), ("kitchen", RESTAURANT, "restaurant"),
        ("driver", DRIVER, "driver"), ("console", "ops", "platform"))}  # fmt: skip
    print(f"  customer  {base}/customer.html#token={tokens['customer']}")
    print(f"  kitchen   {base}/kitchen.html#token={tokens['kitchen']}")
    print(f"  driver    {base}/driver.html#token={tokens['driver']}&gps={gps}")
    print(f"  all three {base}/#customer={tokens['customer']}&kitchen={tokens['kitchen']}"
          f"&driver={tokens['driver']}&gps={gps}")
    print(f"  console   {base}/console.html#token={tokens['console']}")
    sys.stdout.flush()
    app = create_app(settings)
    server_config = uvicorn.Config(app, host=args.host, port=port, log_level="warning",
                                   log_config=config, ws_max_size=settings.ws_max_size,
                                   ws_per_message_deflate=False, timeout_graceful_shutdown=5,
                                   **uvicorn_options(settings, app.state.node.metrics))  # fmt: skip
    server = uvicorn.Server(server_config)
    if args.play:
        def driver() -> None:
            while not server.started:
                time.sleep(0.1)
            try:
                events = play(base, settings.secret, pause=args.pause)
                print()
                print_table(events)
            finally:
                if args.exit:
                    server.should_exit = True

        threading.Thread(target=driver, name="hub-demo-play", daemon=True).start()
    server.run()
    return 0


def _token(args: argparse.Namespace) -> int:
    data_dir = Path(os.environ.get("HUB_DATA_DIR") or "./data")
    generates = not os.environ.get("HUB_SECRET") and not (data_dir / "secret").exists()
    settings = Settings.from_env()
    if generates:
        print(f"hub token: warning: HUB_SECRET is not set, so a new secret was generated into"
              f" {data_dir / 'secret'}; only a hub with this HUB_DATA_DIR (or this secret as"
              f" HUB_SECRET) accepts the token", file=sys.stderr)  # fmt: skip
    try:
        print(issue_token(settings.secret, args.tenant, args.role, ttl=args.ttl))
    except ValueError as exc:
        print(f"hub token: {exc}", file=sys.stderr)
        return 2
    return 0


# -- hub check ------------------------------------------------------------------------------

CHECK_TIMEOUT = 10.0  # seconds for each dependency to answer


def _nearest_dir(path: Path) -> Path:
    """``path`` itself when it exists, else its nearest existing ancestor."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_dir(directory: Path) -> str:
    """Where files would be created in ``directory``: "" when possible, else why not."""
    found = _nearest_dir(directory)
    if not found.is_dir():
        return f"{found} is not a directory"
    if not os.access(found, os.W_OK | os.X_OK):
        return f"{found} is not writable"
    return ""


def _check_file_db(url: str) -> str:
    """An embedded DB: readable as SQLite when it exists, creatable when it does not."""
    import sqlite3

    from hub.infra.store.file import path_from_url

    path = path_from_url(url)
    if not path.exists():
        problem = _writable_dir(path.parent)
        if problem:
            raise OSError(problem)
        return "not created yet (it will be, at the first start)"
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        (tables,) = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        return f"{tables[0]} tables"
    finally:
        conn.close()


async def _check_db(url: str, settings: Settings) -> str:
    if _scheme(url) == "file":
        return await asyncio.to_thread(_check_file_db, url)
    from concurrent.futures import ThreadPoolExecutor

    from hub.infra.db import open_database

    with ThreadPoolExecutor(1) as pool:
        db = open_database(url, pool=pool, schema=("SELECT 1",),
                           auth_token=settings.db_auth_token)  # fmt: skip
        try:
            await db.execute("SELECT 1")
        finally:
            await db.close()
    return "answers"


async def _check_tenants(settings: Settings) -> str:
    template = settings.tenant_db
    if _scheme(template) != "file":
        admin = settings.tenant_admin_url
        if admin is None:
            return "a remote template: each tenant DB is reached at its first use"
        from hub.edge.logs import safe_url
        from hub.infra.namespaces import Namespaces

        # The key is checked by a read (the default namespace's config): nothing created.
        namespaces = Namespaces(admin)
        try:
            await namespaces.exists("default")
        finally:
            await namespaces.close()
        return (f"a remote template: each tenant DB is reached at its first use; the"
                f" namespaces' admin API {safe_url(admin)} answers")  # fmt: skip
    from hub.infra.store.file import path_from_url

    pattern = str(path_from_url(template))
    fixed = pattern.split("{tenant}", 1)[0]  # the path up to the tenant id
    directory = Path(fixed) if fixed.endswith("/") else Path(fixed).parent
    problem = _writable_dir(directory)
    if problem:
        raise OSError(problem)
    count = len(glob.glob(glob.escape(fixed) + "*" + pattern.split("{tenant}", 1)[1]))
    return f"{count} tenant DBs so far"


async def _check_redis(settings: Settings) -> str:
    import redis.asyncio as aioredis

    assert settings.redis_url
    client = aioredis.from_url(settings.redis_url, socket_connect_timeout=CHECK_TIMEOUT,
                               socket_timeout=CHECK_TIMEOUT)  # fmt: skip
    try:
        await client.ping()
    finally:
        await client.aclose()
    return "answers PING"


async def _check_archive(settings: Settings) -> str:
    from hub.infra.archive import LocalArchive, open_archive

    archive = open_archive(settings.archive_url)
    try:
        if isinstance(archive, LocalArchive):
            problem = _writable_dir(archive.root)
            if problem:
                raise OSError(problem)
            return "writable"
        await archive.get("hub-check")  # a stream that is not there: a read, nothing written
        return "answers"
    finally:
        await archive.close()


def _scrub(text: str, settings: Settings) -> str:
    """An error's first line, with no credential in it."""
    from hub.edge.logs import redact, safe_url

    line = (text.strip().splitlines() or [""])[0][:300]
    secrets = [settings.db_auth_token, settings.secret]
    for url in (settings.redis_url, settings.streams_db, settings.streams_read_db,
                settings.public_db, settings.tenant_db, settings.tenant_admin_url):  # fmt: skip
        if url and "@" in url.split("//", 1)[-1]:
            secrets.append(url)
            line = line.replace(url, safe_url(url))
    for secret in secrets:
        if secret:
            line = line.replace(secret, "[redacted]")
    return redact(line)


async def _check_all(settings: Settings, say: Callable[[str], None]) -> bool:
    from hub.edge.logs import safe_url

    kept = settings.data_dir / "secret"
    secret = "HUB_SECRET" if os.environ.get("HUB_SECRET") else str(kept)
    if not os.environ.get("HUB_SECRET") and not kept.exists():
        secret += " (generated at the first start)"
    checks: list[tuple[str, str, Callable[[], Awaitable[str]] | None]] = [
        ("streams DB", safe_url(settings.streams_db),
         lambda: _check_db(settings.streams_db, settings)),
    ]
    read_db = settings.streams_read_db
    if read_db is not None:  # the instance would only read from the primary: still a fault
        checks.append(("streams read DB", safe_url(read_db),
                       lambda: _check_db(read_db, settings)))
    checks += [
        ("public DB", safe_url(settings.public_db),
         lambda: _check_db(settings.public_db, settings)),
        ("tenant DBs", safe_url(settings.tenant_db), lambda: _check_tenants(settings)),
        ("Redis", safe_url(settings.redis_url),
         (lambda: _check_redis(settings)) if settings.redis_url else None),
        ("archive", safe_url(settings.archive_url), lambda: _check_archive(settings)),
        ("secret", secret, None),
    ]  # fmt: skip
    width = max(len(name) for name, _, _ in checks)
    healthy = True
    for name, where, probe in checks:
        if probe is None:
            detail = "not set: this instance only" if name == "Redis" else ""
            say(f"{name:<{width}}  ok      {where}" + (f" ({detail})" if detail else ""))
            continue
        try:
            detail = await asyncio.wait_for(probe(), CHECK_TIMEOUT)
        except TimeoutError:
            healthy = False
            say(f"{name:<{width}}  FAILED  {where}: no answer within {CHECK_TIMEOUT:g} s")
        except Exception as exc:
            healthy = False
            reason = _scrub(str(exc) or type(exc).__name__, settings)
            say(f"{name:<{width}}  FAILED  {where}: {type(exc).__name__}: {reason}")
        else:
            say(f"{name:<{width}}  ok      {where} ({detail})")
    return healthy


def _check(args: argparse.Namespace) -> int:
    from hub.edge.server import Guard
    from hub.infra.archive import open_archive

    # Check the configuration without creating anything: a missing secret is not generated.
    env = dict(os.environ)
    env["HUB_SECRET"] = env.get("HUB_SECRET") or "unused-by-hub-check"
    settings = Settings.from_env(env)
    preflight(settings)
    open_archive(settings.archive_url)  # a malformed URL is a configuration error
    Guard(settings)  # the connection settings
    print("configuration ok")
    healthy = asyncio.run(_check_all(settings, print))
    return 0 if healthy else 1


# -- the parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    epilog = environment_help()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="hub", description=DESCRIPTION, epilog=epilog,
                                     formatter_class=formatter)  # fmt: skip
    parser.add_argument("--version", action="version",
                        version=f"hub {__version__} (distribution hub-streams)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=textwrap.fill(description, 90),
                              epilog=epilog, formatter_class=formatter)  # fmt: skip

    levels = ["critical", "error", "warning", "info", "debug", "trace"]
    serve = command("serve", "run the hub under uvicorn",
                    "Run the hub under uvicorn, with the connection bounds of docs/protocol.md"
                    " §8 (read deadlines, the connection cap).")  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    serve.add_argument("--port", type=int, default=None, help="default: $PORT, else 8000")
    serve.add_argument("--log-level", default="info", choices=levels,
                       help="the hub's and uvicorn's loggers (default: %(default)s)")  # fmt: skip
    serve.add_argument("--graceful-timeout", type=float, default=10.0,
                       help="seconds open connections get to finish on shutdown"
                            " (default: %(default)s)")  # fmt: skip
    serve.add_argument("--http", default="auto", choices=["auto", "httptools", "h11"],
                       help="uvicorn's HTTP implementation (auto: httptools)")  # fmt: skip
    serve.set_defaults(run=_serve)

    seed = command("seed", "load the seed's Step 0 data (idempotent)",
                   "Load the seed's Step 0 data (Bab Al Hara's menu and stock, Rami the idle"
                   " driver, Ali the customer) into the configured databases. Running it twice"
                   " changes nothing.")  # fmt: skip
    seed.set_defaults(run=_seed)

    demo = command("demo", "seed, serve, print a URL per role (no Redis needed)",
                   "Seed the embedded databases, serve the hub and the web UI, and print one URL"
                   " per app with a ready token (customer, kitchen, driver, all three, and the"
                   " platform console).")  # fmt: skip
    demo.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    demo.add_argument("--port", type=int, default=None, help="default: $PORT, else 8000")
    demo.add_argument("--play", action="store_true", help="drive the whole order while serving")
    demo.add_argument("--pause", type=float, default=1.5,
                      help="seconds between steps (default: %(default)s)")  # fmt: skip
    demo.add_argument("--exit", action="store_true", help="stop serving once --play is done")
    demo.set_defaults(run=_demo)

    token = command("token", "print a token signed with the configured secret",
                    "Print a token (HS256 JWT) for TENANT with the given role, signed with"
                    " HUB_SECRET, or with the secret kept in $HUB_DATA_DIR/secret (generated,"
                    " with a warning, when there is none).")  # fmt: skip
    token.add_argument("tenant")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--ttl", type=float, default=None,
                       help="seconds until it expires (default: never)")  # fmt: skip
    token.set_defaults(run=_token)

    check = command("check", "check the configuration and reach every dependency",
                    "Check the configuration, then reach the streams DB (and its read"
                    " replica, when set), the public DB, the tenant DBs' location, Redis and"
                    " the archive, one line each, without"
                    " writing anything. Exit status: 0 all ok, 1 one failed, 2 the"
                    " configuration is wrong.")  # fmt: skip
    check.set_defaults(run=_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except SettingsError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    return code
