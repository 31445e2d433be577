"""SIGHUP: which settings changed, and which of those need a restart (pure helpers)."""

from __future__ import annotations

import dataclasses

from config.reload import changed_paths, needs_restart
from config.schema import GatewaySettings, LDAPSettings
from gateway.operations.reload import RELOADABLE


def test_identical_settings_change_nothing() -> None:
    assert changed_paths(GatewaySettings(), GatewaySettings()) == []


def test_nested_changes_are_dotted_paths() -> None:
    old = GatewaySettings()
    new = dataclasses.replace(
        old,
        listen="127.0.0.1:9443",
        tls=dataclasses.replace(old.tls, cert_file="/etc/herdgate/tls.crt"),
        auth=dataclasses.replace(
            old.auth,
            openldap=dataclasses.replace(LDAPSettings(), servers=("ldap.example",)),
            login_failures_per_user=3,
        ),
        logging=dataclasses.replace(old.logging, level="debug"),
        audit=dataclasses.replace(old.audit, max_backups=9),
    )
    assert sorted(changed_paths(old, new)) == [
        "audit.max_backups",
        "auth.login_failures_per_user",
        "auth.openldap.servers",
        "listen",
        "logging.level",
        "tls.cert_file",
    ]


def test_paths_use_yaml_keys_for_durations() -> None:
    old = GatewaySettings()
    new = dataclasses.replace(
        old,
        shutdown_grace_s=5,
        tokens=dataclasses.replace(old.tokens, session_ttl_s=60),
    )
    assert sorted(changed_paths(old, new)) == ["shutdown_grace", "tokens.session_ttl"]


def test_needs_restart_keeps_what_cannot_be_reloaded() -> None:
    paths = [
        "tls.cert_file",
        "auth.oidc.issuer",
        "auth.login_failure_window",
        "logging.level",
        "logging.format",
        "listen",
        "tlsx",
        "audit.path",
    ]
    assert needs_restart(paths, RELOADABLE) == ["logging.format", "listen", "tlsx", "audit.path"]
    assert needs_restart([], RELOADABLE) == []
    assert needs_restart(["tls"], RELOADABLE) == []


def test_changed_then_restart_end_to_end() -> None:
    old = GatewaySettings()
    new = dataclasses.replace(
        old,
        workers=4,
        logging=dataclasses.replace(old.logging, level="warning"),
        tls=dataclasses.replace(old.tls, key_file="k.pem"),
    )
    assert needs_restart(changed_paths(old, new), RELOADABLE) == ["workers"]
