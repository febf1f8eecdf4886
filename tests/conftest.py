"""Shared fixtures: real hub servers (uvicorn in a subprocess on a free port) and tokens."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hub.auth import issue_token

SECRET = "test-secret-please-ignore-0123456789abcdef"
# One factor scales every timeout in the suite (slow CI machines set HUB_TEST_TIMEOUT_FACTOR).
TIMEOUT_FACTOR = float(os.environ.get("HUB_TEST_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    return seconds * TIMEOUT_FACTOR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def token(tenant: str, role: str, **kw: float) -> str:
    return issue_token(SECRET, tenant, role, **kw)


def auth(tenant: str, role: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(tenant, role)}"}


class HubProcess:
    """A hub served by uvicorn in its own process, as users run it."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"hub-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, wait: float = 15.0) -> HubProcess:
        env = dict(os.environ)
        env.update(
            HUB_DATA_DIR=str(self.data_dir),
            HUB_SECRET=SECRET,
            PYTHONUNBUFFERED="1",
            PYTHONWARNINGS="error::ResourceWarning,error::RuntimeWarning",
        )
        env.update(self.extra_env)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "serve", "--port", str(self.port),
             "--log-level", "warning", "--graceful-timeout", "5"],
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
            return self.proc.wait(timeout(wait))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

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
    for h in started:
        if h.proc is not None and h.proc.poll() is None:
            h.stop()


@pytest.fixture
def hub(hub_factory: Callable[..., HubProcess]) -> HubProcess:
    """One running hub on a fresh data dir."""
    return hub_factory()
