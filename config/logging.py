"""Logging set-up shared by every herdgate program: standard output, text or JSON.

JSON lines carry the id of the request being handled (``request_id``), which the
gateway also returns in ``X-Request-Id`` and forwards to the API server.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys

from config.errors import ConfigError
from config.schema import LoggingSettings

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

QUIET_LOGGERS = ("kubernetes_asyncio.client.rest",)
"""Loggers that write request and response bodies at debug level (token hashes, secrets):
never below info, whatever the level."""

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
"""The request the current task serves ("" outside requests)."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def level_of(settings: LoggingSettings) -> int:
    level = _LEVELS.get(settings.level.lower())
    if level is None:
        raise ConfigError("logging.level", f"expected one of {', '.join(_LEVELS)}")
    return level


def configure_logging(settings: LoggingSettings) -> None:
    level = level_of(settings)
    handler = logging.StreamHandler(sys.stdout)
    fmt = settings.format
    if fmt == "auto":
        fmt = "text" if sys.stdout.isatty() else "json"
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "text":
        # journald adds its own timestamps.
        text = "%(levelname)s %(name)s: %(message)s"
        if "JOURNAL_STREAM" not in os.environ:
            text = "%(asctime)s " + text
        handler.setFormatter(logging.Formatter(text))
    else:
        raise ConfigError("logging.format", "expected auto, text or json")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _apply(level)
    # aiohttp's access log is replaced by the gateway's audit log.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def set_level(settings: LoggingSettings) -> None:
    """Change the level at run time (SIGHUP)."""
    _apply(level_of(settings))


def _apply(level: int) -> None:
    logging.getLogger().setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, level))
