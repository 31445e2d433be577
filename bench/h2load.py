"""Run ``h2load`` (nghttp2's HTTP/2 load generator) and read its summary.

kubectl and client-go speak HTTP/2 when the server offers it, many requests in flight on
one connection; wrk cannot. ``h2load`` with ``-c`` connections and ``-m`` streams per
connection is that load. Its summary gives requests, bytes, failures and the mean time
per request (no percentiles); its CPU comes from ``wait4``. Bounded by ``-D`` and a kill
timer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from bench.wrk import WrkResult, _kill

H2LOAD = "/usr/bin/h2load"

_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s)")
_REQUESTS = re.compile(
    r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed"
)
_TRAFFIC = re.compile(r"traffic: \S+ \((\d+)\) total")
_TIME = re.compile(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)")


def version() -> str:
    out = subprocess.run([H2LOAD, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().removeprefix("h2load ")


def run(
    url: str,
    *,
    connections: int,
    streams: int,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """One h2load run: ``connections`` times ``streams`` requests in flight for ``seconds``."""
    if shutil.which(H2LOAD) is None:
        raise SystemExit(f"{H2LOAD} not found (apt-get install nghttp2-client)")
    cmd = [
        H2LOAD, "-c", str(connections), "-m", str(streams), "-t", "1",
        "-D", str(max(1, round(seconds))),
    ]  # fmt: skip
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name.lower()}: {value}"]
    cmd.append(url)
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        out_path = Path(tmp) / "stdout"
        with out_path.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        killer = threading.Timer(seconds + 30, lambda: _kill(proc.pid))
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        text = out_path.read_text(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    return parse(text, usage.ru_utime + usage.ru_stime, code)


def parse(text: str, cpu_s: float, code: int = 0) -> WrkResult:
    finished = _FINISHED.search(text)
    requests = _REQUESTS.search(text)
    if code != 0 or finished is None or requests is None:
        raise RuntimeError(f"h2load failed ({code}): {text[-2000:]}")
    duration = _ms(finished.group(1) + finished.group(2)) / 1000
    traffic = _TRAFFIC.search(text)
    timing = _TIME.search(text)
    mean_ms = _ms(timing.group(3)) if timing else 0.0
    return WrkResult(
        requests=int(requests.group(2)),
        bytes=int(traffic.group(1)) if traffic else 0,
        duration_s=duration,
        errors=int(requests.group(4)),  # errored, timed out, or not 2xx/3xx
        p50_ms=mean_ms,  # h2load gives the mean, not percentiles
        p90_ms=0.0,
        p99_ms=0.0,
        max_ms=_ms(timing.group(2)) if timing else 0.0,
        cpu_s=cpu_s,
    )


def _ms(text: str) -> float:
    for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float(text)
