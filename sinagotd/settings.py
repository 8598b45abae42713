"""The daemon's settings: a flag, then an environment variable, then `[daemon]`, then default.

Resolved in one place so that systemd units can use `Environment=` as well as flags. Every
number must be finite and in its range (`RANGES`), whichever of the three it came from, and
a refusal names that source (`--settle-seconds`, `$SINAGOTD_SETTLE_SECONDS`, or the file and
key): a NaN settle time would never let a file settle, and an infinite one overflows the
waits it is given to. The upper bounds are far above any useful value (an hour of quiet
before a file is acted on, a week between rescans); beyond them the number is a mistake.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sinagot.config import Config
from sinagot.errors import ConfigError

OBSERVERS = ("auto", "inotify", "polling")
HOUR, DAY = 3600.0, 86400.0


@dataclass(frozen=True)
class DaemonSettings:
    settle_seconds: float = 2.0
    rescan_seconds: float = 600.0
    observer: str = "auto"
    polling_seconds: float = 1.0  # how often the polling observer looks
    stop_grace_seconds: float = 30.0
    retry_seconds: float = 60.0  # first wait before retrying a step that could not run
    log_format: str | None = None  # "json" | "console"; None: json unless stdout is a tty
    status_page: bool = True  # the status page and /metrics (sinagotd/web.py)
    status_host: str = "127.0.0.1"  # only this machine, by default: see docs/operations.md
    status_port: int = 8790


#: seconds setting -> (lowest, whether the lowest itself is allowed, highest)
RANGES: dict[str, tuple[float, bool, float]] = {
    "settle_seconds": (0.0, True, HOUR),
    "rescan_seconds": (0.0, False, 7 * DAY),
    "polling_seconds": (0.0, False, HOUR),
    "stop_grace_seconds": (0.0, True, DAY),
    "retry_seconds": (0.0, False, DAY),
}
_FIELDS = (*RANGES, "observer", "status_page", "status_host", "status_port")


def load_settings(config: Config, **flags: Any) -> DaemonSettings:
    """Settings from flags (None: not given), SINAGOTD_<NAME> variables and [daemon]."""
    for key in config.daemon:
        if key not in _FIELDS:
            known = ", ".join(_FIELDS)
            raise ConfigError(f"{config.where('daemon', key)}: unknown key; known: {known}")
    values: dict[str, Any] = {}
    for name in _FIELDS:
        found = _lookup(config, name, flags.get(name))
        if found is None:
            continue
        value, where = found
        if name == "observer":
            values[name] = _observer(value, where)
        elif name == "status_page":
            values[name] = _switch(value, where)
        elif name == "status_host":
            values[name] = _host(value, where)
        elif name == "status_port":
            values[name] = _port(value, where)
        else:
            values[name] = seconds(value, where, RANGES[name])
    return DaemonSettings(**values, log_format=flags.get("log_format"))


def _lookup(config: Config, name: str, flag: Any) -> tuple[Any, str] | None:
    """The value of a setting and where it came from, in order of precedence."""
    variable = f"SINAGOTD_{name.upper()}"
    if flag is not None:
        return flag, f"--{name.replace('_', '-')}"
    if (env := os.environ.get(variable)) is not None:
        return env, f"${variable}"
    if config.daemon.get(name) is not None:
        return config.daemon[name], config.where("daemon", name)
    return None


def seconds(
    value: Any, where: str, bounds: tuple[float, bool, float], show: Callable[[Any], str] = repr
) -> float:
    """A number of seconds within `bounds` (lowest, whether the lowest is allowed, highest),
    from TOML or an environment variable's text; a refusal names `where` (and shows a
    value that is not a number with `show`)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: expected a number of seconds, found {show(value)}")
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{where}: expected a number of seconds, found {value!r}") from None
    low, low_allowed, high = bounds
    if not math.isfinite(seconds):
        raise ConfigError(f"{where}: expected a finite number of seconds, found {value!r}")
    if seconds < low or (seconds == low and not low_allowed):
        bound = "must not be negative" if low_allowed else f"must be above {low:g}"
        raise ConfigError(f"{where}: {bound}, found {value!r}")
    if seconds > high:
        raise ConfigError(f"{where}: must be at most {high:g} seconds, found {value!r}")
    return seconds


def _observer(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, found {value!r}")
    if value not in OBSERVERS:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(OBSERVERS)}")
    return value


def _switch(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _SWITCHES:
        return _SWITCHES[value.lower()]
    raise ConfigError(f"{where}: expected true or false, found {value!r}")


_SWITCHES = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}  # fmt: skip


def _host(value: Any, where: str) -> str:
    """An IP address to bind (a name would bind wherever it resolves to, maybe elsewhere)."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected an IP address, found {value!r}")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(
            f"{where}: expected an IP address such as 127.0.0.1 or ::1, found {value!r}"
        ) from None


def _port(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"{where}: expected a port number from 0 to 65535, found {value!r}")
    return value
