"""Several gateway processes on one host (``workers: N``).

A small supervisor prepares the state once (certificates, the first admin), then runs
N copies of the gateway that all listen on the same address with SO_REUSEPORT; the
kernel spreads connections, agents included, across them. Each worker is a replica in
the sense of ``gateway.replicas``: agents hold a tunnel to every worker, and the store
keeps their directories in step. A worker that dies is started again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

from config.schema import GatewaySettings
from gateway import bootstrap
from gateway.directory import Directory
from gateway.store import open_store

logger = logging.getLogger(__name__)

WORKER_ENV = "HERDGATE_WORKER_INDEX"
RESTART_DELAY_S = 1.0


def is_worker() -> bool:
    return WORKER_ENV in os.environ


async def prepare(settings: GatewaySettings) -> None:
    """What must happen once, before any worker starts."""
    url = bootstrap.server_url(settings)
    state = bootstrap.state_dir(settings)
    store = await open_store(settings.store, state)
    try:
        directory = Directory(store)
        await directory.load()
        await bootstrap.ensure_admin(directory, settings)
    finally:
        await store.close()
    _, ca_pem, _ = bootstrap.tls_material(settings, url)
    print(bootstrap.banner(url, ca_pem), flush=True)


def supervise(settings: GatewaySettings, argv: list[str]) -> int:
    """Run ``settings.workers`` gateway processes until SIGTERM/SIGINT."""
    asyncio.run(prepare(settings))
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start(index: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ, **{WORKER_ENV: str(index)})
        return subprocess.Popen([sys.executable, "-m", "herdgate", *argv], env=env)

    workers = {index: start(index) for index in range(settings.workers)}
    logger.info("started %d gateway workers", len(workers))
    while not stopping:
        time.sleep(0.2)
        for index, proc in list(workers.items()):
            code = proc.poll()
            if code is not None and not stopping:
                logger.error("worker %d exited with %s; starting it again", index, code)
                time.sleep(RESTART_DELAY_S)
                workers[index] = start(index)
    for proc in workers.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in workers.values():
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0
