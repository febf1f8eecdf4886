"""The command line as a newcomer uses it: hub demo --play, hub token, hub serve's $PORT,
hub check, hub --version and --help, configuration errors and missing extras (one line, exit
2), and the limits that are settings (docs/protocol.md §1, §8, §9)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest

from tests.conftest import SECRET, HubProcess, RedisServer, free_port, timeout, token
from tests.sqld import Sqld


def run_hub(*args: str, data: Path, extra: dict[str, str] | None = None,
            seconds: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {**os.environ, "HUB_DATA_DIR": str(data), "HUB_SECRET": SECRET, **(extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        env=env, capture_output=True, text=True, timeout=timeout(seconds), check=False,
    )  # fmt: skip


def test_demo_play_drives_the_seed_order_and_prints_its_table(tmp_path: Path) -> None:
    """`hub demo --play --exit` seeds, serves, plays Steps 1-11 and prints the 12-row table."""
    port = free_port()
    out = run_hub("demo", "--play", "--exit", "--pause", "0", "--port", str(port),
                  data=tmp_path / "data")  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for page in ("customer.html#token=", "kitchen.html#token=", "driver.html#token="):
        assert f"http://127.0.0.1:{port}/{page}" in text
    assert re.search(rf"http://127\.0\.0\.1:{port}/#customer=\S+&kitchen=\S+&driver=\S+", text)
    console = re.search(rf"http://127\.0\.0\.1:{port}/console\.html#token=(\S+)", text)
    assert console, text
    assert jwt.decode(console[1], SECRET, algorithms=["HS256"])["role"] == "platform"
    assert "Step 11 stream archived" in text
    rows = [line for line in text.splitlines() if re.match(r"\|\s+\d+ \|", line)]
    names = [row.split("|")[3].strip() for row in rows]
    assert names == [
        "ORDER_CREATE", "INVOICE_PAYMENT", "TASK_CREATE", "TASK_START", "SALE_OUT", "SALE_OUT",
        "TASK_DONE", "TASK_ASSIGN", "ORDER_SHIP", "ORDER_DELIVER", "ACCOUNT_PAYOUT",
        "ACCOUNT_PAYIN",
    ]  # fmt: skip
    assert (tmp_path / "data" / "archive" / "ord-5001.json").exists()


def test_token_is_signed_with_the_configured_secret(tmp_path: Path) -> None:
    """`hub token TENANT --role ROLE` prints an HS256 token the hub accepts; bad input is 2."""
    out = run_hub("token", "bab-hara", "--role", "restaurant", data=tmp_path)
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("bab-hara", "restaurant")
    assert run_hub("token", "Not_A_Tenant", "--role", "customer", data=tmp_path).returncode == 2


def test_secret_is_generated_once_into_the_data_dir(tmp_path: Path) -> None:
    """Without HUB_SECRET the secret is generated once into $HUB_DATA_DIR/secret (0600), with a
    warning."""
    env = {k: v for k, v in os.environ.items() if k != "HUB_SECRET"}
    cmd = [sys.executable, "-m", "hub", "token", "ali", "--role", "customer"]
    env["HUB_DATA_DIR"] = str(tmp_path)
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    secret = (tmp_path / "secret").read_text().strip()
    assert (tmp_path / "secret").stat().st_mode & 0o777 == 0o600
    for out in (first, second):
        jwt.decode(out.stdout.strip(), secret, algorithms=["HS256"])
    # The run that generated the secret says so (its tokens are only good for this data dir).
    assert "warning" in first.stderr, first.stderr
    assert str(tmp_path / "secret") in first.stderr, first.stderr
    assert len(first.stderr.strip().splitlines()) == 1, first.stderr
    assert second.stderr == ""


def test_serve_listens_on_PORT_when_no_port_is_given(tmp_path: Path) -> None:
    """`hub serve` without --port serves on $PORT (Railway, Heroku)."""
    import time

    import httpx

    port = free_port()
    env = {**os.environ, "HUB_DATA_DIR": str(tmp_path), "HUB_SECRET": SECRET, "PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "hub", "serve", "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout(15)
        status = None
        while time.monotonic() < deadline and status != 200:
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
            except httpx.HTTPError:
                time.sleep(0.05)
        assert status == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=timeout(20))
    assert "Traceback" not in err.decode()


# -- hub --version, --help ------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def hub_settings_read() -> set[str]:
    """Every environment variable hub/config.py reads (and PORT, read by the CLI)."""
    source = (ROOT / "hub" / "config.py").read_text()
    return set(re.findall(r'"(HUB_[A-Z0-9_]+)"', source)) | {"PORT"}


def test_version_is_the_distribution_version(tmp_path: Path) -> None:
    """`hub --version` prints the version pyproject.toml declares."""
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    out = run_hub("--version", data=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["hub", declared], out.stdout


@pytest.mark.parametrize("command", [[], ["serve"], ["demo"], ["seed"], ["token"], ["check"]])
def test_help_is_plain_text_and_lists_the_environment(command: list[str]) -> None:
    """Every --help is plain text (no RST markup) and lists each variable with its default."""
    from hub.edge.cli import build_parser

    parser = build_parser()
    if command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[command[0]]
    text = parser.format_help()
    for markup in ("``", ":class:", ":func:", ":mod:", "**"):
        assert markup not in text, (markup, text)
    listed = set(re.findall(r"^  ([A-Z][A-Z0-9_]+)  ", text, re.MULTILINE))
    assert listed == hub_settings_read(), listed ^ hub_settings_read()
    assert text.count("default: ") >= len(listed)


def test_every_setting_is_documented() -> None:
    """Each variable the hub reads is in the README and in docs/protocol.md §1."""
    readme = (ROOT / "README.md").read_text()
    protocol = (ROOT / "docs" / "protocol.md").read_text()
    section1 = protocol.split("\n## 1. ", 1)[1].split("\n## 2. ", 1)[0]
    for name in sorted(hub_settings_read()):
        assert f"`{name}`" in readme, name
        assert f"`{name}`" in section1, name


# -- configuration errors and missing extras ---------------------------------------------------


BAD_SETTINGS = [
    ("HUB_MAX_BATCH", "500", "HUB_MAX_BATCH must be at most 100"),
    ("HUB_MAX_PAYLOAD_BYTES", "1000000", "HUB_MAX_PAYLOAD_BYTES must be at most 65536"),
    ("HUB_MAX_BODY_BYTES", "lots", "HUB_MAX_BODY_BYTES must be a whole number"),
    ("HUB_WS_MAX_PER_TENANT", "0", "HUB_WS_MAX_PER_TENANT must be at least 1"),
    ("HUB_WS_QUEUE_FRAMES", "-1", "HUB_WS_QUEUE_FRAMES must be at least 1"),
    ("HUB_WS_MAX_FRAME_BYTES", "2000000", "must not exceed HUB_WS_MAX_SIZE"),
    ("HUB_LOG_FORMAT", "xml", "HUB_LOG_FORMAT must be text or json"),
    ("HUB_TENANT_DB", "file:/tmp/all-tenants.db", "HUB_TENANT_DB must contain {tenant}"),
    ("HUB_STREAMS_DB", "postgres://db/hub", "HUB_STREAMS_DB must be a file:"),
    ("HUB_ARCHIVE_URL", "ftp://x/y", "unsupported archive URL"),
    ("HUB_HEADER_TIMEOUT", "0", "HUB_HEADER_TIMEOUT must be more than 0"),
]


@pytest.mark.parametrize(("command", "name", "value", "says"), [
    *(("check", *bad) for bad in BAD_SETTINGS),
    ("serve", *BAD_SETTINGS[0]),
    ("serve", *BAD_SETTINGS[9]),
    ("seed", *BAD_SETTINGS[7]),
    ("demo", *BAD_SETTINGS[6]),
])  # fmt: skip
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path: Path, command: str, name: str,
                                              value: str, says: str) -> None:  # fmt: skip
    """`hub check` (and every other command) refuses a bad setting before doing anything."""
    out = run_hub(command, "--port", "1", data=tmp_path / "data", extra={name: value},
                  seconds=30) if command in {"serve", "demo"} else \
        run_hub(command, data=tmp_path / "data", extra={name: value}, seconds=30)  # fmt: skip
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("hub: "), out.stderr
    assert says in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def run_without(module: str, *args: str, data: Path,
                extra: dict[str, str]) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The hub command with ``module`` (an extra's library) not installed."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from hub.edge.cli import main\n"
            f"raise SystemExit(main({list(args)!r}))")  # fmt: skip
    env = {**os.environ, "HUB_DATA_DIR": str(data), "HUB_SECRET": SECRET, **extra}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout(30), check=False)  # fmt: skip


@pytest.mark.parametrize(("command", "module", "extra", "setting"), [
    ("check", "redis", "redis", {"HUB_REDIS_URL": "redis://127.0.0.1:1/0"}),
    ("check", "libsql_client", "turso", {"HUB_STREAMS_DB": "libsql://db.example.com"}),
    ("check", "libsql_client", "turso", {"HUB_PUBLIC_DB": "https://db.example.com"}),
    ("check", "obstore", "s3", {"HUB_ARCHIVE_URL": "s3://bucket/prefix"}),
    ("serve", "redis", "redis", {"HUB_REDIS_URL": "redis://127.0.0.1:1/0"}),
    ("demo", "libsql_client", "turso", {"HUB_TENANT_DB": "libsql://{tenant}.example.com"}),
    ("serve", "obstore", "s3", {"HUB_ARCHIVE_URL": "s3://bucket/prefix"}),
])  # fmt: skip
def test_a_missing_extra_is_one_line_and_exit_2(
    tmp_path: Path, command: str, module: str, extra: str, setting: dict[str, str]
) -> None:
    """A setting that needs an extra that is not installed: one line naming it, status 2."""
    args = [command] if command == "check" else [command, "--port", "1"]
    out = run_without(module, *args, data=tmp_path, extra=setting)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"the {extra} extra" in out.stderr
    assert f"hub-streams[{extra}]" in out.stderr


# -- hub check --------------------------------------------------------------------------------


def check_lines(out: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """``hub check``'s lines by dependency: {"streams DB": "ok ...", ...}."""
    found = {}
    for line in out.stdout.splitlines():
        m = re.match(r"(streams DB|streams read DB|public DB|tenant DBs|Redis|archive|secret)"
                     r"\s+(.*)$", line)  # fmt: skip
        if m:
            found[m[1]] = m[2]
    return found


def test_check_on_the_defaults_passes_and_creates_nothing(tmp_path: Path) -> None:
    """On a fresh data dir every dependency is ok (exit 0), one line each, and nothing is
    created: no database, no secret."""
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    out = subprocess.run([sys.executable, "-m", "hub", "check"],
                         env={**env, "HUB_DATA_DIR": str(data)}, capture_output=True, text=True,
                         timeout=timeout(30), check=False)  # fmt: skip
    assert out.returncode == 0, (out.stdout, out.stderr)
    lines = check_lines(out)
    assert set(lines) == {"streams DB", "public DB", "tenant DBs", "Redis", "archive", "secret"}
    assert all(v.startswith("ok ") for v in lines.values()), out.stdout
    assert "not created yet" in lines["streams DB"]
    assert not data.exists()


def test_check_reaches_what_is_configured(tmp_path: Path,
                                          redis_server: RedisServer) -> None:  # fmt: skip
    """After a seed, the databases are read; a running Redis answers; a Redis that does not
    answer fails the check (exit 1), and no credential of its URL is printed."""
    data = tmp_path / "data"
    assert run_hub("seed", data=data).returncode == 0
    ok = run_hub("check", data=data, extra={"HUB_REDIS_URL": redis_server.url})
    assert ok.returncode == 0, (ok.stdout, ok.stderr)
    lines = check_lines(ok)
    assert re.match(r"ok .*public\.db \(\d+ tables\)", lines["public DB"]), lines
    assert re.match(r"ok .*\(1 tenant DBs|ok .*\(\d+ tenant DBs", lines["tenant DBs"]), lines
    assert lines["Redis"].startswith("ok "), lines

    dead = f"redis://:hunter2-password@127.0.0.1:{free_port()}/0"
    bad = run_hub("check", data=data, extra={"HUB_REDIS_URL": dead})
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    lines = check_lines(bad)
    assert lines["Redis"].startswith("FAILED "), lines
    assert lines["streams DB"].startswith("ok ")
    assert lines["archive"].startswith("ok ")
    assert "hunter2" not in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr


def test_check_reaches_remote_databases_and_names_a_refused_token(
    tmp_path: Path, sqld_factory: Callable[..., Sqld]
) -> None:
    """Remote streams and public DBs and the streams DB's read replica (a real sqld that
    wants a JWT) are reached; a refused HUB_DB_AUTH_TOKEN fails each, named as such, and
    the token is never printed; a replica that does not answer fails its line alone."""
    from tests.sqld import ed25519_keypair, jwt

    seed, public_key = ed25519_keypair()
    server = sqld_factory(jwt_key=public_key)
    remote = {"HUB_STREAMS_DB": server.ws_url, "HUB_PUBLIC_DB": server.http_url,
              "HUB_STREAMS_READ_DB": server.http_url}  # fmt: skip
    names = ("streams DB", "streams read DB", "public DB")
    good = run_hub("check", data=tmp_path, extra={**remote, "HUB_DB_AUTH_TOKEN": jwt(seed)})
    assert good.returncode == 0, (good.stdout, good.stderr)
    lines = check_lines(good)
    for name in names:
        assert lines[name].startswith("ok "), lines
    wrong = jwt(ed25519_keypair()[0])
    bad = run_hub("check", data=tmp_path, extra={**remote, "HUB_DB_AUTH_TOKEN": wrong})
    assert bad.returncode == 1, (bad.stdout, bad.stderr)
    lines = check_lines(bad)
    for name in names:
        assert lines[name].startswith("FAILED "), lines
        assert "auth token" in lines[name], lines
    assert wrong not in bad.stdout + bad.stderr
    assert wrong.rsplit(".", 1)[1] not in bad.stdout + bad.stderr

    gone = f"http://user:replica-password@127.0.0.1:{free_port()}"
    down = run_hub("check", data=tmp_path, extra={**remote, "HUB_DB_AUTH_TOKEN": jwt(seed),
                                                 "HUB_STREAMS_READ_DB": gone})  # fmt: skip
    assert down.returncode == 1, (down.stdout, down.stderr)
    lines = check_lines(down)
    assert lines["streams read DB"].startswith("FAILED "), lines
    assert lines["streams DB"].startswith("ok "), lines
    assert lines["public DB"].startswith("ok "), lines
    assert "replica-password" not in down.stdout + down.stderr


def test_check_fails_an_unwritable_archive(tmp_path: Path) -> None:
    """An archive directory under a file (it can never be created) fails the check."""
    (tmp_path / "plain-file").write_text("x")
    out = run_hub("check", data=tmp_path / "data",
                  extra={"HUB_ARCHIVE_URL": f"file://{tmp_path / 'plain-file' / 'archive'}"})
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert check_lines(out)["archive"].startswith("FAILED "), out.stdout


# -- the limits are settings ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "field", "value"), [
    ("HUB_MAX_BODY_BYTES", "max_body_bytes", 4096),
    ("HUB_MAX_PAYLOAD_BYTES", "max_payload_bytes", 1000),
    ("HUB_MAX_BATCH", "max_batch", 10),
    ("HUB_WS_QUEUE_FRAMES", "ws_queue_frames", 16),
    ("HUB_WS_MAX_FRAME_BYTES", "ws_max_frame_bytes", 4096),
    ("HUB_WS_MAX_SIZE", "ws_max_size", 1 << 16),
    ("HUB_WS_MAX_PER_TENANT", "ws_max_per_token", 3),
    ("HUB_LOG_FORMAT", "log_format", "json"),
])  # fmt: skip
def test_each_limit_is_read_from_its_variable(tmp_path: Path, name: str, field: str,
                                              value: object) -> None:  # fmt: skip
    from hub.config import Settings

    settings = Settings.from_env({"HUB_DATA_DIR": str(tmp_path), "HUB_SECRET": "s",
                                  name: str(value)})  # fmt: skip
    assert getattr(settings, field) == value


def test_limits_set_in_the_environment_are_enforced(
    hub_factory: Callable[..., HubProcess],
) -> None:
    """The body, payload, batch, frame and per-tenant socket limits, lowered by their
    variables, are the ones a running hub enforces."""
    import httpx
    import websockets
    from websockets.sync.client import connect

    hub = hub_factory(env={
        "HUB_MAX_BODY_BYTES": "2048", "HUB_MAX_PAYLOAD_BYTES": "100", "HUB_MAX_BATCH": "2",
        "HUB_WS_MAX_FRAME_BYTES": "300", "HUB_WS_MAX_SIZE": "1024",
        "HUB_WS_MAX_PER_TENANT": "1",
    })  # fmt: skip
    platform = {"authorization": f"Bearer {token('ops', 'platform')}"}
    url = hub.url + "/api/streams/ord-limits/events"

    def refused(body: object) -> str:
        r = httpx.post(url, json=body, headers=platform, timeout=timeout(10))
        assert r.status_code == 413, r.text
        return str(r.json()["error"]["code"])

    event = {"opcode": 303, "payload": {"note": "x"}}
    assert refused({"events": [event] * 3}) == "batch_too_large"
    assert refused({"opcode": 303, "payload": {"note": "x" * 150}}) == "too_large"
    assert refused({"events": [event, {"opcode": 303, "payload": {"n": "y" * 3000}}]}) \
        == "body_too_large"

    headers = {"authorization": f"Bearer {token('ali', 'customer')}"}
    ws = hub.ws_url + "/ws/inbox?since=0"
    with connect(ws, additional_headers=headers, open_timeout=timeout(10)) as first:
        assert json.loads(first.recv(timeout=timeout(10)))["type"] == "live"
        first.send('{"type":"ping","pad":"' + "x" * 300 + '"}')
        frame = json.loads(first.recv(timeout=timeout(10)))
        assert frame["error"]["code"] == "frame_too_large", frame
        # A second socket of the same tenant and role is over HUB_WS_MAX_PER_TENANT=1.
        with connect(ws, additional_headers=headers, open_timeout=timeout(10)) as second, \
                pytest.raises(websockets.ConnectionClosed) as closed:
            second.recv(timeout=timeout(10))
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4029
        # Over HUB_WS_MAX_SIZE the socket is closed 1009.
        with contextlib.suppress(websockets.ConnectionClosed):
            first.send("z" * 2000)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            first.recv(timeout=timeout(10))
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
