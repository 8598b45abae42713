"""`Workspace`: the user's entry point, shaped as sinagot 0.3's; the engine does the work.

Its public names are the seed's and 0.3's API only: the engine (planning, the state store,
the executor) stays behind `_engine`, for the CLI and the daemon.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .engine import Engine
from .errors import SinagotError
from .models import RecordCollection, StepCollection
from .models.classes import ModelClasses

PathLike = str | os.PathLike[str]

#: Tables 0.3 filled in when a file left them out (`ws.config["run"]["mode"]` always works).
_DEFAULT_TABLES = MappingProxyType({
    "path": MappingProxyType({"dataset": "./dataset", "scripts": "./scripts"}),
    "run": MappingProxyType({"mode": "main_process"}),
})  # fmt: skip


class Workspace:
    """A workspace: a configuration, a dataset folder and a scripts folder.

    `Workspace(config_path)` takes a folder holding `workspace.toml`, a `.toml` file, or a
    list of files merged in order; `data_path` and `scripts_path` override the
    configuration's folders. `verbose` echoes step log lines to stdout as steps run (main
    process only). `scheduler`, a Dask scheduler address, runs steps on Dask whatever
    `[run] mode` says.
    """

    def __init__(
        self,
        config_path: PathLike | Sequence[PathLike],
        data_path: PathLike | None = None,
        scripts_path: PathLike | None = None,
        *,
        verbose: bool = True,
        scheduler: str | None = None,
    ) -> None:
        self._engine = Engine(
            config_path,
            verbose=verbose,
            scheduler=scheduler,
            data_path=data_path,
            scripts_path=scripts_path,
        )
        if data_path is not None and not self._engine.config.dataset.is_dir():
            raise SinagotError(f"data_path {self._engine.config.dataset} is not a folder")
        self._classes = ModelClasses(self._engine.config)
        self._engine.version = str(self.version)  # a subclass may say otherwise

    def __repr__(self) -> str:
        return "<Workspace instance>"

    def __getattr__(self, name: str) -> RecordCollection:
        if name.startswith("_") or "_engine" not in self.__dict__:
            raise AttributeError(name)
        try:
            return getattr(self.records, name)
        except AttributeError as exc:
            raise AttributeError(str(exc).replace("RecordCollection", "Workspace", 1)) from None

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.records.tasks_names(),
                       *self.records.modalities_names()})  # fmt: skip

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what the workspace opened (executor, cluster, state store, lock)."""
        self._engine.close()

    @property
    def config(self) -> Mapping[str, Any]:
        """The merged configuration as read, read-only (`ws.config["run"]["mode"]`)."""
        raw = self._engine.config.raw
        missing = {k: v for k, v in _DEFAULT_TABLES.items() if k not in raw}
        return MappingProxyType({**raw, **missing}) if missing else raw

    @property
    def info(self) -> Mapping[str, Any]:
        """The `[info]` table (0.3's workspace metadata), empty if there is none."""
        return self._engine.config.raw.get("info", {})

    @property
    def version(self) -> str:
        """The workspace's version, written into every log line (default "0.1.0")."""
        return self._engine.config.version

    @property
    def data_path(self) -> Path:
        return self._engine.config.dataset

    @property
    def scripts_path(self) -> Path:
        return self._engine.config.scripts

    @property
    def is_unit_mode(self) -> bool:
        """True for a workspace of plain steps (`[steps]`), without tasks and modalities."""
        return not self._engine.config.scoped

    @property
    def records(self) -> RecordCollection:
        return self._classes.collection(None)(self)

    @property
    def steps(self) -> StepCollection:
        return self.records.steps
