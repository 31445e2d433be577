"""The front: the gateway's client connections.

The TLS listener's protocol factory and HTTP/1.1 connections (``connection``), HTTP/2
(``h2`` on the sans-I/O ``h2_protocol`` and ``hpack``), the request object both produce
(``request``), connection limits (``connlimit``) and the bridge that serves the
management API's requests with aiohttp (``bridge``). Every byte a client sends is read
and checked here before anything else sees it.

May import: ``gateway.proxy`` (the one entry it hands requests to) and the layers below
it; never ``gateway.api`` or ``gateway.operations``. ``h1_protocol``, ``h2_protocol``,
``hpack`` and ``hpack_tables`` are sans-I/O: they import neither asyncio nor aiohttp.
"""

from __future__ import annotations

from config import native

native.use_build(__name__, __path__)
