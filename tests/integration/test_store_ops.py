"""Issue 19: the store's schema version (both backends), ``herdgate store backup`` →
wipe → ``restore`` giving identical state (SQLite and a real etcd), and ``herdgate store
migrate`` from a populated SQLite store to etcd: every record kept, and a token issued
before the move works through a gateway started on etcd afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.schema import StoreSettings
from gateway.store import open_store
from gateway.store.backup import EPHEMERAL, take
from gateway.store.base import SchemaTooNew, Store
from gateway.store.migrations import META, SCHEMA_KEY, SCHEMA_VERSION, stored_version
from gateway.store.records import USER, USERNAME
from tests.fixtures.etcd import Etcd, etcd  # noqa: F401 - the fixture
from tests.integration.conftest import USER_PASSWORD
from tests.integration.env import ADMIN_PASSWORD, REPO_ROOT, ApiError, Gateway, free_port
from tests.integration.output import error_lines

pytestmark = pytest.mark.integration

Records = dict[tuple[str, str], dict[str, Any]]


def herdgate(*args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERDGATE_")}
    command = [sys.executable, "-m", "herdgate", *args]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def settings_for(backend: str, tmp: Path, etcd_url: str = "") -> StoreSettings:
    if backend == "sqlite":
        return StoreSettings(backend="sqlite", sqlite_path=str(tmp / "store" / "herdgate.db"))
    prefix = f"/ops-{uuid.uuid4().hex[:8]}/"
    return StoreSettings(backend="etcd", etcd_endpoints=(etcd_url,), etcd_prefix=prefix)


def store_yaml(settings: StoreSettings) -> dict[str, Any]:
    if settings.backend == "sqlite":
        return {"backend": "sqlite", "sqlite_path": settings.sqlite_path}
    return {
        "backend": "etcd",
        "etcd_endpoints": list(settings.etcd_endpoints),
        "etcd_prefix": settings.etcd_prefix,
    }


async def _with_store(settings: StoreSettings, tmp: Path, fn: Any, migrate: bool = False) -> Any:
    store = await open_store(settings, tmp, migrate=migrate)
    try:
        return await fn(store)
    finally:
        await store.close()


def records(settings: StoreSettings, tmp: Path) -> Records:
    """Every record the store holds (as a backup sees them: no heartbeats, no leases)."""

    async def read(store: Store) -> Records:
        return {(kind, key): doc for kind, key, doc in (await take(store)).documents}

    result: Records = asyncio.run(_with_store(settings, tmp, read))
    return result


def wipe(settings: StoreSettings, tmp: Path) -> None:
    """Everything gone: the SQLite files, or every key under the etcd prefix."""
    if settings.backend == "sqlite":
        for path in Path(settings.sqlite_path).parent.glob("herdgate.db*"):
            path.unlink()
        return

    async def delete_all(store: Store) -> None:
        for kind, key, _ in (await store.snapshot()).documents:
            await store.delete(kind, key)

    asyncio.run(_with_store(settings, tmp, delete_all))


def populate(gateway: Gateway) -> dict[str, str]:
    """Users, tokens, a cluster with its registration token, a role template, bindings, a
    project and a project binding, made through the management API; the secrets."""
    admin = gateway.admin()
    user = admin.post("/v3/users", {"username": "mia", "password": USER_PASSWORD})
    cluster = admin.post("/v3/clusters", {"name": "prod"})
    registration = admin.post("/v3/clusterregistrationtokens", {"clusterId": cluster["id"]})
    template = admin.post(
        "/v3/roletemplates",
        {
            "name": "Config reader",
            "context": "cluster",
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        },
    )
    admin.post(
        "/v3/clusterroletemplatebindings",
        {"clusterId": cluster["id"], "userId": user["id"], "roleTemplateId": template["id"]},
    )
    project = admin.post("/v3/projects", {"clusterId": cluster["id"], "name": "apps"})
    admin.post(
        "/v3/projectroletemplatebindings",
        {"projectId": project["id"], "userId": user["id"], "roleTemplateId": "project-member"},
    )
    mia = gateway.api()
    mia.token = mia.login("mia", USER_PASSWORD)
    api_token = mia.post("/v3/tokens", {"description": "ci"})["token"]
    return {
        "session": mia.token,
        "api": api_token,
        "registration": str(registration["token"]),
        "cluster": cluster["id"],
        "user": user["id"],
    }


def check_kinds(held: Records) -> None:
    kinds = {kind for kind, _ in held}
    for kind in (
        "users",
        "usernames",
        "tokens",
        "clusters",
        "registrationtokens",
        "roletemplates",
        "bindings",
        "projects",
        "projectbindings",
    ):
        assert kind in kinds, f"no {kind} in {sorted(kinds)}"
    assert not kinds & EPHEMERAL and META not in kinds


def works(gateway: Gateway, secrets: dict[str, str]) -> None:
    """The tokens issued before still work, with the same access; the admin logs in."""
    for token in (secrets["session"], secrets["api"]):
        me = gateway.api(token).get("/v3/users?me=true")["data"]
        assert [u["id"] for u in me] == [secrets["user"]]
        clusters = gateway.api(token).get("/v3/clusters")["data"]
        assert [c["id"] for c in clusters] == [secrets["cluster"]]  # seen through its binding
    gateway.admin()
    with pytest.raises(ApiError) as refused:
        gateway.api("token-nope:" + "x" * 40).get("/v3/clusters")
    assert refused.value.status == 401


def one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    lines = error_lines(result.stderr)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
def test_schema_versions_are_recorded_migrated_and_a_newer_store_refused(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    etcd_url = request.getfixturevalue("etcd").url if backend == "etcd" else ""
    settings = settings_for(backend, tmp_path, etcd_url)

    async def fresh(store: Store) -> int:
        return await stored_version(store)

    assert asyncio.run(_with_store(settings, tmp_path, fresh, migrate=True)) == SCHEMA_VERSION

    # A store from before versions: no schema record, a local user without a name claim.
    async def make_old(store: Store) -> None:
        await store.delete(META, SCHEMA_KEY)
        await store.delete(USERNAME, "old")
        user = {"id": "u-old", "username": "Old", "password_hash": "", "created": 0.0}
        await store.put(USER, "u-old", user)

    asyncio.run(_with_store(settings, tmp_path, make_old))

    async def upgraded(store: Store) -> tuple[int, Any]:
        return await stored_version(store), await store.get(USERNAME, "old")

    version, claim = asyncio.run(_with_store(settings, tmp_path, upgraded, migrate=True))
    assert version == SCHEMA_VERSION
    assert claim is not None and claim["userId"] == "u-old"

    async def make_newer(store: Store) -> None:
        await store.put(META, SCHEMA_KEY, {"id": SCHEMA_KEY, "version": SCHEMA_VERSION + 7})

    asyncio.run(_with_store(settings, tmp_path, make_newer))
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 7}, newer"):
        asyncio.run(_with_store(settings, tmp_path, fresh, migrate=True))

    # A gateway on it refuses to start: one line, exit 1, and nothing written.
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"store": store_yaml(settings)}))
    state = tmp_path / "state"
    started = herdgate(
        "gateway", "--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}", config=config
    )
    one_line(started, 1, "herdgate gateway:", f"schema version {SCHEMA_VERSION + 7}")
    assert asyncio.run(_with_store(settings, tmp_path, fresh)) == SCHEMA_VERSION + 7


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
def test_backup_wipe_restore_gives_identical_state(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    etcd_url = request.getfixturevalue("etcd").url if backend == "etcd" else ""
    settings = settings_for(backend, tmp_path, etcd_url)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"store": store_yaml(settings)}))
    state = tmp_path / "state"
    gateway = Gateway(state, free_port(), tmp_path / "gw.log", extra_args=["--config", str(config)])
    gateway.start()
    try:
        secrets = populate(gateway)
    finally:
        gateway.stop()
    before = records(settings, tmp_path)
    check_kinds(before)

    file = tmp_path / "backup.json"
    done = herdgate("store", "backup", str(file), "--state-dir", str(state), config=config)
    assert done.returncode == 0, done.stderr
    assert f"backed up {len(before)} records" in done.stdout
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    text = file.read_text()
    for secret in (
        ADMIN_PASSWORD,
        USER_PASSWORD,
        secrets["registration"],
        *(secrets[k].split(":")[1] for k in ("api", "session")),
    ):
        assert secret not in text  # secrets stay hashed
    saved = json.loads(text)
    assert saved["schema"] == SCHEMA_VERSION and saved["count"] == len(before)

    wipe(settings, tmp_path)
    assert records(settings, tmp_path) == {}
    done = herdgate("store", "restore", str(file), "--state-dir", str(state), config=config)
    assert done.returncode == 0, done.stderr
    assert records(settings, tmp_path) == before

    # A store that holds records is not restored over, unless asked; then it is exact.
    refused = herdgate("store", "restore", str(file), "--state-dir", str(state), config=config)
    one_line(refused, 1, "herdgate store restore:", f"holds {len(before)} records", "--force")

    async def diverge(store: Store) -> None:
        await store.put("clusters", "c-extra", {"id": "c-extra", "name": "x", "created": 0.0})
        await store.delete("users", secrets["user"])

    asyncio.run(_with_store(settings, tmp_path, diverge))
    done = herdgate(
        "store", "restore", str(file), "--force", "--state-dir", str(state), config=config
    )
    assert done.returncode == 0, done.stderr
    assert records(settings, tmp_path) == before

    # A backup from a newer herdgate is refused, and so is a file that is not a backup.
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**saved, "schema": SCHEMA_VERSION + 1}))
    refused = herdgate(
        "store", "restore", str(newer), "--force", "--state-dir", str(state), config=config
    )
    one_line(refused, 1, f"the backup has schema version {SCHEMA_VERSION + 1}")
    (tmp_path / "junk").write_text("{")
    refused = herdgate("store", "restore", str(tmp_path / "junk"), "--force", config=config)
    one_line(refused, 1, "not a herdgate store backup")
    assert records(settings, tmp_path) == before

    # And a gateway on the restored store takes the tokens issued before the backup.
    gateway.start()
    try:
        works(gateway, secrets)
    finally:
        gateway.stop()


def test_migrate_from_sqlite_to_etcd_keeps_every_record_and_token(
    tmp_path: Path,
    etcd: Etcd,  # noqa: F811
) -> None:
    state = tmp_path / "state"
    single = Gateway(state, free_port(), tmp_path / "single.log")
    single.start()
    try:
        secrets = populate(single)
    finally:
        single.stop()
    source = StoreSettings(backend="sqlite", sqlite_path=str(state / "herdgate.db"))
    before = records(source, tmp_path)
    check_kinds(before)

    prefix = f"/moved-{uuid.uuid4().hex[:8]}"
    target_url = etcd.url.replace("http://", "etcd://") + prefix
    moved = herdgate(
        "store", "migrate", "--from", f"sqlite://{state / 'herdgate.db'}", "--to", target_url
    )
    assert moved.returncode == 0, moved.stderr
    assert f"copied {len(before)} records" in moved.stdout
    target = StoreSettings(backend="etcd", etcd_endpoints=(etcd.url,), etcd_prefix=prefix + "/")
    assert records(target, tmp_path) == before

    again = herdgate(
        "store", "migrate", "--from", f"sqlite://{state / 'herdgate.db'}", "--to", target_url
    )
    one_line(again, 1, "herdgate store migrate:", "records already", "--force")
    missing = herdgate(
        "store", "migrate", "--from", f"sqlite://{tmp_path / 'nope.db'}", "--to", target_url
    )
    one_line(missing, 1, "no store at")
    bad = herdgate("store", "migrate", "--from", "postgres://x", "--to", target_url)
    one_line(bad, 2, "configuration error: --from")
    nobody = f"etcd://127.0.0.1:{free_port()}"
    down = herdgate(
        "store", "migrate", "--from", f"sqlite://{state / 'herdgate.db'}", "--to", nobody
    )
    one_line(down, 1, "herdgate store migrate: etcd unreachable")

    # The same gateway (its certificates in the state directory) started on etcd.
    config = tmp_path / "etcd.yaml"
    config.write_text(yaml.safe_dump({"store": store_yaml(target)}))
    replica = Gateway(
        state, free_port(), tmp_path / "replica.log", extra_args=["--config", str(config)]
    )
    replica.start()
    try:
        works(replica, secrets)
        # The source is left as it was: a way back until the gateways write to etcd.
        assert records(source, tmp_path) == before
        # A running gateway's store is not restored over.
        busy = herdgate(
            "store", "migrate", "--from", f"sqlite://{state / 'herdgate.db'}", "--to", target_url,
            "--force",
        )  # fmt: skip
        one_line(busy, 1, "a gateway is running")
    finally:
        replica.stop()


def test_an_etcd_snapshot_is_read_at_one_revision_across_pages(
    etcd: Etcd,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pages of 7 keys; after the first page another client writes (a new key, a changed
    one, a deleted one): the snapshot holds none of it."""
    from gateway.store import etcd as etcd_module
    from gateway.store.etcd import EtcdStore

    monkeypatch.setattr(etcd_module, "_SNAPSHOT_PAGE", 7)
    prefix = f"/snap-{uuid.uuid4().hex[:8]}/"

    class Meddling(EtcdStore):
        other: EtcdStore
        pages = 0

        async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
            result = await super()._call(path, body)
            if path == "kv/range" and body.get("limit") == 7:
                self.pages += 1
                if self.pages == 1:
                    await self.other.put("clusters", "c-new", {"id": "c-new"})
                    await self.other.put("clusters", "c-03", {"id": "c-03", "changed": True})
                    await self.other.delete("clusters", "c-20")
            return result

    async def run() -> None:
        other = await EtcdStore([etcd.url], prefix).open()
        store = Meddling([etcd.url], prefix)
        await store.open()
        store.other = other
        try:
            for n in range(25):
                await other.put("clusters", f"c-{n:02d}", {"id": f"c-{n:02d}"})
            await other.put("users", "u-1", {"id": "u-1"})
            snapshot = await store.snapshot()
            assert store.pages == 4
            keys = [(kind, key) for kind, key, _ in snapshot.documents]
            assert keys == sorted(keys)
            assert keys == [("clusters", f"c-{n:02d}") for n in range(25)] + [("users", "u-1")]
            assert dict(((k, key), d) for k, key, d in snapshot.documents)[
                ("clusters", "c-03")
            ] == {"id": "c-03"}
            assert snapshot.revision < await other.revision()
        finally:
            await store.close()
            await other.close()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["sqlite", "etcd"])
def test_a_snapshot_holds_every_document_at_the_store_revision(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    etcd_url = request.getfixturevalue("etcd").url if backend == "etcd" else ""
    settings = settings_for(backend, tmp_path, etcd_url)

    async def run(store: Store) -> None:
        await store.put("users", "u-2", {"id": "u-2"})
        await store.put("clusters", "c-1", {"id": "c-1", "name": "a"})
        await store.put("users", "u-1", {"id": "u-1"})
        await store.delete("users", "u-2")
        snapshot = await store.snapshot()
        assert snapshot.revision == await store.revision()
        assert snapshot.documents == [
            ("clusters", "c-1", {"id": "c-1", "name": "a"}),
            (META, SCHEMA_KEY, {"id": SCHEMA_KEY, "version": SCHEMA_VERSION}),
            ("users", "u-1", {"id": "u-1"}),
        ]

    asyncio.run(_with_store(settings, tmp_path, run, migrate=True))


def test_a_gateway_stopped_past_the_sqlite_window_misses_no_revocation(tmp_path: Path) -> None:
    """Two gateways on one SQLite file whose log keeps 20 writes. One is stopped
    (SIGSTOP) while the other revokes a token and writes far more than that; resumed,
    its very next request refuses the revoked token and takes one issued meanwhile."""
    shared = {"backend": "sqlite", "sqlite_path": str(tmp_path / "shared.db")}
    store = {**shared, "sqlite_keep_changes": 20}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"store": store}))
    first = Gateway(
        tmp_path / "a", free_port(), tmp_path / "a.log",
        extra_args=["--config", str(tmp_path / "a.yaml")],
    )  # fmt: skip
    first.start()
    tls = tmp_path / "a" / "tls"
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({
        "store": store,
        "tls": {"cert_file": str(tls / "server.crt"), "key_file": str(tls / "server.key"),
                "ca_file": str(tls / "ca.crt")},
    }))  # fmt: skip
    second = Gateway(
        tmp_path / "b", free_port(), tmp_path / "b.log", ca_path=tls / "ca.crt",
        extra_args=["--config", str(tmp_path / "b.yaml")],
    )  # fmt: skip
    second.start()
    try:
        admin = first.admin()
        user = admin.post("/v3/users", {"username": "mia", "password": USER_PASSWORD})
        old = first.api().login("mia", USER_PASSWORD)
        assert second.api(old).get("/v3/users?me=true")["data"][0]["id"] == user["id"]

        assert second.process is not None
        os.kill(second.process.pid, signal.SIGSTOP)
        try:
            admin.delete(f"/v3/tokens/{old.split(':')[0]}")
            for n in range(30):
                admin.post("/v3/tokens", {"description": f"filler {n}"})
            new = first.api().login("mia", USER_PASSWORD)
        finally:
            os.kill(second.process.pid, signal.SIGCONT)

        with pytest.raises(ApiError) as refused:
            second.api(old).get("/v3/users?me=true")
        assert refused.value.status == 401
        assert second.api(new).get("/v3/users?me=true")["data"][0]["id"] == user["id"]
        assert "fell behind the store's change feed" in second.log()
    finally:
        second.stop()
        first.stop()
