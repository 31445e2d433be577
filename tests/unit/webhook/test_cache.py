"""The reflector: LIST in pages, WATCH events, 410 Gone, back-off, idle watches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from ace.records import TOKEN_PLURAL, USER_PLURAL, TokenRecord, token_from_object
from webhook.cache import RecordCache, Reflector, Timing, WebhookError, open_api

FAST = Timing(
    request_timeout=2, watch_timeout=5, watch_idle=5, backoff_initial=0.01, backoff_max=0.05
)


def tok(name: str, rv: str, enabled: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": rv},
        "userName": "u-abcde",
        "hash": "$3:1:c2FsdA==:" + "A" * 86 + "==",
        "enabled": enabled,
    }


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class FakeContent:
    def __init__(self, chunks: list[bytes | BaseException], hang: bool) -> None:
        self.chunks = chunks
        self.hang = hang

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk
        if self.hang:
            await asyncio.Event().wait()

    async def read(self, n: int) -> bytes:
        return b"boom"[:n]


@dataclass
class FakeResponse:
    chunks: list[bytes | BaseException]
    status: int = 200
    hang: bool = False
    released: bool = False

    @property
    def content(self) -> FakeContent:
        return FakeContent(self.chunks, self.hang)

    def release(self) -> None:
        self.released = True


@dataclass
class FakeApi:
    """Scripted LIST pages and WATCH responses; when a script runs out, LISTs fail and
    WATCHes hang (like an idle watch)."""

    lists: list[dict[str, Any] | BaseException] = field(default_factory=list)
    watches: list[FakeResponse] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def list_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, **kw: Any
    ) -> Any:
        assert (group, version, namespace) == ("auth.herdgate.dev", "v1", "herdgate-system")
        self.calls.append({"plural": plural, **kw})
        if kw.get("watch"):
            if self.watches:
                return self.watches.pop(0)
            return FakeResponse([], hang=True)
        if self.lists:
            page = self.lists.pop(0)
            if isinstance(page, BaseException):
                raise page
            return page
        raise ConnectionRefusedError("no more scripted lists")


class ApiError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.status = status


def page(items: list[dict[str, Any]], rv: str = "", cont: str = "") -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if rv:
        meta["resourceVersion"] = rv
    if cont:
        meta["continue"] = cont
    return {"items": items, "metadata": meta}


async def until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.fixture
async def reflector_for() -> Any:
    tasks: list[asyncio.Task[None]] = []

    def make(api: FakeApi) -> Reflector[TokenRecord]:
        reflector = Reflector(api, "herdgate-system", TOKEN_PLURAL, token_from_object, FAST)
        tasks.append(asyncio.get_running_loop().create_task(reflector.run()))
        return reflector

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_list_in_pages_then_watch_from_its_version(reflector_for: Any) -> None:
    api = FakeApi(
        lists=[page([tok("token-a", "5")], cont="c1"), page([tok("token-b", "6")], rv="9")]
    )
    r = reflector_for(api)
    await until(r.synced.is_set)
    assert set(r.items) == {"token-a", "token-b"}
    await until(lambda: any(c.get("watch") for c in api.calls))
    first, second, watch = api.calls[:3]
    assert first["limit"] == 500 and first["_continue"] is None
    assert second["_continue"] == "c1"
    assert watch["resource_version"] == "9" and watch["allow_watch_bookmarks"] is True
    assert watch["timeout_seconds"] == 5


async def test_events_apply_in_order_even_split_across_chunks(reflector_for: Any) -> None:
    stream = (
        event("ADDED", tok("token-c", "11"))
        + event("MODIFIED", tok("token-a", "12", enabled=False))
        + event("DELETED", tok("token-b", "13"))
        + event("BOOKMARK", {"metadata": {"resourceVersion": "20"}})
    )
    chunks: list[bytes | BaseException] = [stream[i : i + 7] for i in range(0, len(stream), 7)]
    api = FakeApi(
        lists=[page([tok("token-a", "5"), tok("token-b", "6")], rv="10")],
        watches=[FakeResponse(chunks, hang=True)],
    )
    r = reflector_for(api)
    await until(lambda: r.resource_version == "20")
    assert set(r.items) == {"token-a", "token-c"}
    assert r.items["token-a"].enabled is False


async def test_gone_event_lists_again_and_drops_vanished_records(reflector_for: Any) -> None:
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    api = FakeApi(
        lists=[page([tok("token-a", "5")], rv="10"), page([tok("token-b", "30")], rv="30")],
        watches=[FakeResponse([event("ERROR", gone)])],
    )
    r = reflector_for(api)
    await until(lambda: r.lists == 2)
    assert set(r.items) == {"token-b"}
    assert r.resource_version == "30"


async def test_gone_http_status_lists_again(reflector_for: Any) -> None:
    api = FakeApi(
        lists=[page([], rv="10"), page([tok("token-x", "40")], rv="40")],
        watches=[FakeResponse([], status=410)],
    )
    r = reflector_for(api)
    await until(lambda: r.lists == 2)
    assert set(r.items) == {"token-x"}


async def test_list_errors_back_off_and_retry(reflector_for: Any) -> None:
    api = FakeApi(lists=[ApiError(404), ApiError(403), OSError("refused"), page([], rv="1")])
    r = reflector_for(api)
    await until(r.synced.is_set)
    assert r.lists == 1


async def test_watch_errors_resume_from_the_last_version(reflector_for: Any) -> None:
    api = FakeApi(
        lists=[page([], rv="10")],
        watches=[
            FakeResponse([event("ADDED", tok("token-a", "11")), ConnectionResetError("reset")]),
            FakeResponse([], status=500),
            FakeResponse([b"not json\n"]),
            FakeResponse([event("ERROR", {"code": 500, "reason": "InternalError"})]),
            FakeResponse([TimeoutError()]),  # idle: reopen quietly
        ],
    )
    r = reflector_for(api)
    await until(lambda: len([c for c in api.calls if c.get("watch")]) >= 6)
    watches = [c for c in api.calls if c.get("watch")]
    assert [w["resource_version"] for w in watches[:6]] == ["10", "11", "11", "11", "11", "11"]
    assert r.lists == 1 and set(r.items) == {"token-a"}


async def test_continue_token_expiry_restarts_the_list(reflector_for: Any) -> None:
    api = FakeApi(
        lists=[
            page([tok("token-a", "5")], cont="c1"),
            ApiError(410),
            page([tok("token-b", "7")], rv="7"),
        ]
    )
    r = reflector_for(api)
    await until(r.synced.is_set)
    assert set(r.items) == {"token-b"}


async def test_cache_is_synced_when_both_kinds_are() -> None:
    api = FakeApi(lists=[page([], rv="1")])
    cache = RecordCache(api, "herdgate-system", FAST)
    task = asyncio.create_task(cache.run())
    try:
        await until(lambda: len(api.calls) >= 2)
        assert not cache.synced  # one of the two LISTs failed and is backing off
        api.lists.append(page([], rv="2"))
        await until(lambda: cache.synced)
        assert {c["plural"] for c in api.calls} == {TOKEN_PLURAL, USER_PLURAL}
        assert cache.tokens == {} and cache.users == {}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_outside_a_pod_without_a_kubeconfig_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not kubernetes' "Service host/port is not set.": what is missing, and what to do."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(WebhookError) as err:
        await open_api("")
    assert str(err.value).startswith("no cluster to watch: not running in a pod")
    assert "pass --kubeconfig FILE" in str(err.value)
