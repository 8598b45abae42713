"""User scripts: the `ScriptTemplate` base class and the one importer that loads them.

Patterns are read from the script's source without running it whenever they are literals,
so loading a workspace (or `sinagot status`) never imports pandas or whatever a script uses.
A script is executed fresh from its file for every run, so an edit is picked up at once;
only its compilation is reused while its bytes stay the same.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import logging
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .errors import ScriptError


@dataclass(frozen=True)
class ScriptPaths:
    """What `self.path` holds in a script: its inputs and outputs, as `Path`s or dicts of them."""

    input: Path | dict[str, Path]
    output: Path | dict[str, Path]


class ScriptTemplate:
    """Base class of every step script: set PATH_IN and PATH_OUT, write `run()`.

    During `run()`, `self.path.output` points at temporary files beside the real outputs;
    sinagot renames them into place only when `run()` returns, so a failed or killed run
    never leaves a file that could be taken for a finished result.
    """

    PATH_IN: ClassVar[tuple[str, ...] | dict[str, tuple[str, ...]]] = ()
    PATH_OUT: ClassVar[tuple[str, ...] | dict[str, tuple[str, ...]]] = ()

    def __init__(
        self,
        *,
        id: str,
        task: str | None,
        modality: str | None,
        path: ScriptPaths,
        logger: logging.Logger,
        opts: dict[str, Any] | None = None,
    ) -> None:
        self.id = id
        self.task = task
        self.modality = modality
        self.path = path
        self.logger = logger
        self.opts = dict(opts or {})

    def run(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}.run() is not written")


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


def load_script(path: Path) -> LoadedScript:
    """Execute a script file in a fresh module and return its `Script` class."""
    code, digest = _compile(path, _read(path))
    name = f"sinagot_script_{code_hash(str(path).encode())}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    # Registered so that dataclasses, pickle and friends can find the module while it runs.
    sys.modules[name] = module
    exec(code, module.__dict__)
    cls = module.__dict__.get("Script")
    if not (isinstance(cls, type) and issubclass(cls, ScriptTemplate)):
        raise ScriptError(f"{path}: no class `Script(ScriptTemplate)` found")
    return LoadedScript(cls, digest)


def read_patterns(path: Path) -> tuple[object, object]:
    """PATH_IN and PATH_OUT of a script, from its source when they are literals.

    Falls back to executing the script when they are computed or inherited.
    """
    source = _read(path)
    try:
        tree = ast.parse(source, str(path))
    except SyntaxError as exc:
        raise ScriptError(f"{path}, line {exc.lineno}: syntax error: {exc.msg}") from None
    found: dict[str, object] = {}
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
                    if isinstance(target, ast.Name) and target.id in ("PATH_IN", "PATH_OUT"):
                        with contextlib.suppress(ValueError):
                            found[target.id] = ast.literal_eval(stmt.value)  # type: ignore[arg-type]
    if len(found) == 2:
        return found["PATH_IN"], found["PATH_OUT"]
    try:
        cls = load_script(path).cls
    except ScriptError:
        raise
    except Exception as exc:  # the user's module raised while importing
        raise ScriptError(f"{path}: importing the script raised {exc!r}") from None
    return cls.PATH_IN, cls.PATH_OUT


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
