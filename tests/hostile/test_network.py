"""The network: closed by default, TLS end to end, a plain answer when no scheduler answers.

Whoever reaches a Dask scheduler or worker runs code as the workers' user, who may write
every workspace. So the embedded cluster and the units listen on loopback unless told
otherwise; a TLS cluster set up as docs/operations.md says ("Security") runs the steps for
a client with a certificate signed by its CA, and nothing for anyone else; and a scheduler
that is not there is one plain line within seconds, not a traceback after a long wait.

Real processes only: sinagotd, `sinagot run`, and `dask scheduler` / `dask worker` started
from the units' own command lines; certificates made with the openssl command line.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from faults.harness import Lab, group_members, wait_until

from .conftest import still_processing

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TLS = "DASK_DISTRIBUTED__COMM__TLS__"
needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None,
    reason="THE TLS TESTS DID NOT RUN: the openssl command line is not installed here",
)


# -- sockets, from /proc ---------------------------------------------------------------------


def listening(pids: list[int]) -> set[tuple[str, int]]:
    """The TCP sockets these processes listen on, as (host, port)."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:  # gone meanwhile
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return {address for inode, address in listening_sockets().items() if inode in inodes}


def listening_sockets() -> dict[str, tuple[str, int]]:
    """Every listening TCP socket of the machine: {inode: (host, port)}."""
    found = {}
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            host, port = fields[1].split(":")
            raw = bytes.fromhex(host)
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found[fields[9]] = (socket.inet_ntop(family, words), int(port, 16))
    return found


def other_addresses() -> set[str]:
    """This machine's own IPv4 addresses other than loopback (its LOCAL host routes)."""
    lines = Path("/proc/net/fib_trie").read_text().splitlines()
    pairs = itertools.pairwise(lines)
    local = {above.split()[-1] for above, line in pairs if "/32 host LOCAL" in line}
    return {address for address in local if not address.startswith("127.")}


def assert_loopback_only(sockets: set[tuple[str, int]]) -> None:
    assert sockets, "no listening socket found"
    wide = sorted(s for s in sockets if s[0] not in ("127.0.0.1", "::1"))
    assert not wide, f"listening beyond loopback: {wide}"
    for address in other_addresses():
        for _, port in sockets:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, port), timeout=2).close()


# -- the units' command lines, and certificates -------------------------------------------------


def unit_environment(name: str) -> dict[str, str]:
    """The variables a unit's Environment= lines set."""
    text = (ROOT / "systemd" / name).read_text()
    lines = re.findall(r"^Environment=(.+)$", text, re.M)
    return dict(word.split("=", 1) for line in lines for word in line.split())


def unit_command(name: str, **env: str) -> list[str]:
    """A unit's ExecStart as systemd runs it here: its Environment= defaults overridden by
    `env` (what its env file would set), the executables of this virtual environment."""
    values = {**unit_environment(name), **env}
    text = (ROOT / "systemd" / name).read_text()
    line = re.search(r"^ExecStart=(.+)$", text, re.M).group(1)
    line = line.replace("/opt/sinagot/bin", str(BIN)).replace("%H", "test").replace("%i", "1")
    return [re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], word) for word in line.split()]


@dataclass
class Certificates:
    """A CA and one key and certificate it signed (every role of a machine uses them)."""

    ca: Path
    cert: Path
    key: Path

    def env(self, *roles: str) -> dict[str, str]:
        """The env file lines of operations.md ("Security") for these Dask roles."""
        env = {f"{TLS}CA_FILE": str(self.ca), "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "true"}
        for role in roles:
            env[f"{TLS}{role.upper()}__CERT"] = str(self.cert)
            env[f"{TLS}{role.upper()}__KEY"] = str(self.key)
        return env


def make_certificates(folder: Path) -> Certificates:
    """A new CA and a certificate it signed, with the commands of operations.md."""
    folder.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        ["req", "-x509", *ec, "-days", "2", "-subj", "/CN=lab CA",
         "-keyout", "ca-key.pem", "-out", "ca.pem"],
        ["req", *ec, "-subj", "/CN=host", "-keyout", "key.pem", "-out", "cert.csr"],
        ["x509", "-req", "-in", "cert.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
         "-CAcreateserial", "-days", "2", "-out", "cert.pem"],
    ):  # fmt: skip
        subprocess.run(["openssl", *command], cwd=folder, capture_output=True, check=True)
    return Certificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")


@pytest.fixture
def lab_certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


# -- a cluster from the units ------------------------------------------------------------------


def start_scheduler(lab: Lab, **env: str) -> tuple[subprocess.Popen, str]:
    """dask-scheduler.service's command line on a free port: the process and its address."""
    command = unit_command("dask-scheduler.service", SCHEDULER_PORT="0", **env)
    log = lab.root / "scheduler.log"
    with log.open("wb") as out:
        proc = lab.spawn(command, env=lab.env(**env), stdout=out, stderr=subprocess.STDOUT)

    def address() -> str | None:
        assert proc.poll() is None, f"dask scheduler exited:\n{log.read_text()}"
        found = re.search(r"Scheduler at:\s+(\S+)", log.read_text())
        return found and found.group(1)

    return proc, wait_until(address, 30, "the dask scheduler says its address")


def start_worker(lab: Lab, scheduler: str, **env: str) -> subprocess.Popen:
    """dask-worker@.service's command line, registered to `scheduler`."""
    command = unit_command("dask-worker@.service", SCHEDULER_ADDRESS=scheduler, **env)
    log = lab.root / f"worker-{len(lab.processes)}.log"
    with log.open("wb") as out:
        proc = lab.spawn(command, env=lab.env(**env), stdout=out, stderr=subprocess.STDOUT)

    def registered() -> bool:
        assert proc.poll() is None, f"dask worker exited:\n{log.read_text()}"
        return "Registered to:" in log.read_text()

    wait_until(registered, 60, "the dask worker registers")
    return proc


@pytest.fixture
def tls_cluster(make_lab, lab_certificates) -> Iterator[tuple[Lab, str]]:
    """A lab and the address of a TLS scheduler with one TLS worker, set up as documented."""
    lab = make_lab(2)
    scheduler_env = {"SCHEDULER_HOST": "tls://127.0.0.1", **lab_certificates.env("scheduler")}
    _, address = start_scheduler(lab, **scheduler_env)
    assert address.startswith("tls://127.0.0.1:")
    start_worker(lab, address, **lab_certificates.env("worker"))
    yield lab, address


def sinagot_run(workspace: Path, scheduler: str, env: dict[str, str]) -> tuple[int, str, float]:
    """`sinagot run` on a scheduler: its exit status, its stderr, how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        [str(BIN / "sinagot"), "run", str(workspace), "--scheduler", scheduler],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return result.returncode, result.stderr, time.monotonic() - started


def assert_refused(status: int, stderr: str, took: float, address: str, why: str) -> None:
    lines = stderr.strip().splitlines()
    assert status == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"not one line:\n{stderr}"
    assert address in lines[0] and why in lines[0], lines[0]
    assert took < 10, f"{took:.1f} s to say: {lines[0]}"


def outputs(lab: Lab) -> list[Path]:
    return (
        sorted((lab.dataset / "computed").glob("*")) if (lab.dataset / "computed").exists() else []
    )


# -- closed by default ---------------------------------------------------------------------


def test_the_embedded_cluster_and_its_dashboard_listen_on_loopback_only(make_lab, outside):
    lab = make_lab(2)
    default = lab.config.read_text().replace('dashboard_address = ":0"\n', "")  # ":8787"
    lab.config.write_text(default)
    daemon = lab.daemon()
    dashboard = urlsplit(daemon.wait_for("daemon.started", timeout=60)["dashboard"])
    daemon.wait_for("daemon.idle", timeout=60)

    sockets = listening(group_members(daemon.pid))
    assert_loopback_only(sockets)
    assert (dashboard.hostname, dashboard.port) in sockets, "daemon.started names another address"
    still_processing(lab, daemon)


def test_the_scheduler_and_worker_units_listen_on_loopback_by_default(make_lab):
    lab = make_lab(1)
    dashboard = unit_environment("dask-scheduler.service").get("DASHBOARD_ADDRESS", ":8787")
    dashboard_host = dashboard.rsplit(":", 1)[0]
    scheduler, address = start_scheduler(lab, DASHBOARD_ADDRESS=f"{dashboard_host}:0")
    worker = start_worker(lab, address)

    assert_loopback_only(listening(group_members(scheduler.pid)))
    assert_loopback_only(listening(group_members(worker.pid)))


def test_a_malformed_dashboard_address_is_one_line_naming_the_key(make_lab):
    lab = make_lab(2)
    config = lab.config.read_text().replace('":0"', '"localhost:8787:1"')
    lab.config.write_text(config + '\n[run]\nmode = "dask"\n')
    result = subprocess.run(
        [str(BIN / "sinagot"), "run", str(lab.ws)],
        env=lab.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 78, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "dashboard_address" in line and "localhost:8787:1" in line, line
    assert outputs(lab) == []


# -- a scheduler that is not there ------------------------------------------------------------


@pytest.mark.parametrize("program", ["sinagot run", "sinagotd --once"])
def test_an_unreachable_scheduler_is_one_plain_line_within_seconds(make_lab, program):
    lab = make_lab(2)
    command = [str(BIN / program.split()[0]), *program.split()[1:], str(lab.ws)]
    started = time.monotonic()
    result = subprocess.run(
        [*command, "--scheduler", "tcp://127.0.0.1:1"],
        env=lab.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    took = time.monotonic() - started
    assert_refused(result.returncode, result.stderr, took, "tcp://127.0.0.1:1", "refused")
    assert outputs(lab) == []


def test_a_port_that_never_answers_is_reported_within_the_timeout(make_lab):
    """A port that accepts connections and says nothing (not a Dask scheduler): Dask alone
    waits on it for ever."""
    lab = make_lab(2)
    with socket.create_server(("127.0.0.1", 0)) as mute:
        address = f"tcp://127.0.0.1:{mute.getsockname()[1]}"
        status, stderr, took = sinagot_run(lab.ws, address, lab.env())
    assert_refused(status, stderr, took, address, "no answer within 5 s")
    assert outputs(lab) == []


# -- TLS -----------------------------------------------------------------------------------------


@needs_openssl
def test_steps_run_over_tls_and_a_client_without_certificates_is_refused_in_one_line(
    tls_cluster, lab_certificates, make_lab, outside
):
    lab, address = tls_cluster
    daemon = lab.daemon("--scheduler", address, env=lab.env(**lab_certificates.env("client")))
    assert daemon.wait_for("daemon.started", timeout=60)["scheduler"] == address
    for rid in lab.ids():
        for step in ("count", "mean"):
            daemon.wait_for("step.finished", timeout=60, record_id=rid, step=step)

    other = make_lab(2)
    no_tls = sinagot_run(other.ws, address, other.env())
    assert_refused(*no_tls, address, "needs a client certificate")
    plain = address.replace("tls://", "tcp://")
    assert_refused(*sinagot_run(other.ws, plain, other.env()), plain, "no answer")
    assert outputs(other) == []
    still_processing(lab, daemon)


ATTACK = """
import sys
from distributed import Client

with Client(sys.argv[1], timeout=5) as client:
    client.submit(open, sys.argv[2], "w").result()
"""


@needs_openssl
def test_a_self_made_certificate_runs_nothing_on_the_tls_cluster(
    tls_cluster, lab_certificates, tmp_path, outside
):
    lab, address = tls_cluster
    rogue = make_certificates(tmp_path / "rogue")
    for certificates in (rogue, Certificates(lab_certificates.ca, rogue.cert, rogue.key)):
        env = lab.env(**certificates.env("client"))
        attack = subprocess.run(
            [sys.executable, "-c", ATTACK, address, str(outside.file)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert attack.returncode != 0, "a client with a self-made certificate ran a task"
        assert_refused(*sinagot_run(lab.ws, address, env), address, "TLS handshake failed")
    assert outputs(lab) == []

    daemon = lab.daemon("--scheduler", address, env=lab.env(**lab_certificates.env("client")))
    still_processing(lab, daemon)
