"""Driver dispatch: the seed's Step 6, drivers taken off an order (a decline, silence, a
cancel) and reassignment, and drivers free again after Step 10.

A ready order gets the nearest idle driver, claimed in the public DB by a conditional
UPDATE that records the order in ``claim``: exactly one order gets an idle driver, an order
gets at most one claimed driver, and a retried Step 6 finds it, as does another instance
assigning the same order at once (so neither claims a driver only to undo the claim when
the other's TASK_ASSIGN lands: two public-DB rows that no order accounts for). An order
that finds no idle driver stays ``ready`` and is offered the next driver that becomes idle
(:meth:`Dispatch.assign_waiting`). At start-up, :meth:`Dispatch.recover` finishes what a
crash left half-done across the databases.

A claim must end in the order's TASK_ASSIGN or be undone: a driver claimed for an order
that never names him is ``en-route`` with nothing to deliver, and can neither go offline
nor come online. So Step 6 checks first everything that could refuse the TASK_ASSIGN (the
order ready, accepted by the kitchen, not assigned), undoes the claim when the append is
refused after all (:meth:`Dispatch._undo`; when the stream merely changed, the order is
read again with the claim kept, and the claim undone only if the order then wants no driver
or has another), and start-up recovery completes or undoes every
claim whose order has no TASK_ASSIGN for its driver. Only a claim whose append may have
committed (503: the streams DB did not answer) is kept: the order stays ``ready`` and the
next attempt (a retried ``ready``, a driver coming online, a delivery, a restart) finds
the claim and completes the assignment.

A driver taken off an order (:meth:`Dispatch.unassign`: TASK_UNASSIGN first, then the
claim released) is idle again, or offline when he went silent; the order then goes to the
next nearest idle driver, never to one taken off it (he declined it, or went silent on
it: back online, he is offered other orders). So a claim of a driver the order's stream
took off it is always that old claim, never a new one: whichever instance finds it
finishes his release (:meth:`Dispatch.finish_unassign`, each write a no-op once done),
and none mistakes another instance's new claim of him, whose TASK_ASSIGN has not landed
yet, for one to release. The TASK_ASSIGN and the TASK_UNASSIGN are committed only onto
the stream they were decided on (``expected`` seq), so a cancel on another instance and
an assignment never both land.
"""

from __future__ import annotations

import asyncio
import logging

from hub.domain.gps import Gps
from hub.domain.node import Node
from hub.domain.orders.rules import (
    DEFAULT_VEHICLE,
    OrderState,
    check_accepted,
    distance_km,
    pickup_eta,
)
from hub.domain.orders.stream import append, load, step_event
from hub.errors import Busy, Conflict, HubError, NotFound, Unavailable, Unprocessable
from hub.events import Event, NewEvent, Opcode, now_ts
from hub.infra.orderdb import DriverPoint, OrderDb, RestaurantRow
from hub.infra.store import StreamChanged
from hub.timing import KeyedLocks

__all__ = ["Dispatch", "find_restaurant"]

log = logging.getLogger("hub.orders")

CLAIM_ATTEMPTS = 8  # nearest idle drivers tried when others claim them first
ASSIGN_ATTEMPTS = 4  # reads of the order when its stream changes under an assignment


def unassign_event(state: OrderState, reason: str, note: str | None = None) -> NewEvent:
    """The TASK_UNASSIGN that takes the order's driver off it (``reason``: declined,
    unreachable, cancelled)."""
    driver = state.driver
    assert driver is not None
    payload = {"driver": driver, "reason": reason, **({"note": note} if note else {})}
    return step_event(state.order_id, state.unassign_id(), Opcode.TASK_UNASSIGN, payload,
                      node_id=driver)  # fmt: skip


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

    async def assign(self, order_id: str) -> list[Event] | None:
        """Step 6: give a ready order the nearest idle driver. The TASK_ASSIGN written
        (or, assigned meanwhile elsewhere, the one that was); ``[]`` when the order wants
        no driver; None when no driver is idle (the order stays ready).

        Another instance may be assigning the same order at once (its ``ready``, a driver
        delivering or coming online there): the order gets one claimed driver, which both
        find (:meth:`_claim`), and both append the same TASK_ASSIGN onto the stream; the one
        that loses reads the order again and finds it assigned. A claim is kept while the
        order is read again (the stream changed: another instance's TASK_ASSIGN, or a
        party's event), and undone only when the order turns out to want no driver, or
        to have another one, or the assignment fails otherwise: undone on a mere change
        of the stream, it could be another instance's claim whose TASK_ASSIGN is landing."""
        async with self._assign, self._locked(order_id):
            claimed: DriverPoint | None = None
            settled: OrderState | None = None  # the order, once it wants no driver from here
            try:
                for _ in range(ASSIGN_ATTEMPTS):
                    state = await load(self.node, order_id)
                    if state.driver is not None or state.status != "ready":
                        settled = state
                        break
                    # What would refuse the TASK_ASSIGN, checked before a driver is claimed.
                    state.check_items()
                    check_accepted(state)
                    node_id, lat, lng = await find_restaurant(self.db, state.restaurant)
                    claimed = await self._claim(state, lat, lng)
                    if claimed is None:
                        return None  # stays ready; assigned when a driver becomes idle
                    try:
                        written = await self._assign_to(state, claimed, node_id, (lat, lng))
                    except (StreamChanged, Conflict):
                        # Another step, or another instance's TASK_ASSIGN (the same one:
                        # the same claimed driver), landed first: read the order again.
                        continue
                    if self.gps is not None:
                        self.gps.forget(claimed.driver)
                    return written
            except Unavailable:
                raise  # it may have committed: the claim stays, the next attempt ends it
            except Exception:
                if claimed is not None:
                    await self._undo(order_id, claimed.driver)
                raise
            if claimed is not None:  # kept when he is the order's driver
                await self._undo(order_id, claimed.driver)
            if settled is None:
                raise Busy("the order kept changing while a driver was assigned; retry")
            if settled.status == "assigned" and settled.assigned_at is not None:
                return [settled.assigned_at]  # assigned meanwhile (another instance)
            return []

    async def _assign_to(self, state: OrderState, claimed: DriverPoint, node_id: str,
                         at: tuple[float | None, float | None]) -> list[Event]:  # fmt: skip
        """Step 6's writes for the claimed driver: his DB, then the TASK_ASSIGN."""
        order_id = state.order_id
        driver, point_id, dlat, dlng = claimed
        profile = await self.db.driver_profile(driver)
        vehicle = (profile or {}).get("vehicle", DEFAULT_VEHICLE)
        eta = pickup_eta(distance_km((dlat, dlng), at))
        restaurant = await self.db.node(state.restaurant, node_id)
        pickup = restaurant[1].get("address") if restaurant is not None else None
        await self.db.start_delivery(driver, point_id, order_id, now_ts(), {
            "restaurant": state.restaurant, "pickupAddress": pickup,
            "deliverTo": state.payload.get("deliveryAddress")})  # fmt: skip
        return await append(self.node, order_id, [step_event(
            order_id, state.assign_id(), Opcode.TASK_ASSIGN,
            {"task": "delivery", "driver": driver, "vehicle": vehicle, "eta": eta},
            node_id=driver)], onto=state)  # fmt: skip

    async def _undo(self, order_id: str, driver: str) -> bool:
        """Undo the claim of ``driver`` for ``order_id`` unless the order's stream names
        him in a TASK_ASSIGN (another attempt's, or another instance's, went through);
        kept too when the stream cannot be read. True when undone."""
        try:
            assigned = (await load(self.node, order_id)).assigned_to(driver)
        except NotFound:
            assigned = False
        except Exception:
            log.exception("cannot tell whether %s was assigned %s; the claim stays", driver,
                          order_id)  # fmt: skip
            return False
        if assigned or not await self.db.undo_claim(order_id, driver):
            return False
        log.warning("released driver %s: his claim for %s never became a TASK_ASSIGN", driver,
                    order_id)  # fmt: skip
        return True

    async def _claim(self, state: OrderState, lat: float | None, lng: float | None
                     ) -> DriverPoint | None:  # fmt: skip
        """The driver claimed for the order: one claimed already (a retry, or another
        instance assigning the order at once), else the nearest idle one it was never
        taken off, claimed now; None when no driver is idle."""
        order_id = state.order_id
        claimed = await self.db.claimed_for(order_id)
        if claimed is not None and claimed.driver in state.unassigned:
            # Taken off the order, his claim not released yet: the instance that took him
            # off is releasing it now, or a crash came first. (Never a new claim of him:
            # a driver taken off an order is not claimed for it again.)
            await self.finish_unassign(order_id, claimed.driver, state.unassigned[claimed.driver])
            claimed = None
        taken_off = sorted(state.unassigned)
        for _ in range(CLAIM_ATTEMPTS):
            if claimed is not None:
                break
            candidate = await self.db.nearest_idle_driver(lat, lng, exclude=taken_off)
            if candidate is None:
                return None
            if await self.db.claim_idle_driver(order_id, candidate):
                claimed = candidate
            else:
                # Claimed meanwhile for another order, or another driver was claimed for
                # this one (another instance): that claim is this order's.
                claimed = await self.db.claimed_for(order_id)
        return claimed

    async def assign_waiting(self) -> None:
        """Offer idle drivers to orders that are ready and have no driver, oldest first:
        those never assigned, then those whose driver was taken off (a TASK_UNASSIGN;
        an order reassigned or cancelled since wants none and is passed over)."""
        waiting = await self.node.find_streams(
            having=Opcode.TASK_DONE, lacking=(Opcode.TASK_ASSIGN, Opcode.ORDER_CANCEL),
            limit=100,
        )
        waiting += await self.node.find_streams(
            having=Opcode.TASK_UNASSIGN, lacking=(Opcode.ORDER_SHIP, Opcode.ORDER_CANCEL),
            limit=100,
        )
        for order_id in waiting:
            try:
                if await self.assign(order_id) is None:
                    return  # no idle driver left (an order that wants none is skipped)
            except HubError as exc:
                log.warning("cannot assign %s: %s", order_id, exc)
            except Exception:
                log.exception("assigning %s failed", order_id)

    async def release(self, order_id: str, driver: str, lat: float | None,
                      lng: float | None) -> None:  # fmt: skip
        """Step 10's last writes: the driver idle at (lat, lng), discoverable again."""
        await self.db.release_driver(order_id, driver, lat, lng)

    async def unassign(self, state: OrderState, reason: str, note: str | None = None,
                       extra: list[NewEvent] | None = None) -> list[Event]:  # fmt: skip
        """Take the order's driver off it: ``extra`` events (a cancel's) and the
        TASK_UNASSIGN, committed onto ``state`` (:class:`StreamChanged` otherwise), then
        his claim released (:meth:`finish_unassign`). Call holding the order's lock."""
        driver = state.driver
        assert driver is not None
        written = await append(self.node, state.order_id,
                               [*(extra or []), unassign_event(state, reason, note)],
                               onto=state)  # fmt: skip
        await self.finish_unassign(state.order_id, driver, reason)
        return written

    async def finish_unassign(self, order_id: str, driver: str, reason: str) -> None:
        """What follows a TASK_UNASSIGN outside the streams DB (safe to run again): the
        driver idle where he was last seen, or offline when he went silent. Nothing once
        his claim on the order is gone (released already; he may be on another order)."""
        if not await self.db.is_claimed(order_id, driver):
            return
        if reason == "unreachable":
            await self.db.driver_unreachable(order_id, driver)
        else:
            at = await self.db.position(driver) if self.db.exists(driver) else None
            lat, lng = at if at is not None else (None, None)
            await self.release(order_id, driver, lat, lng)
        if self.gps is not None:
            self.gps.forget(driver)

    async def recover(self) -> None:
        """At start-up, finish what a crash left half-done across databases.

        A driver still claimed by a delivered (or archived) order is released at his last
        known position. A claim whose order has no TASK_ASSIGN for its driver is completed
        when the order is ready for him (a crash between the claim and the TASK_ASSIGN), and
        undone otherwise (a refused TASK_ASSIGN, an order gone, another driver assigned).
        Then orders that are ready without a driver get one if any is idle.
        """
        for driver, order_id in await self.db.claims():
            try:
                await self._recover_claim(driver, order_id)
            except Exception:
                log.exception("recovering the claim of %s on %s failed", driver, order_id)
        await self.assign_waiting()

    async def _recover_claim(self, driver: str, order_id: str) -> None:
        info = await self.node.stream_info(order_id)
        try:
            state: OrderState | None = await load(self.node, order_id)
        except NotFound:  # no such order, or archived (its events are gone from the DB)
            state = None
        done = bool(info and info.archived) or (
            state is not None and state.status in ("delivered", "cancelled")
        )
        if done:
            at = await self.db.position(driver)
            lat, lng = at if at is not None else (None, None)
            await self.release(order_id, driver, lat, lng)
            log.warning("released driver %s still claimed by finished %s", driver, order_id)
            return
        if state is not None and state.assigned_to(driver):
            return  # on his way: the claim ends at Step 10
        if state is not None and driver in state.unassigned:
            await self.finish_unassign(order_id, driver, state.unassigned[driver])
            log.warning("released driver %s taken off %s before a crash", driver, order_id)
            return
        if state is not None and state.driver is None:
            try:
                await self.assign(order_id)  # finds the claim: completes Step 6 if it may
            except Unavailable:
                raise  # cannot tell: the claim stays until the next start
            except HubError as exc:
                log.warning("cannot complete the assignment of %s: %s", order_id, exc)
        async with self._assign, self._locked(order_id):
            await self._undo(order_id, driver)
