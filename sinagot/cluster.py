"""Connecting to Dask: a scheduler started elsewhere, or an embedded LocalCluster.

distributed is imported here only, when a Dask run is asked for, so that the library, the
CLI's status and the workers' imports stay light.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import DaskSettings

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

ENV_ADDRESS = "SINAGOT_DASK_ADDRESS"


def resolve_address(flag: str | None, settings: DaskSettings) -> str | None:
    """The scheduler to use: the flag, then $SINAGOT_DASK_ADDRESS, then [dask] address."""
    return flag or os.environ.get(ENV_ADDRESS) or settings.address or None


@dataclass
class Connection:
    """A client, and the cluster it owns when the cluster is embedded."""

    client: Client
    cluster: LocalCluster | None
    _address: str | None = None

    @property
    def scheduler(self) -> str:
        if self.cluster is not None:
            return "embedded"
        scheduler = self.client.scheduler  # None once the client is closed
        return scheduler.address if scheduler is not None else str(self._address)

    @property
    def dashboard(self) -> str | None:
        try:
            return self.client.dashboard_link
        except (AttributeError, KeyError):
            return None

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def connect(address: str | None, settings: DaskSettings, timeout: float = 10) -> Connection:
    """A client to `address`, or to a new embedded cluster of worker processes."""
    from distributed import Client, LocalCluster

    if address:
        return Connection(Client(address, timeout=timeout, set_as_default=False), None, address)
    with _workers_ignore_ctrl_c():
        cluster = LocalCluster(
            n_workers=settings.n_workers,
            threads_per_worker=settings.threads_per_worker,
            processes=True,
            dashboard_address=settings.dashboard_address,
            silence_logs=logging.WARNING,
        )
    return Connection(Client(cluster, set_as_default=False), cluster)


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Ctrl-C on a terminal signals the whole process group: the embedded workers (which
    inherit an ignored SIGINT) leave stopping to this process, which lets their running
    steps finish instead of dying with tracebacks."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
