"""The HTTP API against a real hub (docs/protocol.md §2-§4): access, events, bad input, health.

One hub serves the whole module. Every refused request is checked to have written
nothing: the ``hub_db_writes_total{target="streams"}`` counter is unchanged and the
streams it touched read back the same through a platform token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SECRET, HubProcess, auth, timeout

# -- the contract's vocabulary ------------------------------------------------------------

OPCODES = {
    102: "SALE_OUT",
    203: "INVOICE_PAYMENT",
    301: "TASK_CREATE",
    302: "TASK_ASSIGN",
    303: "TASK_START",
    305: "TASK_DONE",
    401: "ACCOUNT_PAYIN",
    402: "ACCOUNT_PAYOUT",
    501: "ORDER_CREATE",
    502: "ORDER_SHIP",
    503: "ORDER_DELIVER",
}
# Who may append what through the generic event API (docs/protocol.md §2); the platform: all.
ALLOWED = {
    "customer": {501, 203},
    "restaurant": {301, 303, 305, 102},
    "driver": {502, 503},
}
EVENT_FIELDS = {
    "id", "streamId", "seq", "pos", "opcode", "name", "nodeId", "pointId", "delta", "payload", "ts",
}  # fmt: skip
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
MIB = 1 << 20
KIB64 = 64 << 10

CUSTOMER, RESTAURANT, DRIVER = "cust-a", "rest-a", "drv-a"
MEMBER = {"customer": CUSTOMER, "restaurant": RESTAURANT, "driver": DRIVER}
OUTSIDER = {"customer": "cust-b", "restaurant": "rest-b", "driver": "drv-b"}
PLATFORM = auth("ops", "platform")


# -- helpers --------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_by_hand(claims: dict[str, Any], *, key: str = SECRET, alg: str = "HS256") -> str:
    """A JWT built without a library, so any header, claim or signature can be forged."""
    header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims).encode())
    signing_input = f"{header}.{body}".encode()
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(alg)
    signature = b64url(hmac.new(key.encode(), signing_input, digest).digest()) if digest else ""
    return f"{header}.{body}.{signature}"


def new_sid(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def new_id() -> str:
    return f"evt-{uuid.uuid4().hex}"


def events_url(sid: str) -> str:
    return f"/api/streams/{sid}/events"


def assert_error(r: httpx.Response, *statuses: int) -> dict[str, str]:
    """The response has one of ``statuses`` and the contract's error body; returns the error."""
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"], body
    err = body["error"]
    assert set(err) == {"code", "message"}, err
    assert isinstance(err["code"], str), err
    assert err["code"], err
    assert isinstance(err["message"], str), err
    assert err["message"], err
    return err  # type: ignore[no-any-return]


def streams_writes(c: httpx.Client) -> float:
    """``hub_db_writes_total{target="streams"}`` from GET /metrics."""
    r = c.get("/metrics")
    assert r.status_code == 200
    m = re.search(r'^hub_db_writes_total\{target="streams"\} (\S+)$', r.text, re.MULTILINE)
    assert m, r.text
    return float(m.group(1))


def read_back(c: httpx.Client, sid: str) -> list[dict[str, Any]] | None:
    """The stream's events as the platform reads them; None when it does not exist (404)."""
    r = c.get(f"/api/streams/{sid}", headers=PLATFORM)
    if r.status_code == 404:
        assert_error(r, 404)
        return None
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


@contextmanager
def nothing_written(c: httpx.Client, *sids: str) -> Iterator[None]:
    """Assert that the block writes no row to the streams DB and changes none of ``sids``."""
    writes = streams_writes(c)
    before = {sid: read_back(c, sid) for sid in sids}
    yield
    assert streams_writes(c) == writes
    assert {sid: read_back(c, sid) for sid in sids} == before


def post(c: httpx.Client, sid: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return c.post(events_url(sid), json=body, headers=headers)


def order_payload(customer: str = CUSTOMER, restaurant: str = RESTAURANT) -> dict[str, Any]:
    return {"customer": customer, "restaurant": restaurant, "total": 42.5, "currency": "USD"}


def open_order(c: httpx.Client, *, driver: str | None = None) -> str:
    """A new stream opened by the customer's ORDER_CREATE (and assigned to ``driver``)."""
    sid = new_sid("order")
    r = post(c, sid, {"opcode": 501, "payload": order_payload()}, auth(CUSTOMER, "customer"))
    assert r.status_code == 201, r.text
    if driver is not None:
        r = post(c, sid, {"opcode": 302, "payload": {"driver": driver}}, PLATFORM)
        assert r.status_code == 201, r.text
    return sid


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """One hub for the whole module."""
    data_dir: Path = tmp_path_factory.mktemp("hub-http")
    hub = HubProcess(data_dir).start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def c(server: HubProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=timeout(10)) as client:
        yield client


@pytest.fixture(scope="module")
def member_stream(c: httpx.Client) -> str:
    """An order whose members are CUSTOMER, RESTAURANT and (after TASK_ASSIGN) DRIVER."""
    return open_order(c, driver=DRIVER)


# -- §2 identity: tokens --------------------------------------------------------------------

GOOD_CLAIMS = {"sub": CUSTOMER, "role": "customer"}
BAD_AUTHORIZATION = {
    "no-token": None,
    "empty-bearer": "Bearer",
    "other-scheme": "Basic " + b64url(b"cust-a:password"),
    "not-a-jwt": "Bearer not-a-jwt",
    "malformed-jwt": "Bearer aaa.bbb.ccc",
    "bad-signature": "Bearer " + jwt_by_hand(GOOD_CLAIMS, key="another-secret-" + "x" * 40),
    "alg-none": "Bearer " + jwt_by_hand(GOOD_CLAIMS, alg="none"),
    "alg-HS512": "Bearer " + jwt_by_hand(GOOD_CLAIMS, alg="HS512"),
    "expired": "Bearer " + jwt_by_hand({**GOOD_CLAIMS, "exp": int(time.time()) - 60}),
    "exp-not-a-number": "Bearer " + jwt_by_hand({**GOOD_CLAIMS, "exp": "tomorrow"}),
    "unknown-role": "Bearer " + jwt_by_hand({"sub": CUSTOMER, "role": "admin"}),
    "no-role": "Bearer " + jwt_by_hand({"sub": CUSTOMER}),
    "no-sub": "Bearer " + jwt_by_hand({"role": "customer"}),
    "sub-uppercase": "Bearer " + jwt_by_hand({"sub": "Cust_A", "role": "customer"}),
    "sub-empty": "Bearer " + jwt_by_hand({"sub": "", "role": "customer"}),
    "sub-too-long": "Bearer " + jwt_by_hand({"sub": "a" * 64, "role": "customer"}),
    "sub-leading-dash": "Bearer " + jwt_by_hand({"sub": "-cust", "role": "customer"}),
    "sub-number": "Bearer " + jwt_by_hand({"sub": 123, "role": "customer"}),
}


def test_hand_built_token_with_the_secret_is_accepted(c: httpx.Client, member_stream: str) -> None:
    """A well-formed HS256 token signed with HUB_SECRET is honoured (control for the 401s)."""
    headers = {"authorization": "Bearer " + jwt_by_hand(GOOD_CLAIMS)}
    assert c.get(f"/api/streams/{member_stream}", headers=headers).status_code == 200
    future = "Bearer " + jwt_by_hand({**GOOD_CLAIMS, "exp": int(time.time()) + 600})
    assert (
        c.get(f"/api/streams/{member_stream}", headers={"authorization": future}).status_code == 200
    )


@pytest.mark.parametrize(
    "authorization", list(BAD_AUTHORIZATION.values()), ids=list(BAD_AUTHORIZATION)
)
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_missing_or_bad_token_is_401(
    c: httpx.Client, member_stream: str, method: str, authorization: str | None
) -> None:
    """No token or a bad one (signature, alg, expiry, sub, role) gets 401 and writes nothing."""
    headers = {} if authorization is None else {"authorization": authorization}
    with nothing_written(c, member_stream):
        if method == "POST":
            r = post(c, member_stream, {"opcode": 203, "payload": {"amount": 1}}, headers)
        else:
            r = c.get(f"/api/streams/{member_stream}", headers=headers)
        assert_error(r, 401)


# -- §2 access: membership and opcodes ------------------------------------------------------


@pytest.mark.parametrize("role", sorted(OUTSIDER))
def test_non_member_and_nonexistent_stream_look_the_same(
    c: httpx.Client, member_stream: str, role: str
) -> None:
    """A non-member gets 403 on a stream, with the very body it gets for a missing one."""
    missing = new_sid("missing")
    headers = auth(OUTSIDER[role], role)
    opcode = min(ALLOWED[role] - {501})
    with nothing_written(c, member_stream, missing):
        post_existing = post(c, member_stream, {"opcode": opcode}, headers)
        post_missing = post(c, missing, {"opcode": opcode}, headers)
        get_existing = c.get(f"/api/streams/{member_stream}", headers=headers)
        get_missing = c.get(f"/api/streams/{missing}", headers=headers)
    for r in (post_existing, post_missing, get_existing, get_missing):
        assert_error(r, 403)
    assert post_existing.json() == post_missing.json()
    assert get_existing.json() == get_missing.json()


def test_platform_gets_404_for_a_missing_stream(c: httpx.Client) -> None:
    """The platform (and only it) learns that a stream does not exist: 404."""
    assert_error(c.get(f"/api/streams/{new_sid('missing')}", headers=PLATFORM), 404)


FORBIDDEN_OPCODES = [
    pytest.param(role, opcode, id=f"{role}-{opcode}")
    for role, allowed in ALLOWED.items()
    for opcode in sorted(OPCODES)
    if opcode not in allowed
]


@pytest.mark.parametrize(("role", "opcode"), FORBIDDEN_OPCODES)
def test_role_may_not_append_other_opcodes(
    c: httpx.Client, member_stream: str, role: str, opcode: int
) -> None:
    """A member appending an opcode its role does not own gets 403 and nothing is written."""
    payload = {"driver": OUTSIDER["driver"]} if opcode == 302 else {"by": role}
    if opcode == 501:
        payload = order_payload()
    with nothing_written(c, member_stream):
        r = post(c, member_stream, {"opcode": opcode, "payload": payload}, auth(MEMBER[role], role))
        assert_error(r, 403)


ALLOWED_OPCODES = [
    pytest.param(role, opcode, id=f"{role}-{opcode}")
    for role, allowed in ALLOWED.items()
    for opcode in sorted(allowed - {501})
] + [pytest.param("platform", opcode, id=f"platform-{opcode}") for opcode in sorted(OPCODES)]


@pytest.mark.parametrize(("role", "opcode"), ALLOWED_OPCODES)
def test_role_appends_its_own_opcodes(
    c: httpx.Client, member_stream: str, role: str, opcode: int
) -> None:
    """A member appends the opcodes its role owns (the platform: all of them): 201."""
    headers = PLATFORM if role == "platform" else auth(MEMBER[role], role)
    payload = order_payload() if opcode == 501 else {"driver": DRIVER} if opcode == 302 else {}
    writes = streams_writes(c)
    r = post(c, member_stream, {"opcode": opcode, "payload": payload}, headers)
    assert r.status_code == 201, r.text
    (event,) = r.json()["events"]
    assert (event["opcode"], event["name"]) == (opcode, OPCODES[opcode])
    assert streams_writes(c) == writes + 1
    stored = read_back(c, member_stream)
    assert stored is not None
    assert stored[-1] == event


def test_customer_order_create_opens_a_stream_and_confers_membership(c: httpx.Client) -> None:
    """A customer's ORDER_CREATE naming itself opens a stream; customer and restaurant join."""
    sid = new_sid("order")
    r = post(c, sid, {"opcode": 501, "payload": order_payload()}, auth(CUSTOMER, "customer"))
    assert r.status_code == 201, r.text
    assert [e["seq"] for e in r.json()["events"]] == [1]
    for role in ("customer", "restaurant"):
        got = c.get(f"/api/streams/{sid}", headers=auth(MEMBER[role], role))
        assert got.status_code == 200, got.text
        assert got.json()["events"] == r.json()["events"]


CUSTOMER_501_REFUSED = {
    "names-another-customer": (
        CUSTOMER,
        False,
        [{"opcode": 501, "payload": order_payload("cust-b")}],
    ),
    "names-no-customer": (
        CUSTOMER,
        False,
        [{"opcode": 501, "payload": {"restaurant": RESTAURANT}}],
    ),
    "not-first-in-batch": (
        CUSTOMER,
        False,
        [{"opcode": 203}, {"opcode": 501, "payload": order_payload()}],
    ),
    "twice-in-batch": (
        CUSTOMER,
        False,
        [{"opcode": 501, "payload": order_payload()}, {"opcode": 501, "payload": order_payload()}],
    ),
    "existing-stream-of-another": (
        "cust-b",
        True,
        [{"opcode": 501, "payload": order_payload("cust-b")}],
    ),
    "existing-stream-own-order": (CUSTOMER, True, [{"opcode": 501, "payload": order_payload()}]),
}


@pytest.mark.parametrize(
    ("tenant", "existing", "drafts"),
    list(CUSTOMER_501_REFUSED.values()),
    ids=list(CUSTOMER_501_REFUSED),
)
def test_customer_order_create_only_for_itself_on_a_new_stream(
    c: httpx.Client, member_stream: str, tenant: str, existing: bool, drafts: list[dict[str, Any]]
) -> None:
    """A customer's 501 must name itself and open the stream; otherwise 403, nothing written."""
    sid = member_stream if existing else new_sid("order")
    body = drafts[0] if len(drafts) == 1 else {"events": drafts}
    with nothing_written(c, sid):
        r = post(c, sid, body, auth(tenant, "customer"))
        assert_error(r, 403)


def test_restaurant_named_by_order_create_is_a_member(c: httpx.Client) -> None:
    """The restaurant named by ORDER_CREATE may append 301 and read; another restaurant may not."""
    sid = open_order(c)
    r = post(c, sid, {"opcode": 301, "payload": {"kitchen": "hot"}}, auth(RESTAURANT, "restaurant"))
    assert r.status_code == 201, r.text
    assert r.json()["events"][0]["seq"] == 2
    other = auth("rest-b", "restaurant")
    with nothing_written(c, sid):
        assert_error(post(c, sid, {"opcode": 301}, other), 403)
        assert_error(c.get(f"/api/streams/{sid}", headers=other), 403)
    got = c.get(f"/api/streams/{sid}", headers=auth(RESTAURANT, "restaurant"))
    assert got.status_code == 200
    assert got.json()["events"] == read_back(c, sid)


def test_driver_becomes_a_member_only_through_task_assign(c: httpx.Client) -> None:
    """A driver may append 502 and read the whole stream only once a TASK_ASSIGN names it."""
    sid = open_order(c)
    driver = auth(DRIVER, "driver")
    with nothing_written(c, sid):
        assert_error(post(c, sid, {"opcode": 502}, driver), 403)
        assert_error(c.get(f"/api/streams/{sid}", headers=driver), 403)
    r = post(c, sid, {"opcode": 302, "payload": {"driver": DRIVER}}, PLATFORM)
    assert r.status_code == 201, r.text
    r = post(c, sid, {"opcode": 502, "payload": {"confirmedItems": 2}}, driver)
    assert r.status_code == 201, r.text
    assert r.json()["events"][0]["seq"] == 3
    got = c.get(f"/api/streams/{sid}", headers=driver)
    assert got.status_code == 200
    assert [e["seq"] for e in got.json()["events"]] == [1, 2, 3]
    assert got.json()["events"] == read_back(c, sid)
    with nothing_written(c, sid):
        assert_error(post(c, sid, {"opcode": 502}, auth("drv-b", "driver")), 403)


EVERYONE_X = {"customer": "cust-x", "restaurant": "rest-x", "driver": "drv-x"}
NOT_CONFERRING = {
    "203-naming-all": (203, EVERYONE_X),
    "301-naming-all": (301, EVERYONE_X),
    "502-naming-all": (502, EVERYONE_X),
    "401-naming-all": (401, EVERYONE_X),
    "302-naming-customer-and-restaurant": (302, {"customer": "cust-x", "restaurant": "rest-x"}),
    "501-naming-a-driver": (501, {**order_payload(), "driver": "drv-x"}),
}


@pytest.mark.parametrize(
    ("opcode", "payload"), list(NOT_CONFERRING.values()), ids=list(NOT_CONFERRING)
)
def test_other_events_naming_a_tenant_confer_no_membership(
    c: httpx.Client, opcode: int, payload: dict[str, str]
) -> None:
    """Only ORDER_CREATE's customer/restaurant and TASK_ASSIGN's driver become members."""
    sid = open_order(c)
    r = post(c, sid, {"opcode": opcode, "payload": payload}, PLATFORM)
    assert r.status_code == 201, r.text
    named = [role for role, tenant in EVERYONE_X.items() if payload.get(role) == tenant]
    assert named
    for role in named:
        headers = auth(EVERYONE_X[role], role)
        with nothing_written(c, sid):
            assert_error(c.get(f"/api/streams/{sid}", headers=headers), 403)
            assert_error(post(c, sid, {"opcode": min(ALLOWED[role] - {501})}, headers), 403)


@pytest.mark.parametrize("role", sorted(MEMBER))
def test_members_read_the_whole_stream(c: httpx.Client, role: str) -> None:
    """Every member reads every event of the stream, including those before it joined."""
    sid = open_order(c, driver=DRIVER)
    r = post(c, sid, {"opcode": 301}, auth(RESTAURANT, "restaurant"))
    assert r.status_code == 201
    got = c.get(f"/api/streams/{sid}", headers=auth(MEMBER[role], role))
    assert got.status_code == 200, got.text
    body = got.json()
    assert {"streamId", "status", "orderStatus", "events"} <= set(body)
    assert (body["streamId"], body["status"]) == (sid, "active")
    assert [e["seq"] for e in body["events"]] == [1, 2, 3]
    assert body["events"] == read_back(c, sid)


def test_order_status_is_the_streams_whatever_page_is_read(c: httpx.Client) -> None:
    """orderStatus is how far the order got, not how far the page read reaches: with a
    limit, with since, and past the stream's first 64 events."""
    sid = open_order(c, driver=DRIVER)  # seq 1-2: placed, assigned
    r = post(c, sid, {"events": [{"opcode": 402} for _ in range(70)]}, PLATFORM)  # seq 3-72
    assert r.status_code == 201, r.text
    assert post(c, sid, {"opcode": 503}, PLATFORM).status_code == 201  # seq 73: delivered
    customer = auth(CUSTOMER, "customer")
    for query, seqs in [("", list(range(1, 74))), ("?limit=1", [1]), ("?since=72", [73]),
                        ("?since=1&limit=1", [2]), ("?since=73", [])]:  # fmt: skip
        body = c.get(f"/api/streams/{sid}{query}", headers=customer).json()
        assert [e["seq"] for e in body["events"]] == seqs, query
        assert body["orderStatus"] == "delivered", query
    other = new_sid()  # not an order: no status on any page
    assert post(c, other, {"events": [{"opcode": 203}, {"opcode": 203}]}, PLATFORM).is_success
    for query in ("", "?limit=1", "?since=1"):
        assert c.get(f"/api/streams/{other}{query}", headers=PLATFORM).json()["orderStatus"] is None


# -- §3 events: happy paths -----------------------------------------------------------------


def test_one_event_is_stored_with_every_field(c: httpx.Client) -> None:
    """One event gets 201 {"events": [it]} with every §3 field, and reads back identically."""
    sid = new_sid("order")
    draft = {
        "id": new_id(),
        "opcode": 501,
        "nodeId": "node-cust-a",
        "pointId": "pt-home",
        "delta": 42.5,
        "payload": {**order_payload(), "items": [{"productId": "p1", "qty": 2}], "note": "ünï"},
        "ts": "2026-11-27T14:30:00.5+02:00",
    }
    writes = streams_writes(c)
    r = post(c, sid, draft, auth(CUSTOMER, "customer"))
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert list(body) == ["events"]
    (event,) = body["events"]
    assert set(event) >= EVENT_FIELDS
    assert isinstance(event["pos"], int)
    assert event["pos"] >= 1
    expected = {
        "id": draft["id"], "streamId": sid, "seq": 1, "pos": event["pos"], "opcode": 501,
        "name": "ORDER_CREATE", "nodeId": "node-cust-a", "pointId": "pt-home", "delta": 42.5,
        "payload": draft["payload"], "ts": "2026-11-27T12:30:00.500Z",
    }  # fmt: skip
    assert {k: event[k] for k in EVENT_FIELDS} == expected
    assert streams_writes(c) == writes + 1
    got = c.get(f"/api/streams/{sid}", headers=auth(CUSTOMER, "customer"))
    assert got.status_code == 200
    assert got.json()["events"] == [event]
    assert got.json()["orderStatus"] == "placed"


def test_event_defaults(c: httpx.Client) -> None:
    """An event with only an opcode gets an id, null refs, delta 0, {} payload and a UTC ts now."""
    sid = new_sid()
    r = post(c, sid, {"opcode": 203}, PLATFORM)
    assert r.status_code == 201, r.text
    (event,) = r.json()["events"]
    assert isinstance(event["id"], str)
    assert event["id"]
    assert (event["nodeId"], event["pointId"], event["delta"], event["payload"]) == (
        None, None, 0, {},
    )  # fmt: skip
    assert TS_RE.match(event["ts"]), event["ts"]
    assert event["ts"][:10] == time.strftime("%Y-%m-%d", time.gmtime())


def test_drawn_ids_are_random_and_an_unnamed_event_is_new_each_time(c: httpx.Client) -> None:
    """Ids the hub draws are 128 random bits (unique across streams, so never guessable);
    sending an event without an id twice stores it twice (retries name their ids)."""
    sid = new_sid()
    batch = {"events": [{"opcode": 303, "payload": {"n": 1}}] * 50}
    ids = [e["id"] for e in post(c, sid, batch, PLATFORM).json()["events"]]
    ids += [e["id"] for e in post(c, sid, batch, PLATFORM).json()["events"]]
    assert all(re.fullmatch(r"evt-[0-9a-f]{32}", i) for i in ids), ids[:3]
    assert len(set(ids)) == 100
    # No two drawn ids share a long prefix: not a counter, not a clock.
    assert len({i[:12] for i in ids}) == 100
    assert [e["seq"] for e in read_back(c, sid) or []] == list(range(1, 101))


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", "/api/streams/s-x/events", "POST"), ("DELETE", "/api/streams/s-x", "GET"),
     ("GET", "/api/orders", "POST"), ("PUT", "/healthz", "GET")],
)  # fmt: skip
def test_a_known_path_with_another_method_is_405(
    c: httpx.Client, method: str, path: str, allow: str
) -> None:
    with nothing_written(c, "s-x"):
        r = c.request(method, path, json={"opcode": 303}, headers=PLATFORM)
        assert assert_error(r, 405)["code"] == "method_not_allowed"
        assert allow in r.headers["allow"]


def test_unknown_paths_are_404_and_pages_are_served(c: httpx.Client) -> None:
    for method, path in [("GET", "/nope"), ("POST", "/nope"), ("POST", "/index.html"),
                         ("GET", "/api/streams/s-x/events/")]:  # fmt: skip
        assert assert_error(c.request(method, path), 404)["code"] == "not_found", path
    r = c.get("/")
    assert r.status_code == 200, r.text[:200]
    assert "text/html" in r.headers["content-type"]


@pytest.mark.parametrize("path", ["/api/streams/a%2Fb/events", "/api/streams//events",
                                  "/api/streams/x/y/events"])  # fmt: skip
def test_events_path_needs_one_stream_segment(c: httpx.Client, path: str) -> None:
    r = c.post(path, json={"opcode": 303}, headers=PLATFORM)
    assert assert_error(r, 404)["code"] == "not_found"


TS_NORMALISED = {
    "z": ("2026-11-27T12:30:00Z", "2026-11-27T12:30:00.000Z"),
    "millis": ("2026-11-27T12:30:00.000Z", "2026-11-27T12:30:00.000Z"),
    "micros-truncated": ("2026-11-27T12:30:00.123999+00:00", "2026-11-27T12:30:00.123Z"),
    "offset": ("2026-11-28T01:00:00+12:30", "2026-11-27T12:30:00.000Z"),
    "year-below-1000": ("0999-01-01T00:00:00Z", "0999-01-01T00:00:00.000Z"),
}


@pytest.mark.parametrize(("given", "stored"), list(TS_NORMALISED.values()), ids=list(TS_NORMALISED))
def test_given_ts_is_stored_as_iso_utc_millis(c: httpx.Client, given: str, stored: str) -> None:
    """A writer's ts is stored and returned as YYYY-MM-DDTHH:MM:SS.mmmZ in UTC."""
    r = post(c, new_sid(), {"opcode": 203, "ts": given}, PLATFORM)
    assert r.status_code == 201, r.text
    assert r.json()["events"][0]["ts"] == stored


def test_batches_get_consecutive_seq(c: httpx.Client) -> None:
    """A batch is stored in order with consecutive seq, continuing the stream; pos only grows."""
    sid = new_sid()
    writes = streams_writes(c)
    first = post(c, sid, {"events": [{"opcode": 303, "delta": i} for i in range(5)]}, PLATFORM)
    second = post(c, sid, {"events": [{"opcode": 305, "delta": i} for i in range(3)]}, PLATFORM)
    assert (first.status_code, second.status_code) == (201, 201)
    events = first.json()["events"] + second.json()["events"]
    assert [e["seq"] for e in events] == list(range(1, 9))
    assert [e["delta"] for e in events] == [0, 1, 2, 3, 4, 0, 1, 2]
    positions = [e["pos"] for e in events]
    assert positions == sorted(set(positions))
    assert streams_writes(c) == writes + 8
    assert read_back(c, sid) == events


def test_batch_of_100_is_accepted(c: httpx.Client) -> None:
    """A batch of exactly 100 events (the limit) is stored whole."""
    sid = new_sid()
    r = post(c, sid, {"events": [{"opcode": 303} for _ in range(100)]}, PLATFORM)
    assert r.status_code == 201, r.text
    assert [e["seq"] for e in r.json()["events"]] == list(range(1, 101))


def _variant(draft: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**draft, **changes}
    return {k: v for k, v in out.items() if v is not None or k in {"nodeId", "pointId"}}


RETRY_DRAFT = {
    "opcode": 303, "nodeId": "node-1", "pointId": "pt-1", "delta": 1,
    "payload": {"a": 1, "b": [1, 2]}, "ts": "2026-11-27T12:30:00.000Z",
}  # fmt: skip
SAME_CONTENT = {
    "identical": {},
    "ts-omitted-on-retry": {"ts": None},
    "payload-keys-reordered": {"payload": {"b": [1, 2], "a": 1}},
    "delta-as-float": {"delta": 1.0},
    "ts-same-instant-other-spelling": {"ts": "2026-11-27T13:30:00+01:00"},
}


@pytest.mark.parametrize("changes", list(SAME_CONTENT.values()), ids=list(SAME_CONTENT))
def test_retry_with_same_content_returns_stored_event(
    c: httpx.Client, changes: dict[str, Any]
) -> None:
    """Re-sending an event id with the same content gets 200 and the stored event; no write."""
    sid = new_sid()
    draft = {"id": new_id(), **RETRY_DRAFT}
    first = post(c, sid, draft, PLATFORM)
    assert first.status_code == 201, first.text
    with nothing_written(c, sid):
        retry = post(c, sid, _variant(draft, **changes), PLATFORM)
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()


def test_retry_of_a_batch_returns_the_stored_batch(c: httpx.Client) -> None:
    """Re-sending a whole batch gets 200 and the stored events; nothing is written."""
    sid = new_sid()
    batch = {"events": [{"id": new_id(), "opcode": 303, "delta": i} for i in range(3)]}
    first = post(c, sid, batch, PLATFORM)
    assert first.status_code == 201, first.text
    with nothing_written(c, sid):
        retry = post(c, sid, batch, PLATFORM)
    assert retry.status_code == 200, retry.text
    assert retry.json() == first.json()


def test_retry_without_ts_of_an_event_without_ts(c: httpx.Client) -> None:
    """An event sent twice without ts (the hub stamps it) is a retry, not a conflict."""
    sid = new_sid()
    draft = {"id": new_id(), "opcode": 203}
    first = post(c, sid, draft, PLATFORM)
    assert first.status_code == 201
    time.sleep(0.01)
    with nothing_written(c, sid):
        retry = post(c, sid, draft, PLATFORM)
    assert retry.status_code == 200
    assert retry.json() == first.json()


OTHER_CONTENT = {
    "opcode": {"opcode": 305},
    "nodeId": {"nodeId": "node-2"},
    "nodeId-null": {"nodeId": None},
    "pointId": {"pointId": "pt-2"},
    "delta": {"delta": 2},
    "payload": {"payload": {"a": 2, "b": [1, 2]}},
    "ts": {"ts": "2026-11-27T12:30:00.001Z"},
}


@pytest.mark.parametrize("changes", list(OTHER_CONTENT.values()), ids=list(OTHER_CONTENT))
def test_same_id_with_other_content_is_409(c: httpx.Client, changes: dict[str, Any]) -> None:
    """Re-using an event id with other content gets 409 and nothing is written."""
    sid = new_sid()
    draft = {"id": new_id(), **RETRY_DRAFT}
    assert post(c, sid, draft, PLATFORM).status_code == 201
    with nothing_written(c, sid):
        r = post(c, sid, {**draft, **changes}, PLATFORM)
        assert_error(r, 409)


def test_same_id_in_another_stream_is_another_event(c: httpx.Client) -> None:
    """An event id is unique within its stream: the same id in another stream is that
    stream's own event (an id another stream holds tells the writer nothing)."""
    sid, other = new_sid(), new_sid()
    draft = {"id": new_id(), **RETRY_DRAFT}
    first = post(c, sid, draft, PLATFORM)
    assert first.status_code == 201, first.text
    second = post(c, other, draft, PLATFORM)
    assert second.status_code == 201, second.text
    (event,) = second.json()["events"]
    assert (event["id"], event["streamId"], event["seq"]) == (draft["id"], other, 1)
    with nothing_written(c, sid, other):
        assert post(c, other, draft, PLATFORM).json() == second.json()  # a retry there
    assert read_back(c, sid) == first.json()["events"]


def test_batch_with_a_conflicting_event_writes_nothing(c: httpx.Client) -> None:
    """A batch holding one 409 event is refused whole: none of its events are written."""
    sid = new_sid()
    taken = {"id": new_id(), **RETRY_DRAFT}
    assert post(c, sid, taken, PLATFORM).status_code == 201
    batch = {"events": [{"opcode": 303}, {**taken, "delta": 99}, {"opcode": 305}]}
    with nothing_written(c, sid):
        r = post(c, sid, batch, PLATFORM)
        assert_error(r, 409)


def test_batch_with_a_forbidden_event_writes_nothing(c: httpx.Client, member_stream: str) -> None:
    """A member's batch holding one opcode its role does not own is refused whole (403)."""
    batch = {"events": [{"opcode": 301}, {"opcode": 303}, {"opcode": 302, "payload": {}}]}
    with nothing_written(c, member_stream):
        r = post(c, member_stream, batch, auth(RESTAURANT, "restaurant"))
        assert_error(r, 403)


@pytest.mark.parametrize(
    ("since", "seqs"), [(0, [1, 2, 3, 4, 5]), (2, [3, 4, 5]), (5, []), (9, [])]
)
def test_get_since_returns_later_events(c: httpx.Client, since: int, seqs: list[int]) -> None:
    """GET ?since=N returns exactly the events with seq > N, in order."""
    sid = open_order(c)
    r = post(
        c, sid, {"events": [{"opcode": 301} for _ in range(4)]}, auth(RESTAURANT, "restaurant")
    )
    assert r.status_code == 201
    got = c.get(f"/api/streams/{sid}", params={"since": since}, headers=auth(CUSTOMER, "customer"))
    assert got.status_code == 200, got.text
    assert [e["seq"] for e in got.json()["events"]] == seqs


# -- §4 bad input ---------------------------------------------------------------------------


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _payload_of_size(n: int, char: str = "a") -> dict[str, str]:
    """A payload whose compact UTF-8 JSON encoding is exactly ``n`` bytes."""
    filler = n - len('{"x":""}')
    width = len(char.encode())
    assert filler % width == 0
    payload = {"x": char * (filler // width)}
    assert len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()) == n
    return payload


def _ev(**kw: Any) -> bytes:
    return _j({"opcode": 203, **kw})


BAD_BODIES = [
    # not JSON / not an object: 400
    pytest.param(b"{not json", (400,), id="not-json"),
    pytest.param(b"", (400,), id="empty-body"),
    pytest.param(b'{"opcode": 203', (400,), id="truncated-json"),
    pytest.param(b"\xff\xfe{}", (400,), id="not-utf8"),
    pytest.param(b'"203"', (400,), id="string-body"),
    pytest.param(b"203", (400,), id="number-body"),
    pytest.param(b"null", (400,), id="null-body"),
    pytest.param(_j([{"opcode": 203}]), (400,), id="json-array"),
    # opcode: 422
    pytest.param(_j({"opcode": 999}), (422,), id="unknown-opcode"),
    pytest.param(_j({"opcode": 0}), (422,), id="opcode-zero"),
    pytest.param(_j({"payload": {}}), (422,), id="missing-opcode"),
    pytest.param(_j({"opcode": "203"}), (422,), id="opcode-string"),
    pytest.param(_j({"opcode": True}), (422,), id="opcode-bool"),
    pytest.param(_j({"opcode": 203.0}), (422,), id="opcode-float"),
    pytest.param(_j({"opcode": None}), (422,), id="opcode-null"),
    # other fields: 422
    pytest.param(_ev(delta="5"), (422,), id="delta-string"),
    pytest.param(_ev(delta=True), (422,), id="delta-bool"),
    pytest.param(b'{"opcode": 203, "delta": NaN}', (422,), id="delta-nan"),
    pytest.param(b'{"opcode": 203, "delta": Infinity}', (422,), id="delta-infinity"),
    pytest.param(_ev(payload=[1, 2]), (422,), id="payload-list"),
    pytest.param(_ev(payload="x"), (422,), id="payload-string"),
    pytest.param(_ev(payload=5), (422,), id="payload-number"),
    pytest.param(b'{"opcode": 203, "payload": {"x": NaN}}', (422,), id="payload-nan"),
    pytest.param(_ev(ts="yesterday"), (422,), id="ts-words"),
    pytest.param(_ev(ts="2026-13-01T00:00:00Z"), (422,), id="ts-month-13"),
    pytest.param(_ev(ts="2026-11-27T12:30:00"), (422,), id="ts-no-timezone"),
    pytest.param(_ev(ts=1764246600), (422,), id="ts-number"),
    pytest.param(_ev(ts="0001-01-01T00:00:00+00:01"), (422,), id="ts-before-year-1-utc"),
    pytest.param(_ev(ts="9999-12-31T23:59:59-01:00"), (422,), id="ts-after-year-9999-utc"),
    pytest.param(b'{"opcode": 203, "delta": 1' + b"0" * 400 + b"}", (422,), id="delta-huge-int"),
    pytest.param(
        b'{"opcode": 203, "payload": {"a": "\\ud800"}}', (400, 422), id="payload-surrogate"
    ),
    pytest.param(b'{"opcode": 203, "nodeId": "\\udfff"}', (400, 422), id="nodeId-surrogate"),
    pytest.param(_ev(colour="red"), (422,), id="unknown-field"),
    pytest.param(_ev(nodeId="n" * 129), (422,), id="nodeId-too-long"),
    pytest.param(_ev(nodeId=7), (422,), id="nodeId-number"),
    pytest.param(_ev(nodeId=""), (422,), id="nodeId-empty"),
    pytest.param(_ev(pointId="p" * 129), (422,), id="pointId-too-long"),
    pytest.param(_ev(id="-bad"), (422,), id="id-invalid"),
    pytest.param(_ev(id=12), (422,), id="id-number"),
    pytest.param(_ev(id="e" * 129), (422,), id="id-too-long"),
    pytest.param(_ev(name="TASK_CREATE"), (422,), id="name-mismatch"),
    pytest.param(_ev(streamId="elsewhere"), (422,), id="streamId-mismatch"),
    # sizes: 413
    pytest.param(_ev(payload=_payload_of_size(KIB64 + 1)), (413,), id="payload-64KiB+1"),
    pytest.param(_ev(payload=_payload_of_size(KIB64 + 2, "é")), (413,), id="payload-utf8-64KiB+"),
    # batches
    pytest.param(_j({"events": []}), (400, 413, 422), id="empty-batch"),
    pytest.param(_j({"events": [{"opcode": 203}] * 101}), (400, 413, 422), id="batch-of-101"),
    pytest.param(_j({"events": {"opcode": 203}}), (422,), id="batch-not-a-list"),
    pytest.param(_j({"events": [{"opcode": 203}], "x": 1}), (422,), id="batch-extra-key"),
    pytest.param(_j({"events": [{"opcode": 203}, 5]}), (422,), id="batch-item-not-object"),
    pytest.param(
        _j({"events": [{"opcode": 203}, {"opcode": 303}, {"opcode": 999}]}),
        (422,),
        id="batch-one-bad-opcode",
    ),
    pytest.param(
        _j({"events": [{"opcode": 203}, {"opcode": 303, "payload": _payload_of_size(KIB64 + 1)}]}),
        (413,),
        id="batch-one-payload-too-large",
    ),
    pytest.param(
        _j({"events": [{"id": "dup-1", "opcode": 203}, {"id": "dup-1", "opcode": 303}]}),
        (422,),
        id="batch-duplicate-ids",
    ),
    pytest.param(
        _j({"events": [{"id": "dup-2", "opcode": 203}, {"id": "dup-2", "opcode": 203}]}),
        (422,),
        id="batch-duplicate-identical-events",
    ),
]


@pytest.fixture(scope="module")
def target(c: httpx.Client) -> str:
    """A platform-owned stream with one event, the target of every bad request."""
    sid = new_sid("target")
    assert post(c, sid, {"opcode": 203}, PLATFORM).status_code == 201
    return sid


@pytest.mark.parametrize(("content", "statuses"), BAD_BODIES)
def test_bad_input_is_refused_and_writes_nothing(
    c: httpx.Client, target: str, content: bytes, statuses: tuple[int, ...]
) -> None:
    """Bad input of any kind gets its 4xx and the error body, and nothing is written."""
    headers = {**PLATFORM, "content-type": "application/json"}
    with nothing_written(c, target):
        r = c.post(events_url(target), content=content, headers=headers)
        assert_error(r, *statuses)


@pytest.mark.parametrize(("size", "status"), [(KIB64, 201), (KIB64 + 1, 413)])
def test_payload_limit_is_64_KiB_encoded(
    c: httpx.Client, target: str, size: int, status: int
) -> None:
    """A payload of exactly 64 KiB encoded is accepted; one byte more is 413."""
    writes = streams_writes(c)
    r = post(c, target, {"opcode": 203, "payload": _payload_of_size(size)}, PLATFORM)
    assert r.status_code == status, r.text
    assert streams_writes(c) == writes + (status == 201)


@pytest.mark.parametrize(("size", "status"), [(MIB, 201), (MIB + 1, 413)])
def test_body_limit_is_1_MiB(c: httpx.Client, target: str, size: int, status: int) -> None:
    """A body of exactly 1 MiB is read; one byte more is 413 and nothing is written."""
    event = b'{"opcode": 203}'
    content = event + b" " * (size - len(event))
    writes = streams_writes(c)
    r = c.post(events_url(target), content=content, headers=PLATFORM)
    assert r.status_code == status, r.text
    if status != 201:
        assert_error(r, status)
    assert streams_writes(c) == writes + (status == 201)


def _big_batch() -> bytes:
    """A batch valid in every respect but its size (over 1 MiB): 20 events of 60 KB each."""
    events = [{"opcode": 303, "payload": {"x": "a" * 60_000}} for _ in range(20)]
    content = _j({"events": events})
    assert len(content) > MIB
    return content


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked-64KiB", "chunked-one-piece"])
def test_body_over_1_MiB_is_413_however_framed(c: httpx.Client, target: str, framing: str) -> None:
    """A body over 1 MiB gets 413, declared or streamed without a Content-Length."""
    data = _big_batch()
    if framing == "content-length":
        content: bytes | Iterator[bytes] = data
    else:
        content = _chunks(data, KIB64 if framing == "chunked-64KiB" else len(data))
    with nothing_written(c, target):
        r = c.post(events_url(target), content=content, headers=PLATFORM)
        if framing != "content-length":
            assert "content-length" not in r.request.headers
            assert r.request.headers["transfer-encoding"] == "chunked"
        assert_error(r, 413)


BAD_STREAM_IDS = {
    "leading-dash": "-bad",
    "leading-dot": ".bad",
    "129-chars": "a" * 129,
    "space": "a%20b",
    "non-ascii": "caf%C3%A9",
    "quote": "a%22b",
    "percent": "a%25b",
}


@pytest.mark.parametrize("raw", list(BAD_STREAM_IDS.values()), ids=list(BAD_STREAM_IDS))
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_invalid_stream_id_is_400(c: httpx.Client, method: str, raw: str) -> None:
    """A stream id outside ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$ gets 400; nothing written."""
    with nothing_written(c):
        if method == "POST":
            r = c.post(f"/api/streams/{raw}/events", json={"opcode": 203}, headers=PLATFORM)
        else:
            r = c.get(f"/api/streams/{raw}", headers=PLATFORM)
        assert_error(r, 400)


def test_longest_valid_stream_id_is_accepted(c: httpx.Client) -> None:
    """A stream id of 128 characters (the maximum) with every allowed character works."""
    sid = ("A0._:-" + uuid.uuid4().hex) * 4
    sid = sid[:128]
    r = post(c, sid, {"opcode": 203}, PLATFORM)
    assert r.status_code == 201, r.text
    assert r.json()["events"][0]["streamId"] == sid


@pytest.mark.parametrize(
    "since",
    ["-1", "abc", "1.5", "", "0x10", " 1", pytest.param("\u00b2", id="superscript-two")],
)
def test_invalid_since_is_400(c: httpx.Client, member_stream: str, since: str) -> None:
    """GET ?since= that is not a non-negative integer gets 400 with the error body."""
    r = c.get(f"/api/streams/{member_stream}", params={"since": since}, headers=PLATFORM)
    assert_error(r, 400)


# -- health, metrics, routes ----------------------------------------------------------------


def test_healthz_reports_ok(c: httpx.Client) -> None:
    """GET /healthz answers 200 {"status": "ok", "checks": {...}} without a token."""
    r = c.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert isinstance(body["checks"], dict)
    assert body["checks"]
    assert all(v == "ok" for v in body["checks"].values()), body


def test_metrics_count_stream_rows(c: httpx.Client) -> None:
    """hub_db_writes_total{target="streams"} grows by one per event row, not per request."""
    r = c.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for target_db in ("streams", "tenant", "public"):
        assert f'hub_db_writes_total{{target="{target_db}"}}' in r.text
    writes = streams_writes(c)
    batch = post(c, new_sid(), {"events": [{"opcode": 303} for _ in range(7)]}, PLATFORM)
    assert batch.status_code == 201
    assert streams_writes(c) == writes + 7


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/api/nope"),
        ("GET", "/api/streams/s1/events/extra"),
        ("POST", "/api/nope"),
        ("POST", "/api/streams/s1/nope"),
    ],
)
def test_unknown_route_is_404(c: httpx.Client, method: str, path: str) -> None:
    """A request for a route the hub does not have gets 404 with the error body."""
    with nothing_written(c):
        r = c.request(method, path, headers=PLATFORM, json={"opcode": 203})
        assert_error(r, 404)


def test_a_client_that_goes_away_mid_body_leaves_no_traceback(hub: HubProcess) -> None:
    """An order request whose client closes before its body has arrived: nothing to answer
    and nothing wrong, so no "Exception in ASGI application" in the hub's log (it logged one
    for each, from the routes that read JSON bodies; the fixture fails on a traceback)."""
    import socket

    host, port = hub.url.removeprefix("http://").split(":")
    for path in ("/api/orders", "/api/orders/ord-x/pay", "/api/tenants"):
        with socket.create_connection((host, int(port)), timeout=timeout(5)) as s:
            s.sendall((f"POST {path} HTTP/1.1\r\nHost: x\r\n"
                       f"Authorization: {auth('ali', 'customer')['authorization']}\r\n"
                       "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\"")
                      .encode())  # fmt: skip
            time.sleep(0.2)  # the hub is reading the body
    assert httpx.get(hub.url + "/healthz", timeout=timeout(5)).status_code == 200
    time.sleep(0.5)  # what the hub logs of the three, it has logged by now
    assert "Traceback" not in hub.log(), hub.log()[-2000:]
