"""What a reload changes (sinagotd.reload), on real configurations read from a workspace's
files: what is refused until a restart, and when the watched folders move."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sinagot.config import Config, load_config
from sinagotd.reload import Change, compare
from sinagotd.settings import DaemonSettings, load_settings


@pytest.fixture(autouse=True)
def no_daemon_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings come from the files alone (conftest sets a status port for daemons)."""
    monkeypatch.delenv("SINAGOTD_STATUS_PORT", raising=False)


def read(source: Path | list[Path]) -> tuple[Config, DaemonSettings]:
    config = load_config(source)
    return config, load_settings(config)


def saved(harbor: Path, text: str) -> Path:
    """The harbor workspace's configuration with `text` appended (a user's edit)."""
    toml = harbor / "workspace.toml"
    toml.write_text(toml.read_text() + text)
    return toml


def reload(old: Path | list[Path], new: Path | list[Path]) -> Change:
    """Compare the configuration read from `old` (running) with that read from `new`."""
    old_config, old_settings = read(old)
    new_config, new_settings = read(new)
    return compare(old_config, new_config, old_settings, new_settings)


def edited(harbor: Path, text: str) -> Change:
    """Reload after `text` is appended to the harbor workspace's configuration."""
    old_config, old_settings = read(harbor / "workspace.toml")
    new_config, new_settings = read(saved(harbor, text))
    return compare(old_config, new_config, old_settings, new_settings)


def test_the_same_configuration_changes_nothing(harbor: Path) -> None:
    change = reload(harbor / "workspace.toml", harbor / "workspace.toml")
    assert change.refused is None and not change.folders_moved


def test_settings_that_apply_in_place_are_applied(harbor: Path) -> None:
    change = edited(harbor, "\n[daemon]\nsettle_seconds = 5\nrescan_seconds = 60\n")
    assert change.refused is None and not change.folders_moved


def test_moving_the_dataset_is_refused_and_says_restart(harbor: Path) -> None:
    (harbor / "elsewhere").mkdir()
    toml = harbor / "workspace.toml"
    moved = harbor / "moved.toml"
    moved.write_text(toml.read_text().replace('"./dataset"', '"./elsewhere"'))
    change = reload(toml, moved)
    assert change.moved == "[path] dataset"
    assert change.refused == (
        "[path] dataset changed: restart sinagotd to apply it (kept the running config)"
    )


def test_moving_the_state_folder_is_refused_naming_its_key(harbor: Path) -> None:
    change = edited(harbor, '\n[state]\npath = "./elsewhere-state"\n')
    assert change.moved == "[state] path"
    assert change.refused is not None and change.refused.startswith("[state] path changed:")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("status_port = 8799", "status_port"),
        ('status_host = "0.0.0.0"', "status_host"),
        ("status_page = false", "status_page"),
    ],
)
def test_the_status_pages_address_is_bound_at_start(harbor: Path, text: str, key: str) -> None:
    change = edited(harbor, f"\n[daemon]\n{text}\n")
    assert change.moved == f"[daemon] {key}"


def test_moving_the_scripts_folder_applies_and_moves_the_watch(harbor: Path) -> None:
    shutil.copytree(harbor / "scripts", harbor / "scripts-v2")
    toml = harbor / "workspace.toml"
    moved = harbor / "moved.toml"
    moved.write_text(toml.read_text().replace('"./scripts"', '"./scripts-v2"'))
    change = reload(toml, moved)
    assert change.refused is None and change.folders_moved


def test_a_configuration_file_added_from_another_folder_moves_the_watch(harbor: Path) -> None:
    site = harbor / "site"
    site.mkdir()
    (site / "daemon.toml").write_text("[daemon]\nsettle_seconds = 3\n")
    change = reload(harbor / "workspace.toml", [harbor / "workspace.toml", site / "daemon.toml"])
    assert change.refused is None and change.folders_moved
