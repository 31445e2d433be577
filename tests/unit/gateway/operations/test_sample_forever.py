"""The metrics sampler between scrapes: a pass over every tunnel and task only where
other workers' scrapes read this process's figures; a single process samples at its
scrape."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.identity.directory import DIRECTORY
from gateway.operations import health
from gateway.operations.sampler import SAMPLER
from gateway.telemetry import metrics


class _Sampler:
    def __init__(self) -> None:
        self.samples = 0

    def sample(self) -> None:
        self.samples += 1


class _Directory:
    def feed_lag(self) -> float:
        return 0.0


async def _samples_in(monkeypatch: pytest.MonkeyPatch, seconds: float) -> int:
    monkeypatch.setattr(health, "SAMPLE_EVERY_S", 0.01)
    monkeypatch.setattr(health, "FLUSH_S", 0.01)
    sampler = _Sampler()
    app = web.Application()
    fakes: dict[Any, Any] = {SAMPLER: sampler, DIRECTORY: _Directory()}
    for key, value in fakes.items():
        app[key] = value
    task = asyncio.ensure_future(health.sample_forever(app))
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return sampler.samples


async def test_a_single_process_does_not_sample_between_scrapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    assert await _samples_in(monkeypatch, 0.2) == 0


async def test_workers_sample_between_scrapes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    assert await _samples_in(monkeypatch, 0.2) >= 3
