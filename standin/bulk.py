"""A very large LIST on demand, for tests of streaming and bounded memory.

With ``--bulk-list-bytes N``, listing configmaps in namespace ``herdgate-bulk`` answers a
ConfigMapList of about N bytes, generated and written piece by piece (a real API server
streams big LISTs the same way: the body is never one buffer).
"""

from __future__ import annotations

import json

from aiohttp import web

NAMESPACE = "herdgate-bulk"
ITEM_DATA_BYTES = 64 * 1024


def wants_bulk(namespace: str, resource: str, verb: str, size: int) -> bool:
    return size > 0 and namespace == NAMESPACE and resource == "configmaps" and verb == "list"


def _item(index: int) -> bytes:
    item = {
        "metadata": {
            "name": f"bulk-{index:06d}",
            "namespace": NAMESPACE,
            "uid": f"00000000-0000-0000-0000-{index:012d}",
            "resourceVersion": "1",
        },
        "data": {"blob": "b" * ITEM_DATA_BYTES},
    }
    return json.dumps(item, separators=(",", ":")).encode()


async def serve(request: web.Request, size: int) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(
        b'{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":['
    )
    count = max(1, size // (ITEM_DATA_BYTES + 200))
    batch: list[bytes] = []
    for index in range(count):
        batch.append(_item(index))
        if len(batch) == 16 or index == count - 1:
            prefix = b"," if index >= len(batch) else b""
            await resp.write(prefix + b",".join(batch))
            batch = []
    await resp.write(b"]}")
    await resp.write_eof()
    return resp
