"""``herdgate webhook``."""

from __future__ import annotations

import argparse

import uvloop

from config.cli import add_common_arguments, load_settings, run_program
from config.errors import ConfigError
from config.schema import WebhookSettings


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "webhook",
        help="run the TokenReview webhook inside a cluster (direct access without the gateway)",
        description=(
            "Run the TokenReview webhook beside a cluster's API server, for direct access "
            "(the authorized cluster endpoint) that keeps working while the gateway is "
            "down: it checks herdgate tokens against the records the gateway keeps in the "
            "cluster. Installing it: deploy/README.md; every setting is in "
            "config/webhook.yaml."
        ),
    )
    add_common_arguments(p, "config/webhook.yaml")
    p.add_argument("--listen", help="HOST:PORT to serve on (default 127.0.0.1:6440)")
    p.add_argument("--kubeconfig", help="kubeconfig to watch records with (default: in-cluster)")
    p.add_argument("--namespace", help="namespace of the records (default herdgate-system)")
    p.add_argument("--tls-cert-file", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-private-key-file", help="private key of --tls-cert-file")
    p.set_defaults(run=run)


def settings_from(args: argparse.Namespace) -> WebhookSettings:
    flags: dict[str, object] = {
        "listen": args.listen,
        "kubeconfig": args.kubeconfig,
        "namespace": args.namespace,
    }
    tls = {"cert_file": args.tls_cert_file, "key_file": args.tls_private_key_file}
    if any(tls.values()):
        flags["tls"] = {k: v for k, v in tls.items() if v}
    settings = load_settings(WebhookSettings, args, flags)
    from webhook.server import split_listen

    split_listen(settings.listen)
    if not settings.namespace:
        raise ConfigError("namespace", "must not be empty")
    if settings.max_body < 1024:
        raise ConfigError("max_body", "must be at least 1KiB")
    return settings


def run(args: argparse.Namespace) -> int:
    # Imported here so that other subcommands never load the webhook's modules.
    from config.notify import Notifier
    from config.reload import settings_loader
    from webhook.cache import WebhookError
    from webhook.server import serve, tls_context

    def main(settings: WebhookSettings) -> None:
        tls_context(settings)  # fail now, not after connecting to the cluster
        reload = settings_loader(args, settings_from)
        uvloop.run(serve(settings, notifier=Notifier.from_env(), reload_settings=reload))

    return run_program("webhook", args, settings_from, main, failures=(WebhookError, OSError))
