"""The hub's logs: one format for every logger, no tokens, no traceback per bad frame.

- :class:`HubFormatter` writes ``HUB_LOG_FORMAT=text`` (``TIME LEVEL LOGGER: message``) or
  ``json`` (one object per line: ``time``, ``level``, ``logger``, ``message``, ``fields``).
- :func:`log_config` is the ``logging.config.dictConfig`` that ``hub serve`` and ``hub demo``
  give uvicorn: every logger (the hub's, uvicorn's error and access logs, the libraries')
  goes through one handler with that format.
- :func:`adopt_server_logging`: under plain ``uvicorn hub.app:app`` (uvicorn's own default
  config in force), the same format for uvicorn's handlers and a handler for the hub's
  loggers. A ``--log-config`` of the operator's own is left alone.
- No token reaches a log: ``?token=...``, ``Authorization: Bearer ...`` and anything shaped
  like a JWT are written ``[redacted]``, by the formatter (everything it writes) and by
  :class:`RedactTokens` on uvicorn's loggers (whatever handler they end up in).
- :func:`startup_line`: the one line naming the streams DB, Redis and the archive, with
  credentials taken out of their URLs (docs/protocol.md §9).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from hub.config import Settings

__all__ = [
    "HubFormatter",
    "QuietClientErrors",
    "RedactTokens",
    "adopt_server_logging",
    "install_filters",
    "log_config",
    "log_startup",
    "redact",
    "safe_url",
    "startup_line",
]

# What is never written: a token in a query string (``token=``, ``authToken=``,
# ``access_token=``), a bearer credential, and anything shaped like a JWT (header.claims.sig).
_SECRETS = re.compile(
    r"(?P<key>token=)[^&\s\"'\\,;]+"
    r"|(?P<bearer>bearer\s+)[^\s\"'\\,;]+"
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def _redact_match(m: re.Match[str]) -> str:
    return (m.group("key") or m.group("bearer") or "") + REDACTED


def redact(text: str) -> str:
    """``text`` with every token, bearer credential and JWT replaced by ``[redacted]``."""
    return _SECRETS.sub(_redact_match, text)


class QuietClientErrors(logging.Filter):
    """Log a client's protocol error (e.g. invalid UTF-8) as one line, not a traceback.

    Any client can send such frames; the socket is closed with the right code either way,
    and a traceback per frame would let one client flood the log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "received from client" in record.getMessage():
            record.exc_info = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class RedactTokens(logging.Filter):
    """Never write a token to the logs: a logged URL's ``?token=...``, a ``Bearer ...``
    value and a JWT become ``[redacted]`` in the record itself, whatever handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


# The attributes every LogRecord has; anything else on a record is a field (``extra=``).
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "color_message", "taskName",
}  # fmt: skip
# uvicorn's access log line: '%s - "%s %s HTTP/%s" %d' (client, method, path, version, status).
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in record.__dict__.items()
              if k not in _STANDARD and not k.startswith("_")}  # fmt: skip
    args = record.args
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
        fields.update(zip(_ACCESS_FIELDS, args, strict=True))
    return {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class HubFormatter(logging.Formatter):
    """``text``: ``2026-01-31T12:00:00.123Z INFO    hub: message`` (a traceback on the lines
    after); ``json``: ``{"time", "level", "logger", "message", "fields"}`` on one line, with
    ``exc`` holding a traceback. ``fields`` are the record's ``extra=`` values, and for
    uvicorn's access log the request (client, method, path, http_version, status)."""

    def __init__(self, kind: str = "text", use_colors: bool | None = None) -> None:
        super().__init__()
        if kind not in {"text", "json"}:
            raise ValueError(f"log format must be text or json, got {kind!r}")
        self.kind = kind

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        exc = None
        if record.exc_info:
            exc = self.formatException(record.exc_info)
        elif record.exc_text:
            exc = record.exc_text
        if record.stack_info:
            exc = (exc + "\n" if exc else "") + self.formatStack(record.stack_info)
        if self.kind == "json":
            out: dict[str, Any] = {
                "time": _time(record), "level": record.levelname, "logger": record.name,
                "message": redact(message), "fields": _fields(record),
            }  # fmt: skip
            if exc:
                out["exc"] = redact(exc)
            return json.dumps(out, ensure_ascii=False, default=str)
        line = f"{_time(record)} {record.levelname:<7} {record.name}: {message}"
        if exc:
            line += "\n" + exc
        return redact(line)


def log_config(kind: str = "text", level: str | int = "info") -> dict[str, Any]:
    """The ``dictConfig`` for uvicorn (``uvicorn.Config(log_config=...)``): one handler on
    stderr with :class:`HubFormatter`, which every logger reaches (uvicorn's loggers and the
    hub's at ``level``, the rest at warning and above)."""
    from uvicorn.config import LOG_LEVELS

    number = LOG_LEVELS[level.lower()] if isinstance(level, str) else level
    formatter = {"()": f"{__name__}.HubFormatter", "kind": kind}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        # uvicorn sets use_colors on formatters named "default" and "access" when asked.
        "formatters": {"default": formatter, "access": dict(formatter)},
        "filters": {"redact": {"()": f"{__name__}.RedactTokens"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler", "formatter": "default",
                "stream": "ext://sys.stderr", "filters": ["redact"],
            },
        },
        "root": {"handlers": ["default"], "level": max(number, logging.WARNING)},
        "loggers": {
            "uvicorn": {"handlers": [], "level": number, "propagate": True},
            "uvicorn.error": {"level": number},
            "uvicorn.access": {"handlers": [], "level": number, "propagate": True},
            "hub": {"handlers": [], "level": number, "propagate": True},
        },
    }


def adopt_server_logging(kind: str) -> None:
    """Under plain uvicorn, give its default handlers the hub's format, and the hub's
    loggers a handler when none would write them (called at the app's start).

    Only uvicorn's own formatters are replaced, so an operator's ``--log-config`` stays as
    it is (it can name :class:`HubFormatter` itself); under ``hub serve`` nothing changes.
    """
    for name in ("uvicorn", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if type(handler.formatter).__module__.startswith("uvicorn."):
                handler.setFormatter(HubFormatter(kind))
                handler.addFilter(_REDACT)
    hub = logging.getLogger("hub")
    if not hub.hasHandlers():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(HubFormatter(kind))
        handler.addFilter(_REDACT)
        hub.addHandler(handler)
        if hub.level == logging.NOTSET:  # uvicorn's --log-level, else info
            hub.setLevel(logging.getLogger("uvicorn.error").level or logging.INFO)


def safe_url(url: str | None) -> str:
    """``url`` without credentials: no user name or password, and the values of query
    parameters such as ``authToken`` replaced by ``[redacted]``; otherwise as written."""
    if not url:
        return "none"
    head, sep, rest = url.partition("://")
    if sep:
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if "@" in authority:
            url = head + sep + authority.rsplit("@", 1)[1] + rest[len(authority) :]
    base, qmark, query = url.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        pairs = []
        for pair in query.split("&"):
            key, eq, _ = pair.partition("=")
            pairs.append(f"{key}={REDACTED}" if eq and _sensitive(key) else pair)
        url = base + "?" + "&".join(pairs) + hash_ + fragment
    return redact(url)


def _sensitive(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in ("token", "auth", "pass", "secret", "key", "sig", "cred"))


def startup_line(settings: Settings) -> tuple[str, dict[str, str]]:
    """The start-up log line and its fields: the streams DB, Redis and the archive (and the
    public and tenant DBs), each without credentials."""
    from hub import __version__

    fields = {
        "version": __version__,
        "streams_db": safe_url(settings.streams_db),
        "redis": safe_url(settings.redis_url),
        "archive": safe_url(settings.archive_url),
        "public_db": safe_url(settings.public_db),
        "tenant_db": safe_url(settings.tenant_db),
    }
    redis = fields["redis"] if settings.redis_url else "none (this instance only)"
    message = (f"hub {__version__} starting: streams DB {fields['streams_db']}, Redis {redis}, "
               f"archive {fields['archive']}, public DB {fields['public_db']}, "
               f"tenant DBs {fields['tenant_db']}")  # fmt: skip
    return message, fields


def log_startup(settings: Settings) -> None:
    """Log :func:`startup_line` (logger ``hub``, info)."""
    message, fields = startup_line(settings)
    logging.getLogger("hub").info("%s", message, extra=fields)


_QUIET = QuietClientErrors()
_REDACT = RedactTokens()


def install_filters() -> None:
    """Put the filters on uvicorn's loggers (adding one twice is a no-op)."""
    logging.getLogger("uvicorn.error").addFilter(_QUIET)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_REDACT)
