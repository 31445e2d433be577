"""tunnel.tls with none of CPython's ssl internals it uses for speed (config.compat).

``_sslobj`` hidden from everything but the ssl module itself (as if CPython had renamed
it) and no ``SSL_CTX`` read-ahead: the transport runs on the public ``SSLSocket``
methods, and the scenarios of tests/component/test_tls.py that exercise reading and
writing still hold, with asyncio's loop and uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from config.compat import ssl_internals
from tests.component import test_tls as scenarios
from tests.fakes import TestPKI
from tests.unit.config.test_compat import hide_sslobj

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[None]], None]:
    return LOOPS[request.param]  # type: ignore[return-value]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI.create(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture(autouse=True)
def internals_broken(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import ssl

    hide_sslobj(monkeypatch, ssl.SSLSocket)
    hide_sslobj(monkeypatch, ssl.SSLObject)
    monkeypatch.setattr(ssl_internals, "LAYOUT_CHECKED", ())
    checks = (
        ssl_internals.SOCKET_DIRECT,
        ssl_internals.OBJECT_DIRECT,
        ssl_internals.READ_AHEAD,
        ssl_internals.HAS_PENDING,
        ssl_internals.SESSION_REF,
    )
    for check in checks:
        check.reset()
        assert not check.holds()
    yield
    for check in checks:
        check.reset()


def test_the_transport_runs_on_the_public_methods(run, pki: TestPKI) -> None:
    async def body() -> None:
        pair = scenarios.Pair(pki)
        await pair.start()
        client, _, server = await pair.dial()
        assert not ssl_internals.enable_read_ahead(pair.client_context())
        sock = client.get_extra_info("socket")
        assert client._ssl is sock  # not the C object under it
        assert client._has_pending is None  # reads go on until OpenSSL wants more
        client.close()
        await asyncio.wait_for(server.lost, 10)
        await pair.stop()

    run(body())


def test_small_writes_arrive_in_order_both_ways(run, pki: TestPKI) -> None:
    scenarios.test_small_writes_arrive_in_order_both_ways(run, pki)


def test_back_pressure_and_everything_arrives_before_the_close(run, pki: TestPKI) -> None:
    scenarios.test_back_pressure_and_everything_arrives_before_the_close(run, pki)


def test_paused_reading_and_tiny_buffers(run, pki: TestPKI) -> None:
    scenarios.test_read_ahead_held_while_paused_and_tiny_buffers(run, pki)


def test_closing_inside_the_read_that_saw_the_peers_close(run, pki: TestPKI) -> None:
    scenarios.test_closing_inside_the_read_that_saw_the_peers_close(run, pki)


def test_records_cut_anywhere_all_arrive(pki: TestPKI) -> None:
    scenarios.test_records_cut_anywhere_all_arrive_without_a_stall(pki=pki)


def test_sessions_are_resumed_through_cpythons_copies(run, pki: TestPKI) -> None:
    scenarios.test_a_dial_resumes_the_session_an_ended_connection_left(run, pki, by_reference=False)
