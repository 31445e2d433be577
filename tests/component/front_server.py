"""aiohttp's ``TestServer`` with the gateway's front on the socket, as in the gateway.

Every connection is the front's (``gateway.front.connection``): cluster requests go to
the proxy, an agent's ``/v3/connect`` to the agents' endpoint, the rest to the
application through the bridge. Plain HTTP on loopback (the gateway adds TLS).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.front.connection import Front


class FrontServer(TestServer):
    _listener: asyncio.Server | None = None

    async def start_server(
        self, loop: asyncio.AbstractEventLoop | None = None, **kwargs: Any
    ) -> None:
        if self.runner:
            return
        self.runner = await self._make_runner(handler_cancellation=True, **kwargs)
        await self.runner.setup()
        assert self.runner.server is not None
        front = Front(self.app, self.runner.server)
        self._listener = await asyncio.get_running_loop().create_server(front, self.host, 0)
        self.port = self._listener.sockets[0].getsockname()[1]
        self.scheme = "http"
        self._root = URL(f"http://{self.host}:{self.port}")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await super().close()
