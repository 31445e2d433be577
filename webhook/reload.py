"""SIGHUP: apply the webhook settings that can change without dropping a connection.

Reloaded: ``logging.level`` and the TLS certificate and key (``tls.cert_file``,
``tls.key_file``; read again even when the paths are the same, so a renewed certificate
written over the old files is picked up). New handshakes use the new certificate, open
connections keep theirs. Switching between HTTP and HTTPS, and every other setting,
needs a restart: those are named in one warning. A file that no longer loads, or a
certificate that does not load, leaves everything as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Callable

from config.reload import (
    apply_log_level,
    changed_paths,
    load_again,
    needs_restart,
    reload_certificate,
    warn_restart,
)
from config.schema import TLSSettings, WebhookSettings

logger = logging.getLogger(__name__)

RELOADABLE = ("tls", "logging.level")
"""``tls.ca_file`` is unused by the webhook: changing it changes nothing."""


class Reloader:
    def __init__(
        self,
        settings: WebhookSettings,
        load: Callable[[], WebhookSettings],
        ssl_ctx: ssl.SSLContext | None,
    ) -> None:
        self.settings = settings
        self._load = load
        self._ssl = ssl_ctx

    def reload(self) -> bool:
        """Re-read the settings and apply what can be applied; False if they did not load."""
        new = load_again(self._load)
        if new is None:
            return False
        old = self.settings
        changed = changed_paths(old, new)
        restart = needs_restart(changed, RELOADABLE)
        logging_settings = apply_log_level(old.logging, new.logging)
        tls = self._reload_tls(old.tls, new.tls)
        if tls is None:
            restart += [p for p in changed if p.startswith("tls.")]
            tls = old.tls
        warn_restart(restart)
        self.settings = dataclasses.replace(old, tls=tls, logging=logging_settings)
        logger.info("reloaded settings (%d changed)", len(changed))
        logger.debug("reload: log level %s", self.settings.logging.level)
        return True

    def _reload_tls(self, old: TLSSettings, new: TLSSettings) -> TLSSettings | None:
        """The TLS settings now in effect; None when the change needs a restart."""
        cert, key = new.cert_file, new.key_file
        if self._ssl is None:
            if cert or key:
                logger.warning("reload: serving plain HTTP; HTTPS needs a restart")
                return None
            return new
        if not cert or not key:
            logger.warning("reload: serving HTTPS; plain HTTP needs a restart")
            return None
        return new if reload_certificate(self._ssl, cert, key) else old
