"""The web page's security rules as data and pure functions: cookie names, the CSRF
token, the response headers, which fetches may post a form (docs/security.md, "The web
page")."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

SESSION_COOKIE = "__Host-herdgate-session"
"""The logged-in browser's herdgate session token, ``token-xxxxx:<secret>`` (the store
keeps only its hash). ``__Host-``: the browser accepts it only with ``Secure``,
``Path=/`` and no ``Domain``, so a neighbouring host cannot set or shadow it."""
LOGIN_CSRF_COOKIE = "__Host-herdgate-csrf"
"""Before login: a random value the login form's CSRF token is derived from."""

SAME_SITE = "Strict"
"""Every cookie of the page is ``Secure`` (HTTPS only), ``HttpOnly`` (out of scripts'
reach), ``Path=/`` and ``SameSite=Strict``: never sent with a request another site
starts, not even a top-level link (the OAuth callback, which arrives from the
provider's site, answers with a page that moves on by itself)."""

CSRF_FIELD = "csrf"
_CSRF_LABEL = b"herdgate web form v1"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""Nothing runs (no script source at all), styles only from ``/ui/style.css``, forms
post only here, no page may frame this one, no ``<base>``."""

HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
"""On every answer of the page, errors and redirects included."""

MAX_FORM_BYTES = 16 * 1024
"""The largest form body read (the biggest field is a password of at most 4096
characters)."""

_SAFE_FILE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")


def new_login_secret() -> str:
    """The value of ``LOGIN_CSRF_COOKIE``: 256 random bits."""
    return secrets.token_urlsafe(32)


def csrf_token(secret: str) -> str:
    """The synchronizer token of the forms of a browser that holds ``secret`` (its session
    token, or before login its ``LOGIN_CSRF_COOKIE``): an HMAC keyed with that secret.

    Nothing is stored: every gateway process derives the same token. Another site can
    neither read the HttpOnly cookie nor compute the token from anything it can see, and
    the token says nothing about the secret. A new login (a new session token) makes a
    new one; logging out makes the old one useless."""
    digest = hmac.new(secret.encode("utf-8"), _CSRF_LABEL, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def csrf_valid(secret: str, submitted: str | None) -> bool:
    """Whether a form's ``csrf`` field belongs to the browser that holds ``secret``; a
    missing secret or field is never valid."""
    if not secret or not submitted:
        return False
    return hmac.compare_digest(csrf_token(secret).encode(), submitted.encode("utf-8", "replace"))


def fetch_allowed(sec_fetch_site: str | None) -> bool:
    """A second line behind the CSRF token: a form posted from another site's page is
    refused when the browser says so (``Sec-Fetch-Site``; older browsers send none)."""
    return sec_fetch_site is None or sec_fetch_site in ("same-origin", "none")


def attachment_name(name: str) -> str:
    """A kubeconfig's file name: ``kubeconfig-<name>.yaml`` with only safe characters."""
    safe = _DOTS.sub(".", _SAFE_FILE_NAME.sub("-", name)).strip(".-")[:100]
    return f"kubeconfig-{safe}.yaml" if safe else "kubeconfig.yaml"
