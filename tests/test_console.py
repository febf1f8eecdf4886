"""The platform console (hub/static/console.html) in Debian's Chromium, against a real
seeded hub, as tests/test_ui.py drives the three apps: an order placed and taken through
its steps over HTTP appears and moves live, its timeline by id (live, then archived), the
drivers online, the instance's state, and a token that is not the platform's.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.conftest import HubProcess, token
from tests.test_ui import (  # noqa: F401 (fixtures: browser, hub, open_app, seeded)
    DRIVER,
    SHOTS,
    App,
    Page,
    app_url,
    browser,
    expect,
    hub,
    live,
    open_app,
    place,
    seeded,
    step,
)

PLATFORM = ("ops", "platform")


def lookup(page: Page, order_id: str) -> None:
    page.fill("#lookup", order_id)
    page.click("#lookup-form button[type='submit']")


def test_console_follows_orders_drivers_and_the_instance_live(
    hub: HubProcess, open_app: Callable[..., App]  # noqa: F811
) -> None:
    """On a wall-sized screen: the instance and Rami online at once; an order placed over
    HTTP appears live and moves through its statuses; its timeline by id grows live and
    ends archived; an unknown id is said to be unknown."""
    app = open_app(app_url(hub, "console", PLATFORM), width=1920, height=1080)
    p = app.page
    live(p)

    card = p.locator("#instances [data-instance]")
    expect(card).to_have_count(1)
    expect(card).to_have_attribute("data-status", "ok")
    expect(card.locator("[data-check='streams_db']")).to_have_attribute("data-status", "ok")
    expect(card.locator("[data-check='broker']")).to_contain_text("Redis: not used")
    expect(card.locator(".websockets")).to_have_text("1")  # the console's own inbox
    rami = p.locator("#drivers tbody tr[data-driver='rami']")
    expect(rami).to_have_attribute("data-status", "online")
    expect(rami.locator(".fix")).to_have_text("25.26400, 55.33100")
    expect(p.locator("#orders tbody")).to_contain_text("No order in flight.")

    order_id = place(hub)
    row = p.locator(f"#orders tbody tr[data-order='{order_id}']")
    expect(row).to_have_attribute("data-status", "placed")
    expect(row).to_contain_text("bab-hara")
    expect(row).to_contain_text("ali")
    expect(row).to_contain_text("46.00 AED")
    expect(p.locator("#inflight-count")).to_have_text("1")
    expect(p.locator("#summary [data-status='placed'] b")).to_have_text("1")
    step(hub, f"/api/orders/{order_id}/pay", ("ali", "customer"),
         {"method": "card", "cardLast4": "4242"})  # fmt: skip
    expect(row).to_have_attribute("data-status", "paid")
    step(hub, f"/api/orders/{order_id}/accept", ("bab-hara", "restaurant"),
         {"chef": "Hassan", "station": "grill"})  # fmt: skip
    expect(row).to_have_attribute("data-status", "preparing")
    step(hub, f"/api/orders/{order_id}/ready", ("bab-hara", "restaurant"))
    expect(row).to_have_attribute("data-status", "assigned")
    expect(row.locator(".driver")).to_have_text("rami")
    expect(rami).to_have_attribute("data-status", "en-route")
    expect(rami).to_contain_text(order_id)
    expect(card.locator(".deliveries")).not_to_have_text("0.0")  # the inbox's frames

    # The timeline by id: what the stream holds, then live.
    lookup(p, order_id)
    expect(p.locator("#timeline li")).to_have_count(8)
    expect(p.locator("#tl-state")).to_have_attribute("data-status", "live")
    expect(p.locator("#tl-head")).to_contain_text("bab-hara → ali")
    step(hub, f"/api/orders/{order_id}/pickup", DRIVER)
    expect(p.locator("#timeline li")).to_have_count(9)
    expect(p.locator("#timeline li").last).to_contain_text("ORDER_SHIP")
    expect(row).to_have_attribute("data-status", "picked_up")
    step(hub, "/api/motion", DRIVER, {"lat": 25.2, "lng": 55.25})
    expect(p.locator("#tl-location")).to_contain_text("driver rami at 25.20000, 55.25000")
    # the fix and when it arrived (seenAt in his DB): the console's list is polled
    expect(rami.locator(".fix")).to_have_text(re.compile(r"^25\.20000, 55\.25000 · \d+ s ago$"))
    p.screenshot(path=SHOTS / "console-1920.png", full_page=True)

    # Delivered, then archived (HUB_ARCHIVE_DELAY 0): finished, and the timeline says so.
    step(hub, f"/api/orders/{order_id}/deliver", DRIVER, {"lat": 25.08, "lng": 55.14})
    expect(p.locator("#timeline li")).to_have_count(12)
    expect(p.locator("#tl-state")).to_have_attribute("data-status", "archived")
    expect(p.locator(f"#finished tbody tr[data-order='{order_id}']")).to_have_attribute(
        "data-status", "delivered")  # fmt: skip
    expect(row).to_have_count(0)
    expect(p.locator("#inflight-count")).to_have_text("0")
    expect(rami).to_have_attribute("data-status", "online")
    app.no_errors()

    # Any order by id, archived too; an unknown id is said to be unknown.
    lookup(p, "ord-nope-1")
    expect(p.locator("#tl-missing")).to_contain_text("No order ord-nope-1")
    expect(p.locator("#timeline li")).to_have_count(0)
    lookup(p, order_id)
    expect(p.locator("#timeline li")).to_have_count(12)
    expect(p.locator("#tl-state")).to_have_attribute("data-status", "archived")
    seqs = p.eval_on_selector_all("#timeline li", "els => els.map(e => Number(e.dataset.seq))")
    assert seqs == list(range(1, 13))
    p.locator(f"#finished tbody tr[data-order='{order_id}']").click()  # a row opens it too
    expect(p.locator("#tl-id")).to_have_text(order_id)
    assert [e for e in app.errors if "404" not in e] == [], app.errors  # the unknown id's 404


def test_console_wants_a_platform_token_and_fits_a_phone(
    hub: HubProcess, open_app: Callable[..., App]  # noqa: F811
) -> None:
    """No token or another role's: a clear message. At phone width nothing overflows. The
    demo page links to the console with the token it was given."""
    page = open_app(app_url(hub, "console", None), shared=True).page
    expect(page.locator("#problem")).to_have_attribute("data-problem", "missing")
    page = open_app(app_url(hub, "console", ("ali", "customer")), shared=True).page
    expect(page.locator("#problem")).to_have_attribute("data-problem", "role")
    expect(page.locator("#problem")).to_contain_text("platform token")
    expect(page.locator("#app")).to_be_hidden()

    order_id = place(hub)
    app = open_app(app_url(hub, "console", PLATFORM), width=375, height=740)
    p = app.page
    live(p)
    expect(p.locator(f"#orders tbody tr[data-order='{order_id}']")).to_be_visible()
    expect(p.locator("#instances [data-instance]")).to_have_attribute("data-status", "ok")
    expect(p.locator("#drivers tbody tr[data-driver='rami']")).to_be_visible()
    p.wait_for_timeout(300)
    p.screenshot(path=SHOTS / "console-375.png", full_page=True)
    sw, iw = p.evaluate("[document.scrollingElement.scrollWidth, innerWidth]")
    assert sw <= iw, f"the console overflows at 375px: {sw} > {iw}"
    app.no_errors()

    roles = {"customer": ("ali", "customer"), "kitchen": ("bab-hara", "restaurant"),
             "driver": DRIVER, "console": PLATFORM}  # fmt: skip
    tokens = "&".join(f"{name}={token(*who)}" for name, who in roles.items())
    index = open_app(f"{hub.url}/#{tokens}&gps=off", shared=True).page
    href = index.get_attribute("#console-link", "href")
    assert href is not None
    assert href.startswith("console.html#token=")
