"""``herdgate login``, ``herdgate logout`` and ``herdgate context``.

``herdgate login`` serves two callers. People log in and get a context saved
(``herdgate login https://gw:8443``). kubectl runs it as its exec credential plugin, as
every kubeconfig made with ``"credential": "exec"`` says (``herdgate login --server URL
--provider P --cluster ID``), and gets an ExecCredential on standard output, exactly as
before (``herdgate.login``). It is the plugin when kubectl runs it
(``KUBERNETES_EXEC_INFO`` is set: kubectl sets it for every exec plugin of
``client.authentication.k8s.io/v1`` and ``v1beta1``) or when a flag only the plugin has
is given (``--cluster``, ``--cache-dir``, ``--ca-file``, ``--logout``); otherwise it
is a person's login (whose CA flag is ``--ca``).
"""

from __future__ import annotations

import argparse
import hmac
import os
import sys
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

from herdgate import login as plugin
from herdgate import output
from herdgate.client import (
    ApiError,
    BadServerUrl,
    Client,
    ClientError,
    Trust,
    Untrusted,
    ca_checksum,
    normalize_server,
)
from herdgate.commands.common import (
    CONTEXT_ENV,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    SERVER_ENV,
    Failure,
    UsageError,
    add_output,
    explain,
    guarded,
    load_contexts,
    print_error,
    read_ca_file,
    read_secret,
    tty_input,
)
from herdgate.contexts import Context, Contexts, default_path, save, without_token

if TYPE_CHECKING:
    from herdgate.commands.common import Subparsers

EXEC_INFO_ENV = "KUBERNETES_EXEC_INFO"
PLUGIN_ONLY = {
    "cluster": "--cluster",
    "cache_dir": "--cache-dir",
    "ca_file": "--ca-file",
    "logout": "--logout",
}
PERSON_ONLY = {
    "url": "SERVER",
    "ca": "--ca",
    "insecure": "--insecure",
    "ca_checksum": "--ca-checksum",
    "token": "--token",
    "context": "--context",
    "password_stdin": "--password-stdin",
}
TOKEN_DESCRIPTION = "herdgate CLI"


def add_parsers(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "login",
        help="log in to a gateway and save a context (also kubectl's credential plugin)",
        description="Log in to a gateway and save the token in a context "
        "(~/.herdgate/config.json, or HERDGATE_CONFIG). kubectl runs the same command as its "
        "exec credential plugin (with --cluster, as kubeconfigs from the gateway say); it then "
        "prints an ExecCredential instead.",
    )
    p.add_argument("url", nargs="?", metavar="SERVER", help="gateway URL, e.g. https://gw:8443")
    p.add_argument("--server", default="", help="gateway URL (the same as SERVER)")
    p.add_argument(
        "--provider",
        default="local",
        choices=sorted({*plugin.PROVIDER_PATHS, *plugin.DEVICE_PROVIDERS}),
        help="who checks the password: local (default), ldap, activedirectory; or a browser "
        "login: oidc, github",
    )
    p.add_argument("--username", default="", help="user name (else asked for)")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    p.add_argument("--token", default="", help="log in with this API token instead ('-': stdin)")
    p.add_argument("--ca", default="", metavar="FILE", help="CA file that verifies the gateway")
    p.add_argument(
        "--ca-checksum",
        default="",
        metavar="SHA256",
        help="trust the CA the gateway serves if its SHA-256 is this (as its agents do)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="do not verify the gateway's certificate at all (saved in the context)",
    )
    p.add_argument("--context", default="", help="name of the context to save (default USER@HOST)")
    plugin_group = p.add_argument_group("as kubectl's credential plugin (in kubeconfigs)")
    plugin_group.add_argument(
        "--cluster",
        action="append",
        default=[],
        help="scope the token to this cluster id (repeated: to each of those clusters)",
    )
    plugin_group.add_argument("--ca-file", default="", help="CA that verifies the gateway")
    plugin_group.add_argument("--cache-dir", default="", help="default ~/.herdgate/cache")
    plugin_group.add_argument(
        "--logout", action="store_true", help="forget the cached token and exit"
    )
    p.set_defaults(run=run_login)

    p = subparsers.add_parser(
        "logout",
        help="revoke the current context's token and forget it",
        description="Revoke the token that herdgate login made and remove it from the context "
        "(the server and CA stay, for the next herdgate login). A token given with "
        "--token is only forgotten, not revoked.",
    )
    p.add_argument("--context", default="", help="this context instead of the current one")
    p.add_argument("--all", action="store_true", help="every context")
    p.set_defaults(run=run_logout)

    contexts = subparsers.add_parser(
        "context",
        help="list the saved contexts or choose the current one",
        description="List the saved contexts (gateways and who you are there) or choose one.",
    )
    inner = contexts.add_subparsers(dest="context_command", required=True, metavar="COMMAND")
    p = inner.add_parser("list", help="list the saved contexts", description="List the contexts.")
    add_output(p)
    p.set_defaults(run=run_context_list)
    p = inner.add_parser(
        "use", help="make a context the current one", description="Make a context current."
    )
    p.add_argument("name")
    p.set_defaults(run=run_context_use)
    p = inner.add_parser(
        "delete",
        help="forget a context (its token is not revoked: herdgate logout does that)",
        description="Forget a context. Its token stays valid until it expires; "
        "herdgate logout --context NAME revokes it first.",
    )
    p.add_argument("name")
    p.set_defaults(run=run_context_delete)


# -- login -------------------------------------------------------------------------------


def is_plugin_call(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    """kubectl runs it (``KUBERNETES_EXEC_INFO``), or a flag only the plugin has is given."""
    return EXEC_INFO_ENV in environ or any(getattr(args, name) for name in PLUGIN_ONLY)


def run_login(args: argparse.Namespace) -> int:
    if is_plugin_call(args, os.environ):
        return run_plugin(args)
    return guarded(lambda: person_login(args))


def run_plugin(args: argparse.Namespace) -> int:
    """kubectl's exec credential plugin, with exactly the flags it always had."""
    given = [flag for name, flag in PERSON_ONLY.items() if getattr(args, name)]
    if given:
        print_error(f"{', '.join(given)}: not an option of kubectl's credential plugin")
        return EXIT_USAGE
    if not args.server:
        print_error("the credential plugin needs --server")
        return EXIT_USAGE
    return plugin.run(args)


def host_port(server: str) -> str:
    return urllib.parse.urlsplit(server).netloc


def person_login(args: argparse.Namespace) -> int:
    path = default_path()
    contexts = load_contexts(path, sys.stderr)
    named = args.context or os.environ.get(CONTEXT_ENV, "")
    current = contexts.get(named) if named else None
    if current is None:
        current = contexts.get(contexts.current)  # a new context: on the current gateway
    text = args.url or args.server or os.environ.get(SERVER_ENV, "")
    if not text:
        if current is None:
            raise UsageError("give the gateway's URL: herdgate login https://GATEWAY:8443")
        text = current.server
    try:
        server = normalize_server(text)
    except BadServerUrl as exc:
        raise UsageError(str(exc)) from None
    known = [c for c in contexts.for_server(server) if c.ca_pem or c.insecure]
    trust = establish_trust(server, args, known[0] if known else None)
    client = Client(server, trust)
    token, owned = obtain_token(
        client, args, current if current and current.server == server else None
    )
    client.token = token
    try:
        me = client.me()
    except ApiError as exc:
        if exc.status == 401:
            raise Failure(
                f"the gateway did not accept the token: {output.escape(exc.message)}",
                "an API token for the management API is needed (not a cluster-scoped one)",
            ) from None
        raise
    username = str(me.get("username") or me.get("id") or "")
    name = args.context or f"{username}@{host_port(server)}"
    previous = contexts.get(name)
    contexts.put(
        Context(
            name=name,
            server=server,
            ca_pem=trust.ca_pem,
            insecure=trust.insecure,
            token=token,
            token_owned=owned,
            provider=args.provider if owned else "",
            username=username,
            user_id=str(me.get("id") or ""),
        )
    )
    save(path, contexts)
    role = " (administrator)" if me.get("admin") else ""
    sys.stderr.write(
        f"Logged in to {output.escape(server)} as {output.escape(username)}{role}; "
        f"context {output.escape(name)} saved in {path}\n"
    )
    if previous is not None and previous.token_owned and previous.token not in ("", token):
        revoke_quietly(previous)
    return EXIT_OK


def establish_trust(server: str, args: argparse.Namespace, known: Context | None) -> Trust:
    """How to check the gateway's certificate: as asked (``--insecure``, ``--ca``,
    ``--ca-checksum``), as a context of this server already does, or the system's CAs;
    a CA the system does not trust is taken only after the person compares its checksum."""
    if args.insecure:
        sys.stderr.write(
            "warning: --insecure: the gateway's certificate is not checked; whoever sits "
            "between you and it can read your password and token\n"
        )
        return Trust(insecure=True)
    if args.ca:
        return Trust(read_ca_file(args.ca))
    if args.ca_checksum:
        return Trust(fetch_ca(server, args.ca_checksum))
    if known is not None:
        if known.insecure:
            sys.stderr.write(
                f"warning: not checking the gateway's certificate, as context {known.name} "
                "chose (--insecure); log in with --ca or --ca-checksum to check it\n"
            )
        return Trust(known.ca_pem, known.insecure)
    try:
        Client(server, Trust()).version()
        return Trust()
    except Untrusted as exc:
        if exc.hostname_mismatch:
            raise
        return Trust(ask_to_trust(server, exc))


def fetch_ca(server: str, expected: str) -> str:
    """The CA ``/cacerts`` serves (over an unverified connection), if its checksum is
    ``expected``."""
    pem = Client(server, Trust(insecure=True)).cacerts()
    actual = ca_checksum(pem)
    if not hmac.compare_digest(actual, expected.strip().lower()):
        raise Failure(
            f"the CA served by {server} has checksum {actual}, expected {output.escape(expected)}",
            "refusing to trust it: check the checksum with the gateway's administrator",
        )
    try:
        return pem.decode()
    except UnicodeDecodeError:
        raise Failure(f"{server}/cacerts is not a PEM certificate") from None


def ask_to_trust(server: str, untrusted: Untrusted) -> str:
    pem = Client(server, Trust(insecure=True)).cacerts()
    checksum = ca_checksum(pem)
    hint = (
        f"pass --ca-checksum {checksum} if that is the checksum the gateway printed when it "
        "started (also in its agent commands), or --ca CA_FILE"
    )
    if not sys.stderr.isatty():
        message, _ = explain(untrusted)
        raise Failure(message, hint)
    sys.stderr.write(
        f"The certificate of {server} is not signed by a CA this machine trusts.\n"
        f"The gateway serves its CA at {server}/cacerts, with the SHA-256 checksum\n"
        f"  {checksum}\n"
        "Compare it with the checksum the gateway printed when it started (also in its "
        "agent commands: --ca-checksum).\n"
    )
    answer = tty_input("Trust this CA for this gateway? [y/N] ")
    if answer is None:
        message, _ = explain(untrusted)
        raise Failure(message, hint)
    if answer.lower() not in ("y", "yes"):
        raise Failure("not logged in: the gateway's CA was not trusted")
    try:
        return pem.decode()
    except UnicodeDecodeError:
        raise Failure(f"{server}/cacerts is not a PEM certificate") from None


def obtain_token(
    client: Client, args: argparse.Namespace, current: Context | None
) -> tuple[str, bool]:
    """A token and whether this login made it: given (``--token``), by a device login
    (OIDC, GitHub), or by user name and password."""
    if args.token:
        if args.token == "-":
            return read_secret(True, "", what="token"), False
        return args.token, False
    if args.provider in plugin.DEVICE_PROVIDERS:
        flow = argparse.Namespace(server=client.server, provider=args.provider, cluster=[])
        try:
            result = plugin.device_login(flow, client.trust.ssl_context())
        except plugin.LoginError as exc:
            raise Failure(output.escape(str(exc))) from None
        return str(result["token"]), True
    username = args.username or os.environ.get("HERDGATE_USERNAME", "")
    if not username and current is not None and current.provider == args.provider:
        username = current.username
    if not username:
        username = (tty_input(f"{args.provider} user name: ") or "") if sys.stdin.isatty() else ""
    if not username:
        raise UsageError("give the user name: --username NAME")
    password = os.environ.get("HERDGATE_PASSWORD", "") if not args.password_stdin else ""
    if not password:
        password = read_secret(args.password_stdin, f"password for {username}: ")
    try:
        result = client.password_login(
            plugin.PROVIDER_PATHS[args.provider], username, password, TOKEN_DESCRIPTION
        )
    except ApiError as exc:
        if exc.status == 401:
            raise Failure(
                f"login failed: {output.escape(exc.message)}",
                f"check the user name and password (and --provider: {args.provider} was used)",
            ) from None
        if exc.status == 404:
            raise Failure(
                f"login failed: {output.escape(exc.message)}",
                "this gateway does not have that provider configured: choose another --provider",
            ) from None
        raise
    return str(result["token"]), True


def revoke_quietly(context: Context) -> str:
    """Revoke a token this CLI made; what went wrong, or "" (an unknown or expired token
    is already gone)."""
    client = Client(context.server, Trust(context.ca_pem, context.insecure), context.token)
    try:
        client.logout()
    except ApiError as exc:
        if exc.status in (401, 410):
            return ""
        return explain(exc)[0]
    except ClientError as exc:
        return explain(exc)[0]
    return ""


# -- logout and contexts -----------------------------------------------------------------


def run_logout(args: argparse.Namespace) -> int:
    return guarded(lambda: logout(args))


def logout(args: argparse.Namespace) -> int:
    path = default_path()
    contexts = load_contexts(path, sys.stderr)
    if args.all:
        chosen = [c for c in contexts.contexts.values() if c.token]
    else:
        name = args.context or os.environ.get(CONTEXT_ENV, "") or contexts.current
        context = contexts.get(name) if name else None
        if context is None:
            raise Failure("not logged in: there is no current context")
        chosen = [context]
    failed = []
    for context in chosen:
        problem = revoke_quietly(context) if context.token and context.token_owned else ""
        contexts.put(without_token(context), make_current=False)
        save(path, contexts)
        if problem:
            failed.append(context.name)
            print_error(
                f"{problem}; the token of {context.name} is forgotten here but may stay valid "
                "until it expires"
            )
        else:
            sys.stderr.write(f"Logged out of {output.escape(context.server)} ({context.name})\n")
    return EXIT_FAILED if failed else EXIT_OK


def context_rows(contexts: Contexts) -> list[dict[str, object]]:
    return [
        {
            "name": c.name,
            "current": c.name == contexts.current,
            "server": c.server,
            "username": c.username,
            "userId": c.user_id,
            "trust": c.trust(),
            "loggedIn": bool(c.token),
        }
        for c in sorted(contexts.contexts.values(), key=lambda c: c.name)
    ]


def run_context_list(args: argparse.Namespace) -> int:
    def body() -> int:
        contexts = load_contexts(default_path(), sys.stderr)
        columns = [
            output.Column("CURRENT", lambda r: "*" if r["current"] else ""),
            output.field("name"),
            output.field("server"),
            output.field("username", "USER"),
            output.field("trust", "CA"),
            output.Column("LOGGED-IN", lambda r: "yes" if r["loggedIn"] else "no"),
        ]
        rows = context_rows(contexts)
        text = output.render(rows, columns, args.output, "context", lambda r: str(r["name"]))
        sys.stdout.write(text)
        if not rows and not args.output:
            sys.stderr.write("No contexts: log in with herdgate login https://GATEWAY:8443\n")
        return EXIT_OK

    return guarded(body)


def run_context_use(args: argparse.Namespace) -> int:
    def body() -> int:
        path = default_path()
        contexts = load_contexts(path, sys.stderr)
        if contexts.get(args.name) is None:
            known = ", ".join(sorted(contexts.contexts)) or "none"
            raise UsageError(f"no context named {args.name!r} (known: {known})")
        contexts.current = args.name
        save(path, contexts)
        sys.stderr.write(f"Current context: {args.name}\n")
        return EXIT_OK

    return guarded(body)


def run_context_delete(args: argparse.Namespace) -> int:
    def body() -> int:
        path = default_path()
        contexts = load_contexts(path, sys.stderr)
        context = contexts.get(args.name)
        if context is None:
            raise UsageError(f"no context named {args.name!r}")
        contexts.remove(args.name)
        save(path, contexts)
        sys.stderr.write(f"Context {args.name} deleted\n")
        if context.token:
            sys.stderr.write(
                "Its token was not revoked and stays valid until it expires "
                "(herdgate logout --context NAME revokes before forgetting).\n"
            )
        return EXIT_OK

    return guarded(body)
