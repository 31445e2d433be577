"""One checked assumption about a dependency's private internals (see ``config.compat``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger("config.compat")

GATEWAY = "gateway"
AGENT = "agent"


class Broken(Exception):
    """Raised by a probe: the private thing is not as herdgate expects it."""


class Assumption:
    """One assumption about a dependency's private internals, checked once per process."""

    def __init__(
        self,
        name: str,
        relies_on: str,
        fallback: str,
        probe: Callable[[], None],
        programs: tuple[str, ...] = (GATEWAY, AGENT),
    ) -> None:
        self.name = name
        self.relies_on = relies_on
        """The private thing, as the WARNING names it."""
        self.fallback = fallback
        """What runs instead when the probe fails, as the WARNING says it."""
        self.programs = programs
        """The programs whose start-up self-test runs the probe."""
        self._probe = probe
        self._checked = False
        self._failure: str | None = None
        self._warned = False
        REGISTRY.append(self)

    @property
    def failure(self) -> str | None:
        """Why the probe failed (None: it passed, or has not run)."""
        return self._failure

    def evaluate(self) -> bool:
        """Run the probe (once per process) without logging; whether it passed."""
        if not self._checked:
            try:
                self._probe()
            except Exception as exc:  # noqa: BLE001 - whatever breaks, the fallback runs
                self._failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._checked = True
        return self._failure is None

    def holds(self) -> bool:
        """Whether the assumption holds; the first time it does not, one WARNING."""
        ok = self.evaluate()
        if not ok and not self._warned:
            self._warned = True
            logger.warning(
                "dependency check %s failed: %s is not as tested (%s); %s",
                self.name,
                self.relies_on,
                self._failure,
                self.fallback,
            )
        return ok

    def reset(self) -> None:
        """Forget the answer (tests that break the private thing, then check again)."""
        self._checked = False
        self._failure = None
        self._warned = False


REGISTRY: list[Assumption] = []
"""Every assumption, in the order their modules were imported."""
