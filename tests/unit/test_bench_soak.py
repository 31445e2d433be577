"""bench.soak's judgement: which answers are failures, which failures the restart window
excuses, and "flat after warm-up" (medians of the second and last thirds of a process's
life)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bench.soak import (
    AFTER,
    BEFORE,
    Outcome,
    Sample,
    Window,
    failures,
    flatness,
    is_failure,
    judge,
    lives,
    tally,
)


def test_what_counts_as_a_failure() -> None:
    assert not is_failure("200") and not is_failure("201") and not is_failure("ok")
    for bad in ("500", "502", "503", "404", "403", "429", "conn:ServerDisconnectedError",
                "timeout", "exit 1", "bad output"):  # fmt: skip
        assert is_failure(bad), bad


OUTCOMES = st.lists(
    st.builds(
        Outcome,
        t=st.floats(0, 600, allow_nan=False),
        kind=st.sampled_from(["get", "list", "watch", "kubectl exec"]),
        outcome=st.sampled_from(["200", "503", "502", "404", "ok", "exit 1", "conn:X", "timeout"]),
    ),
    max_size=200,
)
WINDOWS = st.lists(
    st.tuples(st.floats(0, 600, allow_nan=False), st.floats(0, 60, allow_nan=False)).map(
        lambda p: Window(p[0], p[0] + p[1])
    ),
    max_size=3,
)


@given(OUTCOMES, WINDOWS)
def test_every_failure_is_either_inside_a_window_or_reported(
    outcomes: list[Outcome], windows: list[Window]
) -> None:
    inside, outside = failures(outcomes, windows)
    assert inside + len(outside) == sum(is_failure(o.outcome) for o in outcomes)
    assert all(is_failure(o.outcome) for o in outside)
    assert not any(o.t in w for o in outside for w in windows)
    if not windows:
        assert inside == 0


@given(OUTCOMES)
def test_tally_counts_every_answer_once(outcomes: list[Outcome]) -> None:
    counts = tally(outcomes)
    assert sum(sum(c.values()) for c in counts.values()) == len(outcomes)


def test_the_window_holds_its_ends() -> None:
    window = Window(100.0, 110.0)
    assert 100.0 in window and 110.0 in window and 105 in window
    assert 99.99 not in window and 110.01 not in window and "105" not in window
    inside, outside = failures(
        [Outcome(99.0, "get", "503"), Outcome(104.0, "get", "503"), Outcome(120, "get", "200")],
        [window],
    )
    assert inside == 1 and outside == [Outcome(99.0, "get", "503")]


def series(
    values: list[tuple[int, int]], replica: str = "r0", pid: int = 1, step: float = 5.0
) -> list[Sample]:
    return [Sample(i * step, replica, pid, rss, fds) for i, (rss, fds) in enumerate(values)]


def test_a_flat_process_after_a_warm_up_shows_no_growth() -> None:
    warm_up = [(50_000 + 5_000 * i, 20 + i) for i in range(10)]
    flat = [(100_000, 30)] * 20
    result = flatness(series(warm_up + flat))
    assert result is not None
    assert result.rss_growth_kib == 0 and result.fds_growth == 0
    assert result.fds_final == 30 and result.samples == 30


def test_a_leak_shows_as_growth_from_the_second_third_to_the_last() -> None:
    leaking = series([(100_000 + 1_000 * i, 30 + i) for i in range(30)])
    result = flatness(leaking)
    assert result is not None
    # Medians of samples 10-19 and 20-29: ten samples apart.
    assert result.rss_growth_kib == 10_000 and result.fds_growth == 10


@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**5)), max_size=60))
def test_flatness_of_any_series(values: list[tuple[int, int]]) -> None:
    result = flatness(series(values))
    if result is None:
        return
    assert min(v[0] for v in values) <= result.rss_second_kib <= max(v[0] for v in values)
    assert min(v[1] for v in values) <= result.fds_last <= max(v[1] for v in values)
    assert result.samples == len(values)


def test_too_few_samples_give_no_verdict() -> None:
    assert flatness([]) is None
    assert flatness(series([(1, 1)])) is None


def test_segments_before_the_kill_and_after_the_restart() -> None:
    survivor = series([(100_000, 30)] * 12 + [(100_000, 40)] * 12, "r0", pid=10)
    killed = series([(100_000, 30)] * 12, "r1", pid=11)
    restarted = [
        Sample(62.0 + s.t, "r1", 12, s.rss_kib, s.fds)
        for s in series([(60_000, 20)] * 2 + [(80_000, 25)] * 8)
    ]
    samples = survivor + killed + restarted
    assert list(lives(samples)) == [("r0", 10), ("r1", 11), ("r1", 12)]
    judged = {(f.replica, f.pid, f.segment): f for f in judge(samples, Window(60.0, 70.0))}
    assert set(judged) == {
        ("r0", 10, BEFORE), ("r0", 10, AFTER), ("r1", 11, BEFORE), ("r1", 12, AFTER),
    }  # fmt: skip
    # The survivor's step at the kill (connections taken over) is in neither segment.
    assert judged[("r0", 10, BEFORE)].fds_growth == 0
    after = judged[("r0", 10, AFTER)]
    assert after.start == 75.0 and after.fds_growth == 0 and after.fds_second == 40
    restarted_result = judged[("r1", 12, AFTER)]
    assert restarted_result.start == 62.0 and restarted_result.fds_growth == 0
    # Without a restart: one segment, the whole life.
    assert [f.segment for f in judge(survivor, None)] == ["run"]
