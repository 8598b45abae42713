"""`sinagotd` facing a user's mistakes at start: one line naming the thing, a documented exit
code (78 for the configuration, 1 for what is wrong around it), never a traceback."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from faults.harness import chattr, chattr_works, clean_env


def sinagotd(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sinagotd", *args, "--once", "--log-format", "json"],
        capture_output=True, text=True, env=env or clean_env(), timeout=timeout, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done, time.monotonic() - started


def error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("sinagotd:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_settle_time_that_is_not_a_finite_number_is_refused(harbor, value):
    done, _ = sinagotd(str(harbor), f"--settle-seconds={value}")
    assert done.returncode == 78
    assert "settle" in error_line(done)


def test_a_settle_time_from_the_environment_is_checked_and_named(harbor):
    done, _ = sinagotd(str(harbor), env=clean_env(SINAGOTD_SETTLE_SECONDS="nan"))
    assert done.returncode == 78
    assert "SINAGOTD_SETTLE_SECONDS" in error_line(done)


def test_a_workspace_that_does_not_exist_is_a_configuration_error(tmp_path):
    done, _ = sinagotd(str(tmp_path / "nowhere"))
    assert done.returncode == 78
    assert "nowhere" in error_line(done)


def test_a_nul_byte_in_a_path_setting_is_a_configuration_error(harbor):
    config = harbor / "workspace.toml"
    config.write_text(config.read_text().replace('"./dataset"', '"./data\\u0000set"'))
    done, _ = sinagotd(str(harbor))
    assert done.returncode == 78
    assert "dataset" in error_line(done)


def test_an_unreachable_scheduler_is_one_line_within_seconds(harbor):
    done, took = sinagotd(str(harbor), "--scheduler", "tcp://127.0.0.1:1")
    assert done.returncode == 1
    assert "tcp://127.0.0.1:1" in error_line(done)
    assert took < 20


def test_a_log_that_is_a_file_is_named_at_start(harbor):
    (harbor / "dataset" / "LOG").write_text("not a folder")
    done, _ = sinagotd(str(harbor))
    assert done.returncode == 1
    assert "LOG" in error_line(done)


def test_a_state_store_that_cannot_be_written_is_named_at_start(harbor, tmp_path):
    if not chattr_works(tmp_path):
        pytest.skip("chattr +i is not available on this file system")
    state = harbor / "dataset" / ".sinagot"
    state.mkdir(parents=True)
    chattr(state, "+i")
    try:
        done, _ = sinagotd(str(harbor))
    finally:
        chattr(state, "-i")
    assert done.returncode == 1
    assert str(state) in error_line(done)
