"""Typed keys for the aiohttp application's state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from config.schema import GatewaySettings
from gateway.identity.directory import Directory
from gateway.identity.providers.registry import Providers
from gateway.identity.ratelimit import LoginLimiter
from gateway.operations.runtime import Runtime
from gateway.proxy.sessions import Sessions
from gateway.telemetry.audit import AuditLog
from gateway.telemetry.drain import Drain
from gateway.telemetry.metrics import Sampler
from tunnel.registry import TunnelRegistry

if TYPE_CHECKING:
    from gateway.clusters.replicas import ReplicaSet
    from gateway.clusters.tunnels import AgentLink, RegistrationGuard, StreamQuota

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
