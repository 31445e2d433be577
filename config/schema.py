"""Settings of every herdgate program, as frozen dataclasses.

The YAML key of a field is its name, without the ``_s`` suffix that marks seconds
(``session_ttl: 16h`` sets ``session_ttl_s``). Durations accept ``250ms``, ``10s``,
``5m``, ``16h``, ``30d`` or a number of seconds; sizes accept ``65536`` or ``256KiB``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from config.errors import ConfigError
from config.store_check import check_store

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
class EtcdTLSSettings:
    """TLS towards etcd (``https://`` endpoints)."""

    ca_file: str = ""
    """CA bundle that verifies etcd's server certificates; empty: the system CAs."""
    cert_file: str = ""
    """Client certificate (PEM) for etcd's ``--client-cert-auth``."""
    key_file: str = ""
    """Private key of ``cert_file``."""


@dataclass(frozen=True)
class StoreSettings:
    backend: str = "sqlite"
    """``sqlite`` (embedded, one host) or ``etcd`` (several replicas)."""
    sqlite_path: str = ""
    """Database file; empty means ``<state_dir>/herdgate.db``."""
    sqlite_keep_changes: int = 10_000
    """Change-log rows SQLite keeps for processes sharing the file; one further behind
    reads every record again (``gateway.store.sqlite``)."""
    etcd_endpoints: tuple[str, ...] = ()
    """etcd client URLs, e.g. ``https://10.0.0.1:2379``; with several, a request that
    cannot reach one (or gets etcd's "unavailable") is tried on the next."""
    etcd_prefix: str = "/herdgate/"
    """Every herdgate key starts with this (several installs can share one etcd)."""
    etcd_tls: EtcdTLSSettings = field(default_factory=EtcdTLSSettings)
    etcd_username: str = ""
    """etcd user (etcd's ``auth enable``); empty: no authentication (or the client
    certificate's common name, with ``--client-cert-auth``)."""
    etcd_password: str = field(default="", repr=False)
    """Password of ``etcd_username``. Prefer ``etcd_password_file`` or
    ``HERDGATE_STORE__ETCD_PASSWORD``."""
    etcd_password_file: str = ""
    """File holding the password (read again whenever a new etcd token is needed)."""
    etcd_request_timeout_s: float = duration(5)
    """Longest wait for one etcd request, fail-over across the endpoints included."""
    etcd_dial_timeout_s: float = duration(2)
    """TCP and TLS connect timeout per endpoint."""
    max_feed_lag_s: float = duration(10)
    """A process whose own write has not come back on the store's change feed within
    this long reports it on ``/readyz`` (not ready) and in
    ``herdgate_store_feed_lag_seconds``: its caches may be stale."""

    def __post_init__(self) -> None:
        check_store(self)


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
    max_per_user: int = 1000
    """Tokens one user may hold (each is held in every gateway process's memory).
    Creating an API token beyond it is refused (409); a login or a kubeconfig replaces
    the user's oldest session or kubeconfig token. Expired tokens are removed when the
    user gets a new one."""

    def __post_init__(self) -> None:
        if self.max_per_user < 1:
            raise ConfigError("tokens.max_per_user", "must be at least 1")


@dataclass(frozen=True)
class KubeconfigSettings:
    exec_command: str = "herdgate"
    """The command an exec kubeconfig (``"credential": "exec"``) runs as kubectl's
    credential plugin: a name kubectl finds on PATH, or a full path (such as
    ``/opt/herdgate/.venv/bin/herdgate``) where users' machines have it there."""
    exec_install_hint: str = ""
    """What kubectl shows when it cannot find ``exec_command`` (the kubeconfig's
    ``installHint``); empty: how to install herdgate and put it on PATH."""

    def __post_init__(self) -> None:
        if not self.exec_command.strip() or not self.exec_command.isprintable():
            raise ConfigError("kubeconfig.exec_command", "must be a command name or path")
        if not all(line.isprintable() for line in self.exec_install_hint.split("\n")):
            raise ConfigError(
                "kubeconfig.exec_install_hint", "must not hold control characters but newlines"
            )


@dataclass(frozen=True)
class TunnelSettings:
    ping_interval_s: float = duration(20)
    """Send a PING when the tunnel has been idle this long (the gateway waits 1.5 times
    longer, so on a quiet tunnel only the agent pings and the gateway answers)."""
    idle_timeout_s: float = duration(28)
    """Drop a tunnel whose peer has been silent this long (checked every 2 s)."""
    stream_window: int = size(4 * 1024 * 1024)
    """Bytes per stream the peer may send before it needs more credit (Go's HTTP/2
    client, kubectl's, uses the same per stream)."""
    max_frame: int = size(256 * 1024)
    """Largest DATA frame accepted (received DATA is handed on as it arrives, so a big
    frame costs no buffer of its size)."""
    max_streams: int = 4096
    """Concurrent streams the peer may open."""
    send_buffer: int = size(8 * 1024 * 1024)
    """Bytes queued for one tunnel, all its streams together, that the peer has not read
    yet: above it writers wait; at twice this plus 1 MiB (control frames, answers that
    cannot wait) the tunnel is closed."""
    send_timeout_s: float = duration(30)
    """A tunnel whose peer takes nothing of what is queued for it this long is closed."""
    max_streams_per_user: int = 0
    """Concurrent tunnel streams (requests, watches, exec sessions) one user may hold on
    one cluster; more get 429 with Retry-After. 0: a quarter of the streams the agent
    allows (1,024 with its defaults)."""


@dataclass(frozen=True)
class LimitsSettings:
    """Client connections on the HTTPS listener (per gateway process: each worker has
    its own)."""

    max_connections: int = 32768
    """Connections held at once, TLS handshakes in progress included; more are closed
    at accept (herdgate_client_connections_refused_total)."""
    per_address: int = 1024
    """Connections held at once from one source address."""
    handshake_timeout_s: float = duration(10)
    """A TLS handshake not finished by then is cut."""
    head_timeout_s: float = duration(60)
    """A request head must arrive whole within this long once it has begun."""
    body_timeout_s: float = duration(60)
    """A request body that sends nothing for this long fails its request (408)."""
    keepalive_s: float = duration(75)
    """Idle keep-alive connections close after this long."""
    max_request_body: int = size(64 * 1024 * 1024)
    """Larger request bodies are refused (413)."""
    http2_buffer: int = size(64 * 1024 * 1024)
    """Bytes one HTTP/2 connection may hold for a client that does not read (answers
    waiting for its window and the tunnel bytes behind them, all streams together);
    beyond it the largest stream is reset with ENHANCE_YOUR_CALM."""

    def check(self) -> None:
        from config.errors import ConfigError

        for name in ("max_connections", "per_address", "max_request_body"):
            if getattr(self, name) < 1:
                raise ConfigError(f"limits.{name}", "must be at least 1")
        for name in ("handshake_timeout_s", "head_timeout_s", "body_timeout_s", "keepalive_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"limits.{name.removesuffix('_s')}", "must be positive")
        if self.http2_buffer < 1024 * 1024:
            raise ConfigError("limits.http2_buffer", "must be at least 1MiB")


@dataclass(frozen=True)
class ServerSettings:
    """Balancers in front of the gateway (``gateway.front.balancers``)."""

    trusted_proxies: tuple[str, ...] = ()
    """Addresses or CIDRs of the balancers whose word on the client's address is believed
    (the PROXY protocol, ``X-Forwarded-For``); empty: nobody's, the peer is the client."""
    proxy_protocol: bool = False
    """Connections from ``trusted_proxies`` begin with a PROXY protocol header (v1 or v2,
    haproxy ``send-proxy-v2``); one without is closed. Others' connections are plain TLS."""

    def check(self) -> None:
        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ConfigError(
                    "server.trusted_proxies", f"{cidr!r} is not an IP address or CIDR"
                ) from None
        if self.proxy_protocol and not self.trusted_proxies:
            raise ConfigError(
                "server.proxy_protocol", "needs server.trusted_proxies (the balancers sending it)"
            )


@dataclass(frozen=True)
class RegistrationSettings:
    """Cluster registration tokens and the agents that present them."""

    max_agents_per_cluster: int = 64
    """Agents connected for one cluster at once (per gateway process; every agent holds
    a tunnel to each process). One more is answered 429, and backs off."""
    agent_image: str = ""
    """Image (``name:tag``) of the agents in the manifest that ``GET
    /v3/import/<token>.yaml`` serves; empty: ``herdgate/agent:<gateway version>``. Pulled
    ``IfNotPresent``."""
    agent_program: str = "herdgate"
    """The program the printed agent command runs (``command``, ``nodeCommand`` of a
    registration token): ``herdgate`` when it is on PATH where the agents run, else its
    path there, e.g. ``/opt/herdgate/bin/herdgate``."""


@dataclass(frozen=True)
class ControllerSettings:
    """Each cluster's controller (``gateway.controllers.cluster_controller``)."""

    probe_interval_s: float = duration(10)
    """How often ``/readyz`` and ``/version`` are asked through the tunnel; a failure
    shows in the cluster's ``Ready`` condition within this plus a 5 s timeout."""
    requests_per_second: float = 20.0
    """The gateway's own requests to one cluster (its controller, the access and ACE
    syncs, from one process): this many a second on average..."""
    request_burst: int = 40
    """...and at most this many at once."""
    lease_ttl_s: float = duration(15)
    """A cluster's controller lease (its access and ACE syncs share it; the group refresh's
    lease too): renewed at a third of it; another process takes it
    over this long after its holder died (at once for a dead worker on the same host)."""


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "info"
    """debug, info, warning or error."""
    format: str = "auto"
    """``json`` (one object per line), ``text``, or ``auto``: text on a terminal,
    JSON otherwise (under systemd, journald keeps each line as one entry)."""


@dataclass(frozen=True)
class AuditSettings:
    """One record per proxied request, and per exec/attach/port-forward session."""

    path: str = ""
    """Audit file; empty: ``<state_dir>/audit.log``; ``-``: standard output (records
    carry ``"log": "audit"``); ``off``: no audit log."""
    level: str = "metadata"
    """``metadata`` (who, what, where, result) or ``request`` (also request bodies up
    to ``max_body``; never for secrets, tokens or other credential-bearing kinds)."""
    max_size: int = size(100 * 1024 * 1024)
    """Rotate the file when it reaches this size."""
    max_backups: int = 5
    """Rotated files kept (``audit.log.1`` is the newest)."""
    max_body: int = size(64 * 1024)
    """Largest request body copied into a record at level ``request``."""


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""
    """A plain-HTTP listener, ``HOST:PORT``, serving ``/metrics``, ``/healthz`` and
    ``/readyz`` without authentication (for Prometheus and load balancers); empty:
    none. The HTTPS listener serves ``/healthz`` and ``/readyz`` to anyone and
    ``/metrics`` to administrators."""


@dataclass(frozen=True)
class AccessSyncSettings:
    """Role templates, cluster and project bindings kept in step in each cluster's RBAC."""

    resync_s: float = duration(300)
    """Full resync of each cluster this often, besides every change and every tunnel
    reconnect (it removes drift: bindings deleted or edited by hand)."""

    recheck_s: float = duration(5)
    """While a cluster's ``Synced`` is False with ``ManifestOutdated`` (role templates the
    agent may not write until the administrator applies the manifest again), the access
    sync looks again after this, doubling up to ``resync`` (and never later than
    ``resync``): nothing watches the administrator's ``kubectl apply``."""

    admins_cluster_admin: bool = True
    """Enabled gateway administrators are ``cluster-admin`` in every cluster (a
    ``herdgate-admin-<user id>`` ClusterRoleBinding), as Rancher's administrators are.
    ``false``: administrators manage the gateway, and what they may do inside a cluster
    (``kubectl --as`` included) is only what the cluster's own RBAC or their bindings
    grant, like Rancher's restricted administrators."""

    def __post_init__(self) -> None:
        if self.resync_s < 1:
            raise ConfigError("access_sync.resync", "must be at least 1s")
        if self.recheck_s < 0.1:
            raise ConfigError("access_sync.recheck", "must be at least 0.1s")


@dataclass(frozen=True)
class LDAPSettings:
    """An OpenLDAP or Active Directory provider (see gateway/identity/providers/ldap.py).

    A string left empty takes the provider's default, noted as "openldap: X;
    activedirectory: Y"; ``none`` switches an optional attribute off.
    """

    enabled: bool = False
    servers: tuple[str, ...] = ()
    """LDAP URLs, e.g. ``ldaps://dc1.corp.example.com`` (port 636) or
    ``ldap://ldap.example.org:389``; several give fail-over (see ``server_strategy``)."""
    server_strategy: str = "first"
    """Which server a new connection uses: ``first`` (the first that accepts a TCP
    connection), ``round_robin`` or ``random`` (spread the load)."""
    server_retry_s: float = duration(30)
    """With several servers, one that refused a connection is skipped this long
    (0: tried again for every new connection)."""
    start_tls: bool = False
    """Upgrade ``ldap://`` connections with StartTLS before any bind, so passwords
    travel encrypted on port 389."""
    ca_file: str = ""
    """CA bundle that verifies the servers' certificates (LDAPS and StartTLS); empty:
    the system CAs."""
    insecure_skip_tls_verify: bool = False
    """Accept any server certificate and name (testing only)."""
    connect_timeout_s: float = duration(5)
    """TCP connect timeout per server."""
    operation_timeout_s: float = duration(10)
    """Longest wait for one response (TLS handshake, bind, search page); whole seconds,
    rounded up."""
    request_timeout_s: float = duration(30)
    """Upper bound on one login or refresh, including the wait for a free connection."""
    pool_size: int = 8
    """Concurrent LDAP operations (worker threads); as many bound service-account
    connections are kept for reuse."""
    pool_idle_timeout_s: float = duration(60)
    """A pooled connection idle this long is closed instead of reused (servers drop idle
    connections: Active Directory after 15 minutes)."""
    service_account_dn: str = ""
    """DN herdgate binds as to search, e.g. ``cn=herdgate,ou=services,dc=example,dc=org``
    (Active Directory also accepts ``svc-herdgate@corp.example.com``); empty: anonymous."""
    service_account_password: str = field(default="", repr=False)
    """Password of ``service_account_dn``. Prefer ``service_account_password_file`` or
    ``HERDGATE_AUTH__OPENLDAP__SERVICE_ACCOUNT_PASSWORD`` (``__ACTIVEDIRECTORY__``)."""
    service_account_password_file: str = ""
    """File holding the password (read for each new connection, so it can be rotated)."""
    user_search_base: str = ""
    """Where users are searched, e.g. ``ou=people,dc=example,dc=org``; required."""
    user_search_scope: str = "subtree"
    """``subtree`` or ``one`` (only the direct children of ``user_search_base``)."""
    user_login_attribute: str = ""
    """Attribute matched against the typed user name: ``uid``, ``sAMAccountName``,
    ``userPrincipalName``, ``mail``. Empty: openldap ``uid``; activedirectory
    ``sAMAccountName``."""
    user_object_class: str = ""
    """Object class of user entries. Empty: openldap ``inetOrgPerson``; activedirectory
    ``user``."""
    user_filter: str = ""
    """Extra filter users must match, e.g. ``(memberOf=cn=k8s,ou=groups,dc=example,dc=org)``."""
    user_display_name_attribute: str = ""
    """Empty: openldap ``cn``; activedirectory ``displayName``."""
    group_membership: str = "search"
    """How a user's direct groups are found: ``search`` (groups whose
    ``group_member_attribute`` holds the user's DN or whose
    ``group_member_uid_attribute`` holds the login name) or ``memberof`` (the user's
    ``memberOf`` attribute)."""
    group_search_base: str = ""
    """Where groups are searched; empty: ``user_search_base``."""
    group_object_classes: tuple[str, ...] = ()
    """Object classes of groups. Empty: openldap ``groupOfNames``, ``posixGroup``;
    activedirectory ``group``."""
    group_member_attribute: str = ""
    """Group attribute holding member DNs. Empty: ``member``."""
    group_member_uid_attribute: str = ""
    """Group attribute holding members' login names (``posixGroup``). Empty: openldap
    ``memberUid``; activedirectory none."""
    group_filter: str = ""
    """Extra filter groups must match, e.g. ``(cn=k8s-*)``."""
    nested_groups: str = "auto"
    """Groups that are members of groups: ``auto`` (the server's in-chain matching rule
    when it is Active Directory, else resolved by herdgate), ``in_chain``, ``client``
    or ``off``."""
    nested_groups_max_depth: int = 8
    """Levels of nesting resolved by herdgate (membership cycles are safe)."""
    disabled_attribute: str = ""
    """Attribute that marks a disabled account, e.g. ``pwdAccountLockedTime``
    (OpenLDAP ppolicy). Empty: openldap none; activedirectory ``userAccountControl``."""
    disabled_value: str = ""
    """Disabled when ``disabled_attribute`` has this value (case-insensitive); empty:
    when it has any value."""
    disabled_bitmask: int = 0
    """Non-zero: read ``disabled_attribute`` as an integer, disabled when it has one of
    these bits. 0 with activedirectory's default attribute means 2 (ACCOUNTDISABLE)."""


@dataclass(frozen=True)
class OIDCSettings:
    """An OpenID Connect provider (see gateway/identity/providers/oidc.py)."""

    enabled: bool = False
    issuer_url: str = ""
    """Issuer identifier exactly as in the tokens' ``iss`` (https only), e.g.
    ``https://idp.example.com/realms/ops``; discovery is read from
    ``<issuer_url>/.well-known/openid-configuration``."""
    client_id: str = ""
    """OAuth client id of herdgate; ID tokens must name it in ``aud``."""
    client_secret: str = field(default="", repr=False)
    """Client secret for the token endpoint. Prefer ``client_secret_file`` or
    ``HERDGATE_AUTH__OIDC__CLIENT_SECRET``. Empty: a public client (PKCE only)."""
    client_secret_file: str = ""
    """File holding the client secret (instead of ``client_secret``)."""
    ca_file: str = ""
    """CA bundle that verifies the issuer's TLS certificate; empty: the system CAs."""
    signing_algorithms: tuple[str, ...] = (
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
    )
    """Accepted JWS algorithms (RS*, PS*, ES*, EdDSA). ``none`` and HS* are refused:
    keys come from the issuer's JWKS, which only holds public keys."""
    username_claim: str = "sub"
    """Claim that names the user (``sub``, ``email``, ``preferred_username``). With
    ``email``, a token whose ``email_verified`` is false is refused."""
    username_prefix: str = ""
    """Prepended to the username claim to form the login name, e.g. ``oidc:``."""
    groups_claim: str = "groups"
    """Claim holding the groups (a list of strings or one string); empty: no groups."""
    groups_prefix: str = ""
    """Prepended to each group name: ``oidc_group://<prefix><name>``."""
    leeway_s: float = duration(30)
    """Clock skew tolerated when checking ``exp``, ``nbf`` and ``iat``."""
    jwks_cache_ttl_s: float = duration(3600)
    """How long discovery and signing keys are used before they are re-read (in the
    background; stale keys stay in use while the issuer is unreachable)."""
    jwks_min_refresh_interval_s: float = duration(10)
    """Least time between two key fetches caused by tokens with an unknown ``kid``."""
    connect_timeout_s: float = duration(5)
    """TCP and TLS connect timeout for requests to the issuer."""
    request_timeout_s: float = duration(10)
    """Whole-request timeout for requests to the issuer."""
    redirect_uri: str = ""
    """Where the issuer sends the browser after login, e.g.
    ``https://gateway.example.com:8443/v1/auth/oidc/callback``."""
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    """Scopes requested at login (``openid`` is always sent); Dex and some others need
    ``groups`` as well."""
    token_cache_size: int = 10000
    """Validated bearer ID tokens remembered (by hash) until they expire."""


@dataclass(frozen=True)
class GitHubSettings:
    """GitHub or GitHub Enterprise as an OAuth provider (gateway/identity/providers/github.py)."""

    enabled: bool = False
    client_id: str = ""
    """Client id of the GitHub OAuth app."""
    client_secret: str = field(default="", repr=False)
    """Client secret of the OAuth app. Prefer ``client_secret_file`` or
    ``HERDGATE_AUTH__GITHUB__CLIENT_SECRET``."""
    client_secret_file: str = ""
    """File holding the client secret (instead of ``client_secret``)."""
    web_url: str = "https://github.com"
    """Where ``/login/oauth/...`` lives: ``https://github.com`` or the GitHub
    Enterprise Server URL, e.g. ``https://ghe.example.com``."""
    api_url: str = "https://api.github.com"
    """REST API base: ``https://api.github.com`` or ``https://ghe.example.com/api/v3``."""
    ca_file: str = ""
    """CA bundle that verifies GitHub's TLS certificate; empty: the system CAs."""
    allowed_orgs: tuple[str, ...] = ()
    """Only members of these organizations (login or numeric id) may log in; their
    other organizations and teams are not used as groups. Empty: anyone."""
    redirect_uri: str = ""
    """Callback URL registered with the OAuth app; empty: GitHub uses the registered one."""
    scopes: tuple[str, ...] = ("read:org",)
    """Scopes requested; ``read:org`` lets herdgate see private org and team memberships."""
    connect_timeout_s: float = duration(5)
    """TCP and TLS connect timeout for requests to GitHub."""
    request_timeout_s: float = duration(10)
    """Whole-request timeout for requests to GitHub."""
    max_pages: int = 20
    """Pages of 100 organizations or teams read per login at most."""


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
class ReplicaSettings:
    """This gateway process as one replica of several (``gateway.clusters.replicas``)."""

    advertise_url: str = ""
    """``https://HOST:PORT`` where agents reach this replica itself, not through the load
    balancer; published in its replica record and told to agents. Empty: ``listen``'s
    address when it is not a wildcard (``0.0.0.0``, ``::``), else none (agents then
    reach this replica only through ``server_url``)."""


@dataclass(frozen=True)
class GatewaySettings:
    listen: str = "0.0.0.0:8443"
    """Address of the HTTPS listener, ``HOST:PORT``."""
    state_dir: str = "./herdgate-data"
    """Where the database, generated certificates and the bootstrap password live."""
    server_url: str = ""
    """URL agents and kubeconfigs use; empty means ``https://<listen host>:<port>``."""
    workers: int = 1
    """Gateway processes sharing the listen address (SO_REUSEPORT); each is a replica."""
    replica: ReplicaSettings = field(default_factory=ReplicaSettings)
    http2: bool = True
    """Offer HTTP/2 (ALPN ``h2``) beside HTTP/1.1: kubectl and client-go then carry many
    requests and watches on one connection (upgrades stay on HTTP/1.1)."""
    tls: TLSSettings = field(default_factory=TLSSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    tokens: TokenSettings = field(default_factory=TokenSettings)
    kubeconfig: KubeconfigSettings = field(default_factory=KubeconfigSettings)
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    access_sync: AccessSyncSettings = field(default_factory=AccessSyncSettings)
    shutdown_grace_s: float = duration(30)
    """On SIGTERM: how long requests in flight may take to finish (watches and followed
    logs are ended at once, cleanly) before the rest are cut and the tunnels closed."""


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
    """First reconnect delay; doubles up to ``backoff_max_s``, each wait uniform in
    [ceiling/2, ceiling] (``tunnel.redial``)."""
    backoff_max_s: float = duration(30)
    """The longest wait while the gateway does not answer (after a refusal: 5 minutes)."""
    reconnect_spread_s: float = duration(10)
    """After a long-lived tunnel drops, reconnect at a random time within this window."""
    credentials_refresh_s: float = duration(60)
    """How often the agent re-reads its service-account token to notice rotation."""
    service_account_dir: str = "/var/run/secrets/kubernetes.io/serviceaccount"
    """Without ``kubeconfig``: where the pod's service account is mounted (``token``,
    ``ca.crt``, ``namespace``); the API server is ``KUBERNETES_SERVICE_HOST``:``_PORT``."""
    apiserver_http2: bool = True
    """Relay the gateway's long-running requests (watches, followed logs), and the agent's
    own reports' requests, as HTTP/2 streams on a few shared connections to the API
    server when it offers ``h2`` (``tunnel.h2upstream``); other requests keep a kept-alive
    TLS connection per tunnel stream, relayed byte for byte, and upgrades (exec, attach,
    port-forward) a connection each. Off: a TLS connection per tunnel stream for every
    request (and three for the reports)."""
    apiserver_http2_all: bool = False
    """With ``apiserver_http2``: every ordinary request as an HTTP/2 stream too (fewer
    connections to the API server, several times the agent's CPU per short request)."""
    apiserver_spare_connection: bool = True
    """Once a relayed connection to the API server has been answered, dial one more and
    keep it (at most one, for at most 20 s) for the next tunnel stream that needs one, so
    an exec or a request on a new stream does not wait for TCP and TLS
    (``tunnel.preconnect``). False: every such stream dials when it comes."""
    health_listen: str = ""
    """A plain-HTTP listener, ``HOST:PORT``, serving ``/healthz`` (alive), ``/readyz``
    (a tunnel is up) and ``/metrics`` (Prometheus) without authentication; empty: none.
    The manifest the gateway serves sets it (``HERDGATE_HEALTH_LISTEN``) for the probes."""
    cluster_state: bool = True
    """Offer the gateway reports of the cluster's state (``tunnel.cluster_watch``): when it
    asks, the agent probes its API server and follows nodes and namespaces itself and sends
    what changed, so the gateway neither probes nor watches the cluster. False: the
    gateway probes and watches through the tunnel (as agents before reports)."""


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
