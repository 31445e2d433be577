"""Many real agents in one process: ``tunnel.agent.Agent`` instances sharing one event loop.

Each agent has its own registration token (its own cluster) and its own TLS WebSocket
tunnel; they share only the process. Run by the suite as
``python -m bench.agents --spec FILE`` (a JSON spec: server, ca_file, kubeconfig, tokens,
ramp_per_s, optionally reconnect_spread_s). Prints one JSON line per lifecycle event on
stdout, read by the orchestrator:

- ``{"t": <unix time>, "a": <agent index>, "e": "up"}``: the agent has a tunnel again
  (``Agent.connected`` was set);
- ``{"t": ..., "a": ..., "e": "down"}``: it has none (``Agent.connected`` was cleared);
- ``{"t": ..., "a": ..., "e": "retry", "delay": s}``: a dial failed; ``t`` is when that
  dial began (``Agent.dial_started``: the log line comes later, after the rest of the
  process's agents had their turn), ``delay`` the jittered wait before the next (from the
  agent's "retrying in" log line).

Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import logging
import re
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


def _say(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class _ReportingEvent(asyncio.Event):
    """Stands in for ``Agent.connected`` (set while the agent has a tunnel): reports changes."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def set(self) -> None:
        if not self.is_set():
            _say({"t": time.time(), "a": self.index, "e": "up"})
        super().set()

    def clear(self) -> None:
        if self.is_set():
            _say({"t": time.time(), "a": self.index, "e": "down"})
        super().clear()


_RETRYING = re.compile(r"retrying in ([0-9.]+) s")


class _Retries(logging.Handler):
    """A failed dial's log line (``tunnel.redial``: "...; retrying in 2 s", at WARNING the
    first time and DEBUG for repeats) -> a retry event with its delay."""

    def __init__(self, agents: dict[int, Agent]) -> None:
        super().__init__()
        self.agents = agents

    def emit(self, record: logging.LogRecord) -> None:
        match = _RETRYING.search(record.getMessage())
        if match:
            index = AGENT_INDEX.get()
            agent = self.agents.get(index)
            began = agent.dial_started if agent is not None else 0.0
            delay = float(match.group(1))
            _say({"t": began or time.time(), "a": index, "e": "retry", "delay": delay})


async def run(spec: dict[str, object]) -> None:
    raise_nofile()
    agents: dict[int, Agent] = {}
    handler = _Retries(agents)
    agent_logger = logging.getLogger("tunnel.agent")
    agent_logger.addHandler(handler)
    agent_logger.setLevel(logging.DEBUG)  # repeated failures are logged at DEBUG
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(levelname)s %(message)s")
    for printer in logging.getLogger().handlers:
        printer.setLevel(logging.INFO)  # the agents' DEBUG lines reach only _Retries
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
            **({"reconnect_spread_s": float(spec["reconnect_spread_s"])}  # type: ignore[arg-type]
               if "reconnect_spread_s" in spec else {}),
        )  # fmt: skip
        AGENT_INDEX.set(index)
        agent = agents[index] = Agent(settings, str(token))
        agent.connected = _ReportingEvent(index)
        tasks.append(loop.create_task(agent.run(stop)))
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
