"""py-spy on the gateway and the agent while wrk loads them: where their CPU goes.

``py-spy record --format raw`` gives collapsed stacks; native time (TLS, the event loop,
C extensions) is charged to the Python frame that called it. Reported per process:
"self" (the function on top of the stack) and "incl" (herdgate's own functions anywhere
in the stack), as % of samples.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from bench import wrk

RATE_HZ = 250
TOP = 12

Profile = list[tuple[str, float]]


def py_spy() -> Path | None:
    binary = Path(sys.executable).parent / "py-spy"
    return binary if binary.exists() else None


Spies = dict[str, tuple[Path, "subprocess.Popen[bytes]"]]


def start_spies(
    binary: Path, pids: dict[str, int], seconds: float, name: str, out_dir: Path
) -> Spies:
    """py-spy ``record`` of every pid for ``seconds``, raw, into ``py-spy-<name>-<role>.txt``."""
    spies: Spies = {}
    for role, pid in pids.items():
        out = out_dir / f"py-spy-{name}-{role}.txt"
        spies[role] = (out, subprocess.Popen(
            [str(binary), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
             "--rate", str(RATE_HZ), "--format", "raw", "--nonblocking", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    return spies


def collect(spies: Spies, seconds: float) -> dict[str, Profile]:
    """Wait for each spy (killed if it overruns) and summarize what it wrote."""
    result = {}
    for role, (out, spy) in spies.items():
        try:
            spy.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(5)
        result[role] = summarize(out) if out.exists() else [("py-spy produced nothing", 0.0)]
    return result


def during_wrk(
    url: str,
    headers: dict[str, str],
    connections: int,
    seconds: float,
    pids: dict[str, int],
    out_dir: Path,
) -> dict[str, Profile]:
    """Record every pid in ``pids`` during one wrk run; role -> profile."""
    binary = py_spy()
    if binary is None:
        return {role: [("py-spy is not installed in the venv", 0.0)] for role in pids}
    spies = start_spies(binary, pids, seconds, str(connections), out_dir)
    time.sleep(0.5)
    wrk.run(url, connections=connections, seconds=seconds + 1, headers=headers,
            threads=min(2, connections), timeout_s=30)  # fmt: skip
    return collect(spies, seconds)


def summarize(raw: Path, top: int = TOP) -> Profile:
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        # "function (file:line)" -> "function (file)": one entry per function, not per line.
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";") if frame]
        if not frames:
            continue
        n = int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for name in set(frames):
            if ("gateway/" in name or "tunnel/" in name) and "cli.py" not in name:
                inclusive[name] = inclusive.get(name, 0) + n
        total += n
    if not total:
        return []
    top_own = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    top_incl = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return [(f"self: {name}", 100.0 * n / total) for name, n in top_own] + [
        (f"incl: {name}", 100.0 * n / total) for name, n in top_incl
    ]
