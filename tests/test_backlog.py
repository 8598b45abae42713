"""The daemon's books (sinagotd.backlog): what waits, what flies, what changed meanwhile."""

from __future__ import annotations

from sinagotd.backlog import Backlog


def books() -> Backlog[str, list[str], str]:
    return Backlog()


def test_newest_input_goes_first_and_a_requeued_unit_after_the_others() -> None:
    b = books()
    b.queue("old", ["p"], priority=100)
    b.queue("new", ["p"], priority=300)
    b.queue("mid", ["p"], priority=200)
    b.requeue("failed-submit", ["p"])
    assert list(b.take(10)) == ["new", "mid", "old", "failed-submit"]
    assert not b.waiting


def test_a_unit_queued_again_keeps_its_place_and_waits_with_its_latest_plans() -> None:
    b = books()
    b.queue("a", ["first"], priority=2)
    b.queue("b", ["b"], priority=1)
    b.queue("a", ["second"], priority=0)
    assert b.take(10) == {"a": ["second"], "b": ["b"]}


def test_take_gives_at_most_room_units_and_the_rest_wait() -> None:
    b = books()
    for n in range(5):
        b.queue(f"u{n}", [], priority=n)
    assert list(b.take(2)) == ["u4", "u3"]
    assert list(b.take(10)) == ["u2", "u1", "u0"]


def test_units_held_back_by_admit_keep_their_place() -> None:
    b = books()
    for n in range(4):
        b.queue(f"u{n}", [], priority=n)
    assert list(b.take(10, admit=lambda batch: 1)) == ["u3"]
    assert list(b.take(10, admit=lambda batch: len(batch))) == ["u2", "u1", "u0"]


def test_a_dropped_unit_is_not_submitted_and_one_in_flight_is_not_taken_twice() -> None:
    b = books()
    b.queue("gone", [], priority=1)
    b.queue("flying", [], priority=2)
    b.drop("gone")
    b.fly("flying", "flight")
    assert b.take(10) == {}
    assert b.waiting == {"flying": []}, "waits until its flight lands"


def test_a_unit_changed_in_flight_is_planned_again_when_it_lands() -> None:
    b = books()
    b.fly("busy", "flight")
    assert b.split(["busy", "free"]) == ["free"]
    assert not b.idle()
    assert b.land("busy") is True, "it changed while on the cluster"
    b.fly("busy", "flight 2")
    assert b.land("busy") is False
    assert b.idle()


def test_a_lost_unit_keeps_its_run_name_until_it_flies_again() -> None:
    b = books()
    b.fly("a", "gen-a")
    b.fly("b", "gen-b")
    b.split(["a"])
    b.lose("a", "gen-a")
    assert b.lost == {"a": "gen-a"} and "a" not in b.dirty
    b.lose_all(generation=lambda flight: flight)
    assert b.lost == {"a": "gen-a", "b": "gen-b"} and not b.flights
    b.fly("a", "gen-a")
    assert b.lost == {"b": "gen-b"}
    b.land("a")
    assert not b.idle(), "a lost unit is still to be resubmitted"
    b.fly("b", "gen-b")
    b.land("b")
    assert b.idle()
