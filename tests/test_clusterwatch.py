"""The daemon's view of its scheduler (sinagotd.clusterwatch), on its own: when it counts as
lost, one loss per outage, when to try again, what to say, what to resubmit."""

from __future__ import annotations

import pytest

from sinagot.cluster import ClusterError
from sinagotd.clusterwatch import ClusterWatch, in_flight, to_resubmit, why_unreachable


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
