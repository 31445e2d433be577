"""bench.hotpath still drives the real proxy path (a few requests, no figures checked)."""

from __future__ import annotations

import pytest

from bench import hotpath


@pytest.mark.parametrize(("http2", "protocol"), [(False, "HTTP/1.1"), (True, "HTTP/2")])
async def test_the_in_process_hot_path_answers_every_request(
    capsys: pytest.CaptureFixture[str], http2: bool, protocol: str
) -> None:
    await hotpath.run(requests=40, connections=4, profile=False, http2_=http2)
    out = capsys.readouterr().out
    assert out.startswith(f"40 requests over 4 {protocol} connections:")
