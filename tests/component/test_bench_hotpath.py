"""bench.hotpath still drives the real proxy path (a few requests, no figures checked)."""

from __future__ import annotations

import pytest

from bench import hotpath


async def test_the_in_process_hot_path_answers_every_request(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await hotpath.run(requests=40, connections=4, profile=False)
    out = capsys.readouterr().out
    assert out.startswith("40 requests over 4 connections:")
