"""The audit log: one JSON line per request, shaped like an `audit.k8s.io/v1` Event.

Besides the standard fields it records `requestContentType` and `requestAccept`, which the
project's tests use to check what a client sent, and `requestHeaders`: every header line
exactly as it arrived (name and value, in order; the `Authorization` value redacted), so
security tests can assert on what the API server received, not only on status codes.
"""

from __future__ import annotations

import datetime
import json
import threading
from pathlib import Path
from typing import IO, Any


def micro_time(t: datetime.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}Z"


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self._fh: IO[str] | None = path.open("a", encoding="utf-8") if path else None
        self._lock = threading.Lock()

    def write(self, event: dict[str, Any]) -> None:
        if self._fh is None:
            return
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def event(
    *,
    audit_id: str,
    stage: str,
    request_uri: str,
    verb: str,
    user: dict[str, Any],
    impersonated: dict[str, Any] | None,
    source_ip: str,
    user_agent: str,
    object_ref: dict[str, str] | None,
    code: int,
    message: str,
    received: datetime.datetime,
    content_type: str,
    accept: str,
    headers: list[tuple[str, str]] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": stage,
        "requestURI": request_uri,
        "verb": verb,
        "user": user,
    }
    if impersonated is not None:
        ev["impersonatedUser"] = impersonated
    ev["sourceIPs"] = [source_ip] if source_ip else []
    if user_agent:
        ev["userAgent"] = user_agent
    if object_ref:
        ev["objectRef"] = object_ref
    status: dict[str, Any] = {"metadata": {}, "code": code}
    if code >= 400:
        status["status"] = "Failure"
        if message:
            status["message"] = message
    ev["responseStatus"] = status
    ev["requestReceivedTimestamp"] = micro_time(received)
    ev["stageTimestamp"] = micro_time(datetime.datetime.now(datetime.UTC))
    if annotations:
        ev["annotations"] = dict(annotations)
    ev["requestContentType"] = content_type
    ev["requestAccept"] = accept
    if headers is not None:
        ev["requestHeaders"] = [
            [name, "<redacted>" if name.lower() == "authorization" else value]
            for name, value in headers
        ]
    return ev
