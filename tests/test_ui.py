"""The web UI (hub/static/*) in Debian's Chromium, driven by Playwright, against a real seeded hub.

Only the Python driver of Playwright is used (`pip install playwright`); the browser is
/usr/bin/chromium (`apt-get install chromium`), never one that `playwright install` downloads.
Screenshots go to $HUB_UI_SHOTS (default /tmp/hub-ui).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SECRET, HubProcess, auth, free_port, timeout, token

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
Browser = sync_api.Browser
Page = sync_api.Page
expect = sync_api.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SHOTS = Path(os.environ.get("HUB_UI_SHOTS", "/tmp/hub-ui"))
WAIT_MS = timeout(10) * 1000
CUSTOMER, KITCHEN, DRIVER = ("ali", "customer"), ("bab-hara", "restaurant"), ("rami", "driver")
ORDER_BODY = {
    "restaurant": "bab-hara", "deliveryAddress": "Marina Walk", "notes": "Extra garlic sauce",
    "items": [{"productId": "prod-shw", "qty": 2}, {"productId": "prod-lbn", "qty": 1}],
}  # fmt: skip

expect.set_options(timeout=WAIT_MS)


# -- hubs -------------------------------------------------------------------------------


def seed(data_dir: Path) -> None:
    """`python -m hub seed` with the hub's environment: Bab Al Hara, Rami, Ali."""
    env = {**os.environ, "HUB_DATA_DIR": str(data_dir), "HUB_SECRET": SECRET}
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "hub", "seed"], env=env, check=True,
                   capture_output=True, timeout=timeout(30))  # fmt: skip


class PortHub(HubProcess):
    """A hub on a chosen port, so a restarted hub is where the page reconnects to."""

    def __init__(self, data_dir: Path, port: int) -> None:
        super().__init__(data_dir)
        self.port = port
        self.log_path = data_dir / f"hub-{port}.log"


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    seed(data)
    return data


@pytest.fixture
def hub(seeded: Path, hub_factory: Callable[..., HubProcess]) -> HubProcess:
    """A running hub on freshly seeded data."""
    return hub_factory(data_dir=seeded)


def step(hub: HubProcess, path: str, who: tuple[str, str], body: Any = None) -> dict[str, Any]:
    r = httpx.post(hub.url + path, json=body if body is not None else {}, headers=auth(*who),
                   timeout=timeout(10))  # fmt: skip
    assert r.status_code in (200, 201), r.text
    result: dict[str, Any] = r.json()
    return result


def place(hub: HubProcess, *steps: str) -> str:
    """An order placed over HTTP and taken through ``steps`` (pay, accept, ready, pickup)."""
    order_id = str(step(hub, "/api/orders", CUSTOMER, ORDER_BODY)["orderId"])
    bodies = {"pay": ({"method": "card", "cardLast4": "4242"}, CUSTOMER),
              "accept": ({"chef": "Hassan", "station": "grill"}, KITCHEN),
              "ready": ({}, KITCHEN), "pickup": ({}, DRIVER)}  # fmt: skip
    for name in steps:
        body, who = bodies[name]
        step(hub, f"/api/orders/{order_id}/{name}", who, body)
    return order_id


# -- the browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, which scripts/test installs (never skipped: a missing one fails)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: run scripts/test (apt-get chromium)"
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class App:
    """One open page and the console errors (and uncaught exceptions) it produced."""

    page: Page
    errors: list[str] = field(default_factory=list)

    def no_errors(self) -> None:
        assert self.errors == [], self.errors


@pytest.fixture
def open_app(browser: Browser) -> Iterator[Callable[..., App]]:
    """Open a URL in a new page: in a browser context of its own (a device of its own), or
    with ``shared=True`` in one shared by the test (a new page still has its own
    sessionStorage, so its own token)."""
    contexts: list[Any] = []
    shared_contexts: dict[tuple[int, int], Any] = {}

    def make(url: str, *, width: int = 1280, height: int = 800, shared: bool = False) -> App:
        ctx = shared_contexts.get((width, height)) if shared else None
        if ctx is None:
            ctx = browser.new_context(viewport={"width": width, "height": height})
            contexts.append(ctx)
            if shared:
                shared_contexts[width, height] = ctx
        page = ctx.new_page()
        app = App(page)
        page.on("console", lambda m: app.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: app.errors.append(f"pageerror: {e}"))
        page.goto(url)
        return app

    yield make
    for ctx in contexts:
        ctx.close()


def app_url(hub: HubProcess, page: str, who: tuple[str, str] | None, extra: str = "",
            query: str = "") -> str:  # fmt: skip
    fragment = f"#token={token(*who)}{extra}" if who else ""
    return f"{hub.url}/{page}.html{query}{fragment}"


def live(page: Page) -> None:
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def seqs(page: Page) -> list[int]:
    """The seqs of the events the customer page lists, in its order."""
    found = page.eval_on_selector_all("#log li", "els => els.map(e => e.dataset.seq)")
    return [int(s) for s in found]


DOT_AT = "d => d.getAttribute('cx') + ',' + d.getAttribute('cy')"


def dot(page: Page) -> str:
    page.wait_for_selector("#driver-dot", state="attached")
    return str(page.eval_on_selector("#driver-dot", DOT_AT))


def dot_moves(page: Page) -> None:
    before = dot(page)
    moved = (
        f"b => {{ const d = document.querySelector('#driver-dot');"
        f" return d && ({DOT_AT})(d) !== b; }}"
    )
    page.wait_for_function(moved, arg=before, timeout=WAIT_MS)


def ticket(kitchen: Page, column: str, order_id: str) -> Any:
    return kitchen.locator(f"#col-{column} [data-order='{order_id}']")


# -- tests ------------------------------------------------------------------------------


def test_one_order_through_the_three_apps(hub: HubProcess, open_app: Callable[..., App]) -> None:
    """An order placed and paid in the customer app is cooked, carried and delivered."""
    customer = open_app(app_url(hub, "customer", CUSTOMER))
    kitchen = open_app(app_url(hub, "kitchen", KITCHEN))
    driver = open_app(app_url(hub, "driver", DRIVER, "&gps=sim"))
    c, k, d = customer.page, kitchen.page, driver.page
    for p in (c, k, d):
        live(p)
    expect(k.locator("#stock [data-product='prod-shw'] .stock-qty")).to_have_text("200")

    # Ali orders from the menu and pays; the kitchen sees it in New at once, announced.
    expect(c.locator("#place")).to_be_enabled()
    c.fill("input[data-product='prod-shw']", "2")
    c.fill("input[data-product='prod-lbn']", "1")
    c.fill("#notes", "Extra garlic sauce")
    c.click("#place")
    expect(c.locator("#order-title")).to_contain_text("ord-")
    order_id = str(c.evaluate("window.hubCustomer.order.id"))
    expect(c.locator("#total")).to_have_text("46.00 AED")
    expect(ticket(k, "new", order_id)).to_have_attribute("data-status", "placed")
    expect(k.locator("#announce")).to_contain_text(order_id)
    c.click("#pay")
    expect(c.locator("#timeline li[data-step='paid']")).to_contain_class("done")
    accept = ticket(k, "new", order_id).locator("button[data-action='accept']")
    expect(accept).to_be_enabled()

    # The kitchen accepts (stock goes down), then marks it ready: Rami is assigned.
    accept.click()
    expect(ticket(k, "preparing", order_id)).to_be_visible()
    expect(k.locator("#stock [data-product='prod-shw'] .stock-qty")).to_have_text("198")
    expect(c.locator("#timeline li[data-step='preparing']")).to_contain_text("Chef Hassan")
    ticket(k, "preparing", order_id).locator("button[data-action='ready']").click()
    expect(ticket(k, "ready", order_id)).to_have_attribute("data-status", "assigned")

    # Rami's app shows the job with both addresses; its simulated GPS moves the customer's dot.
    expect(d.locator("#job")).to_have_attribute("data-order", order_id)
    expect(d.locator("#pickup")).to_contain_text("Bab Al Hara, Al Rigga")
    expect(d.locator("#dropoff")).to_contain_text("Marina Walk")
    expect(c.locator("#timeline li[data-step='assigned']")).to_contain_class("done")
    dot_moves(c)
    d.click("#picked-up")
    expect(ticket(k, "out", order_id)).to_be_visible()
    expect(c.locator("#timeline li[data-step='picked_up']")).to_contain_class("done")
    dot_moves(c)
    d.click("#delivered")

    expect(c.locator("#timeline li[data-step='delivered']")).to_contain_class("done")
    expect(ticket(k, "done", order_id)).to_contain_text("revenue 34.00 AED")
    expect(d.locator("#history li[data-order='" + order_id + "']")).to_contain_text("12.00 AED")
    expect(d.locator("#job")).to_have_attribute("data-order", "")
    expect(c.locator("#log li")).to_have_count(12)
    assert seqs(c) == list(range(1, 13))
    c.screenshot(path=SHOTS / "flow-customer.png", full_page=True)
    k.screenshot(path=SHOTS / "flow-kitchen.png", full_page=True)
    d.screenshot(path=SHOTS / "flow-driver.png", full_page=True)
    for app in (customer, kitchen, driver):
        app.no_errors()


def test_reconnect_after_a_restart_shows_every_event_once(
    seeded: Path, open_app: Callable[..., App]
) -> None:
    """Events written while the hub restarts: reconnecting, then live, every event once."""
    port = free_port()
    hub = PortHub(seeded, port).start()
    other = HubProcess(seeded).start()  # a second hub on the same databases writes meanwhile
    try:
        order_id = place(hub, "pay")
        app = open_app(app_url(hub, "customer", CUSTOMER, query=f"?order={order_id}"))
        c = app.page
        live(c)
        expect(c.locator("#log li")).to_have_count(2)
        c.evaluate(
            "window.states = [];"
            " window.hubCustomer.order.socket.on('state', d => window.states.push(d.state))"
        )
        hub.stop()
        expect(c.locator("#conn")).to_have_attribute("data-state", "reconnecting")
        place_steps = {"accept": {"chef": "Hassan", "station": "grill"}, "ready": {}}
        for name, body in place_steps.items():
            step(other, f"/api/orders/{order_id}/{name}", KITCHEN, body)
        hub = PortHub(seeded, port).start()
        live(c)
        step(hub, f"/api/orders/{order_id}/pickup", DRIVER)
        expect(c.locator("#timeline li[data-step='picked_up']")).to_contain_class("done")
        expect(c.locator("#log li")).to_have_count(9)
        assert seqs(c) == list(range(1, 10))
        states = c.evaluate("window.states")
        assert states[0] == "reconnecting", states
        assert states[-1] == "live", states
        assert not {"denied", "closed"} & set(states), states
    finally:
        for h in (hub, other):
            if h.proc is not None and h.proc.poll() is None:
                h.stop()


def problem(page: Page, kind: str, text: str) -> None:
    box = page.locator("#problem")
    expect(box).to_be_visible()
    expect(box).to_have_attribute("data-problem", kind)
    expect(box).to_contain_text(text)


def test_missing_expired_and_denied_tokens_are_explained(
    hub: HubProcess, open_app: Callable[..., App]
) -> None:
    """No token, an expired or forged token, someone else's order, a wrong role: clear messages."""
    for name in ("customer", "kitchen", "driver"):
        problem(open_app(app_url(hub, name, None), shared=True).page, "missing", "No access token")
    index = open_app(f"{hub.url}/", shared=True).page
    expect(index.locator("#setup")).to_be_visible()
    expect(index.locator("#apps")).to_be_hidden()

    expired = token("ali", "customer", ttl=-10)
    page = open_app(f"{hub.url}/customer.html#token={expired}", shared=True).page
    problem(page, "expired", "expired")
    forged = token("ali", "customer")[:-4] + "AAAA"  # the hub refuses it: 401 / 4401
    page = open_app(f"{hub.url}/customer.html#token={forged}", shared=True).page
    problem(page, "invalid", "401")
    expect(page.locator("#app")).to_be_hidden()

    order_id = place(hub)
    omar = ("omar", "customer")
    page = open_app(app_url(hub, "customer", omar, query=f"?order={order_id}"), shared=True).page
    problem(page, "denied", "403")
    expect(page.locator("#problem")).to_contain_text(order_id)
    page = open_app(app_url(hub, "kitchen", CUSTOMER), shared=True).page
    problem(page, "role", "restaurant token")
    page = open_app(app_url(hub, "driver", KITCHEN), shared=True).page
    problem(page, "role", "driver token")


@pytest.mark.parametrize(("width", "height"), [(375, 740), (1280, 800)], ids=["phone", "desktop"])
def test_pages_fit_the_screen_without_console_errors(
    hub: HubProcess, open_app: Callable[..., App], width: int, height: int
) -> None:
    """Each page at phone and desktop width: no horizontal overflow, no console errors."""
    assigned = place(hub, "pay", "accept", "ready")
    place(hub, "pay")
    roles = {"customer": CUSTOMER, "kitchen": KITCHEN, "driver": DRIVER}
    tokens = "&".join(f"{role}={token(*who)}" for role, who in roles.items())
    pages = {
        "index": f"{hub.url}/#{tokens}",
        "customer": app_url(hub, "customer", CUSTOMER, query=f"?order={assigned}"),
        "kitchen": app_url(hub, "kitchen", KITCHEN),
        "driver": app_url(hub, "driver", DRIVER, "&gps=sim"),
    }
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, url in pages.items():
        app = open_app(url, width=width, height=height, shared=True)
        p = app.page
        frames = [p.frame_locator(f"#{role}") for role in ("customer", "kitchen", "driver")]
        if name == "index":
            for f in frames:
                expect(f.locator("#conn")).to_have_attribute("data-state", "live")
        else:
            live(p)
        if name == "customer":
            expect(p.locator("#timeline li[data-step='assigned']")).to_contain_class("done")
            p.wait_for_selector("#driver-dot", state="attached")
        if name == "kitchen":
            expect(p.locator(".ticket")).to_have_count(2)
        if name == "driver":
            expect(p.locator("#job")).to_have_attribute("data-order", assigned)
            expect(p.locator("#pickup")).to_contain_text("Al Rigga")
        p.wait_for_timeout(300)  # let fonts and the last frame settle
        p.screenshot(path=SHOTS / f"{name}-{width}.png", full_page=True)
        for frame in p.frames:
            sw, iw = frame.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
            assert sw <= iw, f"{name} at {width}px overflows: {frame.url[:60]} {sw} > {iw}"
        app.no_errors()
