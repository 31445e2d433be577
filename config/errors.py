"""Configuration errors (startup only: the CLI prints them and exits 2)."""

from __future__ import annotations


class ConfigError(Exception):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message
