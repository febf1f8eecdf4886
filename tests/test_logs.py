"""The hub's logs (docs/protocol.md §9): HUB_LOG_FORMAT=text|json for every logger, uvicorn's
access log included; one start-up line naming the streams DB, Redis and the archive without
credentials; and no token in any log line, whichever way it reached the hub."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from hub.config import Settings
from hub.edge.logs import HubFormatter, redact, safe_url, startup_line
from tests.conftest import SECRET, HubProcess, free_port, timeout, token

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL) +"
    r"[\w.]+: "
)

# -- the pieces ------------------------------------------------------------------------------


def test_redact_takes_out_every_kind_of_token() -> None:
    jwt_like = token("ali", "customer")
    cases = {
        f"GET /ws/inbox?since=0&token={jwt_like} HTTP/1.1": "token=[redacted] HTTP/1.1",
        "GET /x?token=plain-secret&since=3": "token=[redacted]&since=3",
        "libsql://db.example?authToken=abc.def": "authToken=[redacted]",
        "(b'authorization', b'Bearer plain-secret')": "b'Bearer [redacted]'",
        f"authorization: bearer {jwt_like}": "bearer [redacted]",
        f"a JWT alone {jwt_like} here": "a JWT alone [redacted] here",
    }
    for line, expected in cases.items():
        out = redact(line)
        assert expected in out, (line, out)
        assert "plain-secret" not in out
        assert jwt_like not in out
        assert jwt_like.rsplit(".", 1)[1] not in out  # not even the signature
    assert redact("nothing secret: token count 3") == "nothing secret: token count 3"


def test_safe_url_drops_credentials() -> None:
    assert safe_url("redis://:pw@cache:6379/0") == "redis://cache:6379/0"
    assert safe_url("rediss://user:pw@cache:6380/1") == "rediss://cache:6380/1"
    assert safe_url("libsql://db.turso.io?authToken=abc&tls=1") == (
        "libsql://db.turso.io?authToken=[redacted]&tls=1"
    )
    assert safe_url("file:/data/streams.db") == "file:/data/streams.db"
    assert safe_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert safe_url(None) == "none"


def test_startup_line_names_the_dependencies_without_credentials(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, secret="the-secret",
        streams_db="libsql://hub:pw1@streams.example?authToken=tok1",
        redis_url="redis://:pw2@cache.example:6379/0", db_auth_token="tok3",
        archive_url="s3://bucket/hub",
    )  # fmt: skip
    message, fields = startup_line(settings)
    for secret in ("pw1", "tok1", "pw2", "tok3", "the-secret"):
        assert secret not in message
        assert secret not in json.dumps(fields)
    assert "streams DB libsql://streams.example?authToken=[redacted]" in message
    assert "Redis redis://cache.example:6379/0" in message
    assert "archive s3://bucket/hub" in message
    plain, _ = startup_line(Settings(data_dir=tmp_path, secret="s"))
    assert "Redis none" in plain


def record(msg: str, *args: object, name: str = "hub", **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args or None, None)
    rec.__dict__.update(extra)
    return rec


def test_the_two_formats() -> None:
    """json: one object with time, level, logger, message, fields; text: time level logger."""
    access = record('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/x?token=abc", "1.1",
                    200, name="uvicorn.access")  # fmt: skip
    obj = json.loads(HubFormatter("json").format(access))
    assert set(obj) == {"time", "level", "logger", "message", "fields"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", obj["time"])
    assert (obj["level"], obj["logger"]) == ("INFO", "uvicorn.access")
    assert obj["message"] == '127.0.0.1:5000 - "GET /x?token=[redacted] HTTP/1.1" 200'
    assert obj["fields"] == {"client": "127.0.0.1:5000", "method": "GET",
                             "path": "/x?token=[redacted]", "http_version": "1.1",
                             "status": 200}  # fmt: skip
    extra = json.loads(HubFormatter("json").format(record("hi %s", "there", streams_db="x")))
    assert extra["fields"] == {"streams_db": "x"}
    assert extra["message"] == "hi there"
    text = HubFormatter("text").format(access)
    assert TEXT_LINE.match(text), text
    assert text.endswith('uvicorn.access: 127.0.0.1:5000 - "GET /x?token=[redacted] HTTP/1.1" 200')
    with pytest.raises(ValueError, match="text or json"):
        HubFormatter("xml")


# -- a real hub ------------------------------------------------------------------------------


class LoggingHub(HubProcess):
    """``hub serve`` at a log level of the test's choosing."""

    def __init__(self, data_dir: Path, env: dict[str, str], level: str) -> None:
        super().__init__(data_dir, env)
        self.log_level = level


@pytest.fixture
def start_hub(tmp_path: Path) -> Iterator[Callable[..., LoggingHub]]:
    started: list[LoggingHub] = []

    def start(fmt: str, level: str = "info", **env: str) -> LoggingHub:
        h = LoggingHub(tmp_path / f"data-{len(started)}", {"HUB_LOG_FORMAT": fmt, **env}, level)
        started.append(h)
        return h.start()  # type: ignore[return-value]

    yield start
    for h in started:
        if h.proc is not None and h.proc.poll() is None:
            h.stop()


def use_tokens(url: str, ws_url: str) -> list[str]:
    """Requests that carry tokens every way the hub takes them (and some it refuses);
    returns the secrets that must not appear in the log."""
    good = token("ali", "customer")
    platform = token("ops", "platform")
    plain = "not-a-jwt-but-secret-4242"
    with httpx.Client(base_url=url, timeout=timeout(10)) as c:
        c.get(f"/api/streams/ord-x?token={good}")
        c.get("/api/streams/ord-x", headers={"authorization": f"Bearer {platform}"})
        c.get("/api/drivers/me", headers={"authorization": f"Bearer {plain}"})
        c.get(f"/api/orders/ord-x?since=0&token={plain}")
        c.post("/api/streams/ord-x/events", headers={"authorization": f"Bearer {good}"},
               json={"opcode": 501, "payload": {"customer": "ali", "restaurant": "bab-hara"}})
    for path in (f"/ws/inbox?since=0&token={good}", f"/ws/streams/ord-x?token={good}",
                 f"/ws/inbox?token={plain}"):  # fmt: skip
        try:
            with connect(ws_url + path, open_timeout=timeout(10)) as ws:
                ws.recv(timeout=timeout(5))
        except Exception:
            pass  # a refused token closes the socket: what matters is the log
    with connect(ws_url + "/ws/inbox?since=0", open_timeout=timeout(10),
                 additional_headers={"authorization": f"Bearer {platform}"}) as ws:  # fmt: skip
        ws.recv(timeout=timeout(5))
    return [good, platform, plain, *(t.rsplit(".", 1)[1] for t in (good, platform))]


def assert_no_token(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"a token reached the log: {secret[:12]}..."
    assert SECRET not in text


def test_json_log_every_line_an_object_tokens_redacted(
    start_hub: Callable[..., LoggingHub],
) -> None:
    """HUB_LOG_FORMAT=json: every line of `hub serve` is one JSON object (uvicorn's access
    and error logs included), the start-up line names the streams DB, Redis and archive,
    and no token is written."""
    hub = start_hub("json")
    secrets = use_tokens(hub.url, hub.ws_url)
    hub.stop()
    lines = [line for line in hub.log().splitlines() if line.strip()]
    objects = [json.loads(line) for line in lines]  # each line parses
    for obj in objects:
        assert {"time", "level", "logger", "message", "fields"} <= set(obj), obj
    loggers = {o["logger"] for o in objects}
    assert {"hub", "uvicorn.error", "uvicorn.access"} <= loggers, loggers
    starts = [o for o in objects if o["logger"] == "hub" and "starting" in o["message"]]
    assert len(starts) == 1, starts
    fields = starts[0]["fields"]
    assert fields["streams_db"] == f"file:{hub.data_dir / 'streams.db'}"
    assert fields["redis"] == "none"
    assert fields["archive"] == f"file://{(hub.data_dir / 'archive').resolve()}"
    access = [o for o in objects if o["logger"] == "uvicorn.access"]
    assert any("token=[redacted]" in o["fields"]["path"] for o in access), access
    assert any("[redacted]" in o["message"] for o in objects if o["logger"] == "uvicorn.error")
    assert_no_token(hub.log(), secrets)


def test_text_log_at_trace_level_tokens_redacted(start_hub: Callable[..., LoggingHub]) -> None:
    """HUB_LOG_FORMAT=text (the default) at --log-level trace, where uvicorn logs every ASGI
    message with its headers: each line has time, level and logger, and no token is
    written, from a query string or an Authorization header."""
    hub = start_hub("text", level="trace")
    secrets = use_tokens(hub.url, hub.ws_url)
    hub.stop()
    text = hub.log()
    assert "authorization" in text.lower()  # the headers were logged, redacted
    assert "Bearer [redacted]" in text
    lines = [line for line in text.splitlines() if line.strip()]
    starts = [line for line in lines if " hub: hub " in line and "starting" in line]
    assert len(starts) == 1, starts
    assert "Redis none" in starts[0]
    for line in lines:
        assert TEXT_LINE.match(line), line
    assert_no_token(text, secrets)


def test_plain_uvicorn_gets_the_format_and_the_startup_line(tmp_path: Path) -> None:
    """`uvicorn hub.app:app` (uvicorn's own logging config): from the app's start on, uvicorn's
    lines and the hub's are in HUB_LOG_FORMAT, the start-up line included, tokens redacted."""
    port = free_port()
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path / "data"), "HUB_SECRET": SECRET,
           "HUB_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    log_path = tmp_path / "uvicorn.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "hub.app:app", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout(15)
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        secrets = use_tokens(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout(20))
    text = log_path.read_text()
    objects = []
    for line in text.splitlines():
        if line.startswith("{"):
            objects.append(json.loads(line))
    starts = [o for o in objects if o["logger"] == "hub" and "starting" in o["message"]]
    assert len(starts) == 1, text
    assert any(o["logger"] == "uvicorn.access" for o in objects), text
    assert_no_token(text, secrets)
