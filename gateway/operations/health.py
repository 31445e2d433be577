"""``/healthz``, ``/readyz`` and ``/metrics``, and the plain-HTTP listener that serves them.

``/healthz`` answers while the process runs. ``/readyz`` answers 200 only while the
listeners are up, the gateway is not stopping, the store answers within
``STORE_TIMEOUT_S`` and its change feed is not behind (``Directory.feed_lag`` within
``store.max_feed_lag``); a load balancer takes a stopping or cut-off replica out of
rotation with it. ``/metrics`` is open on the metrics listener (``metrics.listen``,
meant for a private network) and limited to administrators on the HTTPS listener (with
a token that is not scoped to a cluster).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from gateway.errors import Forbidden, Unauthenticated
from gateway.identity.directory import DIRECTORY, AuthenticationFailed
from gateway.keys import READY
from gateway.operations.sampler import SAMPLER
from gateway.telemetry.drain import DRAIN
from gateway.telemetry.metrics import (
    EVENT_LOOP_TASKS,
    FLUSH_S,
    HOT,
    STORE_FEED_LAG,
    shared_between_workers,
)
from gateway.telemetry.metrics import response as metrics_response

logger = logging.getLogger(__name__)

STORE_TIMEOUT_S = 2.0
SAMPLE_EVERY_S = 5.0


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _problems(app: web.Application) -> list[str]:
    problems = []
    if not app[READY][0]:
        problems.append("listeners are not up")
    if app[DRAIN].draining:
        problems.append("shutting down")
    directory = app[DIRECTORY]
    lag = directory.feed_lag()
    STORE_FEED_LAG.set(lag)
    if lag > directory.max_feed_lag_s:
        problems.append(
            f"store change feed is {lag:.1f}s behind (the caches may be stale; "
            f"bound store.max_feed_lag {directory.max_feed_lag_s:g}s)"
        )
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            await directory.store.revision()
    except TimeoutError:
        problems.append("store: no answer")
    except Exception as exc:  # noqa: BLE001 - any store failure means not ready
        problems.append(f"store: {exc}")
    return problems


async def readyz(request: web.Request) -> web.Response:
    problems = await _problems(request.app)
    if problems:
        return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")
    return web.Response(text="ok")


async def metrics_for_admins(request: web.Request) -> web.Response:
    try:
        identity, token = request.app[DIRECTORY].authenticate(request.headers.get("Authorization"))
    except AuthenticationFailed:
        raise Unauthenticated() from None
    if token.cluster_id:
        # A kubeconfig token is for its cluster's Kubernetes API only (as for /v3).
        raise Forbidden("a token scoped to a cluster cannot read metrics")
    if not identity.is_admin:
        raise Forbidden("metrics are for administrators (or use metrics.listen)")
    return await metrics(request)


async def metrics(request: web.Request) -> web.Response:
    request.app[SAMPLER].sample()
    STORE_FEED_LAG.set(request.app[DIRECTORY].feed_lag())
    EVENT_LOOP_TASKS.set(len(asyncio.all_tasks()))
    return metrics_response()


def metrics_app(main: web.Application) -> web.Application:
    """The plain-HTTP application of ``metrics.listen``."""
    app = web.Application()
    for key in (DIRECTORY, DRAIN, READY, SAMPLER):
        app[key] = main[key]  # type: ignore[misc]  # same key, same type
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def sample_forever(app: web.Application) -> None:
    """Keep the figures fresh between scrapes where other workers' scrapes read them:
    batched request metrics every second while requests come (every 5 s while none did:
    an idle gateway should not wake up every second), and with several workers tunnel
    bytes, streams and tasks every 5 s. A single process computes those at its scrape
    only (``metrics``): each costs a pass over every tunnel or task, which at thousands
    of tunnels was a share of the idle gateway's CPU."""
    sampler = app[SAMPLER]
    loop = asyncio.get_running_loop()
    next_sample = loop.time() + SAMPLE_EVERY_S
    busy = True
    while True:
        await asyncio.sleep(FLUSH_S if busy else SAMPLE_EVERY_S)
        busy = HOT.flush()
        if loop.time() >= next_sample and shared_between_workers():
            sampler.sample()
            STORE_FEED_LAG.set(app[DIRECTORY].feed_lag())
            EVENT_LOOP_TASKS.set(len(asyncio.all_tasks(loop)))
            next_sample = loop.time() + SAMPLE_EVERY_S
