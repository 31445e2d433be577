"""What the agent needs before it can work: trust for the gateway, access to its cluster.

The cluster is reached with a kubeconfig, or, in a pod, as client-go's
``rest.InClusterConfig`` does: the API server at ``KUBERNETES_SERVICE_HOST`` and
``KUBERNETES_SERVICE_PORT``, verified with the service account's ``ca.crt``, the
service account's ``token`` as the credential, read again on every refresh (the kubelet
rotates projected tokens). The directory is ``service_account_dir`` (tests point it
elsewhere).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from urllib.parse import urlsplit

import aiohttp

from config.schema import AgentSettings
from config.tls import client_context
from tunnel.preconnect import Spare
from tunnel.tls import Sessions


class AgentError(Exception):
    """The agent cannot start (bad CA checksum, unreadable kubeconfig ...)."""


@dataclass
class Upstream:
    """How to reach this cluster's API server."""

    host: str
    port: int
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    ssl_h2: SSLContext | None = field(default=None, repr=False)
    """The same TLS settings offering ALPN ``h2`` and ``http/1.1`` (``tunnel.h2upstream``);
    ``ssl`` offers ``http/1.1`` only, for connections relayed byte for byte."""
    authorization: str = field(default="", repr=False)
    ca_pem: str = ""
    """The API server's CA, reported to the gateway for direct (ACE) kubeconfig contexts."""
    refresh: Callable[[], asyncio.Future[str] | asyncio.Task[str]] | None = field(
        default=None, repr=False
    )
    sessions: Sessions = field(default_factory=Sessions, repr=False, compare=False)
    """TLS sessions of ``ssl``'s connections, resumed by the next (``tunnel.tls.Sessions``)."""
    spare: Spare = field(default_factory=Spare, repr=False, compare=False)
    """A connection dialled before a relayed stream needs it (``tunnel.preconnect``)."""

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# -- start-up: gateway CA and cluster credentials ---------------------------------------


async def gateway_ca(settings: AgentSettings) -> str | None:
    """The gateway CA to trust: from a file, or fetched and checked against the checksum."""
    if settings.ca_file:
        return Path(settings.ca_file).read_text()
    if not settings.ca_checksum:
        return None  # the gateway's certificate is publicly trusted
    insecure = client_context(verify=False)
    url = settings.server.rstrip("/") + "/cacerts"
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, ssl=insecure, timeout=aiohttp.ClientTimeout(total=15)) as resp,
        ):
            if resp.status != 200:
                raise AgentError(f"GET {url}: HTTP {resp.status}")
            pem = await resp.read()
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or str(exc.os_error)
        raise AgentError(f"cannot fetch the gateway CA from {url}: {reason}") from exc
    except aiohttp.ClientError as exc:
        raise AgentError(f"cannot fetch the gateway CA from {url}: {exc}") from exc
    actual = hashlib.sha256(pem).hexdigest()
    if not hmac.compare_digest(actual, settings.ca_checksum.strip().lower()):
        raise AgentError(
            f"the CA served by {settings.server} has checksum {actual}, "
            f"expected {settings.ca_checksum}: refusing to connect"
        )
    return pem.decode()


SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
SERVICE_PORT_ENV = "KUBERNETES_SERVICE_PORT"


def in_cluster_upstream(
    settings: AgentSettings, environ: Mapping[str, str] | None = None
) -> Upstream:
    """The API server as a pod reaches it, with the pod's service account."""
    env = os.environ if environ is None else environ
    host = env.get(SERVICE_HOST_ENV, "")
    port_text = env.get(SERVICE_PORT_ENV, "")
    if not host:
        raise AgentError(
            f"no cluster to serve: not running in a pod ({SERVICE_HOST_ENV} is not set) and "
            "no --kubeconfig given; pass --kubeconfig FILE (the cluster's API server and a "
            "credential that may impersonate, as the manifest's RBAC grants), or run the "
            "agent in the cluster (the registration token's kubectl apply -f line)"
        )
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise AgentError(f"{SERVICE_PORT_ENV} must be a port number, got {port_text!r}")
    account = Path(settings.service_account_dir)
    token_file = account / "token"
    ca_file = account / "ca.crt"

    def read_token() -> str:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise AgentError(
                f"cannot read the service account token {token_file}: {exc.strerror}"
            ) from exc
        if not token:
            raise AgentError(f"the service account token {token_file} is empty")
        return token

    try:
        ca_pem = ca_file.read_text()
        ctx = client_context(ca_file=str(ca_file))
        ctx_h2 = client_context(ca_file=str(ca_file), alpn=("h2", "http/1.1"))
    except (OSError, ssl.SSLError) as exc:
        raise AgentError(f"cannot load the service account CA {ca_file}: {exc}") from exc
    bare = host.strip("[]")
    upstream = Upstream(
        host=bare, port=int(port_text), ssl=ctx, server_hostname=bare, ssl_h2=ctx_h2
    )
    upstream.authorization = f"Bearer {read_token()}"
    upstream.ca_pem = ca_pem

    async def credential() -> str:
        return f"Bearer {read_token()}"

    upstream.refresh = lambda: asyncio.ensure_future(credential())
    return upstream


async def cluster_upstream(settings: AgentSettings) -> Upstream:
    """API server address, TLS and credential from a kubeconfig or the pod's service account."""
    if not settings.kubeconfig:
        return in_cluster_upstream(settings)
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import ConfigException, load_kube_config

    cfg = Configuration()
    try:
        await load_kube_config(config_file=settings.kubeconfig, client_configuration=cfg)
    except (ConfigException, OSError) as exc:
        raise AgentError(
            f"cannot load cluster credentials from {settings.kubeconfig}: {exc}"
        ) from exc
    url = urlsplit(str(cfg.host))
    if url.hostname is None:
        raise AgentError(f"no API server address in {cfg.host!r}")
    ctx: ssl.SSLContext | None = None
    ctx_h2: ssl.SSLContext | None = None
    if url.scheme == "https":
        ctx, ctx_h2 = (
            client_context(
                ca_file=cfg.ssl_ca_cert or None,
                cert_file=cfg.cert_file or None,
                key_file=cfg.key_file or None,
                verify=bool(cfg.verify_ssl),
                alpn=alpn,
            )
            for alpn in (("http/1.1",), ("h2", "http/1.1"))
        )
    server_hostname = str(getattr(cfg, "tls_server_name", None) or url.hostname)

    async def credential() -> str:
        auth = await cfg.auth_settings()
        value = auth.get("BearerToken", {}).get("value") or ""
        if value and not value.lower().startswith("bearer "):
            value = f"Bearer {value}"
        return str(value)

    upstream = Upstream(
        host=url.hostname,
        port=url.port or (443 if url.scheme == "https" else 80),
        ssl=ctx,
        server_hostname=server_hostname if ctx else None,
        ssl_h2=ctx_h2,
    )
    upstream.authorization = await credential()
    if cfg.ssl_ca_cert:
        try:
            upstream.ca_pem = Path(cfg.ssl_ca_cert).read_text()
        except OSError as exc:
            raise AgentError(f"cannot read the cluster CA {cfg.ssl_ca_cert}: {exc}") from exc
    upstream.refresh = lambda: asyncio.ensure_future(credential())
    return upstream
