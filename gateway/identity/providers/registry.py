"""The identity providers configured for this gateway, built from its settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from config.schema import AuthSettings
from gateway.identity.providers.base import PasswordProvider

if TYPE_CHECKING:
    from gateway.identity.providers.github import GitHubProvider
    from gateway.identity.providers.oidc import OIDCProvider

logger = logging.getLogger(__name__)


@dataclass
class Providers:
    password: dict[str, PasswordProvider] = field(default_factory=dict)
    """``openldap`` and ``activedirectory`` (local users are handled by the directory)."""
    oidc: OIDCProvider | None = None
    github: GitHubProvider | None = None

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
        if self.oidc is not None:
            await self.oidc.close()
        if self.github is not None:
            await self.github.close()


def build_providers(settings: AuthSettings) -> Providers:
    providers = Providers()
    for name in ("openldap", "activedirectory"):
        ldap_settings = getattr(settings, name)
        if ldap_settings.enabled:
            from gateway.identity.providers.ldap import LDAPProvider

            providers.password[name] = LDAPProvider(name, ldap_settings)
            logger.info("identity provider %s enabled", name)
    if settings.oidc.enabled:
        from gateway.identity.providers.oidc import OIDCProvider

        providers.oidc = OIDCProvider(settings.oidc)
        logger.info("identity provider oidc enabled (issuer %s)", settings.oidc.issuer_url)
    if settings.github.enabled:
        from gateway.identity.providers.github import GitHubProvider

        providers.github = GitHubProvider(settings.github)
        logger.info("identity provider github enabled")
    return providers


PROVIDERS = web.AppKey("providers", Providers)
