"""The daemon's settings: a flag, then an environment variable, then `[daemon]`, then default.

Resolved in one place so that systemd units can use `Environment=` as well as flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sinagot.config import Config
from sinagot.errors import ConfigError

OBSERVERS = ("auto", "inotify", "polling")


@dataclass(frozen=True)
class DaemonSettings:
    settle_seconds: float = 2.0
    rescan_seconds: float = 600.0
    observer: str = "auto"
    polling_seconds: float = 1.0  # how often the polling observer looks
    stop_grace_seconds: float = 30.0
    retry_seconds: float = 60.0  # first wait before retrying a step that could not run
    log_format: str | None = None  # "json" | "console"; None: json unless stdout is a tty


_FIELDS = {
    "settle_seconds": float,
    "rescan_seconds": float,
    "observer": str,
    "polling_seconds": float,
    "stop_grace_seconds": float,
    "retry_seconds": float,
}


def load_settings(config: Config, **flags: Any) -> DaemonSettings:
    """Settings from flags (None: not given), SINAGOTD_<NAME> variables and [daemon]."""
    table = dict(config.daemon)
    values: dict[str, Any] = {}
    for key in table:
        if key not in _FIELDS:
            known = ", ".join(_FIELDS)
            raise ConfigError(f"{config.where('daemon', key)}: unknown key; known: {known}")
    for name, kind in _FIELDS.items():
        where = config.where("daemon", name)
        value: Any = flags.get(name)
        if value is None and (env := os.environ.get(f"SINAGOTD_{name.upper()}")) is not None:
            value, where = env, f"${'SINAGOTD_' + name.upper()}"
        if value is None:
            value = table.get(name)
        if value is None:
            continue
        values[name] = _coerce(value, kind, where)
    settings = DaemonSettings(**values, log_format=flags.get("log_format"))
    if settings.observer not in OBSERVERS:
        where = config.where("daemon", "observer")
        raise ConfigError(f"{where}: {settings.observer!r} is not one of {', '.join(OBSERVERS)}")
    for name in ("settle_seconds", "polling_seconds", "stop_grace_seconds", "retry_seconds"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{config.where('daemon', name)}: must not be negative")
    if settings.rescan_seconds <= 0:
        raise ConfigError(f"{config.where('daemon', 'rescan_seconds')}: must be positive")
    return settings


def _coerce(value: Any, kind: type, where: str) -> Any:
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number of seconds, found {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number of seconds, found {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, found {value!r}")
    return value
