"""RBAC authorization as kube-apiserver's `--authorization-mode=RBAC` does it (pure: no I/O).

After kubernetes' `plugin/pkg/auth/authorizer/rbac/rbac.go` (the authorizer and its reason
strings), `pkg/registry/rbac/validation/rule.go` (which bindings apply to whom, in which order,
`Covers`/`BreakdownRule`/`CompactRules`, `ConfirmNoEscalation`'s wording),
`pkg/registry/rbac/escalation_check.go` (`escalate` and `bind`), `pkg/apis/rbac/validation`
(what the registry refuses), the ClusterRole aggregation controller, and the bootstrap policy
(`bootstrappolicy/policy.go`, its `testdata/cluster-roles.yaml`).

`Policy` holds the roles and bindings (fed from storage events by `rest.Api`), indexes the
bindings by subject and caches the rules that apply to a user per namespace; any change of an
RBAC object clears the cache. Members of `system:masters` are allowed everything without
looking at RBAC, as the real server's privileged-group authorizer does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .status import ApiError, forbidden, go_quote, invalid

RBAC_GROUP = "rbac.authorization.k8s.io"
RBAC_API = f"{RBAC_GROUP}/v1"
SUPERUSER_GROUP = "system:masters"
ALL = "*"
ROLE_RESOURCES = ("roles", "clusterroles")
BINDING_RESOURCES = ("rolebindings", "clusterrolebindings")
RBAC_RESOURCES = (*ROLE_RESOURCES, *BINDING_RESOURCES)
_SA_PREFIX = "system:serviceaccount:"
_CACHE_LIMIT = 4096

Doc = dict[str, Any]


# -- rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """An `rbac/v1` PolicyRule."""

    verbs: tuple[str, ...] = ()
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, doc: Any) -> Rule:
        doc = doc if isinstance(doc, dict) else {}

        def strings(key: str) -> tuple[str, ...]:
            value = doc.get(key) or ()
            return tuple(str(v) for v in value) if isinstance(value, list) else ()

        return cls(
            strings("verbs"),
            strings("apiGroups"),
            strings("resources"),
            strings("resourceNames"),
            strings("nonResourceURLs"),
        )

    def to_json(self) -> Doc:
        out: Doc = {"verbs": list(self.verbs)}
        if self.api_groups:
            out["apiGroups"] = list(self.api_groups)
        if self.resources:
            out["resources"] = list(self.resources)
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        if self.non_resource_urls:
            out["nonResourceURLs"] = list(self.non_resource_urls)
        return out


@dataclass(frozen=True)
class Attributes:
    """authorizer.Attributes: who asks for what."""

    user: str
    groups: tuple[str, ...] = ()
    verb: str = ""
    resource_request: bool = True
    namespace: str = ""
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""
    error: str = ""


def verb_matches(rule: Rule, verb: str) -> bool:
    return ALL in rule.verbs or verb in rule.verbs


def api_group_matches(rule: Rule, group: str) -> bool:
    return ALL in rule.api_groups or group in rule.api_groups


def resource_matches(rule: Rule, combined: str, subresource: str) -> bool:
    for res in rule.resources:
        if res in (ALL, combined):
            return True
        if not subresource:
            continue
        # "*/scale" matches every resource's scale subresource
        if len(res) == len(subresource) + 2 and res.startswith("*/") and res.endswith(subresource):
            return True
    return False


def resource_name_matches(rule: Rule, name: str) -> bool:
    return not rule.resource_names or name in rule.resource_names


def non_resource_url_matches(rule: Rule, path: str) -> bool:
    for url in rule.non_resource_urls:
        if url in (ALL, path):
            return True
        if url.endswith("*") and path.startswith(url.rstrip("*")):
            return True
    return False


def rule_allows(attrs: Attributes, rule: Rule) -> bool:
    """rbac.RuleAllows."""
    if attrs.resource_request:
        combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
        return (
            verb_matches(rule, attrs.verb)
            and api_group_matches(rule, attrs.api_group)
            and resource_matches(rule, combined, attrs.subresource)
            and resource_name_matches(rule, attrs.name)
        )
    return verb_matches(rule, attrs.verb) and non_resource_url_matches(rule, attrs.path)


# -- subjects and bindings --------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    kind: str
    name: str
    namespace: str = ""

    @classmethod
    def from_json(cls, doc: Any) -> Subject:
        doc = doc if isinstance(doc, dict) else {}
        return cls(
            str(doc.get("kind", "")), str(doc.get("name", "")), str(doc.get("namespace", ""))
        )


def service_account_user(namespace: str, name: str) -> str:
    return f"{_SA_PREFIX}{namespace}:{name}"


def applies_to_user(user: str, groups: Iterable[str], subject: Subject, namespace: str) -> bool:
    """validation.appliesToUser; `namespace` is the binding's ("" for ClusterRoleBindings)."""
    if subject.kind == "User":
        return user == subject.name
    if subject.kind == "Group":
        return subject.name in groups
    if subject.kind == "ServiceAccount":
        sa_namespace = subject.namespace or namespace
        if not sa_namespace:
            return False
        return user == service_account_user(sa_namespace, subject.name)
    return False


def describe_subject(subject: Subject, binding_namespace: str) -> str:
    if subject.kind == "ServiceAccount":
        ns = subject.namespace or binding_namespace
        return f"{subject.kind} {go_quote(subject.name + '/' + ns)}"
    return f"{subject.kind} {go_quote(subject.name)}"


@dataclass(frozen=True)
class Binding:
    name: str
    namespace: str  # "" for a ClusterRoleBinding
    role_kind: str
    role_name: str
    subjects: tuple[Subject, ...]

    @classmethod
    def from_json(cls, doc: Doc) -> Binding:
        meta = doc.get("metadata") or {}
        ref = doc.get("roleRef") or {}
        return cls(
            str(meta.get("name", "")),
            str(meta.get("namespace", "") or ""),
            str(ref.get("kind", "")),
            str(ref.get("name", "")),
            tuple(Subject.from_json(s) for s in doc.get("subjects") or ()),
        )

    def applies_to(self, user: str, groups: Iterable[str]) -> Subject | None:
        group_set = groups if isinstance(groups, (set, frozenset)) else frozenset(groups)
        for subject in self.subjects:
            if applies_to_user(user, group_set, subject, self.namespace):
                return subject
        return None

    def describe(self, subject: Subject) -> str:
        """clusterRoleBindingDescriber / roleBindingDescriber."""
        if self.namespace:
            return (
                f"RoleBinding {go_quote(self.name + '/' + self.namespace)} of {self.role_kind} "
                f"{go_quote(self.role_name)} to {describe_subject(subject, self.namespace)}"
            )
        return (
            f"ClusterRoleBinding {go_quote(self.name)} of {self.role_kind} "
            f"{go_quote(self.role_name)} to {describe_subject(subject, '')}"
        )


def role_not_found(kind: str, name: str) -> str:
    """What GetRoleReferenceRules says when the role is missing (singular resource)."""
    return f"{kind.lower()}.{RBAC_GROUP} {go_quote(name)} not found"


# -- the 403 ----------------------------------------------------------------------------------

_SANITIZE = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def forbidden_message(attrs: Attributes) -> str:
    """responsewriters.forbiddenMessage, sanitized as Forbidden does."""
    user = go_quote(attrs.user)
    if not attrs.resource_request:
        msg = f"User {user} cannot {attrs.verb} path {go_quote(attrs.path)}"
    else:
        resource = attrs.resource
        if attrs.subresource:
            resource = f"{resource}/{attrs.subresource}"
        scope = (
            f"in the namespace {go_quote(attrs.namespace)}"
            if attrs.namespace
            else "at the cluster scope"
        )
        msg = (
            f"User {user} cannot {attrs.verb} resource {go_quote(resource)} in API group "
            f"{go_quote(attrs.api_group)} {scope}"
        )
    return msg.translate(_SANITIZE)


def forbidden_error(attrs: Attributes, reason: str = "") -> ApiError:
    """responsewriters.Forbidden: NewForbidden(group/resource, name, message[: reason])."""
    why = forbidden_message(attrs)
    if reason:
        why = f"{why}: {reason}"
    if not attrs.resource_request:
        return forbidden("", "", "", why)
    return forbidden(attrs.api_group, attrs.resource, attrs.name, why)


# -- escalation: Covers, BreakdownRule, CompactRules -------------------------------------------


def breakdown_rule(rule: Rule) -> list[Rule]:
    out: list[Rule] = []
    for group in rule.api_groups:
        for resource in rule.resources:
            for verb in rule.verbs:
                if rule.resource_names:
                    out.extend(
                        Rule((verb,), (group,), (resource,), (name,))
                        for name in rule.resource_names
                    )
                else:
                    out.append(Rule((verb,), (group,), (resource,)))
    for url in rule.non_resource_urls:
        out.extend(Rule((verb,), non_resource_urls=(url,)) for verb in rule.verbs)
    return out


def _has_all(have: tuple[str, ...], want: tuple[str, ...]) -> bool:
    return all(w in have for w in want)


def _resource_covers_all(owner: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
    if ALL in owner or _has_all(owner, wanted):
        return True
    for path in wanted:
        if path in owner:
            continue
        if "/" not in path:
            return False
        if "*/" + path.split("/", 1)[1] not in owner:
            return False
    return True


def _url_covers(owner: str, wanted: str) -> bool:
    if owner == wanted:
        return True
    return owner.endswith("*") and wanted.startswith(owner.rstrip("*"))


def _urls_cover_all(owner: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
    return all(any(_url_covers(o, w) for o in owner) for w in wanted)


def rule_covers(owner: Rule, sub: Rule) -> bool:
    verbs = ALL in owner.verbs or _has_all(owner.verbs, sub.verbs)
    groups = ALL in owner.api_groups or _has_all(owner.api_groups, sub.api_groups)
    resources = _resource_covers_all(owner.resources, sub.resources)
    urls = _urls_cover_all(owner.non_resource_urls, sub.non_resource_urls)
    if not sub.resource_names:
        names = not owner.resource_names
    else:
        names = not owner.resource_names or _has_all(owner.resource_names, sub.resource_names)
    return verbs and groups and resources and names and urls


def covers(owner: Iterable[Rule], requested: Iterable[Rule]) -> tuple[bool, list[Rule]]:
    """validation.Covers: whether `owner` holds every atomic right in `requested`."""
    owner_rules = list(owner)
    missing: list[Rule] = []
    for rule in requested:
        missing.extend(
            sub for sub in breakdown_rule(rule) if not any(rule_covers(o, sub) for o in owner_rules)
        )
    return not missing, missing


def compact_rules(rules: list[Rule]) -> list[Rule]:
    """validation.CompactRules: simple resource rules of one group/resource/name merge verbs."""
    out: list[Rule] = []
    simple: dict[tuple[str, str, bool, str], list[str]] = {}
    for rule in rules:
        if (
            len(rule.api_groups) == 1
            and len(rule.resources) == 1
            and not rule.non_resource_urls
            and len(rule.resource_names) <= 1
        ):
            key = (
                rule.api_groups[0],
                rule.resources[0],
                bool(rule.resource_names),
                rule.resource_names[0] if rule.resource_names else "",
            )
            verbs = simple.setdefault(key, [])
            verbs.extend(v for v in rule.verbs if v not in verbs)
        else:
            out.append(rule)
    for (group, resource, has_name, name), verbs in simple.items():
        out.append(Rule(tuple(verbs), (group,), (resource,), (name,) if has_name else ()))
    return out


def _go_strings(values: Iterable[str]) -> str:
    """Go's %q of a []string: ["a" "b"]."""
    return "[" + " ".join(go_quote(v) for v in values) + "]"


def compact_string(rule: Rule) -> str:
    """rbacv1helpers.CompactString."""
    parts = []
    if rule.api_groups:
        parts.append(f"APIGroups:{_go_strings(rule.api_groups)}")
    if rule.resources:
        parts.append(f"Resources:{_go_strings(rule.resources)}")
    if rule.non_resource_urls:
        parts.append(f"NonResourceURLs:{_go_strings(rule.non_resource_urls)}")
    if rule.resource_names:
        parts.append(f"ResourceNames:{_go_strings(rule.resource_names)}")
    if rule.verbs:
        parts.append(f"Verbs:{_go_strings(rule.verbs)}")
    return "{" + ", ".join(parts) + "}"


def escalation_message(
    user: str, groups: Iterable[str], missing: list[Rule], errors: Iterable[str] = ()
) -> str:
    """ConfirmNoEscalation's error text."""
    described = sorted({compact_string(r) for r in compact_rules(missing)})
    msg = (
        f"user {go_quote(user)} (groups={_go_strings(groups)}) is attempting to grant RBAC "
        "permissions not currently held:\n" + "\n".join(described)
    )
    errs = list(errors)
    if errs:
        msg += f"; resolution errors: [{_aggregate(errs)}]"
    return msg


FULL_AUTHORITY = (Rule((ALL,), (ALL,), (ALL,)), Rule((ALL,), non_resource_urls=(ALL,)))


# -- validation (pkg/apis/rbac/validation) -----------------------------------------------------

_KINDS = {
    "roles": "Role",
    "clusterroles": "ClusterRole",
    "rolebindings": "RoleBinding",
    "clusterrolebindings": "ClusterRoleBinding",
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)


def _cause(kind: str, path: str, detail: str, value: Any = None) -> dict[str, str]:
    if kind == "FieldValueRequired":
        message = f"Required value: {detail}" if detail else "Required value"
    elif kind == "FieldValueNotSupported":
        message = f"Unsupported value: {go_quote(str(value))}: supported values: {detail}"
    else:
        if isinstance(value, str):
            shown = go_quote(value)
        elif isinstance(value, list):
            shown = "[]string{" + ", ".join(go_quote(v) for v in value) + "}"
        else:
            shown = str(value)
        message = f"Invalid value: {shown}: {detail}"
    return {"type": kind, "message": message, "field": path}


def path_segment_name_problems(name: str) -> list[str]:
    """path.IsValidPathSegmentName (ValidateRBACName)."""
    if name in (".", ".."):
        return [f"may not be '{name}'"]
    return [f"may not contain '{c}'" for c in ("/", "%") if c in name]


def default_subjects(doc: Doc) -> None:
    """SetDefaults_Subject: apiGroup of User/Group subjects; roleRef needs none."""
    for subject in doc.get("subjects") or []:
        if isinstance(subject, dict) and not subject.get("apiGroup"):
            if subject.get("kind") in ("User", "Group"):
                subject["apiGroup"] = RBAC_GROUP
            elif subject.get("kind") == "ServiceAccount":
                subject["apiGroup"] = ""
        if isinstance(subject, dict) and subject.get("apiGroup") == "":
            subject.pop("apiGroup", None)


def _validate_rules(rules: Any, namespaced: bool, causes: list[dict[str, str]]) -> None:
    for i, raw in enumerate(rules if isinstance(rules, list) else []):
        rule = Rule.from_json(raw)
        path = f"rules[{i}]"
        if not rule.verbs:
            causes.append(
                _cause(
                    "FieldValueRequired", f"{path}.verbs", "verbs must contain at least one value"
                )
            )
        if rule.non_resource_urls:
            if namespaced:
                causes.append(
                    _cause(
                        "FieldValueInvalid",
                        f"{path}.nonResourceURLs",
                        "namespaced rules cannot apply to non-resource URLs",
                        list(rule.non_resource_urls),
                    )
                )
            if rule.api_groups or rule.resources or rule.resource_names:
                causes.append(
                    _cause(
                        "FieldValueInvalid",
                        f"{path}.nonResourceURLs",
                        "rules cannot apply to both regular resources and non-resource URLs",
                        list(rule.non_resource_urls),
                    )
                )
            continue
        if not rule.api_groups:
            causes.append(
                _cause(
                    "FieldValueRequired",
                    f"{path}.apiGroups",
                    "resource rules must supply at least one api group",
                )
            )
        if not rule.resources:
            causes.append(
                _cause(
                    "FieldValueRequired",
                    f"{path}.resources",
                    "resource rules must supply at least one resource",
                )
            )


def _validate_subject(subject: Any, i: int, namespaced: bool, causes: list[dict[str, str]]) -> None:
    path = f"subjects[{i}]"
    subject = subject if isinstance(subject, dict) else {}
    name = str(subject.get("name", ""))
    kind = str(subject.get("kind", ""))
    group = str(subject.get("apiGroup", "") or "")
    if not name:
        causes.append(_cause("FieldValueRequired", f"{path}.name", ""))
    if kind == "ServiceAccount":
        if name and not (_DNS_SUBDOMAIN.match(name) and len(name) <= 253):
            causes.append(_cause("FieldValueInvalid", f"{path}.name", _SUBDOMAIN_MSG, name))
        if group:
            causes.append(_cause("FieldValueNotSupported", f"{path}.apiGroup", '""', group))
        if not namespaced and not subject.get("namespace"):
            causes.append(_cause("FieldValueRequired", f"{path}.namespace", ""))
    elif kind in ("User", "Group"):
        if not name:
            causes.append(
                _cause(
                    "FieldValueInvalid", f"{path}.name", f"{kind.lower()} name cannot be empty", ""
                )
            )
        if group != RBAC_GROUP:
            causes.append(
                _cause("FieldValueNotSupported", f"{path}.apiGroup", go_quote(RBAC_GROUP), group)
            )
    else:
        causes.append(
            _cause(
                "FieldValueNotSupported",
                f"{path}.kind",
                '"ServiceAccount", "User", "Group"',
                kind,
            )
        )


def validate(resource: str, doc: Doc) -> None:
    """ValidateRole/ClusterRole/RoleBinding/ClusterRoleBinding; raises the 422."""
    kind = _KINDS[resource]
    meta = doc.get("metadata") or {}
    name = str(meta.get("name", "") or "")
    causes: list[dict[str, str]] = []
    if not name and not meta.get("generateName"):
        causes.append(
            _cause("FieldValueRequired", "metadata.name", "name or generateName is required")
        )
    causes.extend(
        _cause("FieldValueInvalid", "metadata.name", problem, name)
        for problem in path_segment_name_problems(name)
    )
    namespaced = resource in ("roles", "rolebindings")
    if resource in ROLE_RESOURCES:
        _validate_rules(doc.get("rules"), namespaced, causes)
        agg = doc.get("aggregationRule")
        if (
            resource == "clusterroles"
            and isinstance(agg, dict)
            and not agg.get("clusterRoleSelectors")
        ):
            causes.append(
                _cause(
                    "FieldValueRequired",
                    "aggregationRule.clusterRoleSelectors",
                    "at least one clusterRoleSelector required if aggregationRule is non-nil",
                )
            )
    else:
        ref = doc.get("roleRef") or {}
        ref_kind = str(ref.get("kind", ""))
        if ref.get("apiGroup", "") != RBAC_GROUP:
            causes.append(
                _cause(
                    "FieldValueNotSupported",
                    "roleRef.apiGroup",
                    go_quote(RBAC_GROUP),
                    ref.get("apiGroup", ""),
                )
            )
        if namespaced and ref_kind not in ("Role", "ClusterRole"):
            causes.append(
                _cause("FieldValueNotSupported", "roleRef.kind", '"Role", "ClusterRole"', ref_kind)
            )
        if not namespaced and ref_kind != "ClusterRole":
            causes.append(
                _cause("FieldValueNotSupported", "roleRef.kind", '"ClusterRole"', ref_kind)
            )
        ref_name = str(ref.get("name", ""))
        if not ref_name:
            causes.append(_cause("FieldValueRequired", "roleRef.name", ""))
        causes.extend(
            _cause("FieldValueInvalid", "roleRef.name", problem, ref_name)
            for problem in path_segment_name_problems(ref_name)
        )
        for i, subject in enumerate(doc.get("subjects") or []):
            _validate_subject(subject, i, namespaced, causes)
    if causes:
        raise invalid(RBAC_GROUP, kind, name or str(meta.get("generateName", "")), causes)


def validate_update(resource: str, new: Doc, old: Doc) -> None:
    """The roleRef of a binding cannot change (ValidateRoleBindingUpdate)."""
    validate(resource, new)
    if resource not in BINDING_RESOURCES:
        return
    new_ref, old_ref = new.get("roleRef") or {}, old.get("roleRef") or {}
    fields = ("apiGroup", "kind", "name")
    if tuple(new_ref.get(f, "") for f in fields) == tuple(old_ref.get(f, "") for f in fields):
        return
    shown = (
        f"rbac.RoleRef{{APIGroup:{go_quote(str(new_ref.get('apiGroup', '')))}, "
        f"Kind:{go_quote(str(new_ref.get('kind', '')))}, "
        f"Name:{go_quote(str(new_ref.get('name', '')))}}}"
    )
    name = str((new.get("metadata") or {}).get("name", ""))
    raise invalid(
        RBAC_GROUP,
        _KINDS[resource],
        name,
        [
            {
                "type": "FieldValueInvalid",
                "message": f"Invalid value: {shown}: cannot change roleRef",
                "field": "roleRef",
            }
        ],
    )


# -- aggregation ------------------------------------------------------------------------------


def selector_matches(selector: Any, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels, matchExpressions); an empty one matches all."""
    if not isinstance(selector, dict):
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key", ""), expr.get("operator", "")
        values = expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def aggregated_rules(role: Doc, cluster_roles: Iterable[Doc]) -> list[Doc]:
    """The ClusterRole aggregation controller: the selected roles' rules, by name, no repeats."""
    name = (role.get("metadata") or {}).get("name", "")
    ordered = sorted(cluster_roles, key=lambda r: str((r.get("metadata") or {}).get("name", "")))
    rules: list[Doc] = []
    for selector in (role.get("aggregationRule") or {}).get("clusterRoleSelectors") or []:
        for other in ordered:
            meta = other.get("metadata") or {}
            if meta.get("name") == name or not selector_matches(selector, meta.get("labels") or {}):
                continue
            for rule in other.get("rules") or []:
                if rule not in rules:
                    rules.append(rule)
    return rules


# -- the policy -------------------------------------------------------------------------------


@dataclass
class _Resolved:
    """What applies to one user in one namespace: (source, rules) in visit order, errors."""

    entries: list[tuple[str, tuple[Rule, ...]]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Policy:
    """The roles and bindings, indexed by subject, with a per-user cache."""

    def __init__(self) -> None:
        self.cluster_roles: dict[str, tuple[Rule, ...]] = {}
        self.roles: dict[tuple[str, str], tuple[Rule, ...]] = {}
        self.cluster_bindings: dict[str, Binding] = {}
        self.bindings: dict[tuple[str, str], Binding] = {}
        # subject -> binding keys: ("User", name) / ("Group", name) / ("ServiceAccount", user)
        self._index: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._cache: dict[tuple[str, tuple[str, ...], str], _Resolved] = {}

    # -- updates from storage --------------------------------------------------------------

    def _subject_keys(self, binding: Binding) -> set[tuple[str, str]]:
        keys: set[tuple[str, str]] = set()
        for s in binding.subjects:
            if s.kind == "ServiceAccount":
                ns = s.namespace or binding.namespace
                if ns:
                    keys.add(("User", service_account_user(ns, s.name)))
            elif s.kind in ("User", "Group"):
                keys.add((s.kind, s.name))
        return keys

    def _unindex(self, binding: Binding | None) -> None:
        if binding is None:
            return
        key = (binding.namespace, binding.name)
        for skey in self._subject_keys(binding):
            found = self._index.get(skey)
            if found is not None:
                found.discard(key)
                if not found:
                    del self._index[skey]

    def _reindex(self, binding: Binding) -> None:
        key = (binding.namespace, binding.name)
        for skey in self._subject_keys(binding):
            self._index.setdefault(skey, set()).add(key)

    def put(self, resource: str, doc: Doc) -> None:
        meta = doc.get("metadata") or {}
        name, ns = str(meta.get("name", "")), str(meta.get("namespace", "") or "")
        self._cache.clear()
        if resource == "clusterroles":
            self.cluster_roles[name] = tuple(Rule.from_json(r) for r in doc.get("rules") or ())
        elif resource == "roles":
            self.roles[(ns, name)] = tuple(Rule.from_json(r) for r in doc.get("rules") or ())
        elif resource == "clusterrolebindings":
            binding = Binding.from_json(doc)
            self._unindex(self.cluster_bindings.get(name))
            self.cluster_bindings[name] = binding
            self._reindex(binding)
        elif resource == "rolebindings":
            binding = Binding.from_json(doc)
            self._unindex(self.bindings.get((ns, name)))
            self.bindings[(ns, name)] = binding
            self._reindex(binding)

    def remove(self, resource: str, namespace: str, name: str) -> None:
        self._cache.clear()
        if resource == "clusterroles":
            self.cluster_roles.pop(name, None)
        elif resource == "roles":
            self.roles.pop((namespace, name), None)
        elif resource == "clusterrolebindings":
            self._unindex(self.cluster_bindings.pop(name, None))
        elif resource == "rolebindings":
            self._unindex(self.bindings.pop((namespace, name), None))

    # -- resolution ------------------------------------------------------------------------

    def role_rules(self, kind: str, name: str, namespace: str) -> tuple[Rule, ...] | None:
        """GetRoleReferenceRules; None when the role does not exist."""
        if kind == "ClusterRole":
            return self.cluster_roles.get(name)
        if kind == "Role":
            return self.roles.get((namespace, name))
        return None

    def resolve(self, user: str, groups: tuple[str, ...], namespace: str) -> _Resolved:
        key = (user, groups, namespace)
        found = self._cache.get(key)
        if found is not None:
            return found
        candidates: set[tuple[str, str]] = set()
        for skey in (("User", user), *(("Group", g) for g in groups)):
            candidates |= self._index.get(skey, set())
        group_set = frozenset(groups)
        resolved = _Resolved()
        cluster = sorted(name for ns, name in candidates if not ns)
        local = sorted(name for ns, name in candidates if ns and ns == namespace)
        chosen = [self.cluster_bindings[n] for n in cluster if n in self.cluster_bindings]
        chosen += [self.bindings[(namespace, n)] for n in local if (namespace, n) in self.bindings]
        for binding in chosen:
            subject = binding.applies_to(user, group_set)
            if subject is None:
                continue
            rules = self.role_rules(binding.role_kind, binding.role_name, binding.namespace)
            if rules is None:
                resolved.errors.append(role_not_found(binding.role_kind, binding.role_name))
                continue
            resolved.entries.append((binding.describe(subject), rules))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = resolved
        return resolved

    def rules_for(
        self, user: str, groups: tuple[str, ...], namespace: str
    ) -> tuple[list[Rule], list[str]]:
        """RulesFor: every rule that applies, and the resolution errors."""
        resolved = self.resolve(user, groups, namespace)
        rules = [r for _, rs in resolved.entries for r in rs]
        return rules, list(resolved.errors)

    def authorize(self, attrs: Attributes) -> Decision:
        """RBACAuthorizer.Authorize, behind the privileged-group authorizer."""
        if SUPERUSER_GROUP in attrs.groups:
            return Decision(True)
        resolved = self.resolve(attrs.user, attrs.groups, attrs.namespace)
        for source, rules in resolved.entries:
            for rule in rules:
                if rule_allows(attrs, rule):
                    return Decision(True, f"RBAC: allowed by {source}")
        if resolved.errors:
            return Decision(False, f"RBAC: {_aggregate(resolved.errors)}")
        return Decision(False)


def _aggregate(errors: list[str]) -> str:
    """utilerrors.NewAggregate(...).Error()."""
    if len(errors) == 1:
        return errors[0]
    return "[" + ", ".join(errors) + "]"


class Authorizer:
    """`--authorization-mode`: RBAC (with system:masters) or AlwaysAllow."""

    def __init__(self, policy: Policy, mode: str = "RBAC") -> None:
        if mode not in ("RBAC", "AlwaysAllow"):
            raise ValueError(f"unknown authorization mode {mode!r} (RBAC or AlwaysAllow)")
        self.policy = policy
        self.mode = mode

    def allows_everything(self, groups: tuple[str, ...]) -> bool:
        """AlwaysAllow, or a member of system:masters: no attributes needed."""
        return self.mode == "AlwaysAllow" or SUPERUSER_GROUP in groups

    def authorize(self, attrs: Attributes) -> Decision:
        if self.mode == "AlwaysAllow":
            return Decision(True)
        return self.policy.authorize(attrs)

    def rules_for(
        self, user: str, groups: tuple[str, ...], namespace: str
    ) -> tuple[list[Rule], list[str]]:
        if self.mode == "AlwaysAllow":
            return list(FULL_AUTHORITY), []
        return self.policy.rules_for(user, groups, namespace)

    def check_write(
        self,
        resource: str,
        doc: Doc,
        old: Doc | None,
        user: str,
        groups: tuple[str, ...],
        namespace: str,
    ) -> None:
        """The RBAC registry's escalation and bind checks on create/update; raises the 403."""
        if resource not in RBAC_RESOURCES or SUPERUSER_GROUP in groups:
            return  # EscalationAllowed
        meta = doc.get("metadata") or {}
        name = str(meta.get("name", "") or "")
        if old is not None and _only_gc_fields_changed(doc, old):
            return  # IsOnlyMutatingGCFields
        if resource in ROLE_RESOURCES:
            self._check_role(resource, doc, old, user, groups, namespace, name)
        else:
            self._check_binding(resource, doc, user, groups, namespace, name)

    def _confirm(
        self, user: str, groups: tuple[str, ...], namespace: str, rules: Iterable[Rule]
    ) -> str | None:
        owner, errors = self.rules_for(user, groups, namespace)
        ok, missing = covers(owner, rules)
        return None if ok else escalation_message(user, groups, missing, errors)

    def _check_role(
        self,
        resource: str,
        doc: Doc,
        old: Doc | None,
        user: str,
        groups: tuple[str, ...],
        namespace: str,
        name: str,
    ) -> None:
        # RoleEscalationAuthorized asks with the request's name: none on a create (POST)
        escalate = Attributes(
            user,
            groups,
            "escalate",
            True,
            namespace,
            RBAC_GROUP,
            resource,
            "",
            name if old is not None else "",
        )
        if self.authorize(escalate).allowed:
            return
        rules = [Rule.from_json(r) for r in doc.get("rules") or ()]
        problem = self._confirm(user, groups, namespace, rules)
        if problem is not None:
            raise forbidden(RBAC_GROUP, resource, name, problem)
        if (
            resource == "clusterroles"
            and (doc.get("aggregationRule") or (old is not None and old.get("aggregationRule")))
            and self._confirm(user, groups, namespace, FULL_AUTHORITY) is not None
        ):
            raise forbidden(
                RBAC_GROUP,
                resource,
                name,
                "must have cluster-admin privileges to use the aggregationRule",
            )

    def _check_binding(
        self,
        resource: str,
        doc: Doc,
        user: str,
        groups: tuple[str, ...],
        namespace: str,
        name: str,
    ) -> None:
        ref = doc.get("roleRef") or {}
        kind, ref_name = str(ref.get("kind", "")), str(ref.get("name", ""))
        role_resource = {"ClusterRole": "clusterroles", "Role": "roles"}.get(kind)
        if role_resource is not None:
            bind = Attributes(
                user,
                groups,
                "bind",
                True,
                namespace,
                str(ref.get("apiGroup", "")),
                role_resource,
                "",
                ref_name,
            )
            if self.authorize(bind).allowed:
                return
        rules = self.policy.role_rules(kind, ref_name, namespace)
        if self.mode == "AlwaysAllow":
            return
        if rules is None:
            raise forbidden(RBAC_GROUP, resource, name, role_not_found(kind, ref_name))
        problem = self._confirm(user, groups, namespace, rules)
        if problem is not None:
            raise forbidden(RBAC_GROUP, resource, name, problem)


def _only_gc_fields_changed(new: Doc, old: Doc) -> bool:
    """rbacregistry.IsOnlyMutatingGCFields: ownerReferences/finalizers only."""

    def strip(doc: Doc) -> str:
        copy = json.loads(json.dumps(doc))
        meta = copy.get("metadata") or {}
        for key in ("ownerReferences", "finalizers", "resourceVersion", "managedFields"):
            meta.pop(key, None)
        return json.dumps(copy, sort_keys=True)

    return strip(new) == strip(old)


def name_from_field_selector(selector: str) -> str:
    """`fieldSelector.RequiresExactMatch("metadata.name")`, if a valid path segment name."""
    for term in selector.split(","):
        for op in ("==", "="):
            key, sep, value = term.partition(op)
            if sep and key.strip() == "metadata.name" and not value.startswith("="):
                value = value.strip()
                if value and not path_segment_name_problems(value):
                    return value
                return ""
    return ""


def subject_attributes(
    user: str, groups: tuple[str, ...], spec: Doc, namespace_override: str | None = None
) -> Attributes:
    """authorizationutil.ResourceAttributesFrom / NonResourceAttributesFrom of a review spec."""
    res = spec.get("resourceAttributes")
    if isinstance(res, dict):
        ns = str(res.get("namespace", "") or "")
        if namespace_override is not None:
            ns = namespace_override
        return Attributes(
            user,
            groups,
            str(res.get("verb", "")),
            True,
            ns,
            str(res.get("group", "")),
            str(res.get("resource", "")),
            str(res.get("subresource", "")),
            str(res.get("name", "")),
        )
    non = spec.get("nonResourceAttributes") or {}
    return Attributes(user, groups, str(non.get("verb", "")), False, path=str(non.get("path", "")))


def rules_review_status(rules: list[Rule], errors: list[str]) -> Doc:
    """SelfSubjectRulesReview status from RulesFor (the rules found, and the errors as
    `evaluationError`)."""
    resource_rules: list[Doc] = []
    non_resource_rules: list[Doc] = []
    for r in rules:
        if r.resources:
            entry: Doc = {"verbs": list(r.verbs), "apiGroups": list(r.api_groups)}
            entry["resources"] = list(r.resources)
            if r.resource_names:
                entry["resourceNames"] = list(r.resource_names)
            resource_rules.append(entry)
        if r.non_resource_urls:
            non_resource_rules.append(
                {"verbs": list(r.verbs), "nonResourceURLs": list(r.non_resource_urls)}
            )
    status: Doc = {
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": False,  # RBAC's RulesFor never says incomplete; errors go below
    }
    if errors:
        status["evaluationError"] = _aggregate(errors)
    return status


def iter_docs(docs: Iterable[Any]) -> Iterator[Doc]:
    """Objects of a YAML/JSON stream, List kinds flattened."""
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            yield from iter_docs(doc["items"])
        else:
            yield doc
