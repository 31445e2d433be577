"""Start-up checks of the files that settings name: certificates, keys, secrets, kubeconfigs.

Every non-empty setting named ``*_file`` or ``kubeconfig`` must name a readable regular
file; a section with ``enabled: false`` (an identity provider that is off) is skipped.
``cert_file`` and ``ca_file`` must hold PEM certificates, ``key_file`` an unencrypted PEM
private key that matches ``cert_file``; other ``*_file`` settings hold secrets and must
not be empty. The first problem raises ConfigError naming the setting, the file and why:
``tls.cert_file: cannot read /etc/herdgate/tls.crt: No such file or directory``.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from config.errors import ConfigError
from config.loader import yaml_key

CERTIFICATE_FIELDS = frozenset({"cert_file", "ca_file"})
KEY_FIELDS = frozenset({"key_file"})
PLAIN_FIELDS = frozenset({"kubeconfig"})
"""Files checked for readability only (everything else named ``*_file`` is a secret)."""


def check_files(settings: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first file setting of ``settings`` that is not usable."""
    if getattr(settings, "enabled", True) is False:
        return
    _check_pair_given(settings, prefix)
    cert: x509.Certificate | None = None
    key: PrivateKeyTypes | None = None
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        path = f"{prefix}.{yaml_key(field)}" if prefix else yaml_key(field)
        if dataclasses.is_dataclass(value):
            check_files(value, path)
            continue
        if not value or not isinstance(value, str):
            continue
        if field.name in CERTIFICATE_FIELDS:
            certs = _certificates(path, value)
            if field.name == "cert_file":
                cert = certs[0]
        elif field.name in KEY_FIELDS:
            key = _private_key(path, value)
        elif field.name in PLAIN_FIELDS:
            read_file(path, value)
        elif field.name.endswith("_file") and not read_file(path, value).strip():
            raise ConfigError(path, f"{value} is empty")
    if cert is not None and key is not None and not _same_public_key(cert, key):
        raise ConfigError(
            _join(prefix, "key_file"), f"{settings.key_file} is not the key of {settings.cert_file}"
        )


def read_file(path: str, file: str) -> bytes:
    """The bytes of ``file``; ConfigError naming setting ``path`` and the OS reason if not."""
    try:
        mode = os.stat(file).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), file)
        if not stat.S_ISREG(mode):
            raise ConfigError(path, f"cannot read {file}: not a regular file")
        return Path(file).read_bytes()
    except OSError as exc:
        raise ConfigError(path, f"cannot read {file}: {exc.strerror or exc}") from exc


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _check_pair_given(settings: Any, prefix: str) -> None:
    cert, key = getattr(settings, "cert_file", None), getattr(settings, "key_file", None)
    if isinstance(cert, str) and isinstance(key, str) and bool(cert) != bool(key):
        missing = "key_file" if cert else "cert_file"
        message = "must be set too: cert_file and key_file go together"
        raise ConfigError(_join(prefix, missing), message)


def _certificates(path: str, file: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(read_file(path, file))
    except ValueError:
        raise ConfigError(path, f"{file} holds no PEM certificate") from None


def _private_key(path: str, file: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(read_file(path, file), password=None)
    except TypeError:
        raise ConfigError(path, f"{file} is encrypted; an unencrypted key is needed") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(path, f"{file} holds no PEM private key") from None


def _same_public_key(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def check_tunnel(tunnel: Any, prefix: str) -> None:
    """The tunnel's sizes and times, checked at start (a Limits error later would be a
    crash on the first agent)."""
    if not 1 <= tunnel.stream_window <= 2**31 - 1:
        raise ConfigError(f"{prefix}.stream_window", "must be between 1 and 2GiB - 1")
    if not 1024 <= tunnel.max_frame <= 16 * 1024 * 1024:
        raise ConfigError(f"{prefix}.max_frame", "must be between 1KiB and 16MiB")
    if tunnel.max_streams < 1:
        raise ConfigError(f"{prefix}.max_streams", "must be at least 1")
    if tunnel.send_buffer < 64 * 1024:
        raise ConfigError(f"{prefix}.send_buffer", "must be at least 64KiB")
    if tunnel.send_timeout_s <= 0:
        raise ConfigError(f"{prefix}.send_timeout", "must be positive")
