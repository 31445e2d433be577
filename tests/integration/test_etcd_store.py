"""The etcd store against real etcd members: TLS with client certificates, user/password
authentication (tokens renewed when etcd lets them expire), fail-over across members,
racing patches from two clients, and a watch that etcd compacted away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from gateway.store.base import Change, Compacted, StoreError, StoreUnavailable
from gateway.store.etcd import EtcdOptions, EtcdStore
from tests.fixtures.etcd_secure import EtcdCluster, Pki, make_pki, start_etcd_members
from tests.integration.env import Gateway, free_port
from tests.integration.output import error_lines
from tests.integration.test_gateway_start_errors import _start

pytestmark = pytest.mark.integration

USER, PASSWORD = "herdgate", "etcd-secret-1"
ROOT_PASSWORD = "root-secret"
PREFIX = "/secure/"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    tmp = tmp_path_factory.mktemp("etcd-secure")
    pki = make_pki(tmp / "pki")
    # Tokens live 2 s: the store must renew them.
    cluster = start_etcd_members(tmp, 1, pki, ["--auth-token-ttl", "2"])
    try:
        cluster.enable_auth(ROOT_PASSWORD, USER, PASSWORD, PREFIX)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = start_etcd_members(tmp_path_factory.mktemp("etcd-three"), 3)
    try:
        yield cluster
    finally:
        cluster.stop()


def _options(cluster: EtcdCluster, pki: Pki, **changes: object) -> EtcdOptions:
    values: dict[str, object] = {
        "endpoints": tuple(cluster.urls),
        "prefix": PREFIX,
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        "username": USER,
        "password": lambda: PASSWORD,
        "request_timeout_s": 3.0,
        "dial_timeout_s": 1.0,
    }
    values.update(changes)
    return EtcdOptions(**values)  # type: ignore[arg-type]


async def test_tls_client_certificate_and_password(secure: EtcdCluster) -> None:
    assert secure.pki is not None
    store = await EtcdStore(_options(secure, secure.pki)).open()
    try:
        key = uuid.uuid4().hex
        await store.create("users", key, {"id": key, "n": 1})
        assert await store.get("users", key) == {"id": key, "n": 1}
        first_token = store._token
        assert first_token
        # etcd forgets the token after --auth-token-ttl of disuse: the store takes a new one.
        await asyncio.sleep(3.5)
        assert await store.patch("users", key, {"n": 2}) is not None
        assert store._token and store._token != first_token
        assert await store.get("users", key) == {"id": key, "n": 2}
        # Its watch authenticates too.
        feed = store.changes(await store.revision())
        await store.put("users", key, {"id": key, "n": 3})
        change = await asyncio.wait_for(_next_write(feed), 5)
        assert (change.kind, change.key, change.value) == ("users", key, {"id": key, "n": 3})
        await feed.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def _next_write(feed: AsyncIterator[Change]) -> Change:
    async for change in feed:
        if change.kind:
            return change
    raise AssertionError("the feed ended")


async def test_wrong_password_is_a_clear_error(secure: EtcdCluster) -> None:
    assert secure.pki is not None
    with pytest.raises(StoreError, match="etcd refused user 'herdgate'"):
        await EtcdStore(_options(secure, secure.pki, password=lambda: "wrong")).open()


async def test_outside_the_prefix_is_refused(secure: EtcdCluster) -> None:
    assert secure.pki is not None
    store = EtcdStore(_options(secure, secure.pki, prefix="/elsewhere/"))
    with pytest.raises(StoreError, match="permission denied"):
        await store.open()


async def test_an_untrusted_server_certificate_is_refused(secure: EtcdCluster) -> None:
    assert secure.pki is not None
    with pytest.raises(StoreUnavailable, match="certificate verify failed"):
        await EtcdStore(_options(secure, secure.pki, ca_file=str(secure.pki.other_ca))).open()


async def test_without_a_client_certificate_etcd_refuses(secure: EtcdCluster) -> None:
    assert secure.pki is not None
    with pytest.raises(StoreUnavailable):
        await EtcdStore(_options(secure, secure.pki, cert_file="", key_file="")).open()


async def test_racing_patches_from_two_clients_lose_nothing(three: EtcdCluster) -> None:
    prefix = f"/race-{uuid.uuid4().hex[:6]}/"
    a = await EtcdStore([three.urls[0]], prefix).open()
    b = await EtcdStore([three.urls[1]], prefix).open()
    try:
        await a.create("users", "u", {"id": "u"})

        async def patches(store: EtcdStore, name: str) -> None:
            for i in range(25):
                assert await store.patch("users", "u", {f"{name}{i}": i}) is not None

        await asyncio.gather(patches(a, "a"), patches(b, "b"), patches(a, "c"), patches(b, "d"))
        doc = await a.get("users", "u")
        assert doc is not None
        assert len(doc) == 1 + 4 * 25, "a patch was lost"
    finally:
        await a.close()
        await b.close()


async def test_swap_and_create_under_races(three: EtcdCluster) -> None:
    prefix = f"/swap-{uuid.uuid4().hex[:6]}/"
    stores = [await EtcdStore([url], prefix).open() for url in three.urls]
    try:
        results = await asyncio.gather(
            *(s.swap("leases", "l", None, {"holder": str(i)}) for i, s in enumerate(stores))
        )
        assert sum(r is not None for r in results) == 1, "two took the same lease"
        winner = await stores[0].get("leases", "l")
        assert winner is not None
        # Counter increments by compare-and-set from three clients: none lost.
        await stores[0].put("counters", "c", {"n": 0})

        async def increment(store: EtcdStore) -> None:
            for _ in range(10):
                for _ in range(200):
                    current = await store.get("counters", "c")
                    assert current is not None
                    if await store.swap("counters", "c", current, {"n": current["n"] + 1}):
                        break
                else:
                    raise AssertionError("never won a swap")

        await asyncio.gather(*(increment(s) for s in stores))
        assert await stores[0].get("counters", "c") == {"n": 30}
    finally:
        for s in stores:
            await s.close()


async def test_compacted_watch_raises_compacted(three: EtcdCluster) -> None:
    prefix = f"/compact-{uuid.uuid4().hex[:6]}/"
    store = await EtcdStore(three.urls, prefix).open()
    try:
        start = await store.revision()
        for i in range(3):
            await store.put("users", f"u{i}", {"id": f"u{i}"})
        await store.compact(await store.revision())
        feed = store.changes(start)
        with pytest.raises(Compacted, match="are gone"):
            await asyncio.wait_for(_next_write(feed), 5)
    finally:
        await store.close()


async def test_one_member_killed_requests_go_on(tmp_path: Path) -> None:
    cluster = start_etcd_members(tmp_path, 3)
    store = await EtcdStore(EtcdOptions(tuple(cluster.urls), "/failover/")).open()
    try:
        feed = store.changes(await store.revision())
        await store.put("users", "before", {"id": "before"})
        assert (await asyncio.wait_for(_next_write(feed), 5)).key == "before"
        cluster.kill(0)  # the member both the requests and the watch were using
        for i in range(20):
            await store.put("users", f"u{i}", {"id": f"u{i}"})
            assert await store.get("users", f"u{i}") == {"id": f"u{i}"}
        seen = set()
        async with asyncio.timeout(10):
            while len(seen) < 20:
                seen.add((await _next_write(feed)).key)
        assert seen == {f"u{i}" for i in range(20)}
        await feed.aclose()  # type: ignore[attr-defined]
        # Every member down: a write fails at once with StoreUnavailable.
        cluster.stop()
        started = asyncio.get_running_loop().time()
        with pytest.raises(StoreUnavailable, match="etcd unreachable"):
            await store.put("users", "x", {"id": "x"})
        assert asyncio.get_running_loop().time() - started < 4  # not the 5 s timeout
        # Back: the same store object works again.
        cluster.start()
        async with asyncio.timeout(20):
            while True:
                try:
                    await store.put("users", "after", {"id": "after"})
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.2)
        assert await store.get("users", "after") == {"id": "after"}
    finally:
        await store.close()
        cluster.stop()


def _gateway_config(tmp_path: Path, store: dict[str, object]) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"store": {"backend": "etcd", **store}}))
    return str(path)


def test_gateway_start_with_a_wrong_etcd_password_is_one_line(
    secure: EtcdCluster, tmp_path: Path
) -> None:
    assert secure.pki is not None
    pki = secure.pki
    (tmp_path / "pw").write_text("not-the-password\n")
    config = _gateway_config(tmp_path, {
        "etcd_endpoints": secure.urls, "etcd_prefix": PREFIX, "etcd_username": USER,
        "etcd_password_file": str(tmp_path / "pw"),
        "etcd_tls": {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                     "key_file": str(pki.client_key)},
    })  # fmt: skip
    done = _start(tmp_path / "state", "--listen", f"127.0.0.1:{free_port()}", "--config", config)
    assert done.returncode == 1, done
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        "herdgate gateway: etcd refused user 'herdgate'"
    ), lines
    assert "not-the-password" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


def test_gateway_start_without_etcd_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    config = _gateway_config(tmp_path, {"etcd_endpoints": [f"http://127.0.0.1:{port}"]})
    done = _start(tmp_path / "state", "--listen", f"127.0.0.1:{free_port()}", "--config", config)
    assert done.returncode == 1, done
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith(
        f"herdgate gateway: etcd unreachable (http://127.0.0.1:{port})"
    ), lines


def test_gateway_start_with_a_missing_etcd_ca_is_one_line(tmp_path: Path) -> None:
    config = _gateway_config(tmp_path, {
        "etcd_endpoints": ["https://127.0.0.1:2379"],
        "etcd_tls": {"ca_file": str(tmp_path / "nope.crt")},
    })  # fmt: skip
    done = _start(tmp_path / "state", "--listen", f"127.0.0.1:{free_port()}", "--config", config)
    assert done.returncode != 0, done
    assert f"store.etcd_tls.ca_file: cannot read {tmp_path / 'nope.crt'}" in done.stderr
    assert "Traceback" not in done.stderr


async def test_progress_notifications_advance_the_feed(tmp_path: Path) -> None:
    """etcd's progress notifications (every 200 ms here; 10 minutes by default) arrive as
    progress marks: the feed's revision passes writes outside our prefix too."""
    cluster = start_etcd_members(
        tmp_path, 1, extra_args=["--experimental-watch-progress-notify-interval", "200ms"]
    )
    store = await EtcdStore(EtcdOptions(tuple(cluster.urls), "/progress/")).open()
    other = await EtcdStore(EtcdOptions(tuple(cluster.urls), "/someone-else/")).open()
    try:
        feed = store.changes(await store.revision())
        foreign = await other.put("things", "x", {"id": "x"})
        async with asyncio.timeout(10):
            async for change in feed:
                assert not change.kind, "a write outside the prefix came through"
                if change.revision >= foreign:
                    break
        await feed.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()
        await other.close()
        cluster.stop()


def test_a_gateway_on_etcd_with_tls_and_a_password(secure: EtcdCluster, tmp_path: Path) -> None:
    """The settings reach the store: a gateway serves from an etcd that wants a client
    certificate and a password (given in the environment), its keys under the prefix."""
    assert secure.pki is not None
    pki = secure.pki
    config = _gateway_config(tmp_path, {
        "etcd_endpoints": secure.urls, "etcd_prefix": PREFIX + "gw/", "etcd_username": USER,
        "etcd_tls": {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                     "key_file": str(pki.client_key)},
    })  # fmt: skip
    gateway = Gateway(tmp_path / "state", free_port(), tmp_path / "gateway.log")
    gateway.extra_args = ["--config", config]
    gateway.extra_env = {"HERDGATE_STORE__ETCD_PASSWORD": PASSWORD}
    gateway.start()
    try:
        admin = gateway.admin()
        created = admin.post(
            "/v3/users", {"username": "on-secure-etcd", "password": "pw-123456789"}
        )
        assert admin.get(f"/v3/users/{created['id']}")["username"] == "on-secure-etcd"
        keys = secure.etcdctl(
            "get", "--prefix", "--keys-only", PREFIX + "gw/users/", user=f"root:{ROOT_PASSWORD}"
        )
        assert f"{PREFIX}gw/users/{created['id']}" in keys.split()
        assert PASSWORD not in gateway.log()
    finally:
        gateway.stop()


async def test_a_value_written_by_hand_does_not_stop_the_feed(three: EtcdCluster) -> None:
    prefix = f"/garbage-{uuid.uuid4().hex[:6]}/"
    store = await EtcdStore(three.urls, prefix).open()
    try:
        feed = store.changes(await store.revision())
        three.etcdctl("put", f"{prefix}users/by-hand", "not json")
        await store.put("users", "after", {"id": "after"})
        first = await asyncio.wait_for(_next_write(feed), 5)
        assert (first.key, first.value) == ("by-hand", None)  # unusable: absent
        second = await asyncio.wait_for(_next_write(feed), 5)
        assert (second.key, second.value) == ("after", {"id": "after"})
        assert await store.list("users") == [{"id": "after"}]
        assert await store.get("users", "by-hand") is None
        await feed.aclose()  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_an_etcd_behind_the_feed_raises_compacted(three: EtcdCluster) -> None:
    """A watch resumed at a revision etcd has not reached (etcd restored from a backup or
    replaced by an empty one) would miss every write until then: Compacted instead."""
    store = await EtcdStore(three.urls, f"/restored-{uuid.uuid4().hex[:6]}/").open()
    try:
        feed = store.changes(await store.revision() + 1000)
        with pytest.raises(Compacted, match="behind"):
            await asyncio.wait_for(_next_write(feed), 5)
    finally:
        await store.close()
