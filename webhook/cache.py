"""The watch-fed, in-memory copy of the ClusterAuthToken and ClusterUserAttribute records.

One reflector per kind, like client-go's: LIST (in pages) to get a consistent snapshot and
its resourceVersion, then WATCH from that resourceVersion with bookmarks. Each event is
applied as it arrives, so a deleted, disabled or shortened token is refused from the next
review on. The watch ends normally after ``watch_timeout`` (server side) or when it has
been silent for ``watch_idle`` (client side) and resumes from the last resourceVersion;
a 410 Gone (history compacted) makes the reflector LIST again. Errors back off with full
jitter up to ``backoff_max``. Reviews only read the dictionaries and never wait on the
API server: before the first LIST of both kinds completes, the cache is not ``synced``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp

from ace.records import (
    GROUP,
    TOKEN_PLURAL,
    USER_PLURAL,
    VERSION,
    TokenRecord,
    UserRecord,
    object_name,
    token_from_object,
    user_from_object,
)
from config.schema import WebhookSettings

logger = logging.getLogger(__name__)

R = TypeVar("R", TokenRecord, UserRecord)

PAGE_SIZE = 500
MAX_EVENT_BYTES = 16 * 1024 * 1024
"""A watch line longer than this is a broken stream (etcd's object limit is 1.5 MiB)."""


class WebhookError(Exception):
    """The webhook cannot start (e.g. no cluster credentials)."""


class Gone(Exception):
    """410: the resourceVersion is too old; LIST again."""


class WatchFailed(Exception):
    """The API server refused or broke a LIST or WATCH."""


@dataclass(frozen=True)
class Timing:
    request_timeout: float = 30.0
    watch_timeout: float = 300.0
    watch_idle: float = 120.0
    backoff_initial: float = 1.0
    backoff_max: float = 30.0

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> Timing:
        return cls(
            request_timeout=settings.request_timeout_s,
            watch_timeout=settings.watch_timeout_s,
            watch_idle=settings.watch_idle_s,
            backoff_initial=settings.backoff_initial_s,
            backoff_max=settings.backoff_max_s,
        )


def _status_code(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


class Reflector(Generic[R]):
    """LIST + WATCH of one plural in one namespace into ``items`` (name -> record)."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        plural: str,
        convert: Callable[[Mapping[str, Any]], R | None],
        timing: Timing,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.plural = plural
        self.convert: Callable[[Mapping[str, Any]], R | None] = convert
        self.timing = timing
        self.items: dict[str, R] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self.lists = 0
        """LISTs completed (a test and the logs use it to see re-lists)."""

    async def run(self) -> None:
        """Keep ``items`` current until cancelled."""
        failures = 0
        while True:
            try:
                if self.resource_version is None:
                    await self.list()
                started = asyncio.get_running_loop().time()
                got_events = await self.watch()
                if got_events or asyncio.get_running_loop().time() - started > 1.0:
                    failures = 0
                else:
                    # A watch that ends at once with nothing in it must not spin.
                    failures = min(failures + 1, 30)
                    await asyncio.sleep(self._delay(failures))
            except Gone:
                logger.info("%s: resourceVersion expired, listing again", self.plural)
                self.resource_version = None
                failures = min(failures + 1, 30)
                if failures > 1:  # Gone again right after a LIST: do not hammer the server
                    await asyncio.sleep(self._delay(failures))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: back off and try again
                failures = min(failures + 1, 30)
                delay = self._delay(failures)
                logger.warning("%s: %s; retrying in %.1fs", self.plural, _describe(exc), delay)
                await asyncio.sleep(delay)

    def _delay(self, failures: int) -> float:
        ceiling = min(self.timing.backoff_max, self.timing.backoff_initial * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret

    async def list(self) -> None:
        """A consistent snapshot, in pages; replaces ``items`` in one step."""
        items: dict[str, R] = {}
        cont: str | None = None
        version = ""
        while True:
            try:
                page = await self.api.list_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    self.namespace,
                    self.plural,
                    limit=PAGE_SIZE,
                    _continue=cont,
                    _request_timeout=self.timing.request_timeout,
                )
            except Exception as exc:
                if _status_code(exc) == 410 and cont is not None:
                    items, cont = {}, None  # the continue token expired: start over
                    continue
                raise
            if not isinstance(page, Mapping):
                raise WatchFailed(f"LIST {self.plural} answered {type(page).__name__}")
            for obj in page.get("items") or ():
                if isinstance(obj, Mapping):
                    record = self.convert(obj)
                    if record is not None:
                        items[record.name] = record
            metadata = page.get("metadata") or {}
            cont = metadata.get("continue") or None
            if cont is None:
                found = metadata.get("resourceVersion")
                if not isinstance(found, str) or not found:
                    raise WatchFailed(f"LIST {self.plural} has no resourceVersion")
                version = found
                break
        self.items = items
        self.resource_version = version
        self.lists += 1
        if not self.synced.is_set():
            logger.info("%s: synced %d records", self.plural, len(items))
        self.synced.set()

    async def watch(self) -> bool:
        """One WATCH from ``resource_version``; returns whether any event arrived."""
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.timing.request_timeout,
            sock_read=self.timing.watch_idle,
        )
        resp = await self.api.list_namespaced_custom_object(
            GROUP,
            VERSION,
            self.namespace,
            self.plural,
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=max(1, int(self.timing.watch_timeout)),
            _preload_content=False,
            _request_timeout=timeout,
        )
        got_events = False
        try:
            if resp.status == 410:
                raise Gone
            if resp.status != 200:
                body = await resp.content.read(512)
                raise WatchFailed(f"WATCH {self.plural} answered {resp.status}: {body!r}")
            buffer = bytearray()
            try:
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while (end := buffer.find(b"\n")) >= 0:
                        line = bytes(buffer[:end])
                        del buffer[: end + 1]
                        if line.strip():
                            self.apply(json.loads(line))
                            got_events = True
                    if len(buffer) > MAX_EVENT_BYTES:
                        raise WatchFailed(f"WATCH {self.plural}: event larger than the limit")
            except TimeoutError:
                logger.debug(
                    "%s: watch idle for %.0fs, reopening", self.plural, self.timing.watch_idle
                )
                return True  # not an error: resume from the last resourceVersion
        finally:
            resp.release()
        return got_events

    def apply(self, event: Any) -> None:
        """One watch event."""
        if not isinstance(event, Mapping):
            raise WatchFailed(f"WATCH {self.plural}: event is not an object")
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, Mapping):
            raise WatchFailed(f"WATCH {self.plural}: event without an object")
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise Gone
            raise WatchFailed(f"WATCH {self.plural}: {obj.get('reason')}: {obj.get('message')}")
        metadata = obj.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        if kind in ("ADDED", "MODIFIED"):
            record = self.convert(obj)
            if record is not None:
                self.items[record.name] = record
        elif kind == "DELETED":
            name = object_name(obj)
            if name is not None:
                self.items.pop(name, None)
        elif kind != "BOOKMARK":
            raise WatchFailed(f"WATCH {self.plural}: unknown event type {kind!r}")
        if isinstance(version, str) and version:
            self.resource_version = version


_HINTS = {
    401: " (are the webhook's credentials valid?)",
    403: " (does its account have get, list and watch on the two kinds? see deploy/webhook.yaml)",
    404: " (are the CRDs installed? see deploy/crds.yaml)",
}


def _describe(exc: BaseException) -> str:
    status = _status_code(exc)
    if status is not None:
        reason = getattr(exc, "reason", "") or ""
        return f"API server answered {status} {reason}".strip() + _HINTS.get(status, "")
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


class RecordCache:
    """Both kinds, fed by two reflectors; what the app reads."""

    def __init__(self, api: Any, namespace: str, timing: Timing | None = None) -> None:
        timing = timing or Timing()
        self.token_reflector: Reflector[TokenRecord] = Reflector(
            api, namespace, TOKEN_PLURAL, token_from_object, timing
        )
        self.user_reflector: Reflector[UserRecord] = Reflector(
            api, namespace, USER_PLURAL, user_from_object, timing
        )

    @property
    def tokens(self) -> Mapping[str, TokenRecord]:
        return self.token_reflector.items

    @property
    def users(self) -> Mapping[str, UserRecord]:
        return self.user_reflector.items

    @property
    def synced(self) -> bool:
        return self.token_reflector.synced.is_set() and self.user_reflector.synced.is_set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.token_reflector.run())
            group.create_task(self.user_reflector.run())


async def open_api(kubeconfig: str) -> tuple[Any, Any]:
    """``(ApiClient, CustomObjectsApi)`` from a kubeconfig, or the pod's service account."""
    from kubernetes_asyncio.client import ApiClient, Configuration, CustomObjectsApi
    from kubernetes_asyncio.config import (
        ConfigException,
        load_incluster_config,
        load_kube_config,
    )

    cfg = Configuration()
    if not kubeconfig and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise WebhookError(
            "no cluster to watch: not running in a pod (KUBERNETES_SERVICE_HOST is not set) "
            "and no --kubeconfig given; pass --kubeconfig FILE (see deploy/README.md), or "
            "run the webhook in the cluster (its DaemonSet in deploy/)"
        )
    try:
        if kubeconfig:
            await load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        else:
            load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError) as exc:
        source = kubeconfig or "the in-cluster service account"
        raise WebhookError(f"cannot load cluster credentials from {source}: {exc}") from exc
    client = ApiClient(configuration=cfg)
    client.user_agent = "herdgate-webhook"
    return client, CustomObjectsApi(client)


async def close_api(client: Any) -> None:
    with contextlib.suppress(Exception):
        await client.close()
