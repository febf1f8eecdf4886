"""Refusals: the error a client gets for what a wire rule refuses.

Every rule of a wire shape (a msgspec ``Meta`` constraint, a required field, a type) carries
its :class:`Refusal` (error class, code and message template) declared next to it with
:func:`refuse`. msgspec decodes from the first key to the last and stops at the first fault;
the hub has always checked fields in a fixed order (the order they are declared in) and
answered the first fault in *that* order. So the fast path is msgspec alone, and only a
refused body is walked again (:func:`explain`), field by field in declaration order, to find
the fault the client is told about. Used by the event drafts (:mod:`hub.events`) and the
edge's other request bodies (:mod:`hub.edge.wire`).
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct, UnsetType

from hub.errors import BadRequest, HubError, Unprocessable


@dataclass(frozen=True, slots=True)
class Refusal:
    """The error for input that breaks a rule: its class, code and message.

    ``message`` is a :meth:`str.format` template. It may name ``{name}`` (the field),
    ``{value!r}`` (what was sent), ``{body[key]}`` (another field of the same object),
    ``{names}`` (unknown fields) and the rule's own limits (``{min_length}``,
    ``{max_length}``, ``{ge}``, ``{le}``, ``{pattern}``).
    """

    message: str
    error: type[HubError] = Unprocessable
    code: str | None = None

    def __call__(self, **context: Any) -> HubError:
        return self.error(self.message.format(**context), code=self.code)


Refusals = Mapping[str, Refusal]  # by case: "*", "missing", "type", "min_length", ...


def refuse(message: str, error: type[HubError] = Unprocessable, code: str | None = None,
           **cases: Refusal | str) -> dict[str, Any]:  # fmt: skip
    """``Meta(extra=refuse(...))``: how a field is refused (a Struct's own refusals are its
    ``refusals: ClassVar = refuse(...)``).

    ``message`` is the refusal for any fault; ``cases`` override it for one kind of fault:
    ``missing`` (absent, or null where null is not allowed), ``type`` (the wrong JSON
    type), a broken limit (``min_length``, ``max_length``, ``ge``, ``le``, ``pattern``),
    and for Structs ``unknown`` (fields it does not have) and ``tag`` (an unknown tag).
    A case given as a string keeps ``error`` and ``code``. A list whose items must differ
    in one field names it in ``Meta(extra={**refuse(..., unique=...), "unique": "key"})``.
    """
    table = {"*": Refusal(message, error, code)}
    for case, given in cases.items():
        table[case] = Refusal(given, error, code) if isinstance(given, str) else given
    return {"refuse": table}


def literal(text: str) -> str:
    """``text`` as a :class:`Refusal` template that says it verbatim (braces escaped)."""
    return text.replace("{", "{{").replace("}", "}}")


def _pick(table: Refusals, *cases: str) -> Refusal:
    for case in cases:
        if case in table:
            return table[case]
    return table.get("*") or Refusal("invalid value for {name}")


def _split(tp: Any) -> tuple[Any, list[Meta]]:
    """The type under ``Annotated`` and its ``Meta``s."""
    if typing.get_origin(tp) is Annotated:
        base, *extra = typing.get_args(tp)
        return base, [m for m in extra if isinstance(m, Meta)]
    return tp, []


def _options(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _table(metas: list[Meta], inherited: Refusals | None = None) -> dict[str, Refusal]:
    table: dict[str, Refusal] = dict(inherited or {})
    for meta in metas:
        table.update((meta.extra or {}).get("refuse", {}))
    return table


_LIMITS = ("min_length", "max_length", "ge", "le", "gt", "lt", "pattern")


def _limits(metas: list[Meta]) -> dict[str, Any]:
    return {key: getattr(m, key) for m in metas for key in _LIMITS
            if getattr(m, key) is not None}  # fmt: skip


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Struct)


def _kind_matches(value: object, base: Any) -> bool:
    """Whether ``value`` has the JSON type ``base`` asks for (limits aside)."""
    if isinstance(value, bool):
        return base is bool
    if base is str:
        return isinstance(value, str)
    if isinstance(base, type) and issubclass(base, int):  # int, IntEnum
        return isinstance(value, int)
    if base is float:  # NaN and Infinity are not JSON numbers (nor is 1e400)
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    if base is dict or typing.get_origin(base) is dict:
        return isinstance(value, dict)
    return True


def _broken_limit(value: object, limits: Mapping[str, Any]) -> str | None:
    """Which length or range limit a value of the right type breaks, if one."""
    if isinstance(value, str | list):
        if len(value) < limits.get("min_length", 0):
            return "min_length"
        if len(value) > limits.get("max_length", len(value)):
            return "max_length"
    elif isinstance(value, int | float):
        low, high = limits.get("ge", limits.get("gt")), limits.get("le", limits.get("lt"))
        if low is not None and value < low:
            return "ge"
        if high is not None and value > high:
            return "le"
    return None


def _field_type(cls: type[Struct], field_name: str) -> Any:
    for info in msgspec.structs.fields(cls):
        if info.encode_name == field_name:
            return info.type
    raise KeyError(field_name)


def _field_table(tp: Any) -> tuple[dict[str, Refusal], dict[str, Any]]:
    """A field's refusals and limits, wherever they sit (``Annotated[T | None, ...]`` or
    ``Annotated[T, ...] | None``)."""
    base, metas = _split(tp)
    for option in _options(base):
        metas = metas + _split(option)[1]
    return _table(metas), _limits(metas)


def refusal_of(cls: type[Struct], field_name: str,
               case: str = "*") -> Callable[..., HubError]:  # fmt: skip
    """The refusal a Struct declares for one of its fields (by JSON name), its ``{name}``
    and limits filled in: for the checks msgspec cannot make, with the same words."""
    table, limits = _field_table(_field_type(cls, field_name))
    return partial(_pick(table, case), name=field_name, **limits)


_MISSING: Any = object()


def explain(value: object, tp: Any, *, items: bool = True) -> HubError | None:
    """The refusal of ``value`` as a ``tp``, or None when it breaks no declared rule.

    Fields are checked in the order they are declared, a list before its items (the
    items not at all with ``items=False``), so the answer is the first fault in that order.
    """
    return _explain(value, tp, "body", {}, {}, items)


def explain_struct(value: object, cls: type[Struct], *,
                   items: bool = True) -> tuple[str | None, HubError] | None:  # fmt: skip
    """Like :func:`explain` for a Struct, naming the field that failed (None: the object
    itself, which is not an object or has unknown fields)."""
    return _explain_struct(value, cls, "body", {}, items)


def _explain(value: object, tp: Any, name: str, body: Any, inherited: Refusals,
             items: bool) -> HubError | None:  # fmt: skip
    base, metas = _split(tp)
    table = _table(metas, inherited)
    context = {"name": name, "value": value, "body": body, **_limits(metas)}
    options = _options(base)
    if len(options) > 1:
        if value is None and type(None) in options:
            return None
        real = [o for o in options if o is not type(None) and o is not UnsetType]
        if len(real) == 1:
            return _explain(value, real[0], name, body, table, items)
        structs = [o for o in real if _is_struct(o)]
        if len(structs) != len(real) or not isinstance(value, dict):
            return _pick(table, "type")(**context)
        for option in structs:  # a tagged union
            config = option.__struct_config__
            if config.tag_field is not None and value.get(config.tag_field) == config.tag:
                return _explain(value, option, name, body, table, items)
        return _pick(table, "tag")(**context)
    if _is_struct(base):
        found = _explain_struct(value, base, name, table, items)
        return None if found is None else found[1]
    if typing.get_origin(base) is list:
        if not isinstance(value, list):
            return _pick(table, *(("missing", "type") if value is None else ("type",)))(**context)
        broken = _broken_limit(value, context)
        if broken is not None:
            return _pick(table, broken)(**context)
        if items:
            (item_type,) = typing.get_args(base)
            unique = next((x["unique"] for m in metas if "unique" in (x := m.extra or {})), None)
            seen: set[Any] = set()
            for item in value:
                refused = _explain(item, item_type, name, body, {}, items)
                if refused is not None:
                    return refused
                if unique is not None:
                    key = item.get(unique)
                    if key in seen:
                        return _pick(table, "unique")(**{**context, "value": key})
                    seen.add(key)
        return None
    try:
        msgspec.convert(value, tp)
    except (msgspec.ValidationError, OverflowError):
        pass
    else:
        if not isinstance(value, float) or math.isfinite(value):
            return None
    if value is None:
        return _pick(table, "missing", "type")(**context)
    if not _kind_matches(value, base):
        return _pick(table, "type")(**context)
    return _pick(table, _broken_limit(value, context) or "pattern")(**context)


def _explain_struct(value: object, cls: type[Struct], name: str, inherited: Refusals,
                    items: bool) -> tuple[str | None, HubError] | None:  # fmt: skip
    own: dict[str, Refusal] = {**getattr(cls, "refusals", {}).get("refuse", {}), **inherited}
    if not isinstance(value, dict):
        return None, _pick(own, "type")(name=name, value=value, body=value)
    config = cls.__struct_config__
    fields = msgspec.structs.fields(cls)
    if config.forbid_unknown_fields:
        known = {f.encode_name for f in fields} | {config.tag_field}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            return None, _pick(own, "unknown")(name=name, value=value, body=value,
                                               names=", ".join(unknown))  # fmt: skip
    for info in fields:
        raw = value.get(info.encode_name, _MISSING)
        if raw is _MISSING:
            if info.required:
                table, limits = _field_table(info.type)
                return info.encode_name, _pick(table, "missing")(
                    name=info.encode_name, value=None, body=value, **limits
                )
            continue
        refused = _explain(raw, info.type, info.encode_name, value, {}, items)
        if refused is not None:
            return info.encode_name, refused
    return None


def loads_json(body: bytes | bytearray) -> Any:
    """A request body as Python's :mod:`json` reads it (400 ``invalid_json`` otherwise)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON", code="invalid_json") from None


