"""SIGTERM while kubectl watches and a large list are running: everything ends cleanly.

The gateway runs with a test socket as its ``NOTIFY_SOCKET`` (standing in for systemd)
and a 0.2 s watchdog. Twenty ``kubectl get -w`` and a 100 MB LIST (read at a limited
rate, so it is mid-way when the signal comes) are running when the gateway gets
SIGTERM: the list must complete intact, every watch must end as if the API server had
ended it (kubectl exits 0, no error), the gateway must exit 0, and systemd must have
been told READY, WATCHDOG and STOPPING.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.binaries import kubectl, require
from tests.fixtures.notify import FakeSystemd, starts_with
from tests.integration.conftest import World, start_world, stop_world
from tests.integration.env import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WATCHES = 20
GRACE = "20s"


@pytest.fixture
def world(tmp_path: Path, systemd: FakeSystemd) -> Iterator[World]:
    w = start_world(
        tmp_path, gateway_config=f"shutdown_grace: {GRACE}\n", gateway_env=systemd.env()
    )
    try:
        yield w
    finally:
        stop_world(w)


def _env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["HOME"] = str(home)
    return env


def test_sigterm_ends_watches_cleanly_and_finishes_the_list(
    world: World, systemd: FakeSystemd
) -> None:
    curl = require(shutil.which("curl"), "curl")
    binary = kubectl("1.32")
    _, api = world.user("watcher", role="cluster-owner")
    kc = world.kubeconfig_for(api, "watcher")
    token = api.token
    created = subprocess.run(
        [binary, "--kubeconfig", str(kc), "create", "configmap", "watched", "--from-literal=a=b"],
        env=_env(world.tmp / "home-create"), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    systemd.wait_for(starts_with("READY=1"), 10, "READY=1")
    systemd.wait_for(starts_with("WATCHDOG=1"), 5, "WATCHDOG=1")

    watches: list[subprocess.Popen[str]] = []
    outputs = []
    bulk: subprocess.Popen[str] | None = None
    try:
        for index in range(WATCHES):
            out = (world.tmp / f"watch-{index}.out").open("w+")
            err = (world.tmp / f"watch-{index}.err").open("w+")
            outputs.append((out, err))
            watches.append(
                subprocess.Popen(
                    [binary, "--kubeconfig", str(kc), "get", "configmaps", "-w"],
                    stdout=out,
                    stderr=err,
                    text=True,
                    env=_env(world.tmp / f"home-w{index}"),
                )
            )
        # Each watch has listed (printed the configmap) and is now waiting for events.
        wait_until(
            lambda: all("watched" in Path(o.name).read_text() for o, _ in outputs),
            30,
            "not every watch started",
        )
        time.sleep(0.5)  # the watch requests follow the initial list

        listing = world.tmp / "bulk.json"
        path = "/api/v1/namespaces/herdgate-bulk/configmaps"
        url = f"{world.gateway.url}/k8s/clusters/{world.cluster_id}{path}"
        bulk = subprocess.Popen(
            [curl, "-sS", "--fail", "--cacert", str(world.gateway.ca_file), "--limit-rate", "20M",
             "-H", f"Authorization: Bearer {token}", "-o", str(listing), url],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_until(
            lambda: listing.exists() and listing.stat().st_size > 4_000_000,
            30,
            "the list did not start",
        )

        gateway = world.gateway.process
        assert gateway is not None
        started = time.monotonic()
        gateway.send_signal(signal.SIGTERM)

        # The watches end at once, cleanly.
        for proc, (_, err) in zip(watches, outputs, strict=True):
            code = proc.wait(15)
            assert code == 0, Path(err.name).read_text()
            assert "error" not in Path(err.name).read_text().lower()
        # The list goes on to its end, intact.
        _, curl_errors = bulk.communicate(timeout=60)
        assert bulk.returncode == 0, curl_errors
        doc = json.loads(listing.read_bytes())
        assert doc["kind"] == "ConfigMapList" and len(doc["items"]) > 1000
        # Then the gateway exits 0, within the grace period.
        assert gateway.wait(30) == 0, world.gateway.log()[-3000:]
        assert time.monotonic() - started < 20 + 5
        world.gateway.process = None

        ready = systemd.wait_for(starts_with("READY=1"), 1, "READY=1")
        stopping = systemd.wait_for(starts_with("STOPPING=1"), 1, "STOPPING=1")
        assert ready < stopping
        assert sum(starts_with("WATCHDOG=1")(m) for m in systemd.messages) >= 2
        log = world.gateway.log()
        assert "watches and followed logs ended" in log
    finally:
        for proc in [*watches, *([bulk] if bulk is not None else [])]:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        for out, err in outputs:
            out.close()
            err.close()
