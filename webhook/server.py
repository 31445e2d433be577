"""Run the webhook: load cluster credentials, listen, keep the cache in step until stopped.

SIGHUP reloads the log level and the TLS certificate and key (webhook.reload), between
RELOADING=1 and READY=1 once the webhook has told systemd it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable

from aiohttp import web

from config.errors import ConfigError
from config.notify import Notifier
from config.schema import WebhookSettings
from config.tls import server_context
from webhook.app import build_app
from webhook.cache import RecordCache, Timing, close_api, open_api
from webhook.reload import Reloader

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


class _Announcer:
    """READY=1 once the listener is up and both kinds are listed; reloads in between."""

    def __init__(self, cache: RecordCache, notifier: Notifier, where: str) -> None:
        self.cache = cache
        self.notifier = notifier
        self.where = where
        self.ready = False

    def serving(self) -> str:
        cache = self.cache
        return (
            f"serving on {self.where}: {len(cache.tokens)} tokens, {len(cache.users)} users synced"
        )

    async def run(self) -> None:
        """(The listener is up when this starts.)"""
        self.notifier.status(f"listening on {self.where}; listing records")
        cache = self.cache
        await asyncio.gather(
            cache.token_reflector.synced.wait(), cache.user_reflector.synced.wait()
        )
        self.ready = True
        self.notifier.ready(self.serving())

    def reload(self, reloader: Reloader) -> None:
        """SIGHUP. Before READY=1 systemd is still starting the service: no RELOADING=1."""
        announce = self.ready
        if announce:
            self.notifier.reloading("reloading settings")
        try:
            reloader.reload()
        except Exception:  # a bug: log it, keep serving
            logger.exception("reload failed")
        finally:
            if announce:
                self.notifier.ready(self.serving())


async def _run_until_stopped(
    cache: RecordCache,
    stop: asyncio.Event,
    notifier: Notifier,
    where: str,
    reloader: Reloader | None,
) -> None:
    loop = asyncio.get_running_loop()
    announcer = _Announcer(cache, notifier, where)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reloader is not None:
        loop.add_signal_handler(signal.SIGHUP, announcer.reload, reloader)
    else:
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # not the default: exit
    feeder = asyncio.create_task(cache.run(), name="webhook-cache")
    announcing = asyncio.create_task(announcer.run(), name="webhook-ready")
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        logger.info("shutting down")
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for task in (announcing, feeder):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def serve(
    settings: WebhookSettings,
    stop: asyncio.Event | None = None,
    notifier: Notifier | None = None,
    reload_settings: Callable[[], WebhookSettings] | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT); tells ``notifier`` (systemd) how it goes.

    READY=1 once the listener is up and the first LIST of both kinds is done, STOPPING=1
    when shutting down, WATCHDOG=1 from this loop all along. ``reload_settings`` re-reads
    the settings on SIGHUP (None: SIGHUP is ignored).
    """
    notifier = notifier or Notifier.disabled()
    async with notifier.watchdog_running():
        await _serve(settings, stop or asyncio.Event(), notifier, reload_settings)


async def _serve(
    settings: WebhookSettings,
    stop: asyncio.Event,
    notifier: Notifier,
    reload_settings: Callable[[], WebhookSettings] | None,
) -> None:
    host, port = split_listen(settings.listen)
    ssl_ctx = tls_context(settings)
    reloader = Reloader(settings, reload_settings, ssl_ctx) if reload_settings else None
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
            where = f"{'https' if ssl_ctx else 'http'}://{host}:{port}"
            logger.info("listening on %s, watching namespace %s", where, settings.namespace)
            await _run_until_stopped(cache, stop, notifier, where, reloader)
        finally:
            await runner.cleanup()
    finally:
        await close_api(client)
