"""``/v3/users`` and local-provider login."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.api.common import (
    action,
    authenticated,
    bool_field,
    collection,
    directory,
    json_body,
    require_admin,
    string_field,
)
from gateway.errors import BadRequest, Forbidden, GatewayError, NotFound
from gateway.identity import hashing
from gateway.identity.directory import UsernameTaken
from gateway.store.records import USER, User, iso

MIN_PASSWORD_LENGTH = 12


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "type": "user",
        "username": user.username,
        "name": user.display_name,
        "enabled": user.enabled,
        "admin": user.admin,
        "principalIds": [user.principal_id],
        "provider": user.provider,
        "groupPrincipalIds": list(user.group_principals),
        "created": iso(user.created),
    }


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise GatewayError(
            422,
            f"password must be at least {MIN_PASSWORD_LENGTH} characters",
            reason="InvalidFormat",
        )


async def slow_hash(password: str) -> str:
    return await asyncio.to_thread(hashing.hash_password, password)


async def list_users(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    d = directory(request)
    if request.query.get("me") == "true":
        me = d.users.get(identity.user_id)
        return collection([user_view(me)] if me else [], "user")
    require_admin(identity)
    users = sorted(d.users.values(), key=lambda u: u.created)
    return collection((user_view(u) for u in users), "user")


async def create_user(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    if action(request) == "changepassword":
        return await _change_own_password(request, identity.user_id)
    require_admin(identity)
    data = await json_body(request)
    username = string_field(data, "username", required=True, max_len=128)
    if any(ch.isspace() for ch in username):
        raise GatewayError(422, "username may not contain spaces", reason="InvalidFormat")
    password = string_field(data, "password", required=True, max_len=4096)
    check_password(password)
    display_name = string_field(data, "name")
    enabled = bool_field(data, "enabled", True)
    admin = bool_field(data, "admin", False)
    d = directory(request)
    if d.user_by_name(username) is not None:
        raise _taken(username)
    password_hash = await slow_hash(password)
    now = d.clock()
    try:
        user = await d.create_local_user(
            username,
            lambda user_id: User(
                id=user_id,
                username=username,
                password_hash=password_hash,
                created=now,
                display_name=display_name,
                enabled=enabled,
                admin=admin,
                principal_ids=(f"local://{user_id}",),
            ),
        )
    except UsernameTaken:
        raise _taken(username) from None
    return web.json_response(user_view(user), status=201)


def _taken(username: str) -> GatewayError:
    return GatewayError(
        409,
        f"username {username!r} is already taken (names are compared ignoring case and "
        "Unicode width)",
        reason="NotUnique",
    )


def _user(request: web.Request) -> User:
    user = directory(request).users.get(request.match_info["id"])
    if user is None:
        raise NotFound(f"user {request.match_info['id']} not found")
    return user


async def get_user(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    user = _user(request)
    if user.id != identity.user_id:
        require_admin(identity)
    return web.json_response(user_view(user))


async def update_user(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    require_admin(identity)
    user = _user(request)
    data = await json_body(request)
    changes: dict[str, Any] = {}
    if "name" in data:
        changes["display_name"] = string_field(data, "name")
    if "enabled" in data:
        changes["enabled"] = bool_field(data, "enabled", user.enabled)
    if "admin" in data:
        changes["admin"] = bool_field(data, "admin", user.admin)
    if user.id == identity.user_id and (
        changes.get("enabled") is False or changes.get("admin") is False
    ):
        raise Forbidden("administrators cannot disable or demote themselves")
    if data.get("password"):
        password = string_field(data, "password", max_len=4096)
        check_password(password)
        changes["password_hash"] = await slow_hash(password)
    d = directory(request)
    if not await d.patch(USER, user.id, **changes):
        raise NotFound(f"user {user.id} not found")
    return web.json_response(user_view(d.users[user.id]))


async def user_action(request: web.Request) -> web.Response:
    """``POST /v3/users/<id>?action=setpassword {"newPassword"}`` (admin)."""
    identity, _ = authenticated(request)
    require_admin(identity)
    if action(request) != "setpassword":
        raise BadRequest("unknown action")
    user = _user(request)
    data = await json_body(request)
    password = string_field(data, "newPassword", required=True, max_len=4096)
    check_password(password)
    d = directory(request)
    if not await d.patch(USER, user.id, password_hash=await slow_hash(password)):
        raise NotFound(f"user {user.id} not found")
    return web.json_response(user_view(d.users[user.id]))


async def _change_own_password(request: web.Request, user_id: str) -> web.Response:
    d = directory(request)
    user = d.users.get(user_id)
    if user is None:
        raise NotFound("user not found")
    data = await json_body(request)
    current = string_field(data, "currentPassword", required=True, max_len=4096)
    new = string_field(data, "newPassword", required=True, max_len=4096)
    check_password(new)
    if not await asyncio.to_thread(hashing.verify_password, current, user.password_hash):
        raise Forbidden("current password is wrong")
    await d.patch(USER, user.id, password_hash=await slow_hash(new))
    return web.json_response({}, status=200)


async def delete_user(request: web.Request) -> web.Response:
    identity, _ = authenticated(request)
    require_admin(identity)
    user = _user(request)
    if user.id == identity.user_id:
        raise Forbidden("administrators cannot delete themselves")
    await directory(request).delete_user(user.id)
    return web.json_response(user_view(user))
