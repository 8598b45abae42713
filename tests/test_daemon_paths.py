"""Daemon paths no other test walks: a second SIGTERM, an unreachable scheduler at start,
`run.refused` over the socket, settings from `SINAGOTD_*` variables, console events, and a
Dask client that closed just before a burst is submitted.

Real sinagotd processes on real files (tests/test_daemon.py's `sinagotd` fixture, or
tests/faults' `Lab` where a scenario needs holds, an external cluster or the books).
Waits are polls or events with deadlines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from faults.harness import (
    Lab,
    clean_env,
    free_port,
    group_members,
    state_store_locked,
    wait_until,
)
from test_daemon import LINUX_ONLY, counted_boats, write_record

from sinagot.requests import SOCKET_NAME

pytestmark = LINUX_ONLY

ANSI = re.compile(r"\x1b\[[0-9;]*m")
GRACE = 60  # seconds: far longer than any wait below, so that a stop within it is seen


def run_sinagotd(workspace: Path, *flags: str, env: dict[str, str], timeout: float = 90):
    """`sinagotd WORKSPACE FLAGS` in its own process group, to its end (killed whole after
    `timeout`): (status, stdout, stderr)."""
    command = [sys.executable, "-m", "sinagotd", str(workspace), *flags]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"sinagotd {' '.join(flags)} did not end within {timeout} s\n{err[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left in its group
    return proc.returncode, out, err


def json_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def held_steps_begun(lab: Lab, ids: list[str], count: int) -> list[str]:
    """Wait until `count` of these records have a step under way; those records, in the
    order they began."""

    def begun() -> list[str] | None:
        order = list(dict.fromkeys(r for r, _, _, _ in lab.started() if r in ids))
        return order if len(order) >= count else None

    return wait_until(begun, 60, f"{count} of {ids} under way", lab.diagnosis)


def exited_within(proc: subprocess.Popen, seconds: float) -> int | None:
    """Its status if it exits within `seconds`, else None (it is left running)."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


# -- 1. SIGTERM, then a second SIGTERM, with steps in flight ---------------------------------


def test_a_second_sigterm_in_the_grace_period_stops_at_once_and_nothing_is_lost(make_lab):
    """Three new records on two workers, all held mid-run: SIGTERM withdraws the queued one;
    one running step is let go and lands during the grace period; a second SIGTERM stops
    the daemon at once (not after the 60 s grace), with the other step still running. The
    next start runs the cut-short step and the withdrawn unit, each once, and not the one
    that landed."""
    lab = make_lab(2, grace=GRACE)
    daemon = lab.daemon()
    lab.settle()
    new = [f"REC-0000000{n}" for n in (2, 3, 4)]
    lab.hold(*(f"hold-{rid}" for rid in new))
    assert lab.add([2, 3, 4]) == new
    landed, cut_short = held_steps_begun(lab, new, 2)[:2]
    (withdrawn,) = set(new) - {landed, cut_short}

    mark = daemon.mark()
    daemon.proc.send_signal(signal.SIGTERM)
    stopping = daemon.wait_for("daemon.stopping", since=mark)
    assert (stopping["in_flight"], stopping["withdrawn"]) == (2, 1)
    lab.release(f"hold-{landed}")  # lands inside the grace loop: it is being waited for
    daemon.wait_for("step.finished", since=mark, record_id=landed, step="mean")

    second = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)
    status = exited_within(daemon.proc, 15)
    took = time.monotonic() - second
    assert status == 0, f"still running {took:.1f} s after the second SIGTERM"
    daemon.drain()
    assert daemon.seen("daemon.stopped", since=mark)[0]["in_flight"] == 1
    assert "Traceback" not in daemon.stderr()
    # Its workers went with it: the cut-short step cannot finish unheard and leave a receipt.
    wait_until(lambda: not group_members(daemon.pid), 15, "the daemon's workers gone")
    assert not lab.output(cut_short, "count").exists()

    lab.release()
    again = lab.daemon()
    books = lab.settle(timeout=60)  # every due step ran to success exactly once
    rerun = again.seen("step.submitted")
    assert {(e["record_id"], e["step"]) for e in rerun} == {
        (rid, step) for rid in (cut_short, withdrawn) for step in ("count", "mean")
    }
    count = next(e for e in rerun if (e["record_id"], e["step"]) == (cut_short, "count"))
    assert "the last run did not finish" in count["reasons"], count
    for rid in new:
        assert books.runs[(rid, "count")] == books.runs[(rid, "mean")] == 1


def test_a_second_sigterm_right_after_stopping_is_said_stops_at_once(make_lab):
    """Ctrl-C twice in a row: the second comes as soon as `daemon.stopping` is written."""
    lab = make_lab(1, grace=GRACE)
    daemon = lab.daemon()
    lab.settle()
    lab.hold("hold-REC-00000001")
    lab.add([1])
    lab.wait_started("REC-00000001", "count")

    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_for("daemon.stopping")
    daemon.proc.send_signal(signal.SIGTERM)
    assert exited_within(daemon.proc, 15) == 0, "the second SIGTERM waited for the grace"


# -- 2. an unreachable scheduler at start ---------------------------------------------------


def test_an_unreachable_scheduler_at_start_exits_1_naming_it(ws, sinagotd):
    address = f"tcp://127.0.0.1:{free_port()}"  # closed: nothing listens there
    began = time.monotonic()
    daemon = sinagotd(ws, "--scheduler", address)
    assert daemon.wait(timeout=60) == 1
    assert time.monotonic() - began < 30  # refused at once, not a connect timeout
    lines = [line for line in daemon.stderr().splitlines() if line.strip()]
    assert len(lines) == 1 and address in lines[0], lines
    assert "Traceback" not in daemon.stderr()
    failed = daemon.seen("daemon.failed")
    assert len(failed) == 1 and address in failed[0]["error"], daemon.events
    assert not daemon.seen("daemon.started") and not daemon.seen("step.submitted")


# -- 3. run.refused --------------------------------------------------------------------------


def exchange(state_dir: Path, payload: bytes) -> dict[str, Any]:
    """Send raw bytes to the daemon's socket (through /proc/self/fd: test paths are long),
    then read its one-line reply."""
    folder = os.open(state_dir, os.O_PATH | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(15)
            sock.connect(f"/proc/self/fd/{folder}/{SOCKET_NAME}")
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while b"\n" not in data and (chunk := sock.recv(65536)):
                data += chunk
    finally:
        os.close(folder)
    return json.loads(data.split(b"\n", 1)[0])


def test_malformed_requests_are_refused_and_the_daemon_goes_on(ws, sinagotd):
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")
    mark = daemon.mark()
    state = ws / "dataset" / ".sinagot"
    asks = {
        b"{not json\n": "request is not valid JSON",
        b'{"records": "REC-20200601"}\n': "records must be a list of strings or null",
        b'{"step": "median"}\n': "no step 'median' here; steps: count, mean",  # the loop's
    }
    for payload, error in asks.items():
        reply = exchange(state, payload)
        assert reply["ok"] is False and error in reply["error"], (payload, reply)
        refused = daemon.wait_for("run.refused", error=reply["error"])
        assert refused["peer_pid"] == os.getpid()
    assert not daemon.seen("run.requested") and not daemon.seen("step.submitted", since=mark)

    write_record(ws, "REC-20200604", n_rows=5)
    daemon.wait_for("step.finished", record_id="REC-20200604", step="mean")
    assert counted_boats(ws, "REC-20200604") == 5
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()


# -- 4. settings from SINAGOTD_* variables ----------------------------------------------------


def test_settle_seconds_from_the_environment(ws):
    with (ws / "workspace.toml").open("a") as file:
        file.write("\n[daemon]\nsettle_seconds = 5\n")
    env = clean_env(SINAGOTD_SETTLE_SECONDS="0.7")

    status, out, err = run_sinagotd(ws, "--once", "--log-format", "json", env=env)
    assert status == 0, err
    started = next(e for e in json_events(out) if e["event"] == "daemon.started")
    assert started["settle_seconds"] == 0.7  # the variable wins over [daemon]

    flag = ("--once", "--log-format", "json", "--settle-seconds", "0.4")
    status, out, err = run_sinagotd(ws, *flag, env=env)
    assert status == 0, err
    started = next(e for e in json_events(out) if e["event"] == "daemon.started")
    assert started["settle_seconds"] == 0.4  # the flag wins over the variable


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_settle_seconds_variable_exits_78_naming_it(ws, value):
    env = clean_env(SINAGOTD_SETTLE_SECONDS=value)
    status, out, err = run_sinagotd(ws, "--log-format", "json", env=env, timeout=60)
    assert status == 78, err
    assert "$SINAGOTD_SETTLE_SECONDS" in err and repr(value) in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not any(e["event"] == "daemon.started" for e in json_events(out))


# -- 5. --log-format console ----------------------------------------------------------------


def test_console_events_are_lines_for_people(ws):
    env = clean_env(NO_COLOR="1", FORCE_COLOR="1")  # NO_COLOR wins, even when forced
    flags = ("--once", "--log-format", "console", "--settle-seconds", "0.3")
    status, out, err = run_sinagotd(ws, *flags, env=env)
    assert status == 0, err
    lines = out.splitlines()
    assert lines and not ANSI.search(out) and "\x1b" not in out, out[:500]
    for line in lines:
        assert not line.lstrip().startswith("{"), line  # no JSON
    submitted = [line for line in lines if " step.submitted " in line]
    assert len(submitted) == 6, out
    one = next(
        line for line in submitted if "record_id=REC-20200601" in line and "step=count" in line
    )
    assert "output computed/REC-20200601-count.csv is missing" in one  # the reason, as text
    assert "[" not in one.split("step.submitted", 1)[1], one  # not a list's repr
    assert "task=" not in out and "modality=" not in out  # empty (None) fields left out
    started = next(line for line in lines if " daemon.started " in line)
    assert "status_page=" not in started  # none with --once
    assert "settle_seconds=0.3" in started

    status, out, err = run_sinagotd(ws, *flags, env=clean_env(FORCE_COLOR="1"))
    assert status == 0, err
    assert ANSI.search(out), "FORCE_COLOR alone colours the same lines"


# -- 6. the Dask client closed just before a burst is submitted --------------------------------


def test_a_client_closed_when_a_burst_is_submitted_is_a_lost_cluster(make_lab):
    """The scheduler is killed -9 while the daemon is idle, and the loop is held at its next
    state-store write (the store locked, as on a slow disk) while a new recording settles:
    the loop stalls marking the burst submitted, the Dask client gives up reconnecting
    meanwhile, and the submit that follows meets a closed client. Expected: cluster.lost
    naming that error (not a crash), then, once a scheduler listens again,
    cluster.reconnected and the recording processed once."""
    lab = make_lab(1)
    cluster = lab.cluster(free_port())
    cluster.start_scheduler()
    cluster.start_worker()
    cluster.wait_workers(1)
    daemon = lab.daemon("--scheduler", cluster.address)
    lab.settle()

    mark = daemon.mark()
    with state_store_locked(lab):
        cluster.stop_scheduler(signal.SIGKILL)
        lab.add([1])
        daemon.wait_for("record.arriving", since=mark)
        wait_until(
            lambda: "closing client" in daemon.stderr(), 40,
            "the daemon's Dask client gives up reconnecting", daemon.diagnosis,
        )  # fmt: skip
    lost = daemon.wait_for("cluster.lost", since=mark, timeout=30)
    # `_submit`'s own words (the loop's check would say "client closed").
    assert lost["error"].startswith("ClosedClientError"), lost
    assert lost["scheduler"] == cluster.address and lost["in_flight"] == 1, lost

    offsets = cluster.log_offsets()
    cluster.start_scheduler()
    cluster.start_worker()
    cluster.wait_workers(1, since=offsets)
    back = daemon.wait_for("cluster.reconnected", since=mark, timeout=60)
    assert back["resubmitting"] == 1
    books = lab.settle(timeout=60)
    assert books.runs[("REC-00000001", "count")] == books.runs[("REC-00000001", "mean")] == 1
    assert daemon.proc.poll() is None
    assert "Traceback" not in daemon.stderr()
