"""Defaulting, validation and synthetic status for the built-in kinds."""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import itertools
import json
import re
from typing import Any

from .resources import ResourceType
from .status import bad_request, invalid

NODE_NAME = "standin-node"
NODE_IP = "10.0.0.10"
KUBELET_VERSION = "v1.32.0"

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def field_error(kind: str, field: str, detail: str, value: Any = None) -> dict[str, str]:
    """A StatusCause as field.Error.ErrorBody() words it."""
    if kind == "FieldValueRequired":
        message = f"Required value: {detail}" if detail else "Required value"
    elif kind == "FieldValueInvalid":
        shown = json.dumps(value) if isinstance(value, str) else str(value)
        message = f"Invalid value: {shown}: {detail}"
    elif kind == "FieldValueNotSupported":
        message = f"Unsupported value: {json.dumps(value)}: {detail}"
    else:
        message = detail
    return {"reason": kind, "message": message, "field": field}


def _cause(kind: str, field: str, detail: str, value: Any = None) -> dict[str, str]:
    err = field_error(kind, field, detail, value)
    return {"type": err["reason"], "message": err["message"], "field": err["field"]}


def validate_name(rt: ResourceType, name: str, generate_name: str) -> list[dict[str, str]]:
    if not name:
        if generate_name:
            return []
        return [_cause("FieldValueRequired", "metadata.name", "name or generateName is required")]
    if rt.resource == "namespaces":
        ok, msg, limit = bool(_LABEL.match(name)), _LABEL_MSG, 63
    elif rt.resource == "services":
        ok, msg, limit = bool(_DNS1035.match(name)), _DNS1035_MSG, 63
    elif rt.resource in ("selfsubjectreviews", "selfsubjectaccessreviews", "tokenreviews"):
        return []
    elif rt.group == "rbac.authorization.k8s.io":
        return []  # path segment names (`system:basic-user`), checked by rbac.validate
    else:
        ok, msg, limit = bool(_SUBDOMAIN.match(name)), _SUBDOMAIN_MSG, 253
    causes = []
    if len(name) > limit:
        causes.append(
            _cause(
                "FieldValueInvalid",
                "metadata.name",
                f"must be no more than {limit} characters",
                name,
            )
        )
    if not ok:
        causes.append(_cause("FieldValueInvalid", "metadata.name", msg, name))
    return causes


def validate(rt: ResourceType, obj: dict[str, Any]) -> None:
    meta = obj.get("metadata") or {}
    causes = validate_name(rt, meta.get("name", ""), meta.get("generateName", ""))
    if (rt.group, rt.resource) == ("", "pods"):
        containers = (obj.get("spec") or {}).get("containers") or []
        if not containers:
            causes.append(_cause("FieldValueRequired", "spec.containers", ""))
        for i, c in enumerate(containers):
            if not c.get("name"):
                causes.append(_cause("FieldValueRequired", f"spec.containers[{i}].name", ""))
            if not c.get("image"):
                causes.append(_cause("FieldValueRequired", f"spec.containers[{i}].image", ""))
    if (rt.group, rt.resource) == ("", "configmaps"):
        for key in itertools.chain((obj.get("data") or {}), (obj.get("binaryData") or {})):
            if not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
                causes.append(
                    _cause(
                        "FieldValueInvalid",
                        "data",
                        "a valid config key must consist of alphanumeric characters, '-', '_' "
                        "or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for "
                        "validation is '[-._a-zA-Z0-9]+')",
                        key,
                    )
                )
    if causes:
        raise invalid(
            rt.group, rt.kind, meta.get("name", "") or meta.get("generateName", ""), causes
        )


# -- defaulting -----------------------------------------------------------------------------

_ip_counter = itertools.count(2)
_svc_counter = itertools.count(10)


def _container_defaults(c: dict[str, Any]) -> None:
    image = c.get("image", "")
    tagless = ":" not in image.rsplit("/", 1)[-1] and "@" not in image
    c.setdefault(
        "imagePullPolicy",
        "Always" if tagless or image.endswith(":latest") else "IfNotPresent",
    )
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})
    for port in c.get("ports") or []:
        port.setdefault("protocol", "TCP")


def _container_id(pod: dict[str, Any], name: str) -> str:
    uid = (pod.get("metadata") or {}).get("uid", "")
    return "containerd://" + hashlib.sha256(f"{uid}/{name}".encode()).hexdigest()


PHASE_ANNOTATION = "standin.herdgate.dev/phase"


def pod_status(pod: dict[str, Any]) -> dict[str, Any]:
    """A plausible status for a pod that the stand-in "runs" on its only node."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    started = meta.get("creationTimestamp") or now_rfc3339()
    phase = (meta.get("annotations") or {}).get(PHASE_ANNOTATION, "Running")
    running = phase == "Running"
    ip = (pod.get("status") or {}).get("podIP") or f"10.244.0.{next(_ip_counter) % 250 + 2}"

    def cond(kind: str, ok: bool) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True" if ok else "False",
            "lastProbeTime": None,
            "lastTransitionTime": started,
        }

    statuses = []
    for c in spec.get("containers") or []:
        if running:
            state: dict[str, Any] = {"running": {"startedAt": started}}
        elif phase == "Succeeded":
            state = {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": started,
                    "finishedAt": started,
                    "containerID": _container_id(pod, c.get("name", "")),
                }
            }
        elif phase == "Failed":
            state = {
                "terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "startedAt": started,
                    "finishedAt": started,
                    "containerID": _container_id(pod, c.get("name", "")),
                }
            }
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        image = c.get("image", "")
        statuses.append(
            {
                "name": c.get("name", ""),
                "state": state,
                "lastState": {},
                "ready": running,
                "restartCount": 0,
                "image": image if "/" in image.split(":")[0] else f"docker.io/library/{image}",
                "imageID": "docker.io/library/"
                + image.split(":")[0]
                + "@sha256:"
                + hashlib.sha256(image.encode()).hexdigest(),
                "containerID": _container_id(pod, c.get("name", "")),
                "started": running,
            }
        )
    return {
        "phase": phase,
        "conditions": [
            cond("PodReadyToStartContainers", True),
            cond("Initialized", True),
            cond("Ready", running),
            cond("ContainersReady", running),
            cond("PodScheduled", True),
        ],
        "hostIP": NODE_IP,
        "hostIPs": [{"ip": NODE_IP}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": started,
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    }


def _decode_secret_data(obj: dict[str, Any]) -> None:
    for key, value in (obj.get("data") or {}).items():
        if not isinstance(value, str):
            continue
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise bad_request(
                f'Secret in version "v1" cannot be handled as a Secret: illegal base64 data at '
                f"input byte {_bad_b64_offset(value)}"
            ) from exc
        del key
    string_data = obj.pop("stringData", None)
    if string_data:
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()


def _bad_b64_offset(value: str) -> int:
    for i, ch in enumerate(value):
        if not (ch.isalnum() or ch in "+/="):
            return i
    return len(value)


def apply_defaults(rt: ResourceType, obj: dict[str, Any], *, creating: bool) -> None:
    """Defaulting on create and update (what the real strategies and admission add)."""
    key = (rt.group, rt.resource)
    meta = obj.setdefault("metadata", {})
    if key == ("", "namespaces"):
        labels = meta.setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = meta.get("name", "")
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif key == ("", "secrets"):
        _decode_secret_data(obj)
        obj.setdefault("type", "Opaque")
    elif key == ("", "pods"):
        spec = obj.setdefault("spec", {})
        for c in itertools.chain(spec.get("containers") or [], spec.get("initContainers") or []):
            _container_defaults(c)
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault("securityContext", {})
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        spec.setdefault("priority", 0)
        spec.setdefault(
            "tolerations",
            [
                {
                    "key": f"node.kubernetes.io/{t}",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
                for t in ("not-ready", "unreachable")
            ],
        )
        if creating:
            spec.setdefault("nodeName", NODE_NAME)
            obj["status"] = pod_status(obj)
    elif key == ("", "services"):
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        if spec["type"] != "ExternalName":
            if creating and not spec.get("clusterIP"):
                n = next(_svc_counter)
                spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
            if spec.get("clusterIP") and spec.get("clusterIP") != "None":
                spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        obj.setdefault("status", {"loadBalancer": {}})
    elif key == ("apps", "deployments"):
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault(
            "strategy",
            {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
            },
        )
        template_spec = (spec.get("template") or {}).get("spec") or {}
        for c in template_spec.get("containers") or []:
            _container_defaults(c)


def finish(rt: ResourceType, obj: dict[str, Any]) -> None:
    """What controllers would do right away: deployments report all replicas available."""
    if (rt.group, rt.resource) != ("apps", "deployments"):
        return
    spec = obj.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    now = now_rfc3339()
    name = (obj.get("metadata") or {}).get("name", "")
    obj["status"] = {
        "observedGeneration": (obj.get("metadata") or {}).get("generation", 1),
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
                "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.",
            },
            {
                "type": "Progressing",
                "status": "True",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
                "reason": "NewReplicaSetAvailable",
                "message": f'ReplicaSet "{name}-standin" has successfully progressed.',
            },
        ],
    }
    if replicas == 0:
        for key in ("readyReplicas", "availableReplicas", "updatedReplicas"):
            obj["status"].pop(key)


def default_node() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/control-plane": "",
            },
        },
        "spec": {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": now_rfc3339(),
                    "lastTransitionTime": now_rfc3339(),
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": NODE_IP},
                {"type": "Hostname", "address": NODE_NAME},
            ],
            "nodeInfo": {
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "osImage": "Stand-in Linux",
                "kernelVersion": "6.1.0",
                "containerRuntimeVersion": "containerd://1.7.0",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
        },
    }


def kubernetes_service() -> dict[str, Any]:
    """The `default/kubernetes` Service every cluster has."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "clusterIP": "10.96.0.1",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
            "type": "ClusterIP",
        },
    }
