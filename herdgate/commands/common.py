"""What every command of the CLI shares: the connection options, finding the gateway
and the token, printing, prompting, and turning failures into messages that say what
to do and an exit code (0 done, 1 refused or failed, 2 wrong usage).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from herdgate import output
from herdgate.client import (
    ApiError,
    BadServerUrl,
    Client,
    ClientError,
    NoKubeconfigsEndpoint,
    Resource,
    Trust,
    Unreachable,
    Untrusted,
    normalize_server,
)
from herdgate.contexts import Context, ContextFileError, Contexts, default_path, load, too_open
from herdgate.kubeconfigs import KubeconfigError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

SERVER_ENV = "HERDGATE_URL"
TOKEN_ENV = "HERDGATE_API_TOKEN"
CONTEXT_ENV = "HERDGATE_CONTEXT"
CA_ENV = "HERDGATE_CA"
"""Not ``HERDGATE_SERVER``/``HERDGATE_TOKEN``: those are ``herdgate agent``'s settings."""

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


class UsageError(Exception):
    """The command was asked for wrongly (exit 2)."""


class Failure(Exception):
    """The command could not do what it was asked (exit 1); ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def connection_options() -> argparse.ArgumentParser:
    """The options of every command that talks to a gateway (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    group = p.add_argument_group("connection (default: the current context)")
    group.add_argument("--context", help=f"use this saved context (or {CONTEXT_ENV})")
    group.add_argument("--server", help=f"gateway URL, instead of the context's (or {SERVER_ENV})")
    group.add_argument("--token", help=f"API token, instead of the context's (or {TOKEN_ENV})")
    group.add_argument("--ca", metavar="FILE", help=f"CA file that verifies the gateway ({CA_ENV})")
    group.add_argument(
        "--insecure", action="store_true", help="do not verify the gateway's certificate at all"
    )
    return p


def add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        choices=output.FORMATS,
        help="json, yaml or name instead of a table",
    )


def leaf(
    subparsers: Subparsers,
    name: str,
    help_text: str,
    run: Callable[[Session, argparse.Namespace], int],
    outputs: bool = True,
    check: Callable[[argparse.Namespace], None] | None = None,
) -> argparse.ArgumentParser:
    """A command that talks to a gateway: its parser, with the connection options (and
    ``-o`` when ``outputs``), running ``run`` through ``connected``; ``check`` looks at
    the arguments first, before any context or gateway (a ``UsageError`` ends it)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text[0].upper() + help_text[1:] + ".",
        parents=[connection_options()],
    )
    if outputs:
        add_output(p)
    p.set_defaults(run=connected(run, check))
    return p


def group(subparsers: Subparsers, name: str, help_text: str) -> Subparsers:
    p = subparsers.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."
    )
    inner: Subparsers = p.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND")
    return inner


# -- the session -------------------------------------------------------------------------


@dataclass
class Session:
    """A command's gateway: the client, the context it came from (if any) and the file."""

    client: Client
    context: Context | None
    contexts: Contexts
    path: Path
    stdout: TextIO
    stderr: TextIO

    def out(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A line for the person (not the output): on stderr."""
        self.stderr.write(text.rstrip("\n") + "\n")
        self.stderr.flush()


def read_ca_file(path: str) -> str:
    try:
        text = Path(path).expanduser().read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the CA file {path}: {exc}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise UsageError(f"{path} holds no PEM certificate")
    return text


def load_contexts(path: Path, stderr: TextIO) -> Contexts:
    contexts = load(path)
    if contexts.contexts and too_open(path):
        stderr.write(f"warning: {path} can be read by others; run: chmod 600 {path}\n")
    return contexts


def resolve(
    args: argparse.Namespace,
    contexts: Contexts,
    environ: Mapping[str, str],
    require_token: bool = True,
) -> tuple[Client, Context | None]:
    """The gateway, token and trust a command uses: flags, then the environment, then the
    context (``--context``, ``HERDGATE_CONTEXT``, else the current one). A context's
    token and CA are used only for that context's own server."""
    named = getattr(args, "context", None) or environ.get(CONTEXT_ENV, "")
    name = named or contexts.current
    context = contexts.get(name) if name else None
    if named and context is None:
        known = ", ".join(sorted(contexts.contexts)) or "none"
        raise UsageError(f"no context named {named!r} (known: {known})")
    server_text = getattr(args, "server", None) or environ.get(SERVER_ENV, "")
    if server_text:
        try:
            server = normalize_server(server_text)
        except BadServerUrl as exc:
            raise UsageError(str(exc)) from None
        if context is not None and context.server != server:
            if named:
                raise UsageError(
                    f"context {named!r} is for {context.server}, not {server}; "
                    "give one or the other"
                )
            same = contexts.for_server(server)
            context = same[0] if len(same) == 1 else None
    elif context is None:
        raise Failure(
            "no gateway chosen: not logged in",
            "log in first: herdgate login https://GATEWAY:8443 (or give --server and --token)",
        )
    else:
        server = context.server
    token = getattr(args, "token", None) or environ.get(TOKEN_ENV, "")
    if not token and context is not None:
        token = context.token
    if require_token and not token:
        raise Failure(f"not logged in to {server}", f"run: herdgate login {server}")
    ca_file = getattr(args, "ca", None) or environ.get(CA_ENV, "")
    ca_pem = read_ca_file(ca_file) if ca_file else (context.ca_pem if context else "")
    insecure = bool(getattr(args, "insecure", False)) or (context is not None and context.insecure)
    return Client(server, Trust(ca_pem, insecure), token), context


def connected(
    run: Callable[[Session, argparse.Namespace], int],
    check: Callable[[argparse.Namespace], None] | None = None,
) -> Callable[[argparse.Namespace], int]:
    """``run`` with a session, every failure turned into a message and an exit code."""

    def wrapper(args: argparse.Namespace) -> int:
        def body() -> int:
            if check is not None:
                check(args)
            path = default_path()
            contexts = load_contexts(path, sys.stderr)
            client, context = resolve(args, contexts, os.environ)
            session = Session(client, context, contexts, path, sys.stdout, sys.stderr)
            return run(session, args)

        return guarded(body)

    return wrapper


def guarded(body: Callable[[], int], server: str = "") -> int:
    """Run a command; its failures become one ``error:`` line (and a hint) on stderr."""
    try:
        return body()
    except UsageError as exc:
        print_error(str(exc))
        return EXIT_USAGE
    except Failure as exc:
        print_error(exc.message, exc.hint)
        return EXIT_FAILED
    except ClientError as exc:
        message, hint = explain(exc)
        print_error(message, hint)
        return EXIT_FAILED
    except (ContextFileError, KubeconfigError) as exc:
        print_error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    except BrokenPipeError:
        # the reader went away (`| head`): nothing more to say, and nowhere to say it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def print_error(message: str, hint: str = "") -> None:
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"  {hint}\n")
    sys.stderr.flush()


def forbidden_hint(message: str) -> str:
    if "administrator" in message:
        return (
            "you need to be a herdgate administrator for this: "
            "log in as one (herdgate login), or ask one to do it"
        )
    if "owner" in message:
        return (
            "you need the owner's role for this (cluster-owner, or project-owner for a "
            "project's bindings): ask an administrator or an owner to grant it"
        )
    return "you need more rights for this: ask a herdgate administrator"


def explain(exc: ClientError) -> tuple[str, str]:
    """What went wrong and what to do about it, for any ``ClientError``; every part the
    gateway chose is escaped."""
    if isinstance(exc, ApiError):
        message = output.escape(exc.message)
        if exc.status == 401:
            return (
                f"the gateway did not accept your credentials: {message}",
                "log in again: herdgate login",
            )
        if exc.status == 403:
            return f"forbidden: {message}", forbidden_hint(exc.message)
        if exc.status == 404:
            return f"not found: {message}", ""
        if exc.status == 429:
            return f"{message}", "wait a minute before trying again"
        if exc.status >= 500:
            return (
                f"the gateway failed: {message} (HTTP {exc.status})",
                "its log has the details; try again later",
            )
        return f"refused: {message} (HTTP {exc.status})", ""
    if isinstance(exc, Unreachable):
        server = output.escape(exc.server)
        if exc.kind == "refused":
            return (
                f"cannot connect to {server}: connection refused",
                f"is the gateway running at {server}? (start it with: herdgate gateway)",
            )
        if exc.kind == "resolve":
            return (
                f"cannot connect to {server}: {output.escape(exc.detail)}",
                "check the gateway's URL (herdgate context list shows the one in use)",
            )
        if exc.kind == "timeout":
            return (
                f"{server} did not answer: {output.escape(exc.detail)}",
                f"is the gateway running at {server}, and reachable from here?",
            )
        return (
            f"cannot talk to {server}: {output.escape(exc.detail)}",
            f"is {server} a herdgate gateway (it speaks HTTPS)?",
        )
    if isinstance(exc, Untrusted):
        server = output.escape(exc.server)
        if exc.hostname_mismatch:
            return (
                f"the certificate of {server} does not name that host: {output.escape(exc.detail)}",
                "use the URL the gateway's certificate names (its server_url setting), "
                "or set server_url to the name you use",
            )
        return (
            f"the certificate of {server} is not trusted: {output.escape(exc.detail)}",
            f"trust the gateway's CA: herdgate login {server} --ca CA_FILE "
            "(the gateway's tls/ca.crt), or --ca-checksum SHA256 (the checksum the "
            "gateway prints when it starts, also in its agent commands)",
        )
    if isinstance(exc, NoKubeconfigsEndpoint):
        return (
            f"this gateway ({output.escape(exc.server)}) has no /v3/kubeconfigs; upgrade it",
            "until then, ask for one cluster at a time: herdgate kubeconfig CLUSTER",
        )
    return output.escape(str(exc)), ""


# -- prompts and progress ----------------------------------------------------------------


def tty_input(prompt: str) -> str | None:
    """A line typed on the terminal, or None when there is none."""
    try:
        with open("/dev/tty", "r+") as tty:
            tty.write(prompt)
            tty.flush()
            return tty.readline().strip()
    except OSError:
        return None


def confirm(question: str, yes: bool, what: str) -> None:
    """Ask on the terminal unless ``yes``; no terminal and no ``--yes``: a usage error."""
    if yes:
        return
    answer = tty_input(f"{question} [y/N] ") if sys.stdin.isatty() else None
    if answer is None:
        raise UsageError(f"refusing to {what} without --yes (no terminal to ask on)")
    if answer.lower() not in ("y", "yes"):
        raise Failure("cancelled")


def read_secret(from_stdin: bool, prompt: str, repeat: bool = False, what: str = "password") -> str:
    """A password: one line of standard input (``--password-stdin``), or typed twice on
    the terminal without echo (``repeat``)."""
    if from_stdin:
        line = sys.stdin.readline()
        secret = line.removesuffix("\n").removesuffix("\r")
        if not secret:
            raise UsageError(f"no {what} on standard input")
        return secret
    if not sys.stdin.isatty():
        raise UsageError(
            f"no terminal to ask for the {what} on: give it on standard input with --password-stdin"
        )
    try:
        secret = getpass.getpass(prompt, stream=sys.stderr)
        if repeat and getpass.getpass("again: ", stream=sys.stderr) != secret:
            raise Failure(f"the two {what}s differ")
    except EOFError:
        raise UsageError(f"no {what} given") from None
    if not secret:
        raise UsageError(f"no {what} given")
    return secret


class Progress:
    """What a wait is doing, on stderr, once it has lasted ``delay`` seconds: one line
    rewritten in place on a terminal, else a line whenever the message changes."""

    def __init__(
        self,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
        delay: float = 1.0,
    ) -> None:
        self.stream = stream
        self.clock = clock
        self.delay = delay
        self.started = clock()
        self.tty = stream.isatty()
        self.last = ""
        self.shown = False

    def show(self, message: str) -> None:
        elapsed = self.clock() - self.started
        if elapsed < self.delay:
            return
        if self.tty:
            self.stream.write(f"\r\x1b[K{message} ({int(elapsed)}s)")
            self.shown = True
        elif message != self.last:
            self.stream.write(message + "\n")
        self.last = message
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# -- finding things by name --------------------------------------------------------------


def find_cluster(client: Client, ref: str) -> Resource:
    """A cluster by id or name."""
    clusters = client.clusters.items()
    for key in ("id", "name"):
        for cluster in clusters:
            if cluster.get(key) == ref:
                return cluster
    raise Failure(
        f"no cluster {output.escape(ref)!r} that you can see",
        "herdgate cluster list shows the clusters you hold a role on",
    )


def find_user(client: Client, ref: str) -> Resource:
    """A user by id or user name (names need an administrator; an id works for anyone)."""
    try:
        users = client.users.items()
    except ApiError as exc:
        if exc.status == 403 and ref.startswith("u-"):
            return {"id": ref, "username": ""}
        if exc.status == 403:
            raise Failure(
                "only administrators can look users up by name",
                "give the user's id (u-xxxxx) instead",
            ) from None
        raise
    for key in ("id", "username"):
        for user in users:
            if user.get(key) == ref:
                return user
    for user in users:
        if str(user.get("username", "")).casefold() == ref.casefold():
            return user
    raise Failure(f"no user {output.escape(ref)!r}", "herdgate user list shows them")


def find_role(client: Client, ref: str, context: str) -> str:
    """A role template's id, by id or name, bindable in ``context``."""
    templates = client.role_templates.items(context)
    for template in templates:
        if template.get("id") == ref:
            return ref
    for template in templates:
        if str(template.get("name", "")).casefold() == ref.casefold():
            return str(template["id"])
    ids = ", ".join(str(t.get("id")) for t in templates)
    raise Failure(f"no {context} role template {output.escape(ref)!r}", f"one of: {ids}")


def subject(args: argparse.Namespace, client: Client) -> dict[str, str]:
    """``userId`` or ``groupPrincipalId`` from ``--user``/``--group``."""
    if args.user:
        return {"userId": str(find_user(client, args.user)["id"])}
    return {"groupPrincipalId": args.group}


def user_names(client: Client) -> dict[str, str]:
    """User ids to names, when the caller may list users (administrators); else none."""
    try:
        return {str(u.get("id")): str(u.get("username", "")) for u in client.users.items()}
    except ApiError:
        return {}


def subject_text(item: Mapping[str, Any], names: Mapping[str, str]) -> str:
    user = item.get("userId")
    if user:
        name = names.get(str(user))
        return f"user {name} ({user})" if name else f"user {user}"
    return f"group {item.get('groupPrincipalId') or ''}"
