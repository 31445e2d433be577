"""A small synchronous client for the gateway's management API (``/v3``), on urllib.

One ``Client`` per gateway: its URL, how its certificate is checked (``Trust``) and a
token. Every method is one request and returns the JSON the gateway answered, or
raises: ``ApiError`` (the gateway answered with an error status), ``Unreachable`` (no
answer: refused, no such host, a timeout, a broken connection) or ``Untrusted`` (its
certificate did not verify). Redirects are never followed (they would carry the token
elsewhere), and nothing here prints or logs; the token is sent only in the
``Authorization`` header, to the gateway it belongs to.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

Resource = dict[str, Any]
"""One object of the API (a cluster, a user ...), with Rancher's field names."""

DEFAULT_TIMEOUT_S = 30.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The most of one answer read (a kubeconfig for every cluster is far smaller)."""


class ClientError(Exception):
    """A request that did not succeed."""


class ApiError(ClientError):
    """The gateway answered with an error: its status, code and message."""

    def __init__(self, status: int, message: str, code: str = "", method: str = "") -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.method = method


class Unreachable(ClientError):
    """No answer from the gateway. ``kind``: ``refused``, ``resolve``, ``timeout``,
    ``tls`` (a TLS failure other than an untrusted certificate) or ``network``."""

    def __init__(self, server: str, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.server = server
        self.kind = kind
        self.detail = detail


class Untrusted(ClientError):
    """The gateway's certificate did not verify (unknown CA, wrong host name, expired)."""

    def __init__(self, server: str, detail: str, hostname_mismatch: bool) -> None:
        super().__init__(detail)
        self.server = server
        self.detail = detail
        self.hostname_mismatch = hostname_mismatch


class BadServerUrl(ClientError):
    pass


def normalize_server(url: str) -> str:
    """``https://host[:port]`` from what a user typed (``gw:8443`` gets ``https://``); a
    path, query, credentials or ``http://`` are refused (tokens travel only over TLS)."""
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "https":
        raise BadServerUrl(f"{url!r}: the gateway's URL must start with https://")
    try:
        port = parts.port
    except ValueError:
        raise BadServerUrl(f"{url!r}: the port must be a number up to 65535") from None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise BadServerUrl(f"{url!r}: expected https://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadServerUrl(f"{url!r}: expected https://HOST[:PORT], without a path")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}" + (f":{port}" if port is not None else "")


@dataclass(frozen=True)
class Trust:
    """How the gateway's certificate is checked: ``ca_pem`` (else the system's CAs), or
    not at all (``insecure``, only when a person asked for it)."""

    ca_pem: str = ""
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if self.ca_pem:
            return ssl.create_default_context(cadata=self.ca_pem)
        return ssl.create_default_context()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then an HTTPError, reported as such


def ca_checksum(pem: bytes) -> str:
    """SHA-256 of the CA exactly as ``/cacerts`` serves it (what agents pin)."""
    return hashlib.sha256(pem).hexdigest()


def _unwrap(exc: BaseException) -> BaseException:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        return exc.reason
    return exc


def classify(server: str, exc: BaseException, timeout: float) -> ClientError:
    """The ``ClientError`` for an exception urllib raised while nothing was answered."""
    cause = _unwrap(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        detail = cause.verify_message or str(cause)
        mismatch = "hostname" in detail.lower() or "ip address mismatch" in detail.lower()
        return Untrusted(server, detail, mismatch)
    if isinstance(cause, ConnectionRefusedError):
        return Unreachable(server, "refused", "connection refused")
    if isinstance(cause, socket.gaierror):
        return Unreachable(server, "resolve", f"cannot resolve the host name ({cause.strerror})")
    if isinstance(cause, TimeoutError):
        return Unreachable(server, "timeout", f"no answer within {timeout:g}s")
    if isinstance(cause, ssl.SSLError):
        return Unreachable(server, "tls", f"TLS failed: {cause.reason or cause}")
    if isinstance(cause, http.client.HTTPException):
        return Unreachable(server, "network", f"the connection broke: {type(cause).__name__}")
    if isinstance(cause, OSError):
        return Unreachable(server, "network", cause.strerror or str(cause))
    return Unreachable(server, "network", str(cause))


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str


@dataclass
class Client:
    server: str
    """``https://host[:port]`` (``normalize_server``)."""
    trust: Trust = field(default_factory=Trust)
    token: str = field(default="", repr=False)
    timeout: float = DEFAULT_TIMEOUT_S

    def _opener(self) -> urllib.request.OpenerDirector:
        return urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.trust.ssl_context()), _NoRedirects()
        )

    def send(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        authenticate: bool = True,
    ) -> Answer:
        """One request; any status comes back as an ``Answer`` (no exception for 4xx)."""
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - https only
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if authenticate and self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener().open(request, timeout=self.timeout) as response:
                return Answer(
                    response.status,
                    response.read(MAX_ANSWER_BYTES),
                    response.headers.get_content_type(),
                )
        except urllib.error.HTTPError as exc:
            try:
                raw = exc.read(MAX_ANSWER_BYTES)
            except (OSError, http.client.HTTPException):
                raw = b""
            return Answer(exc.code, raw, exc.headers.get_content_type() if exc.headers else "")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise classify(self.server, exc, self.timeout) from None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        authenticate: bool = True,
    ) -> Any:
        """One request; the JSON answered, or ``ApiError`` for an error status."""
        answer = self.send(method, path, body, query, authenticate)
        if answer.status >= 300:
            raise api_error(answer, method)
        if not answer.body:
            return None
        try:
            return json.loads(answer.body)
        except ValueError:
            raise ApiError(
                answer.status, f"the gateway answered {path} with something not JSON", "", method
            ) from None

    def get(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        return self.call("GET", path, query=query)

    def post(self, path: str, body: Any = None, query: Mapping[str, str] | None = None) -> Any:
        return self.call("POST", path, {} if body is None else body, query)

    def put(self, path: str, body: Any) -> Any:
        return self.call("PUT", path, body)

    def delete(self, path: str, query: Mapping[str, str] | None = None) -> Any:
        return self.call("DELETE", path, query=query)

    def collection(self, path: str, query: Mapping[str, str] | None = None) -> list[Resource]:
        """The ``data`` of a ``{"type": "collection"}`` answer."""
        answer = self.get(path, query)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list):
            raise ApiError(200, f"the gateway answered {path} without a collection")
        return [item for item in data if isinstance(item, dict)]

    # -- without a token ---------------------------------------------------------------

    def version(self) -> str:
        answer = self.call("GET", "/herdgate/version", authenticate=False)
        return str(answer.get("version", "")) if isinstance(answer, dict) else ""

    def cacerts(self) -> bytes:
        """The gateway's CA as ``/cacerts`` serves it; fetched however ``trust`` says."""
        answer = self.send("GET", "/cacerts", authenticate=False)
        if answer.status != 200:
            raise api_error(answer, "GET")
        return answer.body

    def password_login(
        self, provider_path: str, username: str, password: str, description: str
    ) -> Resource:
        """``POST /v3-public/<provider>?action=login``: the new token's view, with
        ``token`` (its secret, shown once)."""
        answer = self.call(
            "POST",
            f"/v3-public/{provider_path}",
            {"username": username, "password": password, "description": description},
            {"action": "login"},
            authenticate=False,
        )
        if not isinstance(answer, dict) or not isinstance(answer.get("token"), str):
            raise ApiError(201, "the gateway's login answer holds no token")
        return answer

    # -- the caller --------------------------------------------------------------------

    def me(self) -> Resource:
        users = self.collection("/v3/users", {"me": "true"})
        if not users:
            raise ApiError(404, "the gateway does not know this token's user")
        return users[0]

    def logout(self) -> None:
        """Revoke the token in use (``POST /v3/tokens?action=logout``)."""
        self.post("/v3/tokens", {}, {"action": "logout"})

    # -- the collections ---------------------------------------------------------------

    @property
    def clusters(self) -> Collection:
        return Collection(self, "/v3/clusters")

    @property
    def users(self) -> Collection:
        return Collection(self, "/v3/users")

    @property
    def tokens(self) -> Collection:
        return Collection(self, "/v3/tokens", "userId")

    @property
    def bindings(self) -> Collection:
        """Cluster role template bindings."""
        return Collection(self, "/v3/clusterroletemplatebindings", "clusterId")

    @property
    def projects(self) -> Collection:
        return Collection(self, "/v3/projects", "clusterId")

    @property
    def project_bindings(self) -> Collection:
        return Collection(self, "/v3/projectroletemplatebindings", "projectId")

    @property
    def role_templates(self) -> Collection:
        return Collection(self, "/v3/roletemplates", "context")

    # -- clusters ----------------------------------------------------------------------

    def create_cluster(self, name: str, description: str = "") -> Resource:
        body = {"name": name, **({"description": description} if description else {})}
        return self.clusters.create(body)

    def create_registration(self, cluster_id: str, ttl: str = "") -> Resource:
        body: dict[str, Any] = {"clusterId": cluster_id}
        if ttl:
            body["ttl"] = ttl
        result: Resource = self.post("/v3/clusterregistrationtokens", body)
        return result

    def generate_kubeconfig(self, cluster_id: str, exec_credential: bool = False) -> str:
        body = {"credential": "exec"} if exec_credential else {}
        answer = self.post(
            f"/v3/clusters/{_seg(cluster_id)}", body, {"action": "generateKubeconfig"}
        )
        return _config_text(answer, "generateKubeconfig")

    def kubeconfigs(
        self, cluster_ids: list[str], ttl_s: float | None = None, exec_credential: bool = False
    ) -> str:
        """``POST /v3/kubeconfigs {"clusters": ["*"] | [ids], "ttl"?, "credential"?}``:
        one kubeconfig, one context per cluster (``NoKubeconfigsEndpoint`` if this
        gateway predates it)."""
        body: dict[str, Any] = {"clusters": cluster_ids}
        if ttl_s is not None:
            body["ttl"] = ttl_s  # seconds
        if exec_credential:
            body["credential"] = "exec"
        answer = self.send("POST", "/v3/kubeconfigs", body)
        if answer.status in (404, 405) and _no_route(answer):
            raise NoKubeconfigsEndpoint(self.server)
        if answer.status >= 300:
            raise api_error(answer, "POST")
        if "yaml" in answer.content_type:
            return answer.body.decode()
        try:
            parsed = json.loads(answer.body)
        except ValueError:
            raise ApiError(answer.status, "the gateway's kubeconfig answer is not JSON") from None
        return _config_text(parsed, "/v3/kubeconfigs")

    # -- users, tokens and projects -----------------------------------------------------

    def create_user(
        self, username: str, password: str, admin: bool = False, display_name: str = ""
    ) -> Resource:
        body: dict[str, Any] = {"username": username, "password": password, "admin": admin}
        if display_name:
            body["name"] = display_name
        return self.users.create(body)

    def set_password(self, user_id: str, password: str) -> Resource:
        result: Resource = self.post(
            f"/v3/users/{_seg(user_id)}", {"newPassword": password}, {"action": "setpassword"}
        )
        return result

    def change_own_password(self, current: str, new: str) -> None:
        self.post(
            "/v3/users",
            {"currentPassword": current, "newPassword": new},
            {"action": "changepassword"},
        )

    def delete_user_tokens(self, user_id: str) -> list[Resource]:
        """``DELETE /v3/tokens?userId=``: every token of a user; the revoked ones."""
        answer = self.delete("/v3/tokens", {"userId": user_id})
        data = answer.get("data") if isinstance(answer, dict) else None
        return [t for t in data if isinstance(t, dict)] if isinstance(data, list) else []

    def create_project(self, cluster_id: str, name: str, description: str = "") -> Resource:
        body = {"clusterId": cluster_id, "name": name}
        if description:
            body["description"] = description
        return self.projects.create(body)


@dataclass(frozen=True)
class Collection:
    """One ``/v3`` collection of a client: its objects (all, or those whose
    ``filter_field`` has a value), one of them by id, a new one, one deleted."""

    client: Client
    path: str
    filter_field: str = ""
    """The query field ``items`` filters on (``clusterId`` ...); none: no filter."""

    def items(self, value: str = "") -> list[Resource]:
        query = {self.filter_field: value} if value and self.filter_field else None
        return self.client.collection(self.path, query)

    def get(self, item_id: str) -> Resource:
        return self._one(self.client.get(f"{self.path}/{_seg(item_id)}"))

    def create(self, body: Mapping[str, Any]) -> Resource:
        return self._one(self.client.post(self.path, dict(body)))

    def delete(self, item_id: str) -> Resource:
        return self._one(self.client.delete(f"{self.path}/{_seg(item_id)}"))

    def _one(self, answer: Any) -> Resource:
        if not isinstance(answer, dict):
            raise ApiError(200, f"the gateway answered {self.path} without an object")
        return answer


class NoKubeconfigsEndpoint(ClientError):
    """The gateway has no ``POST /v3/kubeconfigs`` (it predates it)."""

    def __init__(self, server: str) -> None:
        super().__init__(f"{server} has no /v3/kubeconfigs")
        self.server = server


def _seg(value: str) -> str:
    """One path segment (ids such as ``c-abc:crtb-xyz`` keep their colon)."""
    return urllib.parse.quote(value, safe=":")


def _config_text(answer: Any, what: str) -> str:
    config = answer.get("config") if isinstance(answer, dict) else None
    if not isinstance(config, str):
        raise ApiError(200, f"the gateway's {what} answer holds no kubeconfig")
    return config


def _no_route(answer: Answer) -> bool:
    """A 404/405 from the router (no such path), not from a handler (no such cluster):
    the router's errors carry only the status's reason phrase."""
    try:
        body = json.loads(answer.body)
    except ValueError:
        return True
    message = body.get("message") if isinstance(body, dict) else None
    return message in (None, "", "Not Found", "Method Not Allowed")


def api_error(answer: Answer, method: str) -> ApiError:
    """The gateway's error body (``{"type":"error","status","code","message"}``) as an
    ``ApiError``; a body that is not one gives the status alone."""
    message, code = "", ""
    try:
        body = json.loads(answer.body) if answer.body else None
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or "")
        code = str(body.get("code") or "")
    if not message:
        message = http.client.responses.get(answer.status, "error")
    return ApiError(answer.status, message, code, method)
