"""The street map (docs/protocol.md §4.4, "Map tiles"): with `HUB_MAP_TILES` the customer and
driver pages draw the delivery with Leaflet (hub/static/vendor/leaflet/, loaded only then) on
tiles from that template, and the driver's marker follows his GPS; without it they keep the
schematic SVG map and never fetch Leaflet. In headless Chromium, against a tile server this
test runs on loopback (any /{z}/{x}/{y}.png is one small PNG; each request is counted).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import struct
import threading
import tomllib
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from hub.config import DEFAULT_MAP_ATTRIBUTION, Settings, SettingsError
from tests.conftest import HubProcess, timeout
from tests.test_cli import run_hub
from tests.test_ui import (  # noqa: F401 (fixtures: browser, open_app, seeded)
    CUSTOMER,
    DRIVER,
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
)

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "hub" / "static"
LEAFLET = STATIC / "vendor" / "leaflet"
RESTAURANT_AT = (25.2650, 55.3320)
TILE = re.compile(r"^/(\d+)/(\d+)/(\d+)\.png$")


def png(size: int = 256, rgb: tuple[int, int, int] = (226, 232, 222)) -> bytes:
    """A plain PNG of one colour (a tile)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))  # fmt: skip

    rows = (b"\x00" + bytes(rgb) * size) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))  # fmt: skip


class TileServer:
    """Map tiles on loopback: any /{z}/{x}/{y}.png is the same PNG; anything else is 404."""

    def __init__(self) -> None:
        self.tiles: list[tuple[int, int, int]] = []
        self.other: list[str] = []
        self.lock = threading.Lock()
        body = png()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                m = TILE.match(self.path)
                with server.lock:
                    if m:
                        server.tiles.append((int(m[1]), int(m[2]), int(m[3])))
                    else:
                        server.other.append(self.path)
                if not m:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{{z}}/{{x}}/{{y}}.png"

    def count(self) -> int:
        with self.lock:
            return len(self.tiles)


@pytest.fixture
def tiles() -> Iterator[TileServer]:
    server = TileServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def fetched(app: App) -> list[str]:
    """Every URL the page has fetched so far (its resource timing entries)."""
    urls: list[str] = app.page.evaluate(
        "() => performance.getEntriesByType('resource').map(e => e.name)")
    return urls


def marker_at(app: App) -> tuple[float, float]:
    """The driver marker's position on the screen (its centre, in CSS pixels)."""
    box = app.page.locator("#driver-marker").bounding_box()
    assert box is not None
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def wait_for_tiles(app: App, server: TileServer) -> None:
    """The page shows tiles, and every one came from the test's server: /{z}/{x}/{y}.png."""
    expect(app.page.locator(".leaflet-tile-loaded").first).to_be_attached()
    assert server.count() > 0
    srcs = app.page.eval_on_selector_all(".leaflet-tile", "els => els.map(e => e.src)")
    prefix = server.template.split("{", 1)[0]
    assert srcs
    assert all(s.startswith(prefix) for s in srcs), srcs
    with server.lock:
        zooms = {z for z, _, _ in server.tiles}
        assert server.other == [], server.other
    assert zooms
    assert all(8 <= z <= 19 for z in zooms), zooms


# -- with tiles: a street map ------------------------------------------------------------------


def test_customer_sees_a_street_map_and_the_driver_moving_on_it(
    seeded: Path,  # noqa: F811
    hub_factory: Callable[..., HubProcess],
    open_app: Callable[..., App],  # noqa: F811
    tiles: TileServer,
) -> None:
    """HUB_MAP_TILES set: /api/config gives it; the customer's map is Leaflet on the test's
    tiles with the restaurant, the drop-off and Rami, who moves when a GPS ping arrives."""
    hub = hub_factory(data_dir=seeded, env={"HUB_MAP_TILES": tiles.template})
    config = httpx.get(hub.url + "/api/config", timeout=timeout(10)).json()
    assert config == {"mapTiles": tiles.template, "mapAttribution": DEFAULT_MAP_ATTRIBUTION}

    order_id = place(hub, "pay", "accept", "ready")  # Rami is assigned
    first = (RESTAURANT_AT[0] + 0.01, RESTAURANT_AT[1])
    step(hub, "/api/motion", DRIVER, {"lat": first[0], "lng": first[1]})
    customer = open_app(app_url(hub, "customer", CUSTOMER, query=f"?order={order_id}"))
    c = customer.page
    live(c)

    expect(c.locator("#map-card .leaflet-container")).to_be_visible()
    expect(c.locator("svg#map")).to_be_hidden()
    expect(c.locator("#driver-dot")).to_have_count(0)  # no schematic map beside it
    expect(c.locator("#street-restaurant")).to_be_visible()
    expect(c.locator("#street-delivery")).to_be_visible()
    marker = c.locator("#driver-marker")
    expect(marker).to_be_visible()
    expect(marker).to_have_attribute("data-lat", str(first[0]))
    expect(c.locator(".leaflet-control-attribution")).to_contain_text(DEFAULT_MAP_ATTRIBUTION)
    wait_for_tiles(customer, tiles)
    assert c.evaluate("() => typeof window.L?.map") == "function"
    c.screenshot(path=SHOTS / "map-streets-customer.png", full_page=True)

    # A GPS ping: the marker goes there (on the screen too), the view stays put.
    before = marker_at(customer)
    second = (25.2000, 55.2500)  # between the restaurant and Ali
    step(hub, "/api/motion", DRIVER, {"lat": second[0], "lng": second[1]})
    expect(marker).to_have_attribute("data-lat", str(second[0]))
    expect(marker).to_have_attribute("data-lng", str(second[1]))
    after = marker_at(customer)
    assert abs(after[0] - before[0]) + abs(after[1] - before[1]) > 20, (before, after)
    # Below and left of where he was: south-west on the map.
    assert after[1] > before[1], (before, after)
    assert after[0] < before[0], (before, after)
    expect(c.locator("#eta")).to_be_visible()  # the tracking around the map is as before
    c.screenshot(path=SHOTS / "map-streets-moved.png", full_page=True)

    urls = fetched(customer)
    assert any(u.endswith("/vendor/leaflet/leaflet.js") for u in urls), urls
    assert any(u.endswith("/vendor/leaflet/leaflet.css") for u in urls), urls
    assert any(u.endswith("/api/config") for u in urls), urls
    customer.no_errors()


def test_driver_sees_his_position_on_the_street_map(
    seeded: Path,  # noqa: F811
    hub_factory: Callable[..., HubProcess],
    open_app: Callable[..., App],  # noqa: F811
    tiles: TileServer,
) -> None:
    """The driver's page draws him on the street map too, at once (no job yet), with the
    attribution a tile provider asks for (HUB_MAP_ATTRIBUTION, shown as plain text)."""
    attribution = "Tiles <b>by</b> the test & co"
    hub = hub_factory(data_dir=seeded, env={"HUB_MAP_TILES": tiles.template,
                                            "HUB_MAP_ATTRIBUTION": attribution})  # fmt: skip
    driver = open_app(app_url(hub, "driver", DRIVER, "&gps=off"))
    d = driver.page
    live(d)
    expect(d.locator(".leaflet-container")).to_be_visible()
    expect(d.locator("#driver-marker")).to_be_visible()
    credit = d.locator(".leaflet-control-attribution")
    expect(credit).to_contain_text(attribution)  # the text itself, not markup
    expect(credit.locator("b")).to_have_count(0)
    wait_for_tiles(driver, tiles)
    d.screenshot(path=SHOTS / "map-streets-driver.png", full_page=True)
    driver.no_errors()


# -- without tiles: the schematic map, as before -------------------------------------------------


def test_without_tiles_the_map_is_the_schematic_one(
    seeded: Path,  # noqa: F811
    hub_factory: Callable[..., HubProcess],
    open_app: Callable[..., App],  # noqa: F811
) -> None:
    """No HUB_MAP_TILES: /api/config says null, the pages draw the SVG map (the driver's dot
    moving with his pings) and never fetch Leaflet."""
    hub = hub_factory(data_dir=seeded)
    config = httpx.get(hub.url + "/api/config", timeout=timeout(10)).json()
    assert config == {"mapTiles": None, "mapAttribution": DEFAULT_MAP_ATTRIBUTION}

    order_id = place(hub, "pay", "accept", "ready")
    step(hub, "/api/motion", DRIVER, {"lat": RESTAURANT_AT[0] + 0.01, "lng": RESTAURANT_AT[1]})
    customer = open_app(app_url(hub, "customer", CUSTOMER, query=f"?order={order_id}"))
    driver = open_app(app_url(hub, "driver", DRIVER, "&gps=off"))
    c, d = customer.page, driver.page
    live(c)
    live(d)
    for page in (c, d):
        expect(page.locator("svg#map")).to_be_visible()
        expect(page.locator("svg#map")).not_to_have_attribute("data-map", "pending")
        expect(page.locator("#driver-dot")).to_be_attached()
        assert page.locator(".leaflet-container, .street-map").count() == 0
        assert page.evaluate("() => typeof window.L") == "undefined"
    dot = "() => document.querySelector('#driver-dot').getAttribute('cx')"
    cx = c.evaluate(dot)
    step(hub, "/api/motion", DRIVER, {"lat": 25.2000, "lng": 55.2500})
    c.wait_for_function(f"() => {dot}() !== {cx!r}", timeout=WAIT_MS)
    c.screenshot(path=SHOTS / "map-schematic.png", full_page=True)
    for app in (customer, driver):
        urls = fetched(app)
        assert any(u.endswith("/api/config") for u in urls), urls
        assert not [u for u in urls if "/vendor/leaflet/" in u], urls
    customer.no_errors()
    driver.no_errors()


# -- the setting -------------------------------------------------------------------------------

GOOD_TILES = [
    "https://tile.openstreetmap.org/{z}/{x}/{y}.png",
    "https://{s}.tile.example.com/{z}/{x}/{y}{r}.png?key=abc",
    "http://127.0.0.1:8080/tiles/{z}/{x}/{-y}.png",
]
BAD_TILES = [
    ("ftp://tiles.example.com/{z}/{x}/{y}.png", "must be an http:// or https:// URL"),
    ("/tiles/{z}/{x}/{y}.png", "must be an http:// or https:// URL"),
    ("https://tiles.example.com/{z}/{x}.png", "must contain {z}, {x} and {y}"),
    ("https://tiles.example.com/tile.png", "must contain {z}, {x} and {y}"),
    ("https://tiles.example.com/{z}/{x}/{y}.png?key={apikey}", "not {apikey}"),
    ("https://me:pw@tiles.example.com/{z}/{x}/{y}.png", "must not carry a user or password"),
    ("https://tiles.example.com/{z}/{x}/{y} .png", "without spaces"),
    ("https://tiles.example.com:99999/{z}/{x}/{y}.png", "HUB_MAP_TILES: Port out of range"),
]


@pytest.mark.parametrize("template", GOOD_TILES)
def test_a_tile_template_is_taken(tmp_path: Path, template: str) -> None:
    s = Settings.from_env({"HUB_DATA_DIR": str(tmp_path), "HUB_SECRET": "x",
                           "HUB_MAP_TILES": f" {template} "})  # fmt: skip
    assert s.map_tiles == template
    assert s.map_attribution == DEFAULT_MAP_ATTRIBUTION


@pytest.mark.parametrize(("template", "says"), BAD_TILES)
def test_a_bad_tile_template_is_refused(tmp_path: Path, template: str, says: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(says)):
        Settings.from_env({"HUB_DATA_DIR": str(tmp_path), "HUB_SECRET": "x",
                           "HUB_MAP_TILES": template})  # fmt: skip


def test_unset_or_empty_settings_mean_no_street_map(tmp_path: Path) -> None:
    env = {"HUB_DATA_DIR": str(tmp_path), "HUB_SECRET": "x"}
    assert Settings.from_env(env).map_tiles is None
    empty = Settings.from_env({**env, "HUB_MAP_TILES": " ", "HUB_MAP_ATTRIBUTION": ""})
    assert empty.map_tiles is None
    assert empty.map_attribution == DEFAULT_MAP_ATTRIBUTION
    with pytest.raises(SettingsError, match="HUB_MAP_ATTRIBUTION"):
        Settings.from_env({**env, "HUB_MAP_ATTRIBUTION": "x" * 301})
    with pytest.raises(SettingsError, match="HUB_MAP_ATTRIBUTION"):
        Settings.from_env({**env, "HUB_MAP_ATTRIBUTION": "line\nbreak"})


def test_a_bad_tile_template_stops_the_hub_at_start(tmp_path: Path) -> None:
    """`hub serve` refuses it before serving: one line, exit status 2."""
    out = run_hub("serve", "--port", "1", data=tmp_path / "data",
                  extra={"HUB_MAP_TILES": "https://tiles.example.com/{z}/{x}.png"},
                  seconds=30)  # fmt: skip
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("hub: "), out.stderr
    assert "HUB_MAP_TILES must contain {z}, {x} and {y}" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


# -- the vendored Leaflet ships --------------------------------------------------------------


def test_leaflet_is_vendored_unchanged_with_its_licence() -> None:
    """The copies are npm's leaflet 1.9.4 files (the sums its README records), with the
    licence beside them."""
    readme = (LEAFLET / "README.md").read_text()
    assert "Leaflet 1.9.4" in readme
    sums = dict((name, digest) for digest, name in re.findall(r"([0-9a-f]{64})  (\S+)", readme))
    assert set(sums) == {"leaflet.js", "leaflet.css"}, sums
    for name, digest in sums.items():
        assert hashlib.sha256((LEAFLET / name).read_bytes()).hexdigest() == digest, name
    assert "1.9.4" in (LEAFLET / "leaflet.js").read_text()[:200]
    assert "BSD 2-Clause License" in (LEAFLET / "LICENSE").read_text()
    css = (LEAFLET / "leaflet.css").read_text()
    for image in re.findall(r"url\((images/[^)]+)\)", css):
        assert (LEAFLET / image).is_file(), image


def test_the_package_data_globs_hold_every_static_file() -> None:
    """Every file under hub/static/ (the vendored Leaflet included) matches a package-data
    glob of pyproject.toml, so a wheel ships it (tests/test_install.py builds one)."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["hub"]  # fmt: skip
    files = [p.relative_to(ROOT / "hub").as_posix() for p in STATIC.rglob("*") if p.is_file()]
    assert any(f.startswith("static/vendor/leaflet/images/") for f in files), files
    # setuptools' globs: "*" does not cross a "/" (fnmatch's does; hence the slash counts).
    missing = [f for f in files
               if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert missing == [], missing
