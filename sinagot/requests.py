"""Run requests: how `sinagot run` asks a running sinagotd to run steps, and hears its answer.

The daemon is the workspace's only writer, so a `sinagot run` while it runs does not run
anything itself: it asks the daemon over a Unix socket in the state folder,
`<state>/sinagotd.sock`, and prints what the daemon answered.

Protocol: one JSON object per line each way; a request at most `MAX_BYTES`. The client
sends a request (`RunRequest`: records, task, modality, step, force, and `wait` only when
true, so that a plain request reads as it always did); the server answers one line,
`{"ok": true, "units": U, "steps": S, "busy": B}` or `{"ok": false, "error": "..."}`. A
request with `"wait": true` (`sinagot run --wait`) also gets, in the same line, which steps
were queued, `"queued_steps": [[record_id, task, modality, step], ...]`, and which units
were on the cluster already, `"busy_units": [[record_id, task, modality, generation], ...]`
(the generation names their run in flight): lists that can be long, so the client reads a
reply of up to `MAX_REPLY_BYTES`. An older daemon refuses `wait` as an unknown key.

`Waiter` is the waiting: it follows those steps in the state store, read-only, until each
has ended (see its docstring for the rules), and says how each ended.

Who may ask is the file system's business: the socket is mode 0660, so the service's group
may ask and nobody else may. Who asked comes from the kernel (`SO_PEERCRED`), never from
the request. The server never touches the daemon's state: it hands each valid request to
the daemon's `on_request` callback and sends back what it returns; it refuses anything else
with a reply naming the fault, and nothing a client sends can stop it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import SinagotError
from .layout import Unit
from .runner import Outcome
from .state import StateError, StateStore, explain, run_key
from .status import StepStatus

if TYPE_CHECKING:
    from .planner import StepPlan

SOCKET_NAME = "sinagotd.sock"
MAX_BYTES = 64 * 1024  # one request line (and a reply the server refuses with), newline excluded
MAX_REPLY_BYTES = 256 * 1024 * 1024  # a `--wait` reply names every step queued: many, at times
READ_TIMEOUT = 5.0  # seconds a client has to send its whole request line
MAX_CLIENTS = 16  # connections served at once; more are told to come back
SOCKET_MODE = 0o660
_SUN_PATH_MAX = 100  # sun_path holds 108 bytes; longer paths go through /proc/self/fd
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_FIELDS = ("records", "task", "modality", "step", "force", "wait")


class RequestError(SinagotError):
    """A request could not be put to the daemon, or its answer not heard."""


class Peer(NamedTuple):
    """The process at the other end of a connection, as the kernel says."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class RunRequest:
    """What `sinagot run` asks for; None means every record, task, modality or step."""

    records: list[str] | None = None
    task: str | None = None
    modality: str | None = None
    step: str | None = None
    force: bool = False
    #: `sinagot run --wait`: the reply names the steps queued and the units already running.
    wait: bool = False

    @classmethod
    def parse(cls, obj: object) -> RunRequest:
        """A request from decoded JSON; ValueError naming the field at fault otherwise, so
        that a wrong type is refused here rather than failing deep in the daemon."""
        if not isinstance(obj, dict):
            raise ValueError(f"a request must be a JSON object, not {_kind(obj)}")
        unknown = sorted(repr(key) for key in obj if key not in _FIELDS)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]} (known: {', '.join(_FIELDS)})")
        records = obj.get("records")
        if records is not None and not (
            isinstance(records, list) and all(isinstance(r, str) for r in records)
        ):
            raise ValueError(
                f"records must be a list of strings or null, not {_records_kind(records)}"
            )
        for name in ("task", "modality", "step"):
            value = obj.get(name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string or null, not {_kind(value)}")
        for name in ("force", "wait"):
            value = obj.get(name, False)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, not {_kind(value)}")
        return cls(
            None if records is None else list(records),
            obj.get("task"), obj.get("modality"), obj.get("step"), obj.get("force", False),
            obj.get("wait", False),
        )  # fmt: skip

    def to_json(self) -> str:
        fields = asdict(self)
        if not self.wait:  # a plain request, as every daemon version reads it
            del fields["wait"]
        return json.dumps(fields)


def _kind(value: object) -> str:
    """A wrong value named by its JSON type, as whoever sent it thinks of it."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "a list", dict: "an object", type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _records_kind(records: object) -> str:
    if isinstance(records, list):
        odd = next(r for r in records if not isinstance(r, str))
        return f"a list holding {_kind(odd)}"
    return _kind(records)


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """A name for `path` that fits in a socket address (108 bytes): itself, or the same file
    reached through /proc/self/fd when its folder's path is too long."""
    if len(os.fsencode(path)) < _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size)
    return Peer(*_CREDENTIALS.unpack(raw))


class _TooLarge(Exception):
    pass


def _read_line(sock: socket.socket, deadline: float, limit: int = MAX_BYTES) -> bytes:
    """One line (without its newline; EOF ends it too) of at most `limit` bytes, read by the
    deadline: a client that trickles bytes cannot hold a thread longer than a silent one."""
    data = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk or b"\n" in chunk:
            data += chunk
            break
        data += chunk
        if len(data) > limit:
            raise _TooLarge
    line = bytes(data.split(b"\n", 1)[0])
    if len(line) > limit:
        raise _TooLarge
    return line


def _send(sock: socket.socket, reply: dict[str, Any], timeout: float) -> None:
    sock.settimeout(timeout)
    with contextlib.suppress(OSError):  # the client left: nobody to tell
        sock.sendall(json.dumps(reply).encode() + b"\n")


OnRequest = Callable[[RunRequest, Peer], dict[str, Any]]
OnRefused = Callable[[Peer, str], None]


class RequestServer:
    """The daemon's end of the socket: a thread per connection, none of them able to stop it.

    `on_request(request, peer)` runs in a connection's thread and returns the reply (a dict
    with "ok"); `on_refused(peer, error)` hears every request refused before that (bad JSON,
    wrong types, too large, too slow, too many at once) or whose `on_request` raised, so that
    the daemon can log it. `start()` binds the socket (bound under a temporary name, made
    0660, then renamed into place, so that a client never meets a half-made one); `close()`
    removes it.
    """

    def __init__(
        self,
        state_dir: Path,
        on_request: OnRequest,
        on_refused: OnRefused | None = None,
        *,
        read_timeout: float = READ_TIMEOUT,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.path = socket_path(state_dir)
        self.on_request = on_request
        self.on_refused = on_refused
        self.read_timeout = read_timeout
        self.max_clients = max_clients
        self._slots = threading.BoundedSemaphore(max_clients)
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None
        self._inode: int | None = None

    def start(self) -> RequestServer:
        """Listen; RequestError naming the socket if it cannot be made there."""
        temp = self.path.with_name(f".{SOCKET_NAME}.{os.getpid()}")
        try:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            with _address(temp) as address:
                server = _Server(address, self)
            try:
                os.chmod(temp, SOCKET_MODE)
                os.rename(temp, self.path)
                self._inode = os.lstat(self.path).st_ino
            except BaseException:
                server.server_close()
                with contextlib.suppress(OSError):
                    temp.unlink()
                raise
        except OSError as exc:
            raise RequestError(
                f"{self.path}: cannot make the request socket: {exc.strerror or exc}; "
                "`sinagot run` cannot reach this daemon until it can"
            ) from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="sinagot-requests", daemon=True,
        )  # fmt: skip
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening and remove the socket (if it is still ours)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            if os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._server = None

    def __enter__(self) -> RequestServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one connection, in its own thread ----------------------------------------------------

    def _connection(self, sock: socket.socket) -> None:
        """Read one request, answer it; refuse anything else. Raises nothing."""
        try:
            peer = _peer(sock)
        except OSError:
            return
        if not self._slots.acquire(blocking=False):
            busy = f"busy: {self.max_clients} requests at once already; ask again"
            self._refuse(sock, peer, busy)
            return
        try:
            self._answer(sock, peer)
        except Exception as exc:  # a bug of ours or of on_request: reported, not fatal
            self._refuse(sock, peer, f"the daemon failed on this request: {exc!r}")
        finally:
            self._slots.release()

    def _answer(self, sock: socket.socket, peer: Peer) -> None:
        try:
            line = _read_line(sock, time.monotonic() + self.read_timeout)
        except TimeoutError:
            error = f"no complete request line within {self.read_timeout:g} s"
            self._refuse(sock, peer, error)
            return
        except _TooLarge:
            self._refuse(sock, peer, f"request larger than {MAX_BYTES} bytes")
            return
        except OSError:
            return  # the client reset the connection: nobody to answer
        try:
            request = RunRequest.parse(json.loads(line))
        except RecursionError:
            self._refuse(sock, peer, "request is not valid JSON: nested too deeply")
            return
        except ValueError as exc:  # bad JSON, bad UTF-8, or a field of the wrong type
            if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
                exc = ValueError(f"request is not valid JSON: {exc}")
            self._refuse(sock, peer, str(exc))
            return
        reply = self.on_request(request, peer)
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise TypeError(f"on_request returned {reply!r}, not a reply with 'ok'")
        _send(sock, reply, self.read_timeout)

    def _refuse(self, sock: socket.socket, peer: Peer, error: str) -> None:
        _send(sock, {"ok": False, "error": error}, self.read_timeout)
        if self.on_refused is not None:
            with contextlib.suppress(Exception):  # the daemon's logging must not kill a thread
                self.on_refused(peer, error)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.owner._connection(self.request)


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True  # a stuck client never delays the daemon's exit
    block_on_close = False
    request_queue_size = MAX_CLIENTS  # the listen backlog; `max_clients` caps those served

    def __init__(self, address: str, owner: RequestServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """`_connection` raises nothing; this keeps socketserver from printing a traceback
        on stderr if it ever did."""


class Handoff:
    """A request crossing from a connection's thread to the daemon's loop, and its answer back.

    The connection's thread puts it on the loop's queue and `wait`s; the loop `take`s it,
    acts, and `answer`s. A request the thread stopped waiting for (the loop was busy too
    long, and the client was told nothing was queued) cannot be taken any more, so the
    client is never told "refused" about steps that then run.
    """

    def __init__(self, request: RunRequest, peer: Peer) -> None:
        self.request = request
        self.peer = peer
        self._lock = threading.Lock()
        self._state = "waiting"  # then "taken" or "abandoned"
        self._answered = threading.Event()
        self._reply: dict[str, Any] = {}

    def take(self) -> bool:
        """Whether the loop may act on it (it must then `answer`)."""
        with self._lock:
            if self._state != "waiting":
                return False
            self._state = "taken"
            return True

    def answer(self, reply: dict[str, Any]) -> None:
        self._reply = reply
        self._answered.set()

    def wait(self, timeout: float) -> dict[str, Any]:
        """The loop's answer; a refusal if it did not take the request within `timeout`."""
        if self._answered.wait(timeout):
            return self._reply
        with self._lock:
            if self._state == "waiting":
                self._state = "abandoned"
                return {
                    "ok": False,
                    "error": f"the daemon was busy and did not take the request within "
                    f"{timeout:g} s; nothing was queued",
                }
        if self._answered.wait(timeout):
            return self._reply
        return {
            "ok": False,
            "error": f"the daemon took the request but did not answer within {2 * timeout:g} s;"
            " it may still queue the steps: see `sinagot status`",
        }


# -- the client ---------------------------------------------------------------------------------


def ask(state_dir: Path, request: RunRequest, timeout: float = 60.0) -> dict[str, Any]:
    """Put a request to the daemon serving this state folder; its reply, plus "pid": the
    answering process's pid as the kernel gives it. RequestError, naming the socket, when
    no daemon answers (nothing was asked then)."""
    path = socket_path(state_dir)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _address(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            raise RequestError(f"nothing answers on {path}; nothing was asked") from None
        except PermissionError:
            raise RequestError(
                f"{path}: permission denied; members of the service's group may ask"
            ) from None
        except OSError as exc:
            why = exc.strerror or exc
            raise RequestError(f"{path}: cannot connect ({why}); nothing was asked") from None
        pid = _peer(sock).pid
        try:
            sock.sendall(request.to_json().encode() + b"\n")
            line = _read_line(sock, deadline, MAX_REPLY_BYTES)
        except TimeoutError:
            raise RequestError(f"no answer on {path} within {timeout:g} s{_MAYBE}") from None
        except _TooLarge:
            raise RequestError(
                f"{path}: the answer is larger than {MAX_REPLY_BYTES} bytes"
            ) from None
        except OSError as exc:
            why = exc.strerror or exc
            raise RequestError(
                f"{path}: connection lost before an answer ({why}){_MAYBE}"
            ) from None
    return _reply(path, line) | {"pid": pid}


_MAYBE = "; the daemon may still act on the request: see `sinagot status`"


def _reply(path: Path, line: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError):
        reply = None
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        shown = line[:80].decode(errors="replace") or "nothing"
        raise RequestError(f"{path}: the answer is not a reply: {shown!r}")
    return reply


# -- waiting: `sinagot run --wait` ------------------------------------------------------------


class RunRow(NamedTuple):
    """A step's row in the state store, as `Waiter` follows it."""

    state: str | None  # 'done' or 'failed' after a finished run
    error: str | None
    finished: float | None
    submitted: float | None  # set while a run of it is queued on the cluster or running
    generation: str | None  # names the last run submitted (kept after it ends)


_ROW_QUERY = "SELECT key, state, error, finished, submitted, generation FROM runs"


def read_rows(store: StateStore, record_ids: Iterable[str] | None = None) -> dict[str, RunRow]:
    """The rows of these records (every row with None), by `run_key`. Read-only: a store that
    does not exist yet reads as empty. StateError naming the file if it cannot be read.

    Through the store's own read connection (so with its checks: no links, errors said as
    `StateError`), with a query of our own: `StateStore`'s readers leave out the
    generation, which tells one run of a step from the next."""
    db = store._connect(write=False)
    if db is None:
        return {}
    try:
        if record_ids is None:
            rows = db.execute(_ROW_QUERY).fetchall()
        else:  # by index, one record at a time: each record's rows are one snapshot
            rows = []
            for record_id in record_ids:
                rows += db.execute(f"{_ROW_QUERY} WHERE record_id = ?", (record_id,)).fetchall()
    except sqlite3.Error as exc:
        store.close()
        raise StateError(explain(store.path, exc, store.busy_timeout)) from exc
    return {row[0]: RunRow._make(row[1:]) for row in rows}


class Ended(NamedTuple):
    """How one step a `--wait` followed ended."""

    unit: Unit
    step: str
    outcome: Outcome
    error: str | None


#: What a step that ended without a recorded finish says: the daemon's `step.failed` event
#: holds the reason (the state store keeps none for a run that could not begin).
NOT_RUN_ERROR = "could not run (sinagotd's step.failed event says why); sinagotd tries it again"

Plan = Callable[[list[Unit], bool, "str | None"], "list[StepPlan]"]


class Waiter:
    """Follows, read-only in the state store, the steps a `sinagot run --wait` asked a
    running sinagotd for, until each has ended; then says how each ended.

    Built from the daemon's reply (`queued_steps`, `busy_units`) and the rows the store held
    just before the request was sent (`before`); fed the rows as they are now by `update`.

    Which run is "ours" is told by the store's rows, not by clocks: a worker's clock may be
    off from this machine's (a Dask worker on another host), and a comparison of its
    `finished` with our time.time() could then wait for ever. A row changes in a known way:
    submitting a run sets `submitted` and a new `generation` (the same one again only when a
    run that never finished is submitted anew); recording its result sets `state`, `error`,
    `finished` and clears `submitted`; a step that did not run (skipped after a failure in
    its unit, or could not begin) only clears `submitted`. So:

    - A queued step has **ended** once its row is not submitted and differs (generation,
      finished or submitted) from `before`. It is **done** or **failed** if it has a new
      `finished` (its `state` says which); otherwise it did not run: **skipped** if an
      earlier step of the same run (same generation) ended without succeeding, else it
      **could not run** (the daemon retries such a step later, on its own schedule: the
      wait does not wait for that, here or for a busy unit).
    - A **busy** unit (on the cluster when the request came) is replanned by the daemon
      when its run lands, with the request's step and force. The rule here: wait until no
      step of it is submitted under the generation that was in flight (it has landed);
      then, without `force`, wait while planning it now (read-only, as the daemon plans it)
      finds an asked step due or in flight; with `force`, take the steps a forced plan
      would run as those the daemon reruns, and wait until each has a run submitted after
      the landing (a generation other than the one in flight and the one before the
      request) that has ended. Its asked steps are then counted as above against `before`
      (against the row seen at landing for a forced rerun, when the landing was seen
      before the rerun began): a step that did not run after the request (up to date, or
      failed long ago) is not counted, as a batch run does not count what it did not plan.

    A step the daemon drops from its queue without running (its queue replanned after a
    change, the step no longer due) is waited for until the timeout: nothing in the store
    tells it from a step still queued.
    """

    def __init__(
        self,
        reply: dict[str, Any],
        before: dict[str, RunRow],
        steps_of: Callable[[Unit], Sequence[str]],
        *,
        force: bool = False,
        only: str | None = None,
    ) -> None:
        self.before = before
        self.steps_of = steps_of
        self.force, self.only = force, only
        self.queued: dict[str, tuple[Unit, str]] = {}  # key -> (unit, step), still waiting
        for item in _items(reply, "queued_steps"):
            unit, step = Unit(*item[:3]), item[3]
            self.queued[run_key(unit, step)] = (unit, step)
        #: busy unit -> the generation in flight when the request came, still waiting
        self.busy: dict[Unit, str] = {
            Unit(*item[:3]): item[3] for item in _items(reply, "busy_units")
        }
        self.total = len(self.queued) + sum(len(self._asked(u)) for u in self.busy)
        self.ended: dict[str, Ended] = {}
        self._reruns: dict[Unit, set[str]] = {}  # forced busy units: steps rerun on landing
        self._at_landing: dict[str, RunRow | None] = {}  # their rows, seen before the rerun

    # -- what is left -----------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return not self.queued and not self.busy

    @property
    def waiting(self) -> int:
        """How many steps are still waited for (a busy unit counts its asked steps)."""
        return len(self.queued) + sum(len(self._asked(u)) for u in self.busy)

    def records(self) -> set[str]:
        """The records whose rows the next `update` needs."""
        return {u.record_id for u, _ in self.queued.values()} | {u.record_id for u in self.busy}

    # -- following -------------------------------------------------------------------------

    def update(self, rows: dict[str, RunRow], plan: Plan) -> None:
        """Take the rows as they are now (at least those of `records()`); `plan(units,
        force, only)` plans units read-only, every step (for the busy units that landed)."""
        for key, (unit, step) in list(self.queued.items()):
            row = rows.get(key)
            if _ended(self.before.get(key), row):
                self.ended[key] = self._outcome(unit, step, rows)
                del self.queued[key]
        landed = [unit for unit, flying in self.busy.items() if self._landed(unit, flying, rows)]
        if not landed:
            return
        plans: dict[Unit, list[StepPlan]] = {}
        if not self.force or any(unit not in self._reruns for unit in landed):
            for p in plan(landed, self.force, self.only):
                plans.setdefault(p.unit, []).append(p)
        for unit in landed:
            if not self._waits(unit, rows, plans.get(unit, [])):
                for step in self._asked(unit):
                    key = run_key(unit, step)
                    if _ended(self._reference(key), rows.get(key)):
                        self.ended[key] = self._outcome(unit, step, rows)
                del self.busy[unit]

    def _asked(self, unit: Unit) -> list[str]:
        names = self.steps_of(unit)
        return [self.only] if self.only in names else [] if self.only else list(names)

    def _landed(self, unit: Unit, flying: str, rows: dict[str, RunRow]) -> bool:
        """No step of the unit is submitted under the generation that was in flight."""
        for step in self.steps_of(unit):
            row = rows.get(run_key(unit, step))
            if row is not None and row.generation == flying and row.submitted is not None:
                return False
        return True

    def _waits(self, unit: Unit, rows: dict[str, RunRow], plans: list[StepPlan]) -> bool:
        """Whether a landed busy unit still has a step the daemon is to run for us."""
        asked = self._asked(unit)
        due = [
            p.step.name
            for p in plans
            if p.step.name in asked and (p.run or p.status == StepStatus.PROCESSING)
        ]
        if self.force:
            if unit not in self._reruns:  # first look since it landed: what gets rerun
                rerun = self._reruns[unit] = set(due)
                for step in rerun:
                    key = run_key(unit, step)
                    row = rows.get(key)
                    if row is None or not self._rerun(unit, key, row):
                        self._at_landing[key] = row
            return any(
                (row := rows.get(run_key(unit, step))) is None
                or row.submitted is not None
                or not self._rerun(unit, run_key(unit, step), row)
                for step in self._reruns[unit]
            )
        for step in due:
            key = run_key(unit, step)
            if (
                _ended(self.before.get(key), rows.get(key))
                and self._outcome(unit, step, rows).outcome is Outcome.NOT_RUN
            ):
                continue  # the daemon retries it on its own schedule: not waited for
            return True
        return False

    def _rerun(self, unit: Unit, key: str, row: RunRow) -> bool:
        """Whether this row's generation was submitted after the busy unit landed."""
        before = self.before.get(key)
        return row.generation not in (self.busy.get(unit), before and before.generation)

    def _reference(self, key: str) -> RunRow | None:
        """What a row is compared with to tell a run of ours: the row before the request,
        or, for a forced rerun of a busy unit, the row as it was when the unit landed."""
        return self._at_landing[key] if key in self._at_landing else self.before.get(key)

    def _outcome(self, unit: Unit, step: str, rows: dict[str, RunRow]) -> Ended:
        key = run_key(unit, step)
        row, reference = rows[key], self._reference(key)
        if _finished(reference, row):
            if row.state == "done":
                return Ended(unit, step, Outcome.DONE, None)
            return Ended(unit, step, Outcome.FAILED, row.error or "failed")
        for earlier in self.steps_of(unit):
            if earlier == step:
                break
            other = run_key(unit, earlier)
            was = rows.get(other)
            if (
                was is not None
                and was.generation == row.generation
                and _ended(self._reference(other), was)
                and not (_finished(self._reference(other), was) and was.state == "done")
            ):
                return Ended(unit, step, Outcome.SKIPPED, f"not run: earlier step {earlier} "
                             "did not succeed")  # fmt: skip
        return Ended(unit, step, Outcome.NOT_RUN, NOT_RUN_ERROR)


def _ended(before: RunRow | None, row: RunRow | None) -> bool:
    """A run of the step ended since `before`: not submitted now, and the row changed."""
    if row is None or row.submitted is not None:
        return False
    if before is None:
        return True  # a row made since (by submitting), and no longer submitted
    return (row.generation, row.finished, row.submitted) != (
        before.generation, before.finished, before.submitted,
    )  # fmt: skip


def _finished(before: RunRow | None, row: RunRow) -> bool:
    """Its last run recorded a result (done or failed) since `before`."""
    return row.finished is not None and row.finished != (before.finished if before else None)


def _items(reply: dict[str, Any], name: str) -> list[list[Any]]:
    """A reply's list of [record_id, task, modality, name]; RequestError if malformed."""
    items = reply.get(name, [])
    fine = isinstance(items, list) and all(
        isinstance(item, list)
        and len(item) == 4
        and isinstance(item[0], str)
        and all(v is None or isinstance(v, str) for v in item[1:3])
        and isinstance(item[3], str)
        for item in items
    )
    if not fine:
        raise RequestError(f"the daemon's reply has a malformed {name!r}")
    return items
