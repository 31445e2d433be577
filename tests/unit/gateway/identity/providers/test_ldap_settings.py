"""LDAPSettings: defaults per provider, validation, secrets (no directory needed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from config import loader
from config.errors import ConfigError
from config.schema import GatewaySettings, LDAPSettings
from gateway.identity.providers.base import InvalidCredentials
from gateway.identity.providers.ldap import LDAPProvider
from gateway.identity.providers.ldap_settings import parse_server_url, resolve_settings

OPENLDAP_YAML = """\
auth:
  openldap:
    enabled: true
    servers: [ldaps://ldap1.example.org, ldaps://ldap2.example.org]
    server_strategy: round_robin
    ca_file: {ca}
    service_account_dn: cn=herdgate,ou=services,dc=example,dc=org
    service_account_password_file: {secret}
    user_search_base: ou=people,dc=example,dc=org
    group_search_base: ou=groups,dc=example,dc=org
    disabled_attribute: pwdAccountLockedTime
    connect_timeout: 3s
    operation_timeout: 5s
  activedirectory:
    enabled: true
    servers: [ldap://dc1.corp.example.com, ldap://dc2.corp.example.com]
    start_tls: true
    service_account_dn: CN=svc-herdgate,OU=Service Accounts,DC=corp,DC=example,DC=com
    user_search_base: DC=corp,DC=example,DC=com
    user_login_attribute: userPrincipalName
    user_filter: (memberOf=CN=k8s-users,OU=Groups,DC=corp,DC=example,DC=com)
"""


def _settings(**kw: object) -> LDAPSettings:
    base = LDAPSettings(
        enabled=True,
        servers=("ldap://127.0.0.1:1",),
        service_account_dn="cn=svc,dc=x",
        service_account_password="pw",
        user_search_base="ou=people,dc=x",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_yaml_and_environment(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    path = tmp_path / "g.yaml"
    path.write_text(OPENLDAP_YAML.format(ca=ca, secret=secret))
    environ = {"HERDGATE_AUTH__ACTIVEDIRECTORY__SERVICE_ACCOUNT_PASSWORD": "from-env"}
    settings = loader.load(GatewaySettings, path, environ=environ)

    ol = resolve_settings("openldap", settings.auth.openldap)
    assert [str(s) for s in ol.servers] == [
        "ldaps://ldap1.example.org:636",
        "ldaps://ldap2.example.org:636",
    ]
    assert ol.strategy == "round_robin"
    assert ol.connect_timeout_s == 3
    assert ol.operation_timeout_s == 5
    assert ol.user_login_attribute == "uid"
    assert ol.user_object_class == "inetOrgPerson"
    assert ol.group_object_classes == ("groupOfNames", "posixGroup")
    assert ol.group_member_uid_attribute == "memberUid"
    assert ol.disabled.attribute == "pwdAccountLockedTime"
    assert ol.disabled.bitmask == 0
    assert ol.service_account_password_file == str(secret)

    ad = resolve_settings("activedirectory", settings.auth.activedirectory)
    assert ad.service_account_password == "from-env"
    assert ad.service_account_dn == (
        "cn=svc-herdgate,ou=Service Accounts,dc=corp,dc=example,dc=com"
    )
    assert [str(s) for s in ad.servers] == [
        "ldap://dc1.corp.example.com:389",
        "ldap://dc2.corp.example.com:389",
    ]
    assert ad.start_tls
    assert ad.user_login_attribute == "userPrincipalName"
    assert ad.user_object_class == "user"
    assert ad.user_display_name_attribute == "displayName"
    assert ad.group_object_classes == ("group",)
    assert ad.group_member_uid_attribute == ""
    assert ad.group_search_base == "dc=corp,dc=example,dc=com"
    assert ad.disabled.attribute == "userAccountControl"
    assert ad.disabled.bitmask == 2
    assert ad.nested_groups == "auto"


def test_password_is_not_in_repr() -> None:
    settings = _settings(service_account_password="s3cret-value")
    assert "s3cret-value" not in repr(settings)
    assert "s3cret-value" not in repr(resolve_settings("openldap", settings))


def test_none_switches_defaults_off() -> None:
    cfg = resolve_settings(
        "activedirectory", _settings(disabled_attribute="none", group_member_uid_attribute="none")
    )
    assert cfg.disabled.attribute == ""
    ol = resolve_settings("openldap", _settings(group_member_uid_attribute="none"))
    assert ol.group_member_uid_attribute == ""


def test_custom_disabled_attribute_keeps_its_own_rule() -> None:
    cfg = resolve_settings(
        "activedirectory", _settings(disabled_attribute="employeeType", disabled_value="gone")
    )
    assert (cfg.disabled.attribute, cfg.disabled.value, cfg.disabled.bitmask) == (
        "employeeType",
        "gone",
        0,
    )


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"servers": ()}, "auth.openldap.servers"),
        ({"servers": ("http://x",)}, "auth.openldap.servers"),
        ({"servers": ("ldap://x/dc=org?uid",)}, "auth.openldap.servers"),
        ({"user_search_base": ""}, "auth.openldap.user_search_base"),
        ({"user_search_base": "not a dn"}, "auth.openldap.user_search_base"),
        ({"service_account_password": ""}, "auth.openldap.service_account_password"),
        ({"service_account_dn": ""}, "auth.openldap.service_account_dn"),
        (
            {"service_account_password_file": "/nonexistent"},
            "auth.openldap.service_account_password_file",
        ),
        ({"user_login_attribute": "uid=*"}, "auth.openldap.user_login_attribute"),
        ({"user_filter": "uid=x"}, "auth.openldap.user_filter"),
        ({"group_filter": "(a=1"}, "auth.openldap.group_filter"),
        ({"server_strategy": "fastest"}, "auth.openldap.server_strategy"),
        ({"nested_groups": "yes"}, "auth.openldap.nested_groups"),
        ({"group_membership": "both"}, "auth.openldap.group_membership"),
        ({"user_search_scope": "base"}, "auth.openldap.user_search_scope"),
        ({"request_timeout_s": 0.0}, "auth.openldap.request_timeout"),
        ({"pool_size": 0}, "auth.openldap.pool_size"),
        ({"ca_file": "/nonexistent/ca.pem"}, "auth.openldap.ca_file"),
        ({"group_object_classes": ("group of names",)}, "auth.openldap.group_object_classes"),
    ],
)
def test_invalid_settings_name_the_key(change: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_settings("openldap", _settings(**change))
    assert info.value.path == where


def test_password_and_file_together_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    with pytest.raises(ConfigError, match="not both"):
        resolve_settings("openldap", _settings(service_account_password_file=str(secret)))


def test_anonymous_service_account_is_allowed() -> None:
    cfg = resolve_settings(
        "openldap", _settings(service_account_dn="", service_account_password="")
    )
    assert cfg.service_account_dn == ""


def test_server_urls() -> None:
    assert str(parse_server_url("ldap://LDAP.example.org")) == "ldap://ldap.example.org:389"
    assert str(parse_server_url("ldaps://10.0.0.1:3269/")) == "ldaps://10.0.0.1:3269"
    assert parse_server_url("ldaps://[::1]:636").host == "::1"
    with pytest.raises(ValueError, match="bad port"):
        parse_server_url("ldap://x:99999")


async def test_empty_password_is_refused_before_any_bind(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = LDAPProvider("openldap", _settings())

    async def no_network(*_: object) -> object:
        raise AssertionError("the provider must not contact the server")

    monkeypatch.setattr(provider, "_run", no_network)
    try:
        for username, password in [("alice", ""), ("", "pw"), ("x" * 1000, "pw"), ("\ud800", "pw")]:
            with pytest.raises(InvalidCredentials):
                await provider.authenticate(username, password)
    finally:
        await provider.close()


async def test_refresh_refuses_other_principals() -> None:
    provider = LDAPProvider("openldap", _settings())
    try:
        with pytest.raises(ValueError, match="not an openldap_user principal"):
            await provider.refresh("activedirectory_user://cn=x,dc=y")
    finally:
        await provider.close()
