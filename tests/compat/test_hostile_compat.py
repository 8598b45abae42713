"""The 0.3 layer meets wrong input: one line naming the file, the key or the record, and
nothing written. (The engine's own defences are tested in tests/hostile/.)"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sinagot import ConfigError, RecordIdError, SinagotError, Workspace
from sinagot.engine import Engine
from sinagot.models import RecordCollection

from .conftest import ID, dataset_files

OTHER = "REC-200320-A"


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def set_models(root: Path, modality: str, line: str) -> None:
    toml = root / "workspace.toml"
    text = toml.read_text()
    anchor = f"    [modalities.{modality}]\n"
    toml.write_text(text.replace(anchor, anchor + f"        {line}\n", 1))


def test_a_lab_base_class_whose_imports_fail_here_does_not_stop_loading(sonetaa):
    # Steps import packages only the workers have; loading, status and the daemon must not.
    (sonetaa / "scripts" / "EEG" / "preprocess.py").write_text(
        "import a_package_only_the_workers_have\n"
        "from sinagot import ScriptTemplate\n\n"
        "class Base(ScriptTemplate):\n    pass\n\n"
        "class Script(Base):\n"
        '    PATH_IN = ("MFF", "{id}-{task}.mff")\n'
        '    PATH_OUT = ("PREPROCESSED", "{id}-{task}-epo.fif.gz")\n'
    )
    with Engine(sonetaa, verbose=False) as engine:
        (spec,) = [s for s in engine.layout.steps("RS", "EEG") if s.name == "preprocess"]
        assert spec.control is None
    ws = Workspace(sonetaa, verbose=False)
    assert sorted(ws.RS.EEG.ids()) == sorted((ID, OTHER))


def test_a_collection_that_filters_its_parents_ids_works(sonetaa):
    (sonetaa / "scripts" / "behavior" / "models" / "record_collection.py").write_text(
        "from sinagot.models import RecordCollection as Base\n\n"
        "class RecordCollection(Base):\n"
        '    task = "HDC"\n\n'
        "    def iter_ids(self):\n"
        '        return (i for i in super().iter_ids() if not i.endswith("Z"))\n'
    )
    ws = Workspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False)
    assert isinstance(ws.behavior, RecordCollection)
    assert ws.behavior.ids() == [OTHER]
    assert set(ws.records.ids()) == {ID, OTHER}
    assert set(ws.steps.status()["record_id"]) == {ID, OTHER}


def test_a_pandas_table_with_a_bad_id_is_named_and_nothing_runs(sonetaa):
    set_models(sonetaa, "clinical", "models.dataframe_path = ['CLINICAL', 'table.csv']")
    toml = sonetaa / "workspace.toml"
    toml.write_text(
        toml.read_text().replace(
            "        models.data_path = ['PROCESSED', '{id}', 'clinical.json']\n", ""
        )
    )
    (sonetaa / "dataset" / "CLINICAL").mkdir(exist_ok=True)
    (sonetaa / "dataset" / "CLINICAL" / "table.csv").write_text(
        f"record_id,age\n{ID},7\n../../escape,3\n,4\n"
    )
    ws = Workspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False)
    before = dataset_files(sonetaa / "dataset")

    with pytest.raises(RecordIdError) as exc:
        ws.steps.run(ignore_missing=True)

    assert "../../escape" in one_line(exc.value)
    assert dataset_files(sonetaa / "dataset") == before
    assert not (sonetaa.parent / "escape").exists()


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "cannot read it"),
        (b'record_id,age\n"REC-200319-A,7\n', "cannot read it"),
        (b"record_id,age\nREC-200319-A,\xff\xfe\n", "not UTF-8"),
        (b"record_id,age\nREC-200319-A,1\nREC-200319-A,2\n", "has several rows"),
        (b"id,age\nREC-200319-A,1\n", "no 'record_id' column"),
    ],
)
def test_a_broken_pandas_table_is_named(sonetaa, content, said):
    set_models(sonetaa, "clinical", "models.dataframe_path = ['CLINICAL', 'table.csv']")
    (sonetaa / "dataset" / "CLINICAL").mkdir(exist_ok=True)
    table = sonetaa / "dataset" / "CLINICAL" / "table.csv"
    table.write_bytes(content)
    ws = Workspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False)

    with pytest.raises(SinagotError) as exc:
        ws.clinical.data  # noqa: B018

    message = one_line(exc.value)
    assert str(table) in message and said in message


def test_a_pandas_json_that_is_a_link_out_of_the_dataset_is_refused(workspace, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "x"}')
    target = workspace.data_path / "PROCESSED" / ID / "clinical.json"
    target.unlink(missing_ok=True)
    target.symlink_to(secret)

    with pytest.raises(SinagotError) as exc:
        workspace.records.get(ID).clinical.data  # noqa: B018

    assert "symlink" in one_line(exc.value)


def test_a_task_placeholder_without_a_task_is_named(sonetaa):
    toml = sonetaa / "workspace.toml"
    toml.write_text(toml.read_text().replace("['PROCESSED', '{id}', 'clinical.json']",
                                             "['{task}', '{id}.json']"))  # fmt: skip
    ws = Workspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False)

    with pytest.raises(SinagotError, match=r"uses \{task\}: choose a task first"):
        ws.records.get(ID).clinical.data  # noqa: B018
    assert ws.RS.clinical.get(ID).data is None  # with a task it is a plain path


def test_a_processed_value_that_is_not_a_number_is_named(workspace):
    alpha = workspace.data_path / "PROCESSED" / ID / "alpha"
    alpha.parent.mkdir(parents=True, exist_ok=True)
    alpha.write_text("abc\n")

    with pytest.raises(SinagotError) as exc:
        workspace.processed.get_processed_data("RS_alpha")

    message = one_line(exc.value)
    assert str(alpha) in message and "could not convert" in message


def test_a_log_that_is_a_fifo_is_named_without_hanging(workspace):
    log = workspace.data_path / "LOG" / f"{ID}.log"
    log.parent.mkdir(exist_ok=True)
    os.mkfifo(log)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            workspace.records.get(ID).logs()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert outcome, "logs() blocked on a FIFO"
    assert isinstance(outcome[0], SinagotError)
    assert "not a regular file" in one_line(outcome[0])


def test_a_data_path_that_is_not_a_folder_is_named(sonetaa, tmp_path):
    with pytest.raises(SinagotError, match="is not a folder"):
        Workspace(sonetaa, data_path=tmp_path / "nowhere")


def test_the_default_tables_of_the_config_cannot_be_changed(minimal_mode):
    ws = Workspace(minimal_mode, verbose=False)
    run = ws.config["run"]
    with pytest.raises(TypeError):
        run["mode"] = "dask"  # type: ignore[index]
    assert Workspace(minimal_mode, verbose=False).config["run"]["mode"] == "main_process"


def test_a_models_file_that_exits_is_a_config_error(sonetaa):
    (sonetaa / "scripts" / "behavior" / "models" / "record.py").write_text(
        "import sys\nsys.exit(3)\n"
    )
    ws = Workspace(sonetaa, verbose=False)

    with pytest.raises(ConfigError) as exc:
        ws.behavior.first()

    assert "record.py: importing it raised SystemExit(3)" in one_line(exc.value)


def test_a_typo_in_a_step_label_is_named_by_count_step(workspace):
    with pytest.raises(KeyError, match="no step 'preprocesss' here"):
        workspace.EEG.count_step(step_label="preprocesss")
