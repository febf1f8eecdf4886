"""Shared fixtures: real hub servers (uvicorn in a subprocess on a free port) and tokens."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hub.domain.auth import issue_token
from tests.ports import free_port

SECRET = "test-secret-please-ignore-0123456789abcdef"
# One factor scales every timeout in the suite (slow CI machines set HUB_TEST_TIMEOUT_FACTOR).
TIMEOUT_FACTOR = float(os.environ.get("HUB_TEST_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR




def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text as {series: value} (labels kept in the series name)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def token(tenant: str, role: str, **kw: float) -> str:
    return issue_token(SECRET, tenant, role, **kw)


def auth(tenant: str, role: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(tenant, role)}"}


class HubProcess:
    """A hub served by uvicorn in its own process, as users run it."""

    log_level = "warning"  # "info" logs every request (as production does)
    graceful_timeout = 5.0  # seconds requests in flight get at SIGTERM (--graceful-timeout)
    # Where it listens, and what its command runs under (tests/netns.py: another host).
    host = "127.0.0.1"
    prefix: tuple[str, ...] = ()

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"hub-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def start(self, wait: float = 15.0) -> HubProcess:
        env = dict(os.environ)
        env.update(
            HUB_DATA_DIR=str(self.data_dir),
            HUB_SECRET=SECRET,
            PYTHONUNBUFFERED="1",
            PYTHONFAULTHANDLER="1",  # a hub stop() gives up on dumps its threads (SIGABRT)
            PYTHONWARNINGS="error::ResourceWarning,error::RuntimeWarning",
        )
        env.update(self.extra_env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "hub", "serve", "--host", self.host,
             "--port", str(self.port),
             "--log-level", self.log_level, "--graceful-timeout", str(self.graceful_timeout)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, wait: float = 20.0) -> int:
        """Signal the process and wait for it; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout(wait))
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's stack
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            raise AssertionError(f"hub did not exit within {wait:.0f} s of signal {sig}:\n"
                                 f"{self.log()[-6000:]}") from None  # fmt: skip
        if sig == signal.SIGTERM:
            self.check_clean_shutdown()
        return code

    # What a clean shutdown never prints: leaked tasks, unclosed resources, crashes.
    LEAKS = ("Task was destroyed", "Exception ignored", "ResourceWarning",
             "coroutine was never awaited", "Traceback (most recent call last)")  # fmt: skip

    def check_clean_shutdown(self) -> None:
        """Fail if the hub's log shows a leaked task, an unclosed resource or a crash."""
        text = self.log()
        found = [marker for marker in self.LEAKS if marker in text]
        if found:
            raise AssertionError(f"hub log shows {found}:\n{text[-4000:]}")

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def hub_factory(tmp_path: Path) -> Iterator[Callable[..., HubProcess]]:
    """Start hubs on demand (``hub_factory(data_dir=..., env=...)``); all stopped at the end."""
    started: list[HubProcess] = []

    def make(data_dir: Path | None = None, env: dict[str, str] | None = None) -> HubProcess:
        h = HubProcess(data_dir or tmp_path / "data", env).start()
        started.append(h)
        return h

    yield make
    failures: list[Exception] = []
    for h in started:  # every hub stopped, whichever one's log or exit shows a problem
        if h.proc is not None and h.proc.poll() is None:
            try:
                h.stop()
            except AssertionError as exc:  # (a hub that did not exit: killed by stop())
                failures.append(exc)
    if failures:
        raise failures[0]


@pytest.fixture
def hub(hub_factory: Callable[..., HubProcess]) -> HubProcess:
    """One running hub on a fresh data dir."""
    return hub_factory()


class RedisServer:
    """A real ``redis-server`` on a free port, no persistence (``--save "" --appendonly no``).

    ``stop()`` then ``start()`` restarts it on the same port (an outage the hubs must survive).
    """

    # Where it listens, and what its command runs under (tests/netns.py: another host).
    host = "127.0.0.1"
    prefix: tuple[str, ...] = ()

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def extra_args(self) -> list[str]:
        """More ``redis-server`` arguments (a cluster node adds its own)."""
        return []

    def start(self, wait: float = 10.0) -> RedisServer:
        import shutil

        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [*self.prefix, binary, "--port", str(self.port), "--bind", self.host, "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.log_path),
             *self.extra_args()],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout(wait)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited early:\n{self.log()}")
            try:
                if self.command("PING") is True:
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer PING:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(self, *args: str | int) -> object:
        """Run one command on a fresh connection (redis-py's reply parsing, bytes kept)."""
        import redis

        try:
            with redis.Redis(host=self.host, port=self.port, socket_timeout=timeout(5),
                             socket_connect_timeout=timeout(2)) as client:  # fmt: skip
                return client.execute_command(*args)
        except redis.ConnectionError as exc:
            raise OSError(str(exc)) from exc

    def stop(self, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout(wait))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server for this test, stopped at teardown."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


# -- a real libSQL server (sqld, tests/sqld.py) --------------------------------------------

from tests.sqld import Sqld  # noqa: E402  (kept with the fixtures that use it)


@pytest.fixture
def sqld_factory(tmp_path: Path) -> Iterator[Callable[..., Sqld]]:
    """Start real sqld servers on demand (``sqld_factory("name", jwt_key=...)``), each on
    its own free port with its data in ``tmp_path / "sqld-<name>"``; all stopped at the end.
    """
    started: list[Sqld] = []

    def make(name: str = "db", *, jwt_key: str | None = None) -> Sqld:
        server = Sqld(tmp_path / f"sqld-{name}", jwt_key=jwt_key).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def sqld(sqld_factory: Callable[..., Sqld]) -> Sqld:
    """One running sqld serving a fresh database."""
    return sqld_factory()
