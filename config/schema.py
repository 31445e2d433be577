"""Settings of every herdgate program, as frozen dataclasses.

The YAML key of a field is its name, without the ``_s`` suffix that marks seconds
(``session_ttl: 16h`` sets ``session_ttl_s``). Durations accept ``250ms``, ``10s``,
``5m``, ``16h``, ``30d`` or a number of seconds; sizes accept ``65536`` or ``256KiB``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DURATION = "duration"
SIZE = "size"


def duration(default: float) -> Any:
    return field(default=default, metadata={"unit": DURATION})


def size(default: int) -> Any:
    return field(default=default, metadata={"unit": SIZE})


@dataclass(frozen=True)
class TLSSettings:
    cert_file: str = ""
    """Server certificate (PEM). Empty: generate a CA and certificate in the state dir."""
    key_file: str = ""
    """Private key of ``cert_file``."""
    ca_file: str = ""
    """CA bundle that verifies ``cert_file``; published at /cacerts for agents to pin."""


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "sqlite"
    """``sqlite`` (embedded, one host) or ``etcd`` (several replicas)."""
    sqlite_path: str = ""
    """Database file; empty means ``<state_dir>/herdgate.db``."""
    etcd_endpoints: tuple[str, ...] = ()
    """etcd client URLs, e.g. ``http://127.0.0.1:2379``."""
    etcd_prefix: str = "/herdgate/"


@dataclass(frozen=True)
class TokenSettings:
    session_ttl_s: float = duration(16 * 3600)
    """Lifetime of tokens issued by login."""
    default_ttl_s: float = duration(90 * 86400)
    """Lifetime of API tokens created without a ``ttl``."""
    max_ttl_s: float = duration(90 * 86400)
    """Upper bound for any requested ``ttl``; 0 allows tokens that never expire."""
    kubeconfig_ttl_s: float = duration(30 * 86400)
    """Lifetime of the token embedded by ``generateKubeconfig``."""


@dataclass(frozen=True)
class TunnelSettings:
    ping_interval_s: float = duration(10)
    """Send a PING when the tunnel has been idle this long."""
    idle_timeout_s: float = duration(25)
    """Drop a tunnel whose peer has been silent this long."""
    stream_window: int = size(256 * 1024)
    """Bytes per stream the peer may send before it needs more credit."""
    max_frame: int = size(64 * 1024)
    """Largest DATA frame accepted."""
    max_streams: int = 4096
    """Concurrent streams the peer may open."""


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"
    """debug, info, warning or error."""
    format: str = "text"
    """``text`` (for journald and terminals) or ``json``."""


@dataclass(frozen=True)
class LDAPSettings:
    """An OpenLDAP or Active Directory provider (see gateway/providers/ldap.py)."""

    enabled: bool = False


@dataclass(frozen=True)
class OIDCSettings:
    """An OpenID Connect provider (see gateway/providers/oidc.py)."""

    enabled: bool = False


@dataclass(frozen=True)
class GitHubSettings:
    """GitHub or GitHub Enterprise as an OAuth provider (see gateway/providers/github.py)."""

    enabled: bool = False


@dataclass(frozen=True)
class AuthSettings:
    openldap: LDAPSettings = field(default_factory=LDAPSettings)
    activedirectory: LDAPSettings = field(default_factory=LDAPSettings)
    oidc: OIDCSettings = field(default_factory=OIDCSettings)
    github: GitHubSettings = field(default_factory=GitHubSettings)
    group_refresh_interval_s: float = duration(300)
    """How often groups and account status are re-read from the providers."""
    login_failures_per_user: int = 5
    """Failed logins allowed per user name within ``login_failure_window``."""
    login_failures_per_address: int = 20
    """Failed logins allowed per source address within ``login_failure_window``."""
    login_failure_window_s: float = duration(15 * 60)


@dataclass(frozen=True)
class GatewaySettings:
    listen: str = "0.0.0.0:8443"
    """Address of the HTTPS listener, ``HOST:PORT``."""
    state_dir: str = "./herdgate-data"
    """Where the database, generated certificates and the bootstrap password live."""
    server_url: str = ""
    """URL agents and kubeconfigs use; empty means ``https://<listen host>:<port>``."""
    tls: TLSSettings = field(default_factory=TLSSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)


@dataclass(frozen=True)
class AgentSettings:
    server: str = ""
    """Gateway URL, e.g. ``https://gateway.example.com:8443``."""
    token: str = ""
    """Cluster registration token."""
    token_file: str = ""
    """File holding the registration token (instead of ``token``)."""
    ca_checksum: str = ""
    """SHA-256 of the gateway CA (hex); the agent fetches the CA and pins it."""
    ca_file: str = ""
    """The gateway CA as a PEM file (instead of ``ca_checksum``)."""
    kubeconfig: str = ""
    """Kubeconfig of the cluster; empty means the in-cluster service account."""
    node_name: str = ""
    """Node the agent runs on; empty means the cluster agent."""
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    backoff_initial_s: float = duration(1)
    """First reconnect delay; doubles up to ``backoff_max_s``, with full jitter."""
    backoff_max_s: float = duration(30)
    credentials_refresh_s: float = duration(60)
    """How often the agent re-reads its service-account token to notice rotation."""


@dataclass(frozen=True)
class WebhookSettings:
    """``herdgate webhook``: the TokenReview webhook inside a downstream cluster."""

    listen: str = "127.0.0.1:6440"
    """Address of the listener, ``HOST:PORT``; it runs beside the API server (hostNetwork)."""
    kubeconfig: str = ""
    """Kubeconfig used to watch the records; empty means the in-cluster service account."""
    namespace: str = "herdgate-system"
    """Namespace of the ClusterAuthToken and ClusterUserAttribute records."""
    tls: TLSSettings = field(default_factory=TLSSettings)
    """``cert_file`` and ``key_file`` serve HTTPS; empty means plain HTTP (loopback only)."""
    max_body: int = size(1024 * 1024)
    """Largest TokenReview body accepted; bigger ones get 413."""
    watch_timeout_s: float = duration(300)
    """Server-side timeout of each watch request; the watch then resumes."""
    watch_idle_s: float = duration(120)
    """A watch that delivers nothing (not even a bookmark) this long is reopened."""
    request_timeout_s: float = duration(30)
    """Timeout of each LIST request to the API server."""
    backoff_initial_s: float = duration(1)
    """First delay before re-listing after an error; doubles up to ``backoff_max_s``."""
    backoff_max_s: float = duration(30)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
