"""Driver dispatch: the seed's Step 6, and drivers free again after Step 10.

A ready order gets the nearest idle driver, claimed in the public DB by a conditional
UPDATE that records the order in ``claim``: exactly one order gets an idle driver, and a
retried Step 6 finds it. An order that finds no idle driver stays ``ready`` and is offered
the next driver that becomes idle (:meth:`Dispatch.assign_waiting`). At start-up,
:meth:`Dispatch.recover` finishes what a crash left half-done across the databases.
"""

from __future__ import annotations

import asyncio
import logging

from hub.domain.gps import Gps
from hub.domain.node import Node
from hub.domain.orders.rules import DEFAULT_VEHICLE, distance_km, pickup_eta
from hub.domain.orders.stream import append, load, read_events, step_event
from hub.errors import HubError, Unprocessable
from hub.events import Event, Opcode, now_ts
from hub.infra.orderdb import DriverPoint, OrderDb, RestaurantRow
from hub.timing import KeyedLocks

__all__ = ["Dispatch", "find_restaurant"]

log = logging.getLogger("hub.orders")

CLAIM_ATTEMPTS = 8  # nearest idle drivers tried when others claim them first


async def find_restaurant(db: OrderDb, restaurant: str) -> RestaurantRow:
    """The restaurant's node id and location; 422 when there is no such restaurant."""
    found = await db.restaurant(restaurant) if db.exists(restaurant) else None
    if found is None:
        raise Unprocessable(f"unknown restaurant {restaurant!r}", code="unknown_restaurant")
    return found


class Dispatch:
    """Drivers for ready orders; ``locks`` are the order steps' (one step per order)."""

    def __init__(self, node: Node, db: OrderDb, locks: KeyedLocks[str], *,
                 gps: Gps | None = None) -> None:  # fmt: skip
        self.node = node
        self.db = db
        self.gps = gps
        self._locked = locks
        self._assign = asyncio.Lock()  # one driver assignment at a time in this process

    async def assign(self, order_id: str) -> list[Event]:
        """Step 6: give a ready order the nearest idle driver (no-op if none is idle)."""
        async with self._assign, self._locked(order_id):
            state = await load(self.node, order_id)
            if state.has("assign") or state.status != "ready":
                return []
            node_id, lat, lng = await find_restaurant(self.db, state.restaurant)
            claimed = await self._claim(order_id, lat, lng)
            if claimed is None:
                return []  # stays ready; assigned when a driver becomes idle
            driver, point_id, dlat, dlng = claimed
            profile = await self.db.driver_profile(driver)
            vehicle = (profile or {}).get("vehicle", DEFAULT_VEHICLE)
            eta = pickup_eta(distance_km((dlat, dlng), (lat, lng)))
            restaurant = await self.db.node(state.restaurant, node_id)
            pickup = restaurant[1].get("address") if restaurant is not None else None
            await self.db.start_delivery(driver, point_id, order_id, now_ts(), {
                "restaurant": state.restaurant, "pickupAddress": pickup,
                "deliverTo": state.payload.get("deliveryAddress")})  # fmt: skip
            written = await append(self.node, order_id, [step_event(
                order_id, "assign", Opcode.TASK_ASSIGN,
                {"task": "delivery", "driver": driver, "vehicle": vehicle, "eta": eta},
                node_id=driver)])  # fmt: skip
            if self.gps is not None:
                self.gps.forget(driver)
            return written

    async def _claim(self, order_id: str, lat: float | None, lng: float | None
                     ) -> DriverPoint | None:  # fmt: skip
        """The driver claimed for the order: one claimed already (a retry), else the
        nearest idle one, claimed now; None when no driver is idle."""
        claimed = await self.db.claimed_for(order_id)
        for _ in range(CLAIM_ATTEMPTS):
            if claimed is not None:
                break
            candidate = await self.db.nearest_idle_driver(lat, lng)
            if candidate is None:
                return None
            if await self.db.claim_idle_driver(order_id, candidate):
                claimed = candidate
        return claimed

    async def assign_waiting(self) -> None:
        """Offer idle drivers to orders that are ready and still have none, oldest first."""
        waiting = await self.node.find_streams(
            having=Opcode.TASK_DONE, lacking=Opcode.TASK_ASSIGN, limit=100
        )
        for order_id in waiting:
            try:
                if not await self.assign(order_id):
                    return  # no idle driver left
            except HubError as exc:
                log.warning("cannot assign %s: %s", order_id, exc)
            except Exception:
                log.exception("assigning %s failed", order_id)

    async def release(self, order_id: str, driver: str, lat: float | None,
                      lng: float | None) -> None:  # fmt: skip
        """Step 10's last writes: the driver idle at (lat, lng), discoverable again."""
        await self.db.release_driver(order_id, driver, lat, lng)

    async def recover(self) -> None:
        """At start-up, finish what a crash left half-done across databases.

        A driver still claimed by a delivered order is released (at its last known
        position); orders that are ready without a driver get one if any is idle.
        """
        for driver, order_id in await self.db.claims():
            try:
                events = await read_events(self.node, order_id)
                info = await self.node.stream_info(order_id)
                delivered = any(e.opcode == Opcode.ORDER_DELIVER for e in events) or bool(
                    info and info.archived
                )
                if not delivered:
                    continue
                at = await self.db.position(driver)
                lat, lng = at if at is not None else (None, None)
                await self.release(order_id, driver, lat, lng)
                log.warning("released driver %s still claimed by delivered %s", driver, order_id)
            except Exception:
                log.exception("recovering the claim of %s on %s failed", driver, order_id)
        await self.assign_waiting()
