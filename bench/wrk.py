"""Run ``wrk`` (HTTP/1.1 keep-alive) and read its results from a Lua ``done()`` hook.

The hook writes one JSON object (requests, bytes, duration, errors, latency percentiles
from wrk's HdrHistogram in µs) to the file named by ``WRK_OUT``. wrk's own CPU comes
from ``wait4`` rusage. Every run is bounded by ``-d`` and a kill timer.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

WRK = "/usr/bin/wrk"

_DONE_HOOK = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  local f = io.open(os.getenv("WRK_OUT"), "w")
  f:write(string.format(
    '{"requests":%d,"bytes":%d,"duration_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%f}',
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0),
    latency.max, latency.mean))
  f:close()
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    bytes: int
    duration_s: float
    errors: int
    """connect + read + write + timeout errors and non-2xx/3xx answers."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: float
    """wrk's own user + system CPU."""

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def mb_per_s(self) -> float:
        """Response bytes (headers included, as wrk counts) per second, in 10^6 bytes."""
        return self.bytes / self.duration_s / 1e6 if self.duration_s else 0.0


def version() -> str:
    out = subprocess.run([WRK, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
    return first.split(" [")[0].removeprefix("wrk ").strip()


def run(
    url: str,
    *,
    connections: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    threads: int | None = None,
    timeout_s: float = 10.0,
) -> WrkResult:
    """One wrk run; raises if wrk fails or its hook wrote nothing."""
    if shutil.which(WRK) is None:
        raise SystemExit(f"{WRK} not found (apt-get install wrk)")
    threads = threads or min(2, connections)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "done.lua"
        script.write_text(_DONE_HOOK)
        out_file = Path(tmp) / "out.json"
        cmd = [
            WRK, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s:g}s", "-s", str(script),
        ]  # fmt: skip
        for name, value in (headers or {}).items():
            cmd += ["-H", f"{name}: {value}"]
        cmd.append(url)
        env = dict(os.environ, WRK_OUT=str(out_file))
        with (Path(tmp) / "stdout").open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        killer = threading.Timer(seconds + 30, lambda: _kill(proc.pid))
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not out_file.exists():
            text = (Path(tmp) / "stdout").read_text(errors="replace")
            raise RuntimeError(f"wrk failed ({proc.returncode}): {text[-2000:]}")
        data = json.loads(out_file.read_text())
    return _result(data, usage)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _result(data: dict[str, float], usage: resource.struct_rusage) -> WrkResult:
    errors = sum(int(data[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=int(data["requests"]),
        bytes=int(data["bytes"]),
        duration_s=data["duration_us"] / 1e6,
        errors=errors,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )
