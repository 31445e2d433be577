from __future__ import annotations

import random

from tunnel.agent import backoff_delay


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt in range(12):
        ceiling = min(30.0, 1.0 * 2**attempt)
        values = [backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(200)]
        assert all(0.5 <= v <= ceiling for v in values)
        if attempt >= 3:
            assert max(values) - min(values) > ceiling / 3  # spread out, not a storm
