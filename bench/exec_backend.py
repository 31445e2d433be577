"""An exec endpoint standing in for the API server's (nginx cannot upgrade to exec).

``GET /api/v1/namespaces/<ns>/pods/<pod>/exec?...`` with a WebSocket upgrade and the
``v5.channel.k8s.io`` (or ``v4``) subprotocol, as kubectl 1.30+ sends it: every stdin
message (channel 0) comes back at once on stdout (channel 1), like ``cat`` in a pod.
``GET /api/v1/namespaces/<ns>/pods/<pod>``: a running Pod (kubectl reads it before exec).
What the gateway's cluster controller reads (``bench/controller_reads.py``: ``/readyz``
and the rest, so the cluster turns active). TLS, aiohttp on uvloop. Anything else: 404.

Run: ``python -m bench.exec_backend --port P --cert F --key F`` (prints ``ready``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import uvloop
from aiohttp import WSMsgType, web

from bench.controller_reads import READS
from config.tls import server_context

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT = 0, 1


async def exec_handler(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is not WSMsgType.BINARY:
            break
        data: bytes = msg.data
        if data[:1] == bytes([STDIN]):
            await ws.send_bytes(bytes([STDOUT]) + data[1:])
    await ws.close()
    return ws


async def pod(request: web.Request) -> web.Response:
    ns, name = request.match_info["ns"], request.match_info["pod"]
    return web.json_response(
        {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Running"},
        }
    )


async def controller_read(request: web.Request) -> web.Response:
    if request.query.get("watch"):
        raise web.HTTPNotFound()
    content_type, body = READS[request.path]
    return web.Response(body=body, content_type=content_type)


async def serve(port: int, cert: str, key: str) -> None:
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}/exec", exec_handler)
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}", pod)
    for path in READS:
        app.router.add_get(path, controller_read)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_context(cert, key)).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), 1800)  # bounded, like every bench process
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.cert, args.key))


if __name__ == "__main__":
    main()
