"""The authenticated caller: the one value type shared by the gateway and the webhook."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    """herdgate user id (``u-xxxxx``); the Kubernetes username after impersonation."""
    username: str
    """The login name, sent as the ``username`` extra."""
    principal_id: str
    """The user's principal, e.g. ``local://u-xxxxx`` or ``openldap_user://<dn>``."""
    groups: tuple[str, ...] = ()
    """Group principals from the identity provider."""
    is_admin: bool = False
    token_id: str = ""
    """The token that authenticated this request (empty for other credentials)."""
