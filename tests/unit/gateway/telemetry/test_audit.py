"""The audit log: redaction, request bodies, record shapes, and the rotated JSON-lines file."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.errors import ConfigError
from config.identity import Identity
from config.schema import AuditSettings
from gateway.proxy.requestinfo import request_info
from gateway.telemetry import audit
from gateway.telemetry.audit import (
    AuditLog,
    protobuf_envelope,
    redact_target,
    request_body,
    request_record,
    session_record,
)

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
SECRET = "hgt-SEKRIT-abcdef0123456789"
ALICE = Identity(
    user_id="u-alice",
    username="alice",
    principal_id="local://u-alice",
    groups=("openldap_group://cn=devs",),
    token_id="token-x1y2z",
)


# ---- redact_target ----


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/api/v1/pods", "/api/v1/pods"),
        ("/api/v1/pods?watch=true&limit=5", "/api/v1/pods?watch=true&limit=5"),
        ("/x?token=abc", "/x?token=<redacted>"),
        ("/x?a=1&access_token=abc&b=2", "/x?a=1&access_token=<redacted>&b=2"),
        ("/x?id_token=abc", "/x?id_token=<redacted>"),
        ("/x?password=hunter2&user=bob", "/x?password=<redacted>&user=bob"),
        ("/x?Token=abc", "/x?Token=<redacted>"),
        ("/x?secret=abc", "/x?secret=<redacted>"),
        # named like a credential only in part: kept
        ("/x?tokenName=abc&passwords=3", "/x?tokenName=abc&passwords=3"),
        # no value to hide
        ("/x?token", "/x?token"),
        ("/x?token=", "/x?token=<redacted>"),
    ],
)
def test_redact_target(target: str, expected: str) -> None:
    assert redact_target(target) == expected


def test_redact_target_keeps_an_untouched_target_identical() -> None:
    target = "/api/v1/namespaces/ns/pods?labelSelector=app%3Dweb"
    assert redact_target(target) is target


# ---- request_body ----

PODS = request_info("POST", "/api/v1/namespaces/ns/pods")


def test_no_body_no_object() -> None:
    assert request_body(PODS, "application/json", None, 1024) == {}


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/namespaces/ns/secrets",
        "/api/v1/namespaces/ns/secrets/s1",
        "/api/v1/namespaces/ns/serviceaccounts/default/token",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-1/approval",
        "/apis/management.cattle.io/v3/clusterauthtokens",
    ],
)
def test_bodies_of_secret_kinds_are_omitted(target: str) -> None:
    info = request_info("POST", target)
    body = json.dumps({"data": {"password": SECRET}}).encode()
    out = request_body(info, "application/json", body, 1 << 20)
    assert out == {"requestObjectOmitted": "secret kind"}
    assert SECRET not in json.dumps(out)


def test_serviceaccounts_themselves_are_recorded() -> None:
    info = request_info("POST", "/api/v1/namespaces/ns/serviceaccounts")
    assert request_body(info, "application/json", b'{"a":1}', 100) == {"requestObject": {"a": 1}}


def test_too_large_body_is_omitted() -> None:
    body = json.dumps({"x": "y" * 100}).encode()
    assert request_body(PODS, "application/json", body, len(body)) == {
        "requestObject": {"x": "y" * 100}
    }
    assert request_body(PODS, "application/json", body, len(body) - 1) == {
        "requestObjectOmitted": f"larger than {len(body) - 1} bytes"
    }


@pytest.mark.parametrize(
    ("content_type", "reason"),
    [
        ("application/yaml", "content type application/yaml"),
        ("application/apply-patch+yaml", "content type application/apply-patch+yaml"),
        ("text/plain", "content type text/plain"),
        ("", "content type unknown"),
    ],
)
def test_non_json_bodies_are_omitted_with_a_reason(content_type: str, reason: str) -> None:
    assert request_body(PODS, content_type, b"kind: Pod\n", 1024) == {
        "requestObjectOmitted": reason
    }


def _field(number: int, value: bytes) -> bytes:
    assert len(value) < 128
    return bytes([number << 3 | 2, len(value)]) + value


def _protobuf(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = _field(1, api_version.encode()) + _field(2, kind.encode())
    # runtime.Unknown: typeMeta, raw, contentEncoding, contentType (and a varint to skip)
    unknown = _field(1, type_meta) + _field(2, raw) + _field(3, b"") + _field(4, b"") + b"\x28\x01"
    return b"k8s\x00" + unknown


def test_protobuf_bodies_are_recorded_by_kind() -> None:
    raw = b"\x0a\x05\x0a\x03web"
    out = request_body(
        PODS, "application/vnd.kubernetes.protobuf", _protobuf("v1", "Pod", raw), 1024
    )
    assert out == {
        "requestObject": {
            "apiVersion": "v1",
            "kind": "Pod",
            "protobuf": base64.b64encode(raw).decode(),
        }
    }


@pytest.mark.parametrize(
    "body",
    [
        b"\x0a\x02k8s",  # no magic
        b"k8s\x00\x0a\x50short",  # a field longer than the body
        b"k8s\x00\x0a",  # truncated
        b"k8s\x00\x0f",  # wire type 7
        b"k8s\x00" + _field(1, b"\x0a\x02\xff\xfe"),  # apiVersion not UTF-8
    ],
)
def test_malformed_protobuf_is_omitted(body: bytes) -> None:
    out = request_body(PODS, "application/vnd.kubernetes.protobuf", body, 1024)
    assert out == {"requestObjectOmitted": "malformed protobuf"}


@given(st.binary(max_size=64))
def test_protobuf_envelope_never_raises(data: bytes) -> None:
    for body in (data, b"k8s\x00" + data):
        envelope = protobuf_envelope(body)
        if envelope is not None:
            api_version, kind, raw = envelope
            assert isinstance(api_version, str)
            assert isinstance(kind, str)
            assert isinstance(raw, bytes)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/json-patch+json",
    ],
)
def test_json_bodies_are_embedded(content_type: str) -> None:
    body = b'{"metadata":{"name":"web-0"},"spec":{"containers":[]}}'
    assert request_body(PODS, content_type, body, 1024) == {
        "requestObject": {"metadata": {"name": "web-0"}, "spec": {"containers": []}}
    }


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\xfa", b""])
def test_invalid_json_is_omitted(body: bytes) -> None:
    assert request_body(PODS, "application/json", body, 1024) == {
        "requestObjectOmitted": "not valid JSON"
    }


# ---- records ----


def _request(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "started": 1_700_000_000.25,
        "request_id": "rid-1",
        "identity": ALICE,
        "role": "cluster-member",
        "cluster_id": "c-abcde",
        "method": "GET",
        "target": f"/api/v1/namespaces/ns/pods?watch=true&token={SECRET}",
        "info": request_info("GET", "/api/v1/namespaces/ns/pods?watch=true"),
        "source": "10.0.0.7",
        "user_agent": "kubectl/v1.30.0",
        "status": 200,
        "duration_s": 0.0123456,
    }
    args.update(overrides)
    return request_record(**args)


def test_request_record_shape() -> None:
    record = _request()
    assert record == {
        "time": "2023-11-14T22:13:20.250000Z",
        "kind": "request",
        "requestId": "rid-1",
        "user": "u-alice",
        "username": "alice",
        "principal": "local://u-alice",
        "groups": ["openldap_group://cn=devs"],
        "role": "cluster-member",
        "tokenId": "token-x1y2z",
        "cluster": "c-abcde",
        "verb": "watch",
        "method": "GET",
        "path": "/api/v1/namespaces/ns/pods?watch=true&token=<redacted>",
        "resource": "pods",
        "namespace": "ns",
        "name": "",
        "sourceIP": "10.0.0.7",
        "userAgent": "kubectl/v1.30.0",
        "status": 200,
        "durationMs": 12.346,
    }
    text = json.dumps(record)
    assert SECRET not in text
    assert "authorization" not in text.lower()


def test_request_record_without_caller_or_info() -> None:
    record = _request(identity=None, role=None, info=None, method="POST", status=401)
    assert record["user"] is None
    assert "username" not in record
    assert "tokenId" not in record
    assert (record["verb"], record["resource"], record["status"]) == ("post", "", 401)


def test_request_record_extra_and_empty_token_id() -> None:
    who = Identity("u-bob", "bob", "openldap_user://uid=bob")
    record = _request(identity=who, extra={"requestObject": {"a": 1}})
    assert record["tokenId"] is None
    assert record["requestObject"] == {"a": 1}


def test_session_record_started_and_ended() -> None:
    info = request_info("POST", "/api/v1/namespaces/ns/pods/web-0/exec?command=sh", True)
    common: dict[str, Any] = {
        "request_id": "rid-2",
        "identity": ALICE,
        "role": "cluster-owner",
        "cluster_id": "c-abcde",
        "target": f"/api/v1/namespaces/ns/pods/web-0/exec?command=sh&access_token={SECRET}",
        "info": info,
        "source": "10.0.0.8",
    }
    started = session_record(stage="started", started=1_700_000_000.0, ended=None, **common)
    assert started["kind"] == "session"
    assert started["stage"] == "started"
    assert started["time"] == started["start"] == "2023-11-14T22:13:20.000000Z"
    assert (started["verb"], started["resource"], started["name"]) == (
        "connect",
        "pods/exec",
        "web-0",
    )
    assert "end" not in started
    assert "bytesFromClient" not in started
    ended = session_record(
        stage="ended",
        started=1_700_000_000.0,
        ended=1_700_000_002.5,
        bytes_from_client=12,
        bytes_to_client=3456,
        **common,
    )
    assert ended["stage"] == "ended"
    assert ended["time"] == ended["end"] == "2023-11-14T22:13:22.500000Z"
    assert ended["start"] == "2023-11-14T22:13:20.000000Z"
    assert ended["durationMs"] == 2500.0
    assert (ended["bytesFromClient"], ended["bytesToClient"]) == (12, 3456)
    assert ended["tokenId"] == "token-x1y2z"
    for record in (started, ended):
        assert ISO_Z.match(record["time"])
        text = json.dumps(record)
        assert SECRET not in text
        assert "authorization" not in text.lower()


# ---- AuditLog ----


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _log(tmp_path: Path, **settings: Any) -> AuditLog:
    return AuditLog(AuditSettings(**settings), tmp_path)


def test_writes_json_lines_to_the_state_dir_with_mode_0600(tmp_path: Path) -> None:
    log = _log(tmp_path)
    try:
        assert log.path == tmp_path / "audit.log"
        assert log.enabled
        assert not log.records_bodies
        log.write(_request())
        log.write({"kind": "x", "n": 2})
        # Outside an event loop every write is flushed at once.
        records = _lines(tmp_path / "audit.log")
        assert [r["kind"] for r in records] == ["request", "x"]
        assert records[0]["path"].endswith("token=<redacted>")
        assert stat.S_IMODE(os.stat(tmp_path / "audit.log").st_mode) == 0o600
    finally:
        log.close()


def test_explicit_path_and_request_level(tmp_path: Path) -> None:
    target = tmp_path / "logs" / "kube-audit.jsonl"
    log = _log(tmp_path, path=str(target), level="request")
    try:
        assert log.records_bodies
        log.write({"kind": "x"})
        assert _lines(target) == [{"kind": "x"}]
        assert not (tmp_path / "audit.log").exists()
    finally:
        log.close()


def test_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path, path="-")
    log.write({"kind": "request", "verb": "get"})
    log.close()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert json.loads(out[0]) == {"log": "audit", "kind": "request", "verb": "get"}
    assert list(tmp_path.iterdir()) == []


def test_off_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _log(tmp_path, path="off", level="request")
    assert not log.enabled
    assert not log.records_bodies
    log.write({"kind": "request"})
    log.close()
    assert capsys.readouterr().out == ""
    assert list(tmp_path.iterdir()) == []


def test_invalid_level(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _log(tmp_path, level="everything")
    assert caught.value.path == "audit.level"
    assert "audit.level" in str(caught.value)


def _padded(tag: str, n: int) -> dict[str, Any]:
    record = {"tag": tag, "n": n, "pad": ""}
    size = len(json.dumps(record, separators=(",", ":"))) + 1
    record["pad"] = "x" * (100 - size)  # 100 bytes a line
    return record


def _ns(path: Path) -> list[tuple[str, int]]:
    return [(r["tag"], r["n"]) for r in _lines(path)]


def test_rotation_keeps_max_backups(tmp_path: Path) -> None:
    log = _log(tmp_path, max_size=250, max_backups=2)
    try:
        for n in range(10):
            log.write(_padded("a", n))
    finally:
        log.close()
    base = tmp_path / "audit.log"
    assert _ns(base) == [("a", 8), ("a", 9)]
    assert _ns(tmp_path / "audit.log.1") == [("a", 6), ("a", 7)]  # the newest backup
    assert _ns(tmp_path / "audit.log.2") == [("a", 4), ("a", 5)]
    assert not (tmp_path / "audit.log.3").exists()
    for name in ("audit.log", "audit.log.1", "audit.log.2"):
        assert (tmp_path / name).stat().st_size <= 250


def test_rotation_without_backups(tmp_path: Path) -> None:
    log = _log(tmp_path, max_size=250, max_backups=0)
    try:
        for n in range(5):
            log.write(_padded("a", n))
    finally:
        log.close()
    assert _ns(tmp_path / "audit.log") == [("a", 4)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.lock"]


def test_two_writers_share_the_file_across_rotation(tmp_path: Path) -> None:
    """Two worker processes: one rotates, the other notices and reopens."""
    a = _log(tmp_path, max_size=250, max_backups=3)
    b = _log(tmp_path, max_size=250, max_backups=3)
    try:
        a.write(_padded("a", 1))
        a.write(_padded("a", 2))
        a.write(_padded("a", 3))  # a rotates: audit.log.1 holds a1 and a2
        b.write(_padded("b", 1))  # b still has the old file open: it must reopen
        a.write(_padded("a", 4))
        b.write(_padded("b", 2))  # b rotates in turn
        a.write(_padded("a", 5))
        b.write(_padded("b", 3))
    finally:
        a.close()
        b.close()
    files = sorted(tmp_path.glob("audit.log*"))
    every = [entry for f in files if not f.name.endswith(".lock") for entry in _ns(f)]
    assert sorted(every) == sorted(
        [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("a", 5), ("b", 1), ("b", 2), ("b", 3)]
    )
    assert _ns(tmp_path / "audit.log.2") == [("a", 1), ("a", 2)]
    assert _ns(tmp_path / "audit.log.1") == [("a", 3), ("b", 1), ("a", 4)]
    assert _ns(tmp_path / "audit.log") == [("b", 2), ("a", 5), ("b", 3)]


def test_a_deleted_file_is_recreated(tmp_path: Path) -> None:
    log = _log(tmp_path)
    try:
        log.write({"n": 1})
        (tmp_path / "audit.log").unlink()
        log.write({"n": 2})
    finally:
        log.close()
    assert _lines(tmp_path / "audit.log") == [{"n": 2}]


async def test_in_a_loop_lines_are_flushed_after_flush_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "FLUSH_S", 0.02)
    log = _log(tmp_path)
    try:
        log.write({"n": 1})
        log.write({"n": 2})
        assert (tmp_path / "audit.log").read_text() == ""
        await asyncio.sleep(0.1)
        assert _lines(tmp_path / "audit.log") == [{"n": 1}, {"n": 2}]
        log.write({"n": 3})  # a new flush is scheduled
        await asyncio.sleep(0.1)
        assert _lines(tmp_path / "audit.log") == [{"n": 1}, {"n": 2}, {"n": 3}]
    finally:
        log.close()


async def test_in_a_loop_a_full_buffer_is_flushed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "FLUSH_S", 60.0)
    monkeypatch.setattr(audit, "FLUSH_BYTES", 250)
    log = _log(tmp_path)
    try:
        log.write(_padded("a", 1))
        log.write(_padded("a", 2))
        assert (tmp_path / "audit.log").read_text() == ""
        log.write(_padded("a", 3))  # 300 bytes waiting: written now
        assert _ns(tmp_path / "audit.log") == [("a", 1), ("a", 2), ("a", 3)]
        log.write(_padded("a", 4))
        assert len(_ns(tmp_path / "audit.log")) == 3
    finally:
        log.close()  # flushes what is left and cancels the timer
    assert _ns(tmp_path / "audit.log") == [("a", 1), ("a", 2), ("a", 3), ("a", 4)]


@pytest.mark.parametrize(
    ("identity", "agent", "target", "extra"),
    [
        (
            Identity("u-1", "bob", "local://u-1", ("g1", 'g"2'), False, "token-1"),
            "kubectl",
            "/api",
            None,
        ),
        (None, 'odd "agent" \\ ünïcode \n', "/api/v1/pods?token=abc&x=1", None),
        (
            Identity("u-2", "ann", "openldap_user://cn=ann", ()),
            "",
            "/",
            {"requestObject": {"a": [1]}},
        ),
        (None, "A" * 60_000, "/api/v1/namespaces/" + "n" * 9000 + "/pods/" + "p" * 9000, None),
    ],
)
def test_request_line_is_request_record_as_json(
    identity: Identity | None, agent: str, target: str, extra: dict[str, object] | None
) -> None:
    args = dict(
        started=1_764_120_000.123456,
        request_id="rid",
        identity=identity,
        role="cluster-member" if identity else None,
        cluster_id="c-1",
        method="GET",
        target=target,
        info=request_info("GET", target),
        source="127.0.0.1",
        user_agent=agent,
        status=200,
        duration_s=0.0012345,
        extra=extra,
    )
    line = audit.request_line(**args)  # type: ignore[arg-type]
    assert json.loads(line) == request_record(**args)  # type: ignore[arg-type]


def test_client_chosen_fields_are_capped() -> None:
    target = "/api/v1/namespaces/" + "n" * 9000 + "/pods/" + "p" * 9000 + "?q=" + "x" * 9000
    record = request_record(
        started=1.0,
        request_id="rid",
        identity=None,
        role=None,
        cluster_id="c-" + "c" * 5000,
        method="GET",
        target=target,
        info=request_info("GET", target),
        source="127.0.0.1",
        user_agent="A" * 60_000,
        status=401,
        duration_s=0.0,
    )
    assert len(json.dumps(record)) < 4096
    assert record["userAgent"].endswith("...[60000 chars]")
    assert record["path"].startswith("/api/v1/namespaces/nnn")
    assert audit.cap("short", 10) == "short"
