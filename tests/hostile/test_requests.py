"""`sinagot run` talking to a running daemon over its socket: whatever a client sends (wrong
types, garbage bytes, a line too long, nothing at all, too many at once), it gets a one-line
refusal naming the fault, and the server, and the daemon behind it, go on serving.

Real sockets, real client processes (some as another user, to test the socket's mode and
the peer credentials), a real sinagotd for the end-to-end cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import queue
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from faults.harness import DaemonRun, Lab, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinagot.requests import (
    MAX_BYTES,
    SOCKET_NAME,
    Handoff,
    Peer,
    RequestError,
    RequestServer,
    RunRequest,
    ask,
)

from .conftest import still_processing

FIELDS = ("records", "task", "modality", "step", "force")


# -- helpers --------------------------------------------------------------------------------


@contextlib.contextmanager
def connected(path: Path, timeout: float = 10) -> Iterator[socket.socket]:
    """A raw client connection (through /proc/self/fd: test folders have long paths)."""
    folder = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(f"/proc/self/fd/{folder}/{path.name}")
        yield sock
    finally:
        sock.close()
        os.close(folder)


def read_reply(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while b"\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data.split(b"\n", 1)[0])


def exchange(path: Path, payload: bytes) -> dict[str, Any]:
    """Send raw bytes, close the sending side, read the one-line reply."""
    with connected(path) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused midway
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        return read_reply(sock)


@dataclass
class Desk:
    """What a test server handed to its callbacks."""

    requests: list[tuple[RunRequest, Peer]] = field(default_factory=list)
    refused: queue.Queue[tuple[Peer, str]] = field(default_factory=queue.Queue)

    def on_request(self, request: RunRequest, peer: Peer) -> dict[str, Any]:
        self.requests.append((request, peer))
        return {"ok": True, "units": 1, "steps": len(request.records or []), "busy": 0}

    def on_refused(self, peer: Peer, error: str) -> None:
        self.refused.put((peer, error))

    def next_refusal(self) -> tuple[Peer, str]:
        return self.refused.get(timeout=10)


@pytest.fixture
def desk() -> Desk:
    return Desk()


@pytest.fixture
def server(shared: Path, desk: Desk) -> Iterator[RequestServer]:
    with RequestServer(shared, desk.on_request, desk.on_refused, read_timeout=1.0) as srv:
        yield srv


def nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root, to run a client as another user")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")


ASK = """
import json, os, sys
from pathlib import Path
from sinagot.requests import RequestError, RunRequest, ask
uid, gid, groups = int(sys.argv[2]), int(sys.argv[3]), [int(g) for g in sys.argv[4:]]
os.setgroups(groups)  # from here on, this process is that user
os.setgid(gid)
os.setuid(uid)
try:
    reply = ask(Path(sys.argv[1]), RunRequest(records=["REC-1"], force=True), timeout=20)
except RequestError as exc:
    print(exc)
    sys.exit(1)
print(json.dumps(reply))
"""


def ask_as(user: pwd.struct_passwd, state_dir: Path, groups: list[int]) -> subprocess.Popen:
    """A client process running as `user` (it drops root itself: the interpreter lives
    where other users may not go)."""
    ids = [user.pw_uid, user.pw_gid, *groups]
    return subprocess.Popen(
        [sys.executable, "-c", ASK, str(state_dir), *map(str, ids)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


# -- the server, alone ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b'{"records": 5}\n', "records must be a list of strings or null, not a number"),
        (b'{"records": ["A", 7]}\n', "records must be a list of strings or null, not a list"),
        (b'{"task": ["x"]}\n', "task must be a string or null, not a list"),
        (b'{"step": {"a": 1}}\n', "step must be a string or null, not an object"),
        (b'{"force": "yes"}\n', "force must be true or false, not a string"),
        (b'{"force": 1}\n', "force must be true or false, not a number"),
        (b'{"records": null, "rm": "-rf"}\n', "unknown key 'rm'"),
        (b"[1, 2]\n", "a request must be a JSON object, not a list"),
        (b"hello\n", "request is not valid JSON"),
        (b"\xff\xfe\x00garbage\n", "request is not valid JSON"),
        (b"[" * 60000 + b"\n", "request is not valid JSON"),
        (b"", "request is not valid JSON"),
    ],
    ids=["records-number", "records-mixed", "task-list", "step-object", "force-string",
         "force-number", "unknown-key", "not-an-object", "not-json", "not-utf8",
         "nested-deep", "empty"],
)  # fmt: skip
def test_a_malformed_request_is_refused_naming_the_field_and_never_handed_over(
    server, desk, payload, says
):
    reply = exchange(server.path, payload)
    assert reply["ok"] is False
    assert says in reply["error"]
    peer, error = desk.next_refusal()
    assert (peer.pid, peer.uid, error) == (os.getpid(), os.geteuid(), reply["error"])
    assert desk.requests == []
    assert ask(server.path.parent, RunRequest(records=["R"]))["ok"] is True  # still serving


def test_a_request_over_64_kib_is_refused_and_the_server_goes_on(server, desk):
    line = json.dumps({"records": ["R" * 100] * 700}).encode() + b"\n"
    assert len(line) > MAX_BYTES
    reply = exchange(server.path, line)
    assert reply == {"ok": False, "error": f"request larger than {MAX_BYTES} bytes"}
    reply = exchange(server.path, b"x" * (4 * MAX_BYTES))  # no newline at all
    assert reply == {"ok": False, "error": f"request larger than {MAX_BYTES} bytes"}
    assert desk.requests == []
    assert ask(server.path.parent, RunRequest(records=["R"]))["steps"] == 1


def test_a_silent_client_is_cut_off_at_the_read_timeout_while_others_are_served(server, desk):
    with connected(server.path) as silent, connected(server.path) as trickling:
        trickling.sendall(b'{"records": ')
        reply = ask(server.path.parent, RunRequest(records=["A", "B"]))
        assert reply["ok"] is True and reply["steps"] == 2  # not held up by either
        for sock in (silent, trickling):
            refusal = read_reply(sock)
            assert refusal == {"ok": False, "error": "no complete request line within 1 s"}
    assert [request.records for request, _ in desk.requests] == [["A", "B"]]


def test_too_many_clients_at_once_are_told_to_come_back(shared):
    entered, release = threading.Semaphore(0), threading.Event()

    def slow(request: RunRequest, peer: Peer) -> dict[str, Any]:
        entered.release()
        release.wait(20)
        return {"ok": True}

    with RequestServer(shared, slow, max_clients=2) as server:
        replies: queue.Queue[dict[str, Any]] = queue.Queue()
        threads = [
            threading.Thread(target=lambda: replies.put(ask(shared, RunRequest())))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for _ in threads:
            assert entered.acquire(timeout=10), "the first two requests were not handed over"
        busy = exchange(server.path, b"{}\n")
        assert busy == {"ok": False, "error": "busy: 2 requests at once already; ask again"}
        release.set()
        assert [replies.get(timeout=10)["ok"] for _ in threads] == [True, True]
        for thread in threads:
            thread.join(timeout=10)
        assert ask(shared, RunRequest())["ok"] is True  # the slots came back


def test_a_failing_daemon_callback_is_a_refusal_not_a_dead_server(shared, desk):
    def broken(request: RunRequest, peer: Peer) -> dict[str, Any]:
        raise RuntimeError("the loop is gone")

    with RequestServer(shared, broken, desk.on_refused) as server:
        reply = exchange(server.path, b"{}\n")
        assert reply["ok"] is False and "the loop is gone" in reply["error"]
        assert "the loop is gone" in desk.next_refusal()[1]
        assert exchange(server.path, b"{}\n")["ok"] is False  # still answering


def test_the_socket_is_0660_group_members_may_ask_others_may_not(server, desk, shared):
    user = nobody()
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660

    member = ask_as(user, shared, [os.stat(server.path).st_gid])
    out, err = member.communicate(timeout=60)
    assert member.returncode == 0, err
    reply = json.loads(out)
    assert reply["ok"] is True and reply["pid"] == os.getpid()  # who answered, per the kernel
    ((request, peer),) = desk.requests
    assert request == RunRequest(records=["REC-1"], force=True)
    assert (peer.pid, peer.uid) == (member.pid, user.pw_uid)  # who asked, per the kernel

    stranger = ask_as(user, shared, [])
    out, err = stranger.communicate(timeout=60)
    assert stranger.returncode == 1, out + err
    assert (
        out.strip() == f"{server.path}: permission denied; members of the service's group may ask"
    )
    assert len(desk.requests) == 1


def test_a_stale_socket_left_by_a_killed_daemon_is_replaced_and_removed_at_close(shared, desk):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(shared / SOCKET_NAME))
    stale.close()  # a killed daemon leaves its socket file behind
    with pytest.raises(RequestError, match="nothing answers on"):
        ask(shared, RunRequest())

    with RequestServer(shared, desk.on_request) as server:
        assert ask(shared, RunRequest(records=["X"]))["ok"] is True
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
    assert sorted(os.listdir(shared)) == []  # neither the socket nor a temporary name
    with pytest.raises(RequestError, match=f"nothing answers on {shared / SOCKET_NAME}"):
        ask(shared, RunRequest())


def test_a_daemon_that_accepts_but_never_answers_is_a_named_timeout(shared):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as frozen:
        frozen.bind(str(shared / SOCKET_NAME))
        frozen.listen()  # the kernel accepts connections; nobody reads them
        with pytest.raises(RequestError) as caught:
            ask(shared, RunRequest(), timeout=0.5)
    assert str(caught.value) == (
        f"no answer on {shared / SOCKET_NAME} within 0.5 s; the daemon may still act on the "
        "request: see `sinagot status`"
    )


def test_a_state_folder_with_a_path_too_long_for_a_socket_address_still_works(shared, desk):
    deep = shared / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(deep / SOCKET_NAME)) > 108
    with RequestServer(deep, desk.on_request):
        assert ask(deep, RunRequest(records=["A"]))["steps"] == 1
    assert os.listdir(deep) == []


def test_a_folder_in_the_way_of_the_socket_is_a_named_error(shared, desk):
    (shared / SOCKET_NAME).mkdir()
    with pytest.raises(RequestError) as caught:
        RequestServer(shared, desk.on_request).start()
    assert str(caught.value).startswith(f"{shared / SOCKET_NAME}: cannot make the request socket")
    assert os.listdir(shared) == [SOCKET_NAME]  # no temporary socket left


def test_a_request_the_loop_does_not_take_in_time_is_refused_and_never_runs():
    handoff = Handoff(RunRequest(), Peer(1, 0, 0))
    reply = handoff.wait(0.1)  # nobody takes it
    assert reply["ok"] is False and "nothing was queued" in reply["error"]
    assert handoff.take() is False  # the loop, late, must not act on it

    taken = Handoff(RunRequest(), Peer(1, 0, 0))
    assert taken.take() is True
    threading.Timer(0.05, taken.answer, [{"ok": True, "steps": 3}]).start()
    assert taken.wait(10) == {"ok": True, "steps": 3}


# -- fuzzing --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
request_like = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=8) | st.integers() | st.none(),
    json_values | st.lists(st.text(max_size=12), max_size=3),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(obj=request_like | json_values)
def test_parse_raises_nothing_but_value_error_and_round_trips(obj):
    try:
        request = RunRequest.parse(obj)
    except ValueError as exc:
        assert str(exc)
    else:
        assert RunRequest.parse(json.loads(request.to_json())) == request


payloads = (
    st.binary(max_size=300)
    | request_like.map(lambda obj: json.dumps(obj, default=str).encode() + b"\n")
    | st.tuples(request_like, st.binary(max_size=50)).map(
        lambda t: json.dumps(t[0], default=str).encode() + t[1]
    )
)


def test_arbitrary_bytes_never_kill_a_live_server(server, desk):
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(payload=payloads)
    def send(payload: bytes) -> None:
        reply = exchange(server.path, payload)
        assert isinstance(reply["ok"], bool)
        assert reply["ok"] or (isinstance(reply["error"], str) and reply["error"])

    send()
    reply = ask(server.path.parent, RunRequest(records=["LAST"]))
    assert reply["ok"] is True
    assert desk.requests[-1][0] == RunRequest(records=["LAST"])


# -- a real daemon ----------------------------------------------------------------------------


def socket_of(lab: Lab) -> Path:
    return lab.dataset / ".sinagot" / SOCKET_NAME


def ready_daemon(lab: Lab) -> DaemonRun:
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=60)
    wait_until(socket_of(lab).exists, 10, "the daemon's request socket", daemon.diagnosis)
    return daemon


def test_a_running_daemon_refuses_malformed_requests_and_keeps_processing(make_lab, outside):
    lab = make_lab(2)
    daemon = ready_daemon(lab)
    mark = daemon.mark()
    bad = [b'{"records": 5}\n', b'{"task": ["x"]}\n', b"\x00\x01\x02\n", b"{" * 70000]
    for payload in bad:
        assert exchange(socket_of(lab), payload)["ok"] is False
    with connected(socket_of(lab), timeout=30) as silent:
        assert read_reply(silent)["ok"] is False  # cut off at the read timeout
    refused = daemon.wait_count("run.refused", len(bad) + 1, since=mark)
    assert all(event["peer_pid"] == os.getpid() for event in refused)
    assert any("records must be a list" in event["error"] for event in refused)
    assert not daemon.seen("step.submitted", since=mark)
    still_processing(lab, daemon)


def test_sinagot_run_gets_the_running_daemons_answer_and_leaves_no_file(make_lab):
    lab = make_lab(2)
    daemon = ready_daemon(lab)
    rid = lab.ids()[0]
    mark = daemon.mark()
    command = [sys.executable, "-m", "sinagot", "run", str(lab.ws), "--record", rid, "--force"]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=lab.env())  # fmt: skip
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 0, out + err
    assert out.startswith(
        f"sinagotd pid {daemon.pid} is running this workspace: it queued 2 step(s) of 1 unit(s)"
    )
    requested = daemon.wait_for("run.requested", since=mark, force=True)
    assert (requested["peer_pid"], requested["steps"]) == (cli.pid, 2)
    for step in ("count", "mean"):
        daemon.wait_for("step.finished", since=mark, record_id=rid, step=step)
    assert "requests" not in os.listdir(lab.dataset / ".sinagot")  # nothing for it to delete
