"""This instance's open sessions (WebSocket, and any transport after it): how many each
subject holds, and which ones the stall sweeper watches.

:class:`Sessions` is the one owner of both tables (centrifuge calls it the ``Hub``):
a transport asks :meth:`Sessions.admit` before it serves a principal and calls
:meth:`Sessions.release` once the connection is gone (not when it has done with it: a
closed socket whose client reads nothing still holds a descriptor and kernel buffers,
until the transport reaps it); it :meth:`Sessions.watch` es a connection
while the connection sends, and one sweeper task (not a timer per socket) asks every
watched connection to close itself if it has been stuck in one send for longer than
``stall_timeout`` (docs/protocol.md §5: 4008 after 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

from hub.domain.auth import Principal

__all__ = ["Sessions", "Watched"]


class Watched(Protocol):
    """A connection the sweeper checks for stalls."""

    def check_stall(self, cutoff: float) -> None:
        """Close if one send has been waiting since before ``cutoff`` (``time.monotonic``)."""


class Sessions:
    """Open sessions per subject (a tenant in one role), capped; and the stall sweeper.

    ``start()``/``close()`` are called by the app's lifespan; ``close()`` is idempotent.
    """

    def __init__(self, *, max_per_subject: int, stall_timeout: float) -> None:
        self.max_per_subject = max_per_subject
        self.stall_timeout = stall_timeout
        self._open: dict[tuple[str, str], int] = {}  # (tenant, role) -> sessions it holds
        self._watched: set[Watched] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        """Sessions open now."""
        return sum(self._open.values())

    def admit(self, who: Principal) -> bool:
        """Count one more session of ``who``; False (nothing counted) when it is at its cap."""
        subject = (who.tenant, who.role)
        held = self._open.get(subject, 0)
        if held >= self.max_per_subject:
            return False
        self._open[subject] = held + 1
        return True

    def release(self, who: Principal) -> None:
        """One session admitted for ``who`` has ended (its connection is gone)."""
        subject = (who.tenant, who.role)
        left = self._open.get(subject, 0) - 1
        if left > 0:
            self._open[subject] = left
        else:
            self._open.pop(subject, None)

    def watch(self, conn: Watched) -> None:
        """Have the sweeper check ``conn`` for stalls until :meth:`unwatch`."""
        self._watched.add(conn)

    def unwatch(self, conn: Watched) -> None:
        self._watched.discard(conn)

    def sweep(self, now: float) -> None:
        """Check every watched connection once (what the sweeper task does each period)."""
        cutoff = now - self.stall_timeout
        for conn in tuple(self._watched):
            conn.check_stall(cutoff)

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="hub-stall-sweeper")

    async def close(self) -> None:
        """Stop the sweeper (awaited). Idempotent."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _sweep(self) -> None:
        period = max(0.05, min(1.0, self.stall_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.sweep(time.monotonic())
