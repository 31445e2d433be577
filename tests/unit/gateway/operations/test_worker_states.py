"""The supervisor's reading of its workers' notifications (pure)."""

from __future__ import annotations

from gateway.operations.workers import WorkerStates


def test_ready_once_every_worker_is_ready() -> None:
    states = WorkerStates(count=2, watchdog_s=1.0)
    states.started(101, now=0.0)
    states.started(102, now=0.0)
    assert not states.message(101, ["READY=1", "STATUS=serving"], now=1.0)
    assert states.message(102, ["READY=1"], now=1.0)  # now all are: say READY
    assert not states.message(101, ["READY=1"], now=2.0)  # once, not again


def test_ready_again_after_a_reload() -> None:
    states = WorkerStates(count=2, watchdog_s=1.0)
    for pid in (1, 2):
        states.started(pid, now=0.0)
        states.message(pid, ["READY=1"], now=0.0)
    states.reload_begins()
    assert not states.message(1, ["RELOADING=1", "MONOTONIC_USEC=5"], now=1.0)
    assert not states.message(1, ["READY=1"], now=1.0)
    assert states.message(2, ["READY=1"], now=1.1)


def test_messages_from_unknown_processes_are_ignored() -> None:
    states = WorkerStates(count=1, watchdog_s=1.0)
    states.started(7, now=0.0)
    assert not states.message(999, ["READY=1"], now=0.0)
    assert not states.message(0, ["READY=1"], now=0.0)  # no credentials came with it
    assert states.message(7, ["READY=1"], now=0.0)


def test_a_silent_worker_is_stuck_after_two_watchdog_periods() -> None:
    states = WorkerStates(count=2, watchdog_s=1.0, start_timeout_s=10.0)
    states.started(1, now=0.0)
    states.started(2, now=0.0)
    states.message(1, ["WATCHDOG=1"], now=1.5)
    states.message(2, ["WATCHDOG=1"], now=0.1)
    assert states.stuck(now=1.9) == []
    assert states.stuck(now=2.2) == [2]  # 1 pinged at 1.5
    states.gone(2)
    states.started(3, now=2.2)  # its replacement starts with a clean slate
    assert states.stuck(now=3.0) == []
    assert states.stuck(now=3.6) == [1]


def test_a_starting_worker_has_the_start_timeout_not_the_watchdog() -> None:
    """A worker still importing and opening its store (nothing said yet) is not killed
    by a short watchdog; one that never speaks is, at the start timeout; once it has
    spoken, the watchdog applies."""
    states = WorkerStates(count=1, watchdog_s=0.5, start_timeout_s=10.0)
    states.started(1, now=0.0)
    assert states.stuck(now=5.0) == []
    assert states.stuck(now=10.5) == [1]
    states.message(1, ["WATCHDOG=1"], now=10.6)
    assert states.stuck(now=11.5) == []
    assert states.stuck(now=11.7) == [1]


def test_a_replaced_worker_must_be_ready_again() -> None:
    states = WorkerStates(count=1, watchdog_s=1.0)
    states.started(1, now=0.0)
    assert states.message(1, ["READY=1"], now=0.0)
    states.gone(1)
    states.started(2, now=1.0)
    # Already announced to systemd once; a restarted worker does not repeat READY.
    assert not states.message(2, ["READY=1"], now=1.5)
    assert 2 in states.ready
