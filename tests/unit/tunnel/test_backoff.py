from __future__ import annotations

import logging
import random

import pytest

from config.schema import AgentSettings
from tunnel.agent import Agent, backoff_delay
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
        {"retry-after": "30"},
    )
    with caplog.at_level(logging.WARNING, logger="tunnel.agent"):
        for _ in range(5):
            agent._refused(refusal)
            agent._failures += 1
    lines = [r.getMessage() for r in caplog.records if "refused this agent" in r.getMessage()]
    assert len(lines) == 1 and "already has 64 agents" in lines[0], lines
    # Back-off, and never sooner than the gateway asked.
    assert 29 < agent._delay_before_dial(0) <= 30
