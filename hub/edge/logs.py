"""Log filters for uvicorn's loggers: no tokens in the logs, no traceback per bad frame."""

from __future__ import annotations

import logging
import re

__all__ = ["QuietClientErrors", "RedactTokens", "install_filters"]


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
    """Never write a token to the logs: ``?token=...`` in a logged URL becomes ``[redacted]``."""

    _TOKEN = re.compile(r"((?:^|[?&])token=)[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(a, str) and "token=" in a for a in record.args
        ):
            record.args = tuple(
                self._TOKEN.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = self._TOKEN.sub(r"\1[redacted]", record.msg)
        return True


_QUIET = QuietClientErrors()
_REDACT = RedactTokens()


def install_filters() -> None:
    """Put the filters on uvicorn's loggers (adding one twice is a no-op)."""
    logging.getLogger("uvicorn.error").addFilter(_QUIET)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(_REDACT)
