"""The agent's endless tasks (the dial loop, the credential refresh) run under
config.tasks.guard: a failure is logged and the task started again, never silently gone."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import pytest

import tunnel.agent as agent_module
from config.schema import AgentSettings
from tests.fakes.loop_clock import virtual_time
from tunnel.agent import Agent, _Tunnel
from tunnel.credentials import Upstream


def failures(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


def an_agent(monkeypatch: pytest.MonkeyPatch, upstream: Upstream) -> Agent:
    async def no_ca(settings: AgentSettings) -> None:
        return None

    async def the_upstream(settings: AgentSettings) -> Upstream:
        return upstream

    monkeypatch.setattr(agent_module, "gateway_ca", no_ca)
    monkeypatch.setattr(agent_module, "cluster_upstream", the_upstream)
    return Agent(AgentSettings(server="https://gw.test"), "crt-x:y")


async def test_a_failing_dial_loop_is_logged_and_started_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    agent = an_agent(monkeypatch, Upstream("api.test", 443, None, None))
    dials = 0
    dialling_again = asyncio.Event()

    async def dial(ca_pem: str | None, upstream: Upstream) -> str:
        nonlocal dials
        dials += 1
        if dials == 1:
            raise RuntimeError("a bug in dialling")
        dialling_again.set()
        await asyncio.sleep(3600)
        return "failed"

    monkeypatch.setattr(agent, "_dial", dial)
    stop = asyncio.Event()
    with virtual_time(), caplog.at_level(logging.ERROR, logger="tunnel.agent"):
        run = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(dialling_again.wait(), 60)
        stop.set()
        await asyncio.wait_for(run, 60)
    (record,) = failures(caplog, "tunnel dialling failed")
    assert record.exc_info is not None and "a bug in dialling" in str(record.exc_info[1])
    assert dials == 2


class FakeSession:
    """A held tunnel whose first ``send_info`` fails."""

    def __init__(self) -> None:
        self.is_usable = True
        self.sent: list[bytes] = []

    def send_info(self, message: bytes) -> None:
        if not self.sent:
            self.sent.append(b"")
            raise RuntimeError("send_info broke")
        self.sent.append(message)

    async def close(self, *args: Any) -> None:
        self.is_usable = False


class FakeWebSocket:
    async def close(self) -> None:
        pass


async def test_a_failing_credential_refresh_is_logged_and_started_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    values = (f"Bearer {n}" for n in itertools.count(1))

    async def read_again() -> str:
        return next(values)

    upstream = Upstream(
        "api.test", 443, None, None, "Bearer 0", refresh=lambda: asyncio.ensure_future(read_again())
    )
    agent = an_agent(monkeypatch, upstream)
    session = FakeSession()
    agent.tunnels["r-1"] = _Tunnel("r-1", session, FakeWebSocket(), 0.0)  # type: ignore[arg-type]
    stop = asyncio.Event()
    with virtual_time(), caplog.at_level(logging.ERROR, logger="tunnel.agent"):
        run = asyncio.create_task(agent.run(stop))
        while len(session.sent) < 2:
            await asyncio.sleep(agent.settings.credentials_refresh_s)
        stop.set()
        await asyncio.wait_for(run, 60)
    (record,) = failures(caplog, "API server credential refresh failed")
    assert record.exc_info is not None and "send_info broke" in str(record.exc_info[1])
    assert session.sent[1] == b'{"authorization": "Bearer 2"}'


@pytest.mark.parametrize("spare", [True, False])
async def test_the_spare_connection_setting_reaches_the_upstream(
    monkeypatch: pytest.MonkeyPatch, spare: bool
) -> None:
    upstream = Upstream("api.test", 443, None, None)
    agent = an_agent(monkeypatch, upstream)
    agent.settings = AgentSettings(server="https://gw.test", apiserver_spare_connection=spare)
    started = asyncio.Event()

    async def dial(ca_pem: str | None, upstream: Upstream) -> str:
        started.set()
        await asyncio.sleep(3600)
        return "failed"

    monkeypatch.setattr(agent, "_dial", dial)
    stop = asyncio.Event()
    with virtual_time():
        run = asyncio.create_task(agent.run(stop))
        await asyncio.wait_for(started.wait(), 60)
        assert upstream.spare.closed is not spare
        stop.set()
        await asyncio.wait_for(run, 60)
    assert upstream.spare.closed  # and at the stop, always
