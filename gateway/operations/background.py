"""The gateway's periodic work: store change feed, token last-use, provider refresh.

Each runs under :func:`config.tasks.guard`: a failure is logged and the task started again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web

from config.tasks import guard
from gateway.api.common import LIMITER
from gateway.api.oauth_login import BROWSER_LOGINS
from gateway.clusters.replicas import REPLICAS
from gateway.identity.directory import DIRECTORY
from gateway.identity.providers.base import ProviderUnavailable
from gateway.identity.providers.registry import PROVIDERS
from gateway.keys import SETTINGS

logger = logging.getLogger(__name__)

LAST_USED_FLUSH_S = 60.0
SWEEP_S = 60.0
"""How often the leader deletes expired login state (failed-login counts, pending
browser logins) from the store."""


async def _every(period_s: float, work: Any, name: str) -> None:
    while True:
        await asyncio.sleep(period_s)
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s failed; retrying next period", name)


async def refresh_external_users(app: web.Application) -> int:
    """Re-read groups and status of every user from its provider; returns how many."""
    directory = app[DIRECTORY]
    providers = app[PROVIDERS].password
    if not app[REPLICAS].is_leader():
        return 0  # the leader refreshes for everyone
    down: set[str] = set()
    count = 0
    for user in list(directory.users.values()):
        provider = providers.get(user.provider)
        if provider is None or user.provider in down:
            continue
        try:
            identity = await provider.refresh(user.principal_id)
        except ProviderUnavailable as exc:
            logger.warning("cannot refresh %s users now: %s", user.provider, exc)
            down.add(user.provider)
            continue
        current = directory.users.get(user.id)
        if current is not None:
            await directory.apply_refresh(current, identity)
            count += 1
    return count


async def sweep_login_state(app: web.Application) -> int:
    """The leader deletes expired failed-login counts and browser logins; how many."""
    if not app[REPLICAS].is_leader():
        return 0
    now = app[DIRECTORY].clock()
    removed = await app[LIMITER].sweep(now)
    return removed + await app[BROWSER_LOGINS].sweep()


async def background_tasks(app: web.Application) -> AsyncIterator[None]:
    directory = app[DIRECTORY]
    settings = app[SETTINGS]
    replicas = app[REPLICAS]

    def flush() -> Coroutine[Any, Any, None]:
        return _every(LAST_USED_FLUSH_S, directory.flush_last_used, "token last-use")

    def sweep() -> Coroutine[Any, Any, None]:
        return _every(SWEEP_S, lambda: sweep_login_state(app), "login state sweep")

    tasks = [
        asyncio.create_task(guard(replicas.run, "replica heartbeat", logger)),
        asyncio.create_task(guard(sweep, "login state sweep", logger)),
        asyncio.create_task(guard(directory.follow, "store change feed", logger)),
        asyncio.create_task(guard(flush, "token last-use", logger)),
    ]
    oidc = app[PROVIDERS].oidc
    if oidc is not None:
        tasks.append(asyncio.create_task(oidc.start()))
    # Always running: a reload (SIGHUP) may add a directory provider later.
    tasks.append(
        asyncio.create_task(
            guard(
                lambda: _every(
                    settings.auth.group_refresh_interval_s,
                    lambda: refresh_external_users(app),
                    "group refresh",
                ),
                "group refresh",
                logger,
            )
        )
    )
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await directory.flush_last_used()
    await replicas.leave()
    await app[PROVIDERS].close()
