"""Configuration errors (startup only: the CLI prints them and exits 2), and other reasons
not to start (``StartError``: exit 1).

A message names the setting by its dotted YAML path and, once known, where its value
came from: ``tls.cert_fil: unknown setting, did you mean cert_file? (gateway.yaml line 12)``
or ``tokens.session_ttl: expected a duration ... (from HERDGATE_TOKENS__SESSION_TTL)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a setting's value came from: a line of a YAML file, or another source."""

    file: str = ""
    line: int = 0
    """1-based; 0 when unknown."""
    source: str = ""
    """Not from a file: ``HERDGATE_LISTEN``, ``the command line``."""

    def __str__(self) -> str:
        if self.file:
            return f"{self.file} line {self.line}" if self.line else self.file
        return f"from {self.source}" if self.source else ""


class ConfigError(Exception):
    def __init__(
        self, path: str, message: str, *, file: str = "", line: int = 0, source: str = ""
    ) -> None:
        super().__init__(path, message)
        self.path = path
        """The setting, e.g. ``tls.cert_file``; empty for errors about the file as a whole."""
        self.message = message
        self.origin = Origin(file, line, source)

    @property
    def file(self) -> str:
        return self.origin.file

    @property
    def line(self) -> int:
        return self.origin.line

    def locate(self, origin: Origin | None) -> ConfigError:
        """Record where the value came from, unless that is known already; returns ``self``."""
        if origin is not None and not str(self.origin):
            self.origin = origin
        return self

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        where = str(self.origin)
        return f"{text} ({where})" if where else text


class StartError(Exception):
    """A program cannot start for a reason outside its settings (its address is in use):
    the CLI prints the message as one line and exits 1."""
