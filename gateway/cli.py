"""``herdgate gateway``."""

from __future__ import annotations

import argparse

import uvloop

from config import allocator
from config.checks import check_tunnel
from config.cli import add_common_arguments, load_settings, run_program
from config.errors import ConfigError
from config.schema import GatewaySettings


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "gateway",
        help="run the authenticating gateway",
        description=(
            "Run the gateway: one HTTPS address for kubectl (/k8s/clusters/ID/...), the "
            "management API (/v3) and the agents' tunnels, with its state in --state-dir "
            "(SQLite, generated certificates) or etcd. The first start creates the user "
            "admin and prints its password once (or set HERDGATE_BOOTSTRAP_PASSWORD). "
            "Settings: the file given with --config (every key is in config/gateway.yaml), "
            "then these flags, then HERDGATE_* variables."
        ),
    )
    add_common_arguments(p, "config/gateway.yaml")
    p.add_argument("--listen", help="HOST:PORT to serve HTTPS on (default 0.0.0.0:8443)")
    p.add_argument("--state-dir", help="where state and generated certificates live")
    p.add_argument("--server-url", help="public https:// URL for agents and kubeconfigs")
    p.add_argument("--workers", type=int, help="gateway processes sharing the port (default 1)")
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> GatewaySettings:
    settings = load_settings(
        GatewaySettings,
        args,
        {
            "listen": args.listen,
            "state_dir": args.state_dir,
            "server_url": args.server_url,
            "workers": args.workers,
        },
    )
    if settings.workers < 1:
        raise ConfigError("workers", "must be at least 1")
    settings.limits.check()
    settings.server.check()
    check_tunnel(settings.tunnel, "tunnel")
    if settings.tunnel.max_streams_per_user < 0:
        raise ConfigError("tunnel.max_streams_per_user", "must be 0 (automatic) or more")
    if settings.registration.max_agents_per_cluster < 1:
        raise ConfigError("registration.max_agents_per_cluster", "must be at least 1")
    if not settings.registration.agent_program.strip():
        raise ConfigError("registration.agent_program", "must name the agent's program")
    controller = settings.controller
    for key, value, least in (
        ("probe_interval", controller.probe_interval_s, 1.0),
        ("requests_per_second", controller.requests_per_second, 0.1),
        ("request_burst", controller.request_burst, 1),
        ("lease_ttl", controller.lease_ttl_s, 3.0),
    ):
        if value < least:
            raise ConfigError(f"controller.{key}", f"must be at least {least}")
    return settings


def run(args: argparse.Namespace) -> int:
    def main(settings: GatewaySettings) -> int:
        # Imported here: `herdgate agent` and `herdgate webhook` do not need the gateway.
        from gateway.operations import workers
        from gateway.operations.server import serve

        if settings.workers > 1 and not workers.is_worker():
            return workers.supervise(settings, args.argv)
        allocator.tune()
        uvloop.run(
            serve(settings, worker=workers.is_worker(), reload_settings=lambda: settings_from(args))
        )
        return 0

    return run_program("gateway", args, settings_from, main)
