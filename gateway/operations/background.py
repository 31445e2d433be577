"""The gateway's periodic work: store change feed, token last-use, provider refresh."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from aiohttp import web

from gateway.clusters.replicas import REPLICAS
from gateway.identity.directory import DIRECTORY
from gateway.identity.providers.base import ProviderUnavailable
from gateway.identity.providers.registry import PROVIDERS
from gateway.keys import SETTINGS

logger = logging.getLogger(__name__)

LAST_USED_FLUSH_S = 60.0


async def guard(coro: Coroutine[Any, Any, None], name: str) -> None:
    """Run a never-ending task; log if it fails or ends."""
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("%s failed", name)
        return
    logger.error("%s has finished unexpectedly", name)


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


async def background_tasks(app: web.Application) -> AsyncIterator[None]:
    directory = app[DIRECTORY]
    settings = app[SETTINGS]
    flush = _every(LAST_USED_FLUSH_S, directory.flush_last_used, "token last-use")
    replicas = app[REPLICAS]
    tasks = [
        asyncio.create_task(guard(replicas.run(), "replica heartbeat")),
        asyncio.create_task(guard(directory.follow(), "store change feed")),
        asyncio.create_task(guard(flush, "token last-use")),
    ]
    oidc = app[PROVIDERS].oidc
    if oidc is not None:
        tasks.append(asyncio.create_task(oidc.start()))
    # Always running: a reload (SIGHUP) may add a directory provider later.
    tasks.append(
        asyncio.create_task(
            guard(
                _every(
                    settings.auth.group_refresh_interval_s,
                    lambda: refresh_external_users(app),
                    "group refresh",
                ),
                "group refresh",
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
