"""``herdgate login``: a kubectl exec credential plugin.

kubectl runs it before talking to the gateway. It prints an ``ExecCredential`` with a
herdgate token, taken from a cache (a 0600 file under ``~/.herdgate/cache``) while the
token is valid, otherwise obtained by logging in: user name and password for local
users and LDAP/Active Directory (prompted on the terminal, or from
``HERDGATE_USERNAME``/``HERDGATE_PASSWORD`` for automation), a device flow for OIDC and
GitHub. With ``provideClusterInfo`` kubectl passes the cluster's CA in
``KUBERNETES_EXEC_INFO``; it is used to trust the gateway.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import getpass
import hashlib
import io
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

PROVIDER_PATHS = {
    "local": "localProviders/local",
    "ldap": "openLdapProviders/openldap",
    "openldap": "openLdapProviders/openldap",
    "activedirectory": "activeDirectoryProviders/activedirectory",
    "ad": "activeDirectoryProviders/activedirectory",
}
DEVICE_PROVIDERS = {"oidc": "oidcProviders/oidc", "github": "githubProviders/github"}
EXPIRY_MARGIN_S = 60.0
DEFAULT_API_VERSION = "client.authentication.k8s.io/v1"


class LoginError(Exception):
    pass


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "login",
        help="kubectl exec credential plugin: print a herdgate token for kubectl",
        description=(
            "kubectl's exec credential plugin: prints an ExecCredential holding a herdgate "
            "token, cached (0600, under ~/.herdgate/cache) until shortly before it expires. "
            "Logging in asks for the user name and password on the terminal (or reads "
            "HERDGATE_USERNAME and HERDGATE_PASSWORD), or runs a device flow for OIDC and "
            'GitHub. A kubeconfig from generateKubeconfig {"credential": "exec"} runs it.'
        ),
    )
    p.add_argument("--server", required=True, help="gateway URL, e.g. https://gw.example.com")
    p.add_argument(
        "--provider",
        default="local",
        choices=sorted({*PROVIDER_PATHS, *DEVICE_PROVIDERS}),
        help="how the user logs in (default local)",
    )
    p.add_argument(
        "--cluster",
        action="append",
        default=[],
        help="scope the token to this cluster id (repeated: to each of those clusters)",
    )
    p.add_argument("--username", default="", help="user name (else prompted)")
    p.add_argument("--ca-file", default="", help="CA that verifies the gateway")
    p.add_argument("--cache-dir", default="", help="default ~/.herdgate/cache")
    p.add_argument("--logout", action="store_true", help="forget the cached token and exit")
    p.set_defaults(run=run)


def cache_path(cache_dir: Path, server: str, provider: str, cluster: str) -> Path:
    key = hashlib.sha256(f"{server}\0{provider}\0{cluster}".encode()).hexdigest()[:24]
    return cache_dir / f"{key}.json"


def read_cache(path: Path, now: float) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        return None
    expires = data.get("expiresAt")
    if isinstance(expires, str) and _parse_time(expires) - EXPIRY_MARGIN_S <= now:
        return None
    return data


def write_cache(path: Path, token: str, expires_at: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"token": token, "expiresAt": expires_at}, handle)
    tmp.replace(path)


def _parse_time(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def exec_credential(token: str, expires_at: str | None, api_version: str) -> dict[str, Any]:
    status: dict[str, Any] = {"token": token}
    if expires_at:
        status["expirationTimestamp"] = expires_at
    return {"apiVersion": api_version, "kind": "ExecCredential", "status": status}


def _exec_info() -> dict[str, Any]:
    raw = os.environ.get("KUBERNETES_EXEC_INFO", "")
    try:
        info = json.loads(raw) if raw else {}
    except ValueError:
        info = {}
    return info if isinstance(info, dict) else {}


def ssl_context(ca_file: str, exec_info: dict[str, Any]) -> ssl.SSLContext:
    cluster = exec_info.get("spec", {}).get("cluster") or {}
    ca_data = cluster.get("certificate-authority-data")
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    if isinstance(ca_data, str) and ca_data:
        return ssl.create_default_context(cadata=base64.b64decode(ca_data).decode())
    return ssl.create_default_context()


def _post(url: str, body: dict[str, Any], ctx: ssl.SSLContext) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - an https URL the user configured
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=30) as resp:  # noqa: S310
            result: dict[str, Any] = json.loads(resp.read())
            return result
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", "")
        except ValueError:
            message = ""
        raise LoginError(f"login failed (HTTP {exc.code}): {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise LoginError(f"cannot reach {url}: {exc}") from None


def _open_terminal() -> io.TextIOWrapper:
    """The controlling terminal, for a prompt and its answer.

    Opened as :mod:`getpass` opens it: one unbuffered read-write file. (``open("/dev/tty",
    "r+")`` wants a seekable file, which a terminal is not: it always failed.)"""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise LoginError(
            "no terminal to prompt on; set HERDGATE_USERNAME and HERDGATE_PASSWORD"
        ) from None
    return io.TextIOWrapper(io.FileIO(fd, "r+"), write_through=True)


def _ask_username(provider: str) -> str:
    with _open_terminal() as tty:
        tty.write(f"herdgate {provider} username: ")
        tty.flush()
        answer = tty.readline()
    username = answer.strip()
    if not username:
        raise LoginError("no user name given")
    return username


def _ask_password(username: str) -> str:
    _open_terminal().close()  # getpass would read standard input without one
    try:
        return getpass.getpass(f"herdgate password for {username}: ")
    except EOFError:
        raise LoginError("no password given") from None


def password_login(args: argparse.Namespace, ctx: ssl.SSLContext) -> dict[str, Any]:
    username = args.username or os.environ.get("HERDGATE_USERNAME") or _ask_username(args.provider)
    password = os.environ.get("HERDGATE_PASSWORD")
    if password is None:
        password = _ask_password(username)
    url = f"{args.server.rstrip('/')}/v3-public/{PROVIDER_PATHS[args.provider]}?action=login"
    body: dict[str, Any] = {
        "username": username,
        "password": password,
        "description": "kubectl (herdgate login)",
    }
    body.update(_scope(args.cluster))
    return _post(url, body, ctx)


def _scope(clusters: list[str]) -> dict[str, Any]:
    """The login body's fields for ``--cluster``: ``clusterId`` for one (what every
    gateway reads), ``clusterIds`` for several."""
    if len(clusters) > 1:
        return {"clusterIds": clusters}
    return {"clusterId": clusters[0]} if clusters else {}


def device_login(args: argparse.Namespace, ctx: ssl.SSLContext) -> dict[str, Any]:
    base = f"{args.server.rstrip('/')}/v3-public/{DEVICE_PROVIDERS[args.provider]}"
    flow = _post(f"{base}?action=deviceCode", {}, ctx)
    print(
        f"To log in, open {flow['verificationUri']} and enter the code {flow['userCode']}",
        file=sys.stderr,
        flush=True,
    )
    interval = float(flow.get("interval", 5))
    deadline = time.monotonic() + float(flow.get("expiresIn", 600))
    while time.monotonic() < deadline:
        time.sleep(interval)
        body = {"deviceCode": flow["deviceCode"], **_scope(args.cluster)}
        result = _post(f"{base}?action=deviceToken", body, ctx)
        if result.get("token"):
            return result
        interval = float(result.get("interval", interval))
    raise LoginError("the device login expired before it was approved")


def run(args: argparse.Namespace) -> int:
    exec_info = _exec_info()
    api_version = str(exec_info.get("apiVersion") or DEFAULT_API_VERSION)
    cache_dir = Path(args.cache_dir or Path.home() / ".herdgate" / "cache")
    path = cache_path(cache_dir, args.server, args.provider, ",".join(args.cluster))
    if args.logout:
        path.unlink(missing_ok=True)
        return 0
    cached = read_cache(path, time.time())
    if cached is None:
        try:
            ctx = ssl_context(args.ca_file, exec_info)
            if args.provider in DEVICE_PROVIDERS:
                result = device_login(args, ctx)
            else:
                result = password_login(args, ctx)
        except LoginError as exc:
            print(f"herdgate login: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nherdgate login: interrupted", file=sys.stderr)
            return 130
        cached = {"token": result["token"], "expiresAt": result.get("expiresAt")}
        write_cache(path, cached["token"], cached["expiresAt"])
    print(json.dumps(exec_credential(cached["token"], cached.get("expiresAt"), api_version)))
    return 0
