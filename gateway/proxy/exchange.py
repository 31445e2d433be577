"""What the gateway learns about one proxied request, and what it does with it at the end.

The proxy fills an ``Exchange`` as the request goes (request id, caller, cluster,
verb, status, bytes of an upgraded session); ``finish`` then counts it in the metrics
and writes its audit record. Kept apart from the proxy so that the hot path reads as
forwarding, and accounting happens in one place.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from config.identity import Identity
from gateway.proxy.model import Request
from gateway.proxy.requestinfo import RequestInfo
from gateway.telemetry import audit, metrics
from gateway.telemetry.audit import new_request_id

MAX_IMPERSONATED_GROUPS = 32
"""Impersonated groups named in a record (the rest are counted in the request only)."""

CLIENT_CLOSED = 499
"""Status recorded when the client went away before an answer (nginx's convention)."""


class Exchange:
    __slots__ = (
        "audit_body",
        "auditor",
        "bytes_from_client",
        "bytes_to_client",
        "cluster_id",
        "cluster_known",
        "identity",
        "impersonation",
        "info",
        "request_id",
        "role",
        "started",
        "started_wall",
        "status",
        "target",
    )

    def __init__(self, auditor: audit.AuditLog) -> None:
        self.auditor = auditor
        self.request_id = new_request_id()
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.identity: Identity | None = None
        self.role: str | None = None
        self.cluster_id = ""
        """The cluster id in the path (it may name no cluster)."""
        self.cluster_known = False
        """Whether ``cluster_id`` names a cluster: only then is it a metric label."""
        self.target = ""
        self.info: RequestInfo | None = None
        self.status = 0
        self.audit_body: dict[str, Any] | None = None
        self.bytes_from_client = 0
        self.bytes_to_client = 0
        self.impersonation: dict[str, Any] | None = None

    def note_impersonation(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Record who the caller asked to act as (``kubectl --as``, ``--as-group``): the
        record then names both the caller and ``impersonatedUser``/``Groups``/``Uid``."""
        user = uid = ""
        groups: list[str] = []
        extras = 0
        for name, value in raw_headers:
            lower = name.lower()
            if not lower.startswith(b"impersonate-"):
                continue
            text = audit.cap(value.decode("latin-1"), audit.MAX_NAME_CHARS)
            if lower == b"impersonate-user":
                user = text
            elif lower == b"impersonate-group" and len(groups) < MAX_IMPERSONATED_GROUPS:
                groups.append(text)
            elif lower == b"impersonate-uid":
                uid = text
            else:
                extras += 1
        noted: dict[str, Any] = {"impersonatedUser": user}
        if groups:
            noted["impersonatedGroups"] = groups
        if uid:
            noted["impersonatedUid"] = uid
        if extras:
            noted["impersonatedExtras"] = extras
        self.impersonation = noted

    @property
    def wants_body(self) -> bool:
        return self.auditor.records_bodies

    def session_started(self, request: Request) -> None:
        if self.info is None:
            return
        self.auditor.write(
            self._with_impersonation(
                audit.session_record(
                    stage="started",
                    started=self.started_wall,
                    ended=None,
                    request_id=self.request_id,
                    identity=self.identity,
                    role=self.role,
                    cluster_id=self.cluster_id,
                    target=self.target,
                    info=self.info,
                    source=request.remote or "",
                )
            )
        )

    def _with_impersonation(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.impersonation is not None:
            record.update(self.impersonation)
        return record

    def finish(self, request: Request) -> None:
        """Count the request and write its audit record (its answer is complete)."""
        seconds = time.perf_counter() - self.started
        info = self.info
        status = self.status or CLIENT_CLOSED
        verb = info.verb if info is not None else request.method.lower()
        if self.cluster_id:
            metrics.count_request(
                self.cluster_id if self.cluster_known else metrics.OTHER,
                verb,
                status,
                None if info is not None and info.long_running else seconds,
            )
        if not self.auditor.enabled:
            return
        if info is not None and info.verb == "connect" and status == 101:
            self.auditor.write(
                self._with_impersonation(
                    audit.session_record(
                        stage="ended",
                        started=self.started_wall,
                        ended=self.started_wall + seconds,
                        request_id=self.request_id,
                        identity=self.identity,
                        role=self.role,
                        cluster_id=self.cluster_id,
                        target=self.target,
                        info=info,
                        source=request.remote or "",
                        bytes_from_client=self.bytes_from_client,
                        bytes_to_client=self.bytes_to_client,
                    )
                )
            )
            return
        self.auditor.write_json(
            audit.request_line(
                started=self.started_wall,
                request_id=self.request_id,
                identity=self.identity,
                role=self.role,
                cluster_id=self.cluster_id,
                method=request.method,
                target=self.target or request.raw_path,
                info=info,
                source=request.remote or "",
                user_agent=request.user_agent,
                status=status,
                duration_s=seconds,
                extra=self._extra(),
            )
        )

    def _extra(self) -> dict[str, Any] | None:
        if self.impersonation is None:
            return self.audit_body
        if self.audit_body is None:
            return self.impersonation
        return {**self.impersonation, **self.audit_body}
