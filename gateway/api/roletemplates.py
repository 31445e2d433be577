"""``/v3/roletemplates``: what a binding grants, as Rancher's role templates.

The built-ins (``gateway.store.records.BUILTIN_TEMPLATES``) are always there and cannot
be changed or deleted. Administrators add templates with their own ``rules`` (RBAC
PolicyRules, checked as kube-apiserver checks a ClusterRole's) and ``roleTemplateNames``
(inherited templates); the access sync makes each a ``herdgate-rt-<id>`` ClusterRole in
every cluster. Anyone signed in may read them (as in Rancher).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from gateway.api.common import (
    authenticated,
    bool_field,
    collection,
    directory,
    json_body,
    require_admin,
    string_field,
)
from gateway.errors import Forbidden, GatewayError, NotFound
from gateway.identity.directory import Directory
from gateway.store.records import (
    CLUSTER_CONTEXT,
    PROJECT_CONTEXT,
    ROLE_TEMPLATE,
    PolicyRule,
    RoleTemplate,
    iso,
)

MAX_RULES = 100
MAX_ITEMS = 100
MAX_INHERITED = 20
CONTEXTS = (CLUSTER_CONTEXT, PROJECT_CONTEXT)
_FLAGS = (
    ("locked", "locked"),
    ("external", "external"),
    ("administrative", "administrative"),
    ("clusterCreatorDefault", "cluster_creator_default"),
    ("projectCreatorDefault", "project_creator_default"),
)


def rule_view(rule: PolicyRule) -> dict[str, Any]:
    return {
        "apiGroups": list(rule.api_groups),
        "resources": list(rule.resources),
        "resourceNames": list(rule.resource_names),
        "nonResourceURLs": list(rule.non_resource_urls),
        "verbs": list(rule.verbs),
    }


def template_view(template: RoleTemplate) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": template.id,
        "type": "roleTemplate",
        "name": template.name,
        "description": template.description,
        "context": template.context,
        "rules": [rule_view(r) for r in template.rules],
        "roleTemplateNames": list(template.role_template_names),
        "builtin": template.builtin,
        "hidden": False,
        "created": iso(template.created) if template.created else None,
    }
    for name, attribute in _FLAGS:
        view[name] = getattr(template, attribute)
    if template.builtin:
        view["clusterRoles"] = list(template.cluster_roles)
    return view


def _strings(rule: dict[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = rule.get(name)
    if value is None:
        return ()
    if (
        not isinstance(value, list)
        or len(value) > MAX_ITEMS
        or not all(isinstance(v, str) and len(v) <= 256 and v.isprintable() for v in value)
    ):
        raise GatewayError(
            422, f"{where}.{name} must be a list of at most {MAX_ITEMS} strings", "InvalidFormat"
        )
    return tuple(value)


def parse_rules(value: Any) -> tuple[PolicyRule, ...]:
    """PolicyRules as the API server validates a ClusterRole's (``validateRule``)."""
    if not isinstance(value, list) or len(value) > MAX_RULES:
        raise GatewayError(422, f"rules must be a list of at most {MAX_RULES}", "InvalidFormat")
    rules: list[PolicyRule] = []
    for index, raw in enumerate(value):
        where = f"rules[{index}]"
        if not isinstance(raw, dict):
            raise GatewayError(422, f"{where} must be an object", "InvalidFormat")
        unknown = set(raw) - {"apiGroups", "resources", "resourceNames", "nonResourceURLs", "verbs"}
        if unknown:
            raise GatewayError(
                422, f"{where} has unknown fields {sorted(unknown)}", "InvalidFormat"
            )
        rule = PolicyRule(
            verbs=_strings(raw, "verbs", where),
            api_groups=_strings(raw, "apiGroups", where),
            resources=_strings(raw, "resources", where),
            resource_names=_strings(raw, "resourceNames", where),
            non_resource_urls=_strings(raw, "nonResourceURLs", where),
        )
        if not rule.verbs:
            raise GatewayError(
                422,
                f"{where}.verbs: Required value: verbs must contain at least one value",
                "MissingRequired",
            )
        if rule.non_resource_urls:
            if rule.api_groups or rule.resources or rule.resource_names:
                raise GatewayError(
                    422,
                    f"{where}.nonResourceURLs: Invalid value: rules cannot apply to both "
                    "regular resources and non-resource URLs",
                    "InvalidFormat",
                )
        elif not rule.resources:
            raise GatewayError(
                422,
                f"{where}.resources: Required value: "
                "resource rules must supply at least one resource",
                "MissingRequired",
            )
        elif not rule.api_groups:
            raise GatewayError(
                422,
                f"{where}.apiGroups: Required value: "
                "resource rules must supply at least one api group",
                "MissingRequired",
            )
        rules.append(rule)
    return tuple(rules)


def _inherited(d: Directory, data: dict[str, Any], template_id: str) -> tuple[str, ...]:
    value = data.get("roleTemplateNames")
    if value is None:
        return ()
    if (
        not isinstance(value, list)
        or len(value) > MAX_INHERITED
        or not all(isinstance(v, str) for v in value)
    ):
        raise GatewayError(
            422, f"roleTemplateNames must be a list of at most {MAX_INHERITED} ids", "InvalidFormat"
        )
    for name in value:
        if name not in d.role_templates:
            raise GatewayError(422, f"role template {name!r} does not exist", "InvalidReference")
    # No cycle through the template itself (inheritance must end).
    pending = list(value)
    seen: set[str] = set()
    for _ in range(len(d.role_templates) + 1):
        if not pending:
            break
        current = pending.pop()
        if current == template_id:
            raise GatewayError(
                422, "roleTemplateNames may not inherit the template itself", "InvalidReference"
            )
        if current in seen:
            continue
        seen.add(current)
        pending.extend(
            d.role_templates[current].role_template_names if current in d.role_templates else ()
        )
    return tuple(dict.fromkeys(value))


def _flags(data: dict[str, Any], template: RoleTemplate | None) -> dict[str, Any]:
    return {
        attribute: bool_field(
            data, name, getattr(template, attribute) if template is not None else False
        )
        for name, attribute in _FLAGS
    }


async def create_template(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    require_admin(identity)
    data = await json_body(request)
    d = directory(request)
    name = string_field(data, "name", required=True)
    context = string_field(data, "context", required=True)
    if context not in CONTEXTS:
        raise GatewayError(422, "context must be cluster or project", "InvalidOption")
    rules = parse_rules(data.get("rules", []))
    description = string_field(data, "description", max_len=1024)
    inherited = _inherited(d, data, "")
    flags = _flags(data, None)
    now = d.clock()
    template = await d.create_unique(
        ROLE_TEMPLATE,
        "rt",
        lambda template_id: RoleTemplate(
            id=template_id,
            name=name,
            context=context,
            created=now,
            description=description,
            rules=rules,
            role_template_names=inherited,
            **flags,
        ),
    )
    return web.json_response(template_view(template), status=201)


async def list_templates(request: web.Request) -> web.Response:
    authenticated(request)
    d = directory(request)
    wanted = request.query.get("context")
    items = [
        template_view(t)
        for t in sorted(d.role_templates.values(), key=lambda t: (not t.builtin, t.id))
        if wanted is None or t.bindable_in(wanted)
    ]
    return collection(items, "roleTemplate")


def _template(request: web.Request) -> RoleTemplate:
    template = directory(request).role_templates.get(request.match_info["id"])
    if template is None:
        raise NotFound(f"role template {request.match_info['id']} not found")
    return template


async def get_template(request: web.Request) -> web.Response:
    authenticated(request)
    return web.json_response(template_view(_template(request)))


async def update_template(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    require_admin(identity)
    template = _template(request)
    if template.builtin:
        raise Forbidden(f"the built-in role template {template.id} cannot be changed")
    data = await json_body(request)
    d = directory(request)
    context = string_field(data, "context") or template.context
    if context != template.context:
        raise GatewayError(422, "context cannot be changed", "InvalidOption")
    changes: dict[str, Any] = {
        "name": string_field(data, "name") or template.name,
        "description": string_field(data, "description", max_len=1024)
        if "description" in data
        else template.description,
        "rules": parse_rules(data["rules"]) if "rules" in data else template.rules,
        "role_template_names": _inherited(d, data, template.id)
        if "roleTemplateNames" in data
        else template.role_template_names,
        **_flags(data, template),
    }
    updated = dataclasses.replace(template, **changes)
    if not await d.replace(ROLE_TEMPLATE, template, updated):
        raise GatewayError(
            409, "the role template was changed meanwhile; read it again and retry", "Conflict"
        )
    return web.json_response(template_view(updated))


async def delete_template(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    require_admin(identity)
    template = _template(request)
    if template.builtin:
        raise Forbidden(f"the built-in role template {template.id} cannot be deleted")
    d = directory(request)
    used = sum(1 for b in d.bindings.values() if b.role == template.id) + sum(
        1 for b in d.project_bindings.values() if b.role == template.id
    )
    if used:
        raise GatewayError(
            409,
            f"role template {template.id} is used by {used} bindings; delete them first",
            "Conflict",
        )
    heirs = [t.id for t in d.role_templates.values() if template.id in t.role_template_names]
    if heirs:
        raise GatewayError(
            409,
            f"role template {template.id} is inherited by {', '.join(sorted(heirs))}",
            "Conflict",
        )
    await d.delete(ROLE_TEMPLATE, template.id)
    return web.json_response(template_view(template))
