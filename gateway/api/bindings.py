"""``/v3/clusterroletemplatebindings``: who may use which cluster, in which role (any
cluster-context role template, ``/v3/roletemplates``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.clusters import require_owner
from gateway.api.common import authenticated, collection, directory, json_body, string_field
from gateway.errors import GatewayError, NotFound
from gateway.store.records import BINDING, CLUSTER_CONTEXT, Binding, iso


def canonical_principal(principal: str) -> str:
    """Directory group principals in the providers' canonical DN form."""
    for provider in ("openldap", "activedirectory"):
        prefix = f"{provider}_group://"
        if principal.startswith(prefix):
            from gateway.identity.providers.ldap_model import principal_id

            try:
                return principal_id(provider, "group", principal[len(prefix) :])
            except ValueError:
                raise GatewayError(
                    422, f"{principal!r} is not a valid DN principal", reason="InvalidFormat"
                ) from None
    return principal


def binding_view(binding: Binding) -> dict[str, Any]:
    return {
        "id": binding.id,
        "type": "clusterRoleTemplateBinding",
        "clusterId": binding.cluster_id,
        "userId": binding.user_id or None,
        "userPrincipalId": f"local://{binding.user_id}" if binding.user_id else None,
        "groupPrincipalId": binding.group_principal_id or None,
        "roleTemplateId": binding.role,
        "created": iso(binding.created),
    }


async def create_binding(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    data = await json_body(request)
    cluster_id = string_field(data, "clusterId", required=True)
    cluster = require_owner(request, identity, cluster_id)
    role = string_field(data, "roleTemplateId", required=True)
    d = directory(request)
    template = d.role_templates.get(role)
    if template is None or not template.bindable_in(CLUSTER_CONTEXT):
        names = sorted(t.id for t in d.role_templates.values() if t.bindable_in(CLUSTER_CONTEXT))
        raise GatewayError(
            422, f"roleTemplateId must be one of {', '.join(names)}", reason="InvalidOption"
        )
    if template.locked:
        raise GatewayError(422, f"role template {role} is locked", reason="InvalidOption")
    user_id = string_field(data, "userId")
    principal = string_field(data, "userPrincipalId", max_len=1024)
    group = string_field(data, "groupPrincipalId", max_len=1024)
    if principal and not user_id:
        user_id = principal.removeprefix("local://")
    if bool(user_id) == bool(group):
        raise GatewayError(
            422, "exactly one of userId or groupPrincipalId is required", reason="MissingRequired"
        )
    if group:
        group = canonical_principal(group)
    if user_id and user_id not in d.users:
        raise GatewayError(422, f"user {user_id} does not exist", reason="InvalidReference")
    for existing in d.bindings_by_cluster.get(cluster.id, {}).values():
        if (existing.user_id, existing.group_principal_id, existing.role) == (user_id, group, role):
            raise GatewayError(409, "this binding already exists", reason="AlreadyExists")
    now = d.clock()
    binding = await d.create_unique(
        BINDING,
        f"{cluster.id}:crtb",
        lambda binding_id: Binding(binding_id, cluster.id, role, now, user_id, group),
    )
    return web.json_response(binding_view(binding), status=201)


async def list_bindings(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    d = directory(request)
    wanted = request.query.get("clusterId")
    items = [
        binding_view(b)
        for b in d.bindings.values()
        if (wanted is None or b.cluster_id == wanted)
        and (b.user_id == identity.user_id or d.role_on(identity, b.cluster_id) == "cluster-owner")
    ]
    return collection(items, "clusterRoleTemplateBinding")


def _binding(request: web.Request) -> Binding:
    binding = directory(request).bindings.get(request.match_info["id"])
    if binding is None:
        raise NotFound(f"binding {request.match_info['id']} not found")
    return binding


async def get_binding(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    binding = _binding(request)
    if binding.user_id != identity.user_id:
        require_owner(request, identity, binding.cluster_id)
    return web.json_response(binding_view(binding))


async def delete_binding(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    binding = _binding(request)
    require_owner(request, identity, binding.cluster_id)
    await directory(request).delete(BINDING, binding.id)
    return web.json_response(binding_view(binding))
