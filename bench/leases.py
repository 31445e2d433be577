"""What keeping many cluster leases costs on SQLite, and how long a process leading many
clusters takes to stop: ``python -m bench.leases [-n N] [--seconds S]``.

In one process, on a SQLite file in a temporary directory (as a gateway worker's store),
or with ``--etcd`` on a real etcd on loopback (*keep* only; etcd's store writes are not
counted as revisions, so writes are those of the records, keep-alives are not writes):

- *keep*: N ``LeaseKeeper`` s (``gateway.controllers.lease``) that always want their
  lease, run for S seconds once all hold; reported: the store writes in that window
  (the store's revision), per second, and this process's CPU over it (its share of one
  core: the keepers' wake-ups and the writes, nothing else runs).
- *stop*: N clusters led by ``ClusterControllers`` (keepers and controllers as a gateway
  has them, the controllers not started: there is no cluster to talk to), stopped;
  reported: how long ``stop`` took, the store writes it made, and how long a second
  process (another connection to the file) then takes to hold every lease.

``--lease-module PATH`` keeps the leases with another version of ``lease.py`` (for an
A/B, e.g. ``git show REV:gateway/controllers/lease.py > /tmp/old_lease.py``); *stop* is
then skipped. Bounded: S seconds of keeping plus the takes; no network at all.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from aiohttp import web

from gateway.clusters.replicas import REPLICAS, ReplicaSet
from gateway.clusters.tunnels import TUNNELS, AgentLink
from gateway.controllers import cluster_controller, lease
from gateway.identity.directory import DIRECTORY, Directory
from gateway.store.etcd import EtcdOptions, EtcdStore
from gateway.store.records import CLUSTER, Cluster
from gateway.store.sqlite import SQLiteStore
from tunnel.registry import TunnelRegistry


def _module(path: str | None) -> ModuleType:
    if path is None:
        return lease
    spec = importlib.util.spec_from_file_location("bench_old_lease", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _wait(check: Any, timeout_s: float) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("not reached in time")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def _open_store(tmp: str, etcd_url: str | None) -> Any:
    if etcd_url is None:
        return await SQLiteStore(Path(tmp) / "store.db").open()
    return await EtcdStore(EtcdOptions((etcd_url,), "/bench-leases/")).open()


async def keep(
    n: int, seconds: float, module: ModuleType, ttl_s: float, etcd_url: str | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await _open_store(tmp, etcd_url)
        try:
            keepers = [
                module.LeaseKeeper(
                    module.lease_for(store, f"cluster/c-{i}", "r-1", ttl_s=ttl_s),
                    lambda: True,
                    lambda _: None,
                )
                for i in range(n)
            ]
            tasks = [asyncio.create_task(k.run()) for k in keepers]
            taken_s = await _wait(lambda: all(k.holding for k in keepers), 600)
            await asyncio.sleep(ttl_s / 3)  # past the takes' own writes
            rev0, cpu0, t0 = await store.revision(), time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            rev1, cpu1, t1 = await store.revision(), time.process_time(), time.monotonic()
            held = sum(1 for k in keepers if k.lease.held())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await store.close()
    window = t1 - t0
    return {
        "leases": n,
        "all_taken_s": round(taken_s, 2),
        "window_s": round(window, 1),
        "writes": rev1 - rev0,
        "writes_per_s": round((rev1 - rev0) / window, 1),
        "cpu_percent_of_a_core": round(100 * (cpu1 - cpu0) / window, 2),
        "held_at_end": held,
    }


async def _process(path: Path, replica: str) -> tuple[cluster_controller.ClusterControllers, Any]:
    store = await SQLiteStore(path).open()
    directory = Directory(store)
    await directory.load()
    app = web.Application()
    app[DIRECTORY] = directory
    tunnels: TunnelRegistry[AgentLink] = TunnelRegistry()
    tunnels.count = lambda cluster_id: 1  # type: ignore[method-assign]  # "a tunnel to each"
    app[TUNNELS] = tunnels
    app[REPLICAS] = ReplicaSet(directory, tunnels, replica_id=replica)
    return cluster_controller.ClusterControllers(app, cast(Any, None)), store


async def stop(n: int, ttl_s: float) -> dict[str, Any]:
    cluster_controller.ClusterController.start = lambda self: None  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.db"
        first, store = await _process(path, "r-1")
        for i in range(n):
            await first.directory.put(CLUSTER, Cluster(f"c-{i}", f"c-{i}", time.time()))
        first.settings = dataclasses.replace(first.settings, lease_ttl_s=ttl_s)
        for i in range(n):
            first._keep(f"c-{i}")
        taken_s = await _wait(lambda: len(first.running) == n, 600)
        other = await SQLiteStore(path).open()
        try:
            rev0, t0 = await store.revision(), time.monotonic()
            await first.stop()
            stop_s = time.monotonic() - t0
            writes = await store.revision() - rev0
            t1 = time.monotonic()
            takers = [lease.Lease(other, f"cluster/c-{i}", "r-2", ttl_s=ttl_s) for i in range(n)]
            taken = await asyncio.gather(*(t.try_acquire() for t in takers))
            retake_s = time.monotonic() - t1
        finally:
            await other.close()
            await store.close()
    return {
        "clusters": n,
        "all_led_s": round(taken_s, 2),
        "stop_s": round(stop_s, 2),
        "stop_writes": writes,
        "all_taken_by_another_s": round(retake_s, 2),
        "taken_by_another": sum(taken),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    module = _module(args.lease_module)
    if args.etcd:
        from tests.fixtures.etcd import start_etcd

        with tempfile.TemporaryDirectory() as tmp:
            etcd = start_etcd(Path(tmp) / "etcd")
            try:
                kept = await keep(args.n, args.seconds, module, args.ttl, etcd.url)
            finally:
                etcd.stop()
        return {
            "keep": kept,
            "store": "etcd",
            "lease_module": args.lease_module or "gateway.controllers.lease",
        }
    out: dict[str, Any] = {
        "keep": await keep(args.n, args.seconds, module, args.ttl),
        "store": "sqlite",
        "lease_module": args.lease_module or "gateway.controllers.lease",
    }
    if args.lease_module is None:
        out["stop"] = await stop(args.n, args.ttl)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("-n", type=int, default=2500, help="leases / clusters (default 2500)")
    p.add_argument("--seconds", type=float, default=20.0, help="keeping window (default 20)")
    p.add_argument("--ttl", type=float, default=15.0, help="lease TTL (default 15 s)")
    p.add_argument("--lease-module", help="another lease.py to keep the leases with")
    p.add_argument(
        "--etcd", action="store_true", help="keep them on a real etcd (started here) instead"
    )
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
