from __future__ import annotations

import logging
import random

import pytest

from config.schema import AgentSettings
from gateway.clusters.tunnels import reconnect_spread_s
from tunnel.agent import Agent, backoff_delay
from tunnel.agent import refusal as refusal_of
from tunnel.redial import Failure
from tunnel.websocket import HandshakeError


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        ceiling = min(30.0, 1.0 * 2**attempt)
        values = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(200)]
        assert all(0.5 <= v <= ceiling for v in values)
        if attempt >= 3:
            assert max(values) - min(values) > ceiling / 3  # spread out, not a storm


async def test_a_429_is_logged_once_and_its_retry_after_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    agent = Agent(AgentSettings(server="https://gw.test"), "crt-x:y")
    refusal = HandshakeError(
        429,
        "HTTP 429 cluster c-1 already has 64 agents connected",
        {"retry-after": "30", "x-herdgate-refusal": "cluster-full"},
    )
    with caplog.at_level(logging.WARNING, logger="tunnel.agent"):
        for _ in range(5):
            agent._failed(*refusal_of(refusal, "https://gw.test/v3/connect"))
    lines = [r.getMessage() for r in caplog.records if "refused this agent" in r.getMessage()]
    assert len(lines) == 1 and "already has 64 agents" in lines[0], lines
    # Back-off, and never sooner than the gateway asked.
    assert 30 <= agent._delay_before_dial(0) <= 300


def test_what_a_refusal_means() -> None:
    url = "https://gw.test/v3/connect"
    invalid = HandshakeError(
        401, "HTTP 401 invalid cluster registration token", {"x-herdgate-refusal": "token-invalid"}
    )
    assert refusal_of(invalid, url) == (
        Failure.TOKEN_INVALID,
        "the gateway rejected the registration token: invalid cluster registration token",
        0.0,
    )
    # A 401 from something else in front of the gateway is not the gateway's verdict.
    other = HandshakeError(401, "HTTP 401 Unauthorized", {})
    assert refusal_of(other, url)[0] is Failure.REFUSED
    assert refusal_of(HandshakeError(503, "HTTP 503 x", {"retry-after": "7"}), url)[2] == 7.0
    # No answer at all: the gateway may be restarting.
    cut = HandshakeError(502, "the connection closed during the handshake")
    assert refusal_of(cut, url) == (
        Failure.UNREACHABLE,
        f"cannot connect to {url}: the connection closed during the handshake",
        0.0,
    )


async def test_a_stopping_gateway_can_widen_the_reconnect_spread_once() -> None:
    agent = Agent(AgentSettings(server="https://gw.test", reconnect_spread_s=10.0), "crt-x:y")
    # The INFO a stopping gateway with 10,000 tunnels sends before its GOAWAY.
    agent._on_info(b'{"reconnectSpreadS": 40.0}')
    agent._after_drop = True
    delays = [agent._delay_before_dial(0)]
    for _ in range(300):
        agent._spread_hint_s = 40.0
        agent._after_drop = True
        delays.append(agent._delay_before_dial(0))
    assert all(0 <= d <= 40 for d in delays) and max(delays) > 30
    # Used once: the next drop without a hint spreads over the agent's own 10 s.
    agent._after_drop = True
    assert agent._spread_hint_s == 0 and agent._delay_before_dial(0) <= 10
    # Never shorter than the agent's own spread, never past the cap, junk ignored.
    agent._on_info(b'{"reconnectSpreadS": 2}')
    agent._after_drop = True
    assert agent._spread_hint_s == 2 and agent._delay_before_dial(0) <= 10
    agent._on_info(b'{"reconnectSpreadS": 1e9}')
    assert agent._spread_hint_s == 120.0
    for junk in (b'{"reconnectSpreadS": "60"}', b'{"reconnectSpreadS": true}', b"[1]", b"{"):
        agent._spread_hint_s = 0.0
        agent._on_info(junk)
        assert agent._spread_hint_s == 0.0


def test_a_stopping_gateway_asks_for_a_spread_that_fits_its_tunnels() -> None:
    assert reconnect_spread_s(1000) == 4.0  # below the agents' own 10 s: no change
    assert reconnect_spread_s(10_000) == 40.0
    assert reconnect_spread_s(10**6) == 120.0
