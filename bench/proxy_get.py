"""GET of one small object: directly against the stand-in vs. through gateway + tunnel.

Starts the stand-in API server, the gateway and an agent on 127.0.0.1, then runs wrk
against both paths, interleaved, in one run, and prints requests/s and latency with
the ratio. Usage: ``.venv/bin/python -m bench.proxy_get [--seconds 5] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from tests.integration.conftest import AGENT_SA_TOKEN, start_world, stop_world
from tests.integration.env import write_kubeconfig

OBJECT_PATH = "/api/v1/namespaces/default/configmaps/bench"


def wrk(url: str, token: str, ca_hint: str, connections: int, seconds: int) -> dict[str, float]:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed (scripts/test-all installs it)")
    threads = min(2, connections)
    out = subprocess.run(
        [binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", f"Authorization: Bearer {token}", "-H", "Accept: application/json", url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    pct = dict(re.findall(r"\s+(50|99)(?:\.000)?%\s+([\d.]+\w+)", out))
    return {
        "rps": rps,
        "p50_ms": _ms(pct.get("50", "0ms")),
        "p99_ms": _ms(pct.get("99", "0ms")),
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="herdgate-bench-"))
    world = start_world(tmp)
    try:
        kc = write_kubeconfig(
            tmp / "admin.kubeconfig",
            world.admin.post(f"/v3/clusters/{world.cluster_id}?action=generateKubeconfig")[
                "config"
            ],
        )
        token = yaml.safe_load(kc.read_text())["users"][0]["user"]["token"]
        subprocess.run(
            ["kubectl", "--kubeconfig", str(kc), "create", "configmap", "bench",
             "--from-literal=k=" + "v" * 1500],
            check=True, capture_output=True,
        )  # fmt: skip
        paths = {
            "direct": (world.standin.url + OBJECT_PATH, AGENT_SA_TOKEN),
            "gateway": (f"{world.gateway.url}/k8s/clusters/{world.cluster_id}{OBJECT_PATH}", token),
        }
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for connections in (1, 16):
                for name, (url, bearer) in paths.items():
                    key = f"{name} c={connections}"
                    results.setdefault(key, []).append(
                        wrk(url, bearer, "", connections, args.seconds)
                    )
        print(json.dumps(results, indent=1))
        print(f"{'path':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
        for key, runs in results.items():
            best = max(runs, key=lambda r: r["rps"])
            print(f"{key:<16}{best['rps']:>10.0f}{best['p50_ms']:>10.2f}{best['p99_ms']:>10.2f}"
                  f"{best['errors']:>8.0f}")  # fmt: skip
        for c in (1, 16):
            direct = max(r["rps"] for r in results[f"direct c={c}"])
            via = max(r["rps"] for r in results[f"gateway c={c}"])
            print(f"c={c}: gateway/direct = {via / direct:.2f}")
    finally:
        stop_world(world)


if __name__ == "__main__":
    main()
