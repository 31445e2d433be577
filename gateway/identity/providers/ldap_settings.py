"""OpenLDAP and Active Directory settings, resolved with each kind's defaults."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from config.errors import ConfigError
from config.schema import LDAPSettings
from gateway.identity.providers import ldap_filters as filters
from gateway.identity.providers.ldap_model import (
    DisabledRule,
    canonical_dn,
)

logger = logging.getLogger(__name__)

OFF = "none"
"""The value that turns an optional attribute off."""


@dataclass(frozen=True)
class _Defaults:
    login_attribute: str
    user_object_class: str
    display_name_attribute: str
    group_object_classes: tuple[str, ...]
    member_uid_attribute: str
    disabled_attribute: str
    disabled_bitmask: int


DEFAULTS: dict[str, _Defaults] = {
    "openldap": _Defaults(
        login_attribute="uid",
        user_object_class="inetOrgPerson",
        display_name_attribute="cn",
        group_object_classes=("groupOfNames", "posixGroup"),
        member_uid_attribute="memberUid",
        disabled_attribute="",
        disabled_bitmask=0,
    ),
    "activedirectory": _Defaults(
        login_attribute="sAMAccountName",
        user_object_class="user",
        display_name_attribute="displayName",
        group_object_classes=("group",),
        member_uid_attribute="",
        disabled_attribute="userAccountControl",
        disabled_bitmask=0x2,
    ),
}


@dataclass(frozen=True)
class ServerAddress:
    host: str
    port: int
    ldaps: bool

    def __str__(self) -> str:
        return f"{'ldaps' if self.ldaps else 'ldap'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class LDAPConfig:
    """``LDAPSettings`` checked, with the provider's defaults filled in."""

    name: str
    servers: tuple[ServerAddress, ...]
    strategy: str
    server_retry_s: float
    start_tls: bool
    ca_file: str
    insecure_skip_tls_verify: bool
    connect_timeout_s: float
    operation_timeout_s: int
    request_timeout_s: float
    pool_size: int
    pool_idle_timeout_s: float
    service_account_dn: str
    service_account_password: str = field(repr=False)
    service_account_password_file: str
    user_search_base: str
    user_search_scope: str
    user_login_attribute: str
    user_object_class: str
    user_filter: str
    user_display_name_attribute: str
    group_membership: str
    group_search_base: str
    group_object_classes: tuple[str, ...]
    group_member_attribute: str
    group_member_uid_attribute: str
    group_filter: str
    nested_groups: str
    nested_groups_max_depth: int
    disabled: DisabledRule


def _optional(value: str, default: str) -> str:
    if value.strip().lower() == OFF:
        return ""
    return value.strip() or default


def parse_server_url(url: str) -> ServerAddress:
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in {"ldap", "ldaps"}:
        raise ValueError(f"{url!r}: expected ldap://host[:port] or ldaps://host[:port]")
    if not parts.hostname:
        raise ValueError(f"{url!r}: no host")
    if parts.path not in {"", "/"} or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{url!r}: only scheme, host and port are allowed")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: bad port") from None
    return ServerAddress(
        parts.hostname, port or (636 if scheme == "ldaps" else 389), scheme == "ldaps"
    )


def resolve_settings(name: str, s: LDAPSettings) -> LDAPConfig:
    """Check ``s`` and fill in the defaults of provider ``name``; ConfigError names the key."""
    if name not in DEFAULTS:
        raise ConfigError(f"auth.{name}", "the LDAP provider must be openldap or activedirectory")
    d = DEFAULTS[name]

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"auth.{name}.{key}", message)

    def attribute(key: str, value: str) -> str:
        try:
            return filters.check_attribute(value) if value else ""
        except ValueError as exc:
            raise fail(key, str(exc)) from None

    def search_filter(key: str, value: str) -> str:
        try:
            return filters.check_filter(value)
        except ValueError as exc:
            raise fail(key, str(exc)) from None

    def dn(key: str, value: str, required: bool) -> str:
        if not value.strip():
            if required:
                raise fail(key, "required")
            return ""
        try:
            return canonical_dn(value)
        except ValueError as exc:
            raise fail(key, str(exc)) from None

    def choice(key: str, value: str, allowed: Sequence[str]) -> str:
        lowered = value.strip().lower()
        if lowered not in allowed:
            raise fail(key, f"expected one of {', '.join(allowed)}, got {value!r}")
        return lowered

    if not s.servers:
        raise fail("servers", "at least one ldap:// or ldaps:// URL is required")
    servers: list[ServerAddress] = []
    for url in s.servers:
        try:
            servers.append(parse_server_url(url))
        except ValueError as exc:
            raise fail("servers", str(exc)) from None
    if s.start_tls and all(server.ldaps for server in servers):
        logger.info("auth.%s: start_tls has no effect on ldaps:// servers", name)
    if not s.start_tls and not all(server.ldaps for server in servers):
        logger.warning(
            "auth.%s: ldap:// without start_tls sends passwords unencrypted; "
            "use ldaps:// or start_tls: true",
            name,
        )
    if s.ca_file and not Path(s.ca_file).is_file():
        raise fail("ca_file", f"{s.ca_file}: no such file")
    for key in ("connect_timeout_s", "operation_timeout_s", "request_timeout_s"):
        if getattr(s, key) <= 0:
            raise fail(key.removesuffix("_s"), "must be positive")
    if s.pool_size < 1:
        raise fail("pool_size", "must be at least 1")
    if s.nested_groups_max_depth < 0:
        raise fail("nested_groups_max_depth", "cannot be negative")

    service_dn = s.service_account_dn.strip()
    if service_dn and "=" in service_dn:
        service_dn = dn("service_account_dn", service_dn, required=False)
    if s.service_account_password and s.service_account_password_file:
        raise fail(
            "service_account_password_file",
            "set service_account_password or service_account_password_file, not both",
        )
    if s.service_account_password_file and not Path(s.service_account_password_file).is_file():
        raise fail("service_account_password_file", "no such file")
    if service_dn and not (s.service_account_password or s.service_account_password_file):
        # A DN with an empty password is an unauthenticated bind: it "succeeds" as anonymous.
        raise fail("service_account_password", "required with service_account_dn")
    if not service_dn and (s.service_account_password or s.service_account_password_file):
        raise fail("service_account_dn", "required with a service account password")

    user_base = dn("user_search_base", s.user_search_base, required=True)
    disabled_attribute = attribute(
        "disabled_attribute", _optional(s.disabled_attribute, d.disabled_attribute)
    )
    bitmask = s.disabled_bitmask
    if not bitmask and disabled_attribute and not s.disabled_attribute.strip():
        bitmask = d.disabled_bitmask
    group_classes = tuple(c.strip() for c in s.group_object_classes if c.strip())
    for object_class in group_classes:
        attribute("group_object_classes", object_class)

    return LDAPConfig(
        name=name,
        servers=tuple(servers),
        strategy=choice("server_strategy", s.server_strategy, ("first", "round_robin", "random")),
        server_retry_s=s.server_retry_s,
        start_tls=s.start_tls,
        ca_file=s.ca_file,
        insecure_skip_tls_verify=s.insecure_skip_tls_verify,
        connect_timeout_s=s.connect_timeout_s,
        operation_timeout_s=max(1, math.ceil(s.operation_timeout_s)),
        request_timeout_s=s.request_timeout_s,
        pool_size=s.pool_size,
        pool_idle_timeout_s=s.pool_idle_timeout_s,
        service_account_dn=service_dn,
        service_account_password=s.service_account_password,
        service_account_password_file=s.service_account_password_file,
        user_search_base=user_base,
        user_search_scope=choice("user_search_scope", s.user_search_scope, ("subtree", "one")),
        user_login_attribute=attribute(
            "user_login_attribute", s.user_login_attribute.strip() or d.login_attribute
        ),
        user_object_class=attribute(
            "user_object_class", s.user_object_class.strip() or d.user_object_class
        ),
        user_filter=search_filter("user_filter", s.user_filter),
        user_display_name_attribute=attribute(
            "user_display_name_attribute",
            s.user_display_name_attribute.strip() or d.display_name_attribute,
        ),
        group_membership=choice("group_membership", s.group_membership, ("search", "memberof")),
        group_search_base=dn("group_search_base", s.group_search_base, required=False) or user_base,
        group_object_classes=group_classes or d.group_object_classes,
        group_member_attribute=attribute(
            "group_member_attribute", s.group_member_attribute.strip() or "member"
        ),
        group_member_uid_attribute=attribute(
            "group_member_uid_attribute",
            _optional(s.group_member_uid_attribute, d.member_uid_attribute),
        ),
        group_filter=search_filter("group_filter", s.group_filter),
        nested_groups=choice(
            "nested_groups", s.nested_groups, ("auto", "in_chain", "client", "off")
        ),
        nested_groups_max_depth=s.nested_groups_max_depth,
        disabled=DisabledRule(disabled_attribute, s.disabled_value.strip(), bitmask),
    )
