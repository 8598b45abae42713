"""What a reload of the workspace's configuration changes, decided before anything is applied.

The daemon reads the new configuration and its settings (a `ConfigError` keeps the running
ones), asks `compare` what changed, and acts on the answer: refuse what cannot change in
place (the running configuration is kept, `config.invalid` says to restart), or swap the
engine and restart the watcher if the watched folders moved. Pure, so that each rule is
tested alone (tests/test_reload.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sinagot.config import Config

from .settings import DaemonSettings

PAGE_KEYS = ("status_page", "status_host", "status_port")


@dataclass(frozen=True)
class Change:
    """What a reload would change, as far as the daemon must act on it."""

    moved: str | None = None  # a key that cannot change in place ("[path] dataset"), or None
    folders_moved: bool = False  # the watched scripts or configuration folders changed

    @property
    def refused(self) -> str | None:
        """`config.invalid`'s error when the reload cannot be applied; None: apply it."""
        if self.moved is None:
            return None
        return f"{self.moved} changed: restart sinagotd to apply it (kept the running config)"


def compare(
    old: Config, new: Config, old_settings: DaemonSettings, new_settings: DaemonSettings
) -> Change:
    """What reloading `old` (running with `old_settings`) into `new` changes."""
    return Change(
        moved=moved(old, new) or page_moved(old_settings, new_settings),
        folders_moved=watched_folders(old) != watched_folders(new),
    )


def moved(old: Config, new: Config) -> str | None:
    """What a reload cannot apply in place: where the data and the writer's lock live."""
    if new.dataset != old.dataset:
        return "[path] dataset"
    if new.state_dir != old.state_dir:
        return "[state] path"
    return None


def page_moved(old: DaemonSettings, new: DaemonSettings) -> str | None:
    """The status page's address is bound at start."""
    for key in PAGE_KEYS:
        if getattr(old, key) != getattr(new, key):
            return f"[daemon] {key}"
    return None


def watched_folders(config: Config) -> tuple[Path, ...]:
    """The folders watched besides the dataset (which cannot move): the scripts', and those
    holding the configuration files."""
    return (config.scripts, *sorted({f.parent for f in config.files}))
