"""A spare TLS connection to the API server (``tunnel.preconnect``) and the relay using it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from config.tls import client_context
from tests.component.test_tls import Collector, Pair
from tests.fakes import TestPKI
from tunnel import preconnect, tls
from tunnel.credentials import Upstream
from tunnel.protocol import Side
from tunnel.relay import relay
from tunnel.session import Session
from tunnel.streams import TunnelStream
from tunnel.transport import MemoryTransport


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(Path(tmp_path_factory.mktemp("pki")))


def _dialler(pair: Pair, count: list[int]) -> preconnect.Dial:
    async def dial(factory: Callable[[], asyncio.BaseProtocol]) -> tls.TLSTransport:
        count[0] += 1
        transport, _ = await tls.connect(
            factory, "127.0.0.1", pair.port, pair.client_context(), "127.0.0.1"
        )
        return transport

    return dial


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not in time")


async def test_one_kept_one_dialled_taken_once_and_given_up_in_time(
    pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = Pair(pki)
    await pair.start()
    spare = preconnect.Spare()
    dials = [0]
    dial = _dialler(pair, dials)
    assert spare.take() is None
    spare.refill(dial)
    spare.refill(dial)  # one is being dialled: nothing more
    await _until(lambda: spare.kept)
    spare.refill(dial)  # one is kept: nothing more
    assert dials == [1]
    transport = spare.take()
    assert transport is not None and not transport.is_closing()
    assert spare.take() is None and not spare.kept  # taken once
    transport.close()

    # Unused, it is closed after KEEP_S.
    monkeypatch.setattr(preconnect, "KEEP_S", 0.05)
    spare.refill(dial)
    await _until(lambda: spare.kept)
    server_side = [await asyncio.wait_for(pair.accepted.get(), 10) for _ in range(2)][-1]
    await _until(lambda: not spare.kept)
    assert await asyncio.wait_for(server_side.lost, 10) is None
    spare.close()
    await pair.stop()


async def _kept_one(pair: Pair, spare: preconnect.Spare) -> asyncio.Transport:
    """Have ``spare`` keep a connection; the server's side of it."""
    spare.refill(_dialler(pair, [0]))
    await _until(lambda: spare.kept)
    server_side = await asyncio.wait_for(pair.accepted.get(), 10)
    assert server_side.transport is not None
    return server_side.transport


async def test_a_kept_connection_the_server_closes_is_not_handed_out(pki: TestPKI) -> None:
    pair = Pair(pki)
    await pair.start()
    spare = preconnect.Spare()
    (await _kept_one(pair, spare)).close()  # as kube-apiserver after its ReadHeaderTimeout
    await _until(lambda: not spare.kept)
    assert spare.take() is None
    # ... nor one that says anything before a request.
    (await _kept_one(pair, spare)).write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    await _until(lambda: not spare.kept)
    spare.close()
    await pair.stop()


async def test_close_cancels_a_dial_and_closes_what_is_kept(pki: TestPKI) -> None:
    pair = Pair(pki)
    await pair.start()
    spare = preconnect.Spare()
    started = asyncio.Event()

    async def slow(factory: Callable[[], asyncio.BaseProtocol]) -> tls.TLSTransport:
        started.set()
        await asyncio.sleep(30)
        raise AssertionError("not cancelled")

    spare.refill(slow)
    await started.wait()
    spare.close()
    await asyncio.sleep(0)
    spare.refill(_dialler(pair, [0]))  # closed: no more
    await asyncio.sleep(0.05)
    assert not spare.kept
    await pair.stop()


class _Echo(Collector):
    """The API server's side: answers each request with a fixed response."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")


async def test_the_relay_takes_the_spare_and_dials_the_next_in_the_background(
    pki: TestPKI,
) -> None:
    """The first relayed stream dials (and a spare is dialled after it); the second takes
    the spare: the API server sees the second request on the spare, and one more dialled."""
    context = pki.server_context()
    accepted: list[_Echo] = []

    def factory() -> _Echo:
        accepted.append(_Echo())
        return accepted[-1]

    server = await tls.TLSServer.listen(factory, "127.0.0.1", 0, context)
    port: int = server.sockets[0].getsockname()[1]
    upstream = Upstream("127.0.0.1", port, client_context(ca_file=str(pki.ca_file)), "127.0.0.1")
    a, b = MemoryTransport.pair()
    relays: list[asyncio.Task[None]] = []

    def on_stream(stream: TunnelStream) -> None:
        relays.append(asyncio.get_running_loop().create_task(relay(stream, agent, upstream)))

    agent = Session(a, Side.CLIENT, on_stream=on_stream)
    gateway = Session(b, Side.SERVER)
    await asyncio.gather(agent.handshake(), gateway.handshake())
    agent.start()
    gateway.start()
    request = b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n"

    async def one() -> None:
        stream = gateway.open_stream()
        await stream.write(request)
        assert (await stream.read()).startswith(b"HTTP/1.1 200 OK")
        stream.reset()

    await one()
    await _until(lambda: upstream.spare.kept)
    assert len(accepted) == 2 and bytes(accepted[1].data) == b""  # the spare: nothing sent
    await one()
    assert bytes(accepted[1].data) == request  # served on the spare
    await _until(lambda: len(accepted) == 3 and upstream.spare.kept)  # the next one dialled
    upstream.spare.close()
    await gateway.close()
    await agent.close()
    await asyncio.gather(*relays, return_exceptions=True)
    server.close()
    await server.wait_closed()
