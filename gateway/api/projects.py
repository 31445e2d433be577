"""``/v3/projects`` and ``/v3/projectroletemplatebindings``, as in Rancher.

A project is a named group of namespaces in one cluster (id ``<cluster id>:p-xxxxx``);
a namespace joins it with the annotation ``field.cattle.io/projectId: <project id>``,
set in the cluster itself. Cluster owners (and administrators) manage projects; they
and the project's owners manage its bindings. A project binding gives its user or group
RoleBindings in every namespace of the project (the access sync) and reaches the
cluster at the gateway (``Directory.role_on``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from config.identity import Identity
from gateway.api.bindings import canonical_principal
from gateway.api.clusters import require_owner, visible_cluster
from gateway.api.common import authenticated, collection, directory, json_body, string_field
from gateway.errors import Forbidden, GatewayError, NotFound
from gateway.identity.directory import Directory, group_key
from gateway.store.records import (
    PROJECT,
    PROJECT_BINDING,
    PROJECT_CONTEXT,
    Project,
    ProjectBinding,
    iso,
)
from tunnel.cluster_state import PROJECT_ANNOTATION


def project_view(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "type": "project",
        "name": project.name,
        "clusterId": project.cluster_id,
        "description": project.description,
        "namespaceId": None,
        "annotation": {PROJECT_ANNOTATION: project.id},
        "created": iso(project.created),
    }


def project_binding_view(binding: ProjectBinding) -> dict[str, Any]:
    return {
        "id": binding.id,
        "type": "projectRoleTemplateBinding",
        "projectId": binding.project_id,
        "userId": binding.user_id or None,
        "userPrincipalId": f"local://{binding.user_id}" if binding.user_id else None,
        "groupPrincipalId": binding.group_principal_id or None,
        "roleTemplateId": binding.role,
        "created": iso(binding.created),
    }


def _project(request: web.Request, identity: Identity, project_id: str) -> Project:
    d = directory(request)
    project = d.projects.get(project_id)
    if project is None or d.role_on(identity, project.cluster_id) is None:
        raise NotFound(f"project {project_id} not found")
    return project


def owns_project(d: Directory, identity: Identity, project: Project) -> bool:
    """A cluster owner, or a ``project-owner`` of this project (directly or by group)."""
    if d.role_on(identity, project.cluster_id) == "cluster-owner":
        return True
    groups = {group_key(g) for g in identity.groups}
    for b in d.project_bindings_by_cluster.get(project.cluster_id, {}).values():
        if b.project_id != project.id or b.role != "project-owner":
            continue
        if b.user_id == identity.user_id or (
            b.group_principal_id and group_key(b.group_principal_id) in groups
        ):
            return True
    return False


# -- projects ------------------------------------------------------------------------------


async def create_project(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    data = await json_body(request)
    cluster = require_owner(request, identity, string_field(data, "clusterId", required=True))
    name = string_field(data, "name", required=True)
    description = string_field(data, "description", max_len=1024)
    d = directory(request)
    if any(p.cluster_id == cluster.id and p.name == name for p in d.projects.values()):
        raise GatewayError(409, f"project {name!r} already exists in this cluster", "AlreadyExists")
    now = d.clock()
    project = await d.create_unique(
        PROJECT,
        f"{cluster.id}:p",
        lambda project_id: Project(project_id, cluster.id, name, now, description),
    )
    return web.json_response(project_view(project), status=201)


async def list_projects(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    d = directory(request)
    wanted = request.query.get("clusterId")
    items = [
        project_view(p)
        for p in sorted(d.projects.values(), key=lambda p: (p.cluster_id, p.created, p.id))
        if (wanted is None or p.cluster_id == wanted) and d.role_on(identity, p.cluster_id)
    ]
    return collection(items, "project")


async def get_project(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    return web.json_response(project_view(_project(request, identity, request.match_info["id"])))


async def update_project(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    project = _project(request, identity, request.match_info["id"])
    require_owner(request, identity, project.cluster_id)
    data = await json_body(request)
    if data.get("clusterId") not in (None, "", project.cluster_id):
        raise GatewayError(422, "clusterId cannot be changed", "InvalidOption")
    updated = dataclasses.replace(
        project,
        name=string_field(data, "name") or project.name,
        description=string_field(data, "description", max_len=1024)
        if "description" in data
        else project.description,
    )
    if not await directory(request).replace(PROJECT, project, updated):
        raise GatewayError(
            409, "the project was changed meanwhile; read it again and retry", "Conflict"
        )
    return web.json_response(project_view(updated))


async def delete_project(request: web.Request) -> web.Response:
    """The project and its bindings (its namespaces stay, in no project)."""
    identity, _ = authenticated(request)
    project = _project(request, identity, request.match_info["id"])
    require_owner(request, identity, project.cluster_id)
    d = directory(request)
    for binding in [b for b in d.project_bindings.values() if b.project_id == project.id]:
        await d.delete(PROJECT_BINDING, binding.id)
    await d.delete(PROJECT, project.id)
    return web.json_response(project_view(project))


# -- project role template bindings --------------------------------------------------------


async def create_project_binding(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    data = await json_body(request)
    d = directory(request)
    project = _project(request, identity, string_field(data, "projectId", required=True))
    if not owns_project(d, identity, project):
        raise Forbidden(f"only owners of project {project.name} may do this")
    role = string_field(data, "roleTemplateId", required=True)
    template = d.role_templates.get(role)
    if template is None or not template.bindable_in(PROJECT_CONTEXT):
        names = sorted(t.id for t in d.role_templates.values() if t.bindable_in(PROJECT_CONTEXT))
        raise GatewayError(
            422,
            f"roleTemplateId must be a project role template: {', '.join(names)}",
            "InvalidOption",
        )
    if template.locked:
        raise GatewayError(422, f"role template {role} is locked", "InvalidOption")
    user_id = string_field(data, "userId")
    principal = string_field(data, "userPrincipalId", max_len=1024)
    group = string_field(data, "groupPrincipalId", max_len=1024)
    if principal and not user_id:
        user_id = principal.removeprefix("local://")
    if bool(user_id) == bool(group):
        raise GatewayError(
            422, "exactly one of userId or groupPrincipalId is required", "MissingRequired"
        )
    if group:
        group = canonical_principal(group)
    if user_id and user_id not in d.users:
        raise GatewayError(422, f"user {user_id} does not exist", "InvalidReference")
    for existing in d.project_bindings.values():
        if (existing.project_id, existing.user_id, existing.group_principal_id, existing.role) == (
            project.id,
            user_id,
            group,
            role,
        ):
            raise GatewayError(409, "this binding already exists", "AlreadyExists")
    now = d.clock()
    binding = await d.create_unique(
        PROJECT_BINDING,
        f"{project.id.rpartition(':')[2]}:prtb",
        lambda binding_id: ProjectBinding(
            binding_id, project.id, project.cluster_id, role, now, user_id, group
        ),
    )
    return web.json_response(project_binding_view(binding), status=201)


async def list_project_bindings(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    d = directory(request)
    wanted = request.query.get("projectId")
    items = []
    for b in sorted(d.project_bindings.values(), key=lambda b: (b.created, b.id)):
        if wanted is not None and b.project_id != wanted:
            continue
        project = d.projects.get(b.project_id)
        if b.user_id == identity.user_id or (
            project is not None and owns_project(d, identity, project)
        ):
            items.append(project_binding_view(b))
    return collection(items, "projectRoleTemplateBinding")


def _binding(request: web.Request, identity: Identity) -> tuple[ProjectBinding, Project | None]:
    d = directory(request)
    binding = d.project_bindings.get(request.match_info["id"])
    if binding is None or (
        binding.user_id != identity.user_id and d.role_on(identity, binding.cluster_id) is None
    ):
        raise NotFound(f"binding {request.match_info['id']} not found")
    return binding, d.projects.get(binding.project_id)


async def get_project_binding(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    binding, project = _binding(request, identity)
    if binding.user_id != identity.user_id and (
        project is None or not owns_project(directory(request), identity, project)
    ):
        visible_cluster(request, identity, binding.cluster_id)
        raise Forbidden("only the project's owners may see its bindings")
    return web.json_response(project_binding_view(binding))


async def delete_project_binding(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    binding, project = _binding(request, identity)
    d = directory(request)
    allowed = (
        owns_project(d, identity, project)
        if project is not None
        else d.role_on(identity, binding.cluster_id) == "cluster-owner"
    )
    if not allowed:
        raise Forbidden("only the project's owners may do this")
    await d.delete(PROJECT_BINDING, binding.id)
    return web.json_response(project_binding_view(binding))
