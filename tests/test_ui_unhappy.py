"""The three apps when an order does not go as planned (docs/protocol.md §6), in Debian's
Chromium against a real seeded hub, as tests/test_ui.py drives the happy path: the customer
cancels and sees the refund; the kitchen rejects, cancels, runs out of a product, changes
its stock and closes; the driver declines; and a page that lags behind the order (its
frames held back on the way) offers a step the hub has moved past: the refusal is said in
words, the button goes, the page keeps working.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, auth, timeout
from tests.test_ui import (  # noqa: F401 (fixtures: browser, hub, open_app, seeded)
    CUSTOMER,
    DRIVER,
    KITCHEN,
    SHOTS,
    App,
    Browser,
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
    ticket,
)

PLATFORM = ("ops", "platform")
# The browser's own console line for a request the hub refused, which the pages put in words.
REFUSED = re.compile(r"Failed to load resource: the server responded with a status of 40[39]")


def no_errors(app: App) -> None:
    """No console error and no uncaught exception, but the refused requests' own lines."""
    errors = [e for e in app.errors if not REFUSED.match(e)]
    assert errors == [], errors


def get(server: HubProcess, path: str, who: tuple[str, str]) -> httpx.Response:
    return httpx.get(server.url + path, headers=auth(*who), timeout=timeout(10))


def order(server: HubProcess, order_id: str, who: tuple[str, str] = PLATFORM) -> dict[str, Any]:
    r = get(server, f"/api/orders/{order_id}", who)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def opcodes(server: HubProcess, order_id: str) -> list[int]:
    r = get(server, f"/api/streams/{order_id}", PLATFORM)
    assert r.status_code == 200, r.text
    return [e["opcode"] for e in r.json()["events"]]


def confirm(page: Page, reason: str | None = None) -> None:
    """Answer the reason dialog that a cancel, a rejection or a decline opens."""
    dialog = page.locator("dialog#ask")
    expect(dialog).to_be_visible()
    if reason is not None:
        page.fill("#ask-reason", reason)
    page.click("#ask-confirm")
    expect(dialog).to_have_count(0)


def product(kitchen: Page, product_id: str) -> Any:
    return kitchen.locator(f"#stock tr[data-product='{product_id}']")


def control(kitchen: Page, kind: str, product_id: str) -> Any:
    return kitchen.locator(f"#stock [data-{kind}='{product_id}']")


def order_form(customer: Page, shawarma: int, laban: int) -> None:
    for pid, qty in (("prod-shw", shawarma), ("prod-lbn", laban)):
        field_ = customer.locator(f"input[data-product='{pid}']")
        if field_.is_enabled():
            field_.fill(str(qty))
    customer.click("#place")


# -- a page that lags behind: the hub's frames held back on their way to it ---------------


@dataclass
class Held:
    """Frames from the hub to a page's sockets, held back while ``holding`` (a slow network):
    the page shows what it last heard while the order moves on."""

    holding: bool = False
    frames: list[tuple[Any, str | bytes]] = field(default_factory=list)

    def route(self, ws: Any) -> None:
        server = ws.connect_to_server()

        def from_hub(message: str | bytes) -> None:
            if self.holding:
                self.frames.append((ws, message))
            else:
                ws.send(message)

        server.on_message(from_hub)

    def release(self) -> None:
        self.holding = False
        frames, self.frames = self.frames, []
        for ws, message in frames:
            ws.send(message)


@pytest.fixture
def open_held(browser: Browser) -> Iterator[Callable[[str], tuple[App, Held]]]:  # noqa: F811
    """Open a URL in a context of its own whose WebSocket frames from the hub can be held."""
    contexts: list[Any] = []

    def make(url: str) -> tuple[App, Held]:
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        contexts.append(ctx)
        held = Held()
        ctx.route_web_socket(re.compile(r"/ws/"), held.route)
        page = ctx.new_page()
        app = App(page)
        page.on("console", lambda m: app.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: app.errors.append(f"pageerror: {e}"))
        page.goto(url)
        return app, held

    yield make
    for ctx in contexts:
        ctx.close()


# -- tests ------------------------------------------------------------------------------


def test_customer_cancels_a_paid_order_and_sees_the_refund(
    hub: HubProcess,  # noqa: F811
    open_app: Callable[..., App],  # noqa: F811
) -> None:
    """A paid order: the customer backs out of the dialog once (nothing happens), then
    cancels with a reason. Their page shows it cancelled with the refund and no cancel
    button; the kitchen's ticket goes to Done, cancelled by the customer and refunded."""
    order_id = place(hub, "pay")
    customer = open_app(app_url(hub, "customer", CUSTOMER, query=f"?order={order_id}"))
    kitchen = open_app(app_url(hub, "kitchen", KITCHEN))
    c, k = customer.page, kitchen.page
    live(c)
    live(k)
    expect(c.locator("#order-status")).to_have_attribute("data-status", "paid")
    expect(c.locator("#pay")).to_be_hidden()
    expect(c.locator("#refund")).to_be_hidden()
    expect(ticket(k, "new", order_id).locator("button[data-action='reject']")).to_be_visible()

    c.click("#cancel")
    expect(c.locator("dialog#ask")).to_contain_text(f"Cancel order {order_id}?")
    c.click("#ask-keep")  # changed their mind: the order goes on
    expect(c.locator("dialog#ask")).to_have_count(0)
    expect(c.locator("#cancel")).to_be_visible()
    assert order(hub, order_id)["orderStatus"] == "paid"

    c.click("#cancel")
    confirm(c, "Ordered by mistake")
    expect(c.locator("#order-status")).to_have_attribute("data-status", "cancelled")
    expect(c.locator("#order-status")).to_have_text("cancelled")
    cancelled = c.locator("#timeline li[data-step='cancelled']")
    expect(cancelled).to_contain_text("by you")
    expect(cancelled).to_contain_text("Ordered by mistake")
    expect(c.locator("#timeline li[data-step='preparing']")).to_contain_class("skipped")
    expect(c.locator("#refund")).to_be_visible()
    expect(c.locator("#refund")).to_contain_text("Refunded 46.00 AED")
    expect(c.locator("#refund")).to_contain_text("4242")
    expect(c.locator("#cancel-box")).to_be_hidden()
    expect(c.locator("#pay")).to_be_hidden()
    expect(c.locator("#log")).to_contain_text("ORDER_CANCEL")
    expect(c.locator("#log")).to_contain_text("INVOICE_REFUND")
    expect(c.locator("#archived-note")).to_have_text(
        "Cancelled and archived: this order's stream is closed."
    )
    expect(c.locator("#order-msg")).to_have_attribute("data-kind", "ok")

    done = ticket(k, "done", order_id)
    expect(done).to_have_attribute("data-status", "cancelled")
    expect(done).to_contain_text("Cancelled by the customer: “Ordered by mistake”")
    expect(done).to_contain_text("refunded 46.00 AED")
    expect(done.locator("button")).to_have_count(0)
    expect(ticket(k, "new", order_id)).to_have_count(0)
    expect(k.locator("#announce")).to_contain_text(
        f"Order {order_id} was cancelled by the customer"
    )

    details = order(hub, order_id, CUSTOMER)
    assert details["orderStatus"] == "cancelled"
    assert details["cancelled"]["by"] == "customer"
    assert details["refund"]["amount"] == pytest.approx(46.0)
    assert "cancel" not in details["actions"]
    c.screenshot(path=SHOTS / "unhappy-customer-cancelled.png", full_page=True)
    k.screenshot(path=SHOTS / "unhappy-kitchen-cancelled.png", full_page=True)
    no_errors(customer)
    no_errors(kitchen)


def test_kitchen_rejects_cancels_and_runs_its_menu(
    hub: HubProcess,  # noqa: F811
    open_app: Callable[..., App],  # noqa: F811
) -> None:
    """The kitchen rejects a paid order and cancels an accepted one (its stock comes back);
    marks Laban out of stock and sets 7 shawarmas, then a customer's larger order with Laban
    is refused in words; closes the restaurant, then an order is refused as closed; opens it
    again and the same customer page places its order."""
    paid = place(hub, "pay")
    accepted = place(hub, "pay", "accept")
    kitchen = open_app(app_url(hub, "kitchen", KITCHEN))
    k = kitchen.page
    live(k)
    expect(product(k, "prod-shw").locator(".stock-qty")).to_have_text("198")

    # Reject: the paid order has Reject and no Cancel; the accepted one the other way round.
    new = ticket(k, "new", paid)
    expect(new.locator("button[data-action='reject']")).to_be_visible()
    expect(new.locator("button[data-action='cancel']")).to_have_count(0)
    preparing = ticket(k, "preparing", accepted)
    expect(preparing.locator("button[data-action='cancel']")).to_be_visible()
    expect(preparing.locator("button[data-action='reject']")).to_have_count(0)
    new.locator("button[data-action='reject']").click()
    expect(k.locator("dialog#ask")).to_contain_text(f"Reject order {paid}?")
    confirm(k, "Out of ingredients")
    done = ticket(k, "done", paid)
    expect(done).to_have_attribute("data-status", "cancelled")
    expect(done).to_contain_text("Cancelled by the kitchen: “Out of ingredients”")
    expect(done).to_contain_text("refunded 46.00 AED")
    expect(done).to_contain_text("Rejected: the customer is refunded.")

    # Cancel the accepted one: its two shawarmas go back to stock.
    preparing.locator("button[data-action='cancel']").click()
    confirm(k)
    expect(ticket(k, "done", accepted)).to_have_attribute("data-status", "cancelled")
    expect(ticket(k, "preparing", accepted)).to_have_count(0)
    expect(product(k, "prod-shw").locator(".stock-qty")).to_have_text("200")
    for order_id in (paid, accepted):
        details = order(hub, order_id, CUSTOMER)
        assert details["orderStatus"] == "cancelled", details
        assert details["cancelled"]["by"] == "restaurant", details
    assert 103 in opcodes(hub, accepted)  # SALE_RETURN: only the accepted order took stock
    assert 103 not in opcodes(hub, paid)

    # Out of stock, stock 7: a customer page opened before still offers both; it says why not.
    customer = open_app(app_url(hub, "customer", CUSTOMER))
    c = customer.page
    live(c)
    expect(c.locator("#no-order")).to_be_visible()  # both are cancelled and archived
    expect(c.locator("#place")).to_be_enabled()
    expect(control(k, "toggle", "prod-lbn")).to_have_text("Mark out of stock")
    control(k, "toggle", "prod-lbn").click()
    expect(product(k, "prod-lbn")).to_have_attribute("data-availability", "out-of-stock")
    expect(product(k, "prod-lbn")).to_contain_text("out of stock")
    expect(control(k, "toggle", "prod-lbn")).to_have_text("Back in stock")
    expect(k.locator("#menu-msg")).to_contain_text("Laban is out of stock")
    control(k, "qty", "prod-shw").fill("7")
    control(k, "set-qty", "prod-shw").click()
    expect(product(k, "prod-shw").locator(".stock-qty")).to_have_text("7")
    expect(product(k, "prod-shw")).to_contain_class("low")
    assert get(hub, "/api/restaurants/bab-hara", CUSTOMER).json()["products"][0]["stock"] == 7
    order_form(c, 8, 1)
    msg = c.locator("#place-msg")
    expect(msg).to_be_visible()
    expect(msg).to_contain_text(
        "Sorry, only 7 \u00d7 Chicken Shawarma left and Laban is out of stock"
    )
    expect(msg).to_contain_text("the order was not placed")
    expect(c.locator("input[data-product='prod-lbn']")).to_be_disabled()
    expect(c.locator("[data-product-row='prod-lbn']")).to_contain_text("out of stock")
    expect(c.locator("#order-card")).to_be_hidden()  # no order was placed

    # Closed: the banner in the kitchen; the customer's order is refused as closed.
    expect(k.locator("#open-state")).to_have_text("open")
    expect(k.locator("#closed-banner")).to_be_hidden()
    k.click("#open-toggle")
    expect(k.locator("#open-state")).to_have_text("closed")
    expect(k.locator("#open-toggle")).to_have_text("Open the restaurant")
    expect(k.locator("#closed-banner")).to_be_visible()
    assert get(hub, "/api/restaurants/bab-hara", CUSTOMER).json()["open"] is False
    order_form(c, 2, 0)
    expect(msg).to_contain_text("Bab Al Hara is closed right now, so the order was not placed")
    expect(c.locator("#closed-note")).to_be_visible()

    # Open again: the same page places the order (Laban is back too).
    k.click("#open-toggle")
    expect(k.locator("#open-state")).to_have_text("open")
    expect(k.locator("#closed-banner")).to_be_hidden()
    control(k, "toggle", "prod-lbn").click()
    expect(product(k, "prod-lbn")).to_have_attribute("data-availability", "in-stock")
    order_form(c, 2, 0)
    expect(msg).to_be_hidden()
    expect(c.locator("#order-card")).to_be_visible()
    expect(c.locator("#order-title")).to_contain_text("ord-")
    expect(c.locator("#order-status")).to_have_attribute("data-status", "placed")
    expect(c.locator("#closed-note")).to_be_hidden()
    expect(c.locator("input[data-product='prod-lbn']")).to_be_enabled()
    expect(product(k, "prod-shw").locator(".stock-qty")).to_have_text("7")  # not accepted yet
    k.screenshot(path=SHOTS / "unhappy-kitchen-menu.png", full_page=True)
    c.screenshot(path=SHOTS / "unhappy-customer-refused.png", full_page=True)
    no_errors(kitchen)
    no_errors(customer)


def test_driver_declines_and_gets_the_next_order(
    hub: HubProcess,  # noqa: F811
    open_app: Callable[..., App],  # noqa: F811
) -> None:
    """Rami declines from his page: the job goes (the order is no longer his: 403), he is
    idle again, the customer is told a driver is being found; the next order comes to him,
    and a delivery confirmed far from the drop-off is refused in words, then done there."""
    first = place(hub, "pay", "accept", "ready")
    assert order(hub, first)["driver"]["id"] == "rami"  # docs/protocol.md §5 (tracking)
    driver = open_app(app_url(hub, "driver", DRIVER, "&gps=off"))
    customer = open_app(app_url(hub, "customer", CUSTOMER, query=f"?order={first}"))
    d, c = driver.page, customer.page
    live(d)
    live(c)
    expect(d.locator("#job")).to_have_attribute("data-order", first)
    expect(d.locator("#pickup")).to_contain_text("Bab Al Hara")
    expect(d.locator("#decline")).to_be_visible()
    expect(c.locator("#order-status")).to_have_attribute("data-status", "assigned")

    d.click("#decline")
    expect(d.locator("dialog#ask")).to_contain_text(f"Decline order {first}?")
    confirm(d, "Flat tyre")
    expect(d.locator("#job")).to_have_attribute("data-order", "")
    expect(d.locator("#no-job")).to_be_visible()
    expect(d.locator("#job-msg")).to_contain_text(f"You declined order {first}")
    expect(d.locator("#availability")).to_have_attribute("data-availability", "online")
    expect(d.locator("#problem")).to_be_hidden()  # its 403 on the order is not a page error

    assert get(hub, f"/api/orders/{first}", DRIVER).status_code == 403
    details = order(hub, first)
    assert details["orderStatus"] == "ready", details
    assert 306 in opcodes(hub, first)  # TASK_UNASSIGN
    expect(c.locator("#order-status")).to_have_attribute("data-status", "ready")
    expect(c.locator("#timeline li[data-step='assigned']")).not_to_contain_class("done")
    expect(c.locator("#driver-pos")).to_contain_text("no longer coming")
    expect(c.locator("#log")).to_contain_text("TASK_UNASSIGN")

    # Idle again: the next ready order is his (the declined one is not offered again).
    second = place(hub, "pay", "accept", "ready")
    expect(d.locator("#job")).to_have_attribute("data-order", second)
    expect(d.locator("#decline")).to_be_visible()
    d.click("#picked-up")
    expect(d.locator("#job")).to_have_attribute("data-status", "picked_up")
    expect(d.locator("#decline")).to_be_hidden()  # after pickup: no decline

    # Delivered while still at the restaurant: refused (too_far) in words; at the drop-off, done.
    d.click("#delivered")
    expect(d.locator("#job-msg")).to_contain_text("Not delivered: too far from the drop-off")
    expect(d.locator("#job")).to_have_attribute("data-status", "picked_up")
    step(hub, "/api/motion", DRIVER, {"lat": 25.0806, "lng": 55.1404})
    d.click("#delivered")
    expect(d.locator(f"#history li[data-order='{second}']")).to_be_visible()
    expect(d.locator("#job")).to_have_attribute("data-order", "")
    assert order(hub, first)["orderStatus"] == "ready"
    d.screenshot(path=SHOTS / "unhappy-driver.png", full_page=True)
    no_errors(driver)
    no_errors(customer)


def test_a_stale_button_meets_a_race_and_says_so(
    hub: HubProcess,  # noqa: F811
    open_held: Callable[[str], tuple[App, Held]],
) -> None:
    """The customer's page shows Cancel for a paid order; its frames are held back while the
    kitchen accepts and marks it ready over HTTP. The stale Cancel is clicked: the hub
    refuses (409), the page says why in words and drops the button, nothing is cancelled;
    when the frames arrive the page shows where the order is. The kitchen's page likewise:
    Accept on an order the customer cancelled meanwhile."""
    order_id = place(hub, "pay")
    customer, held = open_held(app_url(hub, "customer", CUSTOMER, query=f"?order={order_id}"))
    c = customer.page
    live(c)
    expect(c.locator("#log li")).to_have_count(2)
    expect(c.locator("#cancel")).to_be_visible()
    c.wait_for_timeout(500)  # settled: the page reads the details again 150 ms after an event

    held.holding = True
    step(hub, f"/api/orders/{order_id}/accept", KITCHEN, {"chef": "Hassan", "station": "grill"})
    step(hub, f"/api/orders/{order_id}/ready", KITCHEN)
    c.wait_for_timeout(300)  # the page hears nothing of it
    expect(c.locator("#cancel")).to_be_visible()
    expect(c.locator("#order-status")).to_have_attribute("data-status", "paid")

    c.click("#cancel")
    confirm(c, "Too slow")
    msg = c.locator("#order-msg")
    expect(msg).to_be_visible()
    expect(msg).to_have_attribute("data-kind", "error")
    expect(msg).to_contain_text(re.compile(r"(ready|on the way).* — it can no longer be cancelled"))
    expect(c.locator("#cancel-box")).to_be_hidden()
    expect(c.locator("#problem")).to_be_hidden()
    expect(c.locator("#app")).to_be_visible()
    assert 504 not in opcodes(hub, order_id)  # ORDER_CANCEL: nothing was cancelled
    status = order(hub, order_id)["orderStatus"]
    assert status in ("ready", "assigned"), status

    held.release()
    expect(c.locator("#order-status")).to_have_attribute("data-status", status)
    expect(c.locator("#timeline li[data-step='ready']")).to_contain_class("done")
    expect(c.locator("#log li")).to_have_count(len(opcodes(hub, order_id)))
    expect(c.locator("#cancel-box")).to_be_hidden()
    expect(c.locator("#conn")).to_have_attribute("data-state", "live")
    c.screenshot(path=SHOTS / "unhappy-race-customer.png", full_page=True)
    no_errors(customer)

    # The kitchen: Accept shown, the customer cancels meanwhile, Accept is refused in words.
    other = place(hub, "pay")
    kitchen, k_held = open_held(app_url(hub, "kitchen", KITCHEN))
    k = kitchen.page
    live(k)
    accept = ticket(k, "new", other).locator("button[data-action='accept']")
    expect(accept).to_be_enabled()
    k_held.holding = True
    step(hub, f"/api/orders/{other}/cancel", CUSTOMER, {"reason": "Found a better deal"})
    k.wait_for_timeout(300)
    expect(accept).to_be_enabled()  # stale
    accept.click()
    gone = ticket(k, "done", other)
    expect(gone).to_have_attribute("data-status", "cancelled")
    expect(gone).to_contain_text("The order was already cancelled — it can no longer be accepted.")
    expect(gone.locator("button")).to_have_count(0)
    k_held.release()
    expect(gone).to_contain_text("Cancelled by the customer: “Found a better deal”")
    expect(gone).to_contain_text("refunded 46.00 AED")
    expect(ticket(k, "new", other)).to_have_count(0)
    assert 102 not in opcodes(hub, other)  # SALE_OUT: the refused accept took no stock
    no_errors(kitchen)
