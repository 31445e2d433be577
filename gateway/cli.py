"""``herdgate gateway``."""

from __future__ import annotations

import argparse
import json
import sys

import uvloop

from config import loader
from config.errors import ConfigError
from config.logging import configure_logging
from config.schema import GatewaySettings


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("gateway", help="run the authenticating gateway")
    p.add_argument("--config", help="YAML settings file (see config/gateway.yaml)")
    p.add_argument("--listen", help="HOST:PORT to serve HTTPS on (default 0.0.0.0:8443)")
    p.add_argument("--state-dir", help="where state and generated certificates live")
    p.add_argument("--server-url", help="public https:// URL for agents and kubeconfigs")
    p.add_argument("--workers", type=int, help="gateway processes sharing the port (default 1)")
    p.add_argument("--log-level", help="debug, info, warning or error")
    p.add_argument(
        "--check-config",
        action="store_true",
        help="print the effective settings (secrets redacted) and exit",
    )
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> GatewaySettings:
    flags: dict[str, object] = {
        "listen": args.listen,
        "state_dir": args.state_dir,
        "server_url": args.server_url,
        "workers": args.workers,
    }
    if args.log_level:
        flags["logging"] = {"level": args.log_level}
    return loader.load(GatewaySettings, args.config, flags)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
        if args.check_config:
            print(json.dumps(loader.redacted(settings), indent=2))
            return 0
        configure_logging(settings.logging)
        from gateway import workers

        if settings.workers < 1:
            raise ConfigError("workers", "must be at least 1")
        if settings.workers > 1 and not workers.is_worker():
            return workers.supervise(settings, args.argv)
        from gateway.server import serve  # imported here: `herdgate agent` does not need it

        uvloop.run(serve(settings, worker=workers.is_worker()))
    except ConfigError as exc:
        print(f"herdgate gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
