"""Memory, CPU and event latency against the number of HTTP/2 watches, from several runs.

``python -m bench.watch_growth OUT.png RUN.json [RUN.json ...]``: each ``RUN.json`` is what
``python -m bench --only watches --watch-clients h2 --watches N --event-rate R --json
RUN.json`` wrote (its ``watches-h2``: the gateway's and agent's RSS before and after the
watches opened, CPU of each process while the events flowed, the events' latency). One
point per run, so the growth shows, not only the end point. Needs matplotlib (the "bench"
extra, pyproject.toml).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.growth import slope

TARGET_GATEWAY_KIB = 4.0
TARGET_AGENT_KIB = 8.0
TARGET_P99_MS = 50.0


def points(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """One point per run: watches, RSS growth of gateway and agent (KiB), CPU, p99."""
    out = []
    for run in runs:
        w = run["watches-h2"]
        out.append(
            {
                "watches": float(w["opened"]),
                "gateway_kib": float(w["gateway_rss_after_kib"] - w["gateway_rss_before_kib"]),
                "agent_kib": float(w["agent_rss_after_kib"] - w["agent_rss_before_kib"]),
                "gateway_cpu": float(w["cpu_pct"]["gateway"]),
                "agent_cpu": float(w["cpu_pct"]["agent"]),
                "p99_ms": float(w["latency"]["p99_ms"]),
                "rate": float(w["rate"]),
            }
        )
    return sorted(out, key=lambda p: p["watches"])


def plot(runs: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points(runs)
    xs = [p["watches"] for p in pts]
    fit = [{"tunnels": p["watches"], **p} for p in pts]  # ``slope`` reads "tunnels"
    gw_fit, agent_fit = slope(fit, "gateway_kib"), slope(fit, "agent_kib")
    fig, (mem, cpu) = plt.subplots(2, 1, sharex=True, figsize=(8, 6.5))
    mem.plot(xs, [p["gateway_kib"] / 1024 for p in pts], "o-",
             label=f"gateway RSS growth (fit: {gw_fit:.2f} KiB per watch)")  # fmt: skip
    mem.plot(xs, [p["agent_kib"] / 1024 for p in pts], "s-",
             label=f"agent RSS growth (fit: {agent_fit:.2f} KiB per watch)")  # fmt: skip
    top = max(xs)
    mem.plot([0, top], [0, top * TARGET_GATEWAY_KIB / 1024], "--", color="red",
             label=f"target gateway: {TARGET_GATEWAY_KIB:g} KiB per watch")  # fmt: skip
    mem.plot([0, top], [0, top * TARGET_AGENT_KIB / 1024], ":", color="red",
             label=f"target agent: {TARGET_AGENT_KIB:g} KiB per watch")  # fmt: skip
    rate = pts[-1]["rate"]
    cpu.plot(xs, [p["gateway_cpu"] for p in pts], "o-", label="gateway CPU")
    cpu.plot(xs, [p["agent_cpu"] for p in pts], "s-", label="agent CPU")
    lat = cpu.twinx()
    p99 = [p["p99_ms"] for p in pts]
    lat.plot(xs, p99, "^", color="C2", label="event p99, each run (ms, right)")
    lat.axhline(TARGET_P99_MS, linestyle="--", color="red", alpha=0.5,
                label=f"target p99: {TARGET_P99_MS:g} ms")  # fmt: skip
    lat.set_ylim(0, max(TARGET_P99_MS, *p99) * 1.1)
    lat.set_ylabel("ms")
    for axis in (mem, cpu):
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
        axis.set_xlim(left=0)
    mem.legend(loc="upper left", fontsize=8)
    cpu.legend(loc="upper left", fontsize=8)
    lat.legend(loc="upper right", fontsize=8)
    mem.set_ylabel("MiB")
    cpu.set_ylabel(f"% of one core at {rate:,.0f} events/s")
    cpu.set_xlabel("open watches over HTTP/2, one tunnel")
    mem.set_title(f"herdgate: HTTP/2 watches through one tunnel (up to {top:,.0f})")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print(__doc__)
        return 2
    runs = [json.loads(Path(name).read_text()) for name in args[1:]]
    plot(runs, Path(args[0]))
    for p in points(runs):
        print(
            f"{p['watches']:>9,.0f} watches: gateway {p['gateway_kib'] / p['watches']:.2f} KiB, "
            f"agent {p['agent_kib'] / p['watches']:.2f} KiB per watch; CPU gateway "
            f"{p['gateway_cpu']:.1f} %, agent {p['agent_cpu']:.1f} %; p99 {p['p99_ms']:.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
