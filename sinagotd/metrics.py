"""What Prometheus scrapes from `/metrics`: a registry per daemon (tests run several).

Counters and histograms are fed by the loop as things happen; the board's counts and the
queue sizes are read at scrape time (`_BoardCollector`), so nothing is kept twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sinagot.board import CELL_STATUSES, Board

disable_created_metrics()  # `_created` series: noise a lab's Prometheus does not need

#: Step durations: from a few milliseconds (a trivial step) to hours (a long EEG pipeline).
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(
        self, board: Callable[[], Board | None], queues: Callable[[], tuple[int, int]]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.finished = Counter(
            "sinagot_steps_finished", "Steps that ended well", ["step"], registry=r
        )
        self.failed = Counter("sinagot_steps_failed", "Steps that failed", ["step"], registry=r)
        self.duration = Histogram(
            "sinagot_step_duration_seconds", "How long a step ran", ["step"],
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "sinagot_settled_to_submitted_seconds",
            "From a unit's files settling to its steps' submission to the cluster",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.watch_errors = Counter(
            "sinagot_watch_errors", "File-system observer errors (each starts a rescan)",
            registry=r,
        )  # fmt: skip
        self.planned = Counter(
            "sinagot_units_planned",
            "Units planned one by one (a file settled, a retry, a run that landed dirty, a "
            "`sinagot run` request); full reconciles are not counted",
            registry=r,
        )  # fmt: skip
        self.cluster_connected = Gauge(
            "sinagot_cluster_connected", "1 while the Dask client is connected", registry=r
        )
        r.register(_BoardCollector(board, queues))


class _BoardCollector(Collector):
    """The board's counts and the daemon's queues, as they are when scraped."""

    def __init__(
        self, board: Callable[[], Board | None], queues: Callable[[], tuple[int, int]]
    ) -> None:
        self.board, self.queues = board, queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queued, in_flight = self.queues()
        yield GaugeMetricFamily("sinagot_units_queued", "Units waiting for the cluster", queued)
        yield GaugeMetricFamily("sinagot_units_in_flight", "Units on the cluster", in_flight)
        board = self.board()
        if board is None:  # the first plan is under way
            return
        counts = board.counts()
        by_status = counts["by_status"]
        steps = GaugeMetricFamily(
            "sinagot_steps", "Steps of every unit, by status (the status page's cells)",
            labels=["status"],
        )  # fmt: skip
        for name in CELL_STATUSES:
            steps.add_metric([name], by_status.get(name, 0))  # type: ignore[union-attr]
        yield steps
        yield GaugeMetricFamily("sinagot_units", "Units (record x task x modality)",
                                counts["units"])  # fmt: skip
        yield GaugeMetricFamily("sinagot_records", "Records", counts["records"])
