"""The gateway's aiohttp application: routes, error middleware, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from config.logging import request_id as request_id_var
from config.schema import AuditSettings, GatewaySettings
from gateway.api import (
    agent_import,
    auditing,
    bindings,
    clusters,
    kubeconfigs,
    login,
    login_common,
    oauth_login,
    projects,
    roletemplates,
    tokens,
    users,
)
from gateway.api.common import LIMITER
from gateway.clusters import tunnels
from gateway.clusters.replicas import REPLICAS, ReplicaSet
from gateway.clusters.tunnels import REGISTRATION_GUARD, STREAM_QUOTA, TUNNELS
from gateway.controllers import access_sync, ace_sync, cluster_controller
from gateway.errors import GatewayError, api_response, k8s_response
from gateway.identity.directory import DIRECTORY, Directory
from gateway.identity.providers.registry import PROVIDERS, Providers
from gateway.keys import READY, RUNTIME, SETTINGS
from gateway.operations import background, health
from gateway.operations.sampler import SAMPLER, Sampler
from gateway.proxy.impersonation_review import IMPERSONATION_REVIEWS, ImpersonationReviews
from gateway.proxy.sessions import SESSIONS, Sessions
from gateway.runtime import Runtime
from gateway.store.base import StoreError, StoreUnavailable
from gateway.telemetry.audit import AUDIT, REQUEST_ID_HEADER, AuditLog, new_request_id
from gateway.telemetry.drain import DRAIN, Drain, stopping_step
from gateway.ui import handlers as ui
from tunnel.registry import TunnelRegistry

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Management requests get a request id too (in logs and ``X-Request-Id``)."""
    rid = new_request_id()
    context = request_id_var.set(rid)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers[REQUEST_ID_HEADER] = rid
        raise
    finally:
        request_id_var.reset(context)
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = rid
    if request.app[DRAIN].draining:
        response.force_close()
    return response


def _loggable(path: str) -> str:
    """The path as a log line may show it: ``/v3/import/<token>.yaml`` holds a credential."""
    if path.startswith(agent_import.IMPORT_PREFIX):
        return agent_import.IMPORT_PREFIX + "<redacted>"
    return path


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        if request.raw_path.startswith("/k8s/"):
            return k8s_response(exc)
        return api_response(exc)
    except web.HTTPException as exc:
        if exc.status >= 400 and not request.raw_path.startswith("/k8s/"):
            return api_response(GatewayError(exc.status, exc.reason))
        raise
    except StoreError as exc:
        # etcd down or without quorum: what needs a write (a login, a new token, any
        # change) is refused until it is back; reads answer from memory meanwhile.
        logger.warning("store failed for %s %s: %s", request.method, _loggable(request.path), exc)
        unavailable = isinstance(exc, StoreUnavailable)
        error = GatewayError(
            503,
            "the store is unavailable; try again later"
            if unavailable
            else "the store could not complete the request; try again",
        )
        error.headers["Retry-After"] = "5"
        if request.raw_path.startswith("/k8s/"):
            return k8s_response(error)
        return api_response(error)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        logger.exception("unhandled error for %s %s", request.method, _loggable(request.path))
        error = GatewayError(500, "internal error")
        if request.raw_path.startswith("/k8s/"):
            return k8s_response(error)
        return api_response(error)


async def cacerts_pem(request: web.Request) -> web.Response:
    pem = request.app[RUNTIME].ca_pem
    if not pem:
        raise GatewayError(404, "the gateway uses a publicly trusted certificate")
    return web.Response(text=pem, content_type="application/x-pem-file")


async def cacerts_setting(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "id": "cacerts",
            "type": "setting",
            "name": "cacerts",
            "value": request.app[RUNTIME].ca_pem,
        }
    )


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": request.app[RUNTIME].version})


def _timed(
    context: Callable[[web.Application], AsyncIterator[None]],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context whose stop is logged with how long it took."""

    async def timed(app: web.Application) -> AsyncIterator[None]:
        running = context(app)
        await anext(running)
        yield
        with stopping_step(context.__name__), contextlib.suppress(StopAsyncIteration):
            await anext(running)

    return timed


def build_app(
    settings: GatewaySettings,
    directory: Directory,
    runtime: Runtime,
    providers: Providers | None = None,
    auditor: AuditLog | None = None,
) -> web.Application:
    """The application; ``auditor`` defaults to none (tests), the server passes its own."""
    app = web.Application(
        middlewares=[request_id_middleware, auditing.audit_middleware, error_middleware],
        client_max_size=1024**2,
    )
    app[SETTINGS] = settings
    app[DIRECTORY] = directory
    app[RUNTIME] = runtime
    app[TUNNELS] = TunnelRegistry()
    app[STREAM_QUOTA] = tunnels.StreamQuota(settings.tunnel.max_streams_per_user)
    app[REPLICAS] = ReplicaSet(directory, app[TUNNELS], url=runtime.advertise_url)
    app[REGISTRATION_GUARD] = tunnels.RegistrationGuard(directory, app[TUNNELS])
    app[tunnels.ACCEPT_PACER] = tunnels.AcceptPacer(lambda: len(directory.clusters))
    app[PROVIDERS] = providers or Providers()
    app[AUDIT] = auditor or AuditLog(AuditSettings(path="off"), "")
    app[DRAIN] = Drain()
    app[SESSIONS] = Sessions(directory)
    app[IMPERSONATION_REVIEWS] = ImpersonationReviews()
    app[SAMPLER] = Sampler(app[TUNNELS], app[PROVIDERS])
    app[READY] = [False]
    app[LIMITER] = login_common.make_limiter(directory.store, settings.auth)
    app[oauth_login.BROWSER_LOGINS] = oauth_login.BrowserLogins(directory.store)
    app[oauth_login.AFTER_BROWSER_LOGIN] = {}

    r = app.router
    r.add_get("/healthz", health.healthz)
    r.add_get("/readyz", health.readyz)
    r.add_get("/metrics", health.metrics_for_admins)
    r.add_get("/cacerts", cacerts_pem)
    r.add_get("/v3/settings/cacerts", cacerts_setting)
    r.add_get("/herdgate/version", version)
    r.add_post("/v3-public/{type}/{name}", login.dispatch)
    r.add_get("/v1/auth/{provider}/login", oauth_login.browser_start)
    r.add_get("/v1/auth/{provider}/callback", oauth_login.browser_callback)

    r.add_get("/v3/users", users.list_users)
    r.add_post("/v3/users", users.create_user)
    r.add_get("/v3/users/{id}", users.get_user)
    r.add_put("/v3/users/{id}", users.update_user)
    r.add_post("/v3/users/{id}", users.user_action)
    r.add_delete("/v3/users/{id}", users.delete_user)

    r.add_get("/v3/tokens", tokens.list_tokens)
    r.add_post("/v3/tokens", tokens.create_token)
    r.add_delete("/v3/tokens", tokens.delete_tokens)
    r.add_get("/v3/tokens/{id}", tokens.get_token)
    r.add_delete("/v3/tokens/{id}", tokens.delete_token)

    r.add_get("/v3/clusters", clusters.list_clusters)
    r.add_post("/v3/clusters", clusters.create_cluster)
    r.add_get("/v3/clusters/{id}", clusters.get_cluster)
    r.add_post("/v3/clusters/{id}", clusters.cluster_action)
    r.add_put("/v3/clusters/{id}", clusters.update_cluster)
    r.add_get("/v3/clusters/{id}/authendpoint/{file}", clusters.ace_manifest)
    r.add_delete("/v3/clusters/{id}", clusters.delete_cluster)

    r.add_post("/v3/kubeconfigs", kubeconfigs.create_kubeconfig)

    r.add_get("/v3/clusterregistrationtokens", clusters.list_registrations)
    r.add_post("/v3/clusterregistrationtokens", clusters.create_registration)
    r.add_get("/v3/clusterregistrationtokens/{id}", clusters.get_registration)
    r.add_post("/v3/clusterregistrationtokens/{id}", clusters.registration_action)
    r.add_delete("/v3/clusterregistrationtokens/{id}", clusters.delete_registration)
    r.add_get(agent_import.IMPORT_PREFIX + "{file}", agent_import.import_manifest)

    r.add_get("/v3/clusterroletemplatebindings", bindings.list_bindings)
    r.add_post("/v3/clusterroletemplatebindings", bindings.create_binding)
    r.add_get("/v3/clusterroletemplatebindings/{id}", bindings.get_binding)
    r.add_delete("/v3/clusterroletemplatebindings/{id}", bindings.delete_binding)

    r.add_get("/v3/roletemplates", roletemplates.list_templates)
    r.add_post("/v3/roletemplates", roletemplates.create_template)
    r.add_get("/v3/roletemplates/{id}", roletemplates.get_template)
    r.add_put("/v3/roletemplates/{id}", roletemplates.update_template)
    r.add_delete("/v3/roletemplates/{id}", roletemplates.delete_template)

    r.add_get("/v3/projects", projects.list_projects)
    r.add_post("/v3/projects", projects.create_project)
    r.add_get("/v3/projects/{id}", projects.get_project)
    r.add_put("/v3/projects/{id}", projects.update_project)
    r.add_delete("/v3/projects/{id}", projects.delete_project)

    r.add_get("/v3/projectroletemplatebindings", projects.list_project_bindings)
    r.add_post("/v3/projectroletemplatebindings", projects.create_project_binding)
    r.add_get("/v3/projectroletemplatebindings/{id}", projects.get_project_binding)
    r.add_delete("/v3/projectroletemplatebindings/{id}", projects.delete_project_binding)

    ui.install(app)  # the web page: /ui/ (and / leads there)

    app.cleanup_ctx.append(_timed(background.background_tasks))
    app.cleanup_ctx.append(_timed(cluster_controller.cluster_context))
    # These two follow the cluster controllers' leases.
    app.cleanup_ctx.append(_timed(ace_sync.ace_context))
    app.cleanup_ctx.append(_timed(access_sync.access_context))
    app.on_shutdown.append(tunnels.close_all)
    app.on_cleanup.append(tunnels.stop_guard)
    return app
