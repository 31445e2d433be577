"""``herdgate gateway``."""

from __future__ import annotations

import argparse

import uvloop

from config import allocator
from config.checks import check_tunnel
from config.cli import add_common_arguments, load_settings, run_program
from config.errors import ConfigError
from config.schema import GatewaySettings
from tunnel.replica_list import check_advertise_url


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
    p.add_argument(
        "--advertise-url",
        help="https://HOST:PORT where agents reach this replica itself (replica.advertise_url)",
    )
    p.set_defaults(run=run)


def add_store_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "store",
        help="back up, restore or move the gateway's store (gateways stopped)",
        description=(
            "Act on the gateway's store directly, with every gateway using it stopped: "
            "back it up to a file, restore a backup, or move it to another backend "
            "(one SQLite host to etcd, for several replicas). The store is the one the "
            "gateway's settings name (--config, --state-dir, HERDGATE_STORE__*) unless "
            "--store gives a URL: sqlite:///PATH or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]. "
            "Backups hold secrets only as hashes, as the store does."
        ),
    )
    commands = p.add_subparsers(dest="store_command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        add_common_arguments(sub, "config/gateway.yaml")
        sub.add_argument("--state-dir", help="the gateway's state directory (SQLite's file)")
        sub.set_defaults(run=_run_store)

    b = commands.add_parser(
        "backup",
        help="write every record of the store, read at one revision, to FILE (0600)",
    )
    b.add_argument("file", metavar="FILE")
    b.add_argument("--store", metavar="URL", help="the store to back up (default: configured)")
    common(b)
    r = commands.add_parser(
        "restore",
        help=(
            "make the store hold exactly FILE's records, migrated to this herdgate's "
            "schema; refuses a store that holds records unless --force"
        ),
    )
    r.add_argument("file", metavar="FILE")
    r.add_argument("--store", metavar="URL", help="the store to restore into")
    r.add_argument("--force", action="store_true", help="replace the records the store holds")
    common(r)
    m = commands.add_parser(
        "migrate",
        help="copy every record from one store to another (e.g. SQLite to etcd)",
        description=(
            "Copy every record of the --from store into the --to store (default: the "
            "configured one, so an etcd with TLS settings can be the target), then check "
            "the target holds them. Then point the gateways at the new store."
        ),
    )
    m.add_argument("--from", dest="source", metavar="URL", required=True, help="the store to copy")
    m.add_argument("--to", dest="target", metavar="URL", help="default: the configured store")
    m.add_argument("--force", action="store_true", help="replace the records --to holds")
    common(m)


def _run_store(args: argparse.Namespace) -> int:
    from gateway.store import cli as store_cli  # only when run: the store's modules

    return store_cli.run(args)


def settings_from(args: argparse.Namespace) -> GatewaySettings:
    settings = load_settings(
        GatewaySettings,
        args,
        {
            "listen": args.listen,
            "state_dir": args.state_dir,
            "server_url": args.server_url,
            "workers": args.workers,
            # (a nested flag is passed only when given: None is "not given" at the top only)
            **({"replica": {"advertise_url": args.advertise_url}} if args.advertise_url else {}),
        },
    )
    if settings.workers < 1:
        raise ConfigError("workers", "must be at least 1")
    if settings.replica.advertise_url:
        try:
            check_advertise_url(settings.replica.advertise_url)
        except ValueError as exc:
            raise ConfigError("replica.advertise_url", str(exc)) from None
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
