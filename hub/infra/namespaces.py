"""Tenant databases created on demand as namespaces of a libSQL server (sqld's admin API).

sqld started with ``--enable-namespaces`` serves one database per namespace and picks the
namespace of a request from its ``Host``: the first label of a host with a dot
(``bab-hara.db.internal`` -> ``bab-hara``); a host without one (``localhost``, ``db``) gets
the ``default`` namespace. So ``HUB_TENANT_DB=ws://{tenant}.db.internal:8080`` gives every
tenant its own database, once its namespace exists: sqld refuses a statement for a
namespace nobody created ("Namespace `x` doesn't exist"). Namespaces are created through
sqld's admin API (``--admin-listen-addr``), whose address is ``HUB_TENANT_ADMIN_URL``:

- ``POST /v1/namespaces/{name}/create`` with a JSON body (``{}``) creates one: 200; an
  existing one is 400 "Namespace `x` already exists", which is success here, so two hub
  instances creating the same tenant at once both succeed (sqld creates it once);
- ``GET /v1/namespaces/{name}/config`` is 200 for a namespace that exists, 404 otherwise;
- with ``--admin-auth-key KEY``, every call needs ``Authorization: Basic KEY`` (the key as
  it is, not base64 of a user and password): the key is the password of
  ``HUB_TENANT_ADMIN_URL`` (``http://:KEY@db.internal:9090``) and never logged.

:class:`Namespaces` makes at most ``ADMIN_CONCURRENCY`` of these calls at once and
remembers the namespaces it saw exist (an LRU of ``KNOWN_MAX`` names). A namespace that does
not exist is never remembered: another instance may create it at any moment. The admin API
is asked only when a tenant's database fails at its first use (a tenant that exists costs
no admin call, after a restart too), and to create one: when that happens, and what a read
of a tenant that has no namespace answers, is :class:`hub.infra.db.RemoteDatabase`'s
business (a read never creates one).

libsql-client 0.3.1 takes the ``Host`` from the URL it is given and has no way to set
another one or to resolve names itself, so ``{tenant}.<domain>`` must resolve to the server:
a wildcard DNS record (``*.db.internal``) in a deployment (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from hub.infra.db import DatabaseError, Namespace

__all__ = ["ADMIN_CONCURRENCY", "KNOWN_MAX", "Namespaces", "namespace_of"]

ADMIN_TIMEOUT_S = 10.0  # one admin API call, its wait for a turn and connection included
ADMIN_CONCURRENCY = 4  # admin API calls in flight at once, per hub instance
KNOWN_MAX = 100_000  # namespaces remembered to exist (least recently used forgotten first)
DEFAULT = "default"  # sqld's namespace for a host without a dot


def namespace_of(url: str) -> str:
    """The namespace sqld serves ``url`` from: the first label of its host when the host has
    a dot, else ``default`` (sqld's rule)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    label, dot, _ = host.partition(".")
    return label if dot and label else DEFAULT


class Namespaces:
    """The admin API of the server holding the tenant DBs (see the module docstring).

    ``reserved``: namespaces no tenant may have (``default`` always, and those of the hub's
    other databases on the server): :meth:`reserved` says which tenant ids map to one.
    """

    def __init__(self, admin_url: str, *, reserved: Iterable[str] = ()) -> None:
        parts = urllib.parse.urlsplit(admin_url)
        if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
            raise ValueError("HUB_TENANT_ADMIN_URL must be an http:// or https:// URL")
        key = urllib.parse.unquote(parts.password) if parts.password else None
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        self.base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"),
                                             "", ""))  # fmt: skip
        self._headers = {"authorization": f"Basic {key}"} if key else {}
        self._reserved = {DEFAULT, *reserved}
        self._known: OrderedDict[str, None] = OrderedDict()
        self._limit: asyncio.Semaphore | None = None
        self._session: Any = None  # an aiohttp.ClientSession, made in the running loop
        self.calls = 0  # admin API calls made (the tests count them)

    def of(self, name: str) -> Namespace:
        """Namespace ``name``, for :class:`hub.infra.db.RemoteDatabase`."""
        return _Handle(self, name)

    def reserved(self, name: str) -> bool:
        return name in self._reserved

    def known(self, name: str) -> bool:
        """Whether ``name`` was seen to exist (no call)."""
        if name in self._known:
            self._known.move_to_end(name)
            return True
        return False

    def _remember(self, name: str) -> None:
        self._known[name] = None
        self._known.move_to_end(name)
        while len(self._known) > KNOWN_MAX:
            self._known.popitem(last=False)

    async def exists(self, name: str) -> bool:
        """Whether namespace ``name`` exists (remembered once it does)."""
        if self.known(name):
            return True
        status, body = await self._call("GET", f"{name}/config", None)
        if status == 200:
            self._remember(name)
            return True
        if status == 404:
            return False
        raise self._failure(status, body)

    async def create(self, name: str) -> None:
        """Create namespace ``name``; one that exists already is no error."""
        if self.known(name):
            return
        status, body = await self._call("POST", f"{name}/create", {})
        if status == 200 or (status == 400 and "already exists" in body):
            self._remember(name)
            return
        raise self._failure(status, body)

    def _failure(self, status: int, body: str) -> DatabaseError:
        if status in (401, 403):
            return DatabaseError(f"the tenant namespaces' admin API ({self.base}) refused"
                                 " HUB_TENANT_ADMIN_URL's key")  # fmt: skip
        return DatabaseError(f"the tenant namespaces' admin API ({self.base}) answered"
                             f" {status}: {body[:200]}")  # fmt: skip

    async def _call(self, method: str, path: str, body: Any) -> tuple[int, str]:
        """One admin API call: (status, sqld's message). Waiting for a turn counts in its
        ``ADMIN_TIMEOUT_S``, so no caller waits longer than that."""
        import aiohttp  # libsql-client's (the turso extra), as every remote database needs

        if self._limit is None:
            self._limit = asyncio.Semaphore(ADMIN_CONCURRENCY)
        url = f"{self.base}/v1/namespaces/{path}"
        data = None if body is None else json.dumps(body)
        headers = {} if body is None else {"content-type": "application/json"}
        try:
            async with asyncio.timeout(ADMIN_TIMEOUT_S), self._limit:
                if self._session is None:
                    self._session = aiohttp.ClientSession(headers=self._headers)
                self.calls += 1
                async with self._session.request(method, url, data=data,
                                                 headers=headers) as resp:  # fmt: skip
                    return int(resp.status), _message(await resp.text())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise DatabaseError(
                f"the tenant namespaces' admin API ({self.base}) is unreachable or slow:"
                f" {type(exc).__name__}: {exc}"
            ) from None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class _Handle:
    def __init__(self, namespaces: Namespaces, name: str) -> None:
        self.namespaces = namespaces
        self.name = name

    async def exists(self) -> bool:
        return await self.namespaces.exists(self.name)

    async def create(self) -> None:
        await self.namespaces.create(self.name)


def _message(text: str) -> str:
    """sqld's ``{"error": "..."}``, or the body as it came."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])
    return text
