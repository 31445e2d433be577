"""TokenReview latency of a running ``herdgate webhook`` at a fixed request rate.

Starts the stand-in API server and the webhook on 127.0.0.1 (tests/integration/webhook_env.py),
creates one user and one token record, waits until the webhook has them in its watch cache,
then POSTs TokenReviews open-loop at ``--rate`` per second for ``--seconds`` (each request is
sent at its scheduled time whether or not earlier ones have finished) over keep-alive
connections, as kube-apiserver does. Phases: the valid token, then an unknown token. Latency
is from writing the request to reading the whole answer, measured with a minimal HTTP/1.1
client so the client's own cost stays small. Bounded: at most 20,000 requests per phase and
60 s per phase, loopback only.

Usage: ``.venv/bin/python -m bench.webhook_latency [--rate 200] [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.env import wait_until
from tests.integration.webhook_env import WebhookWorld, start_webhook_world

MAX_REQUESTS = 20_000
MAX_SECONDS = 60.0
HOST = "127.0.0.1"


def request_bytes(port: int, token: str, version: str = "v1") -> bytes:
    body = json.dumps(
        {
            "kind": "TokenReview",
            "apiVersion": f"authentication.k8s.io/{version}",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": token, "audiences": ["https://kubernetes.default.svc.cluster.local"]},
            "status": {"user": {}},
        }
    ).encode()
    head = (
        f"POST /v1/authenticate HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Content-Type: application/json\r\nAccept: application/json, */*\r\n"
        f"User-Agent: herdgate-bench\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


@dataclass
class Pool:
    """Idle keep-alive connections; a new one is opened only when all are busy."""

    port: int
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)
    opened: int = 0

    async def exchange(self, payload: bytes) -> tuple[int, bytes, float]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(HOST, self.port)
            self.opened += 1
        start = time.perf_counter()
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await reader.readexactly(length)
        elapsed = time.perf_counter() - start
        self.idle.append((reader, writer))
        return status, body, elapsed

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def percentile(sorted_values: list[float], pct: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


async def phase(
    port: int, token: str, rate: float, seconds: float, expect: bool
) -> dict[str, float]:
    count = min(MAX_REQUESTS, int(rate * seconds))
    payload = request_bytes(port, token)
    pool = Pool(port)
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()

    async def one() -> None:
        nonlocal errors
        try:
            status, body, elapsed = await asyncio.wait_for(pool.exchange(payload), 5)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            errors += 1
            return
        if status != 200 or json.loads(body)["status"]["authenticated"] is not expect:
            errors += 1
        latencies.append(elapsed)

    # Warm-up: open the connection and touch every code path once.
    for _ in range(20):
        await one()
    latencies.clear()
    errors = 0
    tasks: list[asyncio.Task[None]] = []
    start = loop.time()
    async with asyncio.timeout(min(MAX_SECONDS, seconds * 2 + 10)):
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    wall = loop.time() - start
    await pool.close()
    ordered = sorted(latencies)
    return {
        "requests": float(count),
        "achieved_rps": count / wall,
        "errors": float(errors),
        "connections": float(pool.opened),
        "p50_ms": statistics.median(ordered) * 1000,
        "p90_ms": percentile(ordered, 90) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.rate <= 0 or args.seconds <= 0 or args.rate * args.seconds > MAX_REQUESTS:
        raise SystemExit(f"rate x seconds must be between 1 and {MAX_REQUESTS}")
    if args.seconds > MAX_SECONDS:
        raise SystemExit(f"--seconds is at most {MAX_SECONDS:.0f}")
    tmp = Path(tempfile.mkdtemp(prefix="herdgate-webhook-bench-"))
    # The production watch timeout: the tests' 2 s watches would add reconnects to the run.
    world: WebhookWorld = start_webhook_world(
        tmp, None, log_level="info", env={"HERDGATE_WATCH_TIMEOUT": "5m"}
    )
    try:
        cred = world.new_user()
        wait_until(
            lambda: world.webhook.review(cred.bearer)[1]["status"]["authenticated"],
            10,
            "the token never reached the webhook's cache",
        )
        results = {
            "valid token": asyncio.run(
                phase(world.webhook.port, cred.bearer, args.rate, args.seconds, True)
            ),
            "unknown token": asyncio.run(
                phase(
                    world.webhook.port, "token-zzzzz:" + cred.secret, args.rate, args.seconds, False
                )
            ),
        }
    finally:
        world.stop()
    print(f"TokenReview latency, {args.rate:.0f} req/s for {args.seconds:.0f} s, 127.0.0.1")
    print(f"{'':15} {'reqs':>6} {'req/s':>7} {'err':>4} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7}")  # fmt: skip
    for name, r in results.items():
        print(
            f"{name:15} {r['requests']:6.0f} {r['achieved_rps']:7.1f} {r['errors']:4.0f} "
            f"{r['p50_ms']:7.3f} {r['p90_ms']:7.3f} {r['p99_ms']:7.3f} {r['max_ms']:7.3f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
