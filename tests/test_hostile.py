"""Hostile clients against a real hub: fuzzing, limits at their boundaries, and access.

1. schemathesis drives every operation of ``/openapi.json`` (served by the live hub) with
   schema-valid and schema-invalid requests and party tokens: no 5xx, every error in the
   contract's body, every response as documented; a run in which every request is refused
   writes nothing.
2. Hypothesis throws arbitrary frames at a stream socket: each gets an error frame (or a
   pong), the hub never falls over.
3. Every limit is checked on both sides of its boundary.
4. The access matrix of docs/protocol.md §2 for every endpoint and both socket paths, stream
   existence cannot be probed (status, body or timing), and no id escapes the data dir;
   an order a customer wrote by hand (the generic event API allows it) cannot crash the
   kitchen's steps or restock the restaurant.

Data generation is derandomized: a run is the same run every time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
import websockets
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi import checks as oas
from starlette.routing import Route
from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from hub.edge.openapi import openapi_document
from tests.conftest import SECRET, HubProcess, auth, parse_metrics, timeout, token

Json = dict[str, Any]

MIB = 1 << 20
KIB64 = 64 << 10
PLATFORM = auth("ops", "platform")
ALI = auth("ali", "customer")
KITCHEN = auth("bab-hara", "restaurant")
RAMI = auth("rami", "driver")
# The seed's parties by role, and tenants that are party to nothing.
PARTY = {"customer": "ali", "restaurant": "bab-hara", "driver": "rami", "platform": "ops"}
OUTSIDER = {"customer": "eve", "restaurant": "zaatar", "driver": "sami"}
ORDER_BODY = {
    "restaurant": "bab-hara",
    "items": [{"productId": "prod-shw", "qty": 1}],
    "deliveryAddress": "Marina Walk, Dubai",
}
LEAKS = (*HubProcess.LEAKS, "connection task failed", "Exception in ASGI application")


# -- helpers ------------------------------------------------------------------------------


def new_sid(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def run_seed(data: Path) -> Path:
    """``hub seed`` on ``data``: Bab Al Hara with its menu, Rami (idle), Ali."""
    env = {**os.environ, "HUB_DATA_DIR": str(data), "HUB_SECRET": SECRET}
    subprocess.run(
        [sys.executable, "-m", "hub", "seed"],
        env=env,
        check=True,
        capture_output=True,
        timeout=timeout(60),
    )
    return data


@pytest.fixture
def seeded(hub_factory: Callable[..., HubProcess], tmp_path: Path) -> HubProcess:
    """A hub on a data dir loaded with the seed's Step 0."""
    return hub_factory(data_dir=run_seed(tmp_path / "data"))


@contextlib.contextmanager
def client(hub: HubProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.url, timeout=timeout(30), trust_env=False) as c:
        yield c


def metrics(c: httpx.Client) -> dict[str, float]:
    r = c.get("/metrics")
    assert r.status_code == 200, r.text
    return parse_metrics(r.text)


def writes(c: httpx.Client) -> dict[str, float]:
    """``hub_db_writes_total`` by target."""
    m = metrics(c)
    return {t: m[f'hub_db_writes_total{{target="{t}"}}'] for t in ("streams", "tenant", "public")}


def assert_error_body(body: object) -> None:
    """``body`` is the contract's error body and nothing else."""
    assert isinstance(body, dict), body
    assert list(body) == ["error"], body
    err = body["error"]
    assert isinstance(err, dict), body
    assert set(err) == {"code", "message"}, body
    assert isinstance(err["code"], str), body
    assert err["code"], body
    assert isinstance(err["message"], str), body


def assert_error(r: httpx.Response, *statuses: int) -> str:
    """``r`` has one of ``statuses`` and the contract's error body; returns its code."""
    assert r.status_code in statuses, (r.request.method, r.request.url, r.status_code, r.text)
    body = r.json()
    assert_error_body(body)
    return str(body["error"]["code"])


def append(c: httpx.Client, sid: str, drafts: list[Json], headers: dict[str, str]) -> list[Json]:
    r = c.post(f"/api/streams/{sid}/events", json={"events": drafts}, headers=headers)
    assert r.status_code == 201, r.text
    events: list[Json] = r.json()["events"]
    return events


def order_create(customer: str, restaurant: str = "bab-hara", **payload: Any) -> Json:
    return {"opcode": 501, "payload": {"customer": customer, "restaurant": restaurant, **payload}}


def place_order(c: httpx.Client) -> str:
    r = c.post("/api/orders", json=ORDER_BODY, headers=ALI)
    assert r.status_code == 201, r.text
    return str(r.json()["orderId"])


def order_step(c: httpx.Client, oid: str, step: str, headers: dict[str, str], body: Json) -> None:
    r = c.post(f"/api/orders/{oid}/{step}", json=body, headers=headers)
    assert r.status_code == 200, (step, r.text)


def data_files(data: Path) -> set[str]:
    """Files under the data dir (SQLite's -wal/-shm/-journal folded into their DB; no logs)."""
    out = set()
    for p in data.rglob("*"):
        if p.is_file() and not p.name.endswith(".log"):
            out.add(re.sub(r"-(wal|shm|journal)$", "", str(p.relative_to(data))))
    return out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_by_hand(claims: Json, *, key: str = SECRET, alg: str = "HS256") -> str:
    """A JWT built without a library, so any header, claim or signature can be forged."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{body}".encode()
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}.get(alg)
    signature = b64url(hmac.new(key.encode(), signing_input, digest).digest()) if digest else ""
    return f"{header}.{body}.{signature}"


NOW = int(time.time())
GOOD_CLAIMS = {"sub": "ali", "role": "customer"}
# Authorization header values (None: no header) that must get 401 / close 4401.
BAD_AUTH: dict[str, str | None] = {
    "none": None,
    "bare-bearer": "Bearer",
    "bearer-spaces": "Bearer    x",
    "basic-scheme": "Basic " + base64.b64encode(b"ali:customer").decode(),
    "malformed": "Bearer not-a-jwt",
    "truncated": "Bearer " + jwt_by_hand(GOOD_CLAIMS)[:-6],
    "wrong-key": "Bearer " + jwt_by_hand(GOOD_CLAIMS, key="another-secret-" + "x" * 40),
    "alg-none": "Bearer " + jwt_by_hand(GOOD_CLAIMS, alg="none"),
    "alg-hs512": "Bearer " + jwt_by_hand(GOOD_CLAIMS, alg="HS512"),
    "expired": "Bearer " + jwt_by_hand({**GOOD_CLAIMS, "exp": NOW - 60}),
    "not-yet-valid": "Bearer " + jwt_by_hand({**GOOD_CLAIMS, "nbf": NOW + 3600}),
    "bad-sub": "Bearer " + jwt_by_hand({"sub": "Ali!", "role": "customer"}),
    "traversal-sub": "Bearer " + jwt_by_hand({"sub": "../ali", "role": "customer"}),
    "unknown-role": "Bearer " + jwt_by_hand({"sub": "ali", "role": "admin"}),
    "no-role": "Bearer " + jwt_by_hand({"sub": "ali"}),
    "no-sub": "Bearer " + jwt_by_hand({"role": "platform"}),
}


def bad_headers(name: str) -> dict[str, str]:
    value = BAD_AUTH[name]
    return {} if value is None else {"authorization": value}


def bad_query(name: str) -> str:
    """The same bad credential as ``?token=`` (browsers)."""
    value = BAD_AUTH[name]
    if value is None or not value.startswith("Bearer "):
        return ""
    return "?token=" + quote(value.removeprefix("Bearer "), safe="")


# WebSocket helpers (sync client: one thread per socket, no event loop to share).


def ws_open(hub: HubProcess, path: str, headers: dict[str, str] | None = None) -> ClientConnection:
    return sync_connect(
        hub.ws_url + path,
        additional_headers=headers,
        compression=None,
        proxy=None,
        open_timeout=timeout(10),
        close_timeout=timeout(5),
        max_size=None,
    )


def recv_json(conn: ClientConnection, seconds: float = 10) -> Json:
    raw = conn.recv(timeout=timeout(seconds))
    assert isinstance(raw, str), f"expected a JSON text frame, got {raw!r:.80}"
    frame = json.loads(raw)
    assert isinstance(frame, dict), frame
    return frame


def read_until_live(conn: ClientConnection) -> list[Json]:
    """The replayed event frames, up to and without the ``live`` frame."""
    frames = []
    while (frame := recv_json(conn))["type"] != "live":
        frames.append(frame)
    return frames


def closed_with(conn: ClientConnection, seconds: float = 10) -> tuple[int, list[Json]]:
    """Read until the hub closes; the close code (1006: none) and the frames before it."""
    frames: list[Json] = []
    try:
        while True:
            frames.append(recv_json(conn, seconds))
    except websockets.ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd is not None else 1006), frames


def assert_error_frame(frame: Json, code: str | None = None) -> None:
    assert frame.get("type") == "error", frame
    assert set(frame) == {"type", "error"}, frame
    assert_error_body({"error": frame["error"]})
    if code is not None:
        assert frame["error"]["code"] == code, frame


def assert_log_clean(hub: HubProcess) -> None:
    text = hub.log()
    found = [marker for marker in LEAKS if marker in text]
    assert not found, f"hub log shows {found}:\n{text[-4000:]}"


# -- 1. schemathesis against the live hub --------------------------------------------------

CHECKS = [
    not_a_server_error,
    oas.status_code_conformance,
    oas.content_type_conformance,
    oas.response_schema_conformance,
    oas.negative_data_rejection,
]
REFUSED = [400, 401, 403, 404, 409, 413, 422]
SCHEMA_CONFIG = schemathesis.Config.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": REFUSED}}}
)
FUZZ = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: every failure is reported as found
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
)
FUZZ_KNOWN = settings(FUZZ, max_examples=4)


class Fuzzer:
    """Runs schemathesis cases of one schema against the live hub and collects what fails."""

    def __init__(self, hub: HubProcess) -> None:
        self.hub = hub
        self.schema = schemathesis.openapi.from_url(
            hub.url + "/openapi.json", config=SCHEMA_CONFIG, timeout=timeout(10)
        )
        self.doc: Json = httpx.get(hub.url + "/openapi.json", timeout=timeout(10)).json()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.failures: list[str] = []

    def operations(self) -> list[Any]:
        return [result.ok() for result in self.schema.get_all_operations()]

    def roles(self, op: Any) -> list[str]:
        roles: list[str] = self.doc["paths"][op.path][op.method.lower()]["x-roles"]
        return roles

    def run(
        self,
        op: Any,
        headers: dict[str, str],
        known: dict[str, list[str]],
        check: Callable[[Any, Any], None] | None = None,
    ) -> None:
        """Positive and (where there is input to break) negative cases of ``op``.

        ``known`` maps a path parameter to ids of existing streams: each gets cases of
        its own (``FUZZ_KNOWN``), besides those with generated ids (``FUZZ``).
        """
        modes = [GenerationMode.POSITIVE]
        if op.path_parameters or op.query or op.body:
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            # The token is a fixed header: schemathesis then leaves it alone (the 401s have a
            # test of their own) instead of dropping it, which the token we add back would undo.
            def strategy(path: dict[str, str] | None = None, m: Any = mode) -> Any:
                return op.as_strategy(generation_mode=m, headers=headers or None,
                                      path_parameters=path)  # fmt: skip

            pinned = [(i, strategy({name: i})) for name, ids in known.items() for i in ids]
            runs = [(FUZZ, strategy(), "generated ids")]
            if mode is GenerationMode.POSITIVE:
                runs += [(FUZZ_KNOWN, pinned_strategy, i) for i, pinned_strategy in pinned]
            elif pinned and (op.query or op.body):
                runs += [(FUZZ, st.one_of([s for _, s in pinned]), "existing ids")]
            for fuzz_settings, strategy, what in runs:

                @fuzz_settings
                @given(case=strategy)
                def fuzz(case: Any) -> None:
                    response = case.call(base_url=self.hub.url, timeout=timeout(30))
                    self.statuses[(op.label, response.status_code)] += 1
                    case.validate_response(response, checks=CHECKS)
                    if response.status_code >= 400 and op.path != "/healthz":
                        assert_error_body(response.json())
                    if check is not None:
                        check(case, response)

                try:
                    fuzz()
                except (Exception, BaseExceptionGroup) as exc:  # schemathesis: FailureGroup
                    self.failures.append(f"{op.label} on {what} ({mode.value}): {exc}"[:3000])

    def report(self) -> str:
        by_op: dict[str, dict[int, int]] = {}
        for (label, status), n in sorted(self.statuses.items()):
            by_op.setdefault(label, {})[status] = n
        return "\n".join(f"{label}: {counts}" for label, counts in by_op.items())


def test_openapi_document_describes_every_route_of_the_hub(hub: HubProcess) -> None:
    """/openapi.json is the document of hub.edge.openapi and names every HTTP route of the app."""
    from hub.config import Settings
    from hub.edge.app import create_app

    r = httpx.get(hub.url + "/openapi.json", timeout=timeout(10))
    assert r.status_code == 200
    doc = r.json()
    assert doc == openapi_document()
    app = create_app(Settings(data_dir=hub.data_dir / "unused", secret="x"), static_dir=None)
    routes = {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}
    }
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == routes
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if int(status) >= 400 and path != "/healthz":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)


def test_schemathesis_finds_no_server_error_and_every_response_conforms(
    seeded: HubProcess,
) -> None:
    """Schema-valid and -invalid requests with party tokens: no 5xx, all as documented."""
    with client(seeded) as c:
        placed = place_order(c)
        paid = place_order(c)
        order_step(c, paid, "pay", ALI, {"method": "card"})
        cooking = place_order(c)
        order_step(c, cooking, "pay", ALI, {"method": "card"})
        order_step(c, cooking, "accept", KITCHEN, {})
        assigned = place_order(c)
        order_step(c, assigned, "pay", ALI, {"method": "card"})
        order_step(c, assigned, "accept", KITCHEN, {})
        order_step(c, assigned, "ready", KITCHEN, {})  # Rami, the one driver, gets it
        # Streams a customer may write through the generic event API: its own
        # ORDER_CREATE, with items the order endpoints would never have accepted.
        by_hand = new_sid("by-hand")
        append(c, by_hand, [order_create("ali", items=[1, {"productId": "prod-shw"}])], ALI)
        order_step(c, by_hand, "pay", ALI, {"method": "card"})
        log_only = new_sid("log")
        append(c, log_only, [{"opcode": 303}, {"opcode": 102, "delta": -1}], PLATFORM)
        doomed = new_sid("doomed")
        append(c, doomed, [{"opcode": 303}], PLATFORM)

    fuzzer = Fuzzer(seeded)
    streams = [placed, paid, cooking, assigned, by_hand, log_only]
    # The order steps first, in their order, while the orders are in every state; the
    # generic event API later (the platform may write anything into them); archive last.
    first = ["pay", "accept", "ready", "pickup", "deliver"]
    operations = sorted(
        fuzzer.operations(),
        key=lambda op: (
            op.path.endswith("/archive"),
            op.path.endswith("/events"),
            first.index(op.path.rsplit("/", 1)[1]) if op.path.rsplit("/", 1)[1] in first else 9,
        ),
    )
    archive_op = operations.pop()
    assert archive_op.path.endswith("/archive")
    for op in operations:
        known = {"stream_id": streams, "order_id": streams, "restaurant": list(PARTY.values())}
        known = {k: v for k, v in known.items() if k in op.path}
        for role in fuzzer.roles(op):
            headers = {} if role == "anyone" else auth(PARTY[role], role)
            fuzzer.run(op, headers, known)
    fuzzer.run(archive_op, PLATFORM, {"stream_id": [doomed]})
    print(fuzzer.report())
    assert not fuzzer.failures, "\n\n".join(fuzzer.failures)
    assert httpx.get(seeded.url + "/healthz", timeout=timeout(10)).status_code == 200
    assert_log_clean(seeded)


def test_schemathesis_run_where_everything_is_refused_writes_nothing(seeded: HubProcess) -> None:
    """A tenant that is party to nothing is refused everywhere, and no DB or file changes."""
    with client(seeded) as c:
        oid = place_order(c)
        order_step(c, oid, "pay", ALI, {"method": "card"})
        before, files = writes(c), data_files(seeded.data_dir)

    fuzzer = Fuzzer(seeded)
    customer = auth("nobody", "customer")  # the customer role reaches the most code

    def refused(case: Any, response: Any) -> None:
        assert 400 <= response.status_code < 500, (case.as_curl_command(), response.text)

    for op in fuzzer.operations():
        if fuzzer.roles(op) == ["anyone"]:
            continue  # reads open to anyone (health, metrics, this document)
        known = {"stream_id": [oid], "order_id": [oid]}
        fuzzer.run(op, customer, {k: v for k, v in known.items() if k in op.path}, refused)
        if op.path.startswith("/api/orders/"):
            for role in ("restaurant", "driver"):
                fuzzer.run(op, auth("nobody", role), {"order_id": [oid]}, refused)
    print(fuzzer.report())
    assert not fuzzer.failures, "\n\n".join(fuzzer.failures)
    with client(seeded) as c:
        assert writes(c) == before
    assert data_files(seeded.data_dir) == files
    assert_log_clean(seeded)


# -- 2. Hypothesis frames on a stream socket -----------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
FRAME_LIKE = st.fixed_dictionaries(
    {"type": st.sampled_from(["ping", "location", "pong", "event", "live", "PING", "", "error"])},
    optional={"lat": JSON_VALUES, "lng": JSON_VALUES, "pad": st.text(max_size=50)},
)
CHAR = st.characters(exclude_categories=["Cs"])
PING = '{"type":"ping","pad":""}'
TEXT_FRAMES = st.one_of(
    JSON_VALUES.map(json.dumps),
    FRAME_LIKE.map(json.dumps),
    st.text(max_size=200),
    # huge: one character repeated, up to ~100 KiB of them (over 64 KiB is refused)
    st.builds(lambda ch, k: ch * (k * 2600), CHAR, st.integers(0, 40)),
    # pings padded to either side of 64 KiB
    st.integers(-3, 3).map(lambda d: PING[:-2] + "x" * (KIB64 - len(PING) + d) + PING[-2:]),
    st.integers(0, 40).map(lambda k: "[" * (k * 1000 + 1) + "]" * (k * 1000 + 1)),  # deep
    st.integers(0, 40).map(lambda k: '{"a":' * (k * 300 + 1) + "1" + "}" * (k * 300 + 1)),
    st.integers(1, 40).map(lambda k: "[" * (k * 1000)),  # deep and unterminated
)
BINARY_FRAMES = st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=64).map(lambda b: b"\xff\xfe\xc3" + b),  # not UTF-8
    TEXT_FRAMES.map(lambda t: t.encode()),  # JSON, but in a binary frame
)


def expected_reply(frame: str | bytes) -> str | None:
    """``"pong"``, ``"frame_too_large"`` or None (some error frame) for a customer's frame."""
    if isinstance(frame, bytes):
        return None
    if len(frame.encode()) > KIB64:
        return "frame_too_large"
    try:
        value = json.loads(frame)
    except (ValueError, RecursionError):
        return None
    if isinstance(value, dict) and value.get("type") == "ping":
        return "pong"
    return None


def test_hypothesis_frames_never_break_a_stream_socket(hub: HubProcess) -> None:
    """Arbitrary text and binary frames get an error frame or a pong; the hub carries on."""
    sid = new_sid("fuzz")
    with client(hub) as c:
        first = append(c, sid, [order_create("ali")], ALI)
    seen: Counter[str] = Counter()
    with ws_open(hub, f"/ws/streams/{sid}", ALI) as conn:
        assert [f["id"] for f in read_until_live(conn)] == [first[0]["id"]]

        @settings(
            max_examples=300,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(frame=st.one_of(TEXT_FRAMES, BINARY_FRAMES))
        def exchange(frame: str | bytes) -> None:
            conn.send(frame)
            reply = recv_json(conn)
            expected = expected_reply(frame)
            if expected == "pong":
                assert reply == {"type": "pong"}, (frame[:80], reply)
            else:
                assert_error_frame(reply, expected)
            seen[reply["type"] if expected == "pong" else reply["error"]["code"]] += 1

        exchange()
        print(dict(seen))
        for kind in ("pong", "frame_too_large", "binary_frame", "invalid_json"):
            assert seen[kind], seen

        # Invalid UTF-8 in a *text* frame breaks the WebSocket protocol itself: 1007.
        with ws_open(hub, f"/ws/streams/{sid}", ALI) as raw:
            read_until_live(raw)
            raw.send(b'{"type": "ping", "x": "\xff\xfe"}', text=True)
            assert closed_with(raw) == (1007, [])

        # The fuzzed socket and a new one both get what is committed next.
        with ws_open(hub, f"/ws/streams/{sid}", ALI) as other:
            assert [f["id"] for f in read_until_live(other)] == [first[0]["id"]]
            with client(hub) as c:
                new = append(c, sid, [{"opcode": 102, "payload": {"after": "fuzz"}}], PLATFORM)
            for sock in (conn, other):
                frame = recv_json(sock)
                assert frame["type"] == "event", frame
                assert frame["id"] == new[0]["id"], frame
                assert frame["seq"] == 2, frame
        conn.send('{"type": "ping"}')
        assert recv_json(conn) == {"type": "pong"}
    assert httpx.get(hub.url + "/healthz", timeout=timeout(10)).status_code == 200
    assert_log_clean(hub)


# -- 3. limits, at their boundaries --------------------------------------------------------


def test_request_body_limit_is_1_mib_on_every_json_endpoint(seeded: HubProcess) -> None:
    """A body of exactly 1 MiB is read; one byte more is 413 (declared or chunked)."""
    sid = new_sid("body")
    with client(seeded) as c:
        event = b'{"opcode": 303}'
        r = c.post(f"/api/streams/{sid}/events", content=event.ljust(MIB), headers=PLATFORM)
        assert r.status_code == 201, r.text
        oid = place_order(c)
        before = writes(c)
        targets = [
            (f"/api/streams/{sid}/events", PLATFORM, event),
            ("/api/orders", ALI, json.dumps(ORDER_BODY).encode()),
            (f"/api/orders/{oid}/pay", ALI, b'{"method": "card"}'),
            ("/api/motion", RAMI, b'{"lat": 25.1, "lng": 55.2}'),
            ("/api/drivers/status", RAMI, b'{"status": "offline"}'),
        ]
        for path, headers, body in targets:
            over = body.ljust(MIB + 1)
            r = c.post(path, content=over, headers=headers)
            assert assert_error(r, 413) == "body_too_large", path
            chunks = (over[i : i + KIB64] for i in range(0, len(over), KIB64))
            r = c.post(path, content=chunks, headers=headers)
            assert "content-length" not in r.request.headers
            assert assert_error(r, 413) == "body_too_large", path
        assert writes(c) == before
        r = c.get(f"/api/orders/{oid}", headers=ALI)
        assert r.json()["orderStatus"] == "placed"


def test_payload_limit_is_64_kib_encoded(hub: HubProcess) -> None:
    """A payload of exactly 64 KiB as UTF-8 JSON is stored; one byte more is 413."""
    sid = new_sid("payload")
    wrapper = len(b'{"p":""}')
    with client(hub) as c:
        for pad in ("a" * (KIB64 - wrapper), "é" * ((KIB64 - wrapper) // 2)):
            body = {"opcode": 303, "payload": {"p": pad}}
            r = c.post(f"/api/streams/{sid}/events", json=body, headers=PLATFORM)
            assert r.status_code == 201, r.text
            before = writes(c)
            body = {"opcode": 303, "payload": {"p": pad + "b"}}
            r = c.post(f"/api/streams/{sid}/events", json=body, headers=PLATFORM)
            assert_error(r, 413)
            batch = {"events": [{"opcode": 303}, body]}
            r = c.post(f"/api/streams/{sid}/events", json=batch, headers=PLATFORM)
            assert_error(r, 413)
            assert writes(c) == before


def test_batch_limit_is_100_events(hub: HubProcess) -> None:
    """A batch of 100 events is committed; 101 and an empty batch are refused whole."""
    sid = new_sid("batch")
    with client(hub) as c:
        stored = append(
            c, sid, [{"opcode": 303, "payload": {"i": i}} for i in range(100)], PLATFORM
        )
        assert [e["seq"] for e in stored] == list(range(1, 101))
        before = writes(c)
        for drafts in ([{"opcode": 303}] * 101, []):
            r = c.post(f"/api/streams/{sid}/events", json={"events": drafts}, headers=PLATFORM)
            assert_error(r, 400, 413, 422)
        assert writes(c) == before
        r = c.get(f"/api/streams/{sid}", headers=PLATFORM)
        assert r.json()["lastSeq"] == 100


def nested(levels: int, kind: str) -> Json:
    """A payload whose JSON nests ``levels`` containers deep (the payload object is one).

    ``kind``: objects or arrays below the payload, ending in a scalar or an empty container.
    """
    if kind == "objects-scalar":
        value: Any = {"v": 1}
    elif kind == "objects-empty":
        value = {}
    elif kind == "arrays-scalar":
        value = [1]
    else:
        value = []
    if levels == 1:
        return value if isinstance(value, dict) else {}
    for _ in range(levels - 2):
        value = {"a": value} if kind.startswith("objects") else [value]
    return {"a": value}


DEPTH_KINDS = ["objects-scalar", "objects-empty", "arrays-scalar", "arrays-empty"]


@pytest.mark.parametrize("kind", DEPTH_KINDS)
def test_payload_nesting_limit_is_32_levels(hub: HubProcess, kind: str) -> None:
    """A payload nested 32 levels deep is stored; 33 levels is 422 too_deep."""
    sid = new_sid("deep")

    def depth(v: Any) -> int:
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        return 0

    assert depth(nested(32, kind)) == 32
    assert depth(nested(33, kind)) == 33
    with client(hub) as c:
        r = c.post(
            f"/api/streams/{sid}/events",
            headers=PLATFORM,
            json={"opcode": 303, "payload": nested(32, kind)},
        )
        assert r.status_code == 201, r.text
        before = writes(c)
        r = c.post(
            f"/api/streams/{sid}/events",
            headers=PLATFORM,
            json={"opcode": 303, "payload": nested(33, kind)},
        )
        assert assert_error(r, 422) == "too_deep", kind
        assert writes(c) == before


def test_websocket_frame_limits(hub: HubProcess) -> None:
    """A 64 KiB frame is read, one byte more is frame_too_large; over 1 MiB closes 1009."""
    sid = new_sid("frames")
    with client(hub) as c:
        append(c, sid, [order_create("ali")], ALI)
    ping = len(b'{"type":"ping","pad":""}')
    with ws_open(hub, f"/ws/streams/{sid}", ALI) as conn:
        read_until_live(conn)
        for pad in ("x" * (KIB64 - ping), "é" * ((KIB64 - ping) // 2)):
            frame = '{"type":"ping","pad":"' + pad + '"}'
            assert len(frame.encode()) == KIB64
            conn.send(frame)
            assert recv_json(conn) == {"type": "pong"}
            conn.send('{"type":"ping","pad":"' + pad + 'y"}')
            assert_error_frame(recv_json(conn), "frame_too_large")
        conn.send("z" * MIB)  # the largest frame the hub reads at all
        assert_error_frame(recv_json(conn), "frame_too_large")
        conn.send(b"z" * (KIB64 + 1))
        assert_error_frame(recv_json(conn))
        conn.send('{"type":"ping"}')
        assert recv_json(conn) == {"type": "pong"}
    for big in ("z" * (MIB + 1), b"z" * (MIB + 1)):
        with ws_open(hub, f"/ws/streams/{sid}", ALI) as conn:
            read_until_live(conn)
            with contextlib.suppress(websockets.ConnectionClosed):
                conn.send(big)  # the hub may close while it is being sent
            assert closed_with(conn) == (1009, [])
    assert httpx.get(hub.url + "/healthz", timeout=timeout(10)).status_code == 200


async def test_websockets_per_tenant_and_role_are_capped_at_256(hub: HubProcess) -> None:
    """256 sockets of one tenant and role are served; the 257th is closed with 4029."""
    crowd = auth("crowd", "customer")

    async def open_live(path: str, headers: dict[str, str]) -> AsyncConnection:
        conn = await async_connect(
            hub.ws_url + path,
            additional_headers=headers,
            compression=None,
            proxy=None,
            open_timeout=timeout(30),
        )
        frame = json.loads(await asyncio.wait_for(conn.recv(), timeout(30)))
        assert frame == {"type": "live", "pos": 0}, frame
        return conn

    async def close_code(path: str, headers: dict[str, str]) -> int | None:
        async with async_connect(
            hub.ws_url + path, additional_headers=headers, compression=None, proxy=None
        ) as conn:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(conn.recv(), timeout(10))
        return closed.value.rcvd.code if closed.value.rcvd is not None else None

    conns: list[AsyncConnection] = []
    try:
        for _ in range(8):
            conns += await asyncio.gather(*(open_live("/ws/inbox", crowd) for _ in range(32)))
        assert len(conns) == 256
        assert await close_code("/ws/inbox", crowd) == 4029
        assert await close_code(f"/ws/streams/{new_sid()}", crowd) == 4029
        # Another role of the same tenant, and another tenant, are counted apart.
        other = await open_live("/ws/inbox", auth("crowd", "restaurant"))
        await other.close()
        await (await open_live("/ws/inbox", auth("crowd-2", "customer"))).close()
        # A closed socket frees its place.
        await conns.pop().close()
        deadline = time.monotonic() + timeout(10)
        while True:
            try:
                conns.append(await open_live("/ws/inbox", crowd))
                break
            except (AssertionError, websockets.ConnectionClosed):
                assert time.monotonic() < deadline, "the freed place was never given back"
                await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    assert_log_clean(hub)


async def test_gps_frames_over_20_per_second_per_driver_are_dropped(seeded: HubProcess) -> None:
    """50 location frames in under 1 s: at most 21 taken, the rest dropped, <= 2 DB writes."""
    driver = "gps-" + uuid.uuid4().hex[:8]
    headers = auth(driver, "driver")
    with client(seeded) as c:
        r = c.post(
            "/api/drivers/status",
            headers=headers,
            json={"status": "online", "lat": 25.26, "lng": 55.33},
        )
        assert r.status_code == 200, r.text
        m0 = metrics(c)
    async with async_connect(
        seeded.ws_url + "/ws/inbox", additional_headers=headers, compression=None, proxy=None
    ) as conn:
        assert json.loads(await conn.recv()) == {"type": "live", "pos": 0}
        # Straddle a whole second of the system's monotonic clock (the hub's too): where a
        # per-calendar-second counter is weakest. A limit of 20/s holds in any 1 s window.
        await asyncio.sleep((0.8 - time.monotonic() % 1) % 1)
        started = time.monotonic()
        for i in range(50):
            await conn.send(json.dumps({"type": "location", "lat": 25.26 + i / 1e4, "lng": 55.33}))
            await asyncio.sleep(0.008)
        assert time.monotonic() - started < 1
        await conn.send('{"type": "ping"}')  # frames are read in order: all 50 are handled
        replies = []
        while (frame := json.loads(await asyncio.wait_for(conn.recv(), timeout(10)))) != {
            "type": "pong"
        }:
            replies.append(frame)
        assert all(f["type"] != "error" or f["error"]["code"] == "rate_limited" for f in replies), (
            replies
        )
    await asyncio.sleep(1.5)  # the coalesced ping lands within 1 s
    with client(seeded) as c:
        m1 = metrics(c)
    delta = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
    taken, dropped = delta["hub_gps_pings_total"], delta["hub_gps_pings_dropped_total"]
    assert taken + dropped == 50, delta
    assert taken <= 21, f"taken {taken}, dropped {dropped}"
    assert dropped >= 25, f"taken {taken}, dropped {dropped}"
    assert 1 <= delta['hub_db_writes_total{target="tenant"}'] <= 2, delta
    assert delta['hub_db_writes_total{target="streams"}'] == 0, delta
    assert delta['hub_db_writes_total{target="public"}'] == 0, delta


# -- 4. access --------------------------------------------------------------------------------


def endpoints(oid: str) -> list[tuple[str, str, Json | None]]:
    """Every authenticated HTTP endpoint with a body its callers may send."""
    return [
        ("POST", f"/api/streams/{oid}/events", {"opcode": 203}),
        ("GET", f"/api/streams/{oid}", None),
        ("POST", f"/api/streams/{oid}/archive", None),
        ("POST", "/api/orders", ORDER_BODY),
        ("POST", f"/api/orders/{oid}/pay", {"method": "card"}),
        ("POST", f"/api/orders/{oid}/accept", {}),
        ("POST", f"/api/orders/{oid}/ready", {}),
        ("POST", f"/api/orders/{oid}/pickup", {}),
        ("POST", f"/api/orders/{oid}/deliver", {"lat": 25.08, "lng": 55.14}),
        ("POST", f"/api/orders/{oid}/cancel", {"reason": "x"}),
        ("POST", f"/api/orders/{oid}/decline", {}),
        ("GET", f"/api/orders/{oid}", None),
        ("GET", "/api/restaurants/bab-hara", None),
        ("PUT", "/api/restaurants/bab-hara/menu/prod-shw", {"qty": 5}),
        ("POST", "/api/restaurants/bab-hara/status", {"open": False}),
        ("POST", "/api/tenants", {"id": "new-one", "role": "customer", "name": "N",
                                  "lat": 25.0, "lng": 55.0, "address": "A", "currency": "AED"}),
        ("POST", "/api/motion", {"lat": 25.1, "lng": 55.2}),
        ("POST", "/api/drivers/status", {"status": "online", "lat": 25.1, "lng": 55.2}),
        ("GET", "/api/drivers/me", None),
        ("GET", "/api/ops/instance", None),
        ("GET", "/api/ops/drivers", None),
    ]


def send(
    c: httpx.Client, method: str, path: str, body: Json | None, headers: dict[str, str]
) -> httpx.Response:
    return c.request(method, path, json=body, headers=headers)


def test_every_endpoint_refuses_missing_and_bad_tokens_with_401(seeded: HubProcess) -> None:
    """No token, malformed, wrong key, alg none/HS512, expired, bad sub/role: 401 everywhere."""
    with client(seeded) as c:
        oid = place_order(c)
        documented = {
            (m.upper(), p)
            for p, ops in openapi_document()["paths"].items()
            for m in ops
            if ops[m]["security"]
        }
        tested = {
            (
                m,
                p.replace(f"/streams/{oid}", "/streams/{stream_id}")
                .replace(f"/orders/{oid}", "/orders/{order_id}")
                .replace("/restaurants/bab-hara", "/restaurants/{restaurant}")
                .replace("/menu/prod-shw", "/menu/{product_id}"),
            )
            for m, p, _ in endpoints(oid)
        }
        assert tested == documented, "every authenticated endpoint is in the matrix"
        before, files = writes(c), data_files(seeded.data_dir)
        for name in BAD_AUTH:
            for method, path, body in endpoints(oid):
                r = send(c, method, path, body, bad_headers(name))
                assert_error(r, 401)
        for path in ("/healthz", "/metrics", "/openapi.json", "/api/config"):
            assert c.get(path, headers=bad_headers("wrong-key")).status_code == 200, path
        assert writes(c) == before
        assert data_files(seeded.data_dir) == files
        assert c.get(f"/api/orders/{oid}", headers=ALI).json()["orderStatus"] == "placed"


def test_every_endpoint_refuses_other_tenants_and_wrong_roles_with_403(seeded: HubProcess) -> None:
    """Another tenant's token or the wrong role gets 403 and writes nothing."""
    eve, zaatar, sami = (auth(t, r) for r, t in OUTSIDER.items())
    with client(seeded) as c:
        oid = place_order(c)
        order_step(c, oid, "pay", ALI, {"method": "card"})
        before, files = writes(c), data_files(seeded.data_dir)
        refused: list[tuple[str, str, Json | None, list[dict[str, str]]]] = [
            ("POST", f"/api/streams/{oid}/events", {"opcode": 203}, [eve, KITCHEN, RAMI]),
            ("POST", f"/api/streams/{oid}/events", {"opcode": 301}, [zaatar, ALI]),
            ("POST", f"/api/streams/{oid}/events", {"opcode": 502}, [sami, RAMI, KITCHEN]),
            ("POST", f"/api/streams/{oid}/events", {"opcode": 302}, [ALI, KITCHEN, RAMI]),
            ("POST", f"/api/streams/{oid}/events", order_create("eve"), [eve]),
            ("GET", f"/api/streams/{oid}", None, [eve, zaatar, sami, RAMI]),
            ("POST", f"/api/streams/{oid}/archive", None, [ALI, KITCHEN, eve, RAMI]),
            ("POST", "/api/orders", ORDER_BODY, [KITCHEN, RAMI, PLATFORM]),
            ("POST", f"/api/orders/{oid}/pay", {"method": "card"}, [eve, KITCHEN, sami]),
            ("POST", f"/api/orders/{oid}/accept", {}, [zaatar, ALI, RAMI]),
            ("GET", "/api/ops/instance", None, [ALI, KITCHEN, RAMI]),
            ("GET", "/api/ops/drivers", None, [ALI, KITCHEN, RAMI]),
            ("POST", f"/api/orders/{oid}/ready", {}, [zaatar, ALI, RAMI]),
            ("POST", f"/api/orders/{oid}/pickup", {}, [sami, RAMI, ALI, KITCHEN]),
            ("POST", f"/api/orders/{oid}/deliver", {"lat": 1, "lng": 2}, [sami, RAMI, KITCHEN]),
            ("GET", f"/api/orders/{oid}", None, [eve, zaatar, sami, RAMI]),
            ("POST", "/api/motion", {"lat": 1, "lng": 2}, [ALI, KITCHEN, PLATFORM]),
            ("POST", "/api/drivers/status", {"status": "offline"}, [ALI, KITCHEN, PLATFORM]),
            ("GET", "/api/drivers/me", None, [ALI, KITCHEN, PLATFORM]),
        ]
        for method, path, body, callers in refused:
            for headers in callers:
                r = send(c, method, path, body, headers)
                assert_error(r, 403)
        assert writes(c) == before
        assert data_files(seeded.data_dir) == files
        # ... while the order's parties and the platform read it.
        for headers in (ALI, KITCHEN, PLATFORM):
            assert c.get(f"/api/streams/{oid}", headers=headers).status_code == 200
            assert c.get(f"/api/orders/{oid}", headers=headers).status_code == 200
        assert c.get("/api/restaurants/bab-hara", headers=sami).status_code == 200


def test_websocket_access_matrix(seeded: HubProcess) -> None:
    """Sockets: bad tokens close 4401 (header or ?token=), non-members 4403, members live."""
    with client(seeded) as c:
        oid = place_order(c)
    stream = f"/ws/streams/{oid}"
    for name in BAD_AUTH:
        for path in (stream, "/ws/inbox"):
            with ws_open(seeded, path, bad_headers(name)) as conn:
                assert closed_with(conn) == (4401, []), (name, path)
            with ws_open(seeded, path + bad_query(name)) as conn:
                assert closed_with(conn) == (4401, []), (name, path, "?token=")
    for role, tenant in OUTSIDER.items():
        with ws_open(seeded, stream, auth(tenant, role)) as conn:
            assert closed_with(conn) == (4403, []), role
        with ws_open(seeded, stream + "?token=" + token(tenant, role)) as conn:
            assert closed_with(conn) == (4403, []), role
        with ws_open(seeded, "/ws/inbox", auth(tenant, role)) as conn:
            assert recv_json(conn) == {"type": "live", "pos": 0}
    with ws_open(seeded, stream, RAMI) as conn:  # not assigned: not a member
        assert closed_with(conn) == (4403, [])
    for headers in (ALI, KITCHEN, PLATFORM):
        with ws_open(seeded, stream, headers) as conn:
            assert [f["opcode"] for f in read_until_live(conn)] == [501]
    with ws_open(seeded, stream + "?token=" + token("ali", "customer")) as conn:
        assert [f["opcode"] for f in read_until_live(conn)] == [501]


def median_seconds(
    c: httpx.Client, requests: list[Callable[[], httpx.Response]], rounds: int = 30
) -> list[float]:
    """Median wall time of each request, interleaved round by round."""
    times: list[list[float]] = [[] for _ in requests]
    for _ in range(rounds):
        for i, request in enumerate(requests):
            t0 = time.perf_counter()
            request()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def test_non_member_cannot_tell_an_existing_stream_from_a_missing_one(seeded: HubProcess) -> None:
    """Same status, body and close code for an existing and a missing stream, same timing."""
    eve, zaatar, sami = (auth(t, r) for r, t in OUTSIDER.items())
    with client(seeded) as c:
        oid = place_order(c)
        order_step(c, oid, "pay", ALI, {"method": "card"})
        missing = new_sid("ord")
        probes: list[tuple[str, str, Json | None, dict[str, str]]] = [
            ("GET", "/api/streams/{}", None, eve),
            ("GET", "/api/streams/{}?since=1&limit=5", None, zaatar),
            ("GET", "/api/orders/{}", None, sami),
            ("POST", "/api/streams/{}/events", {"opcode": 203}, eve),
            ("POST", "/api/streams/{}/events", {"opcode": 301}, zaatar),
            ("POST", "/api/orders/{}/pay", {"method": "card"}, eve),
            ("POST", "/api/orders/{}/accept", {}, zaatar),
            ("POST", "/api/orders/{}/pickup", {}, sami),
            ("POST", "/api/orders/{}/deliver", {"lat": 1, "lng": 2}, sami),
        ]
        for method, path, body, headers in probes:
            a = send(c, method, path.format(oid), body, headers)
            b = send(c, method, path.format(missing), body, headers)
            assert_error(a, 403)
            assert (a.status_code, a.json()) == (b.status_code, b.json()), path
        for path in ("/api/streams/{}", "/api/orders/{}"):
            existing, absent = median_seconds(
                c,
                [
                    lambda p=path: c.get(p.format(oid), headers=eve),  # type: ignore[misc]
                    lambda p=path: c.get(p.format(missing), headers=eve),  # type: ignore[misc]
                ],
            )
            slow, fast = max(existing, absent), min(existing, absent)
            assert slow - fast < 0.003 or slow < 2 * fast, (path, existing, absent)
        # The platform alone learns the difference.
        assert_error(c.get(f"/api/streams/{missing}", headers=PLATFORM), 404)
    for sid in (oid, missing):
        with ws_open(seeded, f"/ws/streams/{sid}", eve) as conn:
            assert closed_with(conn) == (4403, [])


def stock(c: httpx.Client) -> dict[str, float]:
    r = c.get("/api/restaurants/bab-hara", headers=ALI)
    assert r.status_code == 200, r.text
    return {p["productId"]: p["stock"] for p in r.json()["products"]}


@pytest.mark.parametrize(
    "items",
    [
        [1],
        [{"productId": "prod-shw"}],
        [{"productId": "prod-shw", "qty": "x"}],
        [{"productId": "prod-shw", "qty": -50}],
        [{"productId": "prod-shw", "qty": 0.5}],
    ],
    ids=["not-an-object", "no-qty", "qty-string", "qty-negative", "qty-fraction"],
)
def test_hand_written_orders_cannot_crash_or_restock_the_kitchen(
    seeded: HubProcess, items: Any
) -> None:
    """A customer's own ORDER_CREATE with bad items: the kitchen's accept is a 4xx, stock holds."""
    with client(seeded) as c:
        sid = new_sid("by-hand")
        append(c, sid, [order_create("ali", items=items)], ALI)
        order_step(c, sid, "pay", ALI, {"method": "card"})
        before = stock(c)
        r = c.post(f"/api/orders/{sid}/accept", json={}, headers=KITCHEN)
        assert_error(r, 400, 409, 422)
        assert stock(c) == before
        assert c.get(f"/api/orders/{sid}", headers=KITCHEN).status_code == 200
    assert_log_clean(seeded)


BAD_TENANT_IDS = [
    "../x",
    "..",
    ".",
    "a/b",
    "../../etc/passwd",
    "%2e%2e",
    "%2e%2e%2fx",
    "ALI",
    "Ali",
    "x" * 64,
    "é",
    "\uff41\uff4c\uff49",
    "ali\u200b",
    "-ali",
    " ali",
    "ali ",
    "ali\n",
    "ali\x00",
    "a.b",
    "a_b",
    "a\\b",
    "",
]


def raw_request(
    hub: HubProcess, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, Any]:
    """A request whose path goes on the wire exactly as given (no normalization)."""
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=timeout(10))
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_tenant_ids_cannot_reach_a_file_name(seeded: HubProcess) -> None:
    """Bad tenant ids in paths, bodies, tokens and event payloads are refused; no file appears."""
    data = seeded.data_dir
    files = data_files(data)
    with client(seeded) as c:
        before = writes(c)
        for bad in BAD_TENANT_IDS:
            # In the path: percent-encoded; an id holding "/" or nothing never matches a route.
            status, body = raw_request(
                seeded,
                "GET",
                "/api/restaurants/" + quote(bad, safe=""),
                {"authorization": ALI["authorization"]},
            )
            assert status in ((400, 404) if "/" in bad or not bad else (400,)), (bad, status)
            assert_error_body(body)
            # In a body.
            r = c.post("/api/orders", json={**ORDER_BODY, "restaurant": bad}, headers=ALI)
            assert assert_error(r, 400) == "invalid_tenant_id", bad
            # In a token's subject.
            forged = {"authorization": "Bearer " + jwt_by_hand({"sub": bad, "role": "driver"})}
            r = c.post(
                "/api/drivers/status",
                headers=forged,
                json={"status": "online", "lat": 1.0, "lng": 2.0},
            )
            assert_error(r, 401)
        for raw in ("..", "%2e%2e", "..%2f..%2fx", "./ali", "ali/..", "%2E%2E%5Cx"):
            status, body = raw_request(
                seeded, "GET", "/api/restaurants/" + raw, {"authorization": ALI["authorization"]}
            )
            assert status in (400, 404), (raw, status)
            assert_error_body(body)
        assert writes(c) == before
        # Named in an event payload, then used by the hub to open the restaurant's DB.
        for restaurant in ("../x", "ALI"):  # outside the pattern: refused before storage
            r = c.post(f"/api/streams/{new_sid('named')}/events",
                       json=order_create("ali", restaurant), headers=ALI)
            assert assert_error(r, 400) == "invalid_tenant_id", restaurant
        for restaurant in ("ghost-kitchen",):
            sid = new_sid("named")
            append(c, sid, [order_create("ali", restaurant)], ALI)
            r = c.get(f"/api/orders/{sid}", headers=ALI)
            assert_error(r, 400, 404, 422)
        # A valid id that names no tenant opens nothing either.
        r = c.get("/api/restaurants/ghost-kitchen-2", headers=ALI)
        assert_error(r, 404)
    assert data_files(data) == files, sorted(data_files(data) ^ files)


BAD_STREAM_IDS = [
    "..",
    ".",
    "../x",
    "a/b",
    ".hidden",
    "-x",
    "_x",
    ":x",
    "x" * 129,
    "é",
    "a b",
    "a\n",
    "a\x00",
    "%2e%2e",
    "a?b",
    "a#b",
    "a\\b",
    "\uff41",
    "a\u200b",
    "",
]


def test_stream_ids_are_refused_before_storage(seeded: HubProcess) -> None:
    """Bad stream ids get 400 (or 404 when they hold "/") or 4403 on sockets; nothing stored."""
    data = seeded.data_dir
    with client(seeded) as c:
        longest = "s" * 128
        append(c, longest, [{"opcode": 303}], PLATFORM)
        r = c.post("/api/streams/" + "s" * 129 + "/events", json={"opcode": 303}, headers=PLATFORM)
        assert assert_error(r, 400) == "invalid_stream_id"
        files, before = data_files(data), writes(c)
        auth_only = {"authorization": PLATFORM["authorization"], "content-type": "application/json"}
        ali_only = {"authorization": ALI["authorization"], "content-type": "application/json"}
        for bad in BAD_STREAM_IDS:
            enc = quote(bad, safe="")
            expected = (400, 404) if "/" in bad or not bad else (400,)
            for method, path, body, headers in [
                ("GET", f"/api/streams/{enc}", None, auth_only),
                ("POST", f"/api/streams/{enc}/events", b'{"opcode": 303}', auth_only),
                ("POST", f"/api/streams/{enc}/archive", None, auth_only),
                ("POST", f"/api/orders/{enc}/pay", b'{"method": "card"}', ali_only),
                ("GET", f"/api/orders/{enc}", None, auth_only),
            ]:
                status, got = raw_request(seeded, method, path, headers, body)
                assert status in expected, (bad, method, path, status, got)
                assert_error_body(got)
            if "/" in bad or not bad:  # no socket route matches: the handshake is refused
                with pytest.raises(websockets.InvalidStatus):
                    ws_open(seeded, f"/ws/streams/{enc}", PLATFORM)
            else:
                with ws_open(seeded, f"/ws/streams/{enc}", PLATFORM) as conn:
                    code, _ = closed_with(conn)
                    assert code in (4403, 1008), (bad, code)
            # As an event's id or an order's id, inside a body: 422.
            r = c.post(
                f"/api/streams/{new_sid()}/events",
                json={"id": bad, "opcode": 303},
                headers=PLATFORM,
            )
            assert_error(r, 422)
            r = c.post("/api/orders", json={**ORDER_BODY, "orderId": bad}, headers=ALI)
            assert_error(r, 422)
        assert writes(c) == before
        assert data_files(data) == files, sorted(data_files(data) ^ files)
        # Archiving a valid id full of dots and colons writes one file, inside the archive.
        odd = "x..y:z.json"
        append(c, odd, [{"opcode": 303}], PLATFORM)
        r = c.post(f"/api/streams/{odd}/archive", headers=PLATFORM)
        assert r.status_code == 200, r.text
        new = data_files(data) - files
        assert all(f.startswith("archive/") for f in new), new
        assert any(odd in f for f in new), new


INJECTIONS = [
    "'; DROP TABLE events; --",
    "\" OR 1=1 --",
    "x'); DELETE FROM points; --",
    "1; UPDATE points SET qty = 0",
    "Robert'); DROP TABLE nodes;--",
]


@pytest.mark.parametrize("attack", INJECTIONS)
def test_sql_injection_in_every_string_field_is_stored_as_data(
    seeded: HubProcess, attack: str
) -> None:
    """SQL in any string field is stored verbatim as data; no table is touched."""
    data = seeded.data_dir
    with client(seeded) as c:
        before = stock(c)
        oid = new_sid("inj")
        r = c.post("/api/orders", headers=ALI, json={
            "orderId": oid, "restaurant": "bab-hara", "deliveryAddress": attack, "notes": attack,
            "items": [{"productId": "prod-shw", "qty": 1}]})  # fmt: skip
        assert r.status_code == 201, r.text
        order_step(c, oid, "pay", ALI, {"method": attack})
        order_step(c, oid, "accept", KITCHEN, {"chef": attack, "station": attack})
        sid = new_sid("inj-raw")
        draft = {"opcode": 102, "nodeId": attack, "pointId": attack,
                 "payload": {attack: attack, "nested": [attack]}}  # fmt: skip
        stored = append(c, sid, [draft], PLATFORM)
        got = c.get(f"/api/streams/{sid}", headers=PLATFORM).json()["events"]
        assert got == stored
        assert (got[0]["nodeId"], got[0]["pointId"]) == (attack, attack)
        assert got[0]["payload"] == {attack: attack, "nested": [attack]}
        order = c.get(f"/api/streams/{oid}", headers=ALI).json()["events"]
        assert order[0]["payload"]["deliveryAddress"] == attack
        assert order[0]["payload"]["notes"] == attack
        assert order[1]["payload"]["method"] == attack
        assert order[3]["payload"] == {"chef": attack, "station": attack}
        # Every table is still there and only the order's own stock moved.
        after = stock(c)
        assert after["prod-shw"] == before["prod-shw"] - 1
        assert after["prod-lbn"] == before["prod-lbn"]
    for db, tables in ((data / "streams.db", {"events", "streams", "members"}),
                       (data / "tenants" / "bab-hara.db", {"nodes", "points"}),
                       (data / "public.db", {"nodes", "points"})):  # fmt: skip
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
            names = {r[0] for r in conn.execute(sql)}
        finally:
            conn.close()
        assert tables <= names, (db, names)
    assert_log_clean(seeded)


class VerboseHub(HubProcess):
    """A hub logging every request, as production does."""

    log_level = "info"


def test_tokens_never_reach_the_logs(tmp_path: Path) -> None:
    """Tokens in ?token= (HTTP and WebSocket) and headers never appear in the hub's log."""
    hub = VerboseHub(tmp_path / "data").start()
    try:
        ali = token("ali", "customer")
        with client(hub) as c:
            c.get(f"/api/streams/s1?token={ali}")
            c.get("/api/streams/s1", headers={"authorization": f"Bearer {ali}"})
        with ws_open(hub, f"/ws/inbox?since=0&token={ali}") as conn:
            assert recv_json(conn)["type"] == "live"
    finally:
        hub.stop()
    log = hub.log()
    assert "token=[redacted]" in log  # the request lines are there, without the token
    assert ali not in log
    assert ali.split(".")[2] not in log  # not even the signature


@pytest.mark.parametrize(
    ("origin", "allowed", "opens"),
    [
        (None, "", True),  # not a browser
        ("http://127.0.0.1:{port}", "", True),  # the hub's own pages
        ("https://evil.example", "", False),  # cross-site WebSocket hijacking
        ("https://app.example", "https://app.example,https://ops.example", True),
        ("https://evil.example", "https://app.example", False),
        ("https://evil.example", "*", True),
    ],
)
def test_websocket_origin_allow_list(
    hub_factory: Callable[..., HubProcess], origin: str | None, allowed: str, opens: bool
) -> None:
    """A browser socket from an origin that is not allowed is closed 4403 before anything."""
    hub = hub_factory(env={"HUB_ALLOWED_ORIGINS": allowed} if allowed else None)
    headers = dict(ALI)
    if origin is not None:
        headers["origin"] = origin.format(port=hub.port)
    with ws_open(hub, "/ws/inbox", headers) as conn:
        if opens:
            assert recv_json(conn)["type"] == "live"
        else:
            assert closed_with(conn) == (4403, [])
