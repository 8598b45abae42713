"""Run requests: how `sinagot run` asks a running sinagotd to run steps, and hears its answer.

The daemon is the workspace's only writer, so a `sinagot run` while it runs does not run
anything itself: it asks the daemon over a Unix socket in the state folder,
`<state>/sinagotd.sock`, and prints what the daemon answered.

Protocol: one JSON object per line each way, each at most `MAX_BYTES`. The client sends a
request (`RunRequest`: records, task, modality, step, force); the server answers one line,
`{"ok": true, "units": U, "steps": S, "busy": B}` or `{"ok": false, "error": "..."}`. The
line framing leaves room for a later `--wait`: such a request would keep the connection open
and get more lines after the first.

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
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .errors import SinagotError

SOCKET_NAME = "sinagotd.sock"
MAX_BYTES = 64 * 1024  # one request or reply line, newline excluded
READ_TIMEOUT = 5.0  # seconds a client has to send its whole request line
MAX_CLIENTS = 16  # connections served at once; more are told to come back
SOCKET_MODE = 0o660
_SUN_PATH_MAX = 100  # sun_path holds 108 bytes; longer paths go through /proc/self/fd
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_FIELDS = ("records", "task", "modality", "step", "force")


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
        force = obj.get("force", False)
        if not isinstance(force, bool):
            raise ValueError(f"force must be true or false, not {_kind(force)}")
        return cls(
            None if records is None else list(records),
            obj.get("task"), obj.get("modality"), obj.get("step"), force,
        )  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(asdict(self))


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


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    """One line (without its newline; EOF ends it too), read by the deadline: a client that
    trickles bytes cannot hold a thread longer than a silent one."""
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
        if len(data) > MAX_BYTES:
            raise _TooLarge
    line = bytes(data.split(b"\n", 1)[0])
    if len(line) > MAX_BYTES:
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
            line = _read_line(sock, deadline)
        except TimeoutError:
            raise RequestError(f"no answer on {path} within {timeout:g} s{_MAYBE}") from None
        except _TooLarge:
            raise RequestError(f"{path}: the answer is larger than {MAX_BYTES} bytes") from None
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
