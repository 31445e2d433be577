"""In-memory object storage with one global, increasing resourceVersion and a watch history."""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .status import expired

StorageKey = tuple[str, str]  # (group, resource)
ObjectKey = tuple[str, str]  # (namespace, name)


@dataclass
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    key: StorageKey
    obj: dict[str, Any]
    old: dict[str, Any] | None = None


@dataclass(eq=False)
class Watcher:
    key: StorageKey
    namespace: str
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)

    def wants(self, event: Event) -> bool:
        if event.key != self.key:
            return False
        if not self.namespace:
            return True
        namespace: str = (event.obj.get("metadata") or {}).get("namespace", "")
        return namespace == self.namespace


def object_key(obj: dict[str, Any]) -> ObjectKey:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", "") or "", meta.get("name", "")


class Store:
    def __init__(self, history: int = 10000) -> None:
        self.rv = 0
        self._data: dict[StorageKey, dict[ObjectKey, dict[str, Any]]] = {}
        self._history: deque[Event] = deque(maxlen=history)
        self._watchers: set[Watcher] = set()
        # Listeners called synchronously on every change (CRD registration etc.).
        self.listeners: list[Callable[[Event], None]] = []

    # -- reads -----------------------------------------------------------------------------

    def get(self, key: StorageKey, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self._data.get(key, {}).get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, key: StorageKey, namespace: str = "") -> list[dict[str, Any]]:
        bucket = self._data.get(key, {})
        keys = sorted(k for k in bucket if not namespace or k[0] == namespace)
        return [copy.deepcopy(bucket[k]) for k in keys]

    def exists(self, key: StorageKey, namespace: str, name: str) -> bool:
        return (namespace, name) in self._data.get(key, {})

    # -- writes ----------------------------------------------------------------------------

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def _emit(self, event: Event) -> None:
        self._history.append(event)
        for listener in list(self.listeners):
            listener(event)
        for watcher in list(self._watchers):
            if watcher.wants(event):
                watcher.queue.put_nowait(event)

    def create(self, key: StorageKey, obj: dict[str, Any]) -> dict[str, Any]:
        rv = self.next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        self._data.setdefault(key, {})[object_key(obj)] = copy.deepcopy(obj)
        self._emit(Event(rv, "ADDED", key, copy.deepcopy(obj)))
        return obj

    def update(self, key: StorageKey, obj: dict[str, Any]) -> dict[str, Any]:
        bucket = self._data.setdefault(key, {})
        old = bucket.get(object_key(obj))
        rv = self.next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        bucket[object_key(obj)] = copy.deepcopy(obj)
        self._emit(Event(rv, "MODIFIED", key, copy.deepcopy(obj), copy.deepcopy(old)))
        return obj

    def delete(self, key: StorageKey, namespace: str, name: str) -> dict[str, Any] | None:
        bucket = self._data.get(key, {})
        obj = bucket.pop((namespace, name), None)
        if obj is None:
            return None
        rv = self.next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        self._emit(Event(rv, "DELETED", key, copy.deepcopy(obj)))
        return obj

    def drop_all(self, key: StorageKey, namespace: str = "") -> None:
        for obj in self.list_objects(key, namespace):
            ns, name = object_key(obj)
            self.delete(key, ns, name)

    def namespaces_in_use(self) -> list[StorageKey]:
        return list(self._data)

    # -- watch -----------------------------------------------------------------------------

    def oldest_available(self) -> int:
        """The smallest resourceVersion a watch may start from."""
        if len(self._history) < (self._history.maxlen or 0):
            return 0
        return self._history[0].rv - 1

    def watch(
        self, key: StorageKey, namespace: str, since: int | None
    ) -> tuple[Watcher, list[Event]]:
        """Register a watcher; with `since`, also return the retained events after it.

        Raises ApiError 410 (Expired) when `since` is older than the retained history.
        """
        backlog: list[Event] = []
        watcher = Watcher(key, namespace)
        if since is not None:
            oldest = self.oldest_available()
            if since < oldest:
                raise expired(f"too old resource version: {since} ({oldest})")
            backlog = [e for e in self._history if e.rv > since and watcher.wants(e)]
        self._watchers.add(watcher)
        return watcher, backlog

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self) -> None:
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
