"""Endless background tasks that are never silently gone (the gateway's and the agent's).

:func:`guard` runs one for ever: a task that fails, or ends (which an endless task must
not), is logged and started again, after a pause that doubles while it keeps failing
soon after starting. Only cancellation stops it. The gateway's periodic work
(``gateway.operations.background``) and the agent's credential refresh and dial loop
(``tunnel.agent``) run under it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

RESTART_S = 1.0
"""The first pause before a task that failed or ended is started again."""
RESTART_MAX_S = 60.0
"""The longest pause; a task that ran at least this long starts from ``RESTART_S`` again."""


async def guard(
    start: Callable[[], Awaitable[None]],
    name: str,
    log: logging.Logger = logger,
    restart_s: float = RESTART_S,
    restart_max_s: float = RESTART_MAX_S,
) -> None:
    """Run ``start()`` until cancelled: each time it fails or ends, one ERROR on ``log``
    (with the traceback for a failure) and a new ``start()`` after a pause.

    The pause is ``restart_s``, doubled after each run shorter than ``restart_max_s``, at
    most ``restart_max_s``: a task that fails at once is retried about once a minute, not
    in a tight loop.
    """
    loop = asyncio.get_running_loop()
    pause = restart_s
    while True:
        started = loop.time()
        try:
            await start()
        except asyncio.CancelledError:
            raise
        except Exception:
            if loop.time() - started >= restart_max_s:
                pause = restart_s
            log.exception("%s failed; starting it again in %.1f s", name, pause)
        else:
            if loop.time() - started >= restart_max_s:
                pause = restart_s
            log.error("%s has finished unexpectedly; starting it again in %.1f s", name, pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, restart_max_s)
