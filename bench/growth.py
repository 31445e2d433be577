"""The gateway's idle memory and CPU against the number of tunnels, drawn from a run's JSON.

``python -m bench.growth RUN.json OUT.png``: ``RUN.json`` is what ``python -m bench --only
agents --agent-steps 1000,2500,5000 --json RUN.json`` wrote (its ``agents.points``: the
gateway's RSS and idle CPU at each step). ``python -m bench ... --agents-png OUT.png`` draws
the same at the end of the run. Needs matplotlib (the "bench" extra, pyproject.toml).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET_KIB_PER_TUNNEL = 32.0
TARGET_IDLE_CPU_PCT = 5.0
TARGET_TUNNELS = 10_000


def slope(points: list[dict[str, Any]], key: str) -> float:
    """Least-squares slope of ``key`` against ``tunnels`` (per tunnel)."""
    xs = [float(p["tunnels"]) for p in points]
    ys = [float(p[key]) for p in points]
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def plot(agents: dict[str, Any], png: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    every = sorted(agents["points"], key=lambda p: p["tunnels"])
    points = [p for p in every if not p.get("incomplete")]
    stuck = [p for p in every if p.get("incomplete")]
    tunnels = [p["tunnels"] for p in points]
    rss_mb = [p["rss_kib"] / 1024 for p in points]
    cpu = [p["cpu_pct"] for p in points]
    kib = slope(points, "rss_kib")
    cpu_per_1k = slope(points, "cpu_pct") * 1000
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6.5))
    top.plot(tunnels, rss_mb, "o-", label=f"gateway RSS (fit: {kib:.1f} KiB per tunnel)")
    base = rss_mb[0]
    top.plot(
        [0, TARGET_TUNNELS],
        [base, base + TARGET_TUNNELS * TARGET_KIB_PER_TUNNEL / 1024],
        "--",
        color="red",
        label=f"target: {TARGET_KIB_PER_TUNNEL:g} KiB per tunnel",
    )
    bottom.plot(tunnels, cpu, "o-", color="C1",
                label=f"gateway idle CPU (fit: {cpu_per_1k:.2f} % per 1,000 tunnels)")  # fmt: skip
    bottom.axhline(TARGET_IDLE_CPU_PCT, linestyle="--", color="red",
                   label=f"target: {TARGET_IDLE_CPU_PCT:g} % at {TARGET_TUNNELS:,}")  # fmt: skip
    for point in stuck:  # a step that could not connect all its agents: what it held
        wanted = int(point.get("wanted", 0))
        label = f"{point['tunnels']:,} of {wanted:,} held" if wanted else "incomplete step"
        top.plot([point["tunnels"]], [point["rss_kib"] / 1024], "x", color="red", ms=9, label=label)
        bottom.plot([point["tunnels"]], [point["cpu_pct"]], "x", color="red", ms=9, label=label)
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
        axis.set_ylim(bottom=0)
        axis.legend(loc="lower right", fontsize=8)
    top.set_ylabel("RSS (MiB)")
    bottom.set_ylabel("% of one core")
    bottom.set_xlabel("idle agent tunnels (each its own cluster)")
    top.set_title(title or f"herdgate gateway, idle tunnels (up to {max(tunnels):,})")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print(__doc__)
        return 2
    raw = json.loads(Path(args[0]).read_text())
    plot(raw["agents"], Path(args[1]), args[2] if len(args) == 3 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
