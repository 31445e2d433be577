"""Several gateway processes on one host (``workers: N``).

A small supervisor prepares the state once (certificates, the first admin), then runs
N copies of the gateway that all listen on the same address with SO_REUSEPORT; the
kernel spreads connections, agents included, across them. Each worker is a replica in
the sense of ``gateway.clusters.replicas``: agents hold a tunnel to every worker, and the store
keeps their directories in step. A worker that dies is started again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import multiprocess

from config.notify import Notifier
from config.schema import GatewaySettings
from gateway.identity.directory import Directory
from gateway.operations import bootstrap
from gateway.store import open_store
from gateway.telemetry import metrics

logger = logging.getLogger(__name__)

WORKER_ENV = "HERDGATE_WORKER_INDEX"
RESTART_DELAY_S = 1.0
TICK_S = 0.2
DEFAULT_WORKER_WATCHDOG_S = 15.0
"""Without a systemd watchdog, workers still ping the supervisor this often."""
STOP_MARGIN_S = 10.0
"""Beyond the workers' grace period, before the supervisor kills them."""


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
    print(bootstrap.banner(url, ca_pem, settings), flush=True)


class WorkerStates:
    """What the workers told the supervisor, and what the supervisor should do (pure).

    Workers speak systemd's notify protocol to the supervisor, which speaks for all of
    them to systemd: READY once every worker is ready (again, after a reload), and a
    worker whose watchdog pings stop is reported as stuck, to be killed and restarted.
    """

    def __init__(self, count: int, watchdog_s: float, start_timeout_s: float = 90.0) -> None:
        self.count = count
        self.watchdog_s = watchdog_s
        self.start_timeout_s = start_timeout_s
        """How long a new worker may take to say anything at all (importing, opening the
        store): as systemd, the watchdog applies only once a process has started, and
        start-up has a timeout of its own (``TimeoutStartSec``, 90 s by default)."""
        self.ready: set[int] = set()
        self.last_ping: dict[int, float] = {}
        self.spoke: set[int] = set()
        self.reloading = False
        self.announced_ready = False

    def started(self, pid: int, now: float) -> None:
        self.last_ping[pid] = now
        self.ready.discard(pid)
        self.spoke.discard(pid)

    def gone(self, pid: int) -> None:
        self.last_ping.pop(pid, None)
        self.ready.discard(pid)
        self.spoke.discard(pid)

    def reload_begins(self) -> None:
        self.reloading = True
        self.ready.clear()

    def message(self, pid: int, fields: list[str], now: float) -> bool:
        """Take one notify datagram; True when the supervisor should now say READY=1."""
        if pid not in self.last_ping:
            return False
        self.last_ping[pid] = now  # any message shows the worker's loop is alive
        self.spoke.add(pid)
        if "READY=1" in fields:
            self.ready.add(pid)
            if len(self.ready) >= self.count and (self.reloading or not self.announced_ready):
                self.reloading = False
                self.announced_ready = True
                return True
        return False

    def stuck(self, now: float) -> list[int]:
        """Workers silent for two watchdog periods since they last spoke, or that have
        said nothing at all within the start timeout."""
        return [
            pid
            for pid, last in self.last_ping.items()
            if now - last > (2 * self.watchdog_s if pid in self.spoke else self.start_timeout_s)
        ]


def _notify_socket() -> tuple[socket.socket, str]:
    """An abstract datagram socket the workers notify (with their pid attached)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"herdgate-workers-{os.getpid()}-{os.urandom(4).hex()}"
    sock.bind(b"\0" + name.encode())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(TICK_S)
    return sock, "@" + name


def _receive(sock: socket.socket) -> tuple[int, list[str]] | None:
    try:
        data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
    except (TimeoutError, BlockingIOError, InterruptedError):
        return None
    pid = 0
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = _UCRED.unpack(payload[: _UCRED.size])[0]
    return pid, data.decode(errors="replace").split("\n")


_UCRED = struct.Struct("3i")


def _metrics_dir(settings: GatewaySettings) -> Path:
    """Where prometheus_client keeps the workers' values (emptied at each start)."""
    directory = Path(bootstrap.state_dir(settings)) / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    return directory


def supervise(settings: GatewaySettings, argv: list[str]) -> int:
    """Run ``settings.workers`` gateway processes until SIGTERM/SIGINT.

    SIGHUP is passed on to every worker (each reloads what it can). Towards systemd the
    supervisor is the service: READY=1 when all workers serve, its own watchdog pings,
    STOPPING=1 on the way out; a worker that stops pinging is killed and started again.
    """
    # The workers bind with SO_REUSEPORT: an address in use would make each of them fail,
    # be started again and fail, forever. Find out once, before anything else.
    bootstrap.bind_listeners(settings, reuse_port=True).close()
    asyncio.run(prepare(settings))
    systemd = Notifier.from_env()
    metrics_dir = _metrics_dir(settings)
    sock, notify_address = _notify_socket()
    watchdog_s = systemd.watchdog_interval() or DEFAULT_WORKER_WATCHDOG_S
    states = WorkerStates(settings.workers, watchdog_s)
    events: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        events.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    def start(index: int) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_PID"}
        env.update(
            {
                WORKER_ENV: str(index),
                "NOTIFY_SOCKET": notify_address,
                "WATCHDOG_USEC": str(int(watchdog_s * 2 * 1_000_000)),
                metrics.MULTIPROC_ENV: str(metrics_dir),
            }
        )
        proc = subprocess.Popen([sys.executable, "-m", "herdgate", *argv], env=env)
        states.started(proc.pid, time.monotonic())
        return proc

    workers = {index: start(index) for index in range(settings.workers)}
    logger.info("started %d gateway workers", len(workers))
    systemd.status(f"starting {len(workers)} workers")
    next_ping = 0.0
    stopping = False
    while not stopping:
        received = _receive(sock)
        now = time.monotonic()
        if received is not None:
            pid, fields = received
            if states.message(pid, fields, now):
                systemd.ready(f"{len(workers)} workers serving")
        while events:
            signum = events.pop(0)
            if signum == signal.SIGHUP:
                systemd.reloading("reloading workers")
                states.reload_begins()
                for proc in workers.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGHUP)
            else:
                stopping = True
        if stopping:
            break
        if now >= next_ping:
            systemd.watchdog()
            next_ping = now + (systemd.watchdog_interval() or watchdog_s)
        stuck = set(states.stuck(now))
        for index, proc in list(workers.items()):
            if proc.pid in stuck and proc.poll() is None:
                logger.error("worker %d stopped answering its watchdog; killing it", index)
                proc.kill()
                proc.wait(5)
            code = proc.poll()
            if code is not None:
                logger.error("worker %d exited with %s; starting it again", index, code)
                states.gone(proc.pid)
                multiprocess.mark_process_dead(proc.pid, str(metrics_dir))  # type: ignore[no-untyped-call]
                time.sleep(RESTART_DELAY_S)
                workers[index] = start(index)
    systemd.stopping("stopping workers")
    for proc in workers.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_grace_s + STOP_MARGIN_S
    for proc in workers.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    sock.close()
    return 0
