"""Identity providers beyond local users: LDAP/Active Directory, OIDC, GitHub."""

from __future__ import annotations
