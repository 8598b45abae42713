"""One real `sinagotd` process, as the tests and the benchmarks run it: `DaemonProcess`.

The daemon's behaviour is only seen from outside: its JSON events on stdout, its stderr,
its exit status, and the processes it leaves. The pytest fixture (tests/test_daemon.py),
the fault-injection Lab (tests/faults/harness.py, shared with tests/bench/bench_faults.py)
and tests/bench/bench_daemon.py all start it the same way, read it the same way and stop it
the same way, so they do it with this one class; their differences are options:

- `follow`: `wait_for` moves forward through the events (each call returns the next match,
  and `events` holds what it went through), as the fixture's tests read a story in order;
  without it `wait_for` searches from `since` (default 0), as the fault scenarios do with
  marks taken before they inject something.
- `error`: what a failed wait raises (pytest's clean failure, the Lab's FaultError, ...).
- `events_path`: keep its stdout as it was written (a kept fault scenario's timeline).
- `on_event`: annotate each event as it is read (the benchmark's parsed timestamps).

It imports nothing from pytest or from sinagot: the benchmarks run it as plain scripts (they
put tests/ on sys.path), and it must see the daemon as an operator would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Event = dict[str, Any]
Predicate = Callable[[Event], bool]
#: What a failed wait raises, built from its message (with the diagnosis in it).
ErrorFactory = Callable[[str], BaseException]

NOT_JSON = "<not json>"  # the `event` of a stdout line that is not a JSON object
STEP_EVENTS = ("step.submitted", "step.finished", "step.failed", "step.skipped")
#: Variables that would change how sinagotd runs, whatever the test asked for.
_UNSET = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "SINAGOT_DASK_ADDRESS")


class DaemonError(AssertionError):
    """A wait on the daemon ran out, or it exited while waited for (the default `error`)."""


# -- small functions ----------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would change how sinagotd runs (a SINAGOTD_* or DASK_*
    setting, systemd's variables, a scheduler address), its status page on a free port of its
    own (never the default one, which two daemons cannot share); then `extra`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in _UNSET and not key.startswith(("SINAGOTD_", "DASK_"))
    }
    env["SINAGOTD_STATUS_PORT"] = "0"
    env.update(extra)
    return env


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str,
    diagnose: Callable[[], str] | None = None, interval: float = 0.05,
    error: ErrorFactory = DaemonError,
) -> Any:  # fmt: skip
    """Poll `predicate` until it returns something true; its value. `error` on timeout, its
    message naming `what` and, if given, `diagnose()`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{diagnose()}" if diagnose is not None else ""
            raise error(f"not within {timeout} s: {what}{detail}")
        time.sleep(interval)  # polling, with a deadline


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def kill_group(
    proc: subprocess.Popen, timeout: float = 15, error: ErrorFactory = DaemonError
) -> None:
    """SIGKILL a process group started with start_new_session; wait until it is gone (a Dask
    worker left behind would run on into the next test)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    what = f"process group {proc.pid} gone"
    wait_until(lambda: not group_members(proc.pid), timeout, what, error=error)


def matcher(what: str | Predicate, keys: Mapping[str, Any]) -> Predicate:
    """An event named `what` (or for which the predicate holds) with these key values."""

    def match(event: Event) -> bool:
        if isinstance(what, str):
            if event.get("event") != what:
                return False
        elif not what(event):
            return False
        return all(event.get(key) == value for key, value in keys.items())

    return match


def describe(what: str | Predicate, keys: Mapping[str, Any]) -> str:
    """`what` and its keys, for a message."""
    name = what if isinstance(what, str) else getattr(what, "__name__", "matching")
    return f"{name} {dict(keys)}" if keys else name


def short(event: Event) -> str:
    """One line of a diagnosis: the time of day, the event's name, its other fields."""
    rest = {k: v for k, v in event.items() if k not in ("event", "timestamp", "level")}
    when = str(event.get("timestamp", ""))[11:23]
    return f"{when} {event.get('event')} {json.dumps(rest, default=str)}"


def parse_line(raw: bytes) -> Event | None:
    """A stdout line as an event; None for a blank line; anything else that is not a JSON
    object is kept as `{"event": "<not json>", "line": ...}` (a print in the daemon is a
    finding, not something to skip)."""
    line = raw.decode(errors="replace").strip()
    if not line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        event = None
    return event if isinstance(event, dict) else {"event": NOT_JSON, "line": line}


# -- the process --------------------------------------------------------------------------


class DaemonProcess:
    """`python -m sinagotd WORKSPACE --log-format json FLAGS...` in its own session (process
    group: its embedded cluster's workers die with it), its stdout read as JSON events on a
    thread, its stderr in `stderr_path`."""

    def __init__(
        self, workspace: Path, *flags: str, stderr_path: Path, number: int = 0,
        env: Mapping[str, str] | None = None, events_path: Path | None = None,
        follow: bool = False, error: ErrorFactory = DaemonError,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:  # fmt: skip
        self.workspace = workspace
        self.number = number  # which daemon of a test or scenario: in messages
        self.follow = follow
        self.error = error
        self.on_event = on_event
        self.stderr_path = stderr_path
        self.events_path = events_path
        self._stderr = stderr_path.open("wb")
        self._copy = events_path.open("wb") if events_path is not None else None
        self._read: list[Event] = []  # every event read, in order
        self.taken = 0  # with `follow`: how many of them `wait_for` went through
        self.exited = False  # the reader saw the end of its stdout
        self.killed_at: float | None = None  # kill -9: the books accept steps it never heard of
        self._changed = threading.Condition()
        command = [
            sys.executable, "-m", "sinagotd", str(workspace), "--log-format", "json", *flags,
        ]  # fmt: skip
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr,
            env=dict(env) if env is not None else clean_env(), start_new_session=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if self._copy is not None:
                with contextlib.suppress(ValueError):  # closed by `close` meanwhile
                    self._copy.write(raw)
                    self._copy.flush()
            event = parse_line(raw)
            if event is None:
                continue
            if self.on_event is not None:
                self.on_event(event)
            with self._changed:
                self._read.append(event)
                self._changed.notify_all()
        with self._changed:
            self.exited = True
            self._changed.notify_all()

    # -- events -----------------------------------------------------------------------------

    @property
    def events(self) -> list[Event]:
        """The events so far, in order. With `follow`, those `wait_for` went through (all of
        them once the process ended and was waited for): what the test has seen happen."""
        return self._read[: self.taken] if self.follow else self._read

    def mark(self) -> int:
        """An index into `events`: what comes after it happened after this call."""
        return len(self.events)

    def seen(self, what: str | Predicate, since: int = 0, **keys: Any) -> list[Event]:
        """The events (from index `since`) that match."""
        match = matcher(what, keys)
        return [event for event in self.events[since:] if match(event)]

    def snapshot(self, since: int = 0) -> list[Event]:
        """A copy of every event read so far, from index `since` (followed or not)."""
        with self._changed:
            return list(self._read[since:])

    def _first(self, match: Predicate, position: int, deadline: float) -> int | None:
        """The index of the first event from `position` that matches, waiting for it until
        the deadline or the end of stdout; None then."""
        with self._changed:
            while True:
                while position < len(self._read):
                    if match(self._read[position]):
                        return position
                    position += 1
                left = deadline - time.monotonic()
                if self.exited or left <= 0:
                    return None
                self._changed.wait(min(left, 0.5))

    def find(
        self, what: str | Predicate, timeout: float = 30, since: int | None = None, **keys: Any
    ) -> int:
        """The index of the first matching event from `since` (by default: with `follow`, where
        the last wait ended; otherwise the first event), waiting for it; `error` if it does
        not come within `timeout` or the daemon exits first."""
        start = since if since is not None else (self.taken if self.follow else 0)
        found = self._first(matcher(what, keys), start, time.monotonic() + timeout)
        if found is not None:
            self._went_through(found + 1)
            return found
        self._went_through(len(self._read))
        if self.exited:  # the end of its stdout: let it be reaped, for its status
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        status = self.proc.poll()
        why = f"sinagotd exited, status {status}" if self.exited else f"not within {timeout} s"
        raise self.error(f"no event {describe(what, keys)} ({why})\n{self.diagnosis()}")

    def wait_for(
        self, what: str | Predicate, timeout: float = 30, since: int | None = None, **keys: Any
    ) -> Event:
        """The first matching event from `since` (see `find`), waiting for it if need be."""
        return self._read[self.find(what, timeout, since, **keys)]

    def wait_count(
        self, what: str | Predicate, count: int, since: int = 0, timeout: float = 30,
        **keys: Any,
    ) -> list[Event]:  # fmt: skip
        """Until `count` events from index `since` match; all that match by then."""
        deadline = time.monotonic() + timeout
        position = since
        for _ in range(count):
            left = max(deadline - time.monotonic(), 0)
            position = self.find(what, left, position, **keys) + 1
        match = matcher(what, keys)
        return [event for event in self.snapshot(since) if match(event)]

    def _went_through(self, position: int) -> None:
        if self.follow:
            self.taken = max(self.taken, position)

    def idle(self) -> bool:
        """Its latest word on its work is `daemon.idle` (nothing in flight, nothing queued)."""
        for event in reversed(self.snapshot()):
            name = event.get("event")
            if name == "daemon.idle":
                return True
            if name in STEP_EVENTS or name in ("daemon.started", "daemon.ready", "cluster.lost"):
                return False
        return False

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def diagnosis(self, last: int = 60) -> str:
        """Its state, its last events and the end of its stderr: what a failure message needs
        to be understood without running the test again."""
        read = self.snapshot()
        events = "\n".join(short(event) for event in read[-last:]) or "(none)"
        status = self.proc.poll()
        return (
            f"--- sinagotd #{self.number} (pid {self.pid}, "
            f"{'running' if status is None else f'exit status {status}'}), "
            f"last {min(last, len(read))} of {len(read)} events ---\n{events}\n"
            f"--- its stderr (end) ---\n{self.stderr()[-3000:]}"
        )

    # -- ending -----------------------------------------------------------------------------

    def drain(self, timeout: float = 15) -> None:
        """Read its stdout to the end (workers may hold it a moment after the exit); with
        `follow`, every event read counts as seen."""
        with self._changed:
            deadline = time.monotonic() + timeout
            while not self.exited and time.monotonic() < deadline:
                self._changed.wait(0.2)
        self._went_through(len(self._read))

    def exit_status(self, timeout: float) -> int | None:
        """Its exit status once it exits, within `timeout`; None if it is still running."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout: float = 60) -> int:
        """Until it exits by itself; every event read; its status. If it does not within
        `timeout`: its process group killed, and `error`."""
        status = self.exit_status(timeout)
        if status is None:
            why = f"sinagotd did not exit within {timeout} s\n{self.diagnosis()}"
            self.kill()
            raise self.error(why)
        self.drain()
        return status

    def terminate(self) -> None:
        """SIGTERM, as systemd sends it (nothing if it already exited)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then `wait`: its exit status."""
        self.terminate()
        return self.wait(timeout)

    def kill(self) -> None:
        """kill -9 of its whole process group (an embedded cluster's workers die with it)."""
        self.killed_at = time.time()
        kill_group(self.proc, error=self.error)
        self.drain()

    def close(self) -> None:
        """Whatever state it is in: its process group gone, its files closed. Idempotent."""
        try:
            if self.proc.poll() is None or group_members(self.proc.pid):
                kill_group(self.proc, error=self.error)
            self._reader.join(timeout=10)
        finally:
            for file in (self.proc.stdout, self._stderr, self._copy):
                if file is not None:
                    file.close()
