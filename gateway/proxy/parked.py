"""A long-running answer relayed by callbacks: no task waits for its next event.

A watch or ``logs -f`` lives for minutes and carries little; while a task waited on it,
each held the request's coroutine frames, its task and its context, most of what an open
watch cost (docs/benchmarks.md). Once its head is written, ``ParkedAnswer`` takes the body over:
the tunnel stream hands arriving bytes to ``_arrived`` (``TunnelStream.set_sink``), the
response parser turns them into body pieces, the front's ``ParkedSide`` writes them.
Back-pressure keeps its meaning: when the client is backed up the sink says so, the
tunnel stream holds back the credit for those bytes (the agent, and behind it the API
server, stop sending) until the front calls back that it is writable again.

It ends, once, in one of these ways (``_finish``):

- the answer is complete (the last chunk, or the API server closed a close-delimited
  body), or ``end_early`` stopped it (its identity lost access, the gateway is
  stopping): the body is ended as a complete one, and a clean upstream stream goes back
  to the pool;
- the stream failed, or the API server sent something that is not HTTP: the answer is
  cut (on HTTP/2 the stream is reset), as the task's loop did;
- the client went away (``abort``): the upstream stream is reset.

Then the request's accounting ends (``account``: the drain's count, the audit record and
metrics) and the front is told (``ParkedSide.done``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.clusters.upstream import Response, UpstreamError
from gateway.proxy.exchange import Exchange
from gateway.proxy.model import ParkedSide, Request
from gateway.telemetry.drain import Drain
from tunnel.errors import TunnelError

logger = logging.getLogger(__name__)


class ParkedAnswer:
    """The rest of one streamed answer, from ``upstream`` to ``side``."""

    __slots__ = ("_drain", "_exchange", "_finished", "_forget", "_request", "_side", "_upstream")

    def __init__(
        self,
        upstream: Response,
        side: ParkedSide,
        forget: Callable[[], None] | None,
    ) -> None:
        self._upstream = upstream
        self._side = side
        self._forget = forget
        """Unregisters the answer from those that may end it early (``sessions.hold``)."""
        self._drain: Drain | None = None
        self._exchange: Exchange | None = None
        self._request: Request | None = None
        self._finished = False

    def account(self, drain: Drain, exchange: Exchange, request: Request) -> None:
        """At the end, the request leaves ``drain`` and ``exchange`` records it (its audit
        record and metrics); at once if it has ended already."""
        self._drain, self._exchange, self._request = drain, exchange, request
        if self._finished:
            self._account()

    def _account(self) -> None:
        drain, exchange, request = self._drain, self._exchange, self._request
        self._drain = self._exchange = self._request = None
        if drain is not None:
            drain.leave()
        if exchange is not None and request is not None:
            exchange.finish(request)

    def start(self) -> None:
        """Pass on what came with the head, then take bytes as they arrive."""
        self._side.hold(self)
        upstream = self._upstream
        upstream.park()
        for piece in upstream.take_parsed():
            self._side.send_now(piece)
        if upstream.complete:
            self._finish(clean=True)
            return
        stream = upstream.stream
        stream.set_sink(self._arrived)  # what is queued is delivered now
        if not self._finished:
            stream.on_end(self._stream_ended)

    # -- callbacks -------------------------------------------------------------------

    def _arrived(self, data: bytes | bytearray) -> bool:
        if self._finished:
            return True
        upstream = self._upstream
        try:
            pieces = upstream.feed(data)
        except UpstreamError as exc:
            logger.info("upstream failed mid-response: %s", exc)
            self._finish(clean=False)
            return True
        side = self._side
        writable = True
        for piece in pieces:
            writable = side.send_now(piece)
        if upstream.complete:
            self._finish(clean=True)
            return True
        if not writable:
            side.when_writable(self._writable)
        return writable

    def _writable(self) -> None:
        if not self._finished:
            self._upstream.stream.sink_drained()

    def _stream_ended(self, error: TunnelError | None) -> None:
        if self._finished:
            return
        upstream = self._upstream
        if error is None:
            clean = upstream.feed_eof()
            if not clean:
                logger.info("upstream failed mid-response: the API server closed the stream")
            self._finish(clean=clean)
        elif upstream.ending:
            self._finish(clean=True)  # stopped by end_early: ends as a complete answer
        else:
            logger.info("upstream failed mid-response: %s", error)
            self._finish(clean=False)

    def abort(self) -> None:
        """The client went away."""
        if not self._finished:
            self._finish(clean=False, client_gone=True)

    # -- the end ---------------------------------------------------------------------

    def _finish(self, clean: bool, client_gone: bool = False) -> None:
        self._finished = True
        forget, self._forget = self._forget, None
        if forget is not None:
            forget()
        upstream = self._upstream
        side = self._side
        upstream.stream.detach()
        try:
            if upstream.complete:
                upstream.release()
            else:
                upstream.stream.reset()
            if not client_gone:
                if clean:
                    side.end_now()
                else:
                    side.cut()
        finally:
            try:
                self._account()
            except Exception:
                logger.exception("finishing a long-running answer failed")
            side.done()
