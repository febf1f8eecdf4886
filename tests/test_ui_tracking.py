"""Live tracking in the web UI (docs/protocol.md §5, "Tracking frames"), in headless Chromium:
the customer sees the driver the moment the page opens, an ETA counting down, "driver last
seen … ago" while he is silent and the arrival; the kitchen each coming driver's ETA; the
driver the distance and ETA to his next stop. Same browser and hubs as tests/test_ui.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import HubProcess
from tests.test_ui import (  # noqa: F401 (fixtures: browser, open_app, seeded)
    CUSTOMER,
    DRIVER,
    KITCHEN,
    SHOTS,
    WAIT_MS,
    App,
    app_url,
    browser,
    expect,
    live,
    open_app,
    place,
    seeded,
    step,
    ticket,
)

RESTAURANT_AT = (25.2650, 55.3320)
ALI_AT = (25.0805, 55.1403)  # the drop-off (Ali's own location)


def motion(hub: HubProcess, lat: float, lng: float) -> None:
    step(hub, "/api/motion", DRIVER, {"lat": lat, "lng": lng})


def seconds(app: App, selector: str) -> int:
    value = app.page.locator(selector).get_attribute("data-seconds")
    assert value is not None, selector
    return int(value)


def test_customer_sees_the_driver_eta_presence_and_arrival(
    seeded: Path,  # noqa: F811
    hub_factory: Callable[..., HubProcess],
    open_app: Callable[..., App],  # noqa: F811
) -> None:
    """A page opened while Rami rides shows him on the map at once and an ETA that counts
    down; when his positions stop, "driver last seen 0:0x ago" (counting up); back, it
    goes; near the drop-off, "arriving"."""
    hub = hub_factory(data_dir=seeded, env={"HUB_PRESENCE_TIMEOUT": "2"})
    order_id = place(hub, "pay", "accept", "ready")
    motion(hub, RESTAURANT_AT[0] + 0.01, RESTAURANT_AT[1])  # about 1.1 km away
    customer = open_app(app_url(hub, "customer", CUSTOMER, query=f"?order={order_id}"))
    c = customer.page
    live(c)
    opened = time.monotonic()
    c.wait_for_selector("#driver-dot", state="attached", timeout=WAIT_MS)
    expect(c.locator("#eta")).to_contain_text("At the restaurant in about")
    print(f"the driver was on the map {time.monotonic() - opened:.2f} s after the page was live")
    expect(c.locator("#eta")).to_contain_text("1.1 km away")
    first = seconds(customer, "#eta")
    assert 60 < first < 300, first
    c.wait_for_function(f"() => Number(document.querySelector('#eta').dataset.seconds) < {first}")

    # Silent for HUB_PRESENCE_TIMEOUT: "driver last seen m:ss ago", counting up.
    box = c.locator("#presence")
    expect(box).to_have_attribute("data-state", "unreachable")
    expect(box).to_contain_text(re.compile(r"driver last seen 0:0\d ago"))
    said = box.text_content()
    expect(box).not_to_have_text(said or "")  # a second later it says one more
    c.screenshot(path=SHOTS / "tracking-unreachable.png", full_page=True)
    motion(hub, RESTAURANT_AT[0] + 0.009, RESTAURANT_AT[1])
    expect(box).to_be_hidden()

    # Picked up, then within 200 m of the drop-off: the ETA is to Ali, and he is arriving.
    step(hub, f"/api/orders/{order_id}/pickup", DRIVER, {})
    motion(hub, ALI_AT[0] + 0.0012, ALI_AT[1])  # about 130 m north of Ali
    expect(c.locator("#arriving")).to_contain_text("Your driver is arriving")
    expect(c.locator("#eta")).to_contain_text("Arriving in about")
    expect(c.locator("#eta")).to_have_attribute("data-stop", "dropoff")
    c.screenshot(path=SHOTS / "tracking-arriving.png", full_page=True)
    customer.no_errors()


def test_kitchen_and_driver_see_the_eta_to_the_next_stop(
    seeded: Path,  # noqa: F811
    hub_factory: Callable[..., HubProcess],
    open_app: Callable[..., App],  # noqa: F811
) -> None:
    """Rami rides (a simulated route): the kitchen's ticket counts his ETA to the restaurant
    down; his page shows the distance and ETA to the restaurant, then to the drop-off."""
    hub = hub_factory(data_dir=seeded)
    kitchen = open_app(app_url(hub, "kitchen", KITCHEN))
    driver = open_app(app_url(hub, "driver", DRIVER, "&gps=sim"))
    k, d = kitchen.page, driver.page
    live(k)
    live(d)
    order_id = place(hub, "pay", "accept", "ready")

    eta = ticket(k, "ready", order_id).locator(".driver-eta")
    expect(eta).to_contain_text(re.compile(r"here in about \d+:\d\d"))
    expect(eta).to_have_attribute("data-seconds", re.compile(r"\d+"))
    nearby = d.locator("#next-stop")
    expect(nearby).to_contain_text(re.compile(r"Restaurant: [\d.]+ k?m · about \d+:\d\d"))
    k.screenshot(path=SHOTS / "tracking-kitchen.png", full_page=True)

    d.click("#picked-up")
    expect(nearby).to_have_attribute("data-stop", "dropoff")
    expect(nearby).to_contain_text(re.compile(r"Drop-off: [\d.]+ k?m · about \d+:\d\d"))
    expect(ticket(k, "out", order_id)).to_be_visible()
    d.screenshot(path=SHOTS / "tracking-driver.png", full_page=True)
    kitchen.no_errors()
    driver.no_errors()
