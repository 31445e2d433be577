"""``herdgate agent``.

Exit codes: 0 stopped, 1 could not start (the line says why), 2 a configuration error,
3 the gateway refused the registration token for good (``tunnel.agent.TokenRefused``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import uvloop

from config import allocator, collector, compat, native
from config.checks import check_tunnel
from config.cli import add_common_arguments, load_settings, run_program
from config.errors import ConfigError
from config.reload import settings_loader
from config.schema import AgentSettings


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "agent",
        help="run the cluster agent: dial out to the gateway and hold the tunnel",
        description=(
            "Run a cluster's agent: it dials out to the gateway (it never listens) and "
            "holds a tunnel to every gateway replica, through which the gateway reaches "
            "the cluster's API server. Run the line the gateway printed for a cluster "
            "registration token; outside a pod add --kubeconfig FILE (in a pod it uses its "
            "service account). Every setting is in config/agent.yaml."
        ),
    )
    add_common_arguments(p, "config/agent.yaml")
    p.add_argument("--server", help="gateway URL, e.g. https://gateway.example.com:8443")
    p.add_argument("--token", help="cluster registration token (or HERDGATE_TOKEN)")
    p.add_argument("--token-file", help="file holding the registration token")
    ca = p.add_mutually_exclusive_group()
    ca.add_argument("--ca-checksum", help="SHA-256 of the gateway CA, as the gateway printed it")
    ca.add_argument("--ca-file", help="the gateway CA as a PEM file")
    p.add_argument("--kubeconfig", help="kubeconfig of the cluster (default: in-cluster account)")
    p.add_argument("--node-name", help="run as the node agent of this node")
    p.add_argument(
        "--health-listen",
        help="HOST:PORT for /healthz, /readyz and /metrics (plain HTTP; default: none)",
    )
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> AgentSettings:
    settings = load_settings(
        AgentSettings,
        args,
        {
            "server": args.server,
            "token": args.token,
            "token_file": args.token_file,
            "ca_checksum": args.ca_checksum,
            "ca_file": args.ca_file,
            "kubeconfig": args.kubeconfig,
            "node_name": args.node_name,
            "health_listen": args.health_listen,
        },
    )
    if not settings.server.startswith("https://"):
        raise ConfigError("server", "an https:// gateway URL is required")
    if not settings.token and not settings.token_file:
        raise ConfigError("token", "a registration token is required (--token or --token-file)")
    check_tunnel(settings.tunnel, "tunnel")
    if settings.health_listen:
        from tunnel.probes import split_listen  # aiohttp: only when the agent runs

        split_listen(settings.health_listen)
    return settings


def registration_token(settings: AgentSettings) -> str:
    if settings.token:
        return settings.token
    try:
        return Path(settings.token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError("token_file", f"cannot read: {exc.strerror}") from exc


def reloader(args: argparse.Namespace) -> Callable[[], tuple[AgentSettings, str]]:
    """What SIGHUP reads again: the settings (files checked) and the registration token."""
    load = settings_loader(args, settings_from)

    def reload() -> tuple[AgentSettings, str]:
        settings = load()
        return settings, registration_token(settings)

    return reload


async def _main(
    settings: AgentSettings,
    token: str,
    reload: Callable[[], tuple[AgentSettings, str]] | None = None,
) -> None:
    from config.notify import Notifier
    from tunnel.agent import Agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = Notifier.from_env()
    agent = Agent(settings, token, notifier)
    logging.getLogger(__name__).info("tunnel code: %s", native.describe())
    compat.self_test(compat.AGENT)  # dependencies' internals: one WARNING per failed check
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, agent.reload, reload)
    else:
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # not the default: exit
    collections = asyncio.create_task(collector.FullCollections().run(), name="full collections")
    try:
        async with notifier.watchdog_running():
            await agent.run(stop)
    finally:
        collections.cancel()


def run(args: argparse.Namespace) -> int:
    # Imported here: other subcommands do not need them.
    from tunnel.agent import TOKEN_REFUSED_EXIT, AgentError, TokenRefused

    def main(settings: AgentSettings) -> int:
        allocator.tune()
        try:
            uvloop.run(_main(settings, registration_token(settings), reloader(args)))
        except TokenRefused as exc:
            print(f"herdgate agent: {exc}", file=sys.stderr)
            return TOKEN_REFUSED_EXIT
        return 0

    return run_program("agent", args, settings_from, main, failures=(AgentError,))
