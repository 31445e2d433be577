"""What a replica tells agents: its HELLO and the INFO sent when the replica set changes
(``gateway.clusters.replicas``; the list's format is ``tunnel.replica_list``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.clusters.replicas import ReplicaSet
from gateway.identity.directory import Directory
from gateway.store.records import REPLICA, Replica
from gateway.store.sqlite import SQLiteStore
from tunnel.registry import TunnelRegistry
from tunnel.replica_list import ReplicaAddress, parse


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeSession:
    sent: list[bytes] = field(default_factory=list)
    is_usable: bool = True

    def send_info(self, metadata: bytes) -> None:
        self.sent.append(metadata)


@dataclass
class FakeLink:
    cluster_id: str
    session: FakeSession


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[ReplicaSet, Directory, Clock, FakeLink]]:
    clock = Clock()
    store = await SQLiteStore(tmp_path / "store.db").open()
    directory = Directory(store, clock=clock)
    await directory.load()
    tunnels: TunnelRegistry[Any] = TunnelRegistry()
    link = FakeLink("c-1", FakeSession())
    tunnels.add(link)
    replicas = ReplicaSet(
        directory, cast(Any, tunnels), replica_id="r-1", url="https://10.0.0.1:8443"
    )
    try:
        yield replicas, directory, clock, link
    finally:
        await store.close()


def _other(rid: str, url: str, clock: Clock) -> Replica:
    return Replica(rid, "other-host", 1, clock.now, clock.now, ("c-1",), url)


async def test_hello_names_every_live_replica_and_its_address(setup: Any) -> None:
    replicas, directory, clock, _ = setup
    await replicas.heartbeat()
    await directory.put(REPLICA, _other("r-2", "https://10.0.0.2:8443", clock))
    await directory.put(REPLICA, _other("r-0", "", clock))  # no address of its own
    hello = json.loads(replicas.hello("c-1"))
    assert hello["clusterId"] == "c-1"
    assert hello["replicaId"] == "r-1"
    assert hello["replicas"] == 3  # what older agents read
    assert parse(hello["replicaList"]) == (
        ReplicaAddress("r-0", ""),
        ReplicaAddress("r-1", "https://10.0.0.1:8443"),
        ReplicaAddress("r-2", "https://10.0.0.2:8443"),
    )
    # The record in the store carries the address.
    assert directory.replicas["r-1"].url == "https://10.0.0.1:8443"


async def test_a_replaced_replica_is_announced_though_the_count_is_unchanged(
    setup: Any,
) -> None:
    replicas, directory, clock, link = setup
    await directory.put(REPLICA, _other("r-2", "https://10.0.0.2:8443", clock))
    replicas._announce_if_changed()
    first = json.loads(link.session.sent[-1])
    assert first["replicas"] == 2
    # r-2 dies (its heartbeat ages out) and comes back as r-3 at the same address.
    clock.now += 20
    await replicas.heartbeat()
    await directory.put(REPLICA, _other("r-3", "https://10.0.0.2:8443", clock))
    last = json.loads(link.session.sent[-1])
    assert last["replicas"] == 2
    assert [r.id for r in parse(last["replicaList"]) or ()] == ["r-1", "r-3"]
    count = len(link.session.sent)
    replicas._announce_if_changed()  # nothing changed: nothing sent
    assert len(link.session.sent) == count


async def test_the_heartbeat_names_the_clusters_held_and_reads_the_tunnels_only_after_a_change(
    setup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With thousands of tunnels, collecting and sorting every link's cluster for each
    heartbeat was the largest Python cost of an idle gateway; the list is kept until a
    tunnel comes or goes."""
    replicas, directory, _, link = setup
    tunnels = replicas.tunnels
    reads: list[int] = []
    all_links = tunnels.all_links

    def counted() -> Any:
        reads.append(1)
        return all_links()

    monkeypatch.setattr(tunnels, "all_links", counted)
    for _ in range(3):
        await replicas.heartbeat()
    assert directory.replicas["r-1"].clusters == ("c-1",)
    assert len(reads) == 1
    tunnels.add(FakeLink("c-0", FakeSession()))
    await replicas.heartbeat()
    await replicas.heartbeat()
    assert directory.replicas["r-1"].clusters == ("c-0", "c-1")
    assert len(reads) == 2
    tunnels.remove(link)
    await replicas.heartbeat()
    assert directory.replicas["r-1"].clusters == ("c-0",)
