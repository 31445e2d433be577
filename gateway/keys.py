"""Typed keys for the aiohttp application's state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from config.schema import GatewaySettings
from gateway.audit import AuditLog
from gateway.directory import Directory
from gateway.drain import Drain
from gateway.metrics import Sampler
from gateway.providers.registry import Providers
from gateway.ratelimit import LoginLimiter
from gateway.runtime import Runtime
from gateway.sessions import Sessions
from tunnel.registry import TunnelRegistry

if TYPE_CHECKING:
    from gateway.replicas import ReplicaSet
    from gateway.tunnels import AgentLink, RegistrationGuard, StreamQuota

SETTINGS = web.AppKey("settings", GatewaySettings)
DIRECTORY = web.AppKey("directory", Directory)
RUNTIME = web.AppKey("runtime", Runtime)
TUNNELS: web.AppKey[TunnelRegistry[AgentLink]] = web.AppKey("tunnels")
STREAM_QUOTA: web.AppKey[StreamQuota] = web.AppKey("stream_quota")
PROVIDERS = web.AppKey("providers", Providers)
LIMITER = web.AppKey("limiter", LoginLimiter)
REPLICAS: web.AppKey[ReplicaSet] = web.AppKey("replicas")
REGISTRATION_GUARD: web.AppKey[RegistrationGuard] = web.AppKey("registration_guard")
AUDIT = web.AppKey("audit", AuditLog)
DRAIN = web.AppKey("drain", Drain)
SESSIONS = web.AppKey("sessions", Sessions)
"""Streamed answers and sessions by identity, ended when it loses access."""
SAMPLER = web.AppKey("sampler", Sampler)
READY = web.AppKey("ready", list[bool])
"""``[True]`` once the listeners are up; ``[False]`` again when the gateway stops."""
