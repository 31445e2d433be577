"""The WebSocket transport's synchronous fast path works with the installed aiohttp."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tunnel.transport import SYNC_SEND_MAX_BYTES, WebSocketTransport


async def test_small_frames_go_out_synchronously_both_ways() -> None:
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        server_side = WebSocketTransport(ws)
        assert server_side.try_send_now(b"from-server")  # unmasked server frame
        msg = await ws.receive()
        received.append(msg.data)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with TestClient(TestServer(app)) as client:
        ws = await client.ws_connect("/ws")
        client_side = WebSocketTransport(ws)
        assert (await ws.receive()).data == b"from-server"
        assert client_side.try_send_now(b"from-client")  # masked client frame
        assert not client_side.try_send_now(b"x" * (SYNC_SEND_MAX_BYTES + 1))
        msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert not client_side.try_send_now(b"after close")
    assert received == [b"from-client"]
