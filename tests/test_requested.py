"""`sinagot run` requests as the daemon's loop decides them (sinagotd.requested), on a real
workspace and without a daemon: what a request may name, what its reply says, and what
waits for a busy unit to land."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from said import Said

from sinagot.engine import Engine
from sinagot.layout import Scope, Unit
from sinagot.requests import Handoff, Peer, RunRequest
from sinagotd.backlog import Backlog
from sinagotd.requested import (
    Asked,
    RunDesk,
    check,
    hand_over,
    refusal_key,
    refused_reply,
    who,
)

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


# -- RunDesk: the loop's side, on a real workspace, with the loop's queue and events --------


class Told(Said):
    """The events said; `say` is the loop's, throttled by kind and `keys` (always let
    through here: tests/test_daemon*.py see the throttle)."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    def say(self, event: str, emit: Callable[..., None], key: str = "", **fields: object) -> None:
        self.keys.append(key)
        emit(event, **fields)


class Desk:
    """A desk over real books, with a loop that records what it was asked to queue."""

    def __init__(self, ws: Engine) -> None:
        self.said = Told()
        self.books: Backlog = Backlog()
        self.messages: queue.Queue = queue.Queue()
        self.queued: list[tuple[list, list]] = []
        self.fills = 0
        self.later: dict = {}
        self.desk = RunDesk(
            self.books, SimpleNamespace(later=self.later), self.said,  # type: ignore[arg-type]
            engine=lambda: ws, put=self.messages.put, say=self.said.say,
            queue=self.queue, fill=self.fill,
        )  # fmt: skip

    def queue(self, plans: list, replanned: list) -> int:
        self.queued.append((plans, list(replanned)))
        return len({p.unit for p in plans})

    def fill(self) -> None:
        self.fills += 1

    def ask(self, request: RunRequest, peer: Peer = ALICE) -> dict[str, object]:
        """A request as a server thread hands it over, taken by the loop."""
        handoff = Handoff(request, peer)
        self.desk.take(handoff)
        return handoff.wait(0)


def test_a_request_is_planned_queued_submitted_and_said_with_who_asked(harbor_ws):
    desk = Desk(harbor_ws)
    desk.books.fly(DAY3, SimpleNamespace(generation="gen-3"))
    reply = desk.ask(RunRequest(step="mean", force=True, wait=True))
    assert reply["ok"] and reply["busy_units"] == [["REC-20200603", None, None, "gen-3"]]
    assert sorted(reply["queued_steps"]) == [
        ["REC-20200601", None, None, "mean"], ["REC-20200602", None, None, "mean"],
    ]  # fmt: skip
    assert desk.said.lines == [("info", "run.requested", {
        "units": 3, "steps": 2, "busy": 1, "force": True, "step": "mean", "wait": True,
        "peer_pid": 100, "peer_uid": 1000})]  # fmt: skip
    [(plans, replanned)] = desk.queued
    assert set(replanned) == {DAY1, DAY2} and len(plans) == 2 and desk.fills == 1
    assert desk.later == {DAY3: (True, "mean")}  # forced again when it lands
    assert DAY3 in desk.books.dirty  # planned again when it lands


def test_a_request_naming_what_does_not_exist_is_refused_said_and_nothing_queued(harbor_ws):
    desk = Desk(harbor_ws)
    reply = desk.ask(RunRequest(step="cuont"), BOB)
    error = "no step 'cuont' here; steps: count, mean"
    assert reply == {"ok": False, "error": error}
    assert desk.said.lines == [("warning", "run.refused", {
        "error": error, "peer_pid": 200, "peer_uid": 1001})]  # fmt: skip
    assert desk.said.keys == [refusal_key(BOB, error)]  # BOB's flood is BOB's
    assert desk.queued == [] and desk.fills == 0


def test_a_request_the_server_refused_is_said_by_the_loop_not_its_thread(harbor_ws):
    desk = Desk(harbor_ws)
    desk.desk.on_refused(ALICE, "request: not JSON")
    assert desk.said.lines == []  # the server's thread only puts it on the loop's queue
    refused = desk.messages.get_nowait()
    desk.desk.refused(refused.peer, refused.error)
    assert desk.said.lines[0][:2] == ("warning", "run.refused")
    assert desk.said.lines[0][2]["error"] == "request: not JSON"


def test_a_request_the_loop_fails_on_is_still_answered_and_the_failure_goes_to_the_loop(
    harbor_ws,
):
    desk = Desk(harbor_ws)

    def broken() -> None:
        raise OSError("disk gone")

    desk.desk.fill = broken
    handoff = Handoff(RunRequest(), ALICE)
    with pytest.raises(OSError):  # the loop says `daemon.error`, and goes on
        desk.desk.take(handoff)
    assert handoff.wait(0) == {"ok": False, "error": "the daemon failed on this request"}


def test_a_server_thread_hands_the_request_over_and_gets_the_loops_reply(harbor_ws):
    desk = Desk(harbor_ws)
    replies: list[dict[str, object]] = []
    asker = threading.Thread(
        target=lambda: replies.append(desk.desk.on_request(RunRequest(), ALICE))
    )
    asker.start()
    desk.desk.take(desk.messages.get(timeout=10))  # the loop, between two messages
    asker.join(10)
    assert replies == [{"ok": True, "units": 3, "steps": 6, "busy": 0}]


def test_a_request_whose_asker_stopped_waiting_is_not_run(harbor_ws):
    desk = Desk(harbor_ws)
    handoff = Handoff(RunRequest(), ALICE)
    assert "nothing was queued" in handoff.wait(0)["error"]  # the asker was told so
    desk.desk.take(handoff)
    assert desk.said.lines == [] and desk.queued == [] and desk.fills == 0
