"""Workspace configuration: read TOML, merge, validate into a frozen `Config`.

Read with the standard library's parser; tomlkit (whose import costs more) only tells what
that parser rejects, as it always has.

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
  is tried before it is ERROR (default 3); an integer from 1 to `MAX_ATTEMPTS`;
- `durable`: true or false (default): sync each output to disk before its rename into
  place, and its folder after, so that a power cut cannot leave a renamed but empty output.

Paths (`[path] dataset`, `scripts`, `[state] path`) must be non-empty and free of control
characters (a NUL byte cannot reach the OS). `[dask]` sizes have upper bounds
(`MAX_WORKERS`, `MAX_THREADS`, `MAX_IN_FLIGHT`): an embedded cluster of 100,000 workers is
a slip of the keyboard, and would bring the machine down before anything could say so.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import ConfigError
from .patterns import PathPattern, check_linear, embeddable

DEFAULT_FILE = "workspace.toml"
RUN_MODES = ("main_process", "dask")
KNOWN_TABLES = (
    "workspace", "records", "steps", "path", "run", "dask", "tasks", "modalities",
    "state", "staleness", "daemon", "log", "info", "processed", "notify",
)  # fmt: skip
#: The record ID pattern when `[records] id_pattern` is left out: any name part without a
#: slash that does not start with a dot (hidden files, Sinagot's temporary outputs, are no
#: records).
DEFAULT_ID_PATTERN = r"[^/.][^/]*"
DEFAULT_VERSION = "0.1.0"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: sinagot 0.3's `[dask.scheduler] type`s; all run on the embedded cluster (see `_dask`).
SCHEDULER_TYPES = ("distributed", "processes", "threads", "single-threaded", "sync")
PLUGINS = ("pandas", "processed")
PROCESSED_GETTERS = ("single_data", "dataframe_from_csv", "series_from_csv")
PROCESSED_TYPES = ("str", "float", "int")
#: Names a task or modality cannot take: they would hide an attribute of the model
#: (tests/test_config.py checks this list against the real objects).
RESERVED_NAMES = frozenset(
    {"all", "close", "config", "count", "count_raw_data", "count_step", "data", "data_path",
     "first", "get", "get_processed_data", "get_subscope", "has", "head", "id", "ids", "info",
     "is_unit", "is_unit_mode", "iter_ids", "iter_modalities", "iter_tasks", "iter_units",
     "logs", "logs_json", "modalities_names", "modality", "record_collection", "records",
     "run", "scripts_path", "status", "status_dict", "status_json", "steps", "task",
     "tasks_names", "version", "workspace"}
)  # fmt: skip
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_TIME_LIMIT = 7 * 24 * 3600.0
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS = 100
MAX_WORKERS = 256
MAX_THREADS = 256
MAX_IN_FLIGHT = 1_000_000

#: The scheduler a `sinagot run` or a sinagotd uses, when set (before `[dask] address`).
ENV_ADDRESS = "SINAGOT_DASK_ADDRESS"


@dataclass(frozen=True)
class ModelSettings:
    """`[modalities.X] models` (sinagot 0.3): which classes the modality's objects are."""

    plugin: str | None = None  # "pandas" or "processed"
    data_path: tuple[str, ...] | None = None  # pandas: one JSON file per record
    dataframe_path: tuple[str, ...] | None = None  # pandas: one CSV for all records
    record: str | None = None  # class name in scripts/X/models/record.py
    record_collection: str | None = None  # class name in scripts/X/models/record_collection.py


@dataclass(frozen=True)
class ModalitySpec:
    scripts: tuple[str, ...]
    task_scripts: Mapping[str, tuple[str, ...]]
    models: ModelSettings = ModelSettings()


@dataclass(frozen=True)
class LogSettings:
    """`[log]`: how step lines are printed on the console (the LOG files do not change)."""

    name: str = "sinagot"
    format: str | None = None  # None: the seed's "REC | time | label : message"
    level: str = "INFO"


@dataclass(frozen=True)
class ProcessedData:
    """`[processed.X]` (sinagot 0.3): where a step leaves a result an analyst gathers."""

    key: str
    task: str
    modality: str
    step_label: str
    path_label: str | None = None
    data_type: str | None = None
    data_getter: str = "single_data"
    columns: tuple[str, ...] | None = None


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
    version: str = DEFAULT_VERSION
    daemon: Mapping[str, Any] = field(default_factory=dict)
    #: `[notify]` as read: the daemon's failure alerts validate it (`sinagotd.alerts`).
    notify: Mapping[str, Any] = field(default_factory=dict, repr=False)
    origins: Mapping[tuple[str, ...], Path] = field(default_factory=dict, repr=False)
    time_limit: float | None = None
    time_limits: Mapping[str, float] = field(default_factory=dict)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: `[run] durable`: outputs are synced to disk before and after their rename into place.
    durable: bool = False
    log: LogSettings = LogSettings()
    processed: Mapping[str, ProcessedData] = field(default_factory=dict)
    #: The merged TOML as read, for `Workspace.config` (0.3 returned the dict itself).
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: `[records] ready_when`: a record's steps wait until this marker exists (None: no rule).
    ready_when: PathPattern | None = None

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


def _close_match(name: str, known: Sequence[str], cutoff: float = 0.6) -> list[str]:
    """The known name a typo most likely meant ([] if none): for 'did you mean' hints.
    difflib is loaded only when a mistake is found."""
    import difflib

    return difflib.get_close_matches(name, known, n=1, cutoff=cutoff)


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
    with contextlib.suppress(tomllib.TOMLDecodeError):  # read by the standard library:
        return tomllib.loads(text)  # tomlkit's import costs `sinagot status` ~10 ms
    import tomlkit.exceptions  # what it rejects, told as tomlkit tells it, as ever

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
    import tomlkit.exceptions

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
                hint = _close_match(name, allowed)
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
    *,
    data_path: str | os.PathLike[str] | None = None,
    scripts_path: str | os.PathLike[str] | None = None,
) -> Config:
    """Read, merge and validate a workspace's configuration. `data_path` and `scripts_path`,
    given, override `[path] dataset` and `scripts` (relative ones to the first file's
    folder, as sinagot 0.3 took them)."""
    files = config_files(source)
    data: dict[str, Any] = {}
    origins: dict[tuple[str, ...], Path] = {}
    for path in files:
        _merge(data, _parse(path), path, origins)
    given = {"dataset": data_path, "scripts": scripts_path}
    if any(value is not None for value in given.values()):
        here = Path("<Workspace arguments>")
        paths = {k: os.fspath(v) for k, v in given.items() if v is not None}
        _merge(data, {"path": paths}, here, origins)
    return _validate(_Reader(data, origins, files[0]), files)


def _validate(r: _Reader, files: list[Path]) -> Config:
    root = files[0].parent
    for name, value in r.data.items():
        if name in KNOWN_TABLES:
            if not isinstance(value, dict):
                raise r.error((name,), f"expected a table, found {_show(value)}")
        elif hint := _close_match(name, KNOWN_TABLES, cutoff=0.75):
            raise r.error((name,), f"unknown table (did you mean [{hint[0]}]?)")

    # file_match: read by sinagot before 0.3, ignored since (0.3.0 ignored it too).
    r.check_keys(("records",), ("id_pattern", "file_match", "ready_when"))
    ready_when = _ready_when(r)
    pattern = r.get(("records", "id_pattern"), str, DEFAULT_ID_PATTERN)
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

    r.check_keys(("run",), ("mode", "time_limit", "time_limits", "max_attempts", "durable"))
    run_mode = r.get(("run", "mode"), str, "main_process")
    if run_mode not in RUN_MODES:
        raise r.error(("run", "mode"), f"{run_mode!r} is not one of {', '.join(RUN_MODES)}")
    time_limit = _seconds(r, ("run", "time_limit"))
    max_attempts = _count(r, ("run", "max_attempts"), DEFAULT_MAX_ATTEMPTS, MAX_ATTEMPTS)
    durable = r.get(("run", "durable"), bool, False)

    dask = _dask(r)

    r.check_keys(("state",), ("path",))
    state_dir = _path(r, root, ("state", "path"), str(dataset / ".sinagot"))
    r.check_keys(("staleness",), ("content_hash", "script_changes"))
    content_hash = r.get(("staleness", "content_hash"), bool, False)
    track_scripts = r.get(("staleness", "script_changes"), bool, True)
    version = _version(r)

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
        notify=dict(r.table("notify")),
        origins=dict(r.origins),
        time_limit=time_limit,
        time_limits=_time_limits(r, _step_names(steps, modalities)),
        max_attempts=max_attempts,
        durable=durable,
        log=_log(r),
        processed=_processed(r, tasks, modalities),
        raw=_frozen(r.data),
        ready_when=ready_when,
    )


def _ready_when(r: _Reader) -> PathPattern | None:
    """`[records] ready_when`: the marker file that says a record's copy is complete
    (`"{id}/.done"`), relative to the dataset. `{id}` only: a record is ready as a whole,
    whatever its tasks."""
    key = ("records", "ready_when")
    value = _text(r, key)
    if value is None:
        return None
    try:
        pattern = PathPattern.parse(value)
    except ValueError as exc:
        raise r.error(key, str(exc)) from None
    if pattern.fields != {"id"}:
        why = (
            "{task} cannot be used: a record is ready as a whole"
            if "task" in pattern.fields
            else "the marker must hold {id}, the record it says is ready"
        )
        raise r.error(key, f'{value!r}: {why} (as in "{{id}}/.done")')
    return pattern


def _path(r: _Reader, root: Path, key: tuple[str, ...], default: str) -> Path:
    """A folder setting, absolute (relative to the first file's folder, `root`, as 0.3 did);
    refused before any file-system call could choke on it."""
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
    """`[dask]`, with sinagot 0.3's `[dask.scheduler] type` and `[dask.cluster]` mapped onto
    the embedded cluster; a key of `[dask]` itself wins over its 0.3 counterpart.

    Workers are always processes (a step that crashes or hangs must not take its caller
    down), so `[dask.cluster] processes` is accepted and has no effect; the one-at-a-time
    types (`single-threaded`, `sync`) become one worker with one thread, `threads` one
    worker with `threads_per_worker` threads (default: the machine's cores).
    """
    r.check_keys(
        ("dask",),
        ("address", "n_workers", "threads_per_worker", "max_in_flight", "dashboard_address",
         "scheduler", "cluster"),
    )  # fmt: skip
    r.check_keys(("dask", "scheduler"), ("type",))
    r.check_keys(("dask", "cluster"), ("address", "n_workers", "processes", "threads_per_worker"))
    kind = r.get(("dask", "scheduler", "type"), str, "distributed")
    if kind not in SCHEDULER_TYPES:
        raise r.error(
            ("dask", "scheduler", "type"), f"{kind!r} is not one of {', '.join(SCHEDULER_TYPES)}"
        )
    r.get(("dask", "cluster", "processes"), bool)
    workers = _count(r, ("dask", "cluster", "n_workers"), DaskSettings.n_workers, MAX_WORKERS)
    default_threads = (os.cpu_count() or 1) if kind == "threads" else 1
    threads = _count(r, ("dask", "cluster", "threads_per_worker"), default_threads, MAX_THREADS)
    if kind in ("single-threaded", "sync"):
        workers, threads = 1, 1
    elif kind == "threads":
        workers = 1
    address = _text(r, ("dask", "address")) or _text(r, ("dask", "cluster", "address"))
    return DaskSettings(
        address=address,
        n_workers=_count(r, ("dask", "n_workers"), workers, MAX_WORKERS),
        threads_per_worker=_count(r, ("dask", "threads_per_worker"), threads, MAX_THREADS),
        max_in_flight=_count(
            r, ("dask", "max_in_flight"), DaskSettings.max_in_flight, MAX_IN_FLIGHT
        ),
        dashboard_address=_text(r, ("dask", "dashboard_address"), DaskSettings.dashboard_address),
    )


def _version(r: _Reader) -> str:
    """The workspace version: `[info] version` (sinagot 0.3) or `[workspace] version`."""
    r.check_keys(("workspace",), ("version",))
    r.table("info")  # free-form metadata (0.3 returned it as `Workspace.info`)
    found = {}
    for key in (("info", "version"), ("workspace", "version")):
        value = r.get(key, (str, int, float))
        if value is not None:
            found[key] = str(value)
    if len(set(found.values())) > 1:
        (a, va), (b, vb) = found.items()
        raise r.error(b, f"{vb!r} differs from {_key_name(a)} {va!r}: keep one of them")
    return next(iter(found.values()), DEFAULT_VERSION)


def _log(r: _Reader) -> LogSettings:
    r.check_keys(("log",), ("name", "format", "level"))
    name = _text(r, ("log", "name"), LogSettings.name) or ""
    if not name.strip():
        raise r.error(("log", "name"), "empty: give a logger name, or remove the key")
    fmt = r.get(("log", "format"), str)
    if fmt is not None:
        try:  # a mistake here would otherwise surface as a logging error at every line
            fmt % _LOG_FIELDS
        except (KeyError, ValueError, TypeError) as exc:
            raise r.error(
                ("log", "format"),
                f"{fmt!r} cannot be used: {exc!r}; fields: "
                + ", ".join(f"%({k})s" for k in _LOG_FIELDS),
            ) from None
    level = r.get(("log", "level"), (str, int), LogSettings.level)
    if isinstance(level, int):
        import logging  # only for a numeric level: `sinagot status` never loads logging

        level = logging.getLevelName(level)
    level = str(level).upper()
    if level not in LOG_LEVELS:
        raise r.error(("log", "level"), f"{level!r} is not one of {', '.join(LOG_LEVELS)}")
    return LogSettings(name=name, format=fmt, level=level)


#: What a `[log] format` may name, with sample values to try it on.
_LOG_FIELDS = {
    "asctime": "2020-08-20 11:19:11,530", "message": "Init run", "record_id": "REC-1",
    "task": "RS", "modality": "EEG", "step_label": "count", "label": "RS-EEG-count",
    "step_status": 0, "levelname": "INFO", "name": "sinagot", "created": 0.0, "msecs": 0.0,
}  # fmt: skip


def _processed(
    r: _Reader, tasks: Mapping[str, tuple[str, ...]], modalities: Mapping[str, ModalitySpec]
) -> dict[str, ProcessedData]:
    """`[processed.X]` tables, checked against the steps they name."""
    out = {}
    for key in r.table("processed"):
        where = ("processed", key)
        r.table(*where)
        r.check_keys(
            where,
            ("task", "modality", "step_label", "path_label", "data_type", "data_getter",
             "columns"),
        )  # fmt: skip
        task, modality, step = (
            _required(r, (*where, name)) for name in ("task", "modality", "step_label")
        )
        if task not in tasks:
            raise r.error((*where, "task"), f"task {task!r} is not declared in [tasks]")
        if modality not in tasks[task]:
            raise r.error((*where, "modality"), f"task {task!r} has no modality {modality!r}")
        spec = modalities[modality]
        if step not in (*spec.scripts, *spec.task_scripts.get(task, ())):
            raise r.error((*where, "step_label"), f"{task}.{modality} has no step {step!r}")
        getter = r.get((*where, "data_getter"), str, "single_data")
        if getter not in PROCESSED_GETTERS:
            raise r.error(
                (*where, "data_getter"), f"{getter!r} is not one of {', '.join(PROCESSED_GETTERS)}"
            )
        data_type = r.get((*where, "data_type"), str)
        if data_type is not None and data_type not in PROCESSED_TYPES:
            raise r.error(
                (*where, "data_type"), f"{data_type!r} is not one of {', '.join(PROCESSED_TYPES)}"
            )
        columns = r.get((*where, "columns"), list)
        if columns is not None and not all(isinstance(c, str) for c in columns):
            raise r.error((*where, "columns"), "expected a list of column names")
        out[key] = ProcessedData(
            key, task, modality, step, r.get((*where, "path_label"), str), data_type, getter,
            tuple(columns) if columns is not None else None,
        )  # fmt: skip
    return out


def _required(r: _Reader, key: tuple[str, ...]) -> str:
    value = r.get(key, str)
    if value is None:
        raise r.error(key, "missing")
    return value


def _frozen(value: Any) -> Any:
    """A read-only copy: tables become mappings that refuse writes, lists tuples."""
    if isinstance(value, dict):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


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
            hint = _close_match(name, steps)
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
    has_scopes = "tasks" in r.data or "modalities" in r.data
    if has_scopes:  # sinagot 0.3 documented [steps] as required, and ignored it here
        r.check_keys(("steps",), ("scripts",))
        r.names(("steps", "scripts"))
    else:
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
        # file_match: read by sinagot before 0.3, ignored since (0.3.0 ignored it too).
        r.check_keys(key, ("scripts", "task_scripts", "models", "record_collection", "file_match"))
        modalities[name] = ModalitySpec(r.names((*key, "scripts")), {}, _models(r, key))
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
        modalities[mod] = ModalitySpec(spec.scripts, per_task, spec.models)
        for name in (*spec.scripts, *(n for names in per_task.values() for n in names)):
            _require_script(r, ("modalities", mod), scripts / mod / f"{name}.py")
    return None, tasks, modalities


def _models(r: _Reader, key: tuple[str, ...]) -> ModelSettings:
    """`[modalities.X] models` and the older `record_collection = "Name"` beside it."""
    where = (*key, "models")
    r.check_keys(where, ("plugin", "data_path", "dataframe_path", "record", "record_collection"))
    plugin = r.get((*where, "plugin"), str)
    if plugin is not None and plugin not in PLUGINS:
        raise r.error((*where, "plugin"), f"{plugin!r} is not one of {', '.join(PLUGINS)}")
    paths = {}
    for name in ("data_path", "dataframe_path"):
        parts = r.get((*where, name), list)
        if parts is not None:
            if not parts or not all(isinstance(p, str) and p and p not in (".", "..")
                                    and "/" not in p for p in parts):  # fmt: skip
                raise r.error(
                    (*where, name), f"expected a list of folder and file names, found {parts!r}"
                )
            paths[name] = tuple(parts)
    classes = {}
    for name, keys in (("record", ((*where, "record"),)),
                       ("record_collection", ((*where, "record_collection"),
                                              (*key, "record_collection")))):  # fmt: skip
        for k in keys:
            value = r.get(k, str)
            if value is not None:
                if not value.isidentifier():
                    raise r.error(k, f"{value!r} is not a class name")
                classes[name] = value
    return ModelSettings(plugin, paths.get("data_path"), paths.get("dataframe_path"), **classes)


def _check_name(r: _Reader, key: tuple[str, ...], name: str) -> None:
    if not _NAME.fullmatch(name):
        raise r.error(key, f"{name!r} is not a valid name (a letter, then letters, digits, _)")
    if name in RESERVED_NAMES:
        raise r.error(key, f"{name!r} is reserved: it would hide an attribute of the API")


def _require_script(r: _Reader, key: tuple[str, ...], path: Path) -> None:
    if not path.is_file():
        raise r.error(key, f"script {path} not found")
