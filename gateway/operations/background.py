"""The gateway's periodic work: store change feed, token last-use, provider refresh.

Each runs under :func:`config.tasks.guard`: a failure is logged and the task started again.
The group refresh (LDAP/AD users' groups and account status) runs in one process at a
time: the holder of the ``group-refresh`` store lease (``gateway.controllers.lease``),
contended for only while a directory provider is configured; every write it makes is
fenced (made only while the lease is certainly held).
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
from gateway.controllers.lease import Lease, LeaseKeeper, LeaseLost, fence, lease_for
from gateway.identity.directory import DIRECTORY
from gateway.identity.providers.base import ProviderUnavailable
from gateway.identity.providers.registry import PROVIDERS
from gateway.keys import SETTINGS

logger = logging.getLogger(__name__)

LAST_USED_FLUSH_S = 60.0
GROUP_REFRESH_LEASE = "group-refresh"
SWEEP_S = 60.0
"""How often expired login state (failed-login counts, pending browser logins) is
deleted from the store."""


async def _every(period_s: float, work: Any, name: str) -> None:
    while True:
        await asyncio.sleep(period_s)
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("%s failed; retrying next period", name)


async def refresh_external_users(app: web.Application, lease: Lease) -> int:
    """Re-read groups and status of every user from its provider; returns how many were
    recorded. Only while this process holds ``lease``, checked before every write: a
    holder that lost it (a slow directory, a store it cannot reach) stops there."""
    try:
        return await _refresh(app, lease)
    except LeaseLost:
        logger.info("group refresh stopped: the %s lease is no longer held", lease.name)
        return 0


async def _refresh(app: web.Application, lease: Lease) -> int:
    directory = app[DIRECTORY]
    providers = app[PROVIDERS].password
    if not lease.held():
        return 0  # the lease's holder refreshes for everyone
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
            fence(lease)
            await directory.apply_refresh(current, identity)
            count += 1
    return count


def group_refresh_lease(app: web.Application) -> Lease:
    directory = app[DIRECTORY]
    return lease_for(
        directory.store,
        GROUP_REFRESH_LEASE,
        app[REPLICAS].id,
        ttl_s=app[SETTINGS].controller.lease_ttl_s,
        clock=directory.clock,
    )


async def sweep_login_state(app: web.Application) -> int:
    """Delete expired failed-login counts and browser logins; how many. Every replica
    may run it: each deletion is a compare-and-set of an expired record, so two sweeps
    at once delete each record once (no lease needed)."""
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
    lease = group_refresh_lease(app)
    keeper = LeaseKeeper(
        lease,
        want=lambda: bool(app[PROVIDERS].password),
        on_change=lambda holding: logger.info(
            "group refresh %s", "runs here" if holding else "stops here"
        ),
    )
    tasks.append(asyncio.create_task(guard(keeper.run, "group refresh lease", logger)))
    tasks.append(
        asyncio.create_task(
            guard(
                lambda: _every(
                    settings.auth.group_refresh_interval_s,
                    lambda: refresh_external_users(app, lease),
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
