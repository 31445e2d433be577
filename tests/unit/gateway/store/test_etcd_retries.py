"""An etcd request whose first attempt timed out after etcd applied it: the retry's
failed compare is recognised as our own write, not someone else's (``UNCERTAIN``)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from gateway.store.base import AlreadyExists
from gateway.store.etcd import EtcdStore


class FakeEtcd:
    """Just enough of etcd's kv API: range, txn (one compare), deleterange."""

    def __init__(self) -> None:
        self.kvs: dict[str, tuple[str, int]] = {}
        self.revision = 1
        self.lose_next_answer = ""
        """The path (kv/txn, kv/deleterange) of the next request whose answer is lost."""

    def __call__(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = self._apply(path, body)
        if self.lose_next_answer == path:  # applied, but the answer never arrives
            self.lose_next_answer = ""
            raise TimeoutError
        return answer

    def _apply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        header = {"revision": str(self.revision)}
        key = body.get("key", "")
        if path == "kv/range":
            kv = self.kvs.get(key)
            kvs = [{"key": key, "value": kv[0], "mod_revision": str(kv[1])}] if kv else []
            return {"header": header, "kvs": kvs}
        if path == "kv/deleterange":
            deleted = self.kvs.pop(key, None) is not None
            if deleted:
                self.revision += 1
            return {"header": {"revision": str(self.revision)}, "deleted": str(int(deleted))}
        assert path == "kv/txn"
        (compare,) = body["compare"]
        current = self.kvs.get(compare["key"])
        if compare["target"] == "CREATE":
            ok = current is None
        else:
            ok = current is not None and str(current[1]) == str(compare["mod_revision"])
        if not ok:
            return {"header": header, "succeeded": False}
        (operation,) = body["success"]
        self.revision += 1
        if "request_put" in operation:
            put = operation["request_put"]
            self.kvs[put["key"]] = (put["value"], self.revision)
        else:
            self.kvs.pop(operation["request_delete_range"]["key"], None)
        return {"header": {"revision": str(self.revision)}, "succeeded": True}


@pytest.fixture
def store() -> tuple[EtcdStore, FakeEtcd]:
    fake = FakeEtcd()
    s = EtcdStore(["http://127.0.0.1:1", "http://127.0.0.1:2"], "/t/")
    s._http = object()  # type: ignore[assignment]  # never used: _post is the fake

    async def post(endpoint: str, path: str, body: dict[str, Any], deadline: float) -> Any:
        return fake(path, body)

    s._post = post  # type: ignore[method-assign]
    return s, fake


async def test_a_create_applied_before_its_answer_was_lost(
    store: tuple[EtcdStore, FakeEtcd],
) -> None:
    s, fake = store
    fake.lose_next_answer = "kv/txn"
    revision = await s.create("tokens", "t-1", {"id": "t-1"})
    assert revision == fake.revision
    # Someone else's record is still someone else's.
    fake.lose_next_answer = "kv/txn"
    with pytest.raises(AlreadyExists):
        await s.create("tokens", "t-1", {"id": "t-1", "other": True})


async def test_a_swap_and_a_delete_applied_before_their_answers_were_lost(
    store: tuple[EtcdStore, FakeEtcd],
) -> None:
    s, fake = store
    fake.lose_next_answer = "kv/txn"
    assert await s.swap("leases", "l", None, {"holder": "a"})
    fake.lose_next_answer = "kv/txn"
    assert await s.swap("leases", "l", {"holder": "a"}, {"holder": "a", "n": 2})
    assert await s.get("leases", "l") == {"holder": "a", "n": 2}
    assert await s.swap("leases", "l", {"holder": "b"}, None) is None
    fake.lose_next_answer = "kv/deleterange"
    assert await s.delete("leases", "l") > 0
    assert await s.get("leases", "l") is None
    assert base64.b64encode(b"/t/leases/l").decode() not in fake.kvs
    assert not fake.lose_next_answer  # every lost answer was exercised
