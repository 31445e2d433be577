"""Certificates and TLS contexts.

Generated keys are ECDSA P-256: a handshake costs the server less CPU than with
RSA-2048 (docs/design.md section 9 has the figures). The CA checksum that agents pin is
the SHA-256 of the CA's PEM text exactly as the gateway serves it at /cacerts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config.compat.ssl_internals import use_direct_objects

CA_VALIDITY = dt.timedelta(days=3650)
CERT_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path
    ca: Path


def ca_checksum(ca_pem: bytes) -> str:
    return hashlib.sha256(ca_pem).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usages: list[x509.ObjectIdentifier],
    hosts: list[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + CERT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    sans = _san_entries(hosts)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def issue_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: list[str],
    common_name: str = "herdgate",
    client_auth: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return _issue(ca_cert, ca_key, subject, usages, hosts)


def issue_client_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    organizations: tuple[str, ...] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A client certificate as kube-apiserver reads one: the CN is the user, each O (in
    order) a group."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return _issue(ca_cert, ca_key, x509.Name(attributes), [ExtendedKeyUsageOID.CLIENT_AUTH], [])


def write_cert(path: Path, cert: x509.Certificate) -> None:
    """``cert`` as PEM, replacing ``path`` atomically."""
    _write_public(path, cert.public_bytes(serialization.Encoding.PEM))


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """``key`` as unencrypted PKCS#8 PEM, readable by its owner only, replacing ``path``."""
    _write_private(path, _key_pem(key))


def _needs_new_cert(cert_path: Path, hosts: list[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return True
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < RENEW_BEFORE:
        return True
    try:
        present = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    wanted = set(_san_entries(hosts))
    return not wanted.issubset(set(present))


def ensure_generated_certs(directory: Path, hosts: list[str]) -> tuple[CertPaths, bool]:
    """Create (once) a CA and (when missing, expiring or lacking SANs) a server cert.

    Returns the paths and whether the CA was created now.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = CertPaths(directory / "server.crt", directory / "server.key", directory / "ca.crt")
    ca_key_path = directory / "ca.key"
    created = False
    if paths.ca.exists() and ca_key_path.exists():
        ca_cert = x509.load_pem_x509_certificate(paths.ca.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} is not an ECDSA key")
        ca_key = loaded
    else:
        ca_cert, ca_key = make_ca("herdgate-ca")
        write_key(ca_key_path, ca_key)
        write_cert(paths.ca, ca_cert)
        created = True
    if created or _needs_new_cert(paths.cert, hosts):
        cert, key = issue_server_cert(ca_cert, ca_key, hosts)
        write_key(paths.key, key)
        write_cert(paths.cert, cert)
    return paths, created


def server_context(
    cert_file: str | Path,
    key_file: str | Path,
    http2: bool = False,
    client_ca_file: str | Path | None = None,
) -> ssl.SSLContext:
    """A TLS server context; ``http2`` offers ``h2`` before ``http/1.1`` (clients that
    upgrade — exec, attach, port-forward — ask for ``http/1.1`` alone). With
    ``client_ca_file``, clients may present a certificate, which must be issued by that CA
    (a client without one is let in: kube-apiserver's ``--client-ca-file``).

    One TLS 1.3 session ticket per connection, as Go's crypto/tls (kube-apiserver's)
    sends, not OpenSSL's two: kubectl and the other Go clients keep none, and each ticket
    was made and written before the connection's first request was read
    (docs/design.md section 3, "TLS"); a client that resumes needs one."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.num_tickets = 1
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    if client_ca_file is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=str(client_ca_file))
    use_direct_objects(ctx)
    return ctx


def client_context(
    ca_file: str | None = None,
    ca_data: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    verify: bool = True,
    alpn: tuple[str, ...] = ("http/1.1",),
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file, cadata=ca_data)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(list(alpn))
    use_direct_objects(ctx)
    return ctx
