"""Run the webhook: load cluster credentials, listen, keep the cache in step until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl

from aiohttp import web

from config.errors import ConfigError
from config.schema import WebhookSettings
from config.tls import server_context
from webhook.app import build_app
from webhook.cache import RecordCache, Timing, close_api, open_api

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 5.0
KEEPALIVE_TIMEOUT_S = 120.0
"""kube-apiserver keeps its webhook connection alive between reviews."""


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:6440`` for IPv6) as a host and a port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("listen", f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def tls_context(settings: WebhookSettings) -> ssl.SSLContext | None:
    cert, key = settings.tls.cert_file, settings.tls.key_file
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("tls", "cert_file and key_file go together")
    try:
        return server_context(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("tls", f"cannot load {cert} / {key}: {exc}") from exc


async def _run_until_stopped(cache: RecordCache, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    feeder = asyncio.create_task(cache.run(), name="webhook-cache")
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


async def serve(settings: WebhookSettings, stop: asyncio.Event | None = None) -> None:
    # kubernetes-asyncio logs whole response bodies at debug level: they hold the hashes.
    logging.getLogger("kubernetes_asyncio.client.rest").setLevel(
        max(logging.INFO, logging.getLogger().getEffectiveLevel())
    )
    host, port = split_listen(settings.listen)
    ssl_ctx = tls_context(settings)
    client, api = await open_api(settings.kubeconfig)
    try:
        cache = RecordCache(api, settings.namespace, Timing.from_settings(settings))
        app = build_app(cache, settings.max_body)
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=KEEPALIVE_TIMEOUT_S,
            shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, backlog=1024)
            await site.start()
            scheme = "https" if ssl_ctx else "http"
            logger.info(
                "listening on %s://%s:%d, watching namespace %s",
                scheme, host, port, settings.namespace,
            )  # fmt: skip
            await _run_until_stopped(cache, stop or asyncio.Event())
        finally:
            await runner.cleanup()
    finally:
        await close_api(client)
