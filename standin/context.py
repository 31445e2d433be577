"""What one request of the stand-in carries to its handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from .auth import UserInfo
from .requestinfo import RequestInfo


@dataclass
class Context:
    """The request, what its path names, who sent it, and how to check a bearer token."""

    request: web.Request
    info: RequestInfo
    user: UserInfo
    authenticate_token: Callable[[str], Awaitable[UserInfo | None]]
