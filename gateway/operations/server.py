"""Run the gateway: open the store, bootstrap, serve HTTPS; reload on SIGHUP; stop gracefully.

Stopping (SIGTERM or SIGINT), in this order:

1. tell systemd ``STOPPING=1``; ``/readyz`` answers 503;
2. stop accepting connections (answers from now on close their keep-alive connection);
3. end watches and followed logs cleanly (the client sees the answer end, as when the
   API server ends a watch) and let every other request finish, for up to
   ``shutdown_grace``;
4. close the tunnels with GOAWAY (agents reconnect to another replica after a short
   random delay), cut what is still running, wait until closed connections have sent
   what they buffered, flush the audit log, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from config import collector, compat
from config.notify import Notifier
from config.schema import GatewaySettings
from config.tls import server_context
from gateway.clusters import tunnels
from gateway.controllers.cluster_controller import CLUSTER_CONTROLLERS
from gateway.front.balancers import ProxyPreface, TrustedProxies
from gateway.front.connection import Front
from gateway.front.connlimit import ConnectionLimit
from gateway.identity.directory import Directory
from gateway.identity.providers.registry import build_providers
from gateway.keys import READY
from gateway.operations import bootstrap, health
from gateway.operations.app import build_app
from gateway.operations.reload import Reloader
from gateway.runtime import Runtime
from gateway.store import open_store
from gateway.telemetry import metrics
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.drain import DRAIN, stopping_step
from tunnel.tls import TLSServer

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
CUT_TIMEOUT_S = 2.0
"""After the grace period and the tunnels' GOAWAY: how long handlers get to finish."""
EXIT_FLUSH_S = 10.0
"""Then: how long closed connections get to send what they still buffer."""


async def serve(
    settings: GatewaySettings,
    stop: asyncio.Event | None = None,
    worker: bool = False,
    reload_settings: Callable[[], GatewaySettings] | None = None,
    notifier: Notifier | None = None,
) -> None:
    """Serve until stopped. ``worker``: one of several processes (see gateway.operations.workers).

    ``reload_settings`` re-reads the settings on SIGHUP (None: SIGHUP is ignored).
    """
    notifier = notifier or Notifier.from_env()
    compat.self_test(compat.GATEWAY)  # dependencies' internals: one WARNING per failed check
    url = bootstrap.server_url(settings)
    advertised = bootstrap.advertise_url(settings)
    host, port = bootstrap.split_listen(settings.listen)
    # Bound before anything else: an address in use stops the gateway here (StartError),
    # before it opens its store, creates the first admin or starts its background work.
    bound = bootstrap.bind_listeners(settings, reuse_port=bool(worker))
    try:
        state = bootstrap.state_dir(settings)
        store = await open_store(settings.store, state)
    except BaseException:
        bound.close()
        raise
    auditor = AuditLog(settings.audit, state)
    try:
        directory = Directory(store)
        directory.max_feed_lag_s = settings.store.max_feed_lag_s
        await directory.load()
        await bootstrap.ensure_admin(directory, settings)
        paths, ca_pem, _ = bootstrap.tls_material(settings, url)
        ssl_ctx = server_context(paths.cert, paths.key, http2=settings.http2)
        providers = build_providers(settings.auth)
        runtime = Runtime(url, ca_pem, VERSION, advertised)
        if not advertised and settings.store.backend == "etcd" and not worker:
            logger.warning(
                "replica.advertise_url is not set and %s is a wildcard address: agents "
                "reach this replica only through %s, so behind a load balancer that pins "
                "source addresses it may get no tunnels; set replica.advertise_url",
                settings.listen,
                url,
            )
        loop = asyncio.get_running_loop()
        app = build_app(settings, directory, runtime, providers, auditor)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=CUT_TIMEOUT_S,
        )
        await runner.setup()  # starts the background work (cleanup_ctx): cleaned up below
        assert runner.server is not None
        # Every client connection is the front's (gateway.front.connection); aiohttp's
        # low-level server answers the management API through the front's bridge.
        limits = settings.limits
        trusted = TrustedProxies(settings.server.trusted_proxies)
        front = Front(
            app,
            runner.server,
            keepalive_s=limits.keepalive_s,
            head_timeout_s=limits.head_timeout_s,
            body_timeout_s=limits.body_timeout_s,
            max_body=limits.max_request_body,
            http2_buffer=limits.http2_buffer,
            trusted=trusted,
        )
        listener = TLSServer(
            front,
            ssl_ctx,
            bound.https,
            handshake_timeout_s=limits.handshake_timeout_s,
            admit=ConnectionLimit(
                limits.max_connections,
                limits.per_address,
                # A balancer's connections count in the total only (it carries many
                # clients); with the PROXY protocol the client is known after accept.
                exempt=trusted.trusts if trusted else None,
            ).admit,
            preface=(
                ProxyPreface(trusted, limits.handshake_timeout_s)
                if settings.server.proxy_protocol
                else None
            ),
        )
        metrics_runner: web.AppRunner | None = None
        reloader: Reloader | None = None
        sampler: asyncio.Task[None] | None = None
        collections: asyncio.Task[None] | None = None
        try:
            # Before anything says we serve: a stop asked from then on is a graceful one
            # (it was the default action, death by SIGTERM, until the handlers came).
            stop = stop or asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            metrics_runner = await _start_metrics(app, settings, bound.metrics)
            app[READY][0] = True
            if not worker:
                print(bootstrap.banner(url, ca_pem, settings), flush=True)
            logger.info("listening on %s:%d (state in %s)", host, port, Path(state).resolve())
            if advertised and not worker:
                logger.info("agents dial this replica itself at %s", advertised)
            if reload_settings:
                reloader = Reloader(app, settings, reload_settings, ssl_ctx)
            reloading: set[asyncio.Task[None]] = set()
            if reloader is not None:
                running = reloader
                loop.add_signal_handler(
                    signal.SIGHUP, lambda: _start_reload(running, notifier, reloading)
                )
            else:
                loop.add_signal_handler(signal.SIGHUP, lambda: None)
            sampler = asyncio.create_task(health.sample_forever(app), name="metrics sampler")
            collections = asyncio.create_task(
                collector.FullCollections().run(), name="full collections"
            )
            notifier.ready(f"serving on {host}:{port}")
            async with notifier.watchdog_running():
                await stop.wait()
                notifier.stopping("stopping: finishing requests in flight")
                await _stop_gracefully(app, listener, front, settings.shutdown_grace_s)
        finally:
            if sampler is not None:
                sampler.cancel()
            if reloader is not None:
                await reloader.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            listener.close()
            front.close_idle()
            with stopping_step("the application's shutdown and cleanup"):
                await runner.cleanup()
            front.abort_all()  # what is left is stuck: its handlers were cut above
            # A transport calls connection_lost only once its send buffer is empty: a
            # process that exits before then loses the end of an answer a slow client
            # was still reading.
            with stopping_step("closed connections sending what they buffered"):
                flushed = await front.wait_closed(EXIT_FLUSH_S)
            if not flushed:
                logger.warning("shutting down: some connections did not finish sending")
            if metrics_runner is not None:
                await metrics_runner.cleanup()
            if collections is not None:  # (the controllers' stop above makes garbage too)
                collections.cancel()
    finally:
        bound.close()  # (closed already, unless the start failed on the way)
        metrics.HOT.flush()  # with several workers, the last second's counts outlive us
        auditor.close()
        with stopping_step("closing the store"):
            await store.close()
    logger.info("stopped")


async def _start_metrics(
    app: web.Application, settings: GatewaySettings, sockets: list[socket.socket]
) -> web.AppRunner | None:
    """The plain-HTTP ``metrics.listen`` server on its bound sockets, if set."""
    if not sockets:
        return None
    runner = web.AppRunner(health.metrics_app(app), handle_signals=False, access_log=None)
    await runner.setup()
    for sock in sockets:
        await web.SockSite(runner, sock).start()
    logger.info("metrics on http://%s/metrics", settings.metrics.listen)
    return runner


def _start_reload(reloader: Reloader, notifier: Notifier, tasks: set[asyncio.Task[None]]) -> None:
    async def run() -> None:
        notifier.reloading("reloading settings")
        try:
            await reloader.reload()
        finally:
            notifier.ready("serving")

    task = asyncio.create_task(run(), name="reload")
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _stop_gracefully(
    app: web.Application, listener: TLSServer, front: Front, grace_s: float
) -> None:
    app[READY][0] = False
    listener.close()
    # What exists now is what this process ends with: the collector no longer looks at it
    # (with thousands of tunnels, full collections over objects that only exiting frees
    # were most of a stopping gateway's CPU). New objects are still collected.
    gc.freeze()
    # Not runner.server.pre_shutdown(): it makes aiohttp ignore what arrives on every
    # connection, tunnels and upgraded sessions included, which would stall them.
    # Answers given from now on close their connection instead (see gateway.front.connection).
    drain = app[DRAIN]
    ended = drain.start()
    front.close_idle()
    logger.info(
        "shutting down: %d requests in flight (%d watches and followed logs ended)",
        drain.active,
        ended,
    )
    with stopping_step("waiting for requests in flight"):
        idle = await drain.wait_idle(grace_s)
    if not idle:
        logger.warning(
            "shutting down: %d requests still running after %.0f s; cutting them",
            drain.active,
            grace_s,
        )
    controllers = app.get(CLUSTER_CONTROLLERS)
    if controllers is not None:
        # Dropped tunnels then ask no status write and lease release each: the
        # controllers' stop gives every lease up in one write.
        controllers.begin_stop()
    with stopping_step(f"closing {len(app[tunnels.TUNNELS].all_links())} tunnels"):
        await tunnels.close_all(app)
