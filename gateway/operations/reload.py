"""SIGHUP: apply the settings that can change without dropping a connection.

Reloaded: the TLS certificate and key (new handshakes use them; open connections keep
theirs), the ``auth`` section (providers are rebuilt and swapped in, login limits
updated) and ``logging.level``. Anything else that changed is named in a warning that
says a restart is needed. A file that no longer loads leaves everything as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiohttp import web

from config.errors import ConfigError
from config.reload import (
    apply_log_level,
    changed_paths,
    load_again,
    needs_restart,
    reload_certificate,
    warn_restart,
)
from config.schema import GatewaySettings
from gateway.api.common import LIMITER
from gateway.identity.providers.registry import PROVIDERS, Providers, build_providers
from gateway.identity.ratelimit import Limit
from gateway.operations import bootstrap

logger = logging.getLogger(__name__)

RELOADABLE = ("tls", "auth", "logging.level")


class Reloader:
    def __init__(
        self,
        app: web.Application,
        settings: GatewaySettings,
        load: Callable[[], GatewaySettings],
        ssl_ctx: ssl.SSLContext,
    ) -> None:
        self.app = app
        self.settings = settings
        self._load = load
        self._ssl = ssl_ctx
        self._retired: set[asyncio.Task[None]] = set()

    async def reload(self) -> bool:
        """Re-read the settings and apply what can be applied; False if nothing was."""
        new = load_again(self._load)
        if new is None:
            return False
        old = self.settings
        changed = changed_paths(old, new)
        logging_settings = apply_log_level(old.logging, new.logging)
        self._reload_tls(new)
        if new.auth != old.auth:
            await self._reload_auth(new)
        warn_restart(needs_restart(changed, RELOADABLE))
        self.settings = dataclasses.replace(
            old, tls=new.tls, auth=new.auth, logging=logging_settings
        )
        logger.info("reloaded settings (%d changed)", len(changed))
        return True

    def _reload_tls(self, settings: GatewaySettings) -> None:
        url = bootstrap.server_url(settings)
        try:
            paths, _, _ = bootstrap.tls_material(settings, url)
        except (OSError, ConfigError) as exc:
            logger.error("reload: keeping the current TLS certificate: %s", exc)
            return
        reload_certificate(self._ssl, str(paths.cert), str(paths.key))

    async def _reload_auth(self, settings: GatewaySettings) -> None:
        try:
            fresh = build_providers(settings.auth)
        except ConfigError as exc:
            logger.error("reload: keeping the current identity providers: %s", exc)
            return
        providers = self.app[PROVIDERS]
        retired = Providers(providers.password, providers.oidc, providers.github)
        providers.password, providers.oidc, providers.github = (
            fresh.password,
            fresh.oidc,
            fresh.github,
        )
        if fresh.oidc is not None:
            self._spawn(fresh.oidc.start())
        limiter = self.app[LIMITER]
        limiter.users.limit = Limit(
            settings.auth.login_failures_per_user, settings.auth.login_failure_window_s
        )
        limiter.addresses.limit = Limit(
            settings.auth.login_failures_per_address, settings.auth.login_failure_window_s
        )
        logger.info("reload: identity providers now %s", ", ".join(providers.names()))
        self._spawn(self._retire(retired))

    async def _retire(self, providers: Providers) -> None:
        # Logins already talking to the old providers get a moment to finish.
        await asyncio.sleep(30)
        await providers.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def close(self) -> None:
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
