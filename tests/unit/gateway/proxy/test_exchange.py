"""Exchange.finish: one audit record (or session record) and one count per request."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any, cast

from prometheus_client import REGISTRY

from config.identity import Identity
from config.schema import AuditSettings
from gateway.proxy.exchange import CLIENT_CLOSED, Exchange
from gateway.proxy.model import Request
from gateway.proxy.requestinfo import request_info
from gateway.telemetry import metrics
from gateway.telemetry.audit import AuditLog, new_request_id

BOB = Identity("u-bob", "bob", "local://u-bob", ("g1",), token_id="token-abc12")
SECRET = "token-abc12:s3cr3t-value"


class _Side:
    """The connection a request came on (``gateway.proxy.model.RequestSide``), inert."""

    closing = False
    transport = None

    def __init__(self, remote: str) -> None:
        self.remote = remote

    def continue_if_expected(self, request: Request) -> None:
        return None

    def body_backlogged(self) -> None:
        return None

    def body_read(self, size: int, held: int) -> None:
        return None

    def cut(self) -> None:
        return None

    def start_answer(self, *args: Any) -> Any:
        raise AssertionError("not answered here")


def request_of(method: str, raw_path: str, remote: str = "10.1.2.3") -> Request:
    """A client's request as a front makes it (``remote`` empty when unknown)."""
    headers = [(b"User-Agent", b"kubectl/v1.30.0"), (b"Authorization", f"Bearer {SECRET}".encode())]
    return Request(
        _Side(remote),
        method,
        raw_path,
        "1.1",
        headers,
        keep_alive=True,
        upgrade=False,
        content_length=None,
        body_exists=False,
        expect_continue=False,
        authorization=f"Bearer {SECRET}",
        user_agent="kubectl/v1.30.0",
        impersonates=False,
    )


def _auditor(tmp_path: Path) -> AuditLog:
    return AuditLog(AuditSettings(), tmp_path)


def _records(tmp_path: Path) -> list[dict[str, Any]]:
    text = (tmp_path / "audit.log").read_text()
    assert SECRET not in text
    return [json.loads(line) for line in text.splitlines()]


def _count(cluster: str, verb: str, code: str) -> float:
    metrics.HOT.flush()  # as a scrape does
    labels = {"cluster": cluster, "verb": verb, "code": code}
    return REGISTRY.get_sample_value("herdgate_requests_total", labels) or 0.0


def _exchange(auditor: AuditLog, method: str, target: str, upgrade: bool = False) -> Exchange:
    ex = Exchange(auditor)
    ex.identity = BOB
    ex.role = "cluster-member"
    ex.cluster_id = f"c-{uuid.uuid4().hex[:6]}"
    ex.cluster_known = True
    ex.target = target
    ex.info = request_info(method, target, upgrade)
    return ex


def test_request_ids_are_uuids() -> None:
    assert re.fullmatch(r"[0-9a-f-]{36}", new_request_id())
    assert new_request_id() != new_request_id()


def test_finish_writes_one_request_record_and_counts_it(tmp_path: Path) -> None:
    auditor = _auditor(tmp_path)
    target = "/api/v1/namespaces/ns/pods/web-0"
    ex = _exchange(auditor, "GET", target)
    ex.status = 200
    request = request_of("GET", f"/k8s/clusters/{ex.cluster_id}{target}")
    before = _count(ex.cluster_id, "get", "200")
    ex.finish(cast(Any, request))
    auditor.close()
    assert _count(ex.cluster_id, "get", "200") - before == 1
    [record] = _records(tmp_path)
    assert record["kind"] == "request"
    assert record["requestId"] == ex.request_id
    assert (record["user"], record["username"], record["role"]) == (
        "u-bob",
        "bob",
        "cluster-member",
    )
    assert record["tokenId"] == "token-abc12"
    assert record["cluster"] == ex.cluster_id
    assert (record["verb"], record["method"], record["path"]) == ("get", "GET", target)
    assert (record["resource"], record["namespace"], record["name"]) == ("pods", "ns", "web-0")
    assert (record["sourceIP"], record["userAgent"]) == ("10.1.2.3", "kubectl/v1.30.0")
    assert record["status"] == 200
    assert record["durationMs"] >= 0
    assert record["time"].endswith("Z")


def test_a_body_is_recorded_as_extra(tmp_path: Path) -> None:
    auditor = AuditLog(AuditSettings(level="request"), tmp_path)
    ex = _exchange(auditor, "POST", "/api/v1/namespaces/ns/configmaps")
    assert ex.wants_body
    ex.status = 201
    ex.audit_body = {"requestObject": {"kind": "ConfigMap"}}
    ex.finish(cast(Any, request_of("POST", "/whatever")))
    auditor.close()
    [record] = _records(tmp_path)
    assert (record["verb"], record["status"]) == ("create", 201)
    assert record["requestObject"] == {"kind": "ConfigMap"}


def test_status_0_is_recorded_as_client_closed(tmp_path: Path) -> None:
    auditor = _auditor(tmp_path)
    ex = _exchange(auditor, "GET", "/api/v1/namespaces/ns/pods")
    before = _count(ex.cluster_id, "list", "499")
    ex.finish(cast(Any, request_of("GET", "/x", remote="")))
    auditor.close()
    assert CLIENT_CLOSED == 499
    assert _count(ex.cluster_id, "list", "499") - before == 1
    [record] = _records(tmp_path)
    assert (record["status"], record["verb"], record["sourceIP"]) == (499, "list", "")


def test_a_request_that_failed_before_routing(tmp_path: Path) -> None:
    """No cluster, caller or info yet (say, a bad token): recorded, not counted."""
    auditor = _auditor(tmp_path)
    ex = Exchange(auditor)
    ex.status = 401
    ex.finish(cast(Any, request_of("DELETE", "/k8s/clusters/c-x/api/v1/nodes/n1?token=abc")))
    auditor.close()
    [record] = _records(tmp_path)
    assert record["user"] is None
    assert (record["verb"], record["status"], record["cluster"]) == ("delete", 401, "")
    assert record["path"] == "/k8s/clusters/c-x/api/v1/nodes/n1?token=<redacted>"


def test_an_upgraded_session_writes_started_and_ended_records(tmp_path: Path) -> None:
    auditor = _auditor(tmp_path)
    target = "/api/v1/namespaces/ns/pods/web-0/exec?command=sh&stdin=true&tty=true"
    ex = _exchange(auditor, "POST", target, upgrade=True)
    request = request_of("POST", target)
    ex.session_started(cast(Any, request))
    ex.status = 101
    ex.bytes_from_client, ex.bytes_to_client = 42, 4096
    before = _count(ex.cluster_id, "connect", "101")
    ex.finish(cast(Any, request))
    auditor.close()
    assert _count(ex.cluster_id, "connect", "101") - before == 1
    started, ended = _records(tmp_path)
    assert (started["kind"], started["stage"]) == ("session", "started")
    assert "bytesToClient" not in started
    assert (ended["kind"], ended["stage"]) == ("session", "ended")
    assert ended["requestId"] == started["requestId"] == ex.request_id
    assert (ended["verb"], ended["resource"], ended["name"]) == ("connect", "pods/exec", "web-0")
    assert (ended["bytesFromClient"], ended["bytesToClient"]) == (42, 4096)
    assert ended["user"] == "u-bob"
    assert ended["cluster"] == ex.cluster_id
    assert ended["durationMs"] >= 0
    assert ended["start"] == started["start"]


def test_a_refused_upgrade_is_a_request_record(tmp_path: Path) -> None:
    auditor = _auditor(tmp_path)
    ex = _exchange(auditor, "POST", "/api/v1/namespaces/ns/pods/web-0/exec", upgrade=True)
    ex.status = 403
    ex.finish(cast(Any, request_of("POST", "/x")))
    auditor.close()
    [record] = _records(tmp_path)
    assert (record["kind"], record["verb"], record["status"]) == ("request", "connect", 403)


def test_off_still_counts(tmp_path: Path) -> None:
    auditor = AuditLog(AuditSettings(path="off"), tmp_path)
    ex = _exchange(auditor, "GET", "/api/v1/namespaces/ns/pods?watch=true")
    ex.status = 200
    before = _count(ex.cluster_id, "watch", "200")
    ex.finish(cast(Any, request_of("GET", "/x")))
    assert _count(ex.cluster_id, "watch", "200") - before == 1
    assert list(tmp_path.iterdir()) == []


def test_an_impersonating_request_names_the_caller_and_whom_it_acts_as(tmp_path: Path) -> None:
    """``kubectl --as=bob --as-group=devs``: both the caller and ``impersonatedUser``."""
    auditor = AuditLog(AuditSettings(level="request"), tmp_path)
    ex = _exchange(auditor, "POST", "/api/v1/namespaces/ns/configmaps")
    ex.note_impersonation(
        [
            (b"Impersonate-User", b"bob"),
            (b"impersonate-group", b"devs"),
            (b"IMPERSONATE-GROUP", b"ops"),
            (b"Impersonate-Extra-scopes", b"x"),
            (b"Accept", b"*/*"),
        ]
    )
    ex.audit_body = {"requestObject": {"kind": "ConfigMap"}}
    ex.status = 201
    ex.finish(cast(Any, request_of("POST", f"/k8s/clusters/{ex.cluster_id}/api")))
    auditor.close()
    [record] = _records(tmp_path)
    assert record["user"] == "u-bob" and record["impersonatedUser"] == "bob"
    assert record["impersonatedGroups"] == ["devs", "ops"]
    assert record["impersonatedExtras"] == 1
    assert record["requestObject"] == {"kind": "ConfigMap"}


def test_impersonated_names_are_capped(tmp_path: Path) -> None:
    auditor = _auditor(tmp_path)
    ex = _exchange(auditor, "GET", "/api")
    ex.note_impersonation(
        [(b"Impersonate-User", b"u" * 10_000)] * 2 + [(b"Impersonate-Group", b"g" * 9_000)] * 100
    )
    ex.status = 200
    ex.finish(cast(Any, request_of("GET", f"/k8s/clusters/{ex.cluster_id}/api")))
    auditor.close()
    [record] = _records(tmp_path)
    assert len(record["impersonatedUser"]) < 300
    assert len(record["impersonatedGroups"]) == 32
    assert len(json.dumps(record)) < 32 * 300 + 2000
