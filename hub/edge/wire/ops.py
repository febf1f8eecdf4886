"""Wire shapes of the operations endpoints: ``/healthz`` (``/metrics`` is Prometheus text,
``/openapi.json`` and ``/asyncapi.json`` are the documents themselves)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

__all__ = ["Health"]


class Health(Struct, forbid_unknown_fields=True):
    """The hub's health: ``ok``; ``degraded`` (it still serves, e.g. through a Redis outage
    or a tenant DB failing); ``failing`` (503: the streams DB does not answer, or refused
    appends in the last 10 s)."""

    status: Literal["ok", "degraded", "failing"]
    checks: Annotated[
        dict[str, Literal["ok", "failing"]],
        Meta(description="streams_db, broker, tenant_dbs, public_db: ok or failing (why is "
                         "in the hub's log)."),
    ]
