"""The ``herdgate`` command: one entry point, one subcommand per program."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = (
    "kubectl access to many Kubernetes clusters through one authenticating gateway: "
    "the gateway, the agent beside each cluster, the webhook for direct access, and "
    "kubectl's login plugin. 'herdgate COMMAND --help' describes each."
)


def build_parser() -> argparse.ArgumentParser:
    from gateway import cli as gateway_cli
    from herdgate import commands, helptext
    from tunnel import cli as agent_cli
    from webhook import cli as webhook_cli

    parser = argparse.ArgumentParser(prog="herdgate", description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", required=True)
    gateway_cli.add_parser(subparsers)
    agent_cli.add_parser(subparsers)
    webhook_cli.add_parser(subparsers)
    gateway_cli.add_store_parser(subparsers)  # backup, restore, migrate: on the store itself
    commands.add_parsers(subparsers)  # login (people and kubectl), logout, cluster, ...
    helptext.finish(parser)  # plain text: no reStructuredText markup on a terminal
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
