"""sinagot 0.3's `Workspace`: construction, paths, merged configuration, version, info."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import sinagot
from compat.conftest import ID, log_lines
from sinagot import Workspace


def test_sinagot_version_is_a_plain_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+", sinagot.__version__)


def test_workspace_repr(workspace):
    assert repr(workspace) == "<Workspace instance>"


# -- paths -------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["", "dataset", "scripts"])
def test_a_workspace_opens_from_its_folder_its_dataset_or_its_scripts(sonetaa, folder):
    # Each folder holds its own workspace.toml; relative [path] entries are read from it.
    with Workspace(sonetaa / folder, verbose=False) as ws:
        assert ws.data_path == sonetaa / "dataset"
        assert ws.scripts_path == sonetaa / "scripts"
        assert ws.data_path.is_absolute()


def test_a_folder_given_as_a_string_is_accepted(sonetaa):
    with Workspace(str(sonetaa), verbose=False) as ws:
        assert ws.data_path == sonetaa / "dataset"


def test_data_path_argument_wins_over_the_configuration(sonetaa):
    with Workspace(sonetaa, data_path=sonetaa / "scripts", verbose=False) as ws:
        assert ws.data_path == sonetaa / "scripts"
        assert ws.scripts_path == sonetaa / "scripts"


def test_scripts_path_argument_wins_over_the_configuration(sonetaa, tmp_path):
    elsewhere = shutil.copytree(sonetaa / "scripts", tmp_path / "lab-scripts")
    with Workspace(sonetaa, scripts_path=elsewhere, verbose=False) as ws:
        assert ws.scripts_path == elsewhere
        assert ws.data_path == sonetaa / "dataset"


def test_a_configuration_file_with_a_custom_name(sonetaa):
    custom = sonetaa / "custom_name.toml"
    (sonetaa / "workspace.toml").rename(custom)
    with Workspace(custom, verbose=False) as ws:
        assert ws.data_path == sonetaa / "dataset"
        assert ws.scripts_path == sonetaa / "scripts"
        assert ws.records.count() == 2


def test_bare_relative_paths_are_relative_to_the_configuration_file(sonetaa, tmp_path, monkeypatch):
    toml = sonetaa / "workspace.toml"
    text = toml.read_text().replace("'./dataset'", "'dataset'").replace("'./scripts'", "'scripts'")
    toml.write_text(text)
    monkeypatch.chdir(tmp_path)
    # Deliberate difference 9: 0.3 read a bare `dataset` from the current folder (a bug).
    with Workspace(sonetaa, verbose=False) as ws:
        assert ws.data_path == sonetaa / "dataset"
        assert ws.scripts_path == sonetaa / "scripts"
        assert sorted(ws.records.ids()) == ["REC-200319-A", "REC-200320-A"]


# -- configuration -----------------------------------------------------------------------


def test_config_is_the_toml_as_written(sonetaa):
    with Workspace(sonetaa, verbose=False) as ws:
        config = ws.config
        assert config["run"]["mode"] == "dask"
        assert config["log"]["name"] == "sonetaa"
        assert config["log"]["format"] == "%(asctime)s : %(message)s"
        assert config["records"]["id_pattern"] == r"REC-[\d]{6}-[A-Z]"
        assert config["dask"]["scheduler"]["type"] == "single-threaded"
        assert dict(config["dask"]["cluster"]) == {
            "n_workers": 2, "processes": True, "threads_per_worker": 1,
        }  # fmt: skip
        assert list(config["tasks"]) == ["RS", "MMN", "HDC"]
        assert list(config["modalities"]) == ["EEG", "behavior", "clinical", "processed"]
        assert list(config["tasks"]["HDC"]["modalities"]) == ["clinical", "EEG", "behavior"]
        assert config["modalities"]["clinical"]["models"]["plugin"] == "pandas"
        assert list(config["modalities"]["clinical"]["models"]["data_path"]) == [
            "PROCESSED", "{id}", "clinical.json",
        ]  # fmt: skip
        assert list(config["modalities"]["EEG"]["task_scripts"]["RS"]) == ["alpha"]


def test_config_cannot_be_changed_through_the_workspace(workspace):
    with pytest.raises(TypeError):
        workspace.config["run"]["mode"] = "dask"
    with pytest.raises(TypeError):
        workspace.config["run"] = {"mode": "dask"}
    assert workspace.config["run"]["mode"] == "main_process"


def test_path_and_run_tables_default_as_in_03(minimal_mode):
    toml = minimal_mode / "workspace.toml"
    text = toml.read_text()
    text = re.sub(r"\[path\][^\[]*", "", text)
    text = re.sub(r"\[run\][^\[]*", "", text)
    toml.write_text(text)
    assert "[path]" not in text and "[run]" not in text
    with Workspace(minimal_mode, verbose=False) as ws:
        assert dict(ws.config["path"]) == {"dataset": "./dataset", "scripts": "./scripts"}
        assert dict(ws.config["run"]) == {"mode": "main_process"}
        assert ws.data_path == minimal_mode / "dataset"


def test_a_second_file_is_merged_over_the_first(sonetaa):
    with Workspace(sonetaa, verbose=False) as ws:
        assert ws.config["run"]["mode"] == "dask"
    with Workspace((sonetaa, sonetaa / "custom_conf.toml"), verbose=False) as ws:
        assert ws.config["run"]["mode"] == "main_process"
        # Tables merge key by key: what custom_conf.toml does not set is kept.
        assert ws.config["log"]["name"] == "sonetaa"
        assert ws.config["dask"]["cluster"]["n_workers"] == 2
        assert list(ws.config["tasks"]) == ["RS", "MMN", "HDC"]


def test_a_later_file_replaces_lists_and_keeps_the_rest_of_the_table(sonetaa):
    eeg_only = sonetaa / "mmn_eeg_only.toml"
    eeg_only.write_text("[tasks.MMN]\nmodalities = ['EEG']\n")
    with Workspace([sonetaa, sonetaa / "custom_conf.toml", eeg_only], verbose=False) as ws:
        assert list(ws.config["tasks"]["MMN"]["modalities"]) == ["EEG"]
        assert list(ws.config["tasks"]["RS"]["modalities"]) == ["clinical", "EEG"]
        assert [s.modality for s in ws.MMN.iter_modalities()] == ["EEG"]
        assert ws.MMN.steps.scripts_names() == {"EEG": ["preprocess"]}
        assert ws.config["modalities"]["clinical"]["models"]["plugin"] == "pandas"


def test_an_unknown_key_is_still_refused(sonetaa):
    toml = sonetaa / "workspace.toml"
    toml.write_text(toml.read_text().replace("[records]", "[records]\n    id_patern = 'x'"))
    with pytest.raises(sinagot.ConfigError, match="id_patern"):
        Workspace(sonetaa, verbose=False)


# -- info and version --------------------------------------------------------------------


def test_version_defaults_to_0_1_0(sonetaa, minimal_mode):
    with Workspace(minimal_mode, verbose=False) as ws:
        assert ws.version == "0.1.0"
        assert dict(ws.info) == {}
    with Workspace(sonetaa, verbose=False) as ws:
        assert ws.version == "0.1.0"


def test_version_and_info_come_from_the_info_table(workspace):
    assert workspace.version == "0.3.0"
    assert dict(workspace.info) == {"version": "0.3.0"}


def test_the_version_is_written_in_every_log_line(workspace):
    workspace.behavior.get(ID).steps.run()
    lines = log_lines(workspace.data_path, ID)
    assert lines
    assert {line["workspace_version"] for line in lines} == {"0.3.0"}


class VersionedWorkspace(Workspace):
    @property
    def version(self) -> str:
        return "0.2.0"


def test_a_subclass_overriding_version_is_honoured(sonetaa):
    with VersionedWorkspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False) as ws:
        assert ws.version == "0.2.0"
        ws.behavior.get(ID).steps.run()
        lines = log_lines(ws.data_path, ID)
    assert lines
    assert {line["workspace_version"] for line in lines} == {"0.2.0"}


# -- mode, close -------------------------------------------------------------------------


def test_is_unit_mode(sonetaa, minimal_mode, pandas_workspace):
    with Workspace(minimal_mode, verbose=False) as ws:
        assert ws.is_unit_mode is True
    with Workspace(sonetaa, verbose=False) as ws:
        assert ws.is_unit_mode is False
    # [steps] beside [tasks]: the tasks and modalities decide (0.3 did the same).
    with Workspace(pandas_workspace, verbose=False) as ws:
        assert ws.is_unit_mode is False


def test_close_lets_another_workspace_run_the_same_dataset(sonetaa):
    configs = [sonetaa, sonetaa / "custom_conf.toml"]
    first = Workspace(configs, verbose=False)
    assert first.records.count() == 2
    first.close()
    first.close()  # closing twice is harmless
    with Workspace(configs, verbose=False) as second:
        second.RS.EEG.get(ID).steps.run()
    assert (sonetaa / "dataset" / "PROCESSED" / ID / "alpha").read_text() == "10.5\n"


def test_workspace_paths_are_paths(workspace):
    assert isinstance(workspace.data_path, Path)
    assert isinstance(workspace.scripts_path, Path)
