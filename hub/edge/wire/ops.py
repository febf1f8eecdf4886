"""Wire shapes of the operations endpoints: ``/healthz`` (``/metrics`` is Prometheus text,
``/openapi.json`` and ``/asyncapi.json`` are the documents themselves)."""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

__all__ = ["Health"]


class Health(Struct, forbid_unknown_fields=True):
    """The hub's health: ``ok``; ``degraded`` (it still serves, e.g. through a Redis outage);
    ``failing`` (503: the streams DB does not answer)."""

    status: Literal["ok", "degraded", "failing"]
    checks: Annotated[
        dict[str, str], Meta(description="Each dependency: ok, or what is wrong with it.")
    ]
