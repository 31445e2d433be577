"""The controllers' Kubernetes API client: REST paths and JSON documents as dicts.

What the gateway asks of a cluster on its own behalf is little: readiness and version,
lists and watches of namespaces and nodes, RBAC objects, CRDs, the ACE custom objects and
one SelfSubjectAccessReview. kubernetes-asyncio did that, but its ``client`` package
imports every generated model when the first API class is used: a gateway process grew by
tens of megabytes and its event loop stalled for the import when the first cluster's
controller started (docs/benchmarks.md, "The controllers' own client"). The controllers
read and write plain documents anyway, so this module sends the requests itself, on the
internal listener's session (``downstream.InternalListener.client``).

``tests/unit/gateway/controllers/test_kubeapi.py`` holds every call the controllers make
against what kubernetes-asyncio sends for the same call (method, path, query, body), so
the library stays the reference; the integration tests run the controllers against the
stand-in API server.

Unlike kubernetes-asyncio's ``_preload_content=False``, a stream opened here is checked
too: an answer other than 2xx raises ``ApiError`` before the caller reads it as a list or
a watch.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final
from urllib.parse import quote

import aiohttp

Doc = dict[str, Any]
Params = Mapping[str, str | int | bool]

JSON: Final = "application/json"
MAX_ERROR_BODY: Final = 64 * 1024
"""How much of an error answer is read (a Status is small; a hostile body is not kept)."""

NO_TIMEOUT: Final = aiohttp.ClientTimeout()
"""Each call's deadline is its caller's (``asyncio.timeout`` or ``timeout_s``); a watch
runs as long as the server keeps it."""

RBAC: Final = "rbac.authorization.k8s.io"
APIEXTENSIONS: Final = "apiextensions.k8s.io"
AUTHORIZATION: Final = "authorization.k8s.io"


class ApiError(Exception):
    """An answer other than 2xx: its status, reason and (the start of) its body."""

    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(status, reason, body)
        self.status = status
        self.reason = reason
        self.body = body

    def status_doc(self) -> Doc | None:
        """The body as a Kubernetes ``Status``, or None when it is not one."""
        try:
            doc = json.loads(self.body) if self.body else None
        except (ValueError, RecursionError):
            return None
        return doc if isinstance(doc, dict) and doc.get("kind") == "Status" else None

    def message(self) -> str:
        """The Status's message when the body is one, else the body's first line."""
        status = self.status_doc()
        if status is not None and isinstance(status.get("message"), str):
            return str(status["message"])
        text = self.body.strip()
        return text.splitlines()[0] if text else self.reason

    def __str__(self) -> str:
        return f"({self.status}) {self.reason}: {self.message()}"[:512]


def resource_path(
    group: str, version: str, plural: str, *, namespace: str = "", name: str = ""
) -> str:
    """``/api/v1/...`` for the core group, ``/apis/<group>/<version>/...`` for others;
    the namespace and name quoted whole (no ``/`` passes), as kubernetes-asyncio does."""
    path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        path += f"/namespaces/{quote(namespace, safe='')}"
    path += f"/{plural}"
    if name:
        path += f"/{quote(name, safe='')}"
    return path


def query(params: Params | None) -> dict[str, str]:
    """Query values as the API server reads them: booleans as ``true``/``false``."""
    if not params:
        return {}
    return {
        key: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for key, value in params.items()
    }


class KubeClient:
    """One cluster's API through the internal listener (``base`` ends in the cluster's
    prefix); every method raises ``ApiError`` for an answer other than 2xx."""

    __slots__ = ("_session", "base")

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self._session = session
        self.base = base

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: Doc | None = None,
        timeout_s: float | None = None,
    ) -> bytes:
        """One request; the answer's body."""
        async with self._send(method, path, params, body, timeout_s) as response:
            return await response.read()

    async def get(
        self, path: str, params: Params | None = None, *, timeout_s: float | None = None
    ) -> Doc:
        return _doc(await self.call("GET", path, params=params, timeout_s=timeout_s))

    async def create(self, path: str, body: Doc) -> Doc:
        return _doc(await self.call("POST", path, body=body))

    async def replace(self, path: str, body: Doc) -> Doc:
        return _doc(await self.call("PUT", path, body=body))

    async def delete(self, path: str) -> None:
        await self.call("DELETE", path)

    @contextlib.asynccontextmanager
    async def stream(
        self, path: str, params: Params | None = None, *, timeout_s: float | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A GET whose body the caller reads as it comes (a watch, a large list)."""
        async with self._send("GET", path, params, None, timeout_s) as response:
            yield response

    @contextlib.asynccontextmanager
    async def _send(
        self,
        method: str,
        path: str,
        params: Params | None,
        body: Doc | None,
        timeout_s: float | None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        headers = {"Accept": JSON}
        data: bytes | None = None
        if body is not None:
            headers["Content-Type"] = JSON
            data = json.dumps(body).encode()
        timeout = NO_TIMEOUT if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
        async with self._session.request(
            method,
            self.base + path,
            params=query(params),
            data=data,
            headers=headers,
            timeout=timeout,
        ) as response:
            if not 200 <= response.status <= 299:
                text = (await _start_of(response)).decode("utf-8", "replace")
                raise ApiError(response.status, response.reason or "", text)
            yield response


async def _start_of(response: aiohttp.ClientResponse) -> bytes:
    """The body up to ``MAX_ERROR_BODY`` bytes, however many chunks it comes in."""
    chunks: list[bytes] = []
    size = 0
    while size < MAX_ERROR_BODY:
        chunk = await response.content.read(MAX_ERROR_BODY - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _doc(data: bytes) -> Doc:
    doc = json.loads(data) if data else {}
    if not isinstance(doc, dict):
        raise ValueError(f"the API server answered a JSON {type(doc).__name__}, not an object")
    return doc
