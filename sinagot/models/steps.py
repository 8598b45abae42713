"""`StepCollection` and `Step`, sinagot 0.3's shapes over the engine's plans.

On a scope without a modality, 0.3 answered `scripts_names`, `get`, `first` and `count`
with one entry per modality; those shapes are kept. Everything runs through the engine:
steps run when stale (all of them with `force`), in unit order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..planner import StepPlan
from ..status import StepStatus

if TYPE_CHECKING:
    import pandas as pd

    from ..layout import StepSpec
    from ..scripts import ScriptTemplate
    from .scope import Scope

STATUS_COLUMNS = ("record_id", "task", "modality", "step_index", "step_label", "step_status")


class StepCollection:
    """The steps of every unit in a scope (a record's, or a collection's)."""

    def __init__(self, model: Scope) -> None:
        self.model = model
        self.task = model.task
        self.modality = model.modality

    def __repr__(self) -> str:
        names = self.scripts_names()
        if isinstance(names, dict):
            names = list(dict.fromkeys(n for per in names.values() for n in per))
        return f"<StepCollection instance | {', '.join(names)}>"

    @property
    def _per_modality(self) -> bool:
        """0.3 answered per modality when the scope had none (in a scoped workspace)."""
        return self.modality is None and self.model._engine.config.scoped

    def _names(self, modality: str | None) -> list[str]:
        """The step names of one modality in this scope, in run order."""
        config = self.model._engine.config
        if not config.scoped:
            return list(config.steps or ())
        spec = config.modalities[modality]
        if self.task is not None:
            return [*spec.scripts, *spec.task_scripts.get(self.task, ())]
        return [*spec.scripts, *(n for names in spec.task_scripts.values() for n in names)]

    def _each_modality(self, answer: Any) -> dict[str, Any]:
        return {m.modality: answer(m.steps) for m in self.model.iter_modalities()}

    def scripts_names(self) -> list[str] | dict[str, list[str]]:
        if self._per_modality:
            return self._each_modality(StepCollection.scripts_names)
        return self._names(self.modality)

    def count(self) -> int | dict[str, int]:
        if self._per_modality:
            return self._each_modality(StepCollection.count)
        return len(self._names(self.modality))

    def get(self, step_label: str) -> Step | dict[str, Step | None] | None:
        """The step of this name, or None if this scope has none of that name."""
        if self._per_modality:
            return self._each_modality(lambda steps: steps.get(step_label))
        return Step(step_label, self.model) if step_label in self._names(self.modality) else None

    def first(self) -> Step | dict[str, Step | None] | None:
        if self._per_modality:
            return self._each_modality(StepCollection.first)
        names = self._names(self.modality)
        return Step(names[0], self.model) if names else None

    def all(self) -> list[Step]:
        """Every step of the scope (of each modality, when the scope has none)."""
        if self._per_modality:
            return [s for m in self.model.iter_modalities() for s in m.steps.all()]
        return [Step(name, self.model) for name in self._names(self.modality)]

    def __iter__(self) -> Iterator[Step]:
        return iter(self.all())

    # -- planning and running ---------------------------------------------------------------

    def _plans(
        self,
        step_label: str | None = None,
        force: bool = False,
        ignore_missing: bool = False,
    ) -> list[StepPlan]:
        engine = self.model._engine
        return engine.plan(
            self.model._units(), force=force, only=step_label, ignore_missing=ignore_missing
        )

    def run(
        self,
        step_label: str | None = None,
        force: bool = False,
        ignore_missing: bool = False,
        debug: bool = False,
    ) -> None:
        """Run the steps that are stale (all of them with `force`), unit by unit; only the
        steps named `step_label` if given. `ignore_missing` runs steps whose inputs are
        missing (the script decides); `debug` raises a script's exception here instead of
        logging it."""
        if step_label is not None:
            self._check_label(step_label)
        plans = self._plans(step_label, force, ignore_missing)
        self.model._engine.execute(plans, debug=debug)

    def _all_names(self) -> list[str]:
        names = self.scripts_names()
        if isinstance(names, dict):
            return list(dict.fromkeys(n for per in names.values() for n in per))
        return names

    def _check_label(self, step_label: str) -> None:
        """KeyError naming this scope's steps when `step_label` is none of them."""
        names = self._all_names()
        if step_label not in names:
            raise KeyError(
                f"no step {step_label!r} here; steps: {', '.join(sorted(names)) or 'none'}"
            )

    def status(self, reasons: bool = False) -> pd.DataFrame:
        """One row per step of each unit: 0.3's columns, `step_index` from 1; with
        `reasons`, a `reasons` column says why each step would run (empty: up to date)."""
        return status_frame(self._plans(), reasons)


class Step:
    """One named step of a scope with a modality (of one record, or of all of them)."""

    def __init__(self, script: str, model: Scope) -> None:
        self.label = script
        self.model = model
        self.task = model.task
        self.modality = model.modality
        self.id: str | None = getattr(model, "id", None)

    def __repr__(self) -> str:
        return (
            f"<Step instance | task: {self.task}, modality: {self.modality}, label: {self.label}>"
        )

    def _plans(self) -> list[StepPlan]:
        return [p for p in self.model.steps._plans(self.label) if p.step.name == self.label]

    def status(self) -> StepStatus:
        """Where the step stands: for several units, the least advanced of them (ERROR or
        PROCESSING first, if any unit is)."""
        statuses = [StepStatus(p.status) for p in self._plans()]
        for urgent in (StepStatus.ERROR, StepStatus.PROCESSING):
            if urgent in statuses:
                return urgent
        return min(statuses, default=StepStatus.INIT)

    def reasons(self) -> list[str]:
        """Why this step would run (empty when it is up to date); unit-prefixed across units."""
        plans = [p for p in self._plans() if p.run]
        if len({p.unit for p in plans}) <= 1:
            return [r for p in plans for r in p.reasons]
        return [f"{p.unit.key}: {r}" for p in plans for r in p.reasons]

    def run(self, force: bool = False, ignore_missing: bool = False, debug: bool = False) -> None:
        self.model.steps.run(self.label, force=force, ignore_missing=ignore_missing, debug=debug)

    def logs(self) -> pd.DataFrame:
        logs = self.model.logs()
        return logs[logs["step_label"] == self.label].reset_index(drop=True)

    @property
    def spec(self) -> StepSpec:
        engine = self.model._engine
        keys = self.model._unit_keys() or [(None, self.modality)]
        specs = {s.script: s for k in keys for s in engine.layout.steps(*k) if s.name == self.label}
        if len(specs) != 1:
            raise ValueError(f"step {self.label!r} is not one script here")
        return next(iter(specs.values()))

    @property
    def script(self) -> ScriptTemplate:
        """The user's `Script`, loaded fresh from its file and bound to this record (its
        `path`, `data_exist`, own methods). For a collection, `{id}` stays a placeholder."""
        from ..errors import ScriptError
        from ..scripts import bind_script

        engine, spec = self.model._engine, self.spec
        try:
            return bind_script(
                spec, self.id or "{id}", self.task or "{task}", engine.config.dataset
            )
        except ScriptError:
            raise
        except (Exception, SystemExit) as exc:  # the user's module raised while importing
            raise ScriptError(f"{spec.script}: importing the script raised {exc!r}") from None


def status_frame(plans: list[StepPlan], reasons: bool = False) -> pd.DataFrame:
    import pandas as pd

    rows = [
        (p.unit.record_id, p.unit.task, p.unit.modality, p.index + 1, p.step.name,
         StepStatus(p.status), *([list(p.reasons)] if reasons else []))
        for p in plans
    ]  # fmt: skip
    columns = [*STATUS_COLUMNS, *(["reasons"] if reasons else [])]
    return pd.DataFrame(rows, columns=columns)
