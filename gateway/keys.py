"""Typed keys for the aiohttp application's state that belong to no one package.

Every other key lives beside the type it holds (``DIRECTORY`` in
``gateway.identity.directory``, ``TUNNELS`` in ``gateway.clusters.tunnels``, ...), so
importing a key never pulls in more than its owner.
"""

from __future__ import annotations

from aiohttp import web

from config.schema import GatewaySettings
from gateway.runtime import Runtime

SETTINGS = web.AppKey("settings", GatewaySettings)
RUNTIME = web.AppKey("runtime", Runtime)
READY = web.AppKey("ready", list[bool])
"""``[True]`` once the listeners are up; ``[False]`` again when the gateway stops."""
