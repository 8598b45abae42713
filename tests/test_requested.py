"""`sinagot run` requests as the daemon's loop decides them (sinagotd.requested), on a real
workspace and without a daemon: what a request may name, what its reply says, and what
waits for a busy unit to land."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinagot.engine import Engine
from sinagot.layout import Scope, Unit
from sinagot.requests import Handoff, Peer, RunRequest
from sinagotd.requested import Asked, check, hand_over, refusal_key, refused_reply, who

ALICE, BOB = Peer(pid=100, uid=1000, gid=1000), Peer(pid=200, uid=1001, gid=1001)
DAY1, DAY2, DAY3 = (Unit(f"REC-2020060{n}") for n in (1, 2, 3))


@pytest.fixture
def harbor_ws(harbor: Path) -> Iterator[Engine]:
    with Engine(harbor, verbose=False) as ws:
        yield ws


@pytest.fixture
def eeg_ws(eeg: Path) -> Iterator[Engine]:
    with Engine(eeg, verbose=False) as ws:
        yield ws


def test_a_request_for_everything_names_every_record_in_the_whole_workspace(harbor_ws):
    assert check(harbor_ws, RunRequest()) == (Scope(), None)
    scope, ids = check(harbor_ws, RunRequest(records=["REC-20200602"], step="mean"))
    assert ids == ["REC-20200602"]
    assert harbor_ws.units(scope, ids) == [DAY2]


def test_a_task_or_modality_narrows_the_scope(eeg_ws):
    scope, _ = check(eeg_ws, RunRequest(task="HDC", modality="behavior"))
    assert scope == Scope("HDC", "behavior")


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (RunRequest(step="cuont"), "no step 'cuont' here; steps: count, mean"),
        (RunRequest(task="RS"), "RS"),  # harbor has no tasks
        (RunRequest(records=["../etc"]), "../etc"),
    ],
)
def test_what_does_not_exist_here_is_refused_naming_it(harbor_ws, request_, says):
    with pytest.raises(ValueError) as refused:
        check(harbor_ws, request_)
    assert says in str(refused.value)
    assert refused_reply(str(refused.value)) == {"ok": False, "error": str(refused.value)}


def asked(ws: Engine, request: RunRequest, flights: dict[Unit, str]) -> Asked:
    """What the loop does with a request while `flights` (unit -> generation) are on the
    cluster: plan the others, as asked."""
    scope, ids = check(ws, request)
    units = ws.units(scope, ids)
    free = [u for u in units if u not in flights]
    busy = [u for u in units if u in flights]
    plans = ws.plan(free, force=request.force, only=request.step, stale_only=True)
    return Asked(request, units, plans, busy, {u: flights[u] for u in busy})


def test_the_reply_counts_units_steps_and_busy_ones_and_names_them_only_when_waited_for(
    harbor_ws,
):
    plain = asked(harbor_ws, RunRequest(), {DAY3: "gen-3"})
    assert plain.reply() == {"ok": True, "units": 3, "steps": 4, "busy": 1}
    waited = asked(harbor_ws, RunRequest(wait=True), {DAY3: "gen-3"})
    assert sorted(waited.reply()["queued_steps"]) == [
        ["REC-20200601", None, None, "count"],
        ["REC-20200601", None, None, "mean"],
        ["REC-20200602", None, None, "count"],
        ["REC-20200602", None, None, "mean"],
    ]
    assert waited.reply()["busy_units"] == [["REC-20200603", None, None, "gen-3"]]


def test_the_event_says_what_was_asked_and_by_whom(harbor_ws):
    one = asked(harbor_ws, RunRequest(step="mean", force=True), {})
    assert {**one.fields(), **who(ALICE)} == {
        "units": 3, "steps": 3, "busy": 0, "force": True, "step": "mean", "wait": False,
        "peer_pid": 100, "peer_uid": 1000,
    }  # fmt: skip


def test_a_record_named_twice_counts_twice_and_is_followed_once(harbor_ws):
    twice = RunRequest(records=["REC-20200601", "REC-20200601"], wait=True)
    result = asked(harbor_ws, twice, {DAY1: "gen-1"})
    assert result.reply()["busy"] == 2 and result.reply()["busy_units"] == [
        ["REC-20200601", None, None, "gen-1"]
    ]


@pytest.mark.parametrize(
    ("request_", "later"),
    [
        (RunRequest(), {}),  # landing plans a changed unit anyway
        (RunRequest(force=True), {DAY1: (True, None), DAY3: (True, None)}),
        (RunRequest(step="mean"), {DAY1: (False, "mean"), DAY3: (False, "mean")}),
    ],
)
def test_busy_units_are_planned_again_as_asked_only_when_asked_more_than_a_plan(
    harbor_ws, request_, later
):
    assert asked(harbor_ws, request_, {DAY1: "gen-1", DAY3: "gen-3"}).later() == later


def test_one_users_repeated_mistake_is_throttled_apart_from_anothers():
    assert refusal_key(ALICE, "bad") == refusal_key(ALICE, "bad")
    assert refusal_key(ALICE, "bad") != refusal_key(BOB, "bad")
    assert refusal_key(ALICE, "bad") != refusal_key(ALICE, "worse")


def test_a_request_handed_over_gets_the_loops_answer():
    loop: queue.Queue[Handoff] = queue.Queue()

    def answer() -> None:
        handoff = loop.get(timeout=10)
        assert handoff.take()
        handoff.answer({"ok": True, "units": len(handoff.request.records or [])})

    thread = threading.Thread(target=answer)
    thread.start()
    reply = hand_over(loop.put, RunRequest(records=["REC-20200601"]), ALICE, timeout=10)
    thread.join()
    assert reply == {"ok": True, "units": 1}


def test_a_request_the_loop_does_not_take_in_time_is_refused_and_can_no_longer_be_taken():
    loop: queue.Queue[Handoff] = queue.Queue()
    reply = hand_over(loop.put, RunRequest(), ALICE, timeout=0.05)
    assert reply["ok"] is False and "nothing was queued" in reply["error"]
    assert not loop.get_nowait().take()  # the loop, late, does not run it
