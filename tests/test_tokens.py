"""Tokens on live sockets and tokens from an identity provider, against real hubs
(contract §7; docs/protocol.md §2 "Tokens from an identity provider", §5 "Token expiry").

- A socket refreshed by its client (``{"type": "auth", "token"}``) outlives any one of its
  tokens, with no reconnect and no gap. Time is scaled: the issue's "10 minutes on 60-second
  tokens" is run as 30 s on 3-second tokens refreshed every 1.5 s, the same 10 token lifetimes
  and 20 refreshes in 1/20 of the time (``HUB_TEST_TIMEOUT_FACTOR`` stretches the tokens'
  life and the refresh period on a slow machine, not the 30 s).
- A socket whose token expires is closed with 4401 within 1 s of ``exp`` (not before).
- A refresh of another ``sub`` or ``role`` closes 4403; one that does not verify 4401; an
  ``auth`` frame without a usable token gets an ``invalid_frame`` error and the socket stays.
- ``HUB_JWKS_URL``: a real HTTP server on loopback serves a JWKS of keys generated here (RSA,
  EC P-256, Ed25519): tokens of each algorithm are taken over HTTP and WebSockets beside
  HS256 ones; forged, mis-keyed, expired and wrongly addressed tokens are 401 / 4401; a key
  the server starts serving later is taken without a restart; the JWKS is fetched at most
  once per cooldown however many unknown kids come.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import SECRET, HubProcess, auth, timeout

Frame = dict[str, Any]

PLATFORM = auth("ops", "platform")
ISSUER = "https://idp.example.test/"
AUDIENCE = "hub"


# -- helpers --------------------------------------------------------------------------------


def new_sid() -> str:
    return f"ord-tok-{uuid.uuid4().hex[:12]}"


def hs256(tenant: str, role: str, *, life: float | None = None, **claims: Any) -> str:
    """An HS256 token; ``life`` seconds from now as a fractional ``exp`` (exact timing)."""
    body: dict[str, Any] = {"sub": tenant, "role": role, "iat": int(time.time()), **claims}
    if life is not None:
        body["exp"] = time.time() + life
    return jwt.encode(body, SECRET, algorithm="HS256")


def exp_of(token: str) -> Any:
    return jwt.decode(token, options={"verify_signature": False})["exp"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token PyJWT would not make: unsigned (``hmac_key`` None) or HMAC'd with any bytes."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if hmac_key is None:
        return signing_input + "."
    mac = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


@asynccontextmanager
async def http(hub: HubProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=hub.url, timeout=timeout(30), trust_env=False) as c:
        yield c


async def append(c: httpx.AsyncClient, sid: str, drafts: list[Frame],
                 headers: dict[str, str] = PLATFORM) -> list[Frame]:  # fmt: skip
    r = await c.post(f"/api/streams/{sid}/events", json={"events": drafts}, headers=headers)
    assert r.status_code == 201, (r.status_code, r.text)
    events: list[Frame] = r.json()["events"]
    return events


def order(customer: str = "ali", restaurant: str = "bab-hara") -> Frame:
    return {"opcode": 501, "payload": {"customer": customer, "restaurant": restaurant}}


def ws(hub: HubProcess, path: str, token: str) -> connect:
    sep = "&" if "?" in path else "?"
    return connect(f"{hub.ws_url}{path}{sep}token={token}", open_timeout=timeout(10),
                   close_timeout=timeout(5), compression=None, proxy=None)  # fmt: skip


async def recv(conn: ClientConnection, seconds: float = 10) -> Frame:
    raw = await asyncio.wait_for(conn.recv(), timeout(seconds))
    assert isinstance(raw, str), raw
    frame: Frame = json.loads(raw)
    return frame


async def until_live(conn: ClientConnection) -> list[Frame]:
    """The replay: frames up to and including ``live``."""
    frames = [await recv(conn)]
    while frames[-1]["type"] != "live":
        frames.append(await recv(conn))
    return frames


async def close_code(conn: ClientConnection, seconds: float = 10) -> tuple[int, list[Frame]]:
    """Read until the hub closes: the code received (1006: none) and the frames before it."""
    frames: list[Frame] = []
    try:
        while True:
            frames.append(await recv(conn, seconds))
    except websockets.ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd is not None else 1006), frames


async def send(conn: ClientConnection, frame: Frame) -> None:
    await conn.send(json.dumps(frame))


async def answer(conn: ClientConnection, frame: Frame) -> Frame:
    """Send ``frame`` and return the first reply that is not an event or live frame."""
    await send(conn, frame)
    while True:
        got = await recv(conn)
        if got["type"] not in {"event", "live"}:
            return got


# -- a token refreshed on a live socket ---------------------------------------------------------


async def test_a_socket_lives_on_short_tokens_refreshed_by_its_client(hub: HubProcess) -> None:
    """Stream and inbox sockets opened on 3-second tokens and refreshed every 1.5 s stay open
    for 15 s (5 token lifetimes; the issue's 10 minutes on 60-second tokens scaled by 1/20
    were 30 s, which showed nothing more) while events are appended: no close, no reconnect,
    every event once and in order, and each refresh answered with its token's ``exp``."""
    life = timeout(3.0)
    period, duration = life / 2, 15.0
    sid = new_sid()
    async with http(hub) as c:
        await append(c, sid, [order()])
        paths = {"stream": (f"/ws/streams/{sid}", "ali", "customer"),
                 "inbox": ("/ws/inbox", "bab-hara", "restaurant")}  # fmt: skip
        async with (
            ws(hub, paths["stream"][0], hs256("ali", "customer", life=life)) as stream,
            ws(hub, paths["inbox"][0], hs256("bab-hara", "restaurant", life=life)) as inbox,
        ):
            conns = {"stream": stream, "inbox": inbox}
            seen: dict[str, list[Frame]] = {"stream": [], "inbox": []}
            answers: dict[str, list[Frame]] = {"stream": [], "inbox": []}
            pongs = {"stream": 0, "inbox": 0}
            sent_exp: dict[str, list[float]] = {"stream": [], "inbox": []}
            stop = asyncio.Event()
            for name, conn in conns.items():
                seen[name] += [f for f in await until_live(conn) if f["type"] == "event"]

            async def read(name: str) -> None:
                conn = conns[name]
                while True:
                    frame = await recv(conn, seconds=period * 4)
                    if frame["type"] == "event":
                        seen[name].append(frame)
                    elif frame["type"] == "auth":
                        answers[name].append(frame)
                    elif frame == {"type": "pong"}:
                        pongs[name] += 1
                    else:
                        raise AssertionError(f"{name}: unexpected frame {frame}")

            async def refresh() -> None:
                while not stop.is_set():
                    await asyncio.sleep(period)
                    for name, (_, tenant, role) in paths.items():
                        token = hs256(tenant, role, life=life)
                        sent_exp[name].append(exp_of(token))
                        await send(conns[name], {"type": "auth", "token": token})

            appended: list[Frame] = []

            async def write() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    appended.extend(await append(c, sid, [{"opcode": 102, "payload": {"n": n}}]))
                    await asyncio.sleep(0.1)

            readers = [asyncio.create_task(read(name)) for name in conns]
            workers = [asyncio.create_task(refresh()), asyncio.create_task(write())]
            started = time.monotonic()
            try:
                while time.monotonic() - started < duration:
                    done = [t for t in (*readers, *workers) if t.done()]
                    for task in done:
                        task.result()  # a closed socket fails here
                        raise AssertionError("a task ended early")
                    await asyncio.sleep(0.2)
                stop.set()
                await asyncio.gather(*workers)
                # Every appended event reaches both sockets; then the sockets are still open.
                deadline = time.monotonic() + timeout(10)
                while any(len(seen[n]) < len(appended) + 1 for n in conns):
                    assert time.monotonic() < deadline, {n: len(seen[n]) for n in conns}
                    for task in readers:
                        if task.done():
                            task.result()
                    await asyncio.sleep(0.05)
                for name in conns:
                    await send(conns[name], {"type": "ping"})
                while any(pongs[n] == 0 for n in conns):  # still open, and answering
                    assert time.monotonic() < deadline + timeout(5), pongs
                    for task in readers:
                        if task.done():
                            task.result()
                    await asyncio.sleep(0.05)
            finally:
                for task in (*readers, *workers):
                    task.cancel()
                await asyncio.gather(*readers, *workers, return_exceptions=True)
            for task in readers:
                assert task.cancelled(), task  # still reading: the socket was never closed
            assert len(appended) > 100, len(appended)
            assert [f["seq"] for f in seen["stream"]] == list(range(1, len(appended) + 2))
            expected_pos = [seen["stream"][0]["pos"], *(e["pos"] for e in appended)]
            assert [f["pos"] for f in seen["inbox"]] == expected_pos
            for name in conns:
                assert len(sent_exp[name]) >= duration / period - 2, sent_exp[name]
                got = [a["exp"] for a in answers[name]]
                assert got == sent_exp[name][: len(got)], (got, sent_exp[name])
                assert len(got) >= len(sent_exp[name]) - 1  # the last may still be on its way
            for conn in conns.values():
                assert conn.close_code is None


# -- expiry -----------------------------------------------------------------------------------


async def expect_close_at(conn: ClientConnection, exp: float) -> None:
    """The socket is closed with 4401 within 1 s after ``exp``, not before; it got nothing
    but events, live and auth answers on the way."""
    code, frames = await close_code(conn, seconds=exp - time.time() + timeout(5))
    closed = time.time()
    assert code == 4401, (code, frames)
    assert all(f["type"] in {"event", "live", "auth", "pong"} for f in frames), frames
    assert closed >= exp - 0.05, f"closed {exp - closed:.3f} s before exp"
    assert closed - exp <= timeout(1.0), f"closed {closed - exp:.3f} s after exp"


async def test_a_socket_whose_token_expires_is_closed_4401_within_a_second(
    hub: HubProcess,
) -> None:
    """Stream and inbox sockets close 4401 within 1 s of their token's exp; a refresh moves
    the close to the new token's exp; a refresh with a token without exp keeps the socket."""
    sid = new_sid()
    async with http(hub) as c:
        await append(c, sid, [order()])
        life = timeout(2.0)
        plain = hs256("ali", "customer", life=life)
        exp = exp_of(plain)
        inbox_token = hs256("bab-hara", "restaurant", life=life)
        inbox_exp = exp_of(inbox_token)
        async with (
            ws(hub, f"/ws/streams/{sid}", plain) as stream,
            ws(hub, "/ws/inbox", inbox_token) as inbox,
            ws(hub, f"/ws/streams/{sid}", hs256("ali", "customer", life=life)) as moved,
            ws(hub, "/ws/inbox", hs256("bab-hara", "restaurant", life=life)) as forever,
        ):
            for conn in (stream, inbox, moved, forever):
                await until_live(conn)
            later = hs256("ali", "customer", life=life + timeout(1.5))
            later_exp = exp_of(later)
            assert await answer(moved, {"type": "auth", "token": later}) == {
                "type": "auth", "exp": later_exp}  # fmt: skip
            never = hs256("bab-hara", "restaurant")
            assert await answer(forever, {"type": "auth", "token": never}) == {
                "type": "auth", "exp": None}  # fmt: skip
            await asyncio.gather(expect_close_at(stream, exp), expect_close_at(inbox, inbox_exp),
                                 expect_close_at(moved, later_exp))  # fmt: skip
            # The socket refreshed with a token without exp outlived its first token.
            await asyncio.sleep(max(0.0, inbox_exp + 1.2 - time.time()))
            assert await answer(forever, {"type": "ping"}) == {"type": "pong"}
            await append(c, sid, [{"opcode": 102, "payload": {"after": "expiry"}}])
            frame = await recv(forever)
            assert (frame["type"], frame["payload"]) == ("event", {"after": "expiry"}), frame


async def test_a_refresh_of_another_tenant_or_role_closes_4403_and_garbage_is_an_error(
    hub: HubProcess,
) -> None:
    """An auth frame of another sub or role: 4403. One whose token does not verify (another
    key, expired, alg none, RS256 on a hub without a JWKS): 4401. One without a usable token:
    an ``invalid_frame`` error frame, and the socket goes on."""
    sid = new_sid()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with http(hub) as c:
        await append(c, sid, [order()])
        base = {"sub": "ali", "role": "customer"}
        cases = [
            (hs256("sara", "customer"), 4403),
            (hs256("ali", "driver"), 4403),
            (hs256("ali", "platform"), 4403),
            (jwt.encode(base, "another-secret-another-secret-0123", algorithm="HS256"), 4401),
            (hs256("ali", "customer", life=-1), 4401),
            (forged({"alg": "none", "typ": "JWT"}, base, None), 4401),
            (jwt.encode(base, rsa_key, algorithm="RS256", headers={"kid": "k"}), 4401),
            ("not-a-jwt", 4401),
        ]
        for refresh, expected in cases:
            async with ws(hub, f"/ws/streams/{sid}", hs256("ali", "customer")) as conn:
                await until_live(conn)
                await send(conn, {"type": "auth", "token": refresh})
                code, frames = await close_code(conn)
                assert code == expected, (refresh, code, frames)
                assert frames == [], frames
        # Without JWKS, RS256 is refused at the door too.
        r = await c.get(f"/api/streams/{sid}", headers={"authorization": f"Bearer {cases[6][0]}"})
        assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_token")

        async with ws(hub, f"/ws/streams/{sid}", hs256("ali", "customer")) as conn:
            await until_live(conn)
            for garbage in ({"type": "auth"}, {"type": "auth", "token": 5},
                            {"type": "auth", "token": ""}, {"type": "auth", "token": None},
                            {"type": "auth", "token": ["x"]}):  # fmt: skip
                reply = await answer(conn, garbage)
                assert reply["type"] == "error", (garbage, reply)
                assert reply["error"]["code"] == "invalid_frame", (garbage, reply)
            assert await answer(conn, {"type": "ping"}) == {"type": "pong"}
            await append(c, sid, [{"opcode": 102, "payload": {"still": "open"}}])
            frame = await recv(conn)
            assert (frame["type"], frame["payload"]) == ("event", {"still": "open"}), frame
            # The same tenant and role: taken.
            assert await answer(conn, {"type": "auth", "token": hs256("ali", "customer")}) == {
                "type": "auth", "exp": None}  # fmt: skip


# -- tokens from an identity provider (HUB_JWKS_URL) --------------------------------------------


@dataclass
class Signer:
    """A key pair of the identity provider's: signs tokens, and its public JWK is served."""

    alg: str
    kid: str
    private: Any
    jwk: dict[str, Any]

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        headers = {"kid": self.kid, **header}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=headers)

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem


def signer(alg: str, kid: str | None = None, *, with_alg: bool = True) -> Signer:
    kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}"
    private: Any
    if alg == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update(kid=kid, use="sig")
    if with_alg:
        jwk["alg"] = alg
    return Signer(alg, kid, private, jwk)


class JwksServer:
    """A JWKS served over HTTP on loopback (``http.server`` in a thread); counts its fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.fetches += 1
                    body = json.dumps({"keys": server.keys}).encode()
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}/.well-known/jwks.json"

    def serve(self, *signers: Signer) -> None:
        with self._lock:
            self.keys = [s.jwk for s in signers]

    def start(self) -> JwksServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving (the port refuses connections from then on). Idempotent."""
        if self._thread.is_alive():
            self._http.shutdown()
            self._thread.join()
        self._http.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer().start()
    yield server
    server.stop()


def idp_claims(sub: str = "ops", role: str = "platform", **more: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": sub, "role": role, "iss": ISSUER, "aud": AUDIENCE, "iat": now,
              "exp": now + 300}  # fmt: skip
    claims.update(more)
    return {k: v for k, v in claims.items() if v is not None}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_identity_provider_tokens_of_each_algorithm_are_taken_and_bad_ones_refused(
    hub_factory: Callable[..., HubProcess], jwks_server: JwksServer
) -> None:
    """RS256, ES256 and EdDSA tokens verify against the JWKS over HTTP (the fast append path
    and the routed ones) and WebSockets, and refresh an HS256 socket; HS256 still works;
    every kind of bad token is 401 (4401 on a socket); unknown kids refetch the JWKS at most
    once a minute (one fetch here in all)."""
    signers = [signer("RS256"), signer("ES256", with_alg=False), signer("EdDSA")]
    jwks_server.serve(*signers)
    hub = hub_factory(env={"HUB_JWKS_URL": jwks_server.url, "HUB_JWT_ISSUER": ISSUER,
                           "HUB_JWT_AUDIENCE": AUDIENCE})  # fmt: skip
    sid = new_sid()
    async with http(hub) as c:
        await append(c, sid, [order()])  # HS256 beside the JWKS
        assert jwks_server.fetches == 0  # fetched when a token first needs it
        for s in signers:
            ops, ali = s.sign(idp_claims()), s.sign(idp_claims("ali", "customer"))
            r = await c.get(f"/api/streams/{sid}", headers=bearer(ops))
            assert r.status_code == 200, (s.alg, r.text)
            assert (await c.get(f"/api/streams/{sid}", headers=bearer(ali))).status_code == 200
            await append(c, sid, [{"opcode": 102, "payload": {"alg": s.alg}}], bearer(ops))
            async with ws(hub, f"/ws/streams/{sid}", ali) as conn:
                frames = await until_live(conn)
                assert [f["type"] for f in frames][-2:] == ["event", "live"], frames
            async with ws(hub, "/ws/inbox", hs256("ali", "customer")) as conn:
                await until_live(conn)
                fresh = s.sign(idp_claims("ali", "customer", exp=int(time.time()) + 120))
                reply = await answer(conn, {"type": "auth", "token": fresh})
                assert reply == {"type": "auth", "exp": exp_of(fresh)}, reply
                other = s.sign(idp_claims("sara", "customer"))
                await send(conn, {"type": "auth", "token": other})
                assert (await close_code(conn))[0] == 4403
        assert jwks_server.fetches == 1
        # An HS256 token (hub token's kind) still works on HTTP and on sockets.
        assert (await c.get(f"/api/streams/{sid}", headers=PLATFORM)).status_code == 200
        async with ws(hub, f"/ws/streams/{sid}", hs256("ali", "customer")) as conn:
            assert (await until_live(conn))[-1]["type"] == "live"

        rs, es, ed = signers
        stranger = signer("RS256", rs.kid)  # another key pair under a known kid
        claims = idp_claims()
        bad: list[tuple[str, str, str]] = [
            ("alg none", forged({"alg": "none", "kid": rs.kid}, claims, None), "invalid_token"),
            ("HS256 signed with the RSA public key",
             forged({"alg": "HS256", "typ": "JWT", "kid": rs.kid}, claims, rs.public_pem()),
             "invalid_token"),
            ("HS256 signed with the JWK's n",
             forged({"alg": "HS256", "kid": rs.kid}, claims, rs.jwk["n"].encode()),
             "invalid_token"),
            ("unknown kid", rs.sign(claims, kid="not-served"), "invalid_token"),
            ("no kid", jwt.encode(claims, rs.private, algorithm="RS256"), "invalid_token"),
            ("another key under a known kid", stranger.sign(claims), "invalid_token"),
            ("ES256 under the RSA key's kid", es.sign(claims, kid=rs.kid), "invalid_token"),
            ("RS384 with the RSA key", jwt.encode(claims, rs.private, algorithm="RS384",
                                                  headers={"kid": rs.kid}), "invalid_token"),
            ("PS256 with the RSA key", jwt.encode(claims, rs.private, algorithm="PS256",
                                                  headers={"kid": rs.kid}), "invalid_token"),
            ("expired", ed.sign(idp_claims(exp=int(time.time()) - 5)), "token_expired"),
            ("not valid yet", ed.sign(idp_claims(nbf=int(time.time()) + 300)), "invalid_token"),
            ("another issuer", es.sign(idp_claims(iss="https://evil.test/")), "invalid_token"),
            ("no issuer", es.sign(idp_claims(iss=None)), "invalid_token"),
            ("another audience", rs.sign(idp_claims(aud="other")), "invalid_token"),
            ("no audience", rs.sign(idp_claims(aud=None)), "invalid_token"),
            ("an unknown role", ed.sign(idp_claims(role="admin")), "invalid_token"),
            ("a sub that is no tenant id", ed.sign(idp_claims(sub="../etc")), "invalid_token"),
            ("no role", ed.sign(idp_claims(role=None)), "invalid_token"),
            ("exp as a string", ed.sign(idp_claims(exp=str(int(time.time()) + 60))),
             "invalid_token"),
            ("a tampered payload", tampered(es.sign(idp_claims("ali", "customer"))),
             "invalid_token"),
        ]  # fmt: skip
        for case, token, code in bad:
            r = await c.get(f"/api/streams/{sid}", headers=bearer(token))
            assert (r.status_code, r.json()["error"]["code"]) == (401, code), (case, r.text)
            r = await c.post(f"/api/streams/{sid}/events", headers=bearer(token),
                             json={"opcode": 102, "payload": {}})  # fmt: skip
            assert r.status_code == 401, (case, r.text)
        for case, token, _ in bad[:6]:
            async with ws(hub, f"/ws/streams/{sid}", token) as conn:
                assert (await close_code(conn))[0] == 4401, case
        # Unknown kids came again and again: no fetch more within the minute.
        for n in range(5):
            r = await c.get(f"/api/streams/{sid}", headers=bearer(rs.sign(claims, kid=f"k{n}")))
            assert r.status_code == 401
        assert jwks_server.fetches == 1
        # A list audience that holds ours is taken.
        r = await c.get(f"/api/streams/{sid}",
                        headers=bearer(rs.sign(idp_claims(aud=["other", AUDIENCE]))))  # fmt: skip
        assert r.status_code == 200, r.text


def tampered(token: str) -> str:
    """``token`` with its payload's ``sub`` changed and the signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "sara"
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


async def test_a_key_the_identity_provider_starts_serving_is_taken_without_a_restart(
    hub_factory: Callable[..., HubProcess], jwks_server: JwksServer
) -> None:
    """Rotation: a token of a kid the hub has not seen refetches the JWKS (here after a 1 s
    cooldown, HUB_JWKS_COOLDOWN) and is taken, over HTTP and WebSockets, by the same process.
    A fetch that fails (the provider is down) keeps the keys fetched before."""
    first, second, third = signer("RS256"), signer("EdDSA"), signer("ES256")
    jwks_server.serve(first)
    hub = hub_factory(env={"HUB_JWKS_URL": jwks_server.url, "HUB_JWKS_COOLDOWN": "1"})
    sid = new_sid()
    async with http(hub) as c:
        await append(c, sid, [order()])
        pid = hub.proc.pid if hub.proc else None
        r = await c.get(f"/api/streams/{sid}", headers=bearer(first.sign(idp_claims(
            iss=None, aud=None))))  # fmt: skip
        assert r.status_code == 200, r.text
        assert jwks_server.fetches == 1
        jwks_server.serve(first, second)  # the provider rotates: a new kid
        await asyncio.sleep(1.2)
        rotated = second.sign(idp_claims("ali", "customer", iss=None, aud=None))
        r = await c.get(f"/api/streams/{sid}", headers=bearer(rotated))
        assert r.status_code == 200, r.text
        assert jwks_server.fetches == 2
        async with ws(
            hub,
            f"/ws/streams/{sid}",
            second.sign(idp_claims("ali", "customer", iss=None, aud=None)),
        ) as conn:
            assert (await until_live(conn))[-1]["type"] == "live"
        assert hub.proc is not None
        assert (hub.proc.pid, hub.proc.poll()) == (pid, None)  # the same process, running
        # The provider goes away: a new kid cannot be had, the keys fetched before still work.
        jwks_server.serve(first, second, third)
        jwks_server.stop()
        await asyncio.sleep(1.2)
        r = await c.get(
            f"/api/streams/{sid}", headers=bearer(third.sign(idp_claims(iss=None, aud=None)))
        )
        assert r.status_code == 401, r.text
        r = await c.get(f"/api/streams/{sid}", headers=bearer(second.sign(idp_claims(
            "ali", "customer", iss=None, aud=None, exp=int(time.time()) + 100))))  # fmt: skip
        assert r.status_code == 200, r.text
    assert "JWKS fetch" in hub.log(), hub.log()[-2000:]
