"""Events returned by :meth:`tunnel.protocol.TunnelProtocol.receive_data` (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from tunnel.frames import ErrorCode


class Event:
    """Base class of tunnel events."""

    __slots__ = ()


@dataclass(slots=True)
class HelloReceived(Event):
    version: int
    metadata: bytes


@dataclass(slots=True)
class InfoReceived(Event):
    metadata: bytes


@dataclass(slots=True)
class StreamOpened(Event):
    """The peer opened a stream; answer with ``accept_stream`` or ``reset_stream``."""

    stream_id: int
    target: bytes


@dataclass(slots=True)
class StreamAccepted(Event):
    """The peer accepted a stream this side opened."""

    stream_id: int


@dataclass(slots=True)
class DataReceived(Event):
    """Stream bytes. Call ``acknowledge_received_data`` once they are consumed."""

    stream_id: int
    data: bytes | bytearray


@dataclass(slots=True)
class StreamEnded(Event):
    """The peer half-closed its direction of the stream (FIN)."""

    stream_id: int


@dataclass(slots=True)
class StreamReset(Event):
    stream_id: int
    code: ErrorCode
    reason: str


@dataclass(slots=True)
class WindowUpdated(Event):
    stream_id: int
    delta: int


@dataclass(slots=True)
class PingReceived(Event):
    """The answer has already been queued."""

    opaque: bytes


@dataclass(slots=True)
class PingAcknowledged(Event):
    opaque: bytes


@dataclass(slots=True)
class ConnectionTerminated(Event):
    """The peer sent GOAWAY. Streams above ``last_stream_id`` were not processed."""

    code: ErrorCode
    last_stream_id: int
    reason: str
