"""The systemd units verify, and sinagotd behaves under them as systemd expects."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted((ROOT / "systemd").glob("*.service"))
BIN = Path(sys.executable).parent
needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="THE UNITS WERE NOT CHECKED: systemd-analyze is not installed here",
)


def installed(unit: Path, folder: Path) -> Path:
    """The unit as installed here: executables from this virtual environment."""
    text = unit.read_text().replace("/opt/sinagot/bin", str(BIN))
    target = folder / unit.name
    target.write_text(text)
    return target


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_file_verifies(unit, tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "verify", str(installed(unit, tmp_path))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr


#: The most `systemd-analyze security` may score each unit (0 safe .. 10 exposed). The
#: daemon's is lower: it needs no more than loopback and its workspace.
EXPOSURE_BUDGET = {
    "sinagotd@.service": 2.5,
    "dask-scheduler.service": 3.5,
    "dask-worker@.service": 3.5,
}


def exposure(unit: Path) -> tuple[float, str]:
    """The unit's overall exposure score, and the report that explains it."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    report = result.stdout + result.stderr
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
    assert found, f"no score in the report:\n{report}"
    return float(found.group(1)), report


@needs_systemd_analyze
@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_unit_is_hardened_within_its_exposure_budget(unit, tmp_path):
    score, report = exposure(installed(unit, tmp_path))
    exposed = "\n".join(line for line in report.splitlines() if line.startswith("✗"))
    assert score <= EXPOSURE_BUDGET[unit.name], f"{unit.name} scores {score}:\n{exposed}"


def test_daemon_unit_has_what_a_service_needs():
    text = (ROOT / "systemd" / "sinagotd@.service").read_text()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "User=sinagot",
    ):
        assert line in text.splitlines(), line
    stop = int(re.search(r"^TimeoutStopSec=(\d+)$", text, re.M).group(1))
    assert stop > 30, "TimeoutStopSec must leave room for the daemon's 30 s stop grace"
    assert re.search(r"^WatchdogSec=\d+$", text, re.M)
    assert "After=" in text and "dask-scheduler.service" in text


def exec_start(workspace: Path) -> list[str]:
    """The daemon's command line exactly as the unit gives it, for this workspace."""
    text = (ROOT / "systemd" / "sinagotd@.service").read_text()
    line = re.search(r"^ExecStart=(.+)$", text, re.M).group(1)
    line = line.replace("/opt/sinagot/bin", str(BIN)).replace(
        "${SINAGOT_WORKSPACE}", str(workspace)
    )
    return line.split()


def listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def receive_until(sock: socket.socket, wanted: str, seen: list[str], deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        if seen[-1] == wanted:
            return
    pytest.fail(f"no {wanted} from the daemon; received {seen}")


def test_daemon_started_as_the_unit_does_speaks_sd_notify(harbor, tmp_path):
    """READY=1 after the first scan, WATCHDOG=1 pings at half the interval, STOPPING=1."""
    (harbor / "workspace.toml").write_text(
        (harbor / "workspace.toml").read_text()
        + '\n[dask]\nn_workers = 1\ndashboard_address = ":0"\n'
    )
    sock = listen(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen(
        exec_start(harbor), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    seen: list[str] = []
    try:
        receive_until(sock, "READY=1", seen, time.monotonic() + 60)
        with sqlite3.connect(harbor / "dataset" / ".sinagot" / "state.db") as db:
            rows = db.execute("SELECT count(*) FROM runs").fetchone()[0]
        assert rows == 6, "READY=1 comes once the first scan's 6 steps are submitted"
        receive_until(sock, "WATCHDOG=1", seen, time.monotonic() + 5)
        receive_until(sock, "WATCHDOG=1", seen, time.monotonic() + 5)
        proc.send_signal(signal.SIGTERM)
        receive_until(sock, "STOPPING=1", seen, time.monotonic() + 30)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        sock.close()


def test_a_config_error_exits_78_so_systemd_does_not_restart(harbor):
    (harbor / "workspace.toml").write_text('[records]\nid_pattern = "("\n[steps]\nscripts = []\n')
    result = subprocess.run(exec_start(harbor), capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    assert "workspace.toml" in result.stderr and "id_pattern" in result.stderr
    assert "Traceback" not in result.stderr
