"""Tunnel exceptions.

``ProtocolError`` and its subclasses come from the sans-I/O core: the peer broke the
framing and a GOAWAY has already been queued. ``StreamError`` ends only one stream.
``SessionClosed`` and ``NoAgentSession`` come from the asyncio layer.
"""

from __future__ import annotations

from tunnel.frames import ErrorCode


class TunnelError(Exception):
    """Base class of every tunnel error."""


class ProtocolError(TunnelError):
    """The peer violated the framing; the whole tunnel is being closed."""

    error_code: ErrorCode = ErrorCode.PROTOCOL_ERROR

    def __init__(self, message: str, error_code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if error_code is not None:
            self.error_code = error_code


class FrameTooLarge(ProtocolError):
    error_code = ErrorCode.FRAME_TOO_LARGE


class FlowControlError(ProtocolError):
    error_code = ErrorCode.FLOW_CONTROL_ERROR


class UnsupportedVersion(ProtocolError):
    error_code = ErrorCode.UNSUPPORTED_VERSION


class StreamError(TunnelError):
    """Only one stream failed."""

    def __init__(self, stream_id: int, message: str) -> None:
        super().__init__(message)
        self.stream_id = stream_id


class StreamReset(StreamError):
    """The stream was reset (by the peer, or locally)."""

    def __init__(self, stream_id: int, code: ErrorCode, reason: str = "") -> None:
        super().__init__(stream_id, f"stream {stream_id} reset: {code.name} {reason}".rstrip())
        self.code = code
        self.reason = reason


class StreamClosed(StreamError):
    """An operation on a stream that is already closed for it."""


class TooManyStreams(TunnelError):
    """The peer's concurrent-stream limit has been reached."""


class SessionClosed(TunnelError):
    """The tunnel session is closed; raised to every user of its streams."""

    def __init__(self, code: ErrorCode = ErrorCode.NO_ERROR, reason: str = "") -> None:
        super().__init__(f"tunnel closed: {code.name} {reason}".rstrip())
        self.code = code
        self.reason = reason


class NoAgentSession(TunnelError):
    """No live tunnel exists for the cluster."""

    def __init__(self, cluster_id: str) -> None:
        super().__init__(f"no agent connected for cluster {cluster_id}")
        self.cluster_id = cluster_id
