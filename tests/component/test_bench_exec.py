"""bench.exec_backend and bench.exec_client still work together (a few sessions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.exec_client import measure
from bench.nginx import make_certs
from tests.integration.env import REPO_ROOT, free_port


async def test_exec_client_measures_a_stand_in_exec_endpoint(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    port = free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "bench.exec_backend", "--port", str(port),
         "--cert", str(certs.cert), "--key", str(certs.key)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert backend.stdout is not None
        assert backend.stdout.readline().strip() == "ready"
        url = f"https://127.0.0.1:{port}/api/v1/namespaces/default/pods/p/exec"
        out = await measure(url, "t", str(certs.ca), sessions=3, echoes=20, bulk_mb=0.5)
    finally:
        backend.terminate()
        backend.wait(10)
        if backend.stdout is not None:
            backend.stdout.close()
    assert out["sessions"] == 3 and out["echoes"] == 20
    assert out["bulk_mb"] > 0.4 and out["bulk_mb_per_s"] > 0
    assert 0 < out["echo_p50_ms"] <= out["echo_p99_ms"]
