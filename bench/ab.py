"""One scenario, the working tree against another revision, alternating in the same run.

``[HERDGATE_X=V ...] .venv/bin/python -m bench.ab REV [--small | --h2] [--connections N]
[--rounds N] [--seconds S]``

The full suite's ``--baseline`` runs every scenario on four paths; this runs only the 100
MB list at one connection (or, with ``--small``, the 2 KB GET at 64 connections; with
``--h2``, the 2 KB GET over HTTP/2 with h2load, 4 connections of 16 streams each, as the
suite's HTTP/2 row; ``--connections N`` sets another count) against two herds — the tree
and ``REV``, each a gateway and an agent in front of one nginx backend — back to back in
each round, the order flipped every round, so both see the same state of a machine whose
speed drifts.
Printed first: each gateway's start-up line saying whether its request path runs compiled
(``REV`` is built like the tree when a C compiler is here; build the tree yourself,
``python -m config.native build``). Printed per round: MB/s (or req/s), the box's busy
%, CPU per MB (or per request) of each process, wrk's errors if any; at the end the tree
÷ ``REV`` ratio of the medians. Both herds inherit the environment (``HERDGATE_*``
settings, ``MALLOC_*``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import shutil
import statistics
from dataclasses import dataclass

from bench import h2load, nginx, wrk
from bench.procstats import CpuMeter, CpuUsage
from bench.suite import KUBECTL_HEADERS, Herd, checkout, setup_tmp, start_herd
from tests.integration.env import REPO_ROOT


@dataclass(frozen=True)
class Sample:
    build: str
    value: float
    """MB/s or req/s."""
    busy_pct: float
    cost: dict[str, float]
    """Process -> ms per MB or µs per request."""
    errors: int = 0
    """wrk's errors (connect, read, write, timeout, non-2xx/3xx status)."""


def sample(build: str, result: wrk.WrkResult, usage: CpuUsage, bulk: bool) -> Sample:
    value = result.mb_per_s if bulk else result.rps
    scale = 1000.0 if bulk else 1e6  # ms per MB, µs per request
    cost = {
        role: scale * seconds / (value * usage.wall_s) if value and usage.wall_s else 0.0
        for role, seconds in usage.roles.items()
    }
    return Sample(build, value, usage.box_busy_pct, cost, result.errors)


def line(round_no: int, s: Sample, bulk: bool) -> str:
    unit, cost_unit = ("MB/s", "ms/MB") if bulk else ("req/s", "µs/req")
    costs = "  ".join(f"{role} {value:.2f} {cost_unit}" for role, value in s.cost.items())
    errors = f"  ERRORS {s.errors}" if s.errors else ""
    return (
        f"r{round_no} {s.build:5} {s.value:9.0f} {unit}  busy {s.busy_pct:3.0f} %  {costs}{errors}"
    )


def ratio(samples: list[Sample]) -> float:
    """Median of the tree's values over the median of the baseline's."""
    tree = [s.value for s in samples if s.build == "tree"]
    base = [s.value for s in samples if s.build == "base"]
    return statistics.median(tree) / statistics.median(base)


H2_STREAMS = 16
"""``--h2``: streams in flight per connection (the suite's HTTP/2 row: ``-c 4 -m 16``)."""
H2_CONNECTIONS = 4


def connection_count(requested: int | None, bulk: bool, h2: bool = False) -> int:
    """``--connections``, or the scenario's own: 1 for the list, 64 for the small GET, 4
    for the HTTP/2 GET."""
    if requested is None:
        return 1 if bulk else H2_CONNECTIONS if h2 else 64
    if requested < 1:
        raise SystemExit("--connections: at least 1")
    return requested


def request_path(log: str) -> str:
    """The gateway's start-up line saying whether its request path runs compiled."""
    for text in log.splitlines():
        if text.startswith("request path:"):
            return text
    return "request path: not in its log"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("rev", help="the other revision (a commit, tag or HEAD~N)")
    parser.add_argument("--small", action="store_true", help="2 KB GET at 64 connections")
    parser.add_argument(
        "--h2", action="store_true", help="2 KB GET over HTTP/2 (h2load, 4 connections x 16)"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help="connections (default: 1 for the list, 64 with --small, 4 with --h2)",
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    bulk = not (args.small or args.h2)
    connections = connection_count(args.connections, bulk, args.h2)
    tmp = setup_tmp(None)
    atexit.register(shutil.rmtree, tmp, True)
    certs = nginx.make_certs(tmp / "certs")
    small, big = nginx.write_payloads(tmp / "www")
    path = nginx.LIST_PATH if bulk else nginx.SMALL_PATH
    with contextlib.ExitStack() as stack:
        base_code = checkout(REPO_ROOT, args.rev, tmp / "base")
        stack.callback(base_code.remove)
        backend = nginx.backend(tmp / "nginx-backend", certs, small, big).start()
        stack.callback(backend.stop)
        herds: dict[str, Herd] = {
            "tree": start_herd(stack, tmp, certs, backend.url, "tree"),
            "base": start_herd(stack, tmp, certs, backend.url, "base", code=base_code.path),
        }

        def run(herd: Herd, seconds: float) -> tuple[wrk.WrkResult, CpuUsage]:
            url = f"{herd.gateway.url}/k8s/clusters/{herd.cluster_id}{path}"
            headers = {"Authorization": f"Bearer {herd.token}", **KUBECTL_HEADERS}
            with CpuMeter({**herd.pids, "backend": backend.pid}) as meter:
                if args.h2:
                    result = h2load.run(
                        url,
                        connections=connections,
                        streams=H2_STREAMS,
                        seconds=seconds,
                        headers=headers,
                    )
                else:
                    result = wrk.run(url, connections=connections, seconds=seconds, headers=headers)
            assert meter.usage is not None
            return result, meter.usage

        for herd in herds.values():
            run(herd, 1)  # warm up: TLS sessions, pools, the allocator
        scenario = f"{'100 MB list' if bulk else '2 KB GET'}, {connections} connection(s)"
        if args.h2:
            scenario += f" over HTTP/2, {H2_STREAMS} streams each"
        print(f"tree against {args.rev} ({base_code.commit}), {scenario}")
        for build, herd in herds.items():
            print(f"{build:5} gateway's {request_path(herd.gateway.log())}")
        samples: list[Sample] = []
        for round_no in range(args.rounds):
            order = ["tree", "base"] if round_no % 2 == 0 else ["base", "tree"]
            for build in order:
                result, usage = run(herds[build], args.seconds)
                samples.append(sample(build, result, usage, bulk))
                print(line(round_no, samples[-1], bulk), flush=True)
        print(f"tree ÷ {args.rev}, medians: {ratio(samples):.3f}")


if __name__ == "__main__":
    main()
