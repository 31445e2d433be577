"""TLS contexts: the SSL objects they hand the event loop call OpenSSL directly, and work."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

from config.compat.ssl_internals import DirectSSLObject
from config.tls import client_context, server_context
from tests.fakes import TestPKI


def pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    data = src.read()
    if data:
        dst.write(data)


def test_direct_ssl_objects_carry_data_both_ways(tmp_path: Path) -> None:
    pki = TestPKI.create(tmp_path)
    server_ctx = server_context(pki.cert_file, pki.key_file)
    client_ctx = client_context(ca_file=str(pki.ca_file))
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname="127.0.0.1")
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    assert isinstance(client, DirectSSLObject) and isinstance(server, DirectSSLObject)
    assert type(client.read).__name__ == "builtin_function_or_method"  # no Python frame
    for _ in range(10):  # the handshake, pumped by hand
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        pump(bios[1], bios[2])
        pump(bios[3], bios[0])
    assert server.selected_alpn_protocol() == "http/1.1"
    payload = bytes(range(256)) * 300  # several TLS records
    assert client.write(payload) == len(payload)
    pump(bios[1], bios[2])
    buffer = bytearray(len(payload))
    got = 0
    while got < len(payload):
        got += server.read(len(payload) - got, memoryview(buffer)[got:])
    assert bytes(buffer) == payload and server.pending() == 0
