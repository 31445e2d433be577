"""The resource endpoints: GET/LIST/WATCH/POST/PUT/PATCH/DELETE on /api/v1/... and
/apis/<group>/<version>/..., with the real server's errors."""

from __future__ import annotations

import base64
import binascii
import copy
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web

from . import (
    builtins,
    crds,
    logs,
    negotiation,
    patch,
    rbac,
    rbac_policy,
    reviews,
    selectors,
    subresources,
    tables,
)
from .context import Context
from .negotiation import Target
from .requestinfo import parse_bool
from .resources import Registry, ResourceType
from .status import (
    MODIFIED,
    ApiError,
    already_exists,
    bad_request,
    conflict,
    method_not_supported,
    not_found,
    route_not_found,
    status_response,
    success_status,
    unsupported_media_type,
)
from .storage import Event, Store
from .watch import WatchSpec, serve_watch

CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_KEY = ("", "namespaces")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_REVIEW_RESOURCES = (
    "selfsubjectreviews",
    "tokenreviews",
    "selfsubjectaccessreviews",
    "subjectaccessreviews",
    "localsubjectaccessreviews",
    "selfsubjectrulesreviews",
)
_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/apply-patch+yaml",
)

StreamingHandler = Callable[..., Awaitable[web.StreamResponse]]


def _json_response(obj: Any, target: Target, code: int = 200) -> web.Response:
    body, ctype = negotiation.encode(obj, target)
    return web.Response(
        status=code,
        body=body,
        headers={"Content-Type": ctype, "Cache-Control": "no-cache, private"},
    )


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
        obj["metadata"] = meta
    return meta


def _continue_token(rv: int, last: tuple[str, str]) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": f"{last[0]}/{last[1]}\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _parse_continue(token: str) -> tuple[str, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded))
        ns, name = data["start"].rstrip("\x00").split("/", 1)
        return ns, name
    except (ValueError, KeyError, binascii.Error) as exc:
        raise bad_request(f"continue key is not valid: {exc}") from exc


class Api:
    """All state of the stand-in (types, objects) and the resource handlers."""

    def __init__(
        self,
        history: int = 10000,
        k8s_version: str = "v1.32.0",
        *,
        authorization_mode: str = "RBAC",
        objects: list[dict[str, Any]] | None = None,
    ) -> None:
        self.registry = Registry()
        self.store = Store(history)
        self.k8s_version = k8s_version
        self.sa_tokens = reviews.ServiceAccountTokens()
        self.stopping = False  # set on shutdown: streaming responses end
        self.policy = rbac.Policy()
        self.authorizer = rbac.Authorizer(self.policy, authorization_mode)
        self._aggregating = False
        self.store.listeners.append(self._on_event)
        self._seed()
        self.preload(objects or [])

    # -- setup and CRD registration ----------------------------------------------------------

    def _seed(self) -> None:
        ns_type = self.registry.get("", "v1", "namespaces")
        assert ns_type is not None
        for name in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self._create_stored(
                ns_type, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
        node_type = self.registry.get("", "v1", "nodes")
        assert node_type is not None
        self._create_stored(node_type, builtins.default_node())
        svc_type = self.registry.get("", "v1", "services")
        assert svc_type is not None
        self._create_stored(svc_type, builtins.kubernetes_service())
        for doc in rbac_policy.bootstrap_objects():
            kind_type = self.registry.by_kind(rbac.RBAC_GROUP, doc["kind"])
            assert kind_type is not None
            self._create_stored(kind_type, doc)

    def preload(self, objects: list[dict[str, Any]]) -> None:
        """Objects present at start (`--bootstrap-objects`): created, or replacing a default
        object of the same name; a namespace they name is made when missing. Validated as a
        create would be, without authorization (like objects an administrator created)."""
        for doc in rbac.iter_docs(objects):
            api_version = str(doc.get("apiVersion", ""))
            group = api_version.split("/", 1)[0] if "/" in api_version else ""
            rt = self.registry.by_kind(group, str(doc.get("kind", "")))
            if rt is None:
                raise ValueError(
                    f"preloaded object of unknown kind {api_version} {doc.get('kind')}"
                )
            obj = copy.deepcopy(doc)
            meta = _meta(obj)
            namespace = str(meta.get("namespace", "") or "") if rt.namespaced else ""
            if rt.namespaced:
                namespace = namespace or "default"
                meta["namespace"] = namespace
                if not self.store.exists(NAMESPACE_KEY, "", namespace):
                    ns_type = self.registry.get("", "v1", "namespaces")
                    assert ns_type is not None
                    self._create_stored(
                        ns_type,
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                    )
            else:
                meta.pop("namespace", None)
            builtins.validate(rt, obj)
            if rt.group == rbac.RBAC_GROUP:
                rbac.default_subjects(obj)
                rbac.validate(rt.resource, obj)
            if rt.storage_key == CRD_KEY:
                crds.validate_crd(obj)
                crds.crd_defaults(obj)
            old = self.store.get(rt.storage_key, namespace, str(meta.get("name", "")))
            if old is not None:
                self.store.update(
                    rt.storage_key, self._prepare_update(rt, obj, old, "", meta["name"])
                )
                continue
            self._fill_new_meta(rt, obj)
            builtins.apply_defaults(rt, obj, creating=True)
            builtins.finish(rt, obj)
            self.store.create(rt.storage_key, obj)

    def _create_stored(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        self._fill_new_meta(rt, obj)
        builtins.apply_defaults(rt, obj, creating=True)
        return self.store.create(rt.storage_key, obj)

    def _on_rbac_event(self, event: Event) -> None:
        resource = event.key[1]
        meta = _meta(event.obj)
        if event.type == "DELETED":
            self.policy.remove(resource, meta.get("namespace", "") or "", meta.get("name", ""))
        else:
            self.policy.put(resource, event.obj)
        if resource == "clusterroles" and not self._aggregating:
            self._aggregate()

    def _aggregate(self) -> None:
        """The ClusterRole aggregation controller, run to a fixed point (bounded)."""
        key = (rbac.RBAC_GROUP, "clusterroles")
        self._aggregating = True
        try:
            for _ in range(len(self.store.list_objects(key)) + 1):
                roles = self.store.list_objects(key)
                changed = False
                for role in roles:
                    if not role.get("aggregationRule"):
                        continue
                    rules = rbac.aggregated_rules(role, roles)
                    if (role.get("rules") or []) != rules:
                        role["rules"] = rules
                        self.store.update(key, role)
                        changed = True
                if not changed:
                    return
        finally:
            self._aggregating = False

    def _on_event(self, event: Event) -> None:
        if event.key[0] == rbac.RBAC_GROUP:
            self._on_rbac_event(event)
            return
        if event.key == NAMESPACE_KEY and event.type == "ADDED":
            sa_type = self.registry.get("", "v1", "serviceaccounts")
            name = _meta(event.obj).get("name", "")
            if sa_type and not self.store.exists(sa_type.storage_key, name, "default"):
                self._create_stored(
                    sa_type,
                    {
                        "apiVersion": "v1",
                        "kind": "ServiceAccount",
                        "metadata": {"name": "default", "namespace": name},
                    },
                )
        if event.key == NAMESPACE_KEY and event.type == "DELETED":
            name = _meta(event.obj).get("name", "")
            for key in self.store.namespaces_in_use():
                if key != NAMESPACE_KEY:
                    self.store.drop_all(key, name)
        if event.key != CRD_KEY:
            return
        crd_name = _meta(event.obj).get("name", "")
        self.registry.remove_crd(crd_name)
        if event.type == "DELETED":
            spec = event.obj.get("spec") or {}
            plural = (spec.get("names") or {}).get("plural", "")
            self.store.drop_all((spec.get("group", ""), plural))
            return
        types = crds.served_types(event.obj)
        for rt in types:
            self.registry.add(rt)
        if types:
            versions = sorted((rt.version for rt in types), key=crds.version_priority)
            self.registry.set_group_versions(types[0].group, versions)

    # -- helpers ----------------------------------------------------------------------------

    def present(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """The stored object as served at the requested version."""
        out = {"kind": rt.kind, "apiVersion": rt.api_version}
        out.update({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
        return out

    def _fill_new_meta(self, rt: ResourceType, obj: dict[str, Any]) -> None:
        meta = _meta(obj)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = builtins.now_rfc3339()
        for key in (
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ):
            meta.pop(key, None)
        if rt.crd or rt.storage_key == CRD_KEY or rt.group == "apps":
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        obj["apiVersion"] = rt.api_version if not rt.crd else f"{rt.group}/{rt.storage_version}"
        obj["kind"] = rt.kind

    # -- helpers for subresources.py ---------------------------------------------------------

    def lookup(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        return self._lookup(rt, namespace, name)

    def respond_object(
        self, ctx: Context, rt: ResourceType, obj: dict[str, Any], code: int = 200
    ) -> web.Response:
        return self._respond_object(ctx, rt, obj, code)

    def update_object(
        self,
        rt: ResourceType,
        new: dict[str, Any],
        old: dict[str, Any],
        *,
        keep_status: bool = True,
    ) -> dict[str, Any]:
        """Store `new` as the next version of `old` (no resourceVersion precondition)."""
        if keep_status:
            name = _meta(old).get("name", "")
            new = self._prepare_update(rt, new, old, "", name, check_rv=False)
        return self.store.update(rt.storage_key, new)

    def delete_object(
        self, rt: ResourceType, obj: dict[str, Any], opts: dict[str, Any]
    ) -> dict[str, Any]:
        return self._delete_one(rt, obj, opts)[0]

    def _lookup(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        obj = self.store.get(rt.storage_key, namespace if rt.namespaced else "", name)
        if obj is None:
            raise not_found(rt.group, rt.resource, name)
        return obj

    def _require_namespace(self, namespace: str) -> None:
        if not self.store.exists(NAMESPACE_KEY, "", namespace):
            raise not_found("", "namespaces", namespace)

    def _decode(self, rt: ResourceType, raw: bytes, content_type: str | None) -> dict[str, Any]:
        body = negotiation.decode_body(raw, content_type, allow_protobuf=not rt.crd)
        kind = body.get("kind")
        api_version = body.get("apiVersion")
        if api_version:
            group = api_version.split("/", 1)[0] if "/" in api_version else ""
            if group != rt.group or (
                rt.crd and api_version.split("/")[-1] not in self.registry.versions(rt.group)
            ):
                raise bad_request(
                    f"the API version in the data ({api_version}) does not match the expected "
                    f"API version ({rt.api_version})"
                )
        if kind and kind != rt.kind:
            version = (api_version or rt.api_version).split("/")[-1]
            raise bad_request(
                f'{kind} in version "{version}" cannot be handled as a {rt.kind}: '
                f'no kind "{kind}" is registered for version "{rt.api_version}"'
            )
        if not isinstance(body.get("metadata", {}), dict):
            raise bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}'
            )
        return body

    def _target(self, ctx: Context, is_list: bool) -> Target:
        return negotiation.negotiate(ctx.request.headers.get("Accept"), is_list=is_list)

    def _respond_object(
        self, ctx: Context, rt: ResourceType, obj: dict[str, Any], code: int = 200
    ) -> web.Response:
        target = self._target(ctx, is_list=False)
        shown = self.present(rt, obj)
        if target.as_kind == "Table":
            table = tables.to_table(
                rt,
                [shown],
                {"resourceVersion": _meta(shown).get("resourceVersion", "")},
                api_version=target.api_version,
                include_object=ctx.request.query.get("includeObject") or "Metadata",
            )
            return _json_response(table, target, code)
        if target.as_kind == "PartialObjectMetadata":
            return _json_response(tables.partial_metadata(shown, target.api_version), target, code)
        return _json_response(shown, target, code)

    # -- dispatch ---------------------------------------------------------------------------

    async def handle(self, ctx: Context, streaming: StreamingHandler) -> web.StreamResponse:
        info = ctx.info
        rt = self.registry.get(info.group, info.version, info.resource)
        if rt is None:
            raise route_not_found()
        if (
            rt.namespaced
            and not info.namespace
            and (info.name or info.verb in ("create", "deletecollection"))
        ):
            raise route_not_found()
        if not rt.namespaced and info.namespace and rt.resource != "namespaces":
            raise route_not_found()
        if len(info.parts) > 3 and not (rt.resource == "pods" and info.subresource == "proxy"):
            raise route_not_found()
        namespace = info.namespace if rt.namespaced else ""
        if info.subresource:
            return await self._subresource(ctx, rt, namespace, streaming)
        verb = info.verb
        if verb not in rt.verbs and not (verb == "watch" and "list" in rt.verbs):
            action = {
                "get": "get",
                "list": "list",
                "watch": "watch",
                "create": "create",
                "update": "update",
                "patch": "patch",
                "delete": "delete",
                "deletecollection": "deletecollection",
            }.get(verb, verb)
            raise method_not_supported(rt.group, rt.resource, action)
        if verb == "get":
            return self._respond_object(ctx, rt, self._lookup(rt, namespace, info.name))
        if verb == "list":
            return self._list(ctx, rt, namespace)
        if verb == "watch":
            return await self._watch(ctx, rt, namespace)
        if verb == "create":
            return await self._create(ctx, rt, namespace)
        if verb == "update":
            return await self._update(ctx, rt, namespace, info.name, subresource="")
        if verb == "patch":
            return await self._patch(ctx, rt, namespace, info.name, subresource="")
        if verb == "delete":
            return await self._delete(ctx, rt, namespace, info.name)
        if verb == "deletecollection":
            return await self._delete_collection(ctx, rt, namespace)
        raise method_not_supported(rt.group, rt.resource, verb)

    # -- list / watch -----------------------------------------------------------------------

    def _predicate(self, ctx: Context, rt: ResourceType) -> Callable[[dict[str, Any]], bool]:
        q = ctx.request.query
        labels = selectors.parse_label_selector(q.get("labelSelector"))
        fields = selectors.parse_field_selector(
            q.get("fieldSelector"), rt.field_labels, custom=bool(rt.crd)
        )
        name = ctx.info.name

        def matches(obj: dict[str, Any]) -> bool:
            if name and _meta(obj).get("name") != name:
                return False
            return labels(obj) and fields(obj)

        return matches

    def _list(self, ctx: Context, rt: ResourceType, namespace: str) -> web.Response:
        q = ctx.request.query
        matches = self._predicate(ctx, rt)
        items = [o for o in self.store.list_objects(rt.storage_key, namespace) if matches(o)]
        rv = self.store.rv
        list_meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if q.get("continue"):
            start = _parse_continue(q["continue"])
            items = [
                o
                for o in items
                if (_meta(o).get("namespace", ""), _meta(o).get("name", "")) > start
            ]
        limit = q.get("limit", "")
        if limit.isdigit() and 0 < int(limit) < len(items):
            rest = len(items) - int(limit)
            items = items[: int(limit)]
            last = items[-1]
            list_meta["continue"] = _continue_token(
                rv, (_meta(last).get("namespace", ""), _meta(last).get("name", ""))
            )
            list_meta["remainingItemCount"] = rest
        shown = [self.present(rt, o) for o in items]
        target = self._target(ctx, is_list=True)
        if target.as_kind == "Table":
            return _json_response(
                tables.to_table(
                    rt,
                    shown,
                    list_meta,
                    api_version=target.api_version,
                    include_object=q.get("includeObject") or "Metadata",
                ),
                target,
            )
        if target.as_kind == "PartialObjectMetadataList":
            return _json_response(
                {
                    "kind": "PartialObjectMetadataList",
                    "apiVersion": target.api_version,
                    "metadata": list_meta,
                    "items": [tables.partial_metadata(o, target.api_version) for o in shown],
                },
                target,
            )
        if not rt.crd:
            for o in shown:
                o.pop("kind", None)
                o.pop("apiVersion", None)
        return _json_response(
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": list_meta,
                "items": shown,
            },
            target,
        )

    async def _watch(self, ctx: Context, rt: ResourceType, namespace: str) -> web.StreamResponse:
        target = negotiation.negotiate(
            ctx.request.headers.get("Accept"), is_list=False, allow_transform=True
        )
        spec = WatchSpec(
            rt=rt,
            namespace=namespace,
            matches=self._predicate(ctx, rt),
            query=dict(ctx.request.query),
            target=target,
            present=lambda o: self.present(rt, o),
        )
        return await serve_watch(ctx.request, self.store, spec)

    # -- create -----------------------------------------------------------------------------

    async def _create(self, ctx: Context, rt: ResourceType, namespace: str) -> web.Response:
        raw = await ctx.request.read()
        body = self._decode(rt, raw, ctx.request.headers.get("Content-Type"))
        if rt.resource in _REVIEW_RESOURCES:
            return await self._review(ctx, rt, body, namespace)
        meta = _meta(body)
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise _namespace_mismatch()
            meta["namespace"] = namespace
            self._require_namespace(namespace)
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(_GENERATE_CHARS, k=5))
        builtins.validate(rt, body)
        if rt.group == rbac.RBAC_GROUP:
            self._rbac_write(ctx, rt, body, None, namespace)
        if rt.storage_key == CRD_KEY:
            crds.validate_crd(body)
            crds.crd_defaults(body)
        if self.store.exists(rt.storage_key, namespace, meta["name"]):
            raise already_exists(rt.group, rt.resource, meta["name"])
        self._fill_new_meta(rt, body)
        builtins.apply_defaults(rt, body, creating=True)
        builtins.finish(rt, body)
        if self._dry_run(ctx):
            body["metadata"]["resourceVersion"] = ""
            return self._respond_object(ctx, rt, body, 201)
        created = self.store.create(rt.storage_key, body)
        return self._respond_object(ctx, rt, created, 201)

    def _rbac_write(
        self,
        ctx: Context,
        rt: ResourceType,
        new: dict[str, Any],
        old: dict[str, Any] | None,
        namespace: str,
    ) -> None:
        """The RBAC registry on create/update: escalation and bind checks (403), then
        validation (422; roleRef immutable)."""
        rbac.default_subjects(new)
        user = ctx.user
        self.authorizer.check_write(rt.resource, new, old, user.username, user.groups, namespace)
        if old is None:
            rbac.validate(rt.resource, new)
        else:
            rbac.validate_update(rt.resource, new, old)

    def _dry_run(self, ctx: Context) -> bool:
        values = ctx.request.query.getall("dryRun", [])
        for v in values:
            if v != "All":
                raise bad_request(f'Invalid dryRun: "{v}", supported values: All')
        return bool(values)

    async def _review(
        self, ctx: Context, rt: ResourceType, body: dict[str, Any], namespace: str
    ) -> web.Response:
        if rt.resource == "selfsubjectreviews":
            result = reviews.self_subject_review(rt, ctx.user)
        elif rt.resource == "tokenreviews":
            result = await reviews.token_review(rt, body, ctx.authenticate_token)
        elif rt.resource == "selfsubjectrulesreviews":
            result = reviews.rules_review(rt, body, ctx.user, self.authorizer)
        else:
            if rt.resource == "localsubjectaccessreviews":
                attrs = (body.get("spec") or {}).get("resourceAttributes") or {}
                if attrs.get("namespace") not in ("", None, namespace):
                    raise bad_request(
                        f"spec.resourceAttributes.namespace must match namespace: {namespace}"
                    )
            result = reviews.access_review(rt, body, ctx.user, namespace, self.authorizer)
        return self._respond_object(ctx, rt, result, 201)

    # -- update / patch ---------------------------------------------------------------------

    def _prepare_update(
        self,
        rt: ResourceType,
        new: dict[str, Any],
        old: dict[str, Any],
        subresource: str,
        name: str,
        *,
        check_rv: bool = True,
    ) -> dict[str, Any]:
        meta = _meta(new)
        if meta.get("name", name) != name:
            raise _name_mismatch(meta.get("name"), name)
        meta["name"] = name
        old_meta = _meta(old)
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != old_meta.get("namespace"):
                raise _namespace_mismatch()
            meta["namespace"] = old_meta.get("namespace", "")
        rv = meta.get("resourceVersion")
        if check_rv and rv and rv != old_meta.get("resourceVersion"):
            raise conflict(rt.group, rt.resource, name, MODIFIED)
        if meta.get("uid") and meta["uid"] != old_meta.get("uid"):
            raise conflict(
                rt.group,
                rt.resource,
                name,
                _uid_precondition(meta["uid"], old_meta.get("uid")),
            )
        if subresource == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            return result
        for key in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        new["apiVersion"] = old.get("apiVersion")
        new["kind"] = old.get("kind")
        if rt.has_status():
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        if rt.resource == "pods":
            new["status"] = old.get("status", {})
        if rt.storage_key == CRD_KEY:
            crds.validate_crd(new)
            crds.crd_defaults(new)
        builtins.validate(rt, new)
        builtins.apply_defaults(rt, new, creating=False)
        if "generation" in old_meta and (
            new.get("spec") != old.get("spec")
            or (rt.crd and not rt.has_status() and _content(new) != _content(old))
        ):
            meta["generation"] = int(old_meta["generation"]) + 1
        builtins.finish(rt, new)
        return new

    def _store_update(self, rt: ResourceType, obj: dict[str, Any], dry_run: bool) -> dict[str, Any]:
        meta = _meta(obj)
        if dry_run:
            return obj
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            deleted = self.store.delete(rt.storage_key, meta.get("namespace", ""), meta["name"])
            return deleted or obj
        return self.store.update(rt.storage_key, obj)

    async def _update(
        self, ctx: Context, rt: ResourceType, namespace: str, name: str, subresource: str
    ) -> web.Response:
        raw = await ctx.request.read()
        body = self._decode(rt, raw, ctx.request.headers.get("Content-Type"))
        old = self._lookup(rt, namespace, name)
        new = self._prepare_update(rt, body, old, subresource, name)
        if rt.group == rbac.RBAC_GROUP:
            self._rbac_write(ctx, rt, new, old, namespace)
        stored = self._store_update(rt, new, self._dry_run(ctx))
        return self._respond_object(ctx, rt, stored, 200)

    async def read_patch(self, ctx: Context, rt: ResourceType) -> tuple[str, Any]:
        """The patch type and the decoded patch document of a PATCH request."""
        ctype, _ = negotiation.parse_media_type(ctx.request.headers.get("Content-Type", ""))
        if ctype not in _PATCH_TYPES:
            raise unsupported_media_type(ctype, list(_PATCH_TYPES))
        if ctype == "application/strategic-merge-patch+json" and rt.crd:
            raise unsupported_media_type(
                ctype,
                [
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                ],
            )
        raw = await ctx.request.read()
        try:
            doc = (
                yaml.safe_load(raw)
                if ctype == "application/apply-patch+yaml"
                else json.loads(raw or b"null")
            )
        except (ValueError, yaml.YAMLError) as exc:
            raise bad_request(f"error decoding patch: {exc}") from exc
        return ctype, doc

    @staticmethod
    def patched(ctype: str, current: dict[str, Any], doc: Any) -> dict[str, Any]:
        """`current` with a (non-apply-create) patch applied."""
        if ctype == "application/apply-patch+yaml":
            if not isinstance(doc, dict):
                raise bad_request(
                    "error decoding YAML: the applied configuration must be an object"
                )
            result: Any = patch.apply_patch(current, doc)
        elif ctype == "application/json-patch+json":
            result = patch.json_patch(current, doc)
        elif ctype == "application/merge-patch+json":
            result = patch.merge_patch(current, doc)
        else:
            result = patch.strategic_merge_patch(current, doc)
        if not isinstance(result, dict):
            raise bad_request("the patched object is not an object")
        return result

    async def _patch(
        self, ctx: Context, rt: ResourceType, namespace: str, name: str, subresource: str
    ) -> web.Response:
        ctype, doc = await self.read_patch(ctx, rt)
        current = self.store.get(rt.storage_key, namespace, name)
        dry_run = self._dry_run(ctx)
        if ctype == "application/apply-patch+yaml":
            if not isinstance(doc, dict):
                raise bad_request(
                    "error decoding YAML: the applied configuration must be an object"
                )
            if not ctx.request.query.get("fieldManager"):
                raise bad_request(
                    "PATCH, application/apply-patch+yaml requires fieldManager to be set"
                )
            if current is None:
                if subresource:
                    raise not_found(rt.group, rt.resource, name)
                meta = _meta(doc)
                if meta.get("name", name) != name:
                    raise _name_mismatch(meta.get("name"), name)
                meta["name"] = name
                if rt.namespaced:
                    meta["namespace"] = namespace
                    self._require_namespace(namespace)
                builtins.validate(rt, doc)
                if rt.group == rbac.RBAC_GROUP:
                    self._rbac_write(ctx, rt, doc, None, namespace)
                if rt.storage_key == CRD_KEY:
                    crds.validate_crd(doc)
                    crds.crd_defaults(doc)
                self._fill_new_meta(rt, doc)
                builtins.apply_defaults(rt, doc, creating=True)
                builtins.finish(rt, doc)
                if dry_run:
                    return self._respond_object(ctx, rt, doc, 201)
                return self._respond_object(ctx, rt, self.store.create(rt.storage_key, doc), 201)
        if current is None:
            raise not_found(rt.group, rt.resource, name)
        patched = self.patched(ctype, current, doc)
        new = self._prepare_update(rt, patched, current, subresource, name)
        if rt.group == rbac.RBAC_GROUP:
            self._rbac_write(ctx, rt, new, current, namespace)
        return self._respond_object(ctx, rt, self._store_update(rt, new, dry_run), 200)

    # -- delete -----------------------------------------------------------------------------

    async def _delete_options(self, ctx: Context) -> dict[str, Any]:
        raw = await ctx.request.read()
        opts: dict[str, Any] = {}
        if raw.strip():
            opts = negotiation.decode_body(raw, ctx.request.headers.get("Content-Type"))
        q = ctx.request.query
        if "gracePeriodSeconds" in q:
            opts["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
        if "propagationPolicy" in q:
            opts["propagationPolicy"] = q["propagationPolicy"]
        if q.getall("dryRun", []):
            opts["dryRun"] = q.getall("dryRun")
        return opts

    def _delete_one(
        self, rt: ResourceType, obj: dict[str, Any], opts: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Returns (resulting object, deleted now)."""
        meta = _meta(obj)
        pre = opts.get("preconditions") or {}
        name = meta.get("name", "")
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise conflict(
                rt.group,
                rt.resource,
                name,
                _uid_precondition(pre["uid"], meta.get("uid")),
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise conflict(
                rt.group,
                rt.resource,
                name,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta.get('resourceVersion')}",
            )
        if opts.get("dryRun"):
            return obj, True
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                meta["deletionTimestamp"] = builtins.now_rfc3339()
                meta["deletionGracePeriodSeconds"] = 0
                obj = self.store.update(rt.storage_key, obj)
            return obj, False
        deleted = self.store.delete(rt.storage_key, meta.get("namespace", ""), name)
        return deleted or obj, True

    async def _delete(
        self, ctx: Context, rt: ResourceType, namespace: str, name: str
    ) -> web.Response:
        opts = await self._delete_options(ctx)
        obj = self._lookup(rt, namespace, name)
        result, deleted = self._delete_one(rt, obj, opts)
        if not deleted:
            return self._respond_object(ctx, rt, result, 202 if not opts.get("dryRun") else 200)
        if (
            rt.resource in ("pods",)
            or rt.crd
            or rt.storage_key == CRD_KEY
            or rt.resource == "namespaces"
        ):
            return self._respond_object(ctx, rt, result, 200)
        status = success_status(
            {
                "name": name,
                "group": rt.group,
                "kind": rt.resource,
                "uid": _meta(result).get("uid", ""),
            }
        )
        return status_response(status, 200)

    async def _delete_collection(
        self, ctx: Context, rt: ResourceType, namespace: str
    ) -> web.Response:
        opts = await self._delete_options(ctx)
        matches = self._predicate(ctx, rt)
        items = [o for o in self.store.list_objects(rt.storage_key, namespace) if matches(o)]
        results = [self._delete_one(rt, o, opts)[0] for o in items]
        shown = [self.present(rt, o) for o in results]
        if not rt.crd:
            for o in shown:
                o.pop("kind", None)
                o.pop("apiVersion", None)
        return _json_response(
            {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": shown,
            },
            self._target(ctx, is_list=True),
        )

    # -- subresources -----------------------------------------------------------------------

    async def _subresource(
        self, ctx: Context, rt: ResourceType, namespace: str, streaming: StreamingHandler
    ) -> web.StreamResponse:
        info = ctx.info
        sub = rt.subresource(info.subresource)
        if sub is None:
            raise route_not_found()
        method = ctx.request.method
        if sub.name == "status":
            if method == "GET":
                return self._respond_object(ctx, rt, self._lookup(rt, namespace, info.name))
            if method == "PUT":
                return await self._update(ctx, rt, namespace, info.name, subresource="status")
            if method == "PATCH":
                return await self._patch(ctx, rt, namespace, info.name, subresource="status")
            raise method_not_supported(rt.group, f"{rt.resource}/status", method.lower())
        if sub.name == "log" and method == "GET":
            pod = self._lookup(rt, namespace, info.name)
            key = rt.storage_key
            uid = _meta(pod).get("uid")

            def still_there() -> bool:
                if self.stopping:
                    return False
                current = self.store.get(key, namespace, info.name)
                return current is not None and _meta(current).get("uid") == uid

            return await logs.serve_logs(ctx.request, pod, still_there)
        if sub.name in ("exec", "attach", "portforward") and method in ("GET", "POST"):
            pod = self._lookup(rt, namespace, info.name)
            return await streaming(ctx.request, sub.name, pod)
        if sub.name == "scale" and method in ("GET", "PUT", "PATCH"):
            return await subresources.serve_scale(self, ctx, rt, namespace)
        if sub.name == "eviction" and method == "POST":
            return await subresources.serve_eviction(self, ctx, rt, namespace)
        if sub.name == "binding" and method == "POST":
            return await subresources.serve_binding(self, ctx, rt, namespace)
        if sub.name == "ephemeralcontainers" and method in ("GET", "PUT", "PATCH"):
            return await subresources.serve_ephemeral(self, ctx, rt, namespace)
        if sub.name == "token" and method == "POST":
            sa = self._lookup(rt, namespace, info.name)
            raw = await ctx.request.read()
            body = negotiation.decode_body(raw, ctx.request.headers.get("Content-Type"))
            result = self.sa_tokens.issue(namespace, sa, body)
            return _json_response(result, self._target(ctx, is_list=False), 201)
        if sub.name == "finalize" and method == "PUT":
            return await self._update(ctx, rt, namespace, info.name, subresource="")
        raise method_not_supported(rt.group, f"{rt.resource}/{sub.name}", method.lower())


def _namespace_mismatch() -> ApiError:
    return bad_request(
        "the namespace of the provided object does not match the namespace sent on the request"
    )


def _name_mismatch(in_object: Any, in_url: str) -> ApiError:
    return bad_request(
        f"the name of the object ({in_object}) does not match the name on the URL ({in_url})"
    )


def _uid_precondition(wanted: str, actual: Any) -> str:
    return f"Precondition failed: UID in precondition: {wanted}, UID in object meta: {actual}"


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def streaming_params(request: web.Request, kind: str, pod: dict[str, Any]) -> dict[str, Any]:
    """Parse exec/attach/portforward query parameters like PodExecOptions & co."""
    q = request.query
    if kind == "portforward":
        ports: list[int] = []
        for value in q.getall("ports", []):
            for raw in value.split(","):
                part = raw.strip()
                try:
                    port = int(part)
                except ValueError as exc:
                    raise bad_request(f"unable to parse port {part!r}") from exc
                if not 0 < port < 65536:
                    raise bad_request(f"port {port} must be in the range 1-65535")
                ports.append(port)
        return {"ports": ports}
    container = logs.pick_container(pod, q.get("container", ""))
    params: dict[str, Any] = {
        "container": container,
        "stdin": parse_bool(q.get("stdin")),
        "stdout": parse_bool(q.get("stdout")),
        "stderr": parse_bool(q.get("stderr")),
        "tty": parse_bool(q.get("tty")),
    }
    if kind == "exec":
        command = q.getall("command", [])
        if not command:
            raise bad_request("you must specify at least 1 command")
        params["command"] = command
    if not (params["stdin"] or params["stdout"] or params["stderr"]):
        raise bad_request("you must specify at least one of stdin, stdout, stderr")
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        raise bad_request(
            f"cannot {kind} into a container in a completed pod; current phase is "
            f"{pod['status']['phase']}"
        )
    return params
