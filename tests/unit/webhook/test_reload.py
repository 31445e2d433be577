"""SIGHUP for the webhook: the log level and the TLS certificate change, the rest is named."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from config import loader, tls
from config.errors import ConfigError
from config.logging import QUIET_LOGGERS
from config.reload import changed_paths, needs_restart
from config.schema import LoggingSettings, TLSSettings, WebhookSettings
from webhook.reload import RELOADABLE, Reloader

KUBERNETES_REST_LOGGER = QUIET_LOGGERS[0]


@pytest.fixture(autouse=True)
def keep_levels() -> Iterator[None]:
    loggers = [logging.getLogger(), logging.getLogger(KUBERNETES_REST_LOGGER)]
    levels = [log.level for log in loggers]
    yield
    for log, level in zip(loggers, levels, strict=True):
        log.setLevel(level)


def test_changed_paths_are_yaml_keys() -> None:
    old = WebhookSettings()
    new = dataclasses.replace(
        old,
        namespace="other",
        watch_timeout_s=10,
        tls=TLSSettings(cert_file="/c", key_file="/k"),
        logging=LoggingSettings(level="debug"),
    )
    changed = changed_paths(old, new)
    assert changed == [
        "namespace", "tls.cert_file", "tls.key_file", "watch_timeout", "logging.level"
    ]  # fmt: skip
    assert changed_paths(old, WebhookSettings()) == []
    assert needs_restart(changed, RELOADABLE) == ["namespace", "watch_timeout"]
    assert needs_restart(["logging.format", "logging"], ["logging.level"]) == [
        "logging.format",
        "logging",
    ]


class CA:
    def __init__(self, directory: Path) -> None:
        self.cert, self.key = tls.make_ca("test-ca")
        self.file = directory / "ca.crt"
        self.file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cert_file: Path, key_file: Path) -> int:
        """Write a new server certificate and key; its serial number."""
        cert, key = tls.issue_server_cert(self.cert, self.key, ["127.0.0.1"])
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert.serial_number


def served_serial(server: ssl.SSLContext, ca_file: Path) -> int:
    """The serial number a new connection to ``server`` sees (an in-memory handshake)."""
    client = ssl.create_default_context(cafile=str(ca_file))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        der = c.getpeercert(binary_form=True) if c.version() else None
        if der:
            return x509.load_der_x509_certificate(der).serial_number
    raise AssertionError("no handshake")


class Files:
    def __init__(self, tmp: Path) -> None:
        self.ca = CA(tmp)
        self.cert, self.key = tmp / "tls.crt", tmp / "tls.key"
        self.serial = self.ca.issue(self.cert, self.key)
        self.settings = loader.build(
            WebhookSettings, {"tls": {"cert_file": str(self.cert), "key_file": str(self.key)}}
        )
        self.ctx = tls.server_context(self.cert, self.key)
        self.next = self.settings

    def load(self) -> WebhookSettings:
        return self.next


def test_renewed_certificate_is_served_to_new_connections(tmp_path: Path) -> None:
    files = Files(tmp_path)
    reloader = Reloader(files.settings, files.load, files.ctx)
    assert served_serial(files.ctx, files.ca.file) == files.serial
    renewed = files.ca.issue(files.cert, files.key)  # same paths, new contents
    assert reloader.reload()
    assert served_serial(files.ctx, files.ca.file) == renewed != files.serial


def test_key_that_does_not_match_keeps_the_old_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = Files(tmp_path)
    reloader = Reloader(files.settings, files.load, files.ctx)
    other_cert, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    files.ca.issue(other_cert, other_key)
    files.next = dataclasses.replace(
        files.settings, tls=TLSSettings(cert_file=str(other_cert), key_file=str(files.key))
    )
    assert reloader.reload()
    assert "keeping the current TLS certificate" in caplog.text
    assert served_serial(files.ctx, files.ca.file) == files.serial
    assert reloader.settings.tls == files.settings.tls


def test_log_level_applied_other_keys_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = Files(tmp_path)
    reloader = Reloader(files.settings, files.load, files.ctx)
    files.next = dataclasses.replace(
        files.settings,
        namespace="elsewhere",
        max_body=4096,
        logging=LoggingSettings(level="debug", format="text"),
    )
    with caplog.at_level(logging.INFO):
        assert reloader.reload()
        assert logging.getLogger().level == logging.DEBUG
        # The Kubernetes client logs response bodies (hashes) at debug: never below info.
        assert logging.getLogger(KUBERNETES_REST_LOGGER).level == logging.INFO
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "reload: a restart is needed to apply namespace, max_body, logging.format "
        "(the rest was applied)"
    ]
    # What was applied is now the running settings; the rest still is what it was.
    assert reloader.settings.logging == LoggingSettings(level="debug", format="auto")
    assert reloader.settings.namespace == "herdgate-system"


def test_a_config_that_does_not_load_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = Files(tmp_path)

    def broken() -> WebhookSettings:
        raise ConfigError("logging.level", "expected one of debug, info, warning, error")

    reloader = Reloader(files.settings, broken, files.ctx)
    level = logging.getLogger().level
    assert not reloader.reload()
    assert "configuration error, keeping the running settings: logging.level" in caplog.text
    assert logging.getLogger().level == level
    assert reloader.settings is files.settings


def test_a_bad_level_is_reported_and_the_rest_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = Files(tmp_path)
    reloader = Reloader(files.settings, files.load, files.ctx)
    files.next = dataclasses.replace(files.settings, logging=LoggingSettings(level="loud"))
    renewed = files.ca.issue(files.cert, files.key)
    assert reloader.reload()
    assert "keeping the log level: logging.level" in caplog.text
    assert reloader.settings.logging.level == "info"
    assert served_serial(files.ctx, files.ca.file) == renewed


def test_switching_between_http_and_https_needs_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = Files(tmp_path)
    plain = Reloader(WebhookSettings(), files.load, None)
    assert plain.reload()
    assert "a restart is needed to apply tls.cert_file, tls.key_file" in caplog.text
    assert plain.settings.tls == TLSSettings()

    caplog.clear()
    https = Reloader(files.settings, WebhookSettings, files.ctx)
    assert https.reload()
    assert "a restart is needed to apply tls.cert_file, tls.key_file" in caplog.text
    assert https.settings.tls == files.settings.tls
    assert served_serial(files.ctx, files.ca.file) == files.serial
