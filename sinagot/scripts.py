"""User scripts: the `ScriptTemplate` base class and the one importer that loads them.

Patterns are read from the script's source without running it whenever they are literals,
so loading a workspace (or `sinagot status`) never imports pandas or whatever a script uses.
A script is executed fresh from its file for every run, so an edit is picked up at once;
only its compilation is reused while its bytes stay the same.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from .errors import ScriptError

if TYPE_CHECKING:  # logging is loaded where a script is bound: `sinagot status` never is
    import logging

    from .layout import Patterns, StepSpec


class ScriptPaths(NamedTuple):
    """What `self.path` holds in a script: its inputs, outputs and control paths, each a
    `Path` or a dict of them (`control` is None when the script declares no PATH_CONTROL)."""

    input: Path | dict[str, Path]
    output: Path | dict[str, Path]
    control: Path | dict[str, Path] | None = None


class DataExist(NamedTuple):
    """What `self.data_exist` holds: {absolute path: whether it exists}, inputs and outputs."""

    input: dict[Path, bool]
    output: dict[Path, bool]


def _exist(paths: Path | dict[str, Path] | None) -> dict[Path, bool]:
    if paths is None:
        return {}
    found = paths.values() if isinstance(paths, dict) else (paths,)
    return {Path(path): os.path.exists(path) for path in found}


class ScriptTemplate:
    """Base class of every step script: set PATH_IN and PATH_OUT, write `run()`.

    During `run()`, `self.path.output` points at temporary files beside the real outputs;
    sinagot renames them into place only when `run()` returns, so a failed or killed run
    never leaves a file that could be taken for a finished result.

    `PATH_CONTROL` (sinagot 0.3), optional, names files the script may write besides its
    outputs (a control figure, a report): `self.path.control`. They are neither inputs nor
    outputs (no staleness, no temporary names); their folders are made before `run()`.

    What a script finds on `self`: `id`, `task`, `modality`, `label` (the step's name),
    `path` (`.input`, `.output`, `.control`), `data_exist` (`.input`, `.output`: {path:
    exists?}, looked at on each access), `logger` (lines go to the record's log), `opts`,
    `data_path` (the dataset folder), and what the run was asked: `debug` (a failure
    raises in the caller) and `ignore_missing` (run although inputs are missing).
    """

    PATH_IN: ClassVar[tuple[str, ...] | dict[str, tuple[str, ...]]] = ()
    PATH_OUT: ClassVar[tuple[str, ...] | dict[str, tuple[str, ...]]] = ()
    PATH_CONTROL: ClassVar[tuple[str, ...] | dict[str, tuple[str, ...]] | None] = None

    def __init__(
        self,
        *,
        id: str,
        task: str | None,
        modality: str | None,
        path: ScriptPaths,
        logger: logging.Logger,
        opts: dict[str, Any] | None = None,
        label: str | None = None,
        debug: bool = False,
        ignore_missing: bool = False,
        data_path: Path | None = None,
    ) -> None:
        self.id = id
        self.task = task
        self.modality = modality
        self.path = path
        self.logger = logger
        self.opts = dict(opts or {})
        self.label = label if label is not None else _module_stem(type(self))
        self.debug = debug
        self.ignore_missing = ignore_missing
        self.data_path = data_path

    @property
    def data_exist(self) -> DataExist:
        """Whether each input and output exists now: {absolute Path: bool} for each."""
        path = self.path
        if path is None:
            return DataExist({}, {})
        return DataExist(_exist(path.input), _exist(path.output))

    def run(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}.run() is not written")


_MODULE_PREFIX = "sinagot_script_"


def _module_stem(cls: type) -> str | None:
    """The name of the file `load_script` loaded a script class from, without '.py' (its
    step's name, as 0.3 took it from the module); None for any other class."""
    if not cls.__module__.startswith(_MODULE_PREFIX):
        return None
    filename = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return Path(filename).stem if filename else None


def _plain_logger(step: str) -> logging.Logger:
    import logging

    return logging.getLogger(f"sinagot.script.{step}")


def bind_script(
    spec: StepSpec,
    record_id: str,
    task: str | None,
    dataset: Path | str,
    logger: logging.Logger | None = None,
) -> ScriptTemplate:
    """The step's `Script`, loaded fresh from its file and bound to one record outside any
    run: real (absolute) paths, no temporary names. `record_id` and `task` may be
    placeholders ("{id}") to show a pattern. Without `logger`, a plain `logging` logger
    named `sinagot.script.<step>` (nothing is written to the record's log)."""
    root = Path(dataset)

    def bound(patterns: Patterns) -> Path | dict[str, Path]:
        return patterns.shape(tuple(root / rel for rel in patterns.relative(record_id, task)))

    cls = load_script(spec.script).cls
    return cls(
        id=record_id,
        task=task,
        modality=spec.modality,
        path=ScriptPaths(
            bound(spec.inputs),
            bound(spec.outputs),
            bound(spec.control) if spec.control is not None else None,
        ),
        logger=logger if logger is not None else _plain_logger(spec.name),
        label=spec.name,
        data_path=root,
    )


@dataclass(frozen=True)
class LoadedScript:
    """A script's class with the exact bytes it was built from (their hash is its version)."""

    cls: type[ScriptTemplate]
    code_hash: str


def code_hash(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()[:16]


def _read(path: Path) -> bytes:
    """The script's bytes; plain `os` calls, as a worker reads its script for every step."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise ScriptError(f"{path}: script not found") from None
    except OSError as exc:
        raise ScriptError(f"{path}: cannot read script: {exc.strerror}") from None
    return b"".join(chunks)


_COMPILED_MAX = 64
_compiled: dict[str, tuple[bytes, types.CodeType, str]] = {}
"""Script path -> (source, its code object, its code hash), for the latest source only."""


def _compile(path: Path, source: bytes) -> tuple[types.CodeType, str]:
    """The code object and code hash of this source, compiled once per process.

    A worker loads the script for every step, and compiling costs more than the rest of a
    trivial step. The cache is keyed by the bytes themselves rather than the file's mtime,
    so an edit is seen even within one tick of the file system's clock.
    """
    key = str(path)
    cached = _compiled.get(key)
    if cached is not None and cached[0] == source:
        return cached[1], cached[2]
    try:
        code = compile(source, key, "exec")
    except SyntaxError as exc:
        raise ScriptError(f"{path}, line {exc.lineno}: syntax error: {exc.msg}") from None
    if len(_compiled) >= _COMPILED_MAX:
        _compiled.clear()  # more scripts than any workspace has: start again, stay small
    digest = code_hash(source)
    _compiled[key] = (source, code, digest)
    return code, digest


@functools.lru_cache(maxsize=_COMPILED_MAX)
def _module_name(path: str) -> str:
    """The name of a script's module: the same for every load of one file."""
    return f"{_MODULE_PREFIX}{code_hash(path.encode())}"


def load_script(path: Path) -> LoadedScript:
    """Execute a script file in a fresh module and return its `Script` class."""
    code, digest = _compile(path, _read(path))
    name = _module_name(str(path))
    module = types.ModuleType(name)
    module.__file__ = str(path)
    # Registered so that dataclasses, pickle and friends can find the module while it runs.
    sys.modules[name] = module
    exec(code, module.__dict__)
    cls = module.__dict__.get("Script")
    if not (isinstance(cls, type) and issubclass(cls, ScriptTemplate)):
        raise ScriptError(f"{path}: no class `Script(ScriptTemplate)` found")
    return LoadedScript(cls, digest)


#: The class attributes that say where a step reads and writes.
PATTERN_NAMES = ("PATH_IN", "PATH_OUT", "PATH_CONTROL")


def read_patterns(path: Path) -> tuple[object, object, object]:
    """PATH_IN, PATH_OUT and PATH_CONTROL (None if not declared) of a script, from its
    source when they are literals.

    Falls back to executing the script when one is computed or inherited. PATH_CONTROL is
    read from the `Script` class body only: not set there, it is None, so that loading a
    workspace never imports a script (and what it imports) for it.
    """
    source = _read(path)
    try:
        tree = ast.parse(source, str(path))
    except SyntaxError as exc:
        raise ScriptError(f"{path}, line {exc.lineno}: syntax error: {exc.msg}") from None
    found: dict[str, object] = {}
    assigned: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Script":
            for stmt in node.body:
                targets = (
                    stmt.targets
                    if isinstance(stmt, ast.Assign)
                    else [stmt.target]
                    if isinstance(stmt, ast.AnnAssign) and stmt.value is not None
                    else []
                )
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in PATTERN_NAMES:
                        assigned.add(target.id)
                        found.pop(target.id, None)  # a later assignment wins, literal or not
                        with contextlib.suppress(ValueError):
                            found[target.id] = ast.literal_eval(stmt.value)  # type: ignore[arg-type]
    if "PATH_CONTROL" not in assigned:
        found["PATH_CONTROL"] = None
    if all(name in found for name in PATTERN_NAMES):
        return found["PATH_IN"], found["PATH_OUT"], found["PATH_CONTROL"]
    try:
        cls = load_script(path).cls
    except ScriptError:
        raise
    except Exception as exc:  # the user's module raised while importing
        raise ScriptError(f"{path}: importing the script raised {exc!r}") from None
    return cls.PATH_IN, cls.PATH_OUT, found.get("PATH_CONTROL", cls.PATH_CONTROL)


def check_script(path: Path) -> tuple[str | None, str | None]:
    """(code hash, None) for a script that compiles; (hash or None, one line saying why)
    otherwise. Compiling is cached by the script's bytes, so asking often costs a read."""
    try:
        source = _read(path)
    except ScriptError as exc:
        return None, str(exc)
    try:
        return _compile(path, source)[1], None
    except ScriptError as exc:
        return code_hash(source), str(exc)
