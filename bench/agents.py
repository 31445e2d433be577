"""Many real agents in one process: ``tunnel.agent.Agent`` instances sharing one event loop.

Each agent has its own registration token (its own cluster) and its own TLS WebSocket
tunnel; they share only the process. Run by the suite as
``python -m bench.agents --spec FILE`` (a JSON spec: server, ca_file, kubeconfig, tokens,
ramp). Prints one JSON line per lifecycle event on stdout, read by the orchestrator:

- ``{"t": <unix time>, "a": <agent index>, "e": "up"}``: a tunnel was established;
- ``{"t": ..., "a": ..., "e": "down"}``: a tunnel closed;
- ``{"t": ..., "a": ..., "e": "retry", "delay": s}``: the jittered back-off before a retry.

Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import signal
import sys
import time
from pathlib import Path

import uvloop

from bench.watch_backend import raise_nofile
from config.schema import AgentSettings, LoggingSettings
from tunnel.agent import Agent

AGENT_INDEX: contextvars.ContextVar[int] = contextvars.ContextVar("agent_index", default=-1)
"""Which agent a log line comes from (tasks inherit the context they were created in)."""


class _Events(logging.Handler):
    """Turns the agent's own log lines into lifecycle events (the agent has no hooks)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.msg
        event: dict[str, object] | None = None
        if message.startswith("tunnel to %s established"):
            event = {"t": time.time(), "e": "up"}
        elif message.startswith("tunnel to %s closed"):
            event = {"t": time.time(), "e": "down"}
        elif message.startswith("reconnecting in"):
            delay = record.args[0] if isinstance(record.args, tuple) and record.args else 0.0
            event = {"t": time.time(), "e": "retry", "delay": delay}
        if event is not None:
            event["a"] = AGENT_INDEX.get()
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()


async def run(spec: dict[str, object]) -> None:
    raise_nofile()
    handler = _Events()
    agent_logger = logging.getLogger("tunnel.agent")
    agent_logger.addHandler(handler)
    agent_logger.setLevel(logging.INFO)
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(message)s")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tokens = spec["tokens"]
    assert isinstance(tokens, list)
    ramp = float(spec.get("ramp_per_s", 200))  # type: ignore[arg-type]
    tasks = []
    for index, token in enumerate(tokens):
        settings = AgentSettings(
            server=str(spec["server"]),
            token=str(token),
            ca_file=str(spec["ca_file"]),
            kubeconfig=str(spec["kubeconfig"]),
            logging=LoggingSettings(level="info"),
        )
        AGENT_INDEX.set(index)
        tasks.append(loop.create_task(Agent(settings, str(token)).run(stop)))
        if ramp > 0 and index % 10 == 9:
            await asyncio.sleep(10 / ramp)
    await stop.wait()
    await asyncio.wait(tasks, timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--spec", required=True, help="JSON file: server, ca_file, kubeconfig, tokens"
    )
    args = parser.parse_args(argv)
    uvloop.run(run(json.loads(Path(args.spec).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
