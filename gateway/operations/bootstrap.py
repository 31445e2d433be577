"""First-start duties: the listening sockets, the state directory, TLS material and the
first admin.

The sockets are bound first (:func:`bind_listeners`): a gateway whose address is taken
stops with one line before it opens its store, creates the first admin (whose password
would be shown for nothing) or starts anything that leaves files behind."""

from __future__ import annotations

import os
import secrets
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from config import native, program
from config.errors import ConfigError, StartError
from config.schema import GatewaySettings
from config.tls import CertPaths, ca_checksum, ensure_generated_certs
from gateway.identity import hashing
from gateway.identity.directory import Directory, UsernameTaken
from gateway.store.records import User
from tunnel import tls
from tunnel.replica_list import check_advertise_url, replica_url

BOOTSTRAP_ENV = "HERDGATE_BOOTSTRAP_PASSWORD"
PASSWORD_FILE = "bootstrap-password"


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError("listen", f"expected HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class Listeners:
    """The gateway's bound, listening sockets: HTTPS, and ``metrics.listen`` if set."""

    https: list[socket.socket]
    metrics: list[socket.socket] = field(default_factory=list)

    def close(self) -> None:
        for sock in (*self.https, *self.metrics):
            sock.close()


def bind_listeners(settings: GatewaySettings, reuse_port: bool = False) -> Listeners:
    """Bind ``listen`` and ``metrics.listen``; ``StartError`` (one line, nothing left
    open) if either is in use or not ours to bind."""
    https = _bind(settings.listen, "", reuse_port, backlog=1024)
    if not settings.metrics.listen:
        return Listeners(https)
    try:
        metrics = _bind(settings.metrics.listen, "metrics.listen", reuse_port, backlog=128)
    except BaseException:
        for sock in https:
            sock.close()
        raise
    return Listeners(https, metrics)


def _bind(listen: str, key: str, reuse_port: bool, backlog: int) -> list[socket.socket]:
    host, port = split_listen(listen)
    try:
        return tls.bind(host, port, backlog=backlog, reuse_port=reuse_port)
    except OSError as exc:
        shown = f"[{host}]" if ":" in host else host
        where = f" ({key})" if key else ""
        reason = exc.strerror or str(exc)
        raise StartError(
            f"cannot listen on {shown}:{port}{where}: {reason[:1].lower()}{reason[1:]}"
        ) from None


def server_url(settings: GatewaySettings) -> str:
    if settings.server_url:
        parts = urlsplit(settings.server_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError("server_url", "expected an https:// URL")
        return settings.server_url.rstrip("/")
    host, port = split_listen(settings.listen)
    if host in WILDCARD_HOSTS:
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{port}"


WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})


def advertise_url(settings: GatewaySettings) -> str:
    """Where agents reach this replica itself: ``replica.advertise_url``, else the listen
    address when it is not a wildcard, else "" (agents reach it through ``server_url``)."""
    if settings.replica.advertise_url:
        try:
            return check_advertise_url(settings.replica.advertise_url)
        except ValueError as exc:
            raise ConfigError("replica.advertise_url", str(exc)) from None
    host, port = split_listen(settings.listen)
    return "" if host in WILDCARD_HOSTS else replica_url(host, port)


def state_dir(settings: GatewaySettings) -> Path:
    path = Path(settings.state_dir)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def tls_material(settings: GatewaySettings, url: str) -> tuple[CertPaths, str, bool]:
    """Certificate paths, the CA PEM to publish, and whether a CA was generated now."""
    if settings.tls.cert_file:
        if not settings.tls.key_file:
            raise ConfigError("tls.key_file", "required with tls.cert_file")
        ca_pem = Path(settings.tls.ca_file).read_text() if settings.tls.ca_file else ""
        paths = CertPaths(
            Path(settings.tls.cert_file), Path(settings.tls.key_file), Path(settings.tls.ca_file)
        )
        return paths, ca_pem, False
    host, _ = split_listen(settings.listen)
    url_host = urlsplit(url).hostname or ""
    hosts = [host, "localhost", "127.0.0.1", "::1", url_host, socket.gethostname()]
    hosts = [h for h in hosts if h and h not in {"0.0.0.0", "::"}]
    paths, created = ensure_generated_certs(state_dir(settings) / "tls", hosts)
    return paths, paths.ca.read_text(), created


async def ensure_admin(directory: Directory, settings: GatewaySettings) -> None:
    """Create user ``admin`` on first start; show a generated password once."""
    if directory.users:
        return
    password = os.environ.get(BOOTSTRAP_ENV, "")
    generated = not password
    if generated:
        password = secrets.token_urlsafe(18)
    password_hash = hashing.hash_password(password)
    now = directory.clock()
    try:
        await directory.create_local_user(
            "admin",
            lambda user_id: User(
                id=user_id,
                username="admin",
                password_hash=password_hash,
                created=now,
                display_name="Default Admin",
                admin=True,
                principal_ids=(f"local://{user_id}",),
            ),
        )
    except UsernameTaken:
        return  # another process created it a moment ago
    if generated:
        path = state_dir(settings) / PASSWORD_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        print(
            f"Bootstrap admin user: admin\nBootstrap admin password: {password}\n"
            f"(shown once; also written to {path}, readable only by this user)",
            file=sys.stdout,
            flush=True,
        )


def banner(url: str, ca_pem: str, settings: GatewaySettings | None = None) -> str:
    lines = [f"herdgate gateway serving {url}", f"request path: {native.describe()}"]
    if ca_pem:
        lines.append(f"CA checksum (sha256, agents pin it): {ca_checksum(ca_pem.encode())}")
    note = program_note(settings) if settings is not None else None
    if note:
        lines.append(note)
    return "\n".join(lines)


def program_note(
    settings: GatewaySettings, argv0: str | None = None, path_env: str | None = None
) -> str | None:
    """When this gateway runs from a virtualenv not on PATH and the printed agent
    commands name plain ``herdgate``: what to do (once, in the banner)."""
    if settings.registration.agent_program != program.NAME:
        return None
    path_env = os.environ.get("PATH", "") if path_env is None else path_env
    directory = program.off_path(sys.argv[0] if argv0 is None else argv0, path_env)
    if directory is None:
        return None
    return (
        f"note: the agent commands this gateway prints run 'herdgate', which is not on "
        f"PATH here (this one is {directory}/herdgate): where an agent runs, install "
        f"herdgate on PATH (here: export PATH={directory}:$PATH), or set "
        "registration.agent_program to its path there (e.g. /opt/herdgate/bin/herdgate)"
    )
