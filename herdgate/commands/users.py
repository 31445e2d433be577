"""``herdgate user`` and ``herdgate token``."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from herdgate import output
from herdgate.commands.common import (
    EXIT_OK,
    Session,
    UsageError,
    confirm,
    find_user,
    group,
    leaf,
    read_secret,
    user_names,
)

if TYPE_CHECKING:
    from herdgate.commands.common import Subparsers


def add_parsers(subparsers: Subparsers) -> None:
    inner = group(subparsers, "user", "manage local users (administrators)")
    leaf(inner, "list", "list the users", run_list)
    p = leaf(inner, "create", "create a local user", run_create)
    p.add_argument("username")
    p.add_argument("--admin", action="store_true", help="make the user an administrator")
    p.add_argument("--display-name", default="", help="the user's full name")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    p = leaf(inner, "delete", "delete a user and revoke their tokens", run_delete)
    p.add_argument("user", help="user name or id")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p = leaf(
        inner,
        "set-password",
        "set a user's password (administrators), or without USER change your own",
        run_set_password,
        outputs=False,
    )
    p.add_argument("user", nargs="?", help="user name or id (default: yourself)")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the new password (for your own: the current one, then the new one, "
        "a line each) from standard input",
    )

    inner = group(subparsers, "token", "list or revoke API and login tokens")
    p = leaf(inner, "list", "list your tokens (administrators: everyone's)", run_token_list)
    p.add_argument("--user", default="", help="only this user's (name or id)")
    p = leaf(inner, "delete", "revoke tokens", run_token_delete, check=check_token_delete)
    p.add_argument("token_ids", nargs="*", metavar="ID", help="token ids (token-xxxxx)")
    p.add_argument("--user", default="", help="every token of this user (name or id)")


def user_columns(now: float) -> list[output.Column]:
    return [
        output.field("username"),
        output.field("id"),
        output.field("name", "DISPLAY-NAME"),
        output.Column("ADMIN", lambda u: "yes" if u.get("admin") else ""),
        output.Column("ENABLED", lambda u: "yes" if u.get("enabled") else "no"),
        output.field("provider"),
        output.Column("AGE", lambda u: output.age(u.get("created"), now)),
    ]


def run_list(session: Session, args: argparse.Namespace) -> int:
    users = session.client.users.items()
    session.out(
        output.render(
            users, user_columns(time.time()), args.output, "user", lambda u: str(u.get("username"))
        )
    )
    return EXIT_OK


def run_create(session: Session, args: argparse.Namespace) -> int:
    password = read_secret(
        args.password_stdin, f"password for {args.username} (12 characters or more): ", repeat=True
    )
    user = session.client.create_user(args.username, password, args.admin, args.display_name)
    name = str(user.get("username"))
    role = "administrator " if user.get("admin") else "user "
    message = f"{role}{output.escape(name)} created ({user.get('id')})\n"
    session.out(output.outcome(user, args.output, "user", message, lambda u: name))
    return EXIT_OK


def run_delete(session: Session, args: argparse.Namespace) -> int:
    user = find_user(session.client, args.user)
    name = output.escape(str(user.get("username") or user.get("id")))
    confirm(
        f"Delete user {name} ({user.get('id')})? Their tokens and bindings go with them.",
        args.yes,
        "delete a user",
    )
    deleted = session.client.users.delete(str(user["id"]))
    message = f"user {name} deleted\n"
    session.out(output.outcome(deleted, args.output, "user", message, lambda u: name))
    return EXIT_OK


def run_set_password(session: Session, args: argparse.Namespace) -> int:
    if args.user is None:
        current = read_secret(args.password_stdin, "current password: ")
        new = read_secret(args.password_stdin, "new password: ", repeat=True)
        session.client.change_own_password(current, new)
        session.note("Your password is changed.")
        return EXIT_OK
    user = find_user(session.client, args.user)
    name = output.escape(str(user.get("username") or user.get("id")))
    password = read_secret(args.password_stdin, f"new password for {name}: ", repeat=True)
    session.client.set_password(str(user["id"]), password)
    session.note(f"The password of {name} is set.")
    return EXIT_OK


def run_token_list(session: Session, args: argparse.Namespace) -> int:
    client = session.client
    user_id = str(find_user(client, args.user)["id"]) if args.user else ""
    tokens = client.tokens.items(user_id)
    names = user_names(client)
    now = time.time()
    columns = [
        output.field("id"),
        output.Column("USER", lambda t: names.get(str(t.get("userId")), t.get("userId"))),
        output.field("kind"),
        output.field("description"),
        output.field("clusterId", "CLUSTER"),
        output.Column("EXPIRES", lambda t: output.until(t.get("expiresAt"), now)),
        output.Column("LAST-USED", lambda t: output.age(t.get("lastUsedAt"), now)),
        output.Column("CURRENT", lambda t: "*" if t.get("current") else ""),
    ]
    session.out(output.render(tokens, columns, args.output, "token", output.by_id))
    return EXIT_OK


def check_token_delete(args: argparse.Namespace) -> None:
    if bool(args.token_ids) == bool(args.user):
        raise UsageError("give token ids, or --user USER for all of a user's tokens")


def run_token_delete(session: Session, args: argparse.Namespace) -> int:
    client = session.client
    deleted = []
    if args.user:
        user_id = str(find_user(client, args.user)["id"])
        deleted = client.delete_user_tokens(user_id)
    else:
        deleted = [client.tokens.delete(token_id) for token_id in args.token_ids]
    session.out(
        output.outcomes(
            deleted,
            args.output,
            "token",
            lambda t: f"token {output.escape(output.by_id(t))} revoked\n",
        )
    )
    if not args.output and any(token.get("current") for token in deleted):
        session.note("That was the token this command used: log in again (herdgate login).")
    return EXIT_OK
