"""`Workspace`: the entry point. It holds the config and layout and runs plans; cheap to build.

Nothing is started at construction: the state store, the Dask client and the record list
are opened or computed when first needed, and released by `close()`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .config import Config, load_config
from .execute import Executor, LocalExecutor, chains_of
from .fingerprints import DirectoryListing, Lookup, stat_path
from .layout import Layout, Scope, Unit
from .model import RecordCollection, StepCollection
from .patterns import check_record_id
from .planner import StepPlan, plan_unit
from .runner import StepJob, StepResult

#: Planning more units than this lists folders once instead of stat-ing each path.
_LISTING_THRESHOLD = 64


class Workspace:
    """A workspace: a configuration, a dataset folder and a scripts folder.

    `Workspace(path)` takes a folder holding `workspace.toml`, a `.toml` file, or a list of
    files merged in order. `verbose` echoes step log lines to stdout as steps run.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        verbose: bool = True,
    ) -> None:
        self.config: Config = load_config(config)
        self.layout = Layout(self.config)
        self.verbose = verbose
        self._executor: Executor | None = None

    def __repr__(self) -> str:
        return "<Workspace instance>"

    def __getattr__(self, name: str) -> RecordCollection:
        if name.startswith("_") or "layout" not in self.__dict__:
            raise AttributeError(name)
        return RecordCollection(self, self.layout.narrow(Scope(), name, "Workspace"))

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what the workspace opened (executor, cluster, state store)."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    @property
    def records(self) -> RecordCollection:
        return RecordCollection(self, Scope())

    @property
    def steps(self) -> StepCollection:
        return StepCollection(self, Scope(), None)

    # -- the engine the model, the CLI and the daemon share ------------------------------

    @property
    def dataset(self) -> Path:
        return self.config.dataset

    def check_id(self, record_id: str) -> str:
        return check_record_id(record_id, self.config.id_regex)

    def units(self, scope: Scope, record_ids: Iterable[str] | None = None) -> list[Unit]:
        """The units of these records (all discovered ones by default) inside a scope."""
        ids = self.layout.discover(scope) if record_ids is None else record_ids
        keys = self.layout.unit_keys(scope)
        return [Unit(rid, task, mod) for rid in ids for task, mod in keys]

    def plan(
        self, units: Sequence[Unit], *, force: bool = False, only: str | None = None
    ) -> list[StepPlan]:
        """Plan these units: every step of each, with its status and reasons."""
        lookup: Lookup = DirectoryListing() if len(units) > _LISTING_THRESHOLD else stat_path
        dataset = str(self.config.dataset)
        plans: list[StepPlan] = []
        for unit in units:
            steps = self.layout.steps(unit.task, unit.modality)
            plans.extend(plan_unit(unit, steps, dataset, lookup, {}, force=force, only=only))
        return plans

    def job(self, plan: StepPlan) -> StepJob:
        return StepJob(
            unit=plan.unit,
            spec=plan.step,
            dataset=str(self.config.dataset),
            inputs=plan.inputs,
            outputs=plan.outputs,
            workspace_version=self.config.version,
            hash_inputs=self.config.content_hash,
            echo=self.verbose,
        )

    def execute(self, plans: Iterable[StepPlan]) -> list[StepResult]:
        """Run the steps these plans mark to run, unit by unit, each unit's steps in order."""
        chains = chains_of(plans, self.job)
        return self.executor.run(chains, lambda job: None, lambda job, result: None)

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = LocalExecutor()
        return self._executor
