"""nginx from Debian as the backend (stand-in API server) and as the reference TLS proxy.

Each instance is our own process (``daemon off``, one worker) with a generated config in
a temp dir, TLS with a generated ECDSA certificate, access log off. The backend serves
two kubectl-shaped paths from files generated at start:

- ``SMALL_PATH``: a 2,048-byte JSON object (a ConfigMap);
- ``LIST_PATH``: a ~100 MB JSON list (a ConfigMapList).

The proxy is the reference for herdgate's path: TLS in front, HTTP/1.1 keep-alive TLS
upstream to the backend, three ``Impersonate-*`` headers set, ``Authorization`` removed,
buffers big enough that nothing spills to a temp file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from config.tls import issue_server_cert, make_ca

NGINX = "/usr/sbin/nginx"
SMALL_PATH = "/api/v1/namespaces/default/configmaps/bench"
LIST_PATH = "/api/v1/configmaps"
STATUS_PATH = "/_nginx/status"
"""nginx ``stub_status``: how many connections the backend has accepted."""
SMALL_BYTES = 2048
LIST_BYTES = 100_000_000
IMPERSONATE_HEADERS = (
    ("Impersonate-User", "u-bench"),
    ("Impersonate-Group", "herdgate:cluster-member"),
    ("Impersonate-Extra-username", "bench"),
)


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path) -> Certs:
    """A CA and one server certificate for 127.0.0.1/localhost (ECDSA P-256)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca("herdgate-bench-ca")
    cert, key = issue_server_cert(ca_cert, ca_key, ["127.0.0.1", "localhost"], "bench-backend")
    certs = Certs(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    certs.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    certs.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certs.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    certs.key.chmod(0o600)
    return certs


def _configmap(name: str, value_len: int) -> dict[str, object]:
    return {
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": "8c3e6f1e-2b4d-4f39-9a51-3d2f0c1b7a11",
            "resourceVersion": "123456",
            "creationTimestamp": "2026-11-25T10:00:00Z",
            "labels": {"app.kubernetes.io/name": "bench"},
        },
        "data": {"payload": "x" * value_len},
    }


def write_payloads(www: Path, list_bytes: int = LIST_BYTES) -> tuple[Path, Path]:
    """The 2 KB object and the big list; returns their paths."""
    www.mkdir(parents=True, exist_ok=True)
    small = www / "small.json"
    doc = _configmap("bench", 0)
    pad = SMALL_BYTES - len(json.dumps(doc, separators=(",", ":")))
    small.write_text(json.dumps(_configmap("bench", pad), separators=(",", ":")))
    assert small.stat().st_size == SMALL_BYTES
    big = www / "list.json"
    item = json.dumps(_configmap("cm-00000000", 900), separators=(",", ":")).encode()
    count = max(1, list_bytes // (len(item) + 1))
    with big.open("wb") as out:
        out.write(b'{"kind":"ConfigMapList","apiVersion":"v1","metadata":'
                  b'{"resourceVersion":"123456"},"items":[')  # fmt: skip
        batch: list[bytes] = []
        for index in range(count):
            batch.append(item.replace(b"cm-00000000", b"cm-%08d" % index))
            if len(batch) == 1000:
                out.write(b",".join(batch) + b",")
                batch.clear()
        out.write(b",".join(batch) if batch else b'{"kind":"ConfigMap"}')
        out.write(b"]}")
    return small, big


_COMMON = """\
worker_processes 1;
daemon off;
master_process on;
{user}
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    tcp_nodelay on;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    ssl_certificate {cert};
    ssl_certificate_key {key};
{body}
}}
"""

_BACKEND = """\
    sendfile on;
    output_buffers 2 256k;
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=4096;
        default_type application/json;
        location = {small} {{ alias {small_file}; }}
        location = {list} {{ alias {list_file}; }}
        location = {status} {{ stub_status; }}
        # What the gateway's cluster controller reads (the cluster turns active when
        # /readyz answers); its watches end at once and it backs them off.
        location = /readyz {{ return 200 'ok'; }}
        location = /livez {{ return 200 'ok'; }}
        location = /version {{ return 200 '{{"major":"1","minor":"32","gitVersion":"v1.32.0"}}'; }}
        location = /api/v1/nodes {{
            if ($arg_watch) {{ return 404 '{{"kind":"Status","code":404}}'; }}
            return 200 '{node_list}';
        }}
        location = /api/v1/namespaces {{
            if ($arg_watch) {{ return 404 '{{"kind":"Status","code":404}}'; }}
            return 200 '{namespace_list}';
        }}
        location / {{ return 404 '{{"kind":"Status","code":404}}'; }}
    }}
"""

_PROXY = """\
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=4096;
        location / {{
            proxy_pass https://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host 127.0.0.1:{backend_port};
            proxy_set_header Authorization "";
{impersonate}
            proxy_ssl_session_reuse on;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_name localhost;
            proxy_buffering on;
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
    }}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    """One nginx master + one worker, started and stopped by us."""

    def __init__(self, directory: Path, port: int, config: str) -> None:
        self.directory = directory
        self.port = port
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 10.0) -> Nginx:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nginx.conf"
        conf.write_text(self.config)
        log = (self.directory / "stderr.log").open("ab")
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.directory), "-c", str(conf),
             "-e", str(self.directory / "error.log")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.errors()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nginx not listening on {self.port}: {self.errors()}")

    def errors(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.directory / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.process = None


def _common(directory: Path, certs: Certs, body: str) -> str:
    user = "user root;" if os.geteuid() == 0 else ""
    return _COMMON.format(dir=directory, user=user, cert=certs.cert, key=certs.key, body=body)


def backend(directory: Path, certs: Certs, small: Path, big: Path) -> Nginx:
    port = free_port()
    body = _BACKEND.format(
        port=port,
        small=SMALL_PATH,
        list=LIST_PATH,
        small_file=small,
        list_file=big,
        status=STATUS_PATH,
        node_list=_empty_list("NodeList"),
        namespace_list=_empty_list("NamespaceList"),
    )
    return Nginx(directory, port, _common(directory, certs, body))


def _empty_list(kind: str) -> str:
    return json.dumps(
        {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []},
        separators=(",", ":"),
    )


def proxy(directory: Path, certs: Certs, backend_port: int) -> Nginx:
    port = free_port()
    impersonate = "\n".join(
        f'            proxy_set_header {name} "{value}";' for name, value in IMPERSONATE_HEADERS
    )
    body = _PROXY.format(port=port, backend_port=backend_port, impersonate=impersonate, ca=certs.ca)
    return Nginx(directory, port, _common(directory, certs, body))


def accepted_connections(instance: Nginx) -> int:
    """Connections the instance has accepted so far (``stub_status``)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    url = instance.url + STATUS_PATH
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    # "Active connections: 1 \nserver accepts handled requests\n 5 5 9 \n..."
    return int(text.splitlines()[2].split()[0])


def version() -> str:
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")
