"""Operating the hub (docs/protocol.md §9) against real hubs: the probes, the process_*
series and the per-route latency histogram, the platform's /api/ops reads, the Grafana
dashboard's queries against a live /metrics, and no internal error text in a probe's
answer during real failures (Redis at a closed port; the streams DB's sqld stopped).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from websockets.sync.client import connect

from hub.edge.wire.ops import InstanceState, OnlineDrivers, Probe
from tests.conftest import SECRET, HubProcess, auth, free_port, parse_metrics, timeout, token
from tests.sqld import Sqld

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "ops" / "grafana" / "hub.json"
PLATFORM = auth("ops", "platform")
ALI, KITCHEN, RAMI = auth("ali", "customer"), auth("bab-hara", "restaurant"), auth("rami", "driver")
ITEMS = [{"productId": "prod-shw", "qty": 2}, {"productId": "prod-lbn", "qty": 1}]
ORDER = {"restaurant": "bab-hara", "deliveryAddress": "Marina Walk", "items": ITEMS}
STEPS = {"pay": (ALI, {"method": "card", "cardLast4": "4242"}),
         "accept": (KITCHEN, {"chef": "Hassan", "station": "grill"}),
         "ready": (KITCHEN, {})}  # fmt: skip
PROCESS_SERIES = ("process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                  "process_resident_memory_bytes", "process_virtual_memory_bytes",
                  "process_start_time_seconds")  # fmt: skip
# What an answer must never carry: exception text, addresses, URLs, library names.
INTERNALS = ("Errno", "errno", "refused", "Refused", "Traceback", "Exception", "Error:",
             "127.0.0.1", "localhost", "redis://", "ws://", "http://", "sqlite", "libsql",
             "Connect", "timed out", "Timeout")  # fmt: skip


def seed(data: Path, env: dict[str, str] | None = None) -> None:
    full = {**os.environ, "HUB_DATA_DIR": str(data), "HUB_SECRET": SECRET, **(env or {})}
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "hub", "seed"], env=full, check=True,
                   capture_output=True, timeout=timeout(60))  # fmt: skip


@pytest.fixture
def seeded(tmp_path: Path, hub_factory: Callable[..., HubProcess]) -> HubProcess:
    """A hub on the seed's Step 0 (Bab Al Hara, Rami idle, Ali)."""
    data = tmp_path / "data"
    seed(data)
    return hub_factory(data_dir=data)


@pytest.fixture
def c(seeded: HubProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=seeded.url, timeout=timeout(15), trust_env=False) as client:
        yield client


def post(c: httpx.Client, path: str, who: dict[str, str], body: Any) -> dict[str, Any]:
    r = c.post(path, json=body, headers=who)
    assert r.status_code in (200, 201), (path, r.status_code, r.text)
    out: dict[str, Any] = r.json()
    return out


def metrics(c: httpx.Client) -> str:
    r = c.get("/metrics")
    assert r.status_code == 200, r.text
    return r.text


def no_internals(text: str) -> None:
    found = [s for s in INTERNALS if s in text]
    assert not found, f"internal text {found} in {text!r}"


# -- probes and metrics ----------------------------------------------------------------------


def test_livez_and_readyz_answer_200_without_a_token(c: httpx.Client) -> None:
    """Both probes: 200 {"status": "ok"}, no token needed, a bad one ignored."""
    for path in ("/livez", "/readyz"):
        for headers in ({}, {"authorization": "Bearer nonsense"}):
            r = c.get(path, headers=headers)
            assert r.status_code == 200, (path, r.text)
            assert r.headers["content-type"].startswith("application/json")
            assert msgspec.json.decode(r.content, type=Probe) == Probe("ok")
    assert c.get("/healthz").json()["status"] == "ok"


def test_metrics_have_process_series_and_a_latency_histogram_per_route(c: httpx.Client) -> None:
    """process_* and python_info; hub_http_request_duration_seconds by route template,
    for routes served by Starlette and for the append fast path; never a raw path."""
    c.get("/readyz")
    sid = "ord-ops-latency-1"
    body = {"opcode": 501, "payload": {"customer": "ali", "restaurant": "bab-hara"}}
    post(c, f"/api/streams/{sid}/events", PLATFORM, body)
    assert c.get(f"/api/streams/{sid}", headers=PLATFORM).status_code == 200
    assert c.get(f"/api/streams/{sid}", headers=ALI).status_code == 200
    text = metrics(c)
    values = parse_metrics(text)
    for name in PROCESS_SERIES:
        assert name in values, name
    assert values["process_open_fds"] > 0
    assert values["process_resident_memory_bytes"] > 1e6
    assert any(k.startswith("python_info{") for k in values)

    def count(route: str, method: str) -> float:
        series = f'{{method="{method}",route="{route}"}}'
        return values["hub_http_request_duration_seconds_count" + series]

    assert count("/readyz", "GET") >= 1
    assert count("/api/streams/{stream_id}/events", "POST") == 1  # the fast path
    assert count("/api/streams/{stream_id}", "GET") == 2
    assert count("/api/orders/{order_id}/pay", "POST") == 0  # every route has its series
    buckets = [k for k in values if k.startswith("hub_http_request_duration_seconds_bucket{")
               and 'route="/api/streams/{stream_id}"' in k]  # fmt: skip
    assert values[next(k for k in buckets if 'le="+Inf"' in k)] == 2
    assert sid not in text, "a raw path became a label"
    assert values['hub_health_ok{check="streams_db"}'] == 1
    assert values['hub_health_ok{check="broker"}'] == 1
    assert values["hub_store_commits_total"] >= 1


def test_the_latency_wrapper_costs_microseconds() -> None:
    """The per-route wrapper around an endpoint: a few microseconds a request (the append
    path takes hundreds)."""
    import asyncio

    from starlette.routing import Route

    from hub.edge.ops import timed
    from hub.metrics import Metrics

    class Endpoint:  # an ASGI app, as AppendEndpoint is
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    app = Endpoint()

    async def sink(message: Any) -> None:
        return None

    async def receive() -> Any:
        return {"type": "http.request"}

    (route,) = timed(Metrics(), [Route("/x/{p}", app, methods=["POST"])])
    assert isinstance(route, Route)
    scope = {"type": "http", "method": "POST", "path": "/x/1"}

    async def run(target: Any, n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            await target(scope, receive, sink)
        return (time.perf_counter() - t) / n

    async def measure() -> tuple[float, float]:
        await run(route.app, 1000)
        bare = min([await run(app, 20000) for _ in range(3)])
        wrapped = min([await run(route.app, 20000) for _ in range(3)])
        return bare, wrapped

    bare, wrapped = asyncio.run(measure())
    print(f"bare {bare * 1e6:.2f} us, timed {wrapped * 1e6:.2f} us per request")
    assert wrapped - bare < timeout(20e-6), (bare, wrapped)


# -- the platform's operations reads -----------------------------------------------------------


def test_instance_state_for_the_platform_only(seeded: HubProcess, c: httpx.Client) -> None:
    """/api/ops/instance: 401 without a token, 403 for others; for the platform its id,
    checks, sockets and rates from its own counters."""
    assert c.get("/api/ops/instance").status_code == 401
    for who in (ALI, KITCHEN, RAMI):
        r = c.get("/api/ops/instance", headers=who)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
    first = msgspec.json.decode(c.get("/api/ops/instance", headers=PLATFORM).content,
                                type=InstanceState)  # fmt: skip
    assert first.status == "ok", first
    assert first.checks == {"streams_db": "ok", "broker": "ok", "tenant_dbs": "ok",
                            "public_db": "ok"}  # fmt: skip
    assert first.broker == "memory"
    assert first.instanceId == f"{first.hostname}:{first.pid}"
    assert first.openFds
    ws_url = f"{seeded.ws_url}/ws/inbox?token={token('ops', 'platform')}"
    with connect(ws_url, open_timeout=timeout(10)) as ws:
        assert json.loads(ws.recv(timeout(10)))["type"] == "live"
        time.sleep(1.1)  # the rates need a window of at least a second
        for i in range(5):
            body = {"opcode": 501, "payload": {"customer": "ali", "restaurant": "bab-hara"}}
            post(c, f"/api/streams/ord-ops-rate-{i}/events", PLATFORM, body)
            assert json.loads(ws.recv(timeout(10)))["type"] == "event"
        state = msgspec.json.decode(c.get("/api/ops/instance", headers=PLATFORM).content,
                                    type=InstanceState)  # fmt: skip
    assert state.instanceId == first.instanceId
    assert state.websockets >= 1, state
    assert state.subscriptions >= 1, state
    assert state.eventsAppended == first.eventsAppended + 5
    assert state.framesSent >= first.framesSent + 6  # live + 5 events
    assert 1.0 <= state.rateWindowSeconds <= 11, state
    assert state.eventsPerSecond > 0, state
    assert state.deliveriesPerSecond > 0, state
    assert state.dbWritesPerSecond["streams"] > 0, state
    assert state.uptimeSeconds > 0


def test_drivers_online_with_their_last_fix(c: httpx.Client) -> None:
    """/api/ops/drivers: Rami online at the seed's point, then on the order he is
    assigned; at his last fix; limit bounds the list; platform only."""
    assert c.get("/api/ops/drivers").status_code == 401
    assert c.get("/api/ops/drivers", headers=RAMI).status_code == 403
    listed = msgspec.json.decode(c.get("/api/ops/drivers", headers=PLATFORM).content,
                                 type=OnlineDrivers)  # fmt: skip
    assert not listed.more
    assert [(d.driver, d.name, d.status, d.orderId) for d in listed.drivers] == [
        ("rami", "Rami", "online", None)]  # fmt: skip
    assert (listed.drivers[0].lat, listed.drivers[0].lng) == (25.2640, 55.3310)
    assert listed.drivers[0].lastSeen is None  # the seed's position: no fix arrived yet

    order_id = post(c, "/api/orders", ALI, ORDER)["orderId"]
    for name, (who, body) in STEPS.items():
        post(c, f"/api/orders/{order_id}/{name}", who, body)
    sent = datetime.now(UTC)
    post(c, "/api/motion", RAMI, {"lat": 25.2650, "lng": 55.3320})
    (rami,) = c.get("/api/ops/drivers", headers=PLATFORM).json()["drivers"]
    seen = rami.pop("lastSeen")
    assert rami == {"driver": "rami", "name": "Rami", "status": "en-route", "orderId": order_id,
                    "lat": 25.2650, "lng": 55.3320}  # fmt: skip
    # when that fix arrived (the driver's seenAt), to the millisecond, ISO 8601 UTC
    assert abs((datetime.fromisoformat(seen) - sent).total_seconds()) < 5, seen

    r = c.get("/api/ops/drivers", params={"limit": 0}, headers=PLATFORM)
    assert r.json() == {"drivers": [], "more": True}
    for bad in ("501", "-1", "x"):
        r = c.get("/api/ops/drivers", params={"limit": bad}, headers=PLATFORM)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_limit"


# -- the Grafana dashboard -------------------------------------------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a label_values() query) selects."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\blabel_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*\w+\s*\)", r"\1", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w$.])[A-Za-z_:][\w:]*", e):
        if e[m.end() :].lstrip().startswith("(") or m.group().lower() in KEYWORDS:
            continue  # a function or an operator
        names.add(m.group())
    return names


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            query = node.get("query")
            if node.get("type") == "query" and isinstance(query, dict):
                found.append(query["query"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


def exported(text: str) -> set[str]:
    """Every name /metrics answers to: its series' names, and for each family (even one
    without a series yet, e.g. a labelled histogram nothing was observed into) the names
    its type gives it."""
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
             if line and not line.startswith("#")}  # fmt: skip
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
            names.update([name, *(name + s for s in suffixes.get(kind, ()))])
    return names


def test_the_dashboard_queries_only_metrics_the_hub_exports(c: httpx.Client) -> None:
    """Every query of ops/grafana/hub.json (panels and variables) names at least one metric,
    and every metric it names is in a live hub's /metrics."""
    doc = json.loads(DASHBOARD.read_text())
    assert doc["templating"]["list"][0]["type"] == "datasource"
    assert all(p.get("datasource", {}).get("uid") == "${datasource}"
               for p in doc["panels"] if p["type"] != "row")  # fmt: skip
    post(c, "/api/streams/ord-ops-dash-1/events", PLATFORM,
         {"opcode": 501, "payload": {"customer": "ali", "restaurant": "bab-hara"}})  # fmt: skip
    have = exported(metrics(c))
    queries = dashboard_queries()
    assert len(queries) >= 30, queries
    named: set[str] = set()
    for query in queries:
        names = metric_names(query)
        assert names, f"no metric in {query!r}"
        missing = names - have
        assert not missing, f"{query!r} names {missing}, which /metrics does not export"
        named |= names
    for wanted in ("hub_ws_connections", "hub_ws_frames_sent_total",
                   "hub_append_latency_seconds_bucket", "hub_store_commits_total",
                   "hub_ws_slow_consumer_fallbacks_total", "hub_health_ok",
                   "hub_db_writes_total", "process_open_fds",
                   "hub_http_request_duration_seconds_bucket"):  # fmt: skip
        assert wanted in named, wanted


def test_metric_names_are_read_from_promql() -> None:
    """The test's PromQL reader: functions, label lists, matchers and ranges are not names."""
    q = ('histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{job=~"$job", a="b(c)"}'
         "[$__rate_interval]))) / on (instance) group_left (z) y_total offset 5m + time()")
    assert metric_names(q) == {"x_bucket", "y_total"}
    assert metric_names('label_values(up{job=~"$job"}, instance)') == {"up"}
    assert metric_names("sum(rate(a[5m])) / sum(rate(b[5m]))") == {"a", "b"}


# -- failures: no internal error text ------------------------------------------------------


def check_bodies(hub: HubProcess, *, ready: bool) -> dict[str, Any]:
    """/livez, /readyz and /healthz during a failure: their fixed shapes, nothing else."""
    with httpx.Client(base_url=hub.url, timeout=timeout(15), trust_env=False) as c:
        live = c.get("/livez")
        assert (live.status_code, live.json()) == (200, {"status": "ok"})
        readyz = c.get("/readyz")
        if ready:
            assert (readyz.status_code, readyz.json()) == (200, {"status": "ok"})
        else:
            assert readyz.status_code == 503, readyz.text
            assert readyz.json() == {"error": {"code": "not_ready",
                                               "message": "not ready: the streams DB is failing"}}
        health = c.get("/healthz")
        body = health.json()
        assert set(body) == {"status", "checks"}, body
        assert set(body["checks"].values()) <= {"ok", "failing"}, body
        for r in (live, readyz, health):
            no_internals(r.text)
            no_internals(json.dumps(dict(r.headers)))
        state = c.get("/api/ops/instance", headers=PLATFORM)
        assert state.status_code == 200, state.text
        no_internals(state.text)
    return {"healthz": (health.status_code, body), "instance": state}


def test_redis_at_a_closed_port_is_degraded_and_says_nothing_of_why(
    tmp_path: Path, hub_factory: Callable[..., HubProcess]
) -> None:
    """HUB_REDIS_URL pointing at a closed port: /healthz degraded (broker failing), /readyz
    and /livez 200; the answers carry no error text, the log says why, once."""
    port = free_port()  # nothing listens there
    hub = hub_factory(data_dir=tmp_path / "data",
                      env={"HUB_REDIS_URL": f"redis://127.0.0.1:{port}/0"})  # fmt: skip
    seen = check_bodies(hub, ready=True)
    status, body = seen["healthz"]
    assert (status, body["status"], body["checks"]["broker"]) == (200, "degraded", "failing")
    assert body["checks"]["streams_db"] == "ok"
    assert str(port) not in json.dumps(body)
    state = msgspec.json.decode(seen["instance"].content, type=InstanceState)
    assert (state.broker, state.checks["broker"], state.status) == ("redis", "failing", "degraded")
    m = parse_metrics(httpx.get(hub.url + "/metrics", timeout=timeout(10)).text)
    assert m['hub_health_ok{check="broker"}'] == 0
    assert m['hub_health_ok{check="streams_db"}'] == 1
    check_bodies(hub, ready=True)
    assert "health: broker is failing: " in hub.log()  # the why: in the log only


def test_streams_db_down_makes_readyz_503_without_internal_text(
    tmp_path: Path, hub_factory: Callable[..., HubProcess], sqld_factory: Callable[..., Sqld]
) -> None:
    """The streams DB on sqld, then sqld stopped: /readyz and /healthz 503, /livez 200, none
    with the client library's error text (the log has it); sqld back: ready again."""
    sqld = sqld_factory("streams")
    hub = hub_factory(data_dir=tmp_path / "data", env={"HUB_STREAMS_DB": sqld.ws_url})
    check_bodies(hub, ready=True)
    sqld.stop()
    try:
        seen = check_bodies(hub, ready=False)
        status, body = seen["healthz"]
        assert (status, body["status"], body["checks"]["streams_db"]) == (503, "failing", "failing")
        assert "health: streams_db is failing: " in hub.log()
    finally:
        sqld.start()
    deadline = time.monotonic() + timeout(20)
    while httpx.get(hub.url + "/readyz", timeout=timeout(10)).status_code != 200:
        assert time.monotonic() < deadline, "not ready again after sqld came back"
        time.sleep(0.2)
    assert "health: streams_db is ok again" in hub.log()
