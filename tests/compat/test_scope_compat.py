"""sinagot 0.3's scopes: subscopes by task and modality, their order, and custom classes."""

from __future__ import annotations

import pytest

from compat.conftest import ID, MODALITIES, TASKS, UNITS
from sinagot import Workspace
from sinagot.models import (
    Record,
    RecordCollection,
    RecordCollectionUnit,
    RecordUnit,
    Scope,
    Step,
    StepCollection,
    StepCollectionUnit,
)
from sinagot.models.pandas import PandasRecord, PandasRecordCollection
from sinagot.models.processed import ProcessedRecord, ProcessedRecordCollection


def dims(scopes) -> list[tuple[str | None, str | None]]:
    return [(scope.task, scope.modality) for scope in scopes]


# -- the documented classes --------------------------------------------------------------


def test_the_03_classes_are_importable_and_related_as_documented():
    assert issubclass(RecordCollection, Scope)
    assert issubclass(Record, Scope)
    # The unit-mode names are the same classes (deliberate: one model for both modes).
    assert issubclass(RecordUnit, Record) and issubclass(Record, RecordUnit)
    assert issubclass(RecordCollectionUnit, RecordCollection)
    assert issubclass(RecordCollection, RecordCollectionUnit)
    assert issubclass(StepCollectionUnit, StepCollection)
    assert issubclass(StepCollection, StepCollectionUnit)
    assert issubclass(PandasRecord, Record)
    assert issubclass(PandasRecordCollection, RecordCollection)
    assert issubclass(ProcessedRecord, Record)
    assert issubclass(ProcessedRecordCollection, RecordCollection)


def test_scoped_workspace_objects_are_the_03_classes(workspace, record):
    assert isinstance(workspace.records, RecordCollection)
    assert isinstance(record, Record)
    assert isinstance(workspace.steps, StepCollection)
    assert isinstance(workspace.records.steps, StepCollection)
    assert isinstance(workspace.RS.EEG.steps.first(), Step)
    assert isinstance(workspace.steps.scripts_names(), dict)


def test_unit_mode_objects_are_the_03_unit_classes(minimal_mode):
    with Workspace(minimal_mode, verbose=False) as ws:
        assert isinstance(ws.records, RecordCollectionUnit)
        assert isinstance(ws.records.first(), RecordUnit)
        assert isinstance(ws.records.steps, StepCollectionUnit)
        assert isinstance(ws.steps.scripts_names(), list)
        assert repr(ws.records.get("REC-001")) == "<Record instance | id: REC-001>"
        assert "task" not in repr(ws.records.first())


# -- subscopes ---------------------------------------------------------------------------


def test_workspace_subscopes_are_collections_of_a_task_or_a_modality(workspace):
    for task in TASKS:
        scope = getattr(workspace, task)
        assert isinstance(scope, RecordCollection)
        assert (scope.task, scope.modality) == (task, None)
    for modality in ("EEG", "clinical", "processed"):
        scope = getattr(workspace, modality)
        assert isinstance(scope, RecordCollection)
        assert (scope.task, scope.modality) == (None, modality)


def test_subscope_reprs(workspace, record):
    assert repr(workspace.EEG) == "<RecordCollection instance | task: None, modality: EEG>"
    assert repr(workspace.RS.EEG) == "<RecordCollection instance | task: RS, modality: EEG>"
    assert repr(record.RS.EEG) == f"<Record instance | id: {ID}, task: RS, modality: EEG>"
    assert (
        repr(workspace.RS.EEG.get("REC-200606-A"))
        == "<Record instance | id: REC-200606-A, task: RS, modality: EEG>"
    )


def test_task_and_modality_can_be_taken_in_either_order(workspace, record):
    assert dims([workspace.RS.EEG, workspace.EEG.RS]) == [("RS", "EEG")] * 2
    assert dims([record.HDC.behavior, record.behavior]) == [("HDC", "behavior")] * 2
    assert record.RS.EEG.id == ID
    # Deliberate difference 2: the modality's class in either order (0.3 lost it task-second).
    assert isinstance(workspace.RS.clinical, PandasRecordCollection)
    assert isinstance(workspace.clinical.RS, PandasRecordCollection)
    assert isinstance(record.RS.clinical, PandasRecord)
    assert isinstance(record.clinical.RS, PandasRecord)


@pytest.mark.parametrize("scope_of", ["records", "record"])
@pytest.mark.parametrize(
    ("task", "modality", "collection_class", "record_class"),
    [
        (None, None, RecordCollection, Record),
        ("RS", None, RecordCollection, Record),
        ("HDC", None, RecordCollection, Record),
        ("MMN", None, RecordCollection, Record),
        (None, "EEG", RecordCollection, Record),
        ("RS", "EEG", RecordCollection, Record),
        (None, "clinical", PandasRecordCollection, PandasRecord),
        ("MMN", "clinical", PandasRecordCollection, PandasRecord),
        (None, "processed", ProcessedRecordCollection, ProcessedRecord),
    ],
)
def test_get_subscope(workspace, scope_of, task, modality, collection_class, record_class):
    scope = workspace.records if scope_of == "records" else workspace.records.get(ID)
    sub = scope.get_subscope(task=task, modality=modality)
    expected = collection_class if scope_of == "records" else record_class
    assert isinstance(sub, expected)
    # Neither the pandas nor the processed class for the others, nor the user's behavior one.
    assert not hasattr(sub, "test")
    if expected in (RecordCollection, Record):
        assert not isinstance(sub, PandasRecordCollection | PandasRecord)
        assert not isinstance(sub, ProcessedRecordCollection | ProcessedRecord)
    assert (sub.task, sub.modality) == (task, modality)


@pytest.mark.parametrize("scope_of", ["records", "record"])
def test_get_subscope_of_the_custom_behavior_classes(workspace, scope_of):
    scope = workspace.records if scope_of == "records" else workspace.records.get(ID)
    for sub in (scope.get_subscope(task="HDC", modality="behavior"),
                scope.get_subscope(modality="behavior")):  # fmt: skip
        assert sub.test() == ("Test !!" if scope_of == "records" else "Test record !!")
        assert (sub.task, sub.modality) == ("HDC", "behavior")  # the class pins task HDC


def test_get_subscope_of_an_unknown_name_raises_attribute_error(workspace, record):
    with pytest.raises(AttributeError, match="XX"):
        workspace.records.get_subscope(task="XX")
    with pytest.raises(AttributeError, match="XX"):
        record.get_subscope(modality="XX")


def test_is_unit(workspace, record, minimal_mode):
    assert workspace.RS.EEG.is_unit is True
    assert workspace.behavior.is_unit is True  # its class pins the task
    assert workspace.RS.is_unit is False
    assert workspace.EEG.is_unit is False
    assert workspace.records.is_unit is False
    assert record.is_unit is False
    assert record.HDC.behavior.is_unit is True
    with Workspace(minimal_mode, verbose=False) as ws:
        assert ws.records.is_unit is True
        assert ws.records.first().is_unit is True


# -- iteration ---------------------------------------------------------------------------


@pytest.mark.parametrize("scope_of", ["records", "record"])
def test_iter_tasks_and_modalities_in_config_order(workspace, scope_of):
    scope = workspace.records if scope_of == "records" else workspace.records.get(ID)
    base = RecordCollection if scope_of == "records" else Record
    tasks = list(scope.iter_tasks())
    modalities = list(scope.iter_modalities())
    assert [t.task for t in tasks] == list(TASKS)
    assert [m.modality for m in modalities] == list(MODALITIES)
    for child in tasks:
        assert isinstance(child, base)
        assert list(child.iter_tasks()) == []
    for child in modalities:
        assert isinstance(child, base)
        assert list(child.iter_modalities()) == []
    if scope_of == "record":
        assert {child.id for child in tasks + modalities} == {ID}


def test_iter_on_a_subscope_keeps_to_its_valid_names(workspace):
    assert [s.task for s in workspace.EEG.iter_tasks()] == ["RS", "MMN", "HDC"]
    assert [s.modality for s in workspace.RS.iter_modalities()] == ["EEG", "clinical"]
    assert [s.modality for s in workspace.HDC.iter_modalities()] == [
        "EEG", "behavior", "clinical",
    ]  # fmt: skip
    assert [s.task for s in workspace.processed.iter_tasks()] == []


def test_iter_units_in_03_order(workspace, record):
    assert dims(workspace.records.iter_units()) == list(UNITS)
    assert dims(record.iter_units()) == list(UNITS)
    assert {unit.id for unit in record.iter_units()} == {ID}
    assert dims(workspace.HDC.iter_units()) == [("HDC", "EEG"), ("HDC", "behavior"),
                                                ("HDC", "clinical")]  # fmt: skip
    assert dims(workspace.EEG.iter_units()) == [("RS", "EEG"), ("MMN", "EEG"), ("HDC", "EEG")]
    assert dims(workspace.RS.EEG.iter_units()) == [("RS", "EEG")]
    assert dims(workspace.processed.iter_units()) == []  # processed belongs to no task


def test_units_are_of_their_modality_class(workspace):
    units = {(u.task, u.modality): u for u in workspace.records.iter_units()}
    assert isinstance(units["RS", "clinical"], PandasRecordCollection)
    assert units["HDC", "behavior"].test() == "Test !!"
    assert not isinstance(units["RS", "EEG"], PandasRecordCollection)


# -- invalid subscopes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "valid"),
    [
        (("EEG", "behavior"), ("RS", "MMN", "HDC")),
        (("RS", "behavior"), ("EEG", "clinical")),
        (("RS", "MMN"), ("EEG", "clinical")),
        (("clinical", "clinical"), ("RS", "MMN", "HDC")),
        (("nonsense",), ("RS", "MMN", "HDC", "EEG", "behavior", "clinical", "processed")),
    ],
)
def test_an_invalid_subscope_raises_attribute_error_naming_the_valid_ones(workspace, path, valid):
    *head, wrong = path
    for start in (workspace, workspace.records, workspace.records.get(ID)):
        scope = start
        for name in head:
            scope = getattr(scope, name)
        with pytest.raises(AttributeError) as exc:
            getattr(scope, wrong)
        message = str(exc.value)
        assert wrong in message
        for name in valid:
            assert name in message


def test_a_task_pinned_collection_has_no_other_modality(workspace, record):
    with pytest.raises(AttributeError, match="EEG"):
        workspace.behavior.EEG  # noqa: B018
    with pytest.raises(AttributeError, match="EEG"):
        record.behavior.EEG  # noqa: B018


def test_a_unit_mode_workspace_has_no_subscopes(minimal_mode):
    with Workspace(minimal_mode, verbose=False) as ws:
        with pytest.raises(AttributeError):
            ws.records.EEG  # noqa: B018
        with pytest.raises(AttributeError):
            ws.records.first().RS  # noqa: B018


# -- custom model classes (scripts/behavior/models/) -------------------------------------


def test_the_users_record_collection_class_is_used_for_its_modality(workspace):
    behavior = workspace.behavior
    assert behavior.test() == "Test !!"
    assert workspace.records.behavior.test() == "Test !!"
    assert workspace.HDC.behavior.test() == "Test !!"
    assert isinstance(behavior, RecordCollection)
    assert type(behavior) is not RecordCollection
    # Deliberate difference 2: the user's class keeps its name (0.3: BehaviorRecordCollection).
    assert type(behavior).__name__ == "RecordCollection"
    # Other modalities keep the plain class.
    assert not hasattr(workspace.EEG, "test")
    assert not hasattr(workspace.HDC.EEG, "test")


def test_the_users_record_class_is_used_for_its_modality(workspace, record):
    rec = workspace.behavior.first()
    assert rec.id == "REC-200320-A"
    assert isinstance(rec, Record)
    assert rec.test() == "Test record !!"
    assert workspace.behavior.get(ID).test() == "Test record !!"
    assert record.behavior.test() == "Test record !!"
    assert record.HDC.behavior.test() == "Test record !!"
    assert [r.test() for r in workspace.behavior.all()] == ["Test record !!"]
    assert not hasattr(record.HDC.EEG, "test")


def test_a_class_pinned_task_applies_everywhere(workspace, record):
    assert workspace.behavior.task == "HDC"
    assert workspace.behavior.get(ID).task == "HDC"
    assert record.behavior.task == "HDC"
    assert workspace.behavior.steps.scripts_names() == ["scores", "scores_norm"]
    assert workspace.behavior.steps.first().task == "HDC"
    assert workspace.behavior.ids() == ["REC-200320-A"]


def test_custom_classes_are_read_from_the_models_files(sonetaa):
    models = sonetaa / "scripts" / "behavior" / "models" / "record_collection.py"
    models.write_text(models.read_text().replace("Test !!", "Edited !!"))
    with Workspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False) as ws:
        assert ws.behavior.test() == "Edited !!"


def test_models_record_names_the_record_class(sonetaa):
    record_py = sonetaa / "scripts" / "behavior" / "models" / "record.py"
    record_py.write_text(
        record_py.read_text()
        + "\n\nclass OtherRecord(BaseRecord):\n    def test(self):\n        return 'Other !!'\n"
    )
    toml = sonetaa / "workspace.toml"
    toml.write_text(
        toml.read_text().replace(
            "scripts = ['scores', 'scores_norm']",
            "scripts = ['scores', 'scores_norm']\n        models.record = 'OtherRecord'",
        )
    )
    with Workspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False) as ws:
        assert ws.behavior.first().test() == "Other !!"
        assert ws.behavior.get(ID).test() == "Other !!"
        assert ws.HDC.behavior.get(ID).test() == "Other !!"


# -- several workspaces ------------------------------------------------------------------


def test_two_workspaces_with_different_configs_in_one_process(sonetaa, pandas_workspace):
    # Deliberate difference 3: 0.3 kept subscopes on the classes, shared by all workspaces.
    with (
        Workspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False) as first,
        Workspace(pandas_workspace, verbose=False) as second,
    ):
        assert isinstance(second.base.pandas, PandasRecordCollection)
        assert sorted(second.records.ids()) == ["REC-200319-A", "REC-200320-A"]
        with pytest.raises(AttributeError):
            first.base  # noqa: B018
        with pytest.raises(AttributeError):
            second.behavior  # noqa: B018
        assert first.behavior.test() == "Test !!"
        assert dims(first.records.iter_units()) == list(UNITS)
        assert dims(second.records.iter_units()) == [("base", "pandas")]
