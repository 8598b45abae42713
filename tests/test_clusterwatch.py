"""The daemon's view of its scheduler (sinagotd.clusterwatch), on its own: when it counts as
lost, one loss per outage, when to try again, what to say, what to resubmit; and the link
acting on it (`ClusterLink`) with a stand-in client, so that each event it says and each
unit it resubmits is seen without a cluster (tests/faults/ loses a real one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from said import Said

from sinagot.cluster import ClusterError
from sinagotd.backlog import Backlog
from sinagotd.clusterwatch import (
    ClusterLink,
    ClusterWatch,
    in_flight,
    to_resubmit,
    why_unreachable,
)
from sinagotd.monitor import Monitor


def test_a_running_client_is_healthy_and_a_closed_one_is_lost_naming_its_status():
    watch = ClusterWatch()
    assert watch.healthy("running") and not watch.down
    assert watch.gone("running") is None
    assert watch.gone("connecting") is None  # reconnecting on its own: not lost yet
    assert not watch.healthy("connecting")  # but not shown as up either
    assert watch.gone("closed") == "client closed"
    assert watch.gone("closing") == "client closing"


def test_a_loss_is_said_once_per_outage_and_its_first_try_is_due_at_once():
    watch = ClusterWatch()
    assert watch.lose(10.0) is True
    assert watch.down and not watch.healthy("running")  # the old client may still say so
    assert watch.lose(11.0) is False  # a second report of the same outage: no second event
    assert not watch.due(9.9) and watch.due(10.0)


def test_a_refused_try_is_repeated_a_second_later_and_a_slow_one_four_times_its_length_later():
    watch = ClusterWatch()
    watch.lose(0.0)
    wait, say = watch.failed(0.0, 0.001, "connection refused")
    assert (wait, say) == (1.0, True)
    assert not watch.due(1.0) and watch.due(1.001)  # counted from the try's end
    wait, _ = watch.failed(1.001, 6.001, "no answer within 5 s")
    assert wait == 20.0 and not watch.due(26.0) and watch.due(26.001)
    assert watch.failures == 2


def test_an_unreachable_scheduler_is_said_at_first_on_a_new_error_and_once_a_minute():
    watch = ClusterWatch()
    watch.lose(0.0)
    said = [watch.failed(float(n), n + 0.001, "connection refused")[1] for n in range(121)]
    assert [n for n, say in enumerate(said) if say] == [0, 60, 120]
    assert watch.failed(121.0, 121.001, "no route to host")[1] is True  # a new error
    assert watch.failures == 122


def test_a_reconnect_ends_the_outage_and_the_next_loss_counts_its_tries_afresh():
    watch = ClusterWatch()
    watch.lose(0.0)
    watch.failed(0.0, 0.001, "connection refused")
    watch.reconnected()
    assert not watch.down and not watch.due(1e9) and watch.healthy("running")
    assert watch.lose(50.0) is True  # a new outage: said again
    assert watch.failures == 0
    assert watch.failed(50.0, 50.001, "connection refused") == (1.0, True)  # said at once


@pytest.mark.parametrize(
    ("status", "lost", "paused", "now"),
    [
        ("running", True, False, True),
        ("running", False, False, False),  # nothing to resubmit
        ("running", True, True, False),  # the store refuses writes: at its retry
        ("connecting", True, False, False),  # the client is not back yet
    ],
)
def test_lost_units_go_out_again_only_to_a_running_client_and_a_store_that_writes(
    status, lost, paused, now
):
    assert ClusterWatch().resubmit_now(status, lost, paused) is now


def test_nothing_is_resubmitted_while_the_scheduler_counts_as_lost():
    watch = ClusterWatch()
    watch.lose(0.0)
    assert not watch.resubmit_now("running", True, False)


def test_a_loss_concerns_each_unit_once_and_only_those_not_flying_again_are_resubmitted():
    flights = {"REC-1": object(), "REC-2": object()}
    lost = {"REC-2": "gen-b", "REC-3": "gen-c", "REC-4": "gen-d"}
    assert in_flight(flights, lost) == 4  # REC-2 lost and submitted again: counted once
    assert to_resubmit(lost, flights) == ["REC-3", "REC-4"]  # in the order they were lost


def test_a_failed_try_is_one_line_and_a_cluster_error_is_kept_as_it_is():
    named = ClusterError("cannot reach the Dask scheduler tcp://10.0.0.1:8786: refused")
    assert why_unreachable(named) == str(named)
    assert why_unreachable(OSError("Timed out\nduring the handshake")) == "OSError: Timed out"


# -- ClusterLink: the connection, its outages and the resubmission, with a stand-in client --


@dataclass
class Client:
    status: str = "running"


@dataclass
class Connection:
    scheduler: str = "tcp://10.0.0.1:8786"
    client: Client = field(default_factory=Client)


@dataclass
class Executor:
    """Gives the connections (or raises the errors) it is given, one a try; counts closes."""

    tries: list[Connection | Exception] = field(default_factory=list)
    closed: int = 0

    @property
    def connection(self) -> Connection:
        got = self.tries.pop(0)
        if isinstance(got, Exception):
            raise got
        return got

    def close(self) -> None:
        self.closed += 1


@dataclass
class Flying:
    generation: str


class Lab:
    """A link over real books and a real monitor; the loop's planning queues what `stale`
    names (those up to date are not queued), as the daemon's `replan` does."""

    def __init__(self, stale: set[str] | None = None, paused: bool = False) -> None:
        self.now = 0.0
        self.said = Said()
        self.books: Backlog = Backlog()
        self.monitor = Monitor(self.said, lambda: (0, 0))
        self.executor = Executor()
        self.stale = stale if stale is not None else set()
        self.paused = paused
        self.calls: list[object] = []
        self.link = ClusterLink(
            self.books, self.monitor, self.said, lambda: self.now,
            executor=lambda: self.executor, paused=lambda: self.paused,
            ingest=lambda: self.calls.append("ingest"), replan=self.replan,
            news=lambda: self.calls.append("news"),
        )  # fmt: skip
        self.link.connection = Connection()

    def replan(self, units: Sequence[str]) -> None:
        self.calls.append(("replan", list(units)))
        for unit in units:
            if unit in self.stale:
                self.books.queue(unit, ["plan"], 0)

    def connected(self) -> float | None:
        """What `/metrics` says of the client (`sinagot_cluster_connected`)."""
        return self.monitor.metrics.registry.get_sample_value("sinagot_cluster_connected")


def test_a_client_closed_under_the_daemon_is_one_loss_naming_the_units_it_concerns():
    lab = Lab()
    lab.books.fly("REC-1", Flying("gen-a"))
    lab.link.check(0.0)
    assert lab.link.running() and not lab.link.down and lab.connected() == 1
    lab.books.lost["REC-2"] = "gen-b"  # its submission failed: the client closed under it
    lab.link.connection.client.status = "closed"
    lab.executor.tries = [OSError("Connection refused")]  # the first try, at once, fails
    lab.link.check(0.0)
    assert lab.said.lines[0] == ("warning", "cluster.lost", {
        "scheduler": "tcp://10.0.0.1:8786", "in_flight": 2, "error": "client closed"})  # fmt: skip
    assert lab.link.down and not lab.link.running() and lab.executor.closed == 1
    lab.link.lost("CommClosedError: in <TCP (closed)>")  # the flights hear of it too
    assert lab.said.events() == ["cluster.lost", "cluster.unreachable"]  # said once
    lab.link.check(0.5)
    assert lab.connected() == 0
    assert lab.executor.closed == 1 and lab.calls == ["news"]


def test_a_refused_try_is_said_with_its_wait_and_the_next_waits_for_it():
    lab = Lab()
    lab.link.lost("client closed")
    assert lab.said.events() == ["cluster.lost"]
    lab.said.calls.clear()
    refused = ClusterError("cannot reach the Dask scheduler tcp://10.0.0.1:8786: refused")
    lab.executor.tries = [refused, Connection()]
    lab.link.check(0.0)
    assert lab.said.lines == [("warning", "cluster.unreachable", {
        "error": str(refused), "retry_in_s": 1.0, "tries": 1})]  # fmt: skip
    lab.link.check(0.5)  # not due: not tried
    assert len(lab.executor.tries) == 1 and lab.link.down and lab.connected() == 0
    lab.link.check(1.0)
    assert lab.said.events() == ["cluster.unreachable", "cluster.reconnected"]
    assert not lab.link.down


def test_a_reconnect_resubmits_what_flew_and_forgets_the_units_up_to_date_after_all():
    lab = Lab(stale={"REC-1"})
    lab.books.fly("REC-1", Flying("gen-a"))
    lab.books.fly("REC-2", Flying("gen-b"))
    lab.link.lost("client closed")
    lab.executor.tries = [Connection(scheduler="tcp://10.0.0.2:8786")]
    lab.link.check(0.0)
    assert lab.said.lines[-1] == ("info", "cluster.reconnected", {
        "scheduler": "tcp://10.0.0.2:8786", "resubmitting": 2})  # fmt: skip
    assert not lab.link.down and lab.link.running() and not lab.books.flights
    # Receipts first (what the workers finished), then a fresh plan of every unit lost.
    assert lab.calls == ["news", "news", "ingest", ("replan", ["REC-1", "REC-2"])]
    assert lab.books.lost == {"REC-1": "gen-a"}  # goes out again under its old name
    assert list(lab.books.waiting) == ["REC-1"]


def test_units_lost_while_up_go_out_again_once_the_store_takes_writes():
    lab = Lab(stale={"REC-3"}, paused=True)
    lab.books.lost["REC-3"] = "gen-c"  # its submission failed: the client closed under it
    lab.link.check(0.0)
    assert lab.calls == [] and lab.said.lines == []  # the store refuses writes: at its retry
    lab.paused = False
    lab.link.check(0.1)
    assert lab.calls == ["ingest", ("replan", ["REC-3"])]
    assert lab.books.lost == {"REC-3": "gen-c"} and "REC-3" in lab.books.waiting


def test_before_startup_connects_there_is_nothing_to_check():
    lab = Lab()
    lab.link.connection = None
    lab.link.check(0.0)
    assert not lab.link.running() and lab.said.lines == [] and lab.calls == []
