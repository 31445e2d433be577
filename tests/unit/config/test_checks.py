"""Start-up checks of certificate, key, secret and kubeconfig files (config/checks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from config.checks import check_files
from config.errors import ConfigError
from config.schema import (
    AgentSettings,
    AuthSettings,
    GatewaySettings,
    LDAPSettings,
    OIDCSettings,
    TLSSettings,
    WebhookSettings,
)
from tests.fakes import TestPKI


@pytest.fixture
def pki(tmp_path: Path) -> TestPKI:
    return TestPKI.create(tmp_path / "pki")


def _tls(cert: Path | str, key: Path | str, ca: Path | str = "") -> GatewaySettings:
    return GatewaySettings(tls=TLSSettings(cert_file=str(cert), key_file=str(key), ca_file=str(ca)))


def _fails(settings: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_files(settings)
    return info.value


def test_defaults_and_good_files_pass(pki: TestPKI) -> None:
    check_files(GatewaySettings())
    check_files(AgentSettings())
    check_files(WebhookSettings())
    check_files(_tls(pki.cert_file, pki.key_file, pki.ca_file))
    check_files(WebhookSettings(tls=TLSSettings(str(pki.cert_file), str(pki.key_file))))


def test_missing_certificate(tmp_path: Path, pki: TestPKI) -> None:
    missing = tmp_path / "tls.crt"
    err = _fails(_tls(missing, pki.key_file))
    assert err.path == "tls.cert_file"
    assert str(err) == f"tls.cert_file: cannot read {missing}: No such file or directory"


def test_unreadable_certificate_key_and_ca(tmp_path: Path, pki: TestPKI) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello\n")
    err = _fails(_tls(tmp_path, pki.key_file))  # a directory
    assert str(err) == f"tls.cert_file: cannot read {tmp_path}: Is a directory"
    err = _fails(_tls(not_pem, pki.key_file))
    assert str(err) == f"tls.cert_file: {not_pem} holds no PEM certificate"
    err = _fails(_tls(pki.key_file, pki.key_file))  # cert and key swapped
    assert err.path == "tls.cert_file" and "holds no PEM certificate" in str(err)
    err = _fails(_tls(pki.cert_file, pki.cert_file))
    assert str(err) == f"tls.key_file: {pki.cert_file} holds no PEM private key"
    err = _fails(_tls(pki.cert_file, pki.key_file, not_pem))
    assert str(err) == f"tls.ca_file: {not_pem} holds no PEM certificate"


def test_encrypted_key(tmp_path: Path, pki: TestPKI) -> None:
    key = serialization.load_pem_private_key(pki.key_file.read_bytes(), password=None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    err = _fails(_tls(pki.cert_file, encrypted))
    assert err.path == "tls.key_file" and "is encrypted" in str(err)


def test_key_of_another_certificate(tmp_path: Path, pki: TestPKI) -> None:
    other = TestPKI.create(tmp_path / "other")
    err = _fails(_tls(pki.cert_file, other.key_file))
    assert err.path == "tls.key_file"
    assert str(err) == f"tls.key_file: {other.key_file} is not the key of {pki.cert_file}"


def test_cert_and_key_go_together(pki: TestPKI) -> None:
    err = _fails(_tls(pki.cert_file, ""))
    assert err.path == "tls.key_file" and "cert_file and key_file go together" in str(err)
    err = _fails(WebhookSettings(tls=TLSSettings(key_file=str(pki.key_file))))
    assert err.path == "tls.cert_file"


def test_disabled_provider_files_are_not_checked(tmp_path: Path) -> None:
    missing = str(tmp_path / "ca.pem")
    off = GatewaySettings(
        auth=AuthSettings(
            oidc=OIDCSettings(enabled=False, ca_file=missing, client_secret_file=missing),
            openldap=LDAPSettings(enabled=False, service_account_password_file=missing),
        )
    )
    check_files(off)
    on = GatewaySettings(auth=AuthSettings(oidc=OIDCSettings(enabled=True, ca_file=missing)))
    err = _fails(on)
    assert err.path == "auth.oidc.ca_file" and "No such file or directory" in str(err)


def test_secret_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    ldap = LDAPSettings(enabled=True, service_account_password_file=str(secret))
    check_files(GatewaySettings(auth=AuthSettings(activedirectory=ldap)))
    secret.write_text("  \n")
    err = _fails(GatewaySettings(auth=AuthSettings(activedirectory=ldap)))
    assert str(err) == (f"auth.activedirectory.service_account_password_file: {secret} is empty")


def test_agent_files(tmp_path: Path, pki: TestPKI) -> None:
    missing = tmp_path / "missing"
    err = _fails(AgentSettings(token_file=str(missing)))
    assert str(err) == f"token_file: cannot read {missing}: No such file or directory"
    err = _fails(AgentSettings(kubeconfig=str(missing)))
    assert err.path == "kubeconfig"
    err = _fails(AgentSettings(ca_file=str(pki.key_file)))
    assert err.path == "ca_file" and "holds no PEM certificate" in str(err)
    kubeconfig = tmp_path / "kc"
    kubeconfig.write_text("apiVersion: v1\n")
    check_files(AgentSettings(ca_file=str(pki.ca_file), kubeconfig=str(kubeconfig)))
