"""Where the gateway's memory per idle tunnel goes: ``python -m bench.tunnel_memory [-n N]``.

A gateway under ``bench.tracemem`` (tracemalloc, one frame), N in-process agents
(``bench.agents``), a snapshot before and after they are up. Prints the RSS growth per
tunnel, the part of it tracemalloc sees (Python's allocations) by source line, the rest
(what OpenSSL and other C code allocate with malloc), the live objects by type and the
tasks per tunnel. A profile, not a figure: tracemalloc slows the gateway down and adds to
its memory (the figures are ``python -m bench --only agents``). 127.0.0.1 only; bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
import tracemalloc
from pathlib import Path

from bench.herdgate import AGENT_BACKEND_TOKEN, backend_kubeconfig
from bench.nginx import make_certs
from bench.procstats import tree_rss_kib
from bench.suite import AgentProcess, _create_clusters, _ups, setup_tmp
from tests.integration.env import Gateway, free_port, wait_until


def snapshot(gateway: Gateway, number: int, out: Path) -> tracemalloc.Snapshot:
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGUSR2)
    done = out / f"snapshot-{number}.done"
    wait_until(done.exists, 300, "no snapshot", interval=0.5)
    return tracemalloc.Snapshot.load(str(out / f"snapshot-{number}.pickle"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=1000, help="agents (default 1000)")
    p.add_argument("--procs", type=int, default=2, help="agent processes")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    tmp = setup_tmp(None)
    certs = make_certs(tmp / "certs")
    out = tmp / "snapshots"
    with contextlib.ExitStack() as stack:
        # Under tracemalloc: ``python -m bench.tracemem DIR gateway ...``.
        gateway = Gateway(
            tmp / "gw", free_port(), tmp / "gw.log", program=["-m", "bench.tracemem", str(out)]
        )
        # Every agent dials from 127.0.0.1: the per-address limit goes above their number
        # (as in ``bench.suite.agents``).
        gateway.extra_env["HERDGATE_LIMITS__PER_ADDRESS"] = str(args.n + 1024)
        gateway.start(timeout=120)
        stack.callback(gateway.stop)
        assert gateway.process is not None
        tokens = _create_clusters(gateway.admin(), args.n, print)
        kubeconfig = backend_kubeconfig(
            tmp / "agents.kubeconfig", "https://127.0.0.1:9", certs.ca, AGENT_BACKEND_TOKEN
        )
        time.sleep(2)
        before = snapshot(gateway, 1, out)
        rss0 = tree_rss_kib(gateway.process.pid)
        procs = []
        started = time.time()
        for index in range(args.procs):
            spec = tmp / f"agents-{index}.json"
            spec.write_text(json.dumps({
                "server": gateway.url, "ca_file": str(gateway.ca_file),
                "kubeconfig": str(kubeconfig), "tokens": tokens[index::args.procs],
                "ramp_per_s": 200 / args.procs,
            }))  # fmt: skip
            proc = AgentProcess(spec, tmp / f"agents-{index}.log")
            stack.callback(proc.stop)
            procs.append(proc)
        wait_until(lambda: len(_ups(procs, started)) >= args.n, 120 + args.n / 5,
                   "agents did not all connect", interval=0.5)  # fmt: skip
        time.sleep(10)
        rss1 = tree_rss_kib(gateway.process.pid)
        after = snapshot(gateway, 2, out)
        n = args.n
        stats = after.compare_to(before, "lineno")
        traced = sum(s.size_diff for s in stats) / 1024
        grown = (rss1 - rss0) / n
        print(f"\nRSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MB: {grown:.1f} KiB per tunnel")
        print(f"tracemalloc (Python allocations): {traced / n:.2f} KiB per tunnel;"
              f" not seen by it (C: OpenSSL, ...): {grown - traced / n:.2f} KiB")  # fmt: skip
        print(f"\ntop {args.top} lines, bytes per tunnel (count per tunnel):")
        for stat in stats[: args.top]:
            frame = stat.traceback[0]
            where = frame.filename.split("/site-packages/")[-1].replace(f"{Path.cwd()}/", "")
            print(f"  {stat.size_diff / n:8.0f} B  {stat.count_diff / n:6.2f}  "
                  f"{where}:{frame.lineno}")  # fmt: skip
        by_file = after.compare_to(before, "filename")
        print("\nby file, KiB per tunnel:")
        for stat in by_file[: args.top]:
            where = stat.traceback[0].filename.split("/site-packages/")[-1]
            print(f"  {stat.size_diff / 1024 / n:8.2f}  {where.replace(f'{Path.cwd()}/', '')}")
        objs = [json.loads((out / f"objects-{i}.json").read_text()) for i in (1, 2)]
        print(f"\ntasks: {objs[0]['tasks']} -> {objs[1]['tasks']}"
              f" ({(objs[1]['tasks'] - objs[0]['tasks']) / n:.2f} per tunnel)")  # fmt: skip
        grown = []
        for name, (count, size) in objs[1]["types"].items():
            c0, s0 = objs[0]["types"].get(name, [0, 0])
            if count - c0 >= n // 2:
                grown.append(((count - c0) / n, (size - s0) / n, name))
        print("\nGC-tracked objects per tunnel (count, shallow bytes):")
        for count, size, name in sorted(grown, reverse=True)[:40]:
            print(f"  {count:6.2f}  {size:7.0f} B  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
