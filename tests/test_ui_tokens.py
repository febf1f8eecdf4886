"""The pages on short-lived tokens, in Debian's Chromium against a real seeded hub: with a
``tokenUrl`` in the page's address the page fetches fresh tokens from it and its sockets
are refreshed in place (the ``auth`` frame) without a reconnect; without one a socket is
refused at its token's expiry and the page says the token expired."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect

from tests.conftest import HubProcess, token
from tests.test_ui import (  # noqa: F401 (fixtures: browser, hub, open_app, seeded)
    App,
    browser,
    hub,
    live,
    open_app,
    place,
    problem,
    seeded,
    ticket,
)

LIFE = 3  # seconds each token lives


class TokenServer:
    """An identity provider's token endpoint on loopback: a fresh 3-second restaurant
    token per GET, with the CORS headers a page on the hub's origin needs."""

    def __init__(self, origin: str) -> None:
        served = self.served = []  # type: list[float]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.append(time.monotonic())
                body = json.dumps({"token": token("bab-hara", "restaurant", ttl=LIFE)}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("access-control-allow-origin", origin)
                self.send_header("access-control-allow-credentials", "true")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tokens(hub: HubProcess) -> Iterator[TokenServer]:  # noqa: F811
    server = TokenServer(hub.url)
    yield server
    server.close()


def test_a_page_with_a_token_url_keeps_its_socket_past_every_expiry(
    hub: HubProcess, open_app: Callable[..., App], tokens: TokenServer  # noqa: F811
) -> None:
    """The kitchen on 3-second tokens from its token endpoint stays live for 7.5 s (over
    two lifetimes) and still shows a new order then: its inbox socket was refreshed in
    place, never refused; the endpoint was asked for each new token."""
    app = open_app(f"{hub.url}/kitchen.html#token={token('bab-hara', 'restaurant', ttl=LIFE)}"
                   f"&tokenUrl={tokens.url}")  # fmt: skip
    p = app.page
    live(p)
    p.wait_for_timeout(7_500)
    live(p)
    expect(p.locator("#problem")).to_be_hidden()
    order_id = place(hub)
    expect(ticket(p, "new", order_id)).to_be_visible()
    assert len(tokens.served) >= 2, tokens.served
    assert app.errors == [], app.errors


def test_a_page_without_a_token_url_says_its_token_expired(
    hub: HubProcess, open_app: Callable[..., App]  # noqa: F811
) -> None:
    """Without a token endpoint the page's socket is refused (4401) at expiry and the page
    says the token expired."""
    app = open_app(f"{hub.url}/kitchen.html#token={token('bab-hara', 'restaurant', ttl=LIFE)}")
    live(app.page)
    problem(app.page, "expired", "expired")
