"""Workspace configuration: read TOML with tomlkit, merge, validate into a frozen `Config`.

Every mistake raises `ConfigError` naming the file and the key (and, for TOML syntax, the
line and column). Only this module knows the shape of the TOML; the rest of sinagot reads
the `Config` dataclass.

`[run]` keys:

- `mode`: `main_process` (default) or `dask`;
- `time_limit`: seconds any step may run, workspace-wide (none by default); a number > 0 and
  at most a week (`MAX_TIME_LIMIT`): a longer one is a slip (leave the key out for none);
- `[run.time_limits]`: step name -> seconds, overriding `time_limit` for the steps of that
  name (in scoped mode, in every modality that has one); a name that is no step is refused;
- `max_attempts`: how many times a step whose worker dies or whose outputs cannot be written
  is tried before it is ERROR (default 3); an integer from 1 to `MAX_ATTEMPTS`.

Paths (`[path] dataset`, `scripts`, `[state] path`) must be non-empty and free of control
characters (a NUL byte cannot reach the OS). `[dask]` sizes have upper bounds
(`MAX_WORKERS`, `MAX_THREADS`, `MAX_IN_FLIGHT`): an embedded cluster of 100,000 workers is
a slip of the keyboard, and would bring the machine down before anything could say so.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from .errors import ConfigError
from .patterns import check_linear, embeddable

DEFAULT_FILE = "workspace.toml"
RUN_MODES = ("main_process", "dask")
KNOWN_TABLES = (
    "workspace", "records", "steps", "path", "run", "dask", "tasks", "modalities",
    "state", "staleness", "daemon",
)  # fmt: skip
#: Names a task or modality cannot take: they would hide an attribute of the model
#: (tests/test_config.py checks this list against the real objects).
RESERVED_NAMES = frozenset(
    {"all", "broken_scripts", "check_folders", "check_id", "close", "config", "count", "dataset",
     "execute", "executor", "first", "forget", "generation", "get", "has", "head",
     "id", "ids", "ingest_receipts", "iter_ids", "job", "layout", "lock", "logs", "modality",
     "plan", "receipts", "record", "records", "run", "scope", "status", "steps",
     "store", "task", "units", "verbose", "writing"}
)  # fmt: skip
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_TIME_LIMIT = 7 * 24 * 3600.0
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS = 100
MAX_WORKERS = 256
MAX_THREADS = 256
MAX_IN_FLIGHT = 1_000_000


@dataclass(frozen=True)
class ModalitySpec:
    scripts: tuple[str, ...]
    task_scripts: Mapping[str, tuple[str, ...]]


@dataclass(frozen=True)
class DaskSettings:
    address: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1
    max_in_flight: int = 256
    dashboard_address: str = ":8787"


@dataclass(frozen=True)
class Config:
    """A validated workspace configuration; paths are absolute."""

    files: tuple[Path, ...]
    id_regex: re.Pattern[str]
    dataset: Path
    scripts: Path
    state_dir: Path
    steps: tuple[str, ...] | None  # unit mode; None in scoped mode
    tasks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # task -> modalities
    modalities: Mapping[str, ModalitySpec] = field(default_factory=dict)
    run_mode: str = "main_process"
    dask: DaskSettings = DaskSettings()
    content_hash: bool = False
    track_scripts: bool = True
    version: str | None = None
    daemon: Mapping[str, Any] = field(default_factory=dict)
    origins: Mapping[tuple[str, ...], Path] = field(default_factory=dict, repr=False)
    time_limit: float | None = None
    time_limits: Mapping[str, float] = field(default_factory=dict)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def time_limit_for(self, step_name: str) -> float | None:
        """Seconds the step of this name may run: its own limit, else the workspace's."""
        return self.time_limits.get(step_name, self.time_limit)

    @property
    def root(self) -> Path:
        return self.files[0].parent

    @property
    def scoped(self) -> bool:
        return self.steps is None

    def where(self, *key: str) -> str:
        """'file: [table] key' for error messages about a setting."""
        path = self.origins.get(key) or self.origins.get(key[:1]) or self.files[0]
        return f"{path}: {_key_name(key)}"


def _key_name(key: Sequence[str]) -> str:
    if not key:
        return "(top level)"
    if len(key) == 1:
        return f"[{key[0]}]"
    return f"[{key[0]}] {'.'.join(key[1:])}"


def config_files(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The TOML files a `Workspace(...)` argument names: a folder, a file, or a list of files."""
    items = [source] if isinstance(source, str | os.PathLike) else list(source)
    if not items:
        raise ConfigError("no configuration file given")
    files = []
    for item in items:
        path = Path(item).expanduser().absolute()
        if path.is_dir():
            path = path / DEFAULT_FILE
        if not path.is_file():
            raise ConfigError(f"{path}: configuration file not found")
        files.append(path)
    return files


def _parse(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc}") from None
    try:
        return tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.TOMLKitError as exc:
        raise ConfigError(f"{path}{_syntax_error(text, exc)}") from None


def _syntax_error(text: str, exc: Exception) -> str:
    """', line L, column C: invalid TOML: what' with 1-based columns, as editors count.

    tomlkit reports some mistakes (a key defined twice) without a position, and counts
    columns from 0; the standard library's parser locates them all.
    """
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as std:
        message = str(std)
        if m := re.search(r"^(.*) \(at line (\d+), column (\d+)\)$", message):
            return f", line {m.group(2)}, column {m.group(3)}: invalid TOML: {m.group(1)}"
        return f": invalid TOML: {message}"
    if isinstance(exc, tomlkit.exceptions.ParseError):
        message = str(exc).split(" at line ")[0]
        return f", line {exc.line}, column {exc.col + 1}: invalid TOML: {message}"
    return f": invalid TOML: {exc}"


def _merge(
    into: dict[str, Any],
    new: Mapping[str, Any],
    origin: Path,
    origins: dict[tuple[str, ...], Path],
    prefix: tuple[str, ...] = (),
) -> None:
    """Merge `new` into `into`: tables key by key, other values replaced; remember who set what."""
    for key, value in new.items():
        here = (*prefix, key)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, origin, origins, here)
        else:
            into[key] = value
            for sub in _keys(value, here):
                origins[sub] = origin
        origins.setdefault(here, origin)


def _keys(value: Any, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    keys = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            keys.extend(_keys(v, (*prefix, k)))
    return keys


class _Reader:
    """Typed access to the merged TOML, with errors that name the file and the key."""

    def __init__(self, data: dict[str, Any], origins: dict[tuple[str, ...], Path], first: Path):
        self.data = data
        self.origins = origins
        self.first = first

    def error(self, key: Sequence[str], message: str) -> ConfigError:
        path = self.origins.get(tuple(key)) or self.origins.get(tuple(key[:1])) or self.first
        return ConfigError(f"{path}: {_key_name(key)}: {message}")

    def table(self, *key: str) -> dict[str, Any]:
        value: Any = self.data
        for k in key:
            value = value.get(k, {}) if isinstance(value, dict) else None
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, found {_show(value)}")
        return value

    def check_keys(self, key: tuple[str, ...], allowed: Sequence[str]) -> None:
        for name in self.table(*key):
            if name not in allowed:
                hint = difflib.get_close_matches(name, allowed, n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(allowed)}"
                raise self.error((*key, name), f"unknown key{more}")

    def get(self, key: tuple[str, ...], kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.table(*key[:-1]).get(key[-1], default)
        if value is None:
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.error(key, f"expected {_kind_name(kind)}, found {_show(value)}")
        return value

    def names(self, key: tuple[str, ...], required: bool = False) -> tuple[str, ...]:
        value = self.get(key, list, None)
        if value is None:
            if required:
                raise self.error(key, "missing: list the step scripts, in the order they run")
            return ()
        for item in value:
            if not isinstance(item, str) or not _NAME.fullmatch(item):
                raise self.error(key, f"{_show(item)} is not a valid name (letters, digits, _)")
        if len(set(value)) != len(value):
            raise self.error(key, f"a name is listed twice in {value!r}")
        return tuple(value)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:
        return "a number"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a table"}  # fmt: skip
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"the list {value!r}"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def load_config(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> Config:
    """Read, merge and validate a workspace's configuration."""
    files = config_files(source)
    data: dict[str, Any] = {}
    origins: dict[tuple[str, ...], Path] = {}
    for path in files:
        _merge(data, _parse(path), path, origins)
    return _validate(_Reader(data, origins, files[0]), files)


def _validate(r: _Reader, files: list[Path]) -> Config:
    root = files[0].parent
    for name, value in r.data.items():
        if name in KNOWN_TABLES:
            if not isinstance(value, dict):
                raise r.error((name,), f"expected a table, found {_show(value)}")
        elif hint := difflib.get_close_matches(name, KNOWN_TABLES, n=1, cutoff=0.75):
            raise r.error((name,), f"unknown table (did you mean [{hint[0]}]?)")

    r.check_keys(("records",), ("id_pattern",))
    pattern = r.get(("records", "id_pattern"), str)
    if pattern is None:
        raise r.error(("records", "id_pattern"), "missing: give the regex a record ID must match")
    try:
        id_regex = re.compile(pattern)
    except re.error as exc:
        raise r.error(("records", "id_pattern"), f"invalid regex {pattern!r}: {exc}") from None
    if (why := check_linear(pattern)) is not None:  # file names are matched in linear time
        raise r.error(("records", "id_pattern"), why)
    try:  # it is embedded in each path pattern's regex: it must still compile there
        re.compile(f"(?P<id>{embeddable(pattern)})(?P<task>x)")
    except re.error as exc:
        raise r.error(
            ("records", "id_pattern"),
            f"{pattern!r} cannot be used inside a path pattern ({exc}); "
            "avoid groups named id or task",
        ) from None

    r.check_keys(("path",), ("dataset", "scripts"))
    dataset = _path(r, root, ("path", "dataset"), "./dataset")
    scripts = _path(r, root, ("path", "scripts"), "./scripts")
    try:
        scripts_found = scripts.is_dir()
    except OSError as exc:
        raise r.error(("path", "scripts"), f"cannot use {scripts}: {exc.strerror}") from None
    if not scripts_found:
        raise r.error(("path", "scripts"), f"scripts folder {scripts} does not exist")

    r.check_keys(("run",), ("mode", "time_limit", "time_limits", "max_attempts"))
    run_mode = r.get(("run", "mode"), str, "main_process")
    if run_mode not in RUN_MODES:
        raise r.error(("run", "mode"), f"{run_mode!r} is not one of {', '.join(RUN_MODES)}")
    time_limit = _seconds(r, ("run", "time_limit"))
    max_attempts = _count(r, ("run", "max_attempts"), DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS)

    dask = _dask(r)

    r.check_keys(("state",), ("path",))
    state_dir = _path(r, root, ("state", "path"), str(dataset / ".sinagot"))
    r.check_keys(("staleness",), ("content_hash", "script_changes"))
    content_hash = r.get(("staleness", "content_hash"), bool, False)
    track_scripts = r.get(("staleness", "script_changes"), bool, True)
    r.check_keys(("workspace",), ("version",))
    version = r.get(("workspace", "version"), str)

    steps, tasks, modalities = _layout(r, scripts)
    return Config(
        files=tuple(files),
        id_regex=id_regex,
        dataset=dataset,
        scripts=scripts,
        state_dir=state_dir,
        steps=steps,
        tasks=tasks,
        modalities=modalities,
        run_mode=run_mode,
        dask=dask,
        content_hash=content_hash,
        track_scripts=track_scripts,
        version=version,
        daemon=dict(r.table("daemon")),
        origins=dict(r.origins),
        time_limit=time_limit,
        time_limits=_time_limits(r, _step_names(steps, modalities)),
        max_attempts=max_attempts,
    )


def _path(r: _Reader, root: Path, key: tuple[str, ...], default: str) -> Path:
    """A folder setting, absolute; refused before any file-system call could choke on it."""
    value = _text(r, key, default) or ""
    if not value.strip():
        raise r.error(key, "empty: give a folder, or remove the key for the default")
    try:
        path = Path(value).expanduser()
    except RuntimeError as exc:  # '~someone' with no such user, or no home at all
        raise r.error(key, f"cannot expand {value!r}: {exc}") from None
    return Path(os.path.normpath(path if path.is_absolute() else root / path))


def _text(r: _Reader, key: tuple[str, ...], default: str | None = None) -> str | None:
    value = r.get(key, str, default)
    if value is not None and (bad := _CONTROL.search(value)):
        raise r.error(key, f"{value!r} holds the control character {bad.group()!r}")
    return value


def _dask(r: _Reader) -> DaskSettings:
    r.check_keys(
        ("dask",),
        ("address", "n_workers", "threads_per_worker", "max_in_flight", "dashboard_address"),
    )
    return DaskSettings(
        address=_text(r, ("dask", "address")),
        n_workers=_count(r, ("dask", "n_workers"), DaskSettings.n_workers, MAX_WORKERS),
        threads_per_worker=_count(
            r, ("dask", "threads_per_worker"), DaskSettings.threads_per_worker, MAX_THREADS
        ),
        max_in_flight=_count(
            r, ("dask", "max_in_flight"), DaskSettings.max_in_flight, MAX_IN_FLIGHT
        ),
        dashboard_address=_text(r, ("dask", "dashboard_address"), DaskSettings.dashboard_address),
    )


def _count(r: _Reader, key: tuple[str, ...], default: int, high: int) -> int:
    value = r.get(key, int, default)
    if value < 1:
        raise r.error(key, f"must be at least 1, found {value}")
    if value > high:
        raise r.error(key, f"must be at most {high}, found {value}")
    return value


def _seconds(r: _Reader, key: tuple[str, ...]) -> float | None:
    value = r.get(key, (int, float))
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise r.error(key, f"expected a number of seconds above 0, found {value!r}")
    if value > MAX_TIME_LIMIT:
        raise r.error(key, f"must be at most {MAX_TIME_LIMIT:.0f} s (a week), found {value!r}")
    return float(value)


def _step_names(
    steps: tuple[str, ...] | None, modalities: Mapping[str, ModalitySpec]
) -> tuple[str, ...]:
    if steps is not None:
        return steps
    names: dict[str, None] = {}
    for spec in modalities.values():
        names.update(dict.fromkeys(spec.scripts))
        for per_task in spec.task_scripts.values():
            names.update(dict.fromkeys(per_task))
    return tuple(names)


def _time_limits(r: _Reader, steps: tuple[str, ...]) -> dict[str, float]:
    key = ("run", "time_limits")
    table = r.get(key, dict, {})
    limits = {}
    for name in table:
        if name not in steps:
            hint = difflib.get_close_matches(name, steps, n=1)
            more = f"did you mean {hint[0]!r}? " if hint else ""
            raise r.error(
                (*key, name), f"no step is named {name!r} ({more}steps: {', '.join(steps)})"
            )
        if (seconds := _seconds(r, (*key, name))) is not None:
            limits[name] = seconds
    return limits


def _layout(
    r: _Reader, scripts: Path
) -> tuple[tuple[str, ...] | None, dict[str, tuple[str, ...]], dict[str, ModalitySpec]]:
    has_steps = "steps" in r.data
    has_scopes = "tasks" in r.data or "modalities" in r.data
    if has_steps and has_scopes:
        raise r.error(
            ("steps",),
            "use either [steps] (no tasks or modalities) or [tasks] and [modalities], not both",
        )
    if not has_scopes:
        r.check_keys(("steps",), ("scripts",))
        steps = r.names(("steps", "scripts"), required=True)
        for name in steps:
            _require_script(r, ("steps", "scripts"), scripts / f"{name}.py")
        return steps, {}, {}

    modalities: dict[str, ModalitySpec] = {}
    for name in r.table("modalities"):
        key = ("modalities", name)
        _check_name(r, key, name)
        r.table(*key)
        r.check_keys(key, ("scripts", "task_scripts"))
        modalities[name] = ModalitySpec(r.names((*key, "scripts")), {})
    if not modalities:
        raise r.error(("modalities",), "no modality declared")

    tasks: dict[str, tuple[str, ...]] = {}
    for name in r.table("tasks"):
        key = ("tasks", name)
        _check_name(r, key, name)
        r.table(*key)
        r.check_keys(key, ("modalities",))
        mods = r.names((*key, "modalities"), required=False)
        for mod in mods:
            if mod not in modalities:
                raise r.error(
                    (*key, "modalities"),
                    f"modality {mod!r} is not declared (declared: {', '.join(modalities)})",
                )
        tasks[name] = mods
    if not tasks:
        raise r.error(("tasks",), "no task declared")
    if clash := set(tasks) & set(modalities):
        raise r.error(("tasks", min(clash)), "a task and a modality cannot share a name")

    for mod, spec in list(modalities.items()):
        key = ("modalities", mod, "task_scripts")
        per_task = {}
        for task in r.table(*key):
            if task not in tasks:
                raise r.error((*key, task), f"task {task!r} is not declared in [tasks]")
            if mod not in tasks[task]:
                raise r.error((*key, task), f"task {task!r} does not list modality {mod!r}")
            per_task[task] = r.names((*key, task))
            if twice := set(per_task[task]) & set(spec.scripts):
                raise r.error((*key, task), f"{min(twice)!r} is already in the modality's scripts")
        modalities[mod] = ModalitySpec(spec.scripts, per_task)
        for name in (*spec.scripts, *(n for names in per_task.values() for n in names)):
            _require_script(r, ("modalities", mod), scripts / mod / f"{name}.py")
    return None, tasks, modalities


def _check_name(r: _Reader, key: tuple[str, ...], name: str) -> None:
    if not _NAME.fullmatch(name):
        raise r.error(key, f"{name!r} is not a valid name (a letter, then letters, digits, _)")
    if name in RESERVED_NAMES:
        raise r.error(key, f"{name!r} is reserved: it would hide an attribute of the API")


def _require_script(r: _Reader, key: tuple[str, ...], path: Path) -> None:
    if not path.is_file():
        raise r.error(key, f"script {path} not found")
