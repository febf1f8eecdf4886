"""Slow clients against the open-file limit (slowloris): the hub keeps answering.

The attack this answers: 1,100 connections trickling a request header byte every 2 s
against a hub with a 1,024 open-file limit all stayed open, the hub ran out of file
descriptors, every new connection (health checks, appends) was reset, and nothing was
logged. Here the same attack runs at a quarter of the scale against a real ``hub serve``
whose open-file limit, soft and hard, is lowered to 256 (the hub raises its soft limit to
the hard one, so both are set): 300 connections trickling a byte every 0.5 s. The bounds
under test are in :mod:`hub.edge.server`; docs/reliability.md §11 has the figures.

Each test prints one line ``SLOWLORIS-FIGURES {json}`` (``pytest -rP`` shows it).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import SECRET, HubProcess, auth, parse_metrics, timeout, token

NOFILE = 256  # the hub's open-file limit, soft and hard; its default cap is then 64
HEADER_TIMEOUT = 2.0  # HUB_HEADER_TIMEOUT for these tests (default 10)
BODY_TIMEOUT = 3.0  # HUB_BODY_TIMEOUT (default 30)
PLATFORM = auth("ops", "platform")


class LimitedHub(HubProcess):
    """``hub serve`` as :class:`HubProcess` starts it, under an open-file limit of ``nofile``."""

    def __init__(self, data_dir: Path, env: dict[str, str], nofile: int,
                 http: str = "auto") -> None:  # fmt: skip
        super().__init__(data_dir, env)
        self.nofile = nofile
        self.http = http

    def start(self, wait: float = 15.0) -> LimitedHub:
        env = {**os.environ, "HUB_DATA_DIR": str(self.data_dir), "HUB_SECRET": SECRET,
               "PYTHONUNBUFFERED": "1",
               "PYTHONWARNINGS": "error::ResourceWarning,error::RuntimeWarning",
               **self.extra_env}  # fmt: skip
        self.data_dir.mkdir(parents=True, exist_ok=True)
        nofile = self.nofile
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hub", "serve", "--port", str(self.port),
                 "--log-level", self.log_level, "--graceful-timeout", "5",
                 *(["--http", self.http] if self.http != "auto" else [])],
                env=env, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)),
            )  # fmt: skip
        deadline = time.monotonic() + timeout(wait)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"hub did not become healthy:\n{self.log()}")


@pytest.fixture(params=["auto"])
def limited_hub(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LimitedHub]:
    """A hub under the open-file limit of 256, on uvicorn's HTTP implementation ``param``."""
    env = {"HUB_HEADER_TIMEOUT": str(HEADER_TIMEOUT), "HUB_BODY_TIMEOUT": str(BODY_TIMEOUT)}
    hub = LimitedHub(tmp_path / "data", env, NOFILE, request.param).start()
    yield hub
    hub.stop()


def figures(test: str, **values: object) -> None:
    print("SLOWLORIS-FIGURES " + json.dumps({"test": test, **values}, sort_keys=True))


class Slow:
    """A raw connection that sends a request's start and then trickles one byte at a time."""

    def __init__(self, port: int, start: bytes) -> None:
        self.opened = time.monotonic()
        self.closed: float | None = None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout(5))
        self.sock.sendall(start)
        self.sock.setblocking(False)

    @property
    def lifetime(self) -> float:
        return (self.closed or time.monotonic()) - self.opened

    def poll(self, trickle: bytes | None = b"X") -> None:
        """Note whether the hub has closed the connection; if not, send it ``trickle``."""
        if self.closed is not None:
            return
        try:
            if self.sock.recv(4096) == b"":
                self.closed = time.monotonic()
                return
        except BlockingIOError:
            pass
        except OSError:  # reset by the hub
            self.closed = time.monotonic()
            return
        if trickle:
            try:
                self.sock.send(trickle)
            except OSError:
                self.closed = time.monotonic()

    def close(self) -> None:
        self.sock.close()


def health(url: str) -> int | str:
    """GET /healthz on a fresh connection: the status, or the error."""
    try:
        return httpx.get(url + "/healthz", timeout=timeout(3)).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def slow_guard_lines(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if "HUB_MAX_CONNECTIONS" in line or "HUB_HEADER_TIMEOUT" in line]  # fmt: skip


def test_slowloris_past_the_open_file_limit_leaves_the_hub_answering(
    limited_hub: LimitedHub,
) -> None:
    """300 connections trickling headers, open-file limit 256: health checks and appends
    answer throughout, a WebSocket subscriber keeps its socket and every event, each slow
    connection is closed within HUB_HEADER_TIMEOUT, and the log says so in a few lines."""
    hub = limited_hub
    sid = f"slow-{uuid.uuid4().hex[:8]}"
    first = httpx.post(f"{hub.url}/api/streams/{sid}/events", headers=PLATFORM,
                       json={"opcode": 501, "payload": {"customer": "ali"}})  # fmt: skip
    assert first.status_code == 201
    with connect(f"{hub.ws_url}/ws/streams/{sid}?token=" + token("ops", "platform"),
                 open_timeout=timeout(5)) as ws:  # fmt: skip
        attackers = [Slow(hub.port, b"GET /healthz HTTP/1.1\r\nx-slow: ") for _ in range(300)]
        statuses: list[int | str] = []
        appends: list[int | str] = []
        started = time.monotonic()
        while time.monotonic() - started < 3 * HEADER_TIMEOUT:
            for a in attackers:
                a.poll()
            statuses.append(health(hub.url))
            try:
                appends.append(httpx.post(f"{hub.url}/api/streams/{sid}/events",
                                          headers=PLATFORM, json={"opcode": 301},
                                          timeout=timeout(3)).status_code)  # fmt: skip
            except httpx.HTTPError as exc:
                appends.append(type(exc).__name__)
            time.sleep(0.5)
        for a in attackers:
            a.poll(trickle=None)
        lifetimes = sorted(a.lifetime for a in attackers)
        still_open = sum(a.closed is None for a in attackers)
        for a in attackers:
            a.close()

        seqs = []
        for _ in range(1 + appends.count(201)):
            frame = json.loads(ws.recv(timeout=timeout(5)))
            while frame.get("type") != "event":
                frame = json.loads(ws.recv(timeout=timeout(5)))
            seqs.append(frame["seq"])
    metrics = parse_metrics(httpx.get(hub.url + "/metrics").text)
    evicted = metrics.get("hub_connections_evicted_total", 0)
    timed_out = metrics.get('hub_http_read_timeouts_total{phase="headers"}', 0)
    lines = slow_guard_lines(hub.log())
    figures("slowloris", attackers=300, nofile=NOFILE, health_checks=len(statuses),
            health_failures=sum(s != 200 for s in statuses), appends=len(appends),
            append_failures=sum(s != 201 for s in appends), still_open=still_open,
            longest_lived_s=round(lifetimes[-1], 2), median_lived_s=round(lifetimes[150], 2),
            evicted=evicted, header_timeouts=timed_out, log_lines=len(lines),
            max_connections=metrics.get("hub_connections_max"),
            open_fds=metrics.get("hub_open_fds"))  # fmt: skip

    assert len(statuses) >= 8
    assert all(s == 200 for s in statuses), statuses
    assert all(s == 201 for s in appends), appends
    assert seqs == list(range(1, 2 + len(appends)))  # the subscriber got every event, once
    assert still_open == 0
    assert lifetimes[-1] < HEADER_TIMEOUT + timeout(1.5)
    assert evicted + timed_out >= 300  # each one closed by the hub, counted
    assert metrics["hub_fd_limit"] == NOFILE
    assert metrics["hub_connections_max"] == NOFILE // 2 - 64
    assert metrics["hub_open_fds"] < NOFILE * 0.9
    assert 1 <= len(lines) <= 4, lines  # once a minute per kind, not once per connection


@pytest.mark.parametrize("limited_hub", ["httptools", "h11"], indirect=True)
def test_every_stage_of_a_request_has_a_deadline(limited_hub: LimitedHub) -> None:
    """A connection that sends nothing, trickles its headers, or trickles its body is closed
    on time, on either of uvicorn's HTTP implementations; a keep-alive client is served."""
    hub = limited_hub
    post = (b"POST /api/streams/s-1/events HTTP/1.1\r\nhost: hub\r\n" + b"authorization: "
            + PLATFORM["authorization"].encode() + b"\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n{")  # fmt: skip
    silent = Slow(hub.port, b"")
    headers = Slow(hub.port, b"GET /healthz HTTP/1.1\r\n")
    body = Slow(hub.port, post)
    started = time.monotonic()
    while time.monotonic() - started < BODY_TIMEOUT + timeout(2):
        silent.poll(trickle=None)
        headers.poll()
        body.poll(b" ")
        time.sleep(0.2)
    with httpx.Client(base_url=hub.url) as client:  # keep-alive: one connection, reused
        served = [client.get("/healthz").status_code for _ in range(3)]
    figures("deadlines", http=limited_hub.http, silent_s=round(silent.lifetime, 2),
            headers_s=round(headers.lifetime, 2), body_s=round(body.lifetime, 2))  # fmt: skip
    for conn in (silent, headers, body):
        conn.close()
    for conn in (silent, headers):
        assert conn.closed is not None
        assert HEADER_TIMEOUT - 0.1 <= conn.lifetime < HEADER_TIMEOUT + timeout(1)
    assert body.closed is not None  # its deadline runs from the end of its headers
    assert BODY_TIMEOUT - 0.1 <= body.lifetime < BODY_TIMEOUT + timeout(1)
    assert served == [200, 200, 200]


def test_websockets_leave_room_for_http(tmp_path: Path) -> None:
    """At HUB_MAX_CONNECTIONS=10, nine WebSockets open and the tenth upgrade gets 503, while
    health checks still answer."""
    hub = LimitedHub(tmp_path / "data", {"HUB_MAX_CONNECTIONS": "10"}, NOFILE).start()
    url = f"{hub.ws_url}/ws/inbox?token=" + token("ops", "platform")
    try:
        with contextlib.ExitStack() as sockets:
            for _ in range(9):
                sockets.enter_context(connect(url, open_timeout=timeout(5)))
            with pytest.raises(InvalidStatus) as refused:
                sockets.enter_context(connect(url, open_timeout=timeout(5)))
            assert refused.value.response.status_code == 503
            assert [health(hub.url) for _ in range(3)] == [200, 200, 200]
            metrics = parse_metrics(httpx.get(hub.url + "/metrics").text)
        assert metrics['hub_connections_refused_total{kind="websocket"}'] == 1
    finally:
        hub.stop()
