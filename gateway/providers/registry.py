"""The identity providers configured for this gateway, built from its settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from config.schema import AuthSettings
from gateway.providers.base import PasswordProvider

logger = logging.getLogger(__name__)


@dataclass
class Providers:
    password: dict[str, PasswordProvider] = field(default_factory=dict)
    """``openldap`` and ``activedirectory`` (local users are handled by the directory)."""
    oidc: Any = None
    github: Any = None

    def names(self) -> list[str]:
        names = ["local", *self.password]
        if self.oidc is not None:
            names.append("oidc")
        if self.github is not None:
            names.append("github")
        return names

    async def close(self) -> None:
        for provider in self.password.values():
            await provider.close()
        for other in (self.oidc, self.github):
            if other is not None and hasattr(other, "close"):
                await other.close()


def build_providers(settings: AuthSettings) -> Providers:
    providers = Providers()
    for name in ("openldap", "activedirectory"):
        ldap_settings = getattr(settings, name)
        if ldap_settings.enabled:
            from gateway.providers.ldap import LDAPProvider

            providers.password[name] = LDAPProvider(name, ldap_settings)
            logger.info("identity provider %s enabled", name)
    return providers
