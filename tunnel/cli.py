"""``herdgate agent``."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import uvloop

from config import loader
from config.errors import ConfigError
from config.logging import configure_logging
from config.schema import AgentSettings


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "agent", help="run the cluster agent: dial out to the gateway and hold the tunnel"
    )
    p.add_argument("--config", help="YAML settings file (see config/agent.yaml)")
    p.add_argument("--server", help="gateway URL, e.g. https://gateway.example.com:8443")
    p.add_argument("--token", help="cluster registration token (or HERDGATE_TOKEN)")
    p.add_argument("--token-file", help="file holding the registration token")
    ca = p.add_mutually_exclusive_group()
    ca.add_argument("--ca-checksum", help="SHA-256 of the gateway CA, as the gateway printed it")
    ca.add_argument("--ca-file", help="the gateway CA as a PEM file")
    p.add_argument("--kubeconfig", help="kubeconfig of the cluster (default: in-cluster account)")
    p.add_argument("--node-name", help="run as the node agent of this node")
    p.add_argument("--log-level", help="debug, info, warning or error")
    p.add_argument(
        "--check-config",
        action="store_true",
        help="print the effective settings (secrets redacted) and exit",
    )
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> AgentSettings:
    flags: dict[str, object] = {
        "server": args.server,
        "token": args.token,
        "token_file": args.token_file,
        "ca_checksum": args.ca_checksum,
        "ca_file": args.ca_file,
        "kubeconfig": args.kubeconfig,
        "node_name": args.node_name,
    }
    if args.log_level:
        flags["logging"] = {"level": args.log_level}
    settings = loader.load(AgentSettings, args.config, flags)
    if not settings.server.startswith("https://"):
        raise ConfigError("server", "an https:// gateway URL is required")
    if not settings.token and not settings.token_file:
        raise ConfigError("token", "a registration token is required (--token or --token-file)")
    return settings


def registration_token(settings: AgentSettings) -> str:
    if settings.token:
        return settings.token
    try:
        return Path(settings.token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError("token_file", f"cannot read: {exc.strerror}") from exc


async def _main(settings: AgentSettings, token: str) -> None:
    from tunnel.agent import Agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Agent(settings, token).run(stop)


def run(args: argparse.Namespace) -> int:
    from tunnel.agent import AgentError  # imported here: other subcommands do not need it

    try:
        settings = settings_from(args)
        if args.check_config:
            print(json.dumps(loader.redacted(settings), indent=2))
            return 0
        token = registration_token(settings)
        configure_logging(settings.logging)
        uvloop.run(_main(settings, token))
    except ConfigError as exc:
        print(f"herdgate agent: configuration error: {exc}", file=sys.stderr)
        return 2
    except AgentError as exc:
        print(f"herdgate agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
