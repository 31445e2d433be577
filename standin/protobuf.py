"""Decoding `application/vnd.kubernetes.protobuf` request bodies into JSON-shaped dicts.

The envelope (k8s.io/apimachinery/pkg/runtime/serializer/protobuf) is the 4-byte magic `k8s\\0`
followed by a `runtime.Unknown` message {typeMeta{apiVersion=1, kind=2}=1, raw=2,
contentEncoding=3, contentType=4}; `raw` is the object's own protobuf encoding.

Only the kinds kubectl 1.32+ actually sends as protobuf (through client-go's typed clients) are
described below, with field numbers from the `generated.proto` files of k8s.io/api and
k8s.io/apimachinery. Unknown fields are skipped. gogo-protobuf writes every non-pointer field,
zero values included, so zero scalars are dropped here (they are `omitempty` in JSON) except for
fields marked KEEP (pointers in Go).
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass
from typing import Any

from .status import ApiError, bad_request

MAGIC = b"k8s\x00"
_ZERO_TIME = -62135596800  # Go's time.Time{}.Unix()


# -- schema DSL -----------------------------------------------------------------------------

STR = "string"
BYTES = "bytes"
INT = "int"
BOOL = "bool"
TIME = "time"
MICROTIME = "microtime"
QUANTITY = "quantity"
INT_OR_STRING = "intorstr"
FIELDS_V1 = "fieldsv1"
EXTRA = "extra"  # authentication ExtraValue: {items=1 repeated string} -> list


@dataclass(frozen=True)
class F:
    name: str
    type: Any  # a scalar name above, or a Schema (dict) for messages
    repeated: bool = False
    map_value: Any = None  # set for map<string, map_value>
    inline: bool = False  # Go embedded struct: its fields land in the parent JSON object
    keep: bool = False  # pointer field: keep zero values


Schema = dict[int, F]


def _rep(name: str, typ: Any) -> F:
    return F(name, typ, repeated=True)


def _map(name: str, value: Any) -> F:
    return F(name, "map", map_value=value)


# -- k8s.io/apimachinery meta/v1 ---------------------------------------------------------------

OWNER_REFERENCE: Schema = {
    5: F("apiVersion", STR),
    1: F("kind", STR),
    3: F("name", STR),
    4: F("uid", STR),
    6: F("controller", BOOL, keep=True),
    7: F("blockOwnerDeletion", BOOL, keep=True),
}
MANAGED_FIELDS_ENTRY: Schema = {
    1: F("manager", STR),
    2: F("operation", STR),
    3: F("apiVersion", STR),
    4: F("time", TIME),
    6: F("fieldsType", STR),
    7: F("fieldsV1", FIELDS_V1),
    8: F("subresource", STR),
}
OBJECT_META: Schema = {
    1: F("name", STR),
    2: F("generateName", STR),
    3: F("namespace", STR),
    4: F("selfLink", STR),
    5: F("uid", STR),
    6: F("resourceVersion", STR),
    7: F("generation", INT),
    8: F("creationTimestamp", TIME),
    9: F("deletionTimestamp", TIME),
    10: F("deletionGracePeriodSeconds", INT, keep=True),
    11: _map("labels", STR),
    12: _map("annotations", STR),
    13: _rep("ownerReferences", OWNER_REFERENCE),
    14: _rep("finalizers", STR),
    17: _rep("managedFields", MANAGED_FIELDS_ENTRY),
}
LABEL_SELECTOR_REQUIREMENT: Schema = {
    1: F("key", STR),
    2: F("operator", STR),
    3: _rep("values", STR),
}
LABEL_SELECTOR: Schema = {
    1: _map("matchLabels", STR),
    2: _rep("matchExpressions", LABEL_SELECTOR_REQUIREMENT),
}
PRECONDITIONS: Schema = {1: F("uid", STR, keep=True), 2: F("resourceVersion", STR, keep=True)}
DELETE_OPTIONS: Schema = {
    1: F("gracePeriodSeconds", INT, keep=True),
    2: F("preconditions", PRECONDITIONS),
    3: F("orphanDependents", BOOL, keep=True),
    4: F("propagationPolicy", STR, keep=True),
    5: _rep("dryRun", STR),
    6: F("ignoreStoreReadErrorWithClusterBreakingPotential", BOOL, keep=True),
}

# -- core/v1 --------------------------------------------------------------------------------

LOCAL_OBJECT_REFERENCE: Schema = {1: F("name", STR)}
OBJECT_REFERENCE: Schema = {
    1: F("kind", STR),
    2: F("namespace", STR),
    3: F("name", STR),
    4: F("uid", STR),
    5: F("apiVersion", STR),
    6: F("resourceVersion", STR),
    7: F("fieldPath", STR),
}
CONFIG_MAP: Schema = {
    1: F("metadata", OBJECT_META),
    4: F("immutable", BOOL, keep=True),
    2: _map("data", STR),
    3: _map("binaryData", BYTES),
}
SECRET: Schema = {
    1: F("metadata", OBJECT_META),
    5: F("immutable", BOOL, keep=True),
    2: _map("data", BYTES),
    4: _map("stringData", STR),
    3: F("type", STR),
}
NAMESPACE: Schema = {
    1: F("metadata", OBJECT_META),
    2: F("spec", {1: _rep("finalizers", STR)}),
    3: F("status", {1: F("phase", STR)}),
}
SERVICE_ACCOUNT: Schema = {
    1: F("metadata", OBJECT_META),
    2: _rep("secrets", OBJECT_REFERENCE),
    3: _rep("imagePullSecrets", LOCAL_OBJECT_REFERENCE),
    4: F("automountServiceAccountToken", BOOL, keep=True),
}
SERVICE_PORT: Schema = {
    1: F("name", STR),
    2: F("protocol", STR),
    6: F("appProtocol", STR, keep=True),
    3: F("port", INT),
    4: F("targetPort", INT_OR_STRING),
    5: F("nodePort", INT),
}
SERVICE_SPEC: Schema = {
    1: _rep("ports", SERVICE_PORT),
    2: _map("selector", STR),
    3: F("clusterIP", STR),
    18: _rep("clusterIPs", STR),
    4: F("type", STR),
    5: _rep("externalIPs", STR),
    7: F("sessionAffinity", STR),
    8: F("loadBalancerIP", STR),
    9: _rep("loadBalancerSourceRanges", STR),
    10: F("externalName", STR),
    11: F("externalTrafficPolicy", STR),
    12: F("healthCheckNodePort", INT),
    13: F("publishNotReadyAddresses", BOOL),
    19: _rep("ipFamilies", STR),
    17: F("ipFamilyPolicy", STR, keep=True),
    20: F("allocateLoadBalancerNodePorts", BOOL, keep=True),
    21: F("loadBalancerClass", STR, keep=True),
    22: F("internalTrafficPolicy", STR, keep=True),
}
SERVICE: Schema = {
    1: F("metadata", OBJECT_META),
    2: F("spec", SERVICE_SPEC),
    3: F("status", {}),
}
KEY_SELECTOR: Schema = {
    1: F("", LOCAL_OBJECT_REFERENCE, inline=True),
    2: F("key", STR),
    3: F("optional", BOOL, keep=True),
}
ENV_VAR_SOURCE: Schema = {
    1: F("fieldRef", {1: F("apiVersion", STR), 2: F("fieldPath", STR)}),
    2: F(
        "resourceFieldRef",
        {1: F("containerName", STR), 2: F("resource", STR), 3: F("divisor", QUANTITY)},
    ),
    3: F("configMapKeyRef", KEY_SELECTOR),
    4: F("secretKeyRef", KEY_SELECTOR),
}
ENV_VAR: Schema = {1: F("name", STR), 2: F("value", STR), 3: F("valueFrom", ENV_VAR_SOURCE)}
ENV_FROM_SOURCE: Schema = {
    1: F("prefix", STR),
    2: F(
        "configMapRef",
        {1: F("", LOCAL_OBJECT_REFERENCE, inline=True), 2: F("optional", BOOL, keep=True)},
    ),
    3: F(
        "secretRef",
        {1: F("", LOCAL_OBJECT_REFERENCE, inline=True), 2: F("optional", BOOL, keep=True)},
    ),
}
CONTAINER_PORT: Schema = {
    1: F("name", STR),
    2: F("hostPort", INT),
    3: F("containerPort", INT),
    4: F("protocol", STR),
    5: F("hostIP", STR),
}
RESOURCE_REQUIREMENTS: Schema = {
    1: _map("limits", QUANTITY),
    2: _map("requests", QUANTITY),
}
VOLUME_MOUNT: Schema = {
    1: F("name", STR),
    2: F("readOnly", BOOL),
    3: F("mountPath", STR),
    4: F("subPath", STR),
    6: F("subPathExpr", STR),
}
CONTAINER: Schema = {
    1: F("name", STR),
    2: F("image", STR),
    3: _rep("command", STR),
    4: _rep("args", STR),
    5: F("workingDir", STR),
    6: _rep("ports", CONTAINER_PORT),
    19: _rep("envFrom", ENV_FROM_SOURCE),
    7: _rep("env", ENV_VAR),
    8: F("resources", RESOURCE_REQUIREMENTS),
    9: _rep("volumeMounts", VOLUME_MOUNT),
    13: F("terminationMessagePath", STR),
    20: F("terminationMessagePolicy", STR),
    14: F("imagePullPolicy", STR),
    16: F("stdin", BOOL),
    17: F("stdinOnce", BOOL),
    18: F("tty", BOOL),
}
KEY_TO_PATH: Schema = {1: F("key", STR), 2: F("path", STR), 3: F("mode", INT, keep=True)}
VOLUME_SOURCE: Schema = {
    1: F("hostPath", {1: F("path", STR), 2: F("type", STR, keep=True)}),
    2: F("emptyDir", {1: F("medium", STR), 2: F("sizeLimit", QUANTITY)}),
    6: F(
        "secret",
        {
            1: F("secretName", STR),
            2: _rep("items", KEY_TO_PATH),
            3: F("defaultMode", INT, keep=True),
            4: F("optional", BOOL, keep=True),
        },
    ),
    10: F("persistentVolumeClaim", {1: F("claimName", STR), 2: F("readOnly", BOOL)}),
    19: F(
        "configMap",
        {
            1: F("", LOCAL_OBJECT_REFERENCE, inline=True),
            2: _rep("items", KEY_TO_PATH),
            3: F("defaultMode", INT, keep=True),
            4: F("optional", BOOL, keep=True),
        },
    ),
}
VOLUME: Schema = {1: F("name", STR), 2: F("", VOLUME_SOURCE, inline=True)}
TOLERATION: Schema = {
    1: F("key", STR),
    2: F("operator", STR),
    3: F("value", STR),
    4: F("effect", STR),
    5: F("tolerationSeconds", INT, keep=True),
}
POD_SPEC: Schema = {
    1: _rep("volumes", VOLUME),
    20: _rep("initContainers", CONTAINER),
    2: _rep("containers", CONTAINER),
    3: F("restartPolicy", STR),
    4: F("terminationGracePeriodSeconds", INT, keep=True),
    5: F("activeDeadlineSeconds", INT, keep=True),
    6: F("dnsPolicy", STR),
    7: _map("nodeSelector", STR),
    8: F("serviceAccountName", STR),
    9: F("serviceAccount", STR),
    21: F("automountServiceAccountToken", BOOL, keep=True),
    10: F("nodeName", STR),
    11: F("hostNetwork", BOOL),
    12: F("hostPID", BOOL),
    13: F("hostIPC", BOOL),
    14: F("securityContext", {}),
    15: _rep("imagePullSecrets", LOCAL_OBJECT_REFERENCE),
    16: F("hostname", STR),
    17: F("subdomain", STR),
    19: F("schedulerName", STR),
    22: _rep("tolerations", TOLERATION),
    24: F("priorityClassName", STR),
    25: F("priority", INT, keep=True),
    29: F("runtimeClassName", STR, keep=True),
    30: F("enableServiceLinks", BOOL, keep=True),
    31: F("preemptionPolicy", STR, keep=True),
}
POD_TEMPLATE_SPEC: Schema = {1: F("metadata", OBJECT_META), 2: F("spec", POD_SPEC)}
POD: Schema = {1: F("metadata", OBJECT_META), 2: F("spec", POD_SPEC), 3: F("status", {})}

# -- apps/v1 --------------------------------------------------------------------------------

DEPLOYMENT: Schema = {
    1: F("metadata", OBJECT_META),
    2: F(
        "spec",
        {
            1: F("replicas", INT, keep=True),
            2: F("selector", LABEL_SELECTOR),
            3: F("template", POD_TEMPLATE_SPEC),
            4: F(
                "strategy",
                {
                    1: F("type", STR),
                    2: F(
                        "rollingUpdate",
                        {1: F("maxUnavailable", INT_OR_STRING), 2: F("maxSurge", INT_OR_STRING)},
                    ),
                },
            ),
            5: F("minReadySeconds", INT),
            6: F("revisionHistoryLimit", INT, keep=True),
            7: F("paused", BOOL),
            9: F("progressDeadlineSeconds", INT, keep=True),
        },
    ),
    3: F("status", {}),
}

# -- authentication.k8s.io, authorization.k8s.io --------------------------------------------

USER_INFO: Schema = {
    1: F("username", STR),
    2: F("uid", STR),
    3: _rep("groups", STR),
    4: _map("extra", EXTRA),
}
SELF_SUBJECT_REVIEW: Schema = {
    1: F("metadata", OBJECT_META),
    2: F("status", {1: F("userInfo", USER_INFO)}),
}
TOKEN_REQUEST: Schema = {
    1: F("metadata", OBJECT_META),
    2: F(
        "spec",
        {
            1: _rep("audiences", STR),
            4: F("expirationSeconds", INT, keep=True),
            3: F(
                "boundObjectRef",
                {1: F("kind", STR), 2: F("apiVersion", STR), 3: F("name", STR), 4: F("uid", STR)},
            ),
        },
    ),
    3: F("status", {1: F("token", STR), 2: F("expirationTimestamp", TIME)}),
}
TOKEN_REVIEW: Schema = {
    1: F("metadata", OBJECT_META),
    2: F("spec", {1: F("token", STR), 2: _rep("audiences", STR)}),
    3: F("status", {}),
}
_SELECTOR_ATTRIBUTES: Schema = {
    1: F("rawSelector", STR),
    2: _rep("requirements", LABEL_SELECTOR_REQUIREMENT),
}
RESOURCE_ATTRIBUTES: Schema = {
    1: F("namespace", STR),
    2: F("verb", STR),
    3: F("group", STR),
    4: F("version", STR),
    5: F("resource", STR),
    6: F("subresource", STR),
    7: F("name", STR),
    8: F("fieldSelector", _SELECTOR_ATTRIBUTES),
    9: F("labelSelector", _SELECTOR_ATTRIBUTES),
}
NON_RESOURCE_ATTRIBUTES: Schema = {1: F("path", STR), 2: F("verb", STR)}
SELF_SUBJECT_ACCESS_REVIEW: Schema = {
    1: F("metadata", OBJECT_META),
    2: F(
        "spec",
        {
            1: F("resourceAttributes", RESOURCE_ATTRIBUTES),
            2: F("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES),
        },
    ),
    3: F("status", {}),
}
SUBJECT_ACCESS_REVIEW: Schema = {
    1: F("metadata", OBJECT_META),
    2: F(
        "spec",
        {
            1: F("resourceAttributes", RESOURCE_ATTRIBUTES),
            2: F("nonResourceAttributes", NON_RESOURCE_ATTRIBUTES),
            3: F("user", STR),
            4: _rep("groups", STR),
            5: _map("extra", EXTRA),
            6: F("uid", STR),
        },
    ),
    3: F("status", {}),
}
SELF_SUBJECT_RULES_REVIEW: Schema = {
    1: F("metadata", OBJECT_META),
    2: F("spec", {1: F("namespace", STR)}),
    3: F("status", {}),
}

RESOURCE_QUOTA: Schema = {
    1: F("metadata", OBJECT_META),
    2: F(
        "spec",
        {
            1: _map("hard", QUANTITY),
            2: _rep("scopes", STR),
        },
    ),
    3: F("status", {}),
}
EVICTION: Schema = {1: F("metadata", OBJECT_META), 2: F("deleteOptions", DELETE_OPTIONS)}
BINDING: Schema = {1: F("metadata", OBJECT_META), 2: F("target", OBJECT_REFERENCE)}
SCALE: Schema = {
    1: F("metadata", OBJECT_META),
    2: F("spec", {1: F("replicas", INT, keep=True)}),
    3: F("status", {1: F("replicas", INT), 2: F("selector", STR)}),
}

# -- k8s.io/api/rbac/v1 --------------------------------------------------------------------------

POLICY_RULE: Schema = {
    1: _rep("verbs", STR),
    2: _rep("apiGroups", STR),
    3: _rep("resources", STR),
    4: _rep("resourceNames", STR),
    5: _rep("nonResourceURLs", STR),
}
ROLE: Schema = {1: F("metadata", OBJECT_META), 2: _rep("rules", POLICY_RULE)}
CLUSTER_ROLE: Schema = {
    1: F("metadata", OBJECT_META),
    2: _rep("rules", POLICY_RULE),
    3: F("aggregationRule", {1: _rep("clusterRoleSelectors", LABEL_SELECTOR)}),
}
_SUBJECT: Schema = {
    1: F("kind", STR),
    2: F("apiGroup", STR),
    3: F("name", STR),
    4: F("namespace", STR),
}
_ROLE_REF: Schema = {1: F("apiGroup", STR), 2: F("kind", STR), 3: F("name", STR)}
ROLE_BINDING: Schema = {
    1: F("metadata", OBJECT_META),
    2: _rep("subjects", _SUBJECT),
    3: F("roleRef", _ROLE_REF),
}

# (group, kind) -> schema. Versions of a kind share their wire format here.
KINDS: dict[tuple[str, str], Schema] = {
    ("", "ConfigMap"): CONFIG_MAP,
    ("", "Secret"): SECRET,
    ("", "Namespace"): NAMESPACE,
    ("", "ServiceAccount"): SERVICE_ACCOUNT,
    ("", "Service"): SERVICE,
    ("", "Pod"): POD,
    ("apps", "Deployment"): DEPLOYMENT,
    ("", "ResourceQuota"): RESOURCE_QUOTA,
    ("", "Binding"): BINDING,
    ("policy", "Eviction"): EVICTION,
    ("autoscaling", "Scale"): SCALE,
    ("authentication.k8s.io", "SelfSubjectReview"): SELF_SUBJECT_REVIEW,
    ("authentication.k8s.io", "TokenRequest"): TOKEN_REQUEST,
    ("authentication.k8s.io", "TokenReview"): TOKEN_REVIEW,
    ("authorization.k8s.io", "SelfSubjectAccessReview"): SELF_SUBJECT_ACCESS_REVIEW,
    ("authorization.k8s.io", "LocalSubjectAccessReview"): SUBJECT_ACCESS_REVIEW,
    ("authorization.k8s.io", "SubjectAccessReview"): SUBJECT_ACCESS_REVIEW,
    ("authorization.k8s.io", "SelfSubjectRulesReview"): SELF_SUBJECT_RULES_REVIEW,
    ("rbac.authorization.k8s.io", "Role"): ROLE,
    ("rbac.authorization.k8s.io", "ClusterRole"): CLUSTER_ROLE,
    ("rbac.authorization.k8s.io", "RoleBinding"): ROLE_BINDING,
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): ROLE_BINDING,
    ("meta.k8s.io", "DeleteOptions"): DELETE_OPTIONS,
    ("", "DeleteOptions"): DELETE_OPTIONS,
}


# -- wire format ----------------------------------------------------------------------------


class DecodeError(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise DecodeError("varint too long")


def fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value): ints for varint/fixed, bytes for length-delimited."""
    out = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise DecodeError("truncated field")
            value = buf[pos : pos + length]
            pos += length
        elif wire == 5:
            value = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire}")
        out.append((num, wire, value))
    if pos != len(buf):
        raise DecodeError("trailing bytes")
    return out


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _time(buf: bytes, micro: bool = False) -> str | None:
    seconds = nanos = 0
    for num, _, value in fields(buf):
        if num == 1:
            seconds = _signed(value)
        elif num == 2:
            nanos = _signed(value)
    if seconds in (0, _ZERO_TIME) and nanos == 0:
        return None  # metav1.Time{} (encoded as an empty message, or as Go's zero time)
    t = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    if micro:
        return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{nanos // 1000:06d}Z"
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _scalar(typ: Any, wire: int, value: Any) -> Any:
    if isinstance(typ, dict):
        return decode_message(value, typ)
    if typ == STR:
        return value.decode("utf-8")
    if typ == BYTES:
        return base64.b64encode(value).decode()
    if typ == INT:
        return _signed(value)
    if typ == BOOL:
        return bool(value)
    if typ == TIME:
        return _time(value)
    if typ == MICROTIME:
        return _time(value, micro=True)
    if typ == QUANTITY:
        return next((v.decode() for n, _, v in fields(value) if n == 1), "")
    if typ == INT_OR_STRING:
        kind, ival, sval = 0, 0, ""
        for n, _, v in fields(value):
            if n == 1:
                kind = v
            elif n == 2:
                ival = _signed(v)
            elif n == 3:
                sval = v.decode()
        return sval if kind == 1 else ival
    if typ == FIELDS_V1:
        raw = next((v for n, _, v in fields(value) if n == 1), b"{}")
        return json.loads(raw or b"{}")
    if typ == EXTRA:
        return [v.decode() for n, _, v in fields(value) if n == 1]
    raise DecodeError(f"unknown type {typ}")


def _is_zero(value: Any) -> bool:
    return value is None or value == "" or value is False or (value == 0 and value is not True)


def decode_message(buf: bytes, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for num, wire, value in fields(buf):
        f = schema.get(num)
        if f is None:
            continue
        if f.type == "map":
            key = val = None
            for n, w, v in fields(value):
                if n == 1:
                    key = v.decode()
                elif n == 2:
                    val = _scalar(f.map_value, w, v)
            if key is None:
                continue
            if val is None:
                val = "" if f.map_value in (STR, BYTES) else ([] if f.map_value == EXTRA else val)
            out.setdefault(f.name, {})[key] = val
            continue
        if f.repeated and f.type in (INT, BOOL) and wire == 2:
            pos, items = 0, []
            while pos < len(value):
                item, pos = _varint(value, pos)
                items.append(_scalar(f.type, 0, item))
            out.setdefault(f.name, []).extend(items)
            continue
        decoded = _scalar(f.type, wire, value)
        if f.inline and isinstance(decoded, dict):
            out.update(decoded)
        elif f.repeated:
            out.setdefault(f.name, []).append(decoded)
        elif decoded is None or (not f.keep and not isinstance(f.type, dict) and _is_zero(decoded)):
            continue
        else:
            out[f.name] = decoded
    return out


def unwrap(raw: bytes) -> tuple[str, str, bytes]:
    """Split the envelope: (apiVersion, kind, object bytes)."""
    if not raw.startswith(MAGIC):
        raise DecodeError(
            "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]"
        )
    api_version = kind = ""
    payload = b""
    for num, _, value in fields(raw[len(MAGIC) :]):
        if num == 1:
            for n, _, v in fields(value):
                if n == 1:
                    api_version = v.decode()
                elif n == 2:
                    kind = v.decode()
        elif num == 2:
            payload = value
    return api_version, kind, payload


def decode_object(raw: bytes) -> dict[str, Any]:
    """A protobuf request body as the JSON object it stands for.

    Raises ApiError 400 for malformed data, 415 for kinds this stand-in has no schema for.
    """
    try:
        api_version, kind, payload = unwrap(raw)
    except DecodeError as exc:
        raise bad_request(str(exc)) from exc
    group = api_version.split("/", 1)[0] if "/" in api_version else ""
    schema = KINDS.get((group, kind))
    if schema is None:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the stand-in API server cannot decode {kind} ({api_version}) from protobuf; "
            f"send application/json",
        )
    try:
        obj = decode_message(payload, schema)
    except (DecodeError, UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"unable to decode {kind} from protobuf: {exc}") from exc
    return {"kind": kind, "apiVersion": api_version, **obj}


# -- encoding (for tests) -------------------------------------------------------------------


def _key(num: int, wire: int) -> bytes:
    return _enc_varint((num << 3) | wire)


def _enc_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _enc_varint(len(payload)) + payload


def _encode_value(typ: Any, value: Any) -> tuple[int, bytes]:
    """(wire type, bytes without key)."""
    if isinstance(typ, dict):
        return 2, _with_len(encode_message(value, typ))
    if typ == STR:
        return 2, _with_len(str(value).encode())
    if typ == BYTES:
        return 2, _with_len(base64.b64decode(value))
    if typ in (INT, BOOL):
        return 0, _enc_varint(int(value))
    if typ in (TIME, MICROTIME):
        t = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return 2, _with_len(_key(1, 0) + _enc_varint(int(t.timestamp())))
    if typ == QUANTITY:
        return 2, _with_len(_ld(1, str(value).encode()))
    if typ == INT_OR_STRING:
        if isinstance(value, str):
            body = _key(1, 0) + _enc_varint(1) + _ld(3, value.encode())
        else:
            body = _key(1, 0) + _enc_varint(0) + _key(2, 0) + _enc_varint(int(value))
        return 2, _with_len(body)
    if typ == FIELDS_V1:
        return 2, _with_len(_ld(1, json.dumps(value).encode()))
    if typ == EXTRA:
        return 2, _with_len(b"".join(_ld(1, str(v).encode()) for v in value))
    raise ValueError(typ)


def _with_len(payload: bytes) -> bytes:
    return _enc_varint(len(payload)) + payload


def encode_message(obj: dict[str, Any], schema: Schema) -> bytes:
    out = bytearray()
    for num, f in sorted(schema.items()):
        if f.inline:
            out += _ld(num, encode_message(obj, f.type))
            continue
        if f.name not in obj or obj[f.name] is None:
            continue
        value = obj[f.name]
        if f.type == "map":
            for k, v in value.items():
                wire, enc = _encode_value(f.map_value, v)
                entry = _ld(1, k.encode()) + _key(2, wire) + enc
                out += _ld(num, entry)
        elif f.repeated:
            for item in value:
                wire, enc = _encode_value(f.type, item)
                out += _key(num, wire) + enc
        else:
            wire, enc = _encode_value(f.type, value)
            out += _key(num, wire) + enc
    return bytes(out)


def encode_object(obj: dict[str, Any]) -> bytes:
    """Encode a JSON-shaped object of a known kind the way client-go does (tests use this)."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    group = api_version.split("/", 1)[0] if "/" in api_version else ""
    schema = KINDS[(group, kind)]
    type_meta = _ld(1, api_version.encode()) + _ld(2, kind.encode())
    unknown = _ld(1, type_meta) + _ld(2, encode_message(obj, schema)) + _ld(4, b"")
    return MAGIC + unknown


def length_delimited(num: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2)."""
    return _ld(num, payload)
