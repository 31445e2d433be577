"""What every identity provider gives the gateway.

A provider turns credentials into an :class:`ExternalIdentity` (a user principal with
its group principals). The gateway links each user principal to a herdgate user
(``u-xxxxx``) on first login and keeps the groups fresh with :meth:`refresh`.

Principal ids: ``openldap_user://<dn>``, ``openldap_group://<dn>``,
``activedirectory_user://<dn>``, ``activedirectory_group://<dn>``,
``github_user://<id>``, ``github_org://<id>``, ``github_team://<id>``,
``oidc_user://<sub>``, ``oidc_group://<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    provider: str
    """``openldap``, ``activedirectory``, ``github`` or ``oidc``."""
    principal_id: str
    """The user principal, e.g. ``openldap_user://uid=alice,ou=people,dc=example,dc=org``."""
    login_name: str
    """What the person typed or the provider calls them (uid, sAMAccountName, login)."""
    display_name: str = ""
    groups: tuple[str, ...] = ()
    """Group principals, e.g. ``openldap_group://cn=ops,ou=groups,dc=example,dc=org``."""
    enabled: bool = True
    """False when the directory marks the account disabled."""


class ProviderError(Exception):
    """Base class; messages are safe to show to the caller (no secrets, no filters)."""


class InvalidCredentials(ProviderError):
    """Wrong user name or password, or an invalid token (HTTP 401)."""


class ProviderUnavailable(ProviderError):
    """The provider cannot be reached or failed (HTTP 503 on login)."""


class PasswordProvider(Protocol):
    """A provider that checks a user name and password (LDAP, Active Directory)."""

    name: str

    async def authenticate(self, username: str, password: str) -> ExternalIdentity:
        """Raises ``InvalidCredentials`` or ``ProviderUnavailable``."""
        ...

    async def refresh(self, principal_id: str) -> ExternalIdentity | None:
        """Current groups and status of a known principal; None if it no longer exists.

        Raises ``ProviderUnavailable`` when the provider cannot answer.
        """
        ...

    async def close(self) -> None: ...
