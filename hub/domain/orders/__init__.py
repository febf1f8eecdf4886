"""The seed's order flow, Steps 1-10, writing what the seed writes.

- :mod:`~hub.domain.orders.rules`: the rules without I/O: statuses, which step may follow
  which and who may take it, the order as its events tell it, prices and minutes;
- :mod:`~hub.domain.orders.steps`: :class:`Orders`, one method per endpoint, taking its
  request already parsed (the parsing is :mod:`hub.edge.orders`);
- :mod:`~hub.domain.orders.dispatch`: drivers for ready orders (Step 6), and drivers free
  again after Step 10;
- :mod:`~hub.domain.orders.stream`: where the flow reads an order's events and commits.

The statements against the tenant and public DBs are :mod:`hub.infra.orderdb`.
"""

from hub.domain.orders.rules import (
    CURRENCY,
    DEFAULT_VEHICLE,
    MAX_ITEMS,
    MAX_QTY,
    OrderState,
    check_may,
)
from hub.domain.orders.steps import NewOrder, Orders

__all__ = [
    "CURRENCY",
    "DEFAULT_VEHICLE",
    "MAX_ITEMS",
    "MAX_QTY",
    "NewOrder",
    "OrderState",
    "Orders",
    "check_may",
]
