"""`python -m standin`: run the stand-in Kubernetes API server.

Flags follow kube-apiserver where one exists. With `--dir`, a CA and serving certificate are
generated there and `ready.json` ({"url", "ca_file", "pid"}) is written once the server listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop
import yaml
from aiohttp import web

from config.tls import ensure_generated_certs

from . import h2front
from .app import Config, StandIn
from .auth import parse_duration
from .status import ApiError


def _bool(value: str) -> bool:
    if value.lower() in ("1", "t", "true", "yes"):
        return True
    if value.lower() in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {value!r}")


def _list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m standin", description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any)")
    p.add_argument("--dir", type=Path, help="working directory: generated PKI and ready.json")
    p.add_argument("--tls-cert-file", type=Path)
    p.add_argument("--tls-private-key-file", type=Path)
    p.add_argument(
        "--client-ca-file", type=Path, help="CA for client certificates (CN=user, O=group)"
    )
    p.add_argument("--token-auth-file", type=Path)
    p.add_argument("--authentication-token-webhook-config-file", type=Path)
    p.add_argument(
        "--authentication-token-webhook-version", default="v1beta1", choices=("v1", "v1beta1")
    )
    p.add_argument("--authentication-token-webhook-cache-ttl", default="2m", type=parse_duration)
    p.add_argument(
        "--api-audiences",
        default="https://kubernetes.default.svc.cluster.local",
        type=_list,
        help="audiences put into TokenReviews (empty: none)",
    )
    p.add_argument(
        "--impersonator-groups",
        default="",
        type=_list,
        help="extra grant (not in kube-apiserver): members may impersonate without RBAC rules",
    )
    p.add_argument(
        "--impersonator-users",
        default="",
        type=_list,
        help="extra grant (not in kube-apiserver): these users may impersonate without RBAC rules",
    )
    p.add_argument(
        "--authorization-mode",
        default="RBAC",
        choices=("RBAC", "AlwaysAllow"),
        help="RBAC (with system:masters as the privileged group) or AlwaysAllow",
    )
    p.add_argument(
        "--bootstrap-objects",
        type=Path,
        action="append",
        default=[],
        help="YAML/JSON file of objects to create at start (repeatable; List kinds flattened)",
    )
    p.add_argument("--audit-log", "--audit-log-path", dest="audit_log", type=Path)
    p.add_argument(
        "--anonymous-auth",
        default=True,
        type=_bool,
        help="serve /healthz, /livez, /readyz and /version to requests without credentials",
    )
    p.add_argument(
        "--aggregated-discovery",
        default=True,
        type=_bool,
        help="serve apidiscovery.k8s.io v2/v2beta1 at /api and /apis when asked (else legacy only)",
    )
    p.add_argument("--kubernetes-version", default="v1.32.0", help="what /version reports")
    p.add_argument(
        "--watch-history",
        default=10000,
        type=int,
        help="events kept for watches that resume from a resourceVersion",
    )
    p.add_argument(
        "--bulk-list-bytes",
        default=0,
        type=int,
        help="size of the generated LIST of configmaps in namespace herdgate-bulk (0: off)",
    )
    p.add_argument(
        "--pod-root",
        type=Path,
        help="directory for the pods' own root directories (kubectl cp; default: a temp dir"
        " removed at exit)",
    )
    p.add_argument(
        "--http2",
        action="store_true",
        help="offer HTTP/2 (ALPN h2) as kube-apiserver does (standin/h2front.py): the default",
    )
    p.add_argument(
        "--http1-only",
        action="store_true",
        help="offer HTTP/1.1 alone (ALPN http/1.1); HERDGATE_STANDIN_HTTP2=0 does so too",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def load_objects(paths: list[Path]) -> list[dict[str, Any]]:
    """The documents of YAML (multi-document) or JSON files."""
    out: list[dict[str, Any]] = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict):
                out.append(doc)
            elif doc is not None:
                raise SystemExit(f"{path}: every document must be an object")
    return out


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(args: argparse.Namespace) -> None:
    config = Config(
        token_file=args.token_auth_file,
        client_ca_file=args.client_ca_file,
        webhook_config=args.authentication_token_webhook_config_file,
        webhook_version=args.authentication_token_webhook_version,
        webhook_cache_ttl=args.authentication_token_webhook_cache_ttl,
        api_audiences=args.api_audiences,
        impersonator_users=args.impersonator_users,
        impersonator_groups=args.impersonator_groups,
        authorization_mode=args.authorization_mode,
        objects=load_objects(args.bootstrap_objects),
        audit_log=args.audit_log,
        anonymous_auth=args.anonymous_auth,
        aggregated_discovery=args.aggregated_discovery,
        pod_root=args.pod_root,
        k8s_version=args.kubernetes_version,
        watch_history=args.watch_history,
        bulk_list_bytes=args.bulk_list_bytes,
    )
    if args.tls_cert_file and args.tls_private_key_file:
        cert, key = args.tls_cert_file, args.tls_private_key_file
        ca_file = args.tls_cert_file
        if args.dir and (args.dir / "ca.crt").exists():
            ca_file = args.dir / "ca.crt"
    elif args.dir:
        paths, _ = ensure_generated_certs(args.dir, ["127.0.0.1", "localhost", "::1"])
        ca_file, cert, key = paths.ca, paths.cert, paths.key
    else:
        raise SystemExit("either --dir or --tls-cert-file/--tls-private-key-file is required")

    try:
        standin = StandIn(config)
    except (ApiError, ValueError) as exc:  # a preloaded object the API would refuse
        raise SystemExit(f"--bootstrap-objects: {exc}") from exc
    app = standin.make_app()
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    host, port = _split_listen(args.listen)
    # HTTP/2 as kube-apiserver offers it, unless asked for HTTP/1.1 alone.
    http2 = args.http2 or not (args.http1_only or os.environ.get("HERDGATE_STANDIN_HTTP2") == "0")
    front: asyncio.Server | None = None
    if http2:
        # aiohttp serves HTTP/1.1 only: HTTP/2 streams reach it over a private unix socket.
        private = Path(tempfile.mkdtemp(prefix="standin-h2-"))
        unix_path = str(private / "app.sock")
        await web.UnixSite(runner, unix_path).start()
        assert runner.server is not None
        if args.dir:
            standin.h2_stats.path = args.dir / "h2.json"
        front = await h2front.serve(
            runner.server,
            unix_path,
            host,
            port,
            standin.ssl_context(cert, key, http2=True),
            standin.h2_stats,
        )
        bound = front.sockets[0].getsockname()[1]
    else:
        site = web.TCPSite(runner, host, port, ssl_context=standin.ssl_context(cert, key))
        await site.start()
        server = site._server
        assert server is not None
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    url = f"https://{shown_host}:{bound}"
    if args.dir:
        ready = {"url": url, "ca_file": str(Path(ca_file).resolve()), "pid": os.getpid()}
        tmp = args.dir / "ready.json.tmp"
        tmp.write_text(json.dumps(ready))
        tmp.replace(args.dir / "ready.json")
    print(f"stand-in API server listening on {url}", file=sys.stderr, flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    standin.begin_shutdown()  # ends watches and followed logs before the listener closes
    if front is not None:
        front.close()
    with contextlib.suppress(Exception):
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args))


if __name__ == "__main__":
    main()
