"""``herdgate kubeconfig``: a kubeconfig for some clusters or all, printed, written to a
file, or merged into kubectl's own."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from herdgate import output
from herdgate.client import NoKubeconfigsEndpoint
from herdgate.commands.clusters import seconds
from herdgate.commands.common import EXIT_OK, Session, UsageError, find_cluster, leaf
from herdgate.contexts import write_private
from herdgate.kubeconfigs import context_names, default_target, merge_into_file, parse

if TYPE_CHECKING:
    from herdgate.commands.common import Subparsers


def add_parsers(subparsers: Subparsers) -> None:
    p = leaf(
        subparsers,
        "kubeconfig",
        "get a kubeconfig for clusters (one context each), to print, save or merge",
        run,
        outputs=False,
        check=check,
    )
    p.add_argument("clusters", nargs="*", metavar="CLUSTER", help="name or id")
    p.add_argument("--all", action="store_true", help="every cluster you hold a role on")
    p.add_argument(
        "--exec",
        action="store_true",
        help="no token inside: kubectl runs herdgate login when it needs one",
    )
    p.add_argument("--ttl", default="", help="the token expires after this (e.g. 8h)")
    p.add_argument(
        "-o",
        "--output",
        dest="file",
        default="",
        metavar="FILE",
        help="write it to FILE (0600) instead of standard output",
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="merge it into FILE, else the first file of KUBECONFIG, else ~/.kube/config",
    )


def check(args: argparse.Namespace) -> None:
    if bool(args.clusters) == bool(args.all):
        raise UsageError("name the clusters, or give --all")
    if args.ttl:
        seconds(args.ttl, "--ttl")
        if args.exec:
            raise UsageError("--ttl is for a token; with --exec, herdgate login gets tokens")


def run(session: Session, args: argparse.Namespace) -> int:
    ttl_s = seconds(args.ttl, "--ttl") if args.ttl else None
    client = session.client
    if args.all:
        ids = ["*"]
        what = "every cluster"
    else:
        found = [find_cluster(client, ref) for ref in args.clusters]
        ids = list(dict.fromkeys(str(c["id"]) for c in found))
        what = ", ".join(output.escape(str(c.get("name"))) for c in found)
    try:
        text = client.kubeconfigs(ids, ttl_s, args.exec)
    except NoKubeconfigsEndpoint:
        if len(ids) != 1 or ids == ["*"] or ttl_s is not None:
            raise
        text = client.generate_kubeconfig(ids[0], args.exec)  # a gateway from before it
    if args.merge:
        target = Path(args.file).expanduser() if args.file else default_target()
        merged = merge_into_file(target, text)
        added = context_names(parse(text, "the gateway's kubeconfig"))
        session.note(
            f"Merged {len(added)} context{'s' if len(added) != 1 else ''} for {what} into "
            f"{target}: {', '.join(output.escape(n) for n in added)}; current context: "
            f"{output.escape(str(merged.get('current-context')))}"
        )
    elif args.file and args.file != "-":
        target = Path(args.file).expanduser()
        parse(text, "the gateway's kubeconfig")
        write_private(target, text.encode())
        session.note(
            f"Kubeconfig for {what} written to {target} (kubectl --kubeconfig {target} ...)"
        )
    else:
        session.out(text)
    return EXIT_OK
