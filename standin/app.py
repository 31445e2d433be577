"""The aiohttp application: authentication, impersonation, audit, then the API."""

from __future__ import annotations

import datetime
import json
import logging
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from config.tls import server_context

from . import bulk, discovery, h2front, openapi, rbac, streaming
from .audit import AuditLog, event
from .auth import (
    ALL_UNAUTHENTICATED,
    ANONYMOUS,
    Authenticator,
    TokenFile,
    TokenWebhook,
    UserInfo,
    bearer_token,
)
from .context import Context
from .impersonation import Impersonator, PlainInternalError, has_impersonation_headers
from .pods import PodFilesystems
from .rbac import Attributes, forbidden_error
from .requestinfo import RequestInfo, request_info
from .rest import Api, streaming_params
from .status import ApiError, route_not_found, unauthorized

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version")
# The user a request acts as (after impersonation), and its audit ID, for handlers that want them.
USER_KEY = web.RequestKey("standin_user", UserInfo)
AUDIT_ID_KEY = web.RequestKey("standin_audit_id", str)
# The audit annotations of apiserver's WithAuthorization filter.
DECISION = "authorization.k8s.io/decision"
REASON = "authorization.k8s.io/reason"


@dataclass
class Config:
    token_file: Path | None = None
    client_ca_file: Path | None = None
    webhook_config: Path | None = None
    webhook_version: str = "v1beta1"
    webhook_cache_ttl: float = 120.0
    api_audiences: tuple[str, ...] = ("https://kubernetes.default.svc.cluster.local",)
    impersonator_users: tuple[str, ...] = ()
    impersonator_groups: tuple[str, ...] = ()
    authorization_mode: str = "RBAC"
    # Objects created at start (any kind the stand-in serves; List kinds are flattened).
    objects: list[dict[str, Any]] = field(default_factory=list)
    audit_log: Path | None = None
    anonymous_auth: bool = True
    aggregated_discovery: bool = True
    k8s_version: str = "v1.32.0"
    watch_history: int = 10000
    bulk_list_bytes: int = 0
    # Where the pods' root directories go (standin.pods); None: a temp dir, removed at exit.
    pod_root: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def version_info(k8s_version: str) -> dict[str, str]:
    major, minor = k8s_version.lstrip("v").split(".")[:2]
    return {
        "major": major,
        "minor": minor,
        "gitVersion": k8s_version,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.4",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def _is_public(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PUBLIC_PATHS)


def _json(obj: Any, code: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    hdrs = {"Cache-Control": "no-cache, private"}
    hdrs.update(headers or {})
    return web.Response(
        status=code,
        body=json.dumps(obj, separators=(",", ":")).encode() + b"\n",
        content_type="application/json",
        headers=hdrs,
    )


class StandIn:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.api = Api(
            config.watch_history,
            config.k8s_version,
            authorization_mode=config.authorization_mode,
            objects=config.objects,
        )
        webhook = None
        if config.webhook_config is not None:
            webhook = TokenWebhook(
                config.webhook_config,
                config.webhook_version,
                config.webhook_cache_ttl,
                config.api_audiences,
            )
        token_file = TokenFile(config.token_file) if config.token_file else None
        self.authn = Authenticator(token_file, webhook)
        self.impersonator = Impersonator(
            config.impersonator_users,
            config.impersonator_groups,
            self.api.authorizer.authorize,
        )
        self.audit = AuditLog(config.audit_log)
        self.pod_files = PodFilesystems(config.pod_root)
        self.h2_stats = h2front.Stats()
        """HTTP/2 connections and streams served (unless ``--http1-only``)."""

    # -- authentication ---------------------------------------------------------------------

    async def authenticate_token(self, token: str) -> UserInfo | None:
        """Bearer token alone (TokenReview): token file, service account tokens, webhook."""
        user, _ = await self.authenticate(f"Bearer {token}", None)
        return user

    async def authenticate(
        self, authorization: str | None, peercert: dict[str, Any] | None
    ) -> tuple[UserInfo | None, bool]:
        if authorization and peercert is None:
            token = bearer_token(authorization)
            if token:
                if self.authn.token_file is not None:
                    found = self.authn.token_file.lookup(token)
                    if found is not None:
                        return found.with_authenticated_group(), True
                sa_user = self.api.sa_tokens.lookup(token)
                if sa_user is not None:
                    return sa_user.with_authenticated_group(), True
        return await self.authn.authenticate(authorization, peercert)

    # -- the request pipeline ---------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        received = datetime.datetime.now(datetime.UTC)
        # As kube-apiserver's WithAuditInit: a client's Audit-ID is kept, and echoed.
        audit_id = request.headers.get("Audit-ID") or str(uuid.uuid4())
        info = request_info(request.method, request.path, dict(request.query))
        user: UserInfo | None = None
        impersonated: UserInfo | None = None
        annotations: dict[str, str] = {}
        code, message = 500, ""
        resp: web.StreamResponse | None = None
        try:
            peercert = None
            transport = request.transport
            is_unix = transport is not None and isinstance(
                transport.get_extra_info("sockname"), str
            )
            front_cert, front_remote, present = h2front.front_fields(request.headers, is_unix)
            if present:
                # An HTTP/2 stream the front forwarded (its client's certificate and
                # address), or a client's forgery (dropped): never seen past here.
                request = request.clone(
                    headers=CIMultiDict(
                        (name, value)
                        for name, value in request.headers.items()
                        if not name.lower().startswith("x-standin-front-")
                    ),
                    remote=front_remote or request.remote or "",
                )
            if self.config.client_ca_file is not None and is_unix:
                peercert = front_cert
            elif self.config.client_ca_file is not None and transport is not None:
                peercert = transport.get_extra_info("peercert")
            user, presented = await self.authenticate(
                request.headers.get("Authorization"), peercert
            )
            if user is None:
                if presented or not self.config.anonymous_auth or not _is_public(request.path):
                    raise unauthorized()
                user = UserInfo(ANONYMOUS, "", (ALL_UNAUTHENTICATED,))
            if has_impersonation_headers(request.headers):
                impersonated = self.impersonator.impersonate(user, request.headers)
            effective = impersonated or user
            request[USER_KEY] = effective
            request[AUDIT_ID_KEY] = audit_id
            self.authorize(effective, info, request.query.get("fieldSelector"), annotations)
            resp = await self.dispatch(request, info, effective)
        except ApiError as exc:
            resp = exc.response()
            message = exc.message
        except PlainInternalError as exc:
            text = f'Internal Server Error: "{request.path_qs}": {exc}'
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            resp = web.Response(
                status=500,
                text=text + "\n",
                content_type="text/plain",
                charset="utf-8",
                headers={"X-Content-Type-Options": "nosniff"},
            )
            message = str(exc)
        except Exception as exc:  # keep the server alive and answer a Status
            log.exception("request %s %s failed", request.method, request.path)
            err = ApiError(
                500,
                "InternalError",
                f"Internal error occurred: {exc}",
                {"causes": [{"message": str(exc)}]},
            )
            resp = err.response()
            message = err.message
        finally:
            if resp is not None:
                code = resp.status
            self.audit.write(
                event(
                    audit_id=audit_id,
                    stage="ResponseComplete",
                    request_uri=request.path_qs,
                    verb=info.verb,
                    user=user.to_json() if user else {},
                    impersonated=impersonated.to_json() if impersonated else None,
                    source_ip=request.remote or "",
                    user_agent=request.headers.get("User-Agent", ""),
                    object_ref=info.object_ref() if info.is_resource else None,
                    code=code,
                    message=message,
                    received=received,
                    content_type=request.headers.get("Content-Type", ""),
                    accept=request.headers.get("Accept", ""),
                    annotations=annotations,
                    headers=[
                        (name.decode("latin-1"), value.decode("latin-1"))
                        for name, value in request.raw_headers
                    ],
                )
            )
        if not resp.prepared and "Audit-Id" not in resp.headers:
            resp.headers["Audit-Id"] = audit_id
        return resp

    def authorize(
        self,
        user: UserInfo,
        info: RequestInfo,
        field_selector: str | None = None,
        annotations: dict[str, str] | None = None,
    ) -> None:
        """filters.WithAuthorization: 403 unless the authorizer allows. A list or watch with
        the field selector `metadata.name=x` is authorized with name x (as RequestInfoFactory
        does), so `resourceNames` rules allow `kubectl get cm x -w`. The decision and reason go
        to `annotations` (the audit event's `authorization.k8s.io/decision` and `/reason`)."""
        notes = annotations if annotations is not None else {}
        if self.api.authorizer.allows_everything(user.groups):
            notes.update({DECISION: "allow", REASON: ""})
            return
        name = info.name
        if not name and info.verb in ("list", "watch") and field_selector:
            name = rbac.name_from_field_selector(field_selector)
        if info.is_resource:
            attrs = Attributes(
                user.username,
                user.groups,
                info.verb,
                True,
                info.namespace,
                info.group,
                info.resource,
                info.subresource,
                name,
                info.path,
            )
        else:
            attrs = Attributes(user.username, user.groups, info.verb, False, path=info.path)
        decision = self.api.authorizer.authorize(attrs)
        notes.update({DECISION: "allow" if decision.allowed else "forbid", REASON: decision.reason})
        if not decision.allowed:
            raise forbidden_error(attrs, decision.reason)

    async def dispatch(self, request: web.Request, info: Any, user: UserInfo) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        method = request.method
        registry = self.api.registry
        if path == "/version" and method == "GET":
            return _json(version_info(self.config.k8s_version))
        if _is_public(path) and method == "GET":
            return web.Response(
                text="ok", content_type="text/plain", headers={"X-Content-Type-Options": "nosniff"}
            )
        if path in ("/api", "/apis") and method == "GET":
            agg = (
                discovery.wants_aggregated(request.headers.get("Accept"))
                if self.config.aggregated_discovery
                else None
            )
            if agg is not None:
                agg_doc = discovery.aggregated(registry, core=path == "/api", version=agg)
                return web.Response(
                    body=json.dumps(agg_doc, separators=(",", ":")).encode() + b"\n",
                    headers={
                        "Content-Type": discovery.aggregated_content_type(agg),
                        "Cache-Control": "no-cache, private",
                        "Vary": "Accept",
                    },
                )
            if path == "/api":
                return _json(discovery.api_versions(request.host))
            return _json(discovery.api_group_list(registry))
        if path == "/openapi/v2" and method == "GET":
            accept = request.headers.get("Accept", "")
            if openapi.V2_PROTOBUF in accept or openapi.V2_PROTOBUF_RETURNED in accept:
                return web.Response(
                    body=openapi.v2_protobuf(registry, self.config.k8s_version),
                    headers={
                        "Content-Type": openapi.V2_PROTOBUF_RETURNED,
                        "Cache-Control": "no-cache, private",
                    },
                )
            return _json(openapi.v2_document(registry, self.config.k8s_version))
        if path == "/openapi/v3" and method == "GET":
            return _json(openapi.root_document(registry, self.config.k8s_version))
        if path.startswith("/openapi/v3/") and method == "GET":
            rel = path[len("/openapi/v3/") :].split("/")
            spec = None
            if len(rel) == 2 and rel[0] == "api":
                spec = openapi.gv_document(registry, "", rel[1], self.config.k8s_version)
            elif len(rel) == 3 and rel[0] == "apis":
                spec = openapi.gv_document(registry, rel[1], rel[2], self.config.k8s_version)
            if spec is None:
                raise route_not_found()
            headers = {"Cache-Control": "public, immutable"} if request.query.get("hash") else {}
            return _json(spec, headers=headers)
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] in ("api", "apis") and not info.is_resource:
            if method != "GET":
                raise route_not_found()
            doc: dict[str, Any] | None = None
            if parts[0] == "api" and len(parts) == 2:
                doc = (
                    discovery.api_resource_list(registry, "", parts[1])
                    if parts[1] == "v1"
                    else None
                )
            elif parts[0] == "apis" and len(parts) == 2:
                doc = discovery.api_group_doc(registry, parts[1])
            elif parts[0] == "apis" and len(parts) == 3:
                doc = discovery.api_resource_list(registry, parts[1], parts[2])
            if doc is None:
                raise route_not_found()
            return _json(doc)
        if info.is_resource and bulk.wants_bulk(
            info.namespace, info.resource, info.verb, self.config.bulk_list_bytes
        ):
            return await bulk.serve(request, self.config.bulk_list_bytes)
        if info.is_resource:
            ctx = Context(request, info, user, self.authenticate_token)
            return await self.api.handle(ctx, self.serve_stream)
        raise route_not_found()

    async def serve_stream(
        self, request: web.Request, kind: str, pod: dict[str, Any]
    ) -> web.StreamResponse:
        """Route exec/attach/portforward to streaming.py, once the request is authenticated."""
        params = streaming_params(request, kind, pod)
        if kind == "exec":
            return await streaming.serve_exec(
                request,
                pod,
                params["command"],
                params["container"],
                params["stdin"],
                params["stdout"],
                params["stderr"],
                params["tty"],
                self.pod_files,
            )
        if kind == "attach":
            return await streaming.serve_attach(
                request,
                pod,
                params["container"],
                params["stdin"],
                params["stdout"],
                params["stderr"],
                params["tty"],
            )
        return await streaming.serve_portforward(request, pod, params["ports"])

    # -- wiring -----------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self.middleware], client_max_size=8 * 1024 * 1024)

        async def not_reached(_request: web.Request) -> web.StreamResponse:
            raise route_not_found()

        app.router.add_route("*", "/{tail:.*}", not_reached)

        async def on_shutdown(_app: web.Application) -> None:
            self.begin_shutdown()

        async def on_cleanup(_app: web.Application) -> None:
            await self.authn.close()
            self.audit.close()
            self.pod_files.close()

        app.on_shutdown.append(on_shutdown)
        app.on_cleanup.append(on_cleanup)
        return app

    def begin_shutdown(self) -> None:
        self.api.stopping = True
        self.api.store.close_watchers()

    def ssl_context(self, cert: Path, key: Path, http2: bool = False) -> ssl.SSLContext:
        return server_context(cert, key, http2=http2, client_ca_file=self.config.client_ca_file)
