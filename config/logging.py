"""Logging set-up shared by every herdgate program: stderr, text or JSON."""

from __future__ import annotations

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


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(settings: LoggingSettings) -> None:
    level = _LEVELS.get(settings.level.lower())
    if level is None:
        raise ConfigError("logging.level", f"expected one of {', '.join(_LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    elif settings.format == "text":
        # journald adds its own timestamps.
        fmt = "%(levelname)s %(name)s: %(message)s"
        if "JOURNAL_STREAM" not in os.environ:
            fmt = "%(asctime)s " + fmt
        handler.setFormatter(logging.Formatter(fmt))
    else:
        raise ConfigError("logging.format", "expected text or json")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log is replaced by gateway.access.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
