"""Run the gateway: open the store, bootstrap, serve HTTPS until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from config.schema import GatewaySettings
from config.tls import server_context
from gateway import bootstrap, proxy
from gateway.app import build_app
from gateway.directory import Directory
from gateway.providers.registry import build_providers
from gateway.runtime import Runtime
from gateway.store import open_store

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
SHUTDOWN_TIMEOUT_S = 10.0


async def serve(
    settings: GatewaySettings, stop: asyncio.Event | None = None, worker: bool = False
) -> None:
    """Serve until stopped. ``worker``: one of several processes (see gateway.workers)."""
    url = bootstrap.server_url(settings)
    state = bootstrap.state_dir(settings)
    store = await open_store(settings.store, state)
    try:
        directory = Directory(store)
        await directory.load()
        await bootstrap.ensure_admin(directory, settings)
        paths, ca_pem, _ = bootstrap.tls_material(settings, url)
        ssl_ctx = server_context(paths.cert, paths.key)
        providers = build_providers(settings.auth)
        app = build_app(settings, directory, Runtime(url, ca_pem, VERSION), providers)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        assert runner.server is not None
        runner.server.request_handler = proxy.fast_path(app, runner.server.request_handler)
        host, port = bootstrap.split_listen(settings.listen)
        site = web.TCPSite(
            runner, host, port, ssl_context=ssl_ctx, backlog=1024, reuse_port=worker or None
        )
        await site.start()
        if not worker:
            print(bootstrap.banner(url, ca_pem), flush=True)
        logger.info("listening on %s:%d (state in %s)", host, port, Path(state).resolve())
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            logger.info("shutting down")
            await runner.cleanup()
    finally:
        await store.close()
