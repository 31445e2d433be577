"""Local stand-ins for external identity services (an OIDC issuer, GitHub's OAuth and API).

Each is an aiohttp application on 127.0.0.1, over HTTPS with a throw-away CA made by
:mod:`config.tls`, so the providers are exercised with ``ca_file`` as in production.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from config.tls import issue_server_cert, make_ca, server_context


@dataclass
class TestPKI:
    """A CA (``ca_file``) and a server certificate for 127.0.0.1 in ``directory``."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    __test__ = False  # not a pytest test class

    @classmethod
    def create(cls, directory: Path) -> TestPKI:
        directory.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = make_ca("herdgate-test-ca")
        cert, key = issue_server_cert(ca_cert, ca_key, ["127.0.0.1", "localhost"])
        pki = cls(directory / "ca.crt", directory / "server.crt", directory / "server.key")
        pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pki.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return pki

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.cert_file, self.key_file)


class FakeServer:
    """Runs an aiohttp application on 127.0.0.1 (HTTPS when given a PKI)."""

    def __init__(self, app: web.Application, pki: TestPKI | None) -> None:
        self._app = app
        self._pki = pki
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        scheme = "https" if self._pki else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        ssl_ctx = self._pki.server_context() if self._pki else None
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ssl_ctx)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the listener (connections are refused until :meth:`start` again)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
