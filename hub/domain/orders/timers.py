"""The order timers of docs/protocol.md §6: a driver gone silent, an order nobody accepts.

:class:`Timers` owns one task that sweeps the streams DB every :attr:`Timers.period`
seconds: an assigned order whose driver's position has not arrived for
``HUB_DRIVER_TIMEOUT`` seconds before pickup loses that driver (``unreachable``; he goes
offline) and is reassigned; a paid order no kitchen accepted within ``HUB_ACCEPT_TIMEOUT``
seconds of its payment is cancelled by the platform (``not_accepted``) and refunded.

Nothing is kept in memory: the times are the stream's (the TASK_ASSIGN's and the
payment's ``ts``) and the driver's ``seenAt`` in his tenant DB (written with each GPS
fix), so a restarted hub, or any instance, finds the overdue orders. Two instances that
act on one order at once write the same events (ids from the order and the step, content
from the stream) onto the same ``seq``: one commits, the other's is a retry. A sweep
looks at :data:`SWEEP_MAX` orders of each kind at most, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable

from hub.config import Settings
from hub.domain.node import Node
from hub.domain.orders.steps import Orders, seconds_since
from hub.errors import HubError
from hub.events import Opcode

__all__ = ["SWEEP_MAX", "Timers"]

log = logging.getLogger("hub.orders")

SWEEP_MAX = 200  # orders of each kind looked at per sweep
PERIOD_MIN, PERIOD_MAX = 0.2, 15.0  # seconds between sweeps


class Timers:
    """Sweeps for overdue orders; ``start()``/``close()`` own its task."""

    def __init__(self, orders: Orders, node: Node, settings: Settings) -> None:
        self.orders = orders
        self.node = node
        self.driver_timeout = settings.driver_timeout
        self.accept_timeout = settings.accept_timeout  # 0: never
        shortest = min(self.driver_timeout, self.accept_timeout or self.driver_timeout)
        # A timeout is acted on at most a quarter of it late.
        self.period = max(PERIOD_MIN, min(PERIOD_MAX, shortest / 4))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hub-order-timers")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.sweep()
            except HubError as exc:  # a database outage: the next sweep tries again
                log.warning("the order timers' sweep failed (%s); the next one tries again", exc)
            except Exception:
                log.exception("the order timers' sweep failed; the next one tries again")

    async def sweep(self) -> None:
        """Act once on every overdue order found (up to :data:`SWEEP_MAX` of each kind)."""
        if self.accept_timeout > 0:
            for order_id in await self.node.find_streams(
                having=Opcode.INVOICE_PAYMENT, lacking=(Opcode.TASK_CREATE, Opcode.ORDER_CANCEL),
                limit=SWEEP_MAX,
            ):
                await self._act(self.orders.not_accepted(order_id, self.accept_timeout), order_id)
        for order_id in await self.node.find_streams(
            having=Opcode.TASK_ASSIGN, lacking=(Opcode.ORDER_SHIP, Opcode.ORDER_CANCEL),
            limit=SWEEP_MAX,
        ):
            await self._act(
                self.orders.unreachable(order_id, self._silent_for, self.driver_timeout), order_id
            )

    async def _act(self, work: Awaitable[object], order_id: str) -> None:
        try:
            await work
        except HubError as exc:
            log.warning("order timer on %s: %s", order_id, exc)

    async def _silent_for(self, driver: str) -> float | None:
        """Seconds since ``driver``'s position last arrived; None when it never did."""
        if not self.orders.db.exists(driver):
            return None
        seen = await self.orders.db.last_seen(driver)
        return seconds_since(seen) if seen else None
