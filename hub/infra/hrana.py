"""Asking a libSQL server over WebSocket whether it takes our token, before any statement.

libsql-client 0.3.1 writes its first request right behind the Hrana ``hello``; a server
that refuses the token answers ``hello_error`` and closes, and the client then reports the
write to the closed socket ("Cannot write to closing transport") instead of the refusal.
:func:`check_token` sends the ``hello`` alone on a short-lived socket and reads the answer,
so an operator sees "refused the auth token" when that is what happened.
"""

from __future__ import annotations

import asyncio
import json

import websockets
from websockets.asyncio.client import connect

__all__ = ["TokenRefused", "check_token", "ws_url"]

SUBPROTOCOLS = [websockets.Subprotocol(p) for p in ("hrana3", "hrana2", "hrana1")]


class TokenRefused(Exception):
    """The server answered ``hello_error``: the token is missing, malformed or not valid."""


def ws_url(url: str) -> str | None:
    """The WebSocket URL of a ``libsql://``, ``wss://`` or ``ws://`` URL; None for HTTP ones
    (where every request carries the token and a refusal is a plain 401)."""
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "libsql":
        return f"wss://{rest}"
    if scheme in ("ws", "wss"):
        return f"{scheme}://{rest}"
    return None


async def check_token(url: str, token: str | None, *, timeout: float) -> None:
    """Raise :class:`TokenRefused` if the server at ``url`` refuses ``token``.

    Anything else (the server unreachable, not speaking Hrana, slow) is left for the real
    client to report: this check only tells a refused token apart.
    """
    target = ws_url(url)
    if target is None:
        return
    try:
        async with asyncio.timeout(timeout):
            async with connect(
                target, subprotocols=SUBPROTOCOLS, open_timeout=timeout, close_timeout=1
            ) as ws:
                await ws.send(json.dumps({"type": "hello", "jwt": token}))
                answer = json.loads(await ws.recv())
    except (OSError, TimeoutError, ValueError, websockets.WebSocketException):
        return
    if isinstance(answer, dict) and answer.get("type") == "hello_error":
        error = answer.get("error") or {}
        raise TokenRefused(f"{error.get('code', '')} {error.get('message', '')}".strip())
