"""The daemon's retry bookkeeping, on its own: waits that double, a count in a row, giving up."""

from __future__ import annotations

from sinagotd.retries import Reconnects, Retries


def test_each_try_that_cannot_run_waits_twice_as_long_up_to_the_ceiling():
    retries: Retries[str] = Retries(ceiling=100.0)
    assert retries.attempt("REC-1", now=0.0, first=10.0, most=10) == 1
    assert retries.due(9.9) == [] and retries.due(10.0) == ["REC-1"]
    assert retries.attempt("REC-1", now=10.0, first=10.0, most=10) == 2
    assert retries.due(29.9) == [] and retries.due(30.0) == ["REC-1"]  # 20 s
    for n, now in ((3, 30.0), (4, 70.0), (5, 150.0)):
        assert retries.attempt("REC-1", now=now, first=10.0, most=10) == n
    assert retries.due(249.9) == [] and retries.due(250.0) == ["REC-1"]  # 160 s capped: 100


def test_the_last_try_gives_up_and_forgets():
    retries: Retries[str] = Retries()
    assert retries.attempt("REC-1", 0.0, 1.0, most=2) == 1
    assert "REC-1" in retries
    assert retries.attempt("REC-1", 5.0, 1.0, most=2) == 2  # the caller gives up now
    assert "REC-1" not in retries and retries.due(1e9) == []
    assert retries.attempt("REC-1", 10.0, 1.0, most=2) == 1  # from scratch afterwards


def test_a_cancelled_retry_keeps_its_count_and_a_forgotten_one_does_not():
    retries: Retries[str] = Retries()
    retries.attempt("REC-1", 0.0, 1.0, most=5)
    retries.cancel("REC-1")  # planned again anyway: no timer, same count
    assert retries.due(1e9) == []
    assert retries.attempt("REC-1", 1.0, 1.0, most=5) == 2
    retries.forget("REC-1")  # its files changed: the next failure is a first one
    assert retries.attempt("REC-1", 2.0, 1.0, most=5) == 1
    assert retries.due(2.9) == [] and retries.due(3.0) == ["REC-1"]  # 1 s again


def test_keys_are_independent():
    retries: Retries[str] = Retries()
    retries.attempt("REC-1", 0.0, 4.0, most=5)
    retries.attempt("REC-2", 1.0, 2.0, most=5)
    assert sorted(retries.due(3.0)) == ["REC-2"]
    assert sorted(retries.due(4.0)) == ["REC-1", "REC-2"]


def test_a_refused_scheduler_is_tried_again_every_second_however_long_it_is_down():
    """A wait that doubled (2, 4, ... 60 s) found a scheduler back 15 s after the loss
    15 s later (issue 14's soak). A refused try is cheap: the next comes 1 s later."""
    reconnects = Reconnects()
    waits = [reconnects.failed(float(n), 0.001, "connection refused")[0] for n in range(100)]
    assert waits == [1.0] * 100


def test_a_try_that_waits_for_an_answer_is_not_repeated_at_once():
    """A scheduler that does not answer blocks each try for its timeout: tries then take at
    most a fifth of the daemon's time, up to the ceiling."""
    reconnects = Reconnects(ceiling=60.0)
    assert reconnects.failed(0.0, 5.0, "no answer within 5 s")[0] == 20.0
    assert reconnects.failed(25.0, 30.0, "no answer within 30 s")[0] == 60.0


def test_unreachable_is_said_once_then_on_a_new_error_or_once_a_minute():
    reconnects = Reconnects(quiet=60.0)
    said = [reconnects.failed(float(n), 0.0, "refused")[1] for n in range(121)]
    assert [n for n, yes in enumerate(said) if yes] == [0, 60, 120]
    assert reconnects.failed(121.0, 0.0, "unknown host")[1]  # news: said at once
    assert not reconnects.failed(122.0, 0.0, "unknown host")[1]
    assert reconnects.failures == 123
