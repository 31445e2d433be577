"""What processes cost, read from /proc: CPU (utime+stime) per process tree, RSS, box load.

Everything here is a plain read of ``/proc``; nothing is sampled in the background except
by :class:`RssSampler`, a thread that polls one process's ``VmRSS`` to catch its peak.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            raw = handle.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    return raw[raw.rfind(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the name: state(3) ppid(4) ... utime(14) stime(15): indexes 11 and 12 here.
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's children list)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                out.extend(int(c) for c in handle.read().split())
        except OSError:
            continue
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now."""
    out = [pid]
    index = 0
    while index < len(out):
        out.extend(children(out[index]))
        index += 1
    return out


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in tree(pid))


def rss_kib(pid: int) -> int:
    """Resident set size (``VmRSS``) in KiB, 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss_kib(pid: int) -> int:
    return sum(rss_kib(p) for p in tree(pid))


def box_ticks() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as handle:
        parts = [int(x) for x in handle.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    idle_all = idle + iowait
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle_all, steal


@dataclass
class CpuUsage:
    """CPU seconds each role used over a wall-clock interval, plus the whole box."""

    wall_s: float
    roles: dict[str, float]
    """Role -> CPU seconds (utime+stime of the role's process tree)."""
    box_busy_pct: float
    """Whole machine busy, percent of one core (max 100 x cores)."""
    steal_pct: float
    extra: dict[str, float] = field(default_factory=dict)
    """Role -> CPU seconds measured another way (wrk's own rusage)."""

    def pct(self, role: str) -> float:
        """Percent of one core."""
        seconds = self.roles.get(role, self.extra.get(role, 0.0))
        return 100.0 * seconds / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def ours_s(self) -> float:
        return sum(self.roles.values()) + sum(self.extra.values())

    @property
    def foreign_pct(self) -> float:
        """Busy CPU not accounted to any of our roles: other people's load, kernel threads."""
        if self.wall_s <= 0:
            return 0.0
        return max(0.0, self.box_busy_pct - 100.0 * self.ours_s / self.wall_s)


class CpuMeter:
    """Measure CPU of named process trees over a block::

    with CpuMeter({"gateway": gw_pid, "nginx": master_pid}) as meter:
        ...
    usage = meter.usage
    """

    def __init__(self, roles: Mapping[str, int]) -> None:
        self._roles = dict(roles)
        self._start: dict[str, dict[int, float]] = {}
        self._t0 = 0.0
        self._box0 = (0, 0, 0)
        self.usage: CpuUsage | None = None

    def _snapshot(self) -> dict[str, dict[int, float]]:
        return {role: {p: cpu_seconds(p) for p in tree(pid)} for role, pid in self._roles.items()}

    def __enter__(self) -> CpuMeter:
        self._start = self._snapshot()
        self._box0 = box_ticks()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._t0
        end = self._snapshot()
        box1 = box_ticks()
        roles = {}
        for role, per_pid in end.items():
            before = self._start.get(role, {})
            # A process born during the interval counts from 0.
            roles[role] = sum(now - before.get(pid, 0.0) for pid, now in per_pid.items())
        busy = box1[0] - self._box0[0]
        total = max(1, box1[1] - self._box0[1])
        cores = os.cpu_count() or 1
        self.usage = CpuUsage(
            wall_s=wall,
            roles=roles,
            box_busy_pct=100.0 * cores * busy / total,
            steal_pct=100.0 * cores * (box1[2] - self._box0[2]) / total,
        )


class RssSampler:
    """Poll a process's RSS in a thread; ``peak_kib`` is the highest value seen."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.start_kib = 0
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = tree_rss_kib(self.pid)
            self.peak_kib = max(self.peak_kib, value)
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.start_kib = tree_rss_kib(self.pid)
        self.peak_kib = self.start_kib
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, tree_rss_kib(self.pid))


def vm_hwm_kib(pid: int) -> int:
    """Peak RSS the kernel recorded (``VmHWM``), reset by :func:`reset_peak`."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(pid: int) -> None:
    """Reset ``VmHWM`` to the current RSS (``echo 5 > clear_refs``; own processes only)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")
