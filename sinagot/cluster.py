"""Connecting to Dask: a scheduler started elsewhere, or an embedded LocalCluster.

distributed is imported here only, when a Dask run is asked for, so that the library, the
CLI's status and the workers' imports stay light.

Closed by default: the embedded cluster (scheduler, workers, dashboard) listens on loopback
only, since whoever reaches a Dask scheduler runs code as its workers' user. A scheduler
elsewhere is reached with Dask's own security configuration (`distributed.comm.tls.*`, set
by `DASK_DISTRIBUTED__COMM__TLS__...` variables), so a `tls://` address just works.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import ENV_ADDRESS, DaskSettings
from .errors import ConfigError, SinagotError

if TYPE_CHECKING:
    from distributed import Client, LocalCluster, Security, Worker

LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT = 5.0  # seconds: a scheduler that does not answer by then is reported as such
_WILDCARDS = ("", "0.0.0.0", "::")
_COMM = re.compile(r"^in <[^>]*>: ")  # how Dask's CommClosedError starts: the sockets
_TLS_VARIABLES = (
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY"
)


class ClusterError(SinagotError):
    """The Dask scheduler cannot be reached, or the embedded cluster cannot start."""


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
        """The dashboard's link; for the embedded cluster, from the socket it listens on
        (Dask's own link names the scheduler's host, whatever the dashboard is bound to)."""
        if self.cluster is None:
            try:
                return self.client.dashboard_link
            except (AttributeError, KeyError):
                return None
        from distributed.utils import format_dashboard_link

        server = getattr(self.cluster.scheduler, "http_server", None)
        if server is None:
            return None
        host = socket.gethostname() if server.address in _WILDCARDS else server.address
        if ":" in host:
            host = f"[{host}]"
        return format_dashboard_link(host, server.port)

    def close(self) -> None:
        if self.cluster is not None:
            _stop_heartbeats(self.client)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def connect(
    address: str | None, settings: DaskSettings, timeout: float = CONNECT_TIMEOUT
) -> Connection:
    """A client to `address` (within `timeout` seconds), or to a new embedded cluster of
    worker processes. ClusterError, naming the address and the cause, when neither works."""
    if address:
        return _connect_to(address, timeout)
    return _embedded(settings)


def _connect_to(address: str, timeout: float) -> Connection:
    from distributed import Client

    security, context = _security(address)
    _probe(address, context, timeout)
    try:
        client = Client(address, timeout=timeout, security=security, set_as_default=False)
    except Exception as exc:  # whatever Dask raised: said in one line, never a traceback
        raise ClusterError(f"cannot reach the Dask scheduler {address}: {_cause(exc)}") from exc
    return Connection(client, None, address)


def _security(address: str) -> tuple[Security, ssl.SSLContext | None]:
    """Dask's security configuration, checked against the address before Dask uses it: a
    tls:// address without a client certificate fails inside Dask with a TypeError and
    leaves a client behind that takes twice the timeout to close."""
    from distributed import Security
    from distributed.comm.addressing import parse_address

    fail = f"cannot reach the Dask scheduler {address}"
    try:
        scheme = parse_address(address)[0]
        security = Security()
    except (TypeError, ValueError) as exc:  # e.g. distributed.comm.tls.min-version
        raise ClusterError(f"{fail}: Dask's TLS configuration: {_cause(exc)}") from exc
    try:
        args = security.get_connection_args("client")
    except (OSError, TypeError, ValueError) as exc:  # a certificate file missing, unreadable
        files = [security.tls_ca_file, security.tls_client_cert, security.tls_client_key]
        files = [f for f in files if f and "\n" not in f]  # not PEM text given inline
        named = ", ".join([f for f in files if not os.path.exists(f)] or files)
        raise ClusterError(f"{fail}: cannot load the TLS files {named}: {_cause(exc)}") from exc
    if scheme == "tls" and args["ssl_context"] is None:
        raise ClusterError(f"{fail}: tls:// needs a client certificate: set {_TLS_VARIABLES}")
    if scheme == "tcp" and args["require_encryption"]:
        raise ClusterError(
            f"{fail}: the Dask configuration requires encryption "
            "(distributed.comm.require-encryption): use its tls:// address"
        )
    return security, args["ssl_context"]


def _probe(address: str, context: ssl.SSLContext | None, timeout: float) -> None:
    """Wait for a tcp:// or tls:// scheduler's first word (a Dask server speaks first).
    Dask retries a refused connection until its timeout, and waits for ever on a port that
    accepts but never answers; this says at once that nothing listens there, within the
    timeout that nothing answers, and once that a certificate is not accepted."""
    from distributed.comm.addressing import parse_address, parse_host_port

    fail = f"cannot reach the Dask scheduler {address}"
    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return
        host, port = parse_host_port(location)
    except ValueError as exc:
        raise ClusterError(f"{fail}: {exc}") from None
    try:
        first = _first_byte(host, port, context if scheme == "tls" else None, timeout)
    except ConnectionRefusedError:
        raise ClusterError(f"{fail}: connection refused (nothing listens there)") from None
    except TimeoutError:
        hint = " (a tls:// scheduler?)" if scheme == "tcp" else ""
        raise ClusterError(f"{fail}: no answer within {timeout:g} s{hint}") from None
    except socket.gaierror as exc:
        raise ClusterError(f"{fail}: unknown host {host!r} ({exc.strerror})") from None
    except ssl.SSLError as exc:
        raise ClusterError(f"{fail}: TLS handshake failed: {_cause(exc)}") from None
    except OSError as exc:
        raise ClusterError(f"{fail}: {exc.strerror or _cause(exc)}") from None
    if not first:
        raise ClusterError(f"{fail}: it closed the connection without a word (not Dask?)")


def _first_byte(host: str, port: int, context: ssl.SSLContext | None, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=host)
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        return sock.recv(1)
    finally:
        sock.close()


def _stop_heartbeats(client: Client, timeout: float = 2.0) -> None:
    """Embedded workers stop telling the scheduler they live before it closes: a heartbeat
    caught by the close is logged by the worker as an error with a traceback, on the
    daemon's stderr. Bounded: a worker that does not answer is closed anyway."""

    def ask() -> None:
        with contextlib.suppress(Exception):  # a client or worker already gone: closing anyway
            client.run(_no_heartbeat, on_error="ignore")

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(timeout)


def _no_heartbeat(dask_worker: Worker) -> None:
    dask_worker.periodic_callbacks["heartbeat"].stop()


def _embedded(settings: DaskSettings) -> Connection:
    from distributed import Client, LocalCluster

    dashboard = _loopback_dashboard(settings.dashboard_address)
    try:
        with _workers_ignore_ctrl_c():
            cluster = LocalCluster(
                n_workers=settings.n_workers,
                threads_per_worker=settings.threads_per_worker,
                processes=True,
                host=LOOPBACK,
                dashboard_address=dashboard,
                silence_logs=logging.WARNING,
            )
    except Exception as exc:  # a port, a process or a folder Dask could not get
        raise ClusterError(f"cannot start the embedded Dask cluster: {_cause(exc)}") from exc
    return Connection(Client(cluster, set_as_default=False), cluster)


def _loopback_dashboard(setting: str) -> str:
    """`[dask] dashboard_address` with a host everywhere: a bare port (":8787", ":0") means
    loopback, where Dask would listen on every interface."""
    from distributed.comm.addressing import unparse_host_port
    from distributed.utils import clean_dashboard_address

    try:
        parsed = clean_dashboard_address(setting)
    except (TypeError, ValueError):
        raise ConfigError(
            f"[dask] dashboard_address {setting!r}: expected [host]:port, e.g. 127.0.0.1:8787"
        ) from None
    return ",".join(unparse_host_port(a["address"] or LOOPBACK, a["port"]) for a in parsed)


def _cause(exc: BaseException) -> str:
    """The first line of an exception's message, and of the one that caused it."""
    text = _first_line(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and _first_line(cause) not in text:
        text = f"{text} ({_first_line(cause)})"
    return text


def _first_line(exc: BaseException) -> str:
    lines = _COMM.sub("", str(exc).strip()).splitlines()
    return lines[0] if lines else type(exc).__name__


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
