"""TLS contexts: the SSL objects they hand the event loop call OpenSSL directly, and work;
the certificates config.tls issues, and a server context that asks for client certificates."""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from config.compat.ssl_internals import DirectSSLObject
from config.tls import (
    client_context,
    issue_client_cert,
    issue_server_cert,
    make_ca,
    server_context,
    write_cert,
    write_key,
)
from tests.fakes import TestPKI


def pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    data = src.read()
    if data:
        dst.write(data)


def handshake(client: ssl.SSLObject, server: ssl.SSLObject, bios: list[ssl.MemoryBIO]) -> None:
    """Pump a handshake between two SSL objects by hand (bios: client in/out, server in/out)."""
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        pump(bios[1], bios[2])
        pump(bios[3], bios[0])


def test_direct_ssl_objects_carry_data_both_ways(tmp_path: Path) -> None:
    pki = TestPKI.create(tmp_path)
    server_ctx = server_context(pki.cert_file, pki.key_file)
    client_ctx = client_context(ca_file=str(pki.ca_file))
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    assert isinstance(client, DirectSSLObject) and isinstance(server, DirectSSLObject)
    assert type(client.read).__name__ == "builtin_function_or_method"  # no Python frame
    handshake(client, server, bios)
    assert server.selected_alpn_protocol() == "http/1.1"
    payload = bytes(range(256)) * 300  # several TLS records
    assert client.write(payload) == len(payload)
    pump(bios[1], bios[2])
    buffer = bytearray(len(payload))
    got = 0
    while got < len(payload):
        got += server.read(len(payload) - got, memoryview(buffer)[got:])
    assert bytes(buffer) == payload and server.pending() == 0


def test_a_server_sends_one_session_ticket_per_connection(tmp_path: Path) -> None:
    """As Go's crypto/tls (kube-apiserver's) does, not OpenSSL's two; a client can still
    resume with it."""
    pki = TestPKI.create(tmp_path)
    server_ctx = server_context(pki.cert_file, pki.key_file)
    client_ctx = client_context(ca_file=str(pki.ca_file))
    tickets: list[object] = []

    def seen(
        conn: object, direction: str, version: object, kind: object, msg: object, data: bytes
    ) -> None:
        if direction == "read" and msg == ssl._TLSMessageType.NEWSESSION_TICKET:  # type: ignore[attr-defined]
            tickets.append(msg)

    client_ctx._msg_callback = seen  # type: ignore[attr-defined]
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    handshake(client, server, bios)
    server.write(b"x")
    pump(bios[3], bios[0])
    assert client.read(1) == b"x"
    assert len(tickets) == 1
    assert client.session is not None and client.session.has_ticket


def usages(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_server_cert_names_its_hosts_and_signs_under_the_ca() -> None:
    ca_cert, ca_key = make_ca("test-ca")
    cert, _ = issue_server_cert(ca_cert, ca_key, ["127.0.0.1", "localhost", "::1", "localhost"])
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert usages(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "herdgate"
    cert.verify_directly_issued_by(ca_cert)
    both, _ = issue_server_cert(ca_cert, ca_key, ["127.0.0.1"], client_auth=True)
    assert usages(both) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_client_cert_is_read_as_kube_apiserver_reads_it() -> None:
    ca_cert, ca_key = make_ca("client-ca")
    cert, _ = issue_client_cert(ca_cert, ca_key, "erin", ("ops", "system:masters"))
    cert.verify_directly_issued_by(ca_cert)
    assert usages(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "erin"
    groups = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert groups == ["ops", "system:masters"]  # in the order given
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_written_key_is_private_and_both_read_back(tmp_path: Path) -> None:
    ca_cert, ca_key = make_ca("test-ca")
    write_cert(tmp_path / "ca.crt", ca_cert)
    write_key(tmp_path / "ca.key", ca_key)
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    assert x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes()) == ca_cert
    key = serialization.load_pem_private_key((tmp_path / "ca.key").read_bytes(), password=None)
    assert key.public_key() == ca_key.public_key()
    write_cert(tmp_path / "ca.crt", ca_cert)  # replaces
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]


@pytest.mark.parametrize("client_cert", ["none", "trusted", "untrusted"])
def test_server_context_with_a_client_ca(tmp_path: Path, client_cert: str) -> None:
    pki = TestPKI.create(tmp_path)
    ca_cert, ca_key = make_ca("client-ca")
    write_cert(tmp_path / "client-ca.crt", ca_cert)
    if client_cert != "none":
        issuer = (ca_cert, ca_key) if client_cert == "trusted" else make_ca("other-ca")
        cert, key = issue_client_cert(*issuer, "erin", ("ops",))
        write_cert(tmp_path / "erin.crt", cert)
        write_key(tmp_path / "erin.key", key)
    server_ctx = server_context(
        pki.cert_file, pki.key_file, client_ca_file=tmp_path / "client-ca.crt"
    )
    client_ctx = client_context(
        ca_file=str(pki.ca_file),
        cert_file=str(tmp_path / "erin.crt") if client_cert != "none" else None,
        key_file=str(tmp_path / "erin.key") if client_cert != "none" else None,
    )
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    if client_cert == "untrusted":
        with pytest.raises(ssl.SSLError, match="certificate"):
            handshake(client, server, bios)
        return
    handshake(client, server, bios)
    peer = server.getpeercert()
    if client_cert == "none":  # let in without one, as kube-apiserver does
        assert server.version() is not None and not peer
    else:
        assert peer and peer["subject"] == (
            (("organizationName", "ops"),),
            (("commonName", "erin"),),
        )
