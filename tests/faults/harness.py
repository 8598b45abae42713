"""Fault-injection harness: a small workspace, real daemons and Dask processes, and the books.

Shared by the pytest scenarios in this folder and by `tests/bench/bench_faults.py` (which
puts tests/ on sys.path and imports `faults.harness`), so that both check the same things
with the same code. It imports nothing from pytest: a failed wait raises `FaultError` (an
AssertionError) whose message carries the daemon's last events and the end of its stderr.

The world of one scenario is a `Lab`:

- `<root>/ws` is a harbor-like workspace (example/make_dataset.py, trivial steps) whose two
  step scripts are replaced by ones that obey a control folder, `<root>/control`, outside
  the watched tree: a step writes half of its output, touches `started/<id>~<step>~<pid>~<ns>`
  (so a test knows it is mid-run and which process runs it), sleeps `delay` seconds if that
  file exists, waits while a `hold` file concerns it (`hold`, `hold-<id>`, `hold-<step>`,
  `hold-<id>-<step>`, `hold-pid-<pid>`), then writes the rest. Each output names what it was
  computed from (the SHA-1 of the input), so a result computed from a half-copied recording
  is caught.
- Every process is started in its own session; `Lab.close()` kills each process group, so
  that no Dask worker outlives a scenario. A daemon is a `DaemonProcess` (tests/daemonproc.py,
  which the pytest fixture and the benchmarks use too); its failed waits raise FaultError.

`check_books` is the one verdict: every step that was due has run to success exactly once
since its input last changed (per-record log lines, and `step.finished` events across every
daemon run of the scenario), no output is half-written, nothing is left in flight.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import daemonproc
from daemonproc import (  # noqa: F401  (re-exported: the scenarios and other tests use them)
    STEP_EVENTS,
    DaemonError,
    Predicate,
    clean_env,
    group_members,
    kill_group,
    matcher,
    short,
)
from daemonproc import DaemonProcess as DaemonRun  # what `Lab.daemon` starts

REPO = Path(__file__).resolve().parents[2]
STEPS = ("count", "mean")
SETTLE = 0.3  # seconds: short, so that scenarios are quick
INIT, DONE = 0, 30  # StepStatus.INIT and DONE in the per-record logs
HOLD_LIMIT = 120.0  # seconds: a held step gives up waiting after this (a forgotten hold)


class FaultError(DaemonError):
    """A scenario did not go as expected (a wait ran out, a process misbehaved)."""


class BooksError(FaultError):
    """The books do not balance: a step lost, run twice, half-written, left in flight."""


class DaemonCrashed(FaultError):
    """sinagotd exited on its own (a traceback, not a stop)."""


def _load_make_dataset() -> Any:
    path = REPO / "example" / "make_dataset.py"
    spec = importlib.util.spec_from_file_location("sinagot_example_make_dataset", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


make_dataset = _load_make_dataset()
record_id = make_dataset.record_id

# -- the steps --------------------------------------------------------------------------------

#: What a step computes from its input's bytes. Run by the step scripts (the source is pasted
#: into them) and by the books (exec'd below): the same code on both sides.
COMPUTE = '''
def compute(step, data):
    """count: the number of rows; mean: the mean boat size; each with the input's SHA-1."""
    digest = hashlib.sha1(data).hexdigest()
    rows = [line.split(",") for line in data.decode().splitlines()[1:] if line.strip()]
    if step == "count":
        return "rows,sha1\\n%d,%s\\n" % (len(rows), digest)
    sizes = [float(row[2]) for row in rows]
    mean = sum(sizes) / len(sizes) if sizes else 0.0
    return "mean_size,sha1\\n%.4f,%s\\n" % (mean, digest)
'''

_namespace: dict[str, Any] = {"hashlib": hashlib}
exec(COMPUTE, _namespace)
compute: Callable[[str, bytes], str] = _namespace["compute"]

SCRIPT = '''"""Step __STEP__ of the fault-injection lab (tests/faults/harness.py).

It obeys the control folder __CONTROL__.
"""
import hashlib
import os
import time
from pathlib import Path

from sinagot import ScriptTemplate

CONTROL = Path(__CONTROL__)
STEP = "__STEP__"
__COMPUTE__

def held(record_id):
    names = ("hold", "hold-" + record_id, "hold-" + STEP, "hold-%s-%s" % (record_id, STEP),
             "hold-pid-%d" % os.getpid())
    return any((CONTROL / name).exists() for name in names)


class Script(ScriptTemplate):
    PATH_IN = ("raw", "{id}-raw.csv")
    PATH_OUT = ("computed", "{id}-__STEP__.csv")

    def run(self):
        text = compute(STEP, Path(self.path.input).read_bytes())
        half = len(text) // 2
        with open(self.path.output, "w") as out:
            out.write(text[:half])
            out.flush()
            marker = "%s~%s~%d~%d" % (self.id, STEP, os.getpid(), time.time_ns())
            (CONTROL / "started" / marker).touch()
            try:
                time.sleep(float((CONTROL / "delay").read_text()))
            except (OSError, ValueError):
                pass
            give_up = time.monotonic() + __HOLD_LIMIT__
            while held(self.id) and time.monotonic() < give_up:
                time.sleep(0.05)
            out.write(text[half:])
'''


def step_script(step: str, control: Path) -> str:
    return (
        SCRIPT.replace("__COMPUTE__", COMPUTE)
        .replace("__CONTROL__", repr(str(control)))
        .replace("__STEP__", step)
        .replace("__HOLD_LIMIT__", repr(HOLD_LIMIT))
    )


def raw_text(n_rows: int, seed: int = 0) -> str:
    """A raw recording: the harbor's columns, `n_rows` boats."""
    countries = ("FR", "UK", "NL", "ES")
    rows = [
        f"Boat {seed}-{i},{countries[(seed + i) % 4]},{6 + (seed * 7 + i * 3) % 80 / 10:.1f}"
        for i in range(n_rows)
    ]
    return "boat_name,country,size\n" + "".join(row + "\n" for row in rows)


# -- processes --------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str,
    diagnose: Callable[[], str] | None = None, interval: float = 0.05,
) -> Any:  # fmt: skip
    """Poll `predicate` until it returns something true; its value. FaultError on timeout."""
    return daemonproc.wait_until(predicate, timeout, what, diagnose, interval, FaultError)


def alive(pid: int) -> bool:
    """Whether a process of that pid exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Forwarder:
    """A TCP relay on 127.0.0.1:`port` to `target` (host, port): what stands between the
    daemon and its scheduler, so that a test cuts the network (`cut`: every connection
    shut down, the port refused) and mends it (`mend`: the port answers again) at a moment of
    its choosing, the scheduler and its workers running on meanwhile. Connections are shut
    down by `cut` but closed only by `close`: a file descriptor reused while a relaying
    thread still holds its number would cut (or keep) the wrong connection."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []  # relayed, not yet cut
        self._cut: list[socket.socket] = []  # shut down, closed by `close`
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def mend(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        """The port refused first (else a client cut off would get through again at once),
        then every connection shut down."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:  # its port free again once its thread is out of accept()
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            if self._acceptor is not None:
                self._acceptor.join(timeout=10)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
            self._cut += sockets
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        with self._lock:
            sockets, self._cut = self._cut, []
        for sock in sockets:
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()  # never relayed: no thread holds it
                continue
            upstream.settimeout(None)
            with self._lock:
                cut = self._listener is not listener  # cut meanwhile: this one is cut too
                (self._cut if cut else self._sockets).extend([client, upstream])
            if cut:
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):  # one side closed: so does the other (closed by `close`:
            with contextlib.suppress(OSError):  # closing here, a reused fd could be hit)
                sock.shutdown(socket.SHUT_RDWR)


def epoch(timestamp: str) -> float:
    """An ISO 8601 timestamp (events: UTC with Z; logs: local with offset) as seconds."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


class Cluster:
    """An external Dask cluster: `dask scheduler` and `dask worker` subprocesses."""

    def __init__(self, lab: Lab, port: int | None = None) -> None:
        self.lab = lab
        self.port = port
        self.scheduler: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.scheduler_file = lab.root / "scheduler.json"
        self.address = ""
        self._logs = 0

    def _spawn(self, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        self._logs += 1
        log = self.lab.root / f"{name}-{self._logs}.log"
        command = [sys.executable, "-m", "dask", *args]
        with log.open("wb") as out:
            proc = self.lab.spawn(command, stdout=out, stderr=subprocess.STDOUT)
        return proc, log

    def start_scheduler(self, timeout: float = 30) -> str:
        self.scheduler_file.unlink(missing_ok=True)
        proc, log = self._spawn(
            "scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(self.port or 0),
            "--scheduler-file", str(self.scheduler_file), "--no-dashboard",
        )  # fmt: skip
        self.scheduler = proc

        def address() -> str | None:
            if proc.poll() is not None:
                raise FaultError(f"dask scheduler exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError, ValueError):
                return json.loads(self.scheduler_file.read_text())["address"]
            return None

        self.address = wait_until(address, timeout, "the dask scheduler writes its address")
        self.port = int(self.address.rsplit(":", 1)[1])
        return self.address

    def start_worker(self, nanny: bool = True) -> subprocess.Popen:
        proc, log = self._spawn(
            "worker", "worker", self.address, "--nthreads", "1", "--no-dashboard",
            "--nanny" if nanny else "--no-nanny",
            "--local-directory", str(self.lab.root / "dask-scratch"),
        )  # fmt: skip
        proc.log = log  # type: ignore[attr-defined]
        proc.nanny = nanny  # type: ignore[attr-defined]
        self.workers.append(proc)
        return proc

    def restart_exited_workers(self) -> int:
        """Start a new worker for each one that exited (on the current address)."""
        exited = [proc for proc in self.workers if proc.poll() is not None]
        for proc in exited:
            self.workers.remove(proc)
            self.start_worker(proc.nanny)  # type: ignore[attr-defined]
        return len(exited)

    def registered(self, since: dict[int, int] | None = None) -> int:
        """How many live workers said they registered (after `since` log offsets)."""
        since = since or {}
        count = 0
        for proc in self.workers:
            if proc.poll() is None:
                text = proc.log.read_bytes()[since.get(proc.pid, 0) :]  # type: ignore[attr-defined]
                count += b"Registered to:" in text
        return count

    def wait_workers(self, count: int, since: dict[int, int] | None = None, timeout=60) -> None:
        """Until `count` live workers said they registered (after `since` log offsets)."""
        wait_until(
            lambda: self.registered(since) >= count, timeout,
            f"{count} dask worker(s) registered", self.diagnosis,
        )  # fmt: skip

    def log_offsets(self) -> dict[int, int]:
        return {p.pid: p.log.stat().st_size for p in self.workers}  # type: ignore[attr-defined]

    def stop_scheduler(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        assert self.scheduler is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.scheduler.pid, sig)
        try:
            self.scheduler.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.scheduler)
        kill_group(self.scheduler)  # anything it left in its group

    def diagnosis(self) -> str:
        parts = []
        for proc in [self.scheduler, *self.workers]:
            if proc is None:
                continue
            log = getattr(proc, "log", None)
            state = "running" if proc.poll() is None else f"exited {proc.returncode}"
            if log is not None:
                parts.append(f"--- {log.name} ({state}) ---\n{log.read_text()[-1500:]}")
        return "\n".join(parts)


# -- the lab ----------------------------------------------------------------------------------


@dataclass
class Lab:
    """A workspace, its control folder, and every process a scenario started."""

    root: Path
    ws: Path
    control: Path
    base_config: str
    processes: list[subprocess.Popen] = field(default_factory=list)
    daemons: list[DaemonRun] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def create(
        cls, root: Path, n: int, *, settle: float = SETTLE, rescan: float = 600.0,
        retry: float = 60.0, grace: float = 5.0, workers: int = 2, start: int = 0,
    ) -> Lab:  # fmt: skip
        """A harbor-like workspace of `n` records (trivial steps, controllable)."""
        root.mkdir(parents=True, exist_ok=True)
        ws = make_dataset.make_workspace(root / "ws", n, trivial=True, start=start)
        control = root / "control"
        (control / "started").mkdir(parents=True, exist_ok=True)
        for step in STEPS:
            (ws / "scripts" / f"{step}.py").write_text(step_script(step, control))
        config = ws / "workspace.toml"
        text = config.read_text() + (
            f"\n[daemon]\nsettle_seconds = {settle}\nrescan_seconds = {rescan}\n"
            f"retry_seconds = {retry}\nstop_grace_seconds = {grace}\n"
            f'\n[dask]\nn_workers = {workers}\nthreads_per_worker = 1\ndashboard_address = ":0"\n'
        )
        config.write_text(text)
        return cls(root, ws, control, text)

    # -- paths --------------------------------------------------------------------------------

    @property
    def dataset(self) -> Path:
        return self.ws / "dataset"

    @property
    def config(self) -> Path:
        return self.ws / "workspace.toml"

    @property
    def state_db(self) -> Path:
        return self.dataset / ".sinagot" / "state.db"

    @property
    def receipts(self) -> Path:
        return self.dataset / ".sinagot" / "receipts"

    def raw(self, rid: str) -> Path:
        return self.dataset / "raw" / f"{rid}-raw.csv"

    def output(self, rid: str, step: str) -> Path:
        return self.dataset / "computed" / f"{rid}-{step}.csv"

    def ids(self) -> list[str]:
        pattern = re.compile(r"(REC-\d{8})-raw\.csv")
        names = os.listdir(self.dataset / "raw")
        return sorted(m.group(1) for name in names if (m := pattern.fullmatch(name)))

    def add(self, numbers: Iterable[int], seed: int = 1) -> list[str]:
        """New recordings, written at once (example/make_dataset.py's add_records)."""
        return make_dataset.add_records(self.ws, list(numbers), seed=seed)

    # -- control --------------------------------------------------------------------------

    def hold(self, *names: str) -> None:
        """Hold steps mid-run: 'hold' (all), 'hold-<id>', 'hold-<step>', 'hold-<id>-<step>',
        'hold-pid-<pid>' (the runs in that worker process)."""
        for name in names:
            (self.control / name).touch()

    def release(self, *names: str) -> None:
        """Release holds (all of them when no name is given)."""
        if not names:
            names = tuple(p.name for p in self.control.glob("hold*"))
        for name in names:
            (self.control / name).unlink(missing_ok=True)

    def set_delay(self, seconds: float) -> None:
        if seconds > 0:
            (self.control / "delay").write_text(str(seconds))
        else:
            (self.control / "delay").unlink(missing_ok=True)

    def started(self) -> list[tuple[str, str, int, int]]:
        """Every step run that got under way: (record_id, step, pid, time_ns), oldest first."""
        runs = []
        for path in (self.control / "started").iterdir():
            rid, step, pid, ns = path.name.split("~")
            runs.append((rid, step, int(pid), int(ns)))
        return sorted(runs, key=lambda run: run[3])

    def wait_started(self, rid: str, step: str, timeout: float = 30, after_ns: int = 0):
        """The (pid, time_ns) of the first run of this step started after `after_ns`."""

        def find() -> tuple[int, int] | None:
            for r, s, pid, ns in self.started():
                if (r, s) == (rid, step) and ns > after_ns:
                    return pid, ns
            return None

        return wait_until(find, timeout, f"step {step} of {rid} under way", self.diagnosis)

    # -- processes --------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        scratch = self.root / "dask-scratch"
        return clean_env(DASK_TEMPORARY_DIRECTORY=str(scratch), **extra)

    def spawn(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("env", self.env())
        proc = subprocess.Popen(list(command), start_new_session=True, **kwargs)
        self.processes.append(proc)
        return proc

    def daemon(self, *flags: str, env: dict[str, str] | None = None) -> DaemonRun:
        """Start sinagotd on the workspace; its stderr and its stdout as written (the timeline
        of a kept scenario) in `root`, numbered in the order the scenario started them."""
        number = len(self.daemons)
        run = DaemonRun(
            self.ws, *flags, number=number, env=env or self.env(), error=FaultError,
            stderr_path=self.root / f"sinagotd-{number}.stderr",
            events_path=self.root / f"sinagotd-{number}.events.jsonl",
        )  # fmt: skip
        self.daemons.append(run)
        return run

    def cluster(self, port: int | None = None) -> Cluster:
        return Cluster(self, port)

    def diagnosis(self) -> str:
        return self.daemons[-1].diagnosis() if self.daemons else "(no daemon started)"

    def close(self) -> None:
        """Release holds, kill every process group started, run registered cleanups."""
        with contextlib.suppress(OSError):
            self.release()
        errors = []
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep cleaning up; report at the end
                errors.append(exc)
        for daemon in self.daemons:
            daemon.close()
        for proc in self.processes:
            kill_group(proc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the books ----------------------------------------------------------------------------

    def books(self, *, with_status: bool = True, unreported_ok: Iterable = ()) -> Books:
        return check_books(self, with_status=with_status, unreported_ok=unreported_ok)

    def settle(self, timeout: float = 60, unreported_ok: Iterable = ()) -> Books:
        """Wait until the books balance and the running daemon says it is idle; then the full
        check (with `sinagot status`). Returns the balanced books; BooksError otherwise, at
        once when the daemon is idle (by its word and by its store: `quiet_books`) with a
        problem nothing will mend (a step run twice, a half-written output, a run never
        announced)."""
        daemon = self.daemons[-1]
        last: list[Books] = []

        def balanced() -> bool:
            books, idle = quiet_books(self, daemon, unreported_ok)
            last[:] = [books]
            if not idle:
                return False
            if books.twice or books.overreported or books.half_written or books.unreported:
                raise BooksError(diagnose())  # the daemon is idle: nothing will mend them
            return books.balanced

        def diagnose() -> str:
            return (last[0].report() if last else "") + "\n" + daemon.diagnosis()

        try:
            wait_until(balanced, timeout, "the books balance, the daemon idle", diagnose, 0.2)
        except BooksError:
            raise
        except FaultError as exc:
            raise BooksError(str(exc)) from None
        books = check_books(self, with_status=True, unreported_ok=unreported_ok)
        if not books.balanced:
            raise BooksError(books.report() + "\n" + daemon.diagnosis())
        return books


# -- the books --------------------------------------------------------------------------------

Key = tuple[str, str]  # (record_id, step)
#: After a kill -9, runs that end this long after it may still be unannounced: a worker of an
#: external cluster finishes the step it had, leaves a receipt, and the next daemon records it.
ORPHAN_SECONDS = 60.0


@dataclass
class Books:
    """The verdict on a workspace: what was due, what ran, and what is wrong, each problem a
    list of (record_id, step) keys (empty when all is well); `notes` say more about a key."""

    due: list[Key]
    since: dict[Key, float]  # when each due step's input last changed (its mtime)
    runs: dict[Key, int]  # successful runs that started after that, from the record logs
    ever: dict[Key, int]  # successful runs in the logs, whatever their input
    announced: dict[Key, int]  # step.finished events, across all daemon runs
    twice: list[Key] = field(default_factory=list)  # ran to success more than once
    lost: list[Key] = field(default_factory=list)  # never ran to success, or no output
    half_written: list[Key] = field(default_factory=list)  # output incomplete, wrong, a folder
    in_flight: list[Key] = field(default_factory=list)  # `submitted` marks in the state store
    receipts: list[Key] = field(default_factory=list)  # receipts nobody ingested
    not_done: list[Key] = field(default_factory=list)  # `sinagot status --json` not DONE
    unreported: list[Key] = field(default_factory=list)  # ran, never announced
    unreported_ok: list[Key] = field(default_factory=list)  # ... by a daemon killed -9
    overreported: list[Key] = field(default_factory=list)  # announced more than it ran
    leftovers: list[Key] = field(default_factory=list)  # a step's temp output left behind
    strays: list[str] = field(default_factory=list)  # other files next to the outputs
    notes: dict[Key, list[str]] = field(default_factory=dict)
    status_checked: bool = False

    PROBLEMS = (
        ("twice", "ran to success more than once"),
        ("lost", "lost (no successful run, or no output)"),
        ("half_written", "half-written or wrong output"),
        ("in_flight", "still marked submitted in the state store"),
        ("receipts", "receipt left, never ingested"),
        ("not_done", "sinagot status says not DONE"),
        ("unreported", "ran, never announced by step.finished"),
        ("overreported", "announced by step.finished more often than it ran"),
        ("leftovers", "temp output left next to the output"),
    )

    @property
    def ran(self) -> int:
        return sum(self.runs.values())

    @property
    def balanced(self) -> bool:
        return not self.strays and not any(getattr(self, name) for name, _ in self.PROBLEMS)

    def problems(self) -> dict[Key, list[str]]:
        """Each key with a problem, and the names of its problems."""
        out: dict[Key, list[str]] = {}
        for name, _ in self.PROBLEMS:
            for key in getattr(self, name):
                out.setdefault(key, []).append(name)
        return out

    def note(self, key: Key, text: str) -> None:
        self.notes.setdefault(key, []).append(text)

    def report(self) -> str:
        lines = [
            f"books: {len(self.due)} step(s) due, {self.ran} successful run(s) since their "
            f"inputs changed ({sum(self.ever.values())} in all), "
            f"{sum(self.announced.values())} step.finished event(s)"
            + ("" if self.status_checked else " (sinagot status not consulted)")
        ]
        for name, title in self.PROBLEMS:
            keys = getattr(self, name)
            if keys:
                shown = "; ".join(
                    f"{rid} {step}" + (f" ({', '.join(self.notes[(rid, step)])})"
                                       if (rid, step) in self.notes else "")
                    for rid, step in keys[:8]
                )  # fmt: skip
                more = f" ... ({len(keys)} in all)" if len(keys) > 8 else ""
                lines.append(f"  {title}: {shown}{more}")
        if self.strays:
            lines.append(f"  stray files: {', '.join(self.strays[:12])}")
        if self.unreported_ok:
            lines.append(
                f"  (ran, not announced, accepted: a daemon killed -9 or a receipt taken in "
                f"its stead: {self.unreported_ok[:6]})"
            )
        return "\n".join(lines)


def log_entries(lab: Lab, rid: str) -> list[dict[str, Any]]:
    """The lines of a record's log (a torn last line, while a worker writes, is skipped)."""
    try:
        text = (lab.dataset / "LOG" / f"{rid}.log").read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entries.append(json.loads(line))
    return entries


def log_runs(lab: Lab, rid: str) -> list[tuple[str, float, float]]:
    """(step, start, end) of each successful run in the record's log: a line with status 30
    and 'Run finished'; its start is the step's latest 'Init run' line before it."""
    runs = []
    init: dict[str, float] = {}
    for entry in log_entries(lab, rid):
        step, when = entry.get("step_label"), epoch(entry["time"])
        if entry.get("step_status") == INIT and entry.get("message") == "Init run":
            init[step] = when
        elif entry.get("step_status") == DONE and entry.get("message") == "Run finished":
            runs.append((step, init.get(step, when), when))
    return runs


def submitted_marks(lab: Lab) -> list[Key]:
    if not lab.state_db.exists():
        return []
    uri = f"file:{lab.state_db}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
        try:
            rows = db.execute("SELECT record_id, step FROM runs WHERE submitted IS NOT NULL")
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # the daemon is creating the store
            raise
        return sorted(rows.fetchall())


def receipts(lab: Lab) -> list[tuple[Path, Key | None]]:
    """The receipts workers left (`<dataset>/.sinagot/receipts/*.json`) and the step each
    is for, read from its content (the file names are not a contract)."""
    try:
        names = sorted(os.listdir(lab.receipts))
    except FileNotFoundError:
        return []
    out: list[tuple[Path, Key | None]] = []
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            path = lab.receipts / name
            try:
                data = json.loads(path.read_text())
                key: Key | None = (data["unit"]["record_id"], data["step"])
            except (OSError, ValueError, KeyError, TypeError):
                key = None
            out.append((path, key))
    return out


def receipt_for(lab: Lab, rid: str, step: str) -> Path | None:
    """The receipt a worker left for this step, if any."""
    return next((path for path, key in receipts(lab) if key == (rid, step)), None)


def status_json(lab: Lab) -> list[dict[str, Any]]:
    """`sinagot status WS --json`, as an operator runs it."""
    command = [sys.executable, "-m", "sinagot", "status", str(lab.ws), "--json"]
    done = subprocess.run(command, capture_output=True, env=lab.env(), timeout=60)
    if done.returncode != 0:
        raise FaultError(f"sinagot status failed ({done.returncode}): {done.stderr.decode()}")
    return json.loads(done.stdout)


_TEMP_OUTPUT = re.compile(r"\.sinagot-tmp-(?:[0-9a-f]+-)?(REC-\d{8})-(\w+)\.csv")


def check_books(lab: Lab, *, with_status: bool = True, unreported_ok: Iterable = ()) -> Books:
    """Every step that was due has run to success exactly once since its input last changed,
    its output is complete and right, and nothing is left in flight.

    A run counts for the current input when it started (its 'Init run' log line) after the
    input's last change (its mtime). `step.finished` events are compared with all the
    successful runs in the logs, whatever their input: each run announced once. A run may
    lack its event when it ended while a daemon that was later killed -9 ran (or within
    ORPHAN_SECONDS after the kill): the daemon died before it heard of it, and the next one
    took its receipt. Those are listed in `unreported_ok`, as are the keys passed in
    `unreported_ok`, not as problems.
    """
    allowed = set(unreported_ok)
    windows = [
        (daemon.started_at, daemon.killed_at + ORPHAN_SECONDS)
        for daemon in lab.daemons
        if daemon.killed_at is not None
    ]
    ids = lab.ids()
    due = [(rid, step) for rid in ids for step in STEPS]
    since: dict[Key, float] = {}
    inputs: dict[str, bytes] = {}
    for rid in ids:
        try:
            inputs[rid] = lab.raw(rid).read_bytes()
            mtime = lab.raw(rid).stat().st_mtime
        except FileNotFoundError:
            continue
        for step in STEPS:
            since[(rid, step)] = mtime
    runs: dict[Key, int] = dict.fromkeys(due, 0)
    ever: dict[Key, int] = dict.fromkeys(due, 0)
    orphaned: dict[Key, int] = dict.fromkeys(due, 0)  # ended in a killed daemon's window
    for rid in ids:
        for step, start, end in log_runs(lab, rid):
            key = (rid, step)
            if key in since:
                ever[key] += 1
                runs[key] += start >= since[key]
                orphaned[key] += any(a <= end <= b for a, b in windows)
    announced: dict[Key, int] = dict.fromkeys(due, 0)
    for daemon in lab.daemons:
        for event in list(daemon.events):
            key = (event.get("record_id"), event.get("step"))
            if event.get("event") == "step.finished" and key in announced:
                announced[key] += 1
    books = Books(due, since, runs, ever, announced)
    expected = set()
    for key in due:
        rid, step = key
        path = lab.output(rid, step)
        expected.add(path.name)
        if runs[key] > 1:
            books.twice.append(key)
            books.note(key, f"{runs[key]} runs")
        if runs[key] == 0 or not (path.exists() or path.is_symlink()):
            books.lost.append(key)
        elif not path.is_file():
            books.half_written.append(key)
            books.note(key, "the output is not a file")
        else:
            text = path.read_text(errors="replace")
            if rid in inputs and text != compute(step, inputs[rid]):
                books.half_written.append(key)
                books.note(key, f"output {text!r}")
        if announced[key] > ever[key]:
            books.overreported.append(key)
            books.note(key, f"announced {announced[key]}, ran {ever[key]}")
        elif announced[key] < ever[key]:
            if key in allowed or ever[key] - announced[key] <= orphaned[key]:
                books.unreported_ok.append(key)
            else:
                books.unreported.append(key)
    computed = lab.dataset / "computed"
    if computed.is_dir():
        for name in sorted(os.listdir(computed)):
            if name in expected:
                continue
            key = stray_key(name)
            if key in since:
                books.leftovers.append(key)
                books.note(key, f"left {name}")
            else:
                books.strays.append(name)
    # Pending receipts are results nobody recorded. (Hidden files beside them, locks and
    # temp names, are the runner's own business, seen by no operator.)
    pending = receipts(lab)
    books.receipts = sorted({key for _, key in pending if key is not None})
    books.in_flight = [key for key in submitted_marks(lab) if key in since]
    if with_status:
        books.status_checked = True
        for entry in status_json(lab):
            if entry["status"] != "DONE":
                key = (entry["record_id"], entry["step"])
                books.not_done.append(key)
                books.note(key, f"{entry['status']}: {'; '.join(entry['reasons'])}")
    return books


def quiet_books(lab: Lab, daemon: DaemonRun, unreported_ok: Iterable = ()) -> tuple[Books, bool]:
    """The books (without `sinagot status`), and whether the daemon was idle all the while
    they were read: its last word `daemon.idle`, no event since (a run's log line can
    precede its step.finished event; a consistent view needs a quiet daemon), and no step
    marked submitted in its state store.

    The events alone can say idle while the daemon is busy: its `daemon.idle` stays its last
    word through a `watch.error` (a reconcile follows), a worker can end a step before the
    daemon has written that step's `step.submitted`, and its stdout reaches the test through
    a thread that lags on a loaded machine. The store does not lag: a step is marked before
    it may begin, and unmarked only once its run was announced (a CI run failed at once on
    "ran, never announced" after an overflow, with 14 steps still marked)."""
    before = daemon.mark()
    idle = daemon.idle()
    books = check_books(lab, with_status=False, unreported_ok=unreported_ok)
    return books, idle and not books.in_flight and daemon.mark() == before


def stray_key(name: str) -> Key | None:
    """The step a stray temp output belongs to ('.sinagot-tmp-REC-1-count.csv'), if any."""
    match = _TEMP_OUTPUT.fullmatch(name)
    return (match.group(1), match.group(2)) if match else None


def assert_books(lab: Lab, **kwargs: Any) -> Books:
    books = check_books(lab, **kwargs)
    if not books.balanced:
        raise BooksError(books.report() + "\n" + lab.diagnosis())
    return books


# -- injecting faults -------------------------------------------------------------------------


def inotify_fds(pid: int) -> int:
    """How many inotify instances a process holds."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
    return count


MAX_QUEUED_EVENTS = Path("/proc/sys/fs/inotify/max_queued_events")
SYSCTL_LOCK = "/tmp/sinagot-faults-max_queued_events.lock"
DEFAULT_QUEUE = 16384  # the kernel's default max_queued_events


def read_max_queued_events() -> int:
    """The queue size of inotify instances made now (at least the kernel's default: another
    run of the sysctl scenario may have lowered it for a moment)."""
    return max(int(MAX_QUEUED_EVENTS.read_text()), DEFAULT_QUEUE)


def can_write_max_queued_events() -> bool:
    try:
        value = MAX_QUEUED_EVENTS.read_text()
        MAX_QUEUED_EVENTS.write_text(value)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def max_queued_events(value: int) -> Iterator[Callable[[], None]]:
    """Lower the system-wide inotify queue size for the instances created meanwhile (the
    kernel reads it at inotify_init); yields `restore`, also called on exit, whatever
    happens. Keep the window short: it is system-wide."""
    with open(SYSCTL_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once must not restore each other's value
        old = MAX_QUEUED_EVENTS.read_text()
        restored = False

        def restore() -> None:
            nonlocal restored
            if not restored:
                MAX_QUEUED_EVENTS.write_text(old)
                restored = True

        MAX_QUEUED_EVENTS.write_text(str(value))
        try:
            yield restore
        finally:
            restore()


def prepare_flood(folder: Path) -> None:
    """The two scratch files `flood_inotify` changes: make them before the daemon watches
    (a folder made while it is stopped would not be watched yet, and make no events)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        (folder / name).touch()


def flood_inotify(folder: Path, events: int) -> None:
    """Make `events` inotify events in `folder` (see `prepare_flood`): attribute changes,
    alternating between two files so that the kernel cannot merge consecutive ones."""
    files = [str(folder / "a"), str(folder / "b")]
    for i in range(events):
        os.utime(files[i % 2], ns=(i, i))


@contextlib.contextmanager
def state_store_locked(lab: Lab) -> Iterator[None]:
    """Hold the state store's write lock: the daemon's loop stalls at its next write (as on
    a slow disk), while its other threads (the Dask client's) go on."""
    db = sqlite3.connect(lab.state_db, timeout=30, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        db.close()


def lock_waiter_in(folder: Path) -> bool:
    """Whether a process waits for a file lock (flock/fcntl) on a file in `folder`, from
    /proc/locks (a blocked request is listed with '->')."""
    try:
        inodes = {entry.stat().st_ino for entry in os.scandir(folder)}
        text = Path("/proc/locks").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if "->" not in line:
            continue
        for token in line.split():
            match = re.fullmatch(r"[0-9a-f]+:[0-9a-f]+:(\d+)", token)
            if match and int(match.group(1)) in inodes:
                return True
    return False


def all_stopped(pid: int) -> bool:
    """Every thread of the process is stopped (state T), the signal delivered."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError, IndexError):
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """SIGSTOP a process (all its threads) for the duration; SIGCONT after, whatever."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: all_stopped(pid), 10, f"every thread of pid {pid} stopped")
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def chattr_works(folder: Path) -> bool:
    """Whether `chattr +i` (immutable: even root cannot create or rename in it) works here."""
    probe = folder / "chattr-probe"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["chattr", "+i", str(probe)], capture_output=True)
    except OSError:
        return False
    if done.returncode != 0:
        return False
    try:
        (probe / "x").touch()
    except OSError:
        return True
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)
    return False


def chattr(path: Path, flag: str) -> None:
    subprocess.run(["chattr", flag, str(path)], check=True, capture_output=True)


def write_slowly(path: Path, text: str, chunks: int, pause: float) -> None:
    """A copy in progress: the file opened once, `chunks` parts written `pause` apart."""
    size = -(-len(text) // chunks)
    with path.open("w") as out:
        for i in range(chunks):
            out.write(text[i * size : (i + 1) * size])
            out.flush()
            if i < chunks - 1:
                time.sleep(pause)  # the copy's own pace: the behaviour under test


def write_then_rename(final: Path, text: str, temp_name: str, chunks: int = 1,
                      pause: float = 0.0) -> None:  # fmt: skip
    """As editors, uploaders and rsync do: a temp file in the same folder, then a rename."""
    temp = final.with_name(temp_name)
    write_slowly(temp, text, chunks, pause)
    os.replace(temp, final)
