"""tunnel.redial: the agent's waits, log lines and giving up after failed dials (pure)."""

from __future__ import annotations

import logging
import random

from hypothesis import given
from hypothesis import strategies as st

from tunnel.redial import GIVE_UP_AFTER, REPEAT_LOG_S, Failure, Redial, backoff_delay

INVALID = "the gateway rejected the registration token: invalid cluster registration token"


def redial() -> Redial:
    return Redial(1.0, 30.0, rng=random.Random(7))


def test_waits_grow_with_a_floor_and_are_capped_per_kind() -> None:
    for kind, cap in ((Failure.UNREACHABLE, 30.0), (Failure.REFUSED, 300.0)):
        r = redial()
        delays = [r.failed(kind, "no", now=float(i)).delay_s for i in range(20)]
        for attempt, delay in enumerate(delays, start=1):
            ceiling = min(cap, 2.0**attempt)
            assert ceiling / 2 <= delay <= ceiling
        assert min(delays[10:]) >= cap / 2  # never back to "every 2 s"


@given(st.integers(0, 200), st.floats(0.01, 10), st.floats(1, 1000))
def test_backoff_delay_is_within_its_bounds(attempt: int, initial: float, cap: float) -> None:
    ceiling = min(cap, initial * 2 ** min(attempt, 30))
    assert ceiling / 2 <= backoff_delay(attempt, initial, cap, random.Random(0)) <= ceiling


def test_retry_after_is_kept_up_to_the_refusal_cap() -> None:
    r = redial()
    assert r.failed(Failure.REFUSED, "full", 0.0, retry_after_s=120).delay_s >= 120
    assert r.failed(Failure.REFUSED, "full", 1.0, retry_after_s=10**6).delay_s <= 300


def test_the_same_refusal_is_logged_once_then_rarely() -> None:
    r = redial()
    now = 0.0
    loud: list[str] = []
    for _ in range(200):  # about 16 hours at the 5-minute cap
        verdict = r.failed(Failure.REFUSED, "HTTP 403 Forbidden", now)
        if verdict.level >= logging.WARNING:
            loud.append(verdict.message)
        now += verdict.delay_s
    assert loud[0].startswith("HTTP 403 Forbidden; retrying in ")
    assert len(loud) <= now / REPEAT_LOG_S + 1
    assert len(loud) >= now / REPEAT_LOG_S / 2
    assert "(still, " in loud[1] and " times in " in loud[1]
    # Another reason is news at once.
    assert r.failed(Failure.REFUSED, "HTTP 404", now).level == logging.WARNING


def test_an_invalid_token_gives_up_after_a_few_answers_in_a_row() -> None:
    r = redial()
    verdicts = [r.failed(Failure.TOKEN_INVALID, INVALID, float(i)) for i in range(GIVE_UP_AFTER)]
    assert [v.give_up for v in verdicts] == [False] * (GIVE_UP_AFTER - 1) + [True]
    assert verdicts[0].level == logging.ERROR and INVALID in verdicts[0].message
    assert all(v.level == logging.DEBUG for v in verdicts[1:-1])
    assert verdicts[-1].message == f"{INVALID}; giving up"


def test_an_invalid_token_does_not_give_up_while_a_tunnel_holds_or_after_a_success() -> None:
    r = redial()
    for i in range(GIVE_UP_AFTER * 3):
        assert not r.failed(Failure.TOKEN_INVALID, INVALID, float(i), holding=True).give_up
    r = redial()
    for i in range(GIVE_UP_AFTER - 1):
        assert not r.failed(Failure.TOKEN_INVALID, INVALID, float(i)).give_up
    r.failed(Failure.UNREACHABLE, "connection refused", 10.0)  # not in a row any more
    assert not r.failed(Failure.TOKEN_INVALID, INVALID, 11.0).give_up
    r.connected()
    for i in range(GIVE_UP_AFTER - 1):
        assert not r.failed(Failure.TOKEN_INVALID, INVALID, 20.0 + i).give_up


def test_after_a_tunnel_the_same_failure_is_news_again() -> None:
    r = redial()
    assert r.failed(Failure.UNREACHABLE, "refused", 0.0).level == logging.WARNING
    assert r.failed(Failure.UNREACHABLE, "refused", 1.0).level == logging.DEBUG
    r.connected()
    assert r.failed(Failure.UNREACHABLE, "refused", 2.0).level == logging.WARNING
    r.reset()
    assert r.attempt == 0
