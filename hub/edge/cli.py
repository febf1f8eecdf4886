"""The command line: ``hub serve``, ``hub demo``, ``hub seed``, ``hub token`` (``python -m hub``).

Every command reads the same environment as the app (``HUB_DATA_DIR`` and the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from hub.config import Settings, SettingsError
from hub.domain.auth import Role, issue_token

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hub.edge.app import create_app
    from hub.edge.server import uvicorn_options

    port = args.port if args.port is not None else int(os.environ.get("PORT") or 8000)
    settings = Settings.from_env()
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=port,
        log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout,
        ws_max_size=1 << 20,
        # Compression is per frame per subscriber: it costs more CPU than fan-out itself.
        ws_per_message_deflate=False,
        # Read deadlines, keep-alive, the connection cap (hub.edge.server).
        **uvicorn_options(settings, app.state.node.metrics, args.http),
    )
    return 0


async def _seed_async(settings: Settings) -> None:
    from hub.domain.seed import load_seed
    from hub.infra.tenants import Tenants

    tenants = Tenants(settings.tenant_db, settings.public_db, auth_token=settings.db_auth_token)
    try:
        await load_seed(tenants)
    finally:
        await tenants.close()


def _seed(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
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

    settings = Settings.from_env()
    asyncio.run(_seed_async(settings))
    port = args.port if args.port is not None else int(os.environ.get("PORT") or 8000)
    base = f"http://{args.host}:{port}"
    from hub.domain.seed import CUSTOMER, DRIVER, RESTAURANT

    print("hub demo: embedded databases in", settings.data_dir.resolve())
    # --play sends the driver's GPS itself: the driver page must not simulate a ride too.
    gps = "off" if args.play else "sim"
    tokens = {role: issue_token(settings.secret, tenant, kind) for role, tenant, kind in (
        ("customer", CUSTOMER, "customer"), ("kitchen", RESTAURANT, "restaurant"),
        ("driver", DRIVER, "driver"))}  # fmt: skip
    print(f"  customer  {base}/customer.html#token={tokens['customer']}")
    print(f"  kitchen   {base}/kitchen.html#token={tokens['kitchen']}")
    print(f"  driver    {base}/driver.html#token={tokens['driver']}&gps={gps}")
    print(f"  all three {base}/#customer={tokens['customer']}&kitchen={tokens['kitchen']}"
          f"&driver={tokens['driver']}&gps={gps}")
    app = create_app(settings)
    config = uvicorn.Config(app, host=args.host, port=port, log_level="warning",
                            ws_per_message_deflate=False, timeout_graceful_shutdown=5,
                            **uvicorn_options(settings, app.state.node.metrics))  # fmt: skip
    server = uvicorn.Server(config)
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
    settings = Settings.from_env()
    try:
        print(issue_token(settings.secret, args.tenant, args.role, ttl=args.ttl))
    except ValueError as exc:
        print(f"hub token: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the hub under uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: $PORT, else 8000")
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--graceful-timeout", type=float, default=10.0,
                       help="seconds open connections get to finish on shutdown")  # fmt: skip
    serve.add_argument("--http", default="auto", choices=["auto", "httptools", "h11"],
                       help="uvicorn's HTTP implementation (auto: httptools)")  # fmt: skip
    serve.set_defaults(run=_serve)

    seed = sub.add_parser("seed", help="load the seed's Step 0 data (idempotent)")
    seed.set_defaults(run=_seed)

    demo = sub.add_parser("demo", help="seed, serve, print a URL per role (no Redis needed)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=None, help="default: $PORT, else 8000")
    demo.add_argument("--play", action="store_true", help="drive the whole order while serving")
    demo.add_argument("--pause", type=float, default=1.5, help="seconds between steps")
    demo.add_argument("--exit", action="store_true", help="stop serving once --play is done")
    demo.set_defaults(run=_demo)

    token = sub.add_parser("token", help="print a token signed with the configured secret")
    token.add_argument("tenant")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--ttl", type=float, default=None, help="seconds until it expires")
    token.set_defaults(run=_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except SettingsError as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 2
    return code
