"""The red team's findings, pure logic (the end-to-end attacks are in
``tests/integration/test_redteam.py``)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import unquote_plus

import hpack
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from config.errors import ConfigError
from config.identity import Identity
from config.schema import AuditSettings, TokenSettings
from gateway import errors
from gateway.api import oauth_login
from gateway.front import h2_protocol as http2
from gateway.front.h2_protocol import PREFACE, RequestReceived, ServerConnection, Terminated
from gateway.identity.directory import DIRECTORY, Directory, TooManyTokens
from gateway.identity.ratelimit import Limit, LoginLimiter
from gateway.operations import health
from gateway.proxy import heads, impersonation, paths, rawresponse, requestinfo
from gateway.proxy import sessions as sessions_module
from gateway.proxy.exchange import Exchange
from gateway.proxy.sessions import Sessions
from gateway.store.base import Change
from gateway.store.records import (
    BINDING,
    BROWSER_LOGIN,
    CLUSTER,
    LOGIN_FAILURE,
    TOKEN,
    USER,
    Binding,
    Cluster,
    Token,
    User,
    to_doc,
)
from gateway.store.sqlite import SQLiteStore
from gateway.telemetry import metrics
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.drain import Drain
from tests.unit.gateway.proxy.test_exchange import request_of

POST = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"gw:8443"),
    (b":path", b"/k8s/clusters/c-1/api/v1/namespaces/default/configmaps"),
]


def _started() -> ServerConnection:
    server = ServerConnection()
    server.receive(PREFACE + http2._pack(http2.SETTINGS, 0, 0, b""))
    server.data_to_send()
    return server


def _resets(server: ServerConnection) -> list[tuple[int, int]]:
    out = b"".join(server.data_to_send())
    found = []
    while out:
        length = int.from_bytes(out[:3], "big")
        if out[3] == http2.RST_STREAM:
            found.append((int.from_bytes(out[5:9], "big"), int.from_bytes(out[9:13], "big")))
        out = out[9 + length :]
    return found


# 1. content-length too long for a number


@given(digits=st.integers(min_value=19, max_value=16_000), zeros=st.booleans())  # one frame
def test_a_content_length_of_too_many_digits_is_a_stream_error(digits: int, zeros: bool) -> None:
    server = _started()
    value = b"0" * (digits - 1) + b"7" if zeros else b"9" * digits
    block = hpack.Encoder().encode([*POST, (b"content-length", value)], huffman=False)
    events = server.receive(http2._pack(http2.HEADERS, 0x4, 1, block))
    assert not [e for e in events if isinstance(e, RequestReceived)]
    assert _resets(server) == [(1, http2.PROTOCOL_ERROR)]
    assert not [e for e in events if isinstance(e, Terminated)]
    # The connection goes on: the next request is taken.
    block = hpack.Encoder().encode([*POST, (b"content-length", b"2")], huffman=False)
    events = server.receive(http2._pack(http2.HEADERS, 0x4, 3, block))
    [request] = [e for e in events if isinstance(e, RequestReceived)]
    assert request.content_length == 2


def test_the_largest_content_length_taken_fits_an_int64() -> None:
    server = _started()
    value = b"9" * http2.MAX_CONTENT_LENGTH_DIGITS
    block = hpack.Encoder().encode([*POST, (b"content-length", value)], huffman=False)
    [request] = server.receive(http2._pack(http2.HEADERS, 0x4, 1, block))
    assert isinstance(request, RequestReceived)
    assert request.content_length == int(value) < 2**63


# 2. metrics labels a client can invent


def _requests_total(cluster: str, verb: str, code: str) -> float:
    labels = {"cluster": cluster, "verb": verb, "code": code}
    return REGISTRY.get_sample_value("herdgate_requests_total", labels) or 0.0


def test_invented_verbs_and_codes_are_counted_as_other() -> None:
    cluster = f"c-{uuid.uuid4().hex[:8]}"
    hot = metrics.HotPath()
    for index in range(50):
        hot.request(cluster, f"m{index}xyz", 405, 0.001)
    hot.request(cluster, "watch", 1000, None)
    hot.flush()
    assert _requests_total(cluster, "other", "405") == 50
    assert _requests_total(cluster, "watch", "other") == 1
    series = [
        s.labels
        for m in REGISTRY.collect()
        if m.name == "herdgate_requests"
        for s in m.samples
        if s.labels.get("cluster") == cluster
    ]
    assert {s["verb"] for s in series} == {"other", "watch"}


def test_request_series_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "MAX_REQUEST_SERIES", 10)
    hot = metrics.HotPath()
    clusters = [f"c-{uuid.uuid4().hex[:8]}" for _ in range(30)]
    before = _requests_total("other", "other", "other")
    for cluster in clusters:
        hot.request(cluster, "get", 200, 0.001)
        hot.request(cluster, "get", 200, 0.001)
    hot.flush()
    assert sum(_requests_total(c, "get", "200") for c in clusters) == 20  # the first 10
    assert _requests_total("other", "other", "other") - before == 40
    assert len(hot._requests) == 10 and len(hot._by_labels) == 11


def test_an_unknown_cluster_is_counted_as_other(tmp_path: Path) -> None:
    auditor = AuditLog(AuditSettings(level="metadata"), tmp_path)
    invented = f"c-{uuid.uuid4().hex[:8]}"
    before = _requests_total("other", "get", "404")
    exchange = Exchange(auditor)
    exchange.cluster_id = invented  # the path's, never found
    exchange.status = 404
    exchange.finish(request_of("GET", "/", remote=""))
    metrics.HOT.flush()
    assert _requests_total(invented, "get", "404") == 0
    assert _requests_total("other", "get", "404") - before == 1


# 3. caches a client could fill with big keys


def test_long_targets_are_not_cached() -> None:
    base = "/k8s/clusters/c-1/api/v1/namespaces/default/pods"
    long_target = base + "?x=" + "a" * 2000
    short_target = base + "?x=" + "a" * (paths.CACHED_TARGET_BYTES - len(base) - 3)
    assert len(short_target) == paths.CACHED_TARGET_BYTES
    split = paths.split_cluster_path(long_target)
    assert split.target.endswith("a" * 2000)
    assert long_target not in paths._split_cache
    paths.split_cluster_path(short_target)
    assert short_target in paths._split_cache
    info = requestinfo.request_info("GET", split.target)
    assert info.verb == "list"
    assert ("GET", split.target, False) not in requestinfo._cache
    requestinfo.request_info("GET", "/api/v1/pods")
    assert ("GET", "/api/v1/pods", False) in requestinfo._cache
    method = "M" * 65
    assert requestinfo.request_info(method, "/api/v1/pods").verb == method.lower()
    assert (method, "/api/v1/pods", False) not in requestinfo._cache


def test_long_field_names_are_checked_but_not_remembered() -> None:
    long_name = b"X-" + b"n" * 100
    head = heads.request_head(b"GET", b"/", [(long_name, b"v"), (b"X-Short", b"v")])
    assert long_name in head
    assert long_name not in heads._VALID_NAMES
    assert b"X-Short" in heads._VALID_NAMES
    with pytest.raises(heads.UnsafeHead):
        heads.request_head(b"GET", b"/", [(long_name + b"\r\nX-Bad", b"v")])


def test_long_response_field_names_are_not_remembered() -> None:
    long_name = b"X-" + b"n" * 100
    out = rawresponse.h2_headers([(long_name, b"v"), (b"X-Short", b"v")], length=0, request_id="")
    assert (long_name.lower(), b"v") in out
    assert long_name not in rawresponse._h2_names
    assert b"X-Short" in rawresponse._h2_names


# 4. an admin's kubectl --as


@pytest.mark.parametrize(
    "fields",
    [
        [(b"Impersonate-User", b"alice"), (b"Impersonate-User", b"bob")],
        [(b"Impersonate-User", b"alice"), (b"IMPERSONATE-USER", b"alice")],
        [(b"Impersonate-User", b"")],
        [(b"Impersonate-User", b" \t ")],
        [(b"Impersonate-Group", b"system:masters")],
        [(b"Impersonate-Uid", b"1")],
        [(b"Impersonate-Extra-scopes", b"x")],
        [(b"Impersonate-User", b"alice"), (b"Impersonate-Uid", b"1"), (b"impersonate-uid", b"1")],
    ],
)
def test_an_admins_impersonation_must_name_one_user(fields: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(heads.UnsafeHead):
        impersonation.forwarded_headers(
            iter([(b"Accept", b"*/*"), *fields]), keep_impersonation=True, upgrade=False
        )


def test_an_admins_impersonation_of_one_user_is_kept() -> None:
    fields = [
        (b"Impersonate-User", b"alice"),
        (b"Impersonate-Group", b"a"),
        (b"Impersonate-Group", b"b"),
        (b"Impersonate-Uid", b"1"),
        (b"Impersonate-Extra-scopes", b"x"),
    ]
    out = impersonation.forwarded_headers(iter(fields), keep_impersonation=True, upgrade=False)
    assert out == fields
    # Without keep_impersonation nothing is checked: they are all dropped.
    assert (
        impersonation.forwarded_headers(fields * 2, keep_impersonation=False, upgrade=False) == []
    )


# 5. identity values with spaces at their ends


@given(
    name=st.text(min_size=0, max_size=20),
    group=st.text(min_size=1, max_size=20),
    pad=st.sampled_from(["", " ", "\t", "  ", " \t"]),
)
def test_identity_values_survive_an_http_parsers_trimming(name: str, group: str, pad: str) -> None:
    identity = Identity(
        "u-1", pad + name + pad, f"local://{name}", groups=(pad + group, group + pad)
    )
    for _, value in impersonation.impersonation_headers(identity, "read-only"):
        assert value == value.strip(b" \t")  # what a parser reads is what was meant
    groups = [
        v
        for k, v in impersonation.impersonation_headers(identity, None)
        if k == b"Impersonate-Group"
    ]
    if pad and group.strip(" \t"):
        assert group.strip(" \t").encode() not in groups  # never the trimmed identity


def test_spaces_at_the_ends_are_percent_encoded_and_inside_kept() -> None:
    identity = Identity("u-1", " a b ", "local://u-1", groups=("ops ", "\tops", "o p"))
    headers = impersonation.impersonation_headers(identity, None)
    assert [v for k, v in headers if k == b"Impersonate-Group"] == [
        b"ops%20",
        b"%09ops",
        b"o p",
        b"system:authenticated",
    ]
    assert (b"Impersonate-Extra-username", b"%20a b%20") in headers


# 6. query names decoded as kube-apiserver decodes them


def _go_parse_query(query: str) -> dict[str, list[str]]:
    """Go's ``url.ParseQuery`` (net/url, Go 1.17+), written from its source: split at
    ``&``, skip pairs with ``;`` and empty ones, unescape name and value (``+`` is a
    space); a pair with a bad escape is skipped."""
    values: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if ";" in pair or not pair:
            continue
        name, _, value = pair.partition("=")
        if re.search(r"%(?![0-9A-Fa-f]{2})", pair):
            continue
        values.setdefault(unquote_plus(name), []).append(unquote_plus(value))
    return values


def _go_is_watch(query: str) -> bool:
    """kube-apiserver's ``?watch`` on a collection: the first value, and only a missing
    parameter, ``0`` or ``false`` (any case) mean no."""
    values = _go_parse_query(query).get("watch")
    return bool(values) and values[0].lower() not in ("0", "false")


@pytest.mark.parametrize(
    ("query", "watch"),
    [
        ("watch=1", True),
        ("w%61tch=1", True),
        ("%77%61%74%63%68=true", True),
        ("wat%63h", True),
        ("watch=", True),
        ("watch=0&w%61tch=1", False),
        ("w%61tch=1&watch=0", True),
        ("watch=1;x=y", False),
        ("x=y;&watch=1", True),
        ("watch+=1", False),
        ("watch=f%61lse", False),
        ("watch=FALSE", False),
    ],
)
def test_watch_is_read_from_the_query_as_kube_apiserver_reads_it(query: str, watch: bool) -> None:
    assert _go_is_watch(query) is watch  # the reference agrees with the table
    info = requestinfo.request_info("GET", f"/api/v1/namespaces/ns/pods?{query}")
    assert (info.verb == "watch") is watch
    assert info.long_running is watch


_QUERY_PIECES = st.sampled_from(
    ["watch", "w%61tch", "%77atch", "wat%63h", "WATCH", "=", "&", ";", "+", "1", "0", "false",
     "f%61lse", "true", "x", "%20", "follow", "f%6fllow"]
)  # fmt: skip


@given(st.lists(_QUERY_PIECES, max_size=8).map("".join))
def test_watch_and_follow_agree_with_go_for_any_query(query: str) -> None:
    info = requestinfo.request_info("GET", f"/api/v1/namespaces/ns/pods?{query}")
    assert (info.verb == "watch") is _go_is_watch(query)
    values = _go_parse_query(query).get("follow")
    follows = bool(values) and values[0].lower() not in ("0", "false")
    log = requestinfo.request_info("GET", f"/api/v1/namespaces/ns/pods/p/log?{query}")
    assert log.long_running is follows


# 7. /metrics with a cluster-scoped token


class _OneTokenDirectory:
    def __init__(self, cluster_id: str) -> None:
        self.token = Token("token-1", "u-1", "", 0.0, None, cluster_id=cluster_id)

    def authenticate(self, authorization: str | None) -> tuple[Identity, Token]:
        return Identity("u-1", "admin", "local://u-1", is_admin=True), self.token


async def test_metrics_refuse_a_cluster_scoped_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "metrics", _metrics_answer)
    request = SimpleNamespace(app={DIRECTORY: _OneTokenDirectory("c-1")}, headers={})
    with pytest.raises(errors.Forbidden):
        await health.metrics_for_admins(cast(Any, request))
    request = SimpleNamespace(app={DIRECTORY: _OneTokenDirectory("")}, headers={})
    assert (await health.metrics_for_admins(cast(Any, request))).text == "metrics"


async def _metrics_answer(request: Any) -> web.Response:
    return web.Response(text="metrics")


# 8. what an identity holds open is ended when it loses access


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _QuietStore:
    """No other process writes: the feed has nothing (changes are applied by hand)."""

    def recent_changes(self, after: int) -> None:
        return None


def _directory() -> tuple[Directory, _Clock]:
    clock = _Clock()
    d = Directory(cast(Any, _QuietStore()), clock=clock)
    d.apply(CLUSTER, "c-1", to_doc(Cluster("c-1", "one", 0.0)))
    d.apply(CLUSTER, "c-2", to_doc(Cluster("c-2", "two", 0.0)))
    for user_id in ("u-1", "u-2"):
        d.apply(USER, user_id, to_doc(User(user_id, user_id, "", 0.0)))
        d.apply(
            BINDING,
            f"b-{user_id}",
            to_doc(Binding(f"b-{user_id}", "c-1", "cluster-member", 0.0, user_id=user_id)),
        )
    for token_id, user_id, expires in (
        ("t-1", "u-1", None),
        ("t-1b", "u-1", None),
        ("t-2", "u-2", 1060.0),
    ):
        d.apply(TOKEN, token_id, to_doc(Token(token_id, user_id, "", 0.0, expires)))
    return d, clock


class _Ended:
    def __init__(self) -> None:
        self.names: list[str] = []

    def ender(self, name: str) -> Callable[[], None]:
        return lambda: self.names.append(name)


def _who(user_id: str, token_id: str) -> Identity:
    return Identity(user_id, user_id, f"local://{user_id}", token_id=token_id)


def _held(d: Directory) -> tuple[Sessions, _Ended]:
    s = Sessions(d)
    ended = _Ended()
    s.hold(_who("u-1", "t-1"), "c-1", "cluster-member", ended.ender("u-1/t-1"))
    s.hold(_who("u-1", "t-1b"), "c-1", "cluster-member", ended.ender("u-1/t-1b"))
    s.hold(_who("u-2", "t-2"), "c-1", "cluster-member", ended.ender("u-2/t-2"))
    return s, ended


def test_a_revoked_token_ends_what_it_holds_only() -> None:
    d, _ = _directory()
    s, ended = _held(d)
    d.apply(TOKEN, "t-1", None)
    assert ended.names == ["u-1/t-1"]
    assert len(s) == 2


@pytest.mark.parametrize("change", ["disabled", "deleted"])
def test_a_disabled_or_deleted_user_ends_all_it_holds(change: str) -> None:
    d, _ = _directory()
    s, ended = _held(d)
    doc = None if change == "deleted" else to_doc(User("u-1", "u-1", "", 0.0, enabled=False))
    d.apply(USER, "u-1", doc)
    assert sorted(ended.names) == ["u-1/t-1", "u-1/t-1b"]
    assert len(s) == 1


def test_a_change_seen_on_the_feed_ends_it_too() -> None:
    d, _ = _directory()
    _, ended = _held(d)
    d.apply_change(Change(d.revision + 1, TOKEN, "t-2", None))  # another process's write
    assert ended.names == ["u-2/t-2"]


@pytest.mark.parametrize(
    ("role", "ends"),
    [(None, True), ("read-only", True), ("cluster-member", False), ("cluster-owner", False)],
)
def test_a_lowered_or_lost_role_ends_it(role: str | None, ends: bool) -> None:
    d, _ = _directory()
    _, ended = _held(d)
    binding = None if role is None else to_doc(Binding("b-u-2", "c-1", role, 0.0, user_id="u-2"))
    d.apply(BINDING, "b-u-2", binding)
    assert ended.names == (["u-2/t-2"] if ends else [])


def test_a_deleted_cluster_ends_what_is_held_on_it() -> None:
    d, _ = _directory()
    s, ended = _held(d)
    d.apply(USER, "u-3", to_doc(User("u-3", "u-3", "", 0.0, admin=True)))
    s.hold(_who("u-3", ""), "c-2", "cluster-owner", ended.ender("admin on c-2"))
    d.apply(CLUSTER, "c-2", None)
    assert ended.names == ["admin on c-2"]


def test_what_is_forgotten_is_not_ended_and_nothing_is_kept() -> None:
    d, _ = _directory()
    s = Sessions(d)
    ended = _Ended()
    forget = s.hold(_who("u-1", "t-1"), "c-1", "cluster-member", ended.ender("x"))
    forget()
    forget()  # twice is harmless
    d.apply(TOKEN, "t-1", None)
    assert ended.names == [] and len(s) == 0
    assert s._by_token == {} and s._by_user == {}


async def test_an_expired_token_ends_what_it_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions_module, "CHECK_EVERY_S", 0.01)
    d, clock = _directory()
    s, ended = _held(d)
    await asyncio.sleep(0.05)
    assert ended.names == []
    clock.now = 1060.0  # t-2 expires
    for _ in range(100):
        if ended.names:
            break
        await asyncio.sleep(0.01)
    assert ended.names == ["u-2/t-2"]
    assert len(s) == 2


def test_hold_registers_with_the_drain_when_asked() -> None:
    d, _ = _directory()
    s = Sessions(d)
    drain = Drain()
    ended = _Ended()
    forget = sessions_module.hold(
        s, drain, _who("u-1", "t-1"), "c-1", "cluster-member", ended.ender("w")
    )
    assert len(s) == 1
    forget()
    assert drain.start() == 0 and len(s) == 0
    sessions_module.hold(s, Drain(), None, "c-1", None, ended.ender("anonymous"))
    assert len(s) == 0


# fresh attack pass: the browser login's callback (login CSRF)


async def test_a_browser_login_is_taken_only_with_the_cookie_it_started_with(
    tmp_path: Path,
) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    try:
        logins = oauth_login.BrowserLogins(store)
        state = await logins.add("oidc", "browser-secret")
        assert await logins.take(state, "oidc", "") is None  # the victim's browser: no cookie
        assert await logins.take(state, "oidc", "another-login") is None
        taken = await logins.take(state, "oidc", "browser-secret")  # still there for its own
        verifier, nonce = oauth_login.derived_secrets("browser-secret", state)
        assert taken is not None and (taken.code_verifier, taken.nonce) == (verifier, nonce)
        assert await logins.take(state, "oidc", "browser-secret") is None  # once
    finally:
        await store.close()


async def test_pending_browser_logins_are_bounded_per_address_and_in_all(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(oauth_login, "MAX_PENDING_STATES", 40)
    store = await SQLiteStore(tmp_path / "db").open()
    try:
        logins = oauth_login.BrowserLogins(store)
        flood = [await logins.add("oidc", "b", "10.0.0.1") for _ in range(100)]
        per = oauth_login.MAX_PENDING_PER_ADDRESS
        pending = [d for d in await store.list(BROWSER_LOGIN) if not d["id"].startswith("addr-")]
        assert len(pending) == per  # the flooding address keeps its newest only
        assert all([await logins.take(s, "oidc", "b") is None for s in flood[:-per]])
        # Many addresses: the sweep drops the oldest, and a new login always gets in.
        for index in range(60):
            await logins.add("oidc", "b", f"10.1.0.{index}")
        mine = await logins.add("oidc", "me", "192.0.2.1")
        assert await logins.sweep() > 0
        pending = [d for d in await store.list(BROWSER_LOGIN) if not d["id"].startswith("addr-")]
        assert len(pending) <= 40
        assert await logins.take(mine, "oidc", "me") is not None
    finally:
        await store.close()


async def test_oauth_failures_count_against_the_address_only(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    try:
        limiter = LoginLimiter(store, Limit(5, 900), Limit(20, 900))
        for _ in range(10):
            await limiter.address_failed("10.0.0.1", 0.0)
        assert await limiter.address_retry_after("10.0.0.1", 1.0) == 0.0  # under its 20
        assert await limiter.address_retry_after("10.0.0.2", 1.0) == 0.0
        assert await limiter.retry_after("oidc", "", "10.0.0.2", 1.0) == 0.0  # no user key
        for _ in range(10):
            await limiter.address_failed("10.0.0.1", 0.0)
        assert await limiter.address_retry_after("10.0.0.1", 1.0) > 0
        assert await limiter.address_retry_after("10.0.0.2", 1.0) == 0.0
    finally:
        await store.close()


def test_a_failing_check_or_ender_never_fails_the_directorys_write() -> None:
    d, _ = _directory()
    s = Sessions(d)

    def broken() -> None:
        raise RuntimeError("ender bug")

    s.hold(_who("u-1", "t-1"), "c-1", "cluster-member", broken)
    d.apply(TOKEN, "t-1", None)  # the ender raises: logged, the write goes on
    assert len(s) == 0
    s.hold(_who("u-2", "t-2"), "c-1", "cluster-member", lambda: None)
    d.users["u-2"] = cast(Any, "not a user")  # the check will raise
    d.apply(TOKEN, "t-2", to_doc(Token("t-2", "u-2", "", 0.0, None)))  # logged, goes on


def test_an_answer_held_after_its_identity_lost_access_is_ended_at_once() -> None:
    """Revoked while the API server was still preparing the answer's head."""
    d, _ = _directory()
    s = Sessions(d)
    ended = _Ended()
    d.apply(TOKEN, "t-1", None)
    s.hold(_who("u-1", "t-1"), "c-1", "cluster-member", ended.ender("late"))
    s.hold(_who("u-2", "t-2"), "c-1", "cluster-member", ended.ender("fine"))
    assert ended.names == ["late"] and len(s) == 1


# fresh attack pass: tokens without end


async def test_tokens_per_user_are_bounded_and_expired_ones_removed(tmp_path: Path) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    try:
        clock = _Clock()
        d = Directory(store, clock=clock)
        await d.load()
        user = User("u-1", "alice", "", 0.0)
        await d.put(USER, user)
        for _ in range(5):
            await d.issue_token(user, 3600, kind="api", max_per_user=5)
        with pytest.raises(TooManyTokens):
            await d.issue_token(user, 3600, kind="api", max_per_user=5)
        assert len(d._tokens_by_user["u-1"]) == 5
        # A login needs a session or kubeconfig token to replace: all five are API ones.
        with pytest.raises(TooManyTokens):
            await d.issue_token(user, 3600, kind="session", max_per_user=5)
        clock.now += 7200  # all five expire: removed when the next one is issued
        first, _ = await d.issue_token(user, 3600, kind="session", max_per_user=5)
        assert set(d._tokens_by_user["u-1"]) == {first.id}
        for _ in range(6):  # logins replace the oldest session token
            clock.now += 1
            newest, _ = await d.issue_token(user, 3600, kind="session", max_per_user=5)
        assert len(d._tokens_by_user["u-1"]) == 5
        assert first.id not in d.tokens and newest.id in d.tokens
        # Unlimited without max_per_user (the gateway's own callers pass the setting).
        await d.issue_token(user, 3600, kind="api")
        assert len(d._tokens_by_user["u-1"]) == 6
        await d.delete(TOKEN, newest.id)
        assert newest.id not in d._tokens_by_user["u-1"]
    finally:
        await store.close()


def test_max_tokens_per_user_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        TokenSettings(max_per_user=0)


async def test_attempts_let_through_count_at_once_and_can_be_taken_back(
    tmp_path: Path,
) -> None:
    store = await SQLiteStore(tmp_path / "db").open()
    try:
        limiter = LoginLimiter(store, Limit(5, 900), Limit(20, 900))
        waits = await asyncio.gather(
            *(limiter.begin("local", "alice", "10.0.0.1", 0.0) for _ in range(30))
        )
        assert [w == 0 for w in waits].count(True) == 5  # all together: five, as in turn
        other = LoginLimiter(store, Limit(5, 900), Limit(20, 900))
        for _ in range(10):  # successes and unavailable providers are taken back
            assert await other.begin("local", "bob", "10.0.0.2", 1.0) == 0
            await other.withdraw("local", "bob", "10.0.0.2", 1.0)
        assert await other.retry_after("local", "bob", "10.0.0.2", 2.0) == 0
        names = {d["id"] for d in await store.list(LOGIN_FAILURE)}
        assert other.users.doc_key("local\0bob") not in names
        assert other.addresses.doc_key("10.0.0.2") not in names
    finally:
        await store.close()


def test_empty_cookie_crumbs_are_not_joined_into_a_value_with_spaces_at_its_end() -> None:
    """Found by test_http2_fuzz (hypothesis): two empty ``cookie`` fields were joined as
    ``"; "``, a value with whitespace at its end in a request called well-formed."""
    server = _started()
    get = [(b":method", b"GET"), *POST[1:]]
    for stream_id, crumbs in ((1, [b"", b""]), (3, [b"a=1", b"", b"b=2"])):
        fields = [*get, *((b"cookie", c) for c in crumbs)]
        block = hpack.Encoder().encode(fields, huffman=False)
        events = server.receive(http2._pack(http2.HEADERS, 0x5, stream_id, block))
        [request] = [e for e in events if isinstance(e, RequestReceived)]
        cookies = [v for n, v in request.headers if n == b"cookie"]
        assert cookies == ([] if stream_id == 1 else [b"a=1; b=2"])
