"""Loading a workspace's configuration: `load_config` and `Workspace(...)` (config + layout).

Every test writes real TOML files and real scripts into `tmp_path`. Every failing load is
also checked against the bad-input rule: a `ConfigError` leaves the file system untouched.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from sinagot import ConfigError, RecordIdError, SinagotError, Workspace
from sinagot.config import load_config
from sinagot.engine import Engine
from sinagot.layout import Scope
from sinagot.models.pandas import PandasRecord, PandasRecordCollection
from sinagot.models.processed import ProcessedRecord, ProcessedRecordCollection
from sinagotd.settings import load_settings

# -- helpers -----------------------------------------------------------------------------

UNIT_TOML = r"""
[records]
id_pattern = 'REC-\d+'

[steps]
scripts = ["count", "mean"]
"""

COUNT = (("raw", "{id}-raw.csv"), ("computed", "{id}-count.csv"))
MEAN = (("computed", "{id}-count.csv"), ("computed", "{id}-mean.csv"))

SCOPED_TOML = r"""
[records]
id_pattern = 'REC-\d{6}-[A-Z]'

[tasks.RS]
modalities = ["EEG", "clinical"]

[tasks.MMN]
modalities = ["EEG", "clinical"]

[tasks.HDC]
modalities = ["EEG", "behavior", "clinical"]

[modalities.EEG]
scripts = ["preprocess"]
task_scripts.RS = ["alpha"]
task_scripts.MMN = ["mismatch"]

[modalities.behavior]
scripts = ["scores"]

[modalities.clinical]
scripts = ["summary"]
"""

SCOPED_SCRIPTS = {
    "EEG/preprocess": (
        ("{id}", "{task}", "EEG", "raw.csv"),
        ("{id}", "{task}", "EEG", "processed", "clean.csv"),
    ),
    "EEG/alpha": (
        ("{id}", "{task}", "EEG", "processed", "clean.csv"),
        ("{id}", "{task}", "EEG", "processed", "alpha.json"),
    ),
    "EEG/mismatch": (
        {
            "eeg": ("{id}", "{task}", "EEG", "processed", "clean.csv"),
            "events": ("{id}", "{task}", "EEG", "events.csv"),
        },
        ("{id}", "{task}", "EEG", "processed", "mismatch.json"),
    ),
    "behavior/scores": (
        ("{id}", "{task}", "behavior", "trials.csv"),
        ("{id}", "{task}", "behavior", "scores.json"),
    ),
    "clinical/summary": (
        ("{id}", "clinical.json"),
        ("{id}", "{task}", "clinical", "summary.json"),
    ),
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def script_source(path_in: object, path_out: object) -> str:
    return (
        "from sinagot import ScriptTemplate\n\n\n"
        "class Script(ScriptTemplate):\n"
        f"    PATH_IN = {path_in!r}\n"
        f"    PATH_OUT = {path_out!r}\n\n"
        "    def run(self):\n"
        "        pass\n"
    )


def write_script(path: Path, path_in: object, path_out: object) -> Path:
    return write(path, script_source(path_in, path_out))


def unit_workspace(root: Path, toml: str = UNIT_TOML) -> Path:
    """A unit-mode workspace (harbor-like): workspace.toml, scripts/count.py, scripts/mean.py."""
    write(root / "workspace.toml", toml)
    write_script(root / "scripts" / "count.py", *COUNT)
    write_script(root / "scripts" / "mean.py", *MEAN)
    return root


def scoped_workspace(root: Path, toml: str = SCOPED_TOML, skip: tuple[str, ...] = ()) -> Path:
    """An EEG-like scoped workspace (after example/eeg), minus the scripts named in `skip`."""
    write(root / "workspace.toml", toml)
    for name, (path_in, path_out) in SCOPED_SCRIPTS.items():
        if name not in skip:
            write_script(root / "scripts" / f"{name}.py", path_in, path_out)
    return root


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def load_fails(tmp_path):
    """Check that loading fails with a ConfigError holding every fragment, touching nothing.

    With `layout=False` (the default) the mistake is in the TOML, so `load_config` must
    raise the same error that `Workspace` does; with `layout=True` it is in a script, which
    only `Workspace` (through `Layout`) reads.
    """

    def check(source, *fragments: str, layout: bool = False) -> str:
        before = tree(tmp_path)
        with pytest.raises(ConfigError) as info:
            Workspace(source)
        message = str(info.value)
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        if not layout:
            with pytest.raises(ConfigError) as again:
                load_config(source)
            assert str(again.value) == message
        assert tree(tmp_path) == before, "a failing load wrote to the file system"
        return message

    return check


# -- where the configuration comes from --------------------------------------------------


def test_a_folder_loads_its_workspace_toml_with_documented_defaults(tmp_path):
    unit_workspace(tmp_path)

    ws = Workspace(tmp_path)

    config = ws._engine.config
    assert config.files == (tmp_path / "workspace.toml",)
    assert config.steps == ("count", "mean")
    assert not config.scoped
    assert config.id_regex.pattern == r"REC-\d+"
    assert config.dataset == tmp_path / "dataset"
    assert config.scripts == tmp_path / "scripts"
    assert config.state_dir == tmp_path / "dataset" / ".sinagot"
    assert config.run_mode == "main_process"
    assert (config.dask.address, config.dask.n_workers, config.dask.threads_per_worker) == (
        None,
        2,
        1,
    )
    assert [s.name for s in ws._engine.layout.steps(None, None)] == ["count", "mean"]
    assert ws._engine.layout.steps(None, None)[0].script == tmp_path / "scripts" / "count.py"


def test_a_toml_file_of_any_name_loads_with_paths_relative_to_its_own_folder(tmp_path, monkeypatch):
    unit_workspace(tmp_path)
    (tmp_path / "workspace.toml").unlink()
    conf = write(
        tmp_path / "conf" / "lab.toml",
        UNIT_TOML + '\n[path]\ndataset = "../data"\nscripts = "../scripts"\n',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the file's folder, not the current one

    for source in (conf, str(conf)):
        config = Engine(source).config
        assert config.files == (conf,)
        assert config.dataset == tmp_path / "data"
        assert config.scripts == tmp_path / "scripts"


def test_a_relative_file_name_is_taken_from_the_current_folder(tmp_path, monkeypatch):
    unit_workspace(tmp_path)
    monkeypatch.chdir(tmp_path)

    config = Engine("workspace.toml").config

    assert config.files == (tmp_path / "workspace.toml",)
    assert config.dataset == tmp_path / "dataset"


def test_absolute_and_home_relative_paths_are_kept_as_given(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    unit_workspace(home / "scripts-owner")  # scripts live under ~/scripts-owner/scripts
    write(
        tmp_path / "workspace.toml",
        UNIT_TOML
        + f'\n[path]\ndataset = "{tmp_path / "abs-data"}"\nscripts = "~/scripts-owner/scripts"\n'
        + '\n[state]\npath = "~/state"\n',
    )

    config = load_config(tmp_path)

    assert config.dataset == tmp_path / "abs-data"
    assert config.scripts == home / "scripts-owner" / "scripts"
    assert config.state_dir == home / "state"


def test_files_merge_in_order_later_keys_win_and_tables_merge_key_by_key(tmp_path):
    unit_workspace(tmp_path)
    (tmp_path / "workspace.toml").unlink()
    base = write(
        tmp_path / "base.toml",
        r"""
        [records]
        id_pattern = 'REC-\d+'

        [steps]
        scripts = ["count", "mean"]

        [path]
        dataset = "./data-a"

        [run]
        mode = "dask"

        [dask]
        address = "tcp://10.0.0.1:8786"
        n_workers = 2

        [workspace]
        version = "1.0"
        """,
    )
    site = write(
        tmp_path / "site" / "override.toml",
        """
        [path]
        dataset = "./data-b"

        [dask]
        n_workers = 8

        [steps]
        scripts = ["count"]

        [workspace]
        version = "1.1"
        """,
    )

    ws = Workspace([base, site])
    config = ws._engine.config

    assert config.files == (base, site)
    # the second file's [path] dataset wins, and it is resolved against the FIRST file's folder
    assert config.dataset == tmp_path / "data-b"
    # what the second file does not mention is kept from the first
    assert config.id_regex.pattern == r"REC-\d+"
    assert config.scripts == tmp_path / "scripts"
    assert config.run_mode == "dask"
    assert config.dask.address == "tcp://10.0.0.1:8786"
    assert config.dask.n_workers == 8
    assert config.version == "1.1"
    # a list is a value: replaced, not concatenated
    assert config.steps == ("count",)
    assert [s.name for s in ws._engine.layout.steps(None, None)] == ["count"]


def test_merge_order_decides_which_file_wins(tmp_path):
    unit_workspace(tmp_path)
    one = write(tmp_path / "one.toml", '[dask]\nn_workers = 3\n[run]\nmode = "dask"\n')
    two = write(tmp_path / "two.toml", "[dask]\nn_workers = 5\n")
    main = tmp_path / "workspace.toml"

    assert load_config([main, one, two]).dask.n_workers == 5
    assert load_config([main, two, one]).dask.n_workers == 3
    assert load_config([main, two, one]).run_mode == "dask"
    assert load_config([main, two]).run_mode == "main_process"


def test_relative_paths_in_every_file_resolve_against_the_first_files_folder(tmp_path):
    first = unit_workspace(tmp_path / "lab") / "workspace.toml"
    second = write(
        tmp_path / "site" / "local.toml",
        '[path]\ndataset = "./nfs-data"\n[state]\npath = "./local-state"\n',
    )

    config = load_config([first, second])

    assert config.root == tmp_path / "lab"
    assert config.dataset == tmp_path / "lab" / "nfs-data"
    assert config.state_dir == tmp_path / "lab" / "local-state"


def test_a_later_file_can_correct_a_value_an_earlier_file_got_wrong(tmp_path):
    unit_workspace(tmp_path, UNIT_TOML + '\n[run]\nmode = "threads"\n')
    fix = write(tmp_path / "fix.toml", '[run]\nmode = "main_process"\n')

    assert load_config([tmp_path / "workspace.toml", fix]).run_mode == "main_process"


def test_a_list_may_name_a_folder_for_its_workspace_toml(tmp_path):
    unit_workspace(tmp_path)
    extra = write(tmp_path / "extra.toml", "[dask]\nthreads_per_worker = 4\n")

    config = load_config([tmp_path, extra])

    assert config.files == (tmp_path / "workspace.toml", extra)
    assert config.dask.threads_per_worker == 4


def test_a_mistake_in_the_second_file_is_reported_against_the_second_file(tmp_path, load_fails):
    # the first file sets a good value; the second overrides it with a bad one
    unit_workspace(tmp_path, UNIT_TOML + "\n[dask]\nn_workers = 2\n")
    base = tmp_path / "workspace.toml"
    site = write(tmp_path / "site" / "override.toml", '[dask]\nn_workers = "two"\n')

    message = load_fails([base, site], str(site), "[dask] n_workers", "'two'")

    assert str(base) not in message


def test_a_mistake_in_the_first_file_is_reported_against_it_after_a_merge(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML.replace(r"REC-\d+", "REC-("))
    base = tmp_path / "workspace.toml"
    site = write(tmp_path / "site" / "override.toml", '[path]\ndataset = "./other"\n')

    message = load_fails([base, site], str(base), "[records] id_pattern", "invalid regex")

    assert str(site) not in message


def test_a_typo_in_a_key_added_by_the_second_file_names_the_second_file(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML + '\n[dask]\naddress = "tcp://h:8786"\n')
    site = write(tmp_path / "override.toml", "[dask]\nn_worker = 4\n")

    load_fails([tmp_path / "workspace.toml", site], str(site), "[dask] n_worker", "'n_workers'")


def test_a_missing_configuration_file_is_named(tmp_path, load_fails):
    missing = tmp_path / "nowhere.toml"

    load_fails(missing, str(missing), "not found")


def test_a_folder_without_workspace_toml_names_the_file_it_looked_for(tmp_path, load_fails):
    (tmp_path / "empty").mkdir()

    load_fails(tmp_path / "empty", str(tmp_path / "empty" / "workspace.toml"), "not found")


def test_a_missing_file_in_a_list_is_named(tmp_path, load_fails):
    unit_workspace(tmp_path)
    missing = tmp_path / "site.toml"

    load_fails([tmp_path / "workspace.toml", missing], str(missing), "not found")


def test_an_empty_list_of_files_is_a_config_error(load_fails):
    load_fails([], "no configuration file")


def test_config_error_is_a_sinagot_error(tmp_path):
    with pytest.raises(SinagotError):
        Workspace(tmp_path / "nowhere.toml")


# -- TOML syntax ---------------------------------------------------------------------------


def test_invalid_toml_names_the_file_line_and_column(tmp_path, load_fails):
    path = write(
        tmp_path / "workspace.toml",
        r"""
        [records]
        id_pattern = 'REC-\d+'

        [steps
        scripts = ["count"]
        """,
    )

    message = load_fails(path, str(path), "line 4", "invalid TOML")

    assert re.search(r"line 4, column \d+", message)


def test_an_invalid_escape_in_a_toml_string_points_at_its_line(tmp_path, load_fails):
    # A regex written in a "basic" TOML string needs doubled backslashes: a common slip.
    path = write(tmp_path / "workspace.toml", '[records]\nid_pattern = "REC-\\d+"\n')

    load_fails(path, str(path), "line 2, column")


def test_the_reported_column_is_the_one_an_editor_shows(tmp_path, load_fails):
    # '[steps' is 6 characters: the end of the line, where ']' is missing, is column 7.
    path = write(tmp_path / "workspace.toml", "[records]\nid_pattern = 'x'\n\n[steps\n")

    load_fails(path, "line 4, column 7")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param("[records]\nid_pattern = 'A'\nid_pattern = 'B'\n", 3, id="key-twice"),
        pytest.param(
            "[records]\nid_pattern = 'A'\n[steps]\nscripts = ['count']\n[steps.scripts]\n",
            5,
            id="key-then-table",
        ),
        pytest.param(
            "[records]\nid_pattern = 'A'\n[tasks.RS]\nmodalities = ['EEG']\n"
            "[modalities.EEG]\ntask_scripts.RS = ['a']\n[modalities.EEG.task_scripts]\n",
            7,
            id="dotted-then-table",
        ),
    ],
)
def test_a_key_defined_twice_is_a_config_error_naming_file_and_line(
    tmp_path, load_fails, text, line
):
    path = write(tmp_path / "workspace.toml", text)
    (tmp_path / "scripts").mkdir()

    load_fails(path, str(path), f"line {line}")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path, load_fails):
    path = tmp_path / "workspace.toml"
    path.write_bytes(b"[records]\nid_pattern = '\xff\xfe'\n")

    load_fails(path, str(path), "cannot read")


# -- [records] -------------------------------------------------------------------------------


def test_without_id_pattern_any_name_in_place_of_id_is_a_record(tmp_path):
    # sinagot 0.3 loaded such a workspace but could not list its records.
    unit_workspace(tmp_path, '[steps]\nscripts = ["count"]\n')
    raw = tmp_path / "dataset" / "raw"
    raw.mkdir(parents=True)
    for name in ("S01-raw.csv", "pilot 2-raw.csv", ".hidden-raw.csv", "notes.txt"):
        (raw / name).write_text("x\n")

    ws = Workspace(tmp_path, verbose=False)

    assert sorted(ws.records.ids()) == ["S01", "pilot 2"]
    with pytest.raises(RecordIdError):
        ws.records.get("../S01")


def test_an_invalid_id_pattern_regex_is_named(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML.replace(r"REC-\d+", "REC-[0-9"))

    load_fails(
        tmp_path,
        str(tmp_path / "workspace.toml"),
        "[records] id_pattern",
        "invalid regex",
        "'REC-[0-9'",
    )


@pytest.mark.parametrize("group", ["id", "task"])
def test_an_id_pattern_with_a_group_named_id_or_task_is_refused_at_load(
    tmp_path, load_fails, group
):
    # id_pattern is embedded in every path pattern's regex, beside groups named id and task
    unit_workspace(tmp_path, UNIT_TOML.replace(r"REC-\d+", rf"(?P<{group}>REC-\d+)"))

    load_fails(tmp_path, str(tmp_path / "workspace.toml"), "[records] id_pattern", group)


@pytest.mark.parametrize("pattern", [r"^REC-\d+$", r"\AREC-\d+\Z", r"(?i)rec-\d+"])
def test_an_anchored_or_flagged_id_pattern_still_finds_records(tmp_path, pattern):
    unit_workspace(tmp_path, UNIT_TOML.replace(r"REC-\d+", pattern))
    write(tmp_path / "dataset" / "raw" / "REC-1-raw.csv", "x\n")

    ws = Workspace(tmp_path)

    assert ws.records.ids() == ["REC-1"]


# -- value types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key_name", "expected"),
    [
        pytest.param("[run]\nmode = 3", "[run] mode", "expected a string, found 3", id="mode-int"),
        pytest.param(
            '[dask]\nn_workers = "two"',
            "[dask] n_workers",
            "expected an integer, found 'two'",
            id="n_workers-str",
        ),
        pytest.param(
            "[dask]\nn_workers = 0", "[dask] n_workers", "at least 1, found 0", id="n_workers-0"
        ),
        pytest.param(
            "[dask]\nthreads_per_worker = -2",
            "[dask] threads_per_worker",
            "at least 1",
            id="threads-negative",
        ),
        pytest.param(
            "[dask]\nn_workers = true",
            "[dask] n_workers",
            "expected an integer, found true",
            id="n_workers-bool",
        ),
        pytest.param(
            "[dask]\nmax_in_flight = false",
            "[dask] max_in_flight",
            "expected an integer, found false",
            id="max_in_flight-bool",
        ),
        pytest.param(
            "[dask]\nn_workers = 2.5",
            "[dask] n_workers",
            "expected an integer, found 2.5",
            id="n_workers-float",
        ),
        pytest.param(
            "[dask]\naddress = 8786", "[dask] address", "expected a string", id="address-int"
        ),
        pytest.param(
            '[staleness]\ncontent_hash = "yes"',
            "[staleness] content_hash",
            "expected true or false",
            id="content_hash-str",
        ),
        pytest.param(
            "[staleness]\nscript_changes = 1",
            "[staleness] script_changes",
            "expected true or false, found 1",
            id="script_changes-int",
        ),
        pytest.param(
            "[path]\ndataset = 3", "[path] dataset", "expected a string", id="dataset-int"
        ),
        pytest.param("[state]\npath = ['a']", "[state] path", "expected a string", id="state-list"),
        pytest.param(
            "[workspace]\nversion = ['2']", "[workspace] version", "expected a string", id="version"
        ),
    ],
)
def test_a_value_of_the_wrong_type_is_named_with_what_was_found(
    tmp_path, load_fails, table, key_name, expected
):
    unit_workspace(tmp_path, UNIT_TOML + "\n" + table + "\n")

    load_fails(tmp_path, str(tmp_path / "workspace.toml"), key_name, expected)


def test_an_id_pattern_that_is_not_a_string_is_named(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML.replace(r"'REC-\d+'", "42"))

    load_fails(tmp_path, "[records] id_pattern", "expected a string, found 42")


def test_an_unknown_run_mode_lists_the_known_ones(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML + '\n[run]\nmode = "threads"\n')

    load_fails(
        tmp_path,
        str(tmp_path / "workspace.toml"),
        "[run] mode",
        "'threads'",
        "main_process",
        "dask",
    )


def test_dask_and_staleness_settings_are_read(tmp_path):
    unit_workspace(
        tmp_path,
        UNIT_TOML
        + '[run]\nmode = "dask"\n'
        + '[dask]\naddress = "tcp://sched:8786"\nn_workers = 4\nthreads_per_worker = 2\n'
        + "max_in_flight = 10\n"
        + "[staleness]\ncontent_hash = true\nscript_changes = false\n",
    )

    config = load_config(tmp_path)

    assert config.run_mode == "dask"
    assert config.dask.address == "tcp://sched:8786"
    assert (config.dask.n_workers, config.dask.threads_per_worker) == (4, 2)
    assert config.dask.max_in_flight == 10
    assert config.content_hash is True
    assert config.track_scripts is False


# -- unknown keys and tables -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "key_name", "hint"),
    [
        pytest.param(
            UNIT_TOML.replace("id_pattern", "id_patern"),
            "[records] id_patern",
            "did you mean 'id_pattern'?",
            id="records",
        ),
        pytest.param(
            UNIT_TOML.replace("scripts =", "script ="),
            "[steps] script",
            "did you mean 'scripts'?",
            id="steps",
        ),
        pytest.param(
            UNIT_TOML + '[path]\ndatasets = "./d"\n',
            "[path] datasets",
            "did you mean 'dataset'?",
            id="path",
        ),
        pytest.param(
            UNIT_TOML + "[dask]\nworkers = 3\n",
            "[dask] workers",
            "did you mean 'n_workers'?",
            id="dask",
        ),
        pytest.param(
            UNIT_TOML + '[run]\nmodes = "dask"\n',
            "[run] modes",
            "did you mean 'mode'?",
            id="run",
        ),
    ],
)
def test_an_unknown_key_in_a_known_table_is_named_with_a_hint(
    tmp_path, load_fails, toml, key_name, hint
):
    unit_workspace(tmp_path, toml)

    load_fails(tmp_path, str(tmp_path / "workspace.toml"), key_name, "unknown key", hint)


def test_an_unknown_key_with_no_near_miss_lists_the_known_keys(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML + '[run]\ncolour = "blue"\n')

    load_fails(tmp_path, "[run] colour", "unknown key", "known: mode")


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("step", "steps"),
        ("Steps", "steps"),
        ("record", "records"),
        ("task", "tasks"),
        ("modality", "modalities"),
        ("paths", "path"),
        ("deamon", "daemon"),
    ],
)
def test_a_near_miss_of_a_known_table_is_refused_with_a_hint(tmp_path, load_fails, name, meant):
    unit_workspace(tmp_path, UNIT_TOML + f"\n[{name}]\nx = 1\n")

    load_fails(
        tmp_path,
        str(tmp_path / "workspace.toml"),
        f"[{name}]",
        "unknown table",
        f"did you mean [{meant}]?",
    )


@pytest.mark.parametrize("name", ["something_else", "lab", "notes"])
def test_a_table_unrelated_to_sinagot_is_accepted_and_ignored(tmp_path, name):
    unit_workspace(tmp_path, UNIT_TOML + f'\n[{name}]\nowner = "lab-7"\n')

    ws = Workspace(tmp_path)

    assert ws._engine.config.steps == ("count", "mean")


def test_the_daemon_table_is_accepted_and_handed_to_the_daemon(tmp_path):
    unit_workspace(tmp_path, UNIT_TOML + '\n[daemon]\nsettle_seconds = 2\nobserver = "polling"\n')

    config = Engine(tmp_path).config

    assert dict(config.daemon) == {"settle_seconds": 2, "observer": "polling"}


@pytest.mark.parametrize(
    ("toml", "key_name"),
    [
        pytest.param(
            "steps = 3\n" + UNIT_TOML.replace("[steps]\n", "[x]\n"), "[steps]", id="steps"
        ),
        pytest.param('records = "REC"\n[steps]\nscripts = ["count"]\n', "[records]", id="records"),
        pytest.param('dask = "tcp://h:8786"\n' + UNIT_TOML, "[dask]", id="dask"),
    ],
)
def test_a_table_given_as_a_plain_value_is_named(tmp_path, load_fails, toml, key_name):
    unit_workspace(tmp_path, toml)

    load_fails(tmp_path, str(tmp_path / "workspace.toml"), key_name, "expected a table")


# -- [steps] (unit mode) ---------------------------------------------------------------------


def test_steps_beside_tasks_and_modalities_is_accepted_as_sinagot_0_3_did(tmp_path):
    # 0.3's documentation made [steps] a required section; with tasks, the modalities name
    # the steps and [steps] has no effect (in 0.3 as here).
    scoped_workspace(tmp_path, SCOPED_TOML + '\n[steps]\nscripts = ["count"]\n')

    config = load_config(tmp_path)

    assert config.scoped and config.steps is None


def test_modalities_without_tasks_are_refused(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML + '\n[modalities.EEG]\nscripts = ["count"]\n')

    load_fails(tmp_path, "[tasks]", "no task declared")


def test_a_workspace_with_neither_steps_nor_tasks_asks_for_the_step_list(tmp_path, load_fails):
    unit_workspace(tmp_path, "[records]\nid_pattern = 'REC-1'\n")

    load_fails(tmp_path, str(tmp_path / "workspace.toml"), "[steps] scripts", "missing")


def test_a_step_script_missing_from_the_scripts_folder_is_named(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML.replace('"mean"]', '"mean", "median"]'))

    load_fails(
        tmp_path,
        str(tmp_path / "workspace.toml"),
        "[steps] scripts",
        str(tmp_path / "scripts" / "median.py"),
        "not found",
    )


def test_a_missing_scripts_folder_is_named(tmp_path, load_fails):
    write(tmp_path / "workspace.toml", UNIT_TOML)

    load_fails(
        tmp_path,
        str(tmp_path / "workspace.toml"),
        "[path] scripts",
        str(tmp_path / "scripts"),
        "does not exist",
    )


def test_a_configured_scripts_folder_that_does_not_exist_is_named(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML + '\n[path]\nscripts = "./code"\n')

    load_fails(tmp_path, "[path] scripts", str(tmp_path / "code"), "does not exist")


def test_a_step_listed_twice_is_refused(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML.replace('["count", "mean"]', '["count", "mean", "count"]'))

    load_fails(tmp_path, str(tmp_path / "workspace.toml"), "[steps] scripts", "listed twice")


@pytest.mark.parametrize(
    "bad",
    ['"1st"', '"pre-process"', '"a b"', '""', '"../count"', '"sub/count"', "3", '["count"]'],
)
def test_an_invalid_step_name_is_refused(tmp_path, load_fails, bad):
    unit_workspace(tmp_path, UNIT_TOML.replace('["count", "mean"]', f'["count", {bad}]'))

    load_fails(tmp_path, str(tmp_path / "workspace.toml"), "[steps] scripts", "not a valid name")


def test_step_scripts_given_as_a_string_instead_of_a_list_is_refused(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML.replace('["count", "mean"]', '"count"'))

    load_fails(tmp_path, "[steps] scripts", "expected a list, found 'count'")


# -- [tasks] and [modalities] (scoped mode) --------------------------------------------------


def test_a_scoped_workspace_has_the_units_and_steps_its_config_describes(tmp_path):
    scoped_workspace(tmp_path)

    ws = Workspace(tmp_path)
    layout = ws._engine.layout

    assert ws._engine.config.scoped and ws._engine.config.steps is None
    assert layout.tasks == ("RS", "MMN", "HDC")
    assert layout.modalities == ("EEG", "behavior", "clinical")
    assert layout.unit_keys(Scope()) == [
        ("RS", "EEG"),
        ("RS", "clinical"),
        ("MMN", "EEG"),
        ("MMN", "clinical"),
        ("HDC", "EEG"),
        ("HDC", "behavior"),
        ("HDC", "clinical"),
    ]

    def names(task, modality):
        return [s.name for s in layout.steps(task, modality)]

    assert names("RS", "EEG") == ["preprocess", "alpha"]
    assert names("MMN", "EEG") == ["preprocess", "mismatch"]
    assert names("HDC", "EEG") == ["preprocess"]
    assert names("HDC", "behavior") == ["scores"]
    assert names("RS", "clinical") == ["summary"]
    assert layout.step_names(Scope(modality="EEG")) == ["preprocess", "alpha", "mismatch"]

    alpha = layout.steps("RS", "EEG")[1]
    assert alpha.script == tmp_path / "scripts" / "EEG" / "alpha.py"
    assert alpha.modality == "EEG"
    mismatch = layout.steps("MMN", "EEG")[1]
    assert [label for label, _ in mismatch.inputs.items] == ["eeg", "events"]

    assert ws._engine.config.tasks["HDC"] == ("EEG", "behavior", "clinical")
    assert dict(ws._engine.config.modalities["EEG"].task_scripts) == {
        "RS": ("alpha",),
        "MMN": ("mismatch",),
    }


def test_a_scoped_workspace_offers_exactly_its_task_modality_pairs(tmp_path):
    scoped_workspace(tmp_path)
    ws = Workspace(tmp_path)

    assert repr(ws.RS.EEG) == "<RecordCollection instance | task: RS, modality: EEG>"
    assert repr(ws.EEG.RS) == "<RecordCollection instance | task: RS, modality: EEG>"
    assert ws.HDC.behavior.steps.scripts_names() == ["scores"]
    with pytest.raises(AttributeError, match="behavior"):
        ws.RS.behavior  # noqa: B018 - RS has no behavior modality


def test_a_task_listing_an_undeclared_modality_is_named(tmp_path, load_fails):
    scoped_workspace(tmp_path, SCOPED_TOML.replace('["EEG", "clinical"]', '["EEG", "MEG"]', 1))

    load_fails(
        tmp_path,
        str(tmp_path / "workspace.toml"),
        "[tasks] RS.modalities",
        "'MEG' is not declared",
    )


def test_task_scripts_for_an_undeclared_task_is_named(tmp_path, load_fails):
    scoped_workspace(tmp_path, SCOPED_TOML.replace("task_scripts.MMN", "task_scripts.MMM"))

    load_fails(
        tmp_path,
        str(tmp_path / "workspace.toml"),
        "[modalities] EEG.task_scripts.MMM",
        "'MMM' is not declared",
    )


def test_task_scripts_for_a_task_without_that_modality_is_named(tmp_path, load_fails):
    toml = SCOPED_TOML.replace(
        '[modalities.behavior]\nscripts = ["scores"]',
        '[modalities.behavior]\nscripts = ["scores"]\ntask_scripts.RS = ["alpha"]',
    )
    scoped_workspace(tmp_path, toml)
    write_script(tmp_path / "scripts" / "behavior" / "alpha.py", *SCOPED_SCRIPTS["EEG/alpha"])

    load_fails(
        tmp_path,
        str(tmp_path / "workspace.toml"),
        "[modalities] behavior.task_scripts.RS",
        "does not list modality 'behavior'",
    )


def test_task_scripts_repeating_a_modality_script_is_refused(tmp_path, load_fails):
    scoped_workspace(tmp_path, SCOPED_TOML.replace('RS = ["alpha"]', 'RS = ["preprocess"]'))

    load_fails(tmp_path, "[modalities] EEG.task_scripts.RS", "'preprocess'", "already")


def test_a_task_and_a_modality_with_the_same_name_are_refused(tmp_path, load_fails):
    scoped_workspace(tmp_path, SCOPED_TOML + '\n[tasks.EEG]\nmodalities = ["clinical"]\n')

    load_fails(tmp_path, str(tmp_path / "workspace.toml"), "[tasks] EEG", "share a name")


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param('[tasks.steps]\nmodalities = ["EEG"]\n', id="task-steps"),
        pytest.param('[tasks.records]\nmodalities = ["EEG"]\n', id="task-records"),
        pytest.param('[tasks.status]\nmodalities = ["EEG"]\n', id="task-status"),
        pytest.param('[modalities.logs]\nscripts = ["summary"]\n', id="modality-logs"),
    ],
)
def test_a_reserved_name_cannot_be_a_task_or_modality(tmp_path, load_fails, extra):
    scoped_workspace(tmp_path, SCOPED_TOML + "\n" + extra)
    name = re.search(r"\.(\w+)\]", extra).group(1)

    load_fails(tmp_path, str(tmp_path / "workspace.toml"), f"'{name}' is reserved")


def test_no_task_can_be_named_like_an_attribute_of_the_api(tmp_path):
    scoped_workspace(tmp_path)
    ws = Workspace(tmp_path)
    plugins = (PandasRecord, PandasRecordCollection, ProcessedRecord, ProcessedRecordCollection)
    public = {
        name
        for obj in (ws, ws.records, ws.records.get("REC-200331-A"), *plugins)
        for name in dir(obj)
        if not name.startswith("_")
    } - {"RS", "MMN", "HDC", "EEG", "behavior", "clinical"}  # its subscopes are listed too
    assert {"records", "steps", "data_path", "count_raw_data", "data"} <= public
    assert not {"ingest_receipts", "executor", "lock", "generation", "plan"} & public

    accepted = []
    for name in sorted(public):
        scoped_workspace(tmp_path, SCOPED_TOML + f'\n[tasks.{name}]\nmodalities = ["EEG"]\n')
        try:
            load_config(tmp_path)
        except ConfigError:
            continue
        accepted.append(name)
    assert accepted == []


def test_an_invalid_task_name_is_refused(tmp_path, load_fails):
    scoped_workspace(tmp_path, SCOPED_TOML + '\n[tasks."R-S2"]\nmodalities = ["EEG"]\n')

    load_fails(tmp_path, "[tasks] R-S2", "not a valid name")


def test_a_modality_given_as_a_plain_value_is_refused(tmp_path, load_fails):
    scoped_workspace(
        tmp_path,
        """
        [records]
        id_pattern = 'R'

        [tasks.RS]
        modalities = ["EEG"]

        [modalities]
        behavior = "scores"

        [modalities.EEG]
        scripts = ["preprocess"]
        """,
    )

    load_fails(tmp_path, "[modalities] behavior", "expected a table, found 'scores'")


def test_an_unknown_key_in_a_modality_is_named_with_a_hint(tmp_path, load_fails):
    scoped_workspace(
        tmp_path, SCOPED_TOML.replace('task_scripts.RS = ["alpha"]', 'tasks_scripts.RS = ["alpha"]')
    )

    load_fails(tmp_path, "[modalities] EEG.tasks_scripts", "did you mean 'task_scripts'?")


def test_tasks_without_modalities_declared_are_refused(tmp_path, load_fails):
    write(tmp_path / "workspace.toml", "[records]\nid_pattern = 'R'\n[tasks.RS]\nmodalities = []\n")
    (tmp_path / "scripts").mkdir()

    load_fails(tmp_path, "[modalities]", "no modality declared")


def test_modalities_without_tasks_declared_are_refused(tmp_path, load_fails):
    scoped_workspace(
        tmp_path,
        """
        [records]
        id_pattern = 'R'

        [modalities.EEG]
        scripts = ["preprocess"]
        """,
    )

    load_fails(tmp_path, "[tasks]", "no task declared")


@pytest.mark.parametrize(
    ("skip", "key_name"),
    [
        ("EEG/alpha", "[modalities] EEG"),  # a task script
        ("EEG/preprocess", "[modalities] EEG"),  # a script of every task
        ("clinical/summary", "[modalities] clinical"),
    ],
)
def test_a_scoped_script_missing_from_its_modality_folder_is_named(
    tmp_path, load_fails, skip, key_name
):
    scoped_workspace(tmp_path, skip=(skip,))

    load_fails(
        tmp_path,
        str(tmp_path / "workspace.toml"),
        key_name,
        str(tmp_path / "scripts" / f"{skip}.py"),
        "not found",
    )


def test_a_scoped_script_in_the_top_scripts_folder_is_not_used(tmp_path, load_fails):
    scoped_workspace(tmp_path, skip=("behavior/scores",))
    write_script(tmp_path / "scripts" / "scores.py", *SCOPED_SCRIPTS["behavior/scores"])

    load_fails(tmp_path, str(tmp_path / "scripts" / "behavior" / "scores.py"), "not found")


# -- scripts read at Workspace load ----------------------------------------------------------


def test_a_script_with_a_syntax_error_past_its_patterns_loads_marked_broken(tmp_path):
    unit_workspace(tmp_path)
    mean = write(
        tmp_path / "scripts" / "mean.py",
        """
        from sinagot import ScriptTemplate


        class Script(ScriptTemplate):
            PATH_IN = ("computed", "{id}-count.csv")
            PATH_OUT = ("computed", "{id}-mean.csv")

            def run(self)
                pass
        """,
    )
    before = tree(tmp_path)

    count, broken = Engine(tmp_path).layout.steps(None, None)

    assert broken.broken == f"{mean}, line 8: syntax error: expected ':'"
    assert [str(p) for p in broken.inputs.patterns] == ["computed/{id}-count.csv"]
    assert [str(p) for p in broken.outputs.patterns] == ["computed/{id}-mean.csv"]
    assert count.broken is None
    assert tree(tmp_path) == before, "loading a workspace with a broken script wrote a file"


def test_a_script_without_a_script_class_is_named(tmp_path, load_fails):
    unit_workspace(tmp_path)
    mean = write(
        tmp_path / "scripts" / "mean.py",
        script_source(*MEAN).replace("class Script(", "class Mean("),
    )

    load_fails(tmp_path, str(mean), "no class `Script(ScriptTemplate)`", layout=True)


def test_a_script_whose_import_fails_while_computing_its_patterns_is_named(tmp_path, load_fails):
    unit_workspace(tmp_path)
    mean = write(
        tmp_path / "scripts" / "mean.py",
        script_source(*MEAN).replace(
            f"PATH_IN = {MEAN[0]!r}", "PATH_IN = tuple(['computed', 1 / 0])"
        ),
    )

    load_fails(tmp_path, str(mean), "ZeroDivisionError", layout=True)


@pytest.mark.parametrize(
    ("path_in", "path_out", "fragments"),
    [
        pytest.param(
            COUNT[0], ("computed", "count.csv"), ("PATH_OUT", "must hold {id}"), id="out-no-id"
        ),
        pytest.param(
            COUNT[0],
            {"table": ("computed", "{id}.csv"), "summary": ("computed", "summary.csv")},
            ("PATH_OUT['summary']", "must hold {id}"),
            id="out-dict-label-no-id",
        ),
        pytest.param(
            ("raw", "{foo}-raw.csv"),
            COUNT[1],
            ("PATH_IN", "unknown placeholder {foo}"),
            id="in-unknown-placeholder",
        ),
        pytest.param(
            COUNT[0],
            ("computed", "{id}-{date}.csv"),
            ("PATH_OUT", "unknown placeholder {date}"),
            id="out-unknown-placeholder",
        ),
        pytest.param(("..", "raw", "{id}.csv"), COUNT[1], ("PATH_IN", "'..'"), id="in-dotdot"),
        pytest.param(
            COUNT[0], ("computed/../../{id}.csv",), ("PATH_OUT", "'..'"), id="out-dotdot-inside"
        ),
        pytest.param(("/etc", "{id}.csv"), COUNT[1], ("PATH_IN", "absolute"), id="in-absolute"),
        pytest.param(("raw", "{id"), COUNT[1], ("PATH_IN", "brace"), id="in-stray-brace"),
        pytest.param((), COUNT[1], ("PATH_IN",), id="in-empty"),
        pytest.param({}, COUNT[1], ("PATH_IN", "empty"), id="in-empty-dict"),
        pytest.param(COUNT[0], ("computed", 3), ("PATH_OUT", "not a string"), id="out-int-part"),
    ],
)
def test_a_bad_path_pattern_is_named_with_its_script(
    tmp_path, load_fails, path_in, path_out, fragments
):
    unit_workspace(tmp_path)
    count = write_script(tmp_path / "scripts" / "count.py", path_in, path_out)

    load_fails(tmp_path, str(count), *fragments, layout=True)


def test_task_placeholder_in_a_workspace_without_tasks_is_refused(tmp_path, load_fails):
    unit_workspace(tmp_path)
    mean = write_script(
        tmp_path / "scripts" / "mean.py", MEAN[0], ("computed", "{task}", "{id}-mean.csv")
    )

    load_fails(tmp_path, str(mean), "{task}", "no tasks", layout=True)


def test_the_first_steps_input_must_hold_the_record_id(tmp_path, load_fails):
    unit_workspace(tmp_path)
    count = write_script(tmp_path / "scripts" / "count.py", ("raw", "all.csv"), COUNT[1])

    load_fails(tmp_path, str(count), "PATH_IN", "first step", "{id}", layout=True)


def test_a_scoped_units_first_step_input_must_hold_the_record_id(tmp_path, load_fails):
    scoped_workspace(tmp_path)
    scores = write_script(
        tmp_path / "scripts" / "behavior" / "scores.py",
        ("{task}", "behavior", "trials.csv"),
        SCOPED_SCRIPTS["behavior/scores"][1],
    )

    load_fails(tmp_path, str(scores), "PATH_IN", "{id}", layout=True)


def test_a_bad_pattern_in_a_task_script_fails_the_scoped_workspace(tmp_path, load_fails):
    scoped_workspace(tmp_path)
    alpha = write_script(
        tmp_path / "scripts" / "EEG" / "alpha.py",
        SCOPED_SCRIPTS["EEG/alpha"][0],
        ("{id}", "{session}", "alpha.json"),
    )

    load_fails(tmp_path, str(alpha), "unknown placeholder {session}", layout=True)


# -- computed and inherited patterns --------------------------------------------------------


def test_computed_patterns_load_by_importing_the_script(tmp_path):
    unit_workspace(tmp_path)
    write(
        tmp_path / "scripts" / "count.py",
        """
        import os

        from sinagot import ScriptTemplate

        RAW = "raw"


        def parts(*names):
            return tuple(names)


        class Script(ScriptTemplate):
            PATH_IN = parts(RAW, "{id}-raw.csv")
            PATH_OUT = ("computed", "{id}-" + os.path.basename("count.csv"))

            def run(self):
                pass
        """,
    )
    write(tmp_path / "dataset" / "raw" / "REC-7-raw.csv", "x\n")

    ws = Workspace(tmp_path)

    count = ws._engine.layout.steps(None, None)[0]
    assert [str(p) for p in count.inputs.patterns] == ["raw/{id}-raw.csv"]
    assert [str(p) for p in count.outputs.patterns] == ["computed/{id}-count.csv"]
    assert ws.records.ids() == ["REC-7"]


def test_inherited_patterns_load(tmp_path):
    unit_workspace(tmp_path)
    write(
        tmp_path / "scripts" / "mean.py",
        """
        from sinagot import ScriptTemplate


        class Base(ScriptTemplate):
            PATH_IN = ("computed", "{id}-count.csv")
            PATH_OUT = {"mean": ("computed", "{id}-mean.csv"), "sd": ("computed", "{id}-sd.csv")}


        class Script(Base):
            def run(self):
                pass
        """,
    )

    mean = Engine(tmp_path).layout.steps(None, None)[1]

    assert [label for label, _ in mean.outputs.items] == ["mean", "sd"]
    assert [str(p) for p in mean.inputs.patterns] == ["computed/{id}-count.csv"]


def test_a_computed_pattern_that_is_bad_is_still_refused(tmp_path, load_fails):
    unit_workspace(tmp_path)
    mean = write(
        tmp_path / "scripts" / "mean.py",
        script_source(*MEAN).replace(
            f"PATH_OUT = {MEAN[1]!r}", 'PATH_OUT = tuple(["computed", "mean.csv"])'
        ),
    )

    load_fails(tmp_path, str(mean), "PATH_OUT", "must hold {id}", layout=True)


def test_literal_patterns_load_without_importing_the_script(tmp_path):
    # Loading a workspace must not need the scripts' own dependencies (pandas, mne...).
    unit_workspace(tmp_path)
    write(
        tmp_path / "scripts" / "mean.py",
        "import a_module_that_is_not_installed\n\n" + script_source(*MEAN),
    )

    ws = Workspace(tmp_path)

    assert [s.name for s in ws._engine.layout.steps(None, None)] == ["count", "mean"]


# -- the bad-input rule ------------------------------------------------------------------------


def test_a_failing_load_creates_no_dataset_or_state_folder(tmp_path):
    unit_workspace(
        tmp_path,
        UNIT_TOML + '\n[path]\ndataset = "./data"\n[state]\npath = "./state"\n',
    )
    write_script(tmp_path / "scripts" / "mean.py", MEAN[0], ("computed", "mean.csv"))
    before = tree(tmp_path)

    with pytest.raises(ConfigError):
        Workspace(tmp_path)

    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "state").exists()
    assert tree(tmp_path) == before


def test_a_failing_load_leaves_an_existing_dataset_untouched(tmp_path):
    unit_workspace(tmp_path, UNIT_TOML + '\n[dask]\nn_workers = "two"\n')
    write(tmp_path / "dataset" / "raw" / "REC-1-raw.csv", "x\n")
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}

    with pytest.raises(ConfigError):
        Workspace(tmp_path)

    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert not (tmp_path / "dataset" / ".sinagot").exists()
    assert not (tmp_path / "dataset" / "LOG").exists()


# -- outputs that collide or loop ----------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("example", ["harbor", "eeg"])
def test_the_bundled_examples_still_load(example):
    ws = Workspace(REPO / "example" / example, verbose=False)

    assert ws._engine.layout.unit_keys(Scope())
    assert all(
        s.broken is None
        for k in ws._engine.layout.unit_keys(Scope())
        for s in ws._engine.layout.steps(*k)
    )


def test_a_modality_step_without_task_in_its_output_run_by_two_tasks_is_refused(
    tmp_path, load_fails
):
    scoped_workspace(tmp_path)
    preprocess = write_script(
        tmp_path / "scripts" / "EEG" / "preprocess.py",
        ("{id}", "{task}", "EEG", "raw.csv"),
        ("EEG", "{id}-pre.csv"),
    )

    message = load_fails(
        tmp_path,
        str(preprocess),
        "PATH_OUT EEG/{id}-pre.csv",
        "preprocess (task RS, modality EEG)",
        "preprocess (task MMN, modality EEG)",
        "put {task} in it",
        layout=True,
    )
    assert "\n" not in message


def test_two_steps_of_one_unit_writing_the_same_file_are_refused_naming_both(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML.replace('["count", "mean"]', '["count", "mean", "sd"]'))
    sd = write_script(tmp_path / "scripts" / "sd.py", MEAN[0], MEAN[1])

    load_fails(
        tmp_path,
        "steps mean and sd both write computed/{id}-mean.csv",
        str(tmp_path / "scripts" / "mean.py"),
        str(sd),
        layout=True,
    )


def test_two_modalities_writing_the_same_file_are_refused_naming_both_steps(tmp_path, load_fails):
    scoped_workspace(tmp_path)
    scores = write_script(
        tmp_path / "scripts" / "behavior" / "scores.py",
        ("{id}", "{task}", "behavior", "trials.csv"),
        ("{id}", "{task}", "clinical", "summary.json"),
    )

    load_fails(
        tmp_path,
        "summary (task HDC, modality clinical)",
        "scores (task HDC, modality behavior)",
        "{id}/HDC/clinical/summary.json",
        str(scores),
        layout=True,
    )


def test_two_labels_of_one_step_naming_the_same_file_are_refused(tmp_path, load_fails):
    unit_workspace(tmp_path)
    mean = write_script(
        tmp_path / "scripts" / "mean.py",
        MEAN[0],
        {"mean": MEAN[1], "sd": ("computed", "{id}-mean.csv")},
    )

    load_fails(
        tmp_path, str(mean), "PATH_OUT['mean'] and PATH_OUT['sd']", "{id}-mean.csv", layout=True
    )


def test_a_step_writing_its_own_input_is_refused_as_a_loop_without_end(tmp_path, load_fails):
    unit_workspace(tmp_path)
    mean = write_script(tmp_path / "scripts" / "mean.py", MEAN[0], MEAN[0])

    load_fails(
        tmp_path, str(mean), "PATH_OUT computed/{id}-count.csv", "also its PATH_IN", layout=True
    )


def test_a_step_writing_its_own_input_once_the_task_is_filled_in_is_refused(tmp_path, load_fails):
    scoped_workspace(tmp_path)
    alpha = write_script(
        tmp_path / "scripts" / "EEG" / "alpha.py",
        SCOPED_SCRIPTS["EEG/alpha"][0],
        ("{id}", "RS", "EEG", "processed", "clean.csv"),
    )

    load_fails(tmp_path, str(alpha), "{id}/RS/EEG/processed/clean.csv", "PATH_IN", layout=True)


def test_a_later_step_writing_the_recording_is_refused(tmp_path, load_fails):
    unit_workspace(tmp_path)
    mean = write_script(tmp_path / "scripts" / "mean.py", MEAN[0], COUNT[0])

    load_fails(
        tmp_path,
        str(mean),
        "PATH_OUT raw/{id}-raw.csv",
        "would overwrite the recording",
        "PATH_IN of count, the unit's first step",
        layout=True,
    )


def test_a_step_writing_an_input_of_an_earlier_step_is_refused_as_a_loop(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML.replace('["count", "mean"]', '["count", "mean", "ref"]'))
    mean = write_script(
        tmp_path / "scripts" / "mean.py",
        {"count": COUNT[1], "reference": ("reference", "{id}.csv")},
        MEAN[1],
    )
    ref = write_script(tmp_path / "scripts" / "ref.py", MEAN[1], ("reference", "{id}.csv"))

    load_fails(
        tmp_path,
        str(ref),
        "PATH_OUT reference/{id}.csv",
        "PATH_IN['reference'] of the earlier step mean",
        str(mean),
        "loop",
        layout=True,
    )


# -- paths and values checked --------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "key_name"),
    [
        ("path", "dataset"),
        ("path", "scripts"),
        ("state", "path"),
    ],
)
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param(r"data\u0000set", r"'\x00'", id="nul"),
        pytest.param(r"data\nset", r"'\n'", id="newline"),
        pytest.param(r"data\u001bset", r"'\x1b'", id="escape"),
        pytest.param("", "empty", id="empty"),
        pytest.param("   ", "empty", id="blank"),
    ],
)
def test_a_path_with_a_control_character_or_empty_is_refused_naming_its_key(
    tmp_path, load_fails, table, key_name, value, fragment
):
    unit_workspace(tmp_path, UNIT_TOML + f'\n[{table}]\n{key_name} = "{value}"\n')

    message = load_fails(
        tmp_path, str(tmp_path / "workspace.toml"), f"[{table}] {key_name}", fragment
    )
    assert "\n" not in message


def test_a_home_folder_of_a_user_that_does_not_exist_is_refused_naming_the_key(
    tmp_path, load_fails
):
    unit_workspace(tmp_path, UNIT_TOML + '\n[state]\npath = "~no-such-user-here/state"\n')

    load_fails(tmp_path, "[state] path", "cannot expand '~no-such-user-here/state'")


def test_a_scripts_folder_name_too_long_for_the_system_is_refused_naming_the_key(
    tmp_path, load_fails
):
    unit_workspace(tmp_path, UNIT_TOML + f'\n[path]\nscripts = "./{"s" * 300}"\n')

    load_fails(tmp_path, "[path] scripts", "File name too long")


@pytest.mark.parametrize(
    ("table", "key_name", "fragment"),
    [
        ("[dask]\nn_workers = 100000", "[dask] n_workers", "at most 256, found 100000"),
        ("[dask]\nthreads_per_worker = 4096", "[dask] threads_per_worker", "at most 256"),
        ("[dask]\nmax_in_flight = 99999999999", "[dask] max_in_flight", "at most 1000000"),
        ('[dask]\naddress = "tcp://h\\u0000:8786"', "[dask] address", r"'\x00'"),
    ],
)
def test_dask_settings_out_of_any_sane_range_are_refused(
    tmp_path, load_fails, table, key_name, fragment
):
    unit_workspace(tmp_path, UNIT_TOML + "\n" + table + "\n")

    load_fails(tmp_path, key_name, fragment)


# -- [run] time limits and attempts --------------------------------------------------------


def test_run_limits_default_to_no_time_limit_and_three_attempts(tmp_path):
    unit_workspace(tmp_path)

    config = load_config(tmp_path)

    assert (config.time_limit, dict(config.time_limits), config.max_attempts) == (None, {}, 3)
    assert config.time_limit_for("count") is None


def test_a_step_time_limit_overrides_the_workspace_one(tmp_path):
    unit_workspace(
        tmp_path,
        UNIT_TOML + "\n[run]\ntime_limit = 600\nmax_attempts = 5\n[run.time_limits]\nmean = 2.5\n",
    )

    config = load_config(tmp_path)

    assert config.time_limit_for("count") == 600.0
    assert config.time_limit_for("mean") == 2.5
    assert config.max_attempts == 5


def test_a_time_limit_can_name_a_step_of_a_scoped_workspace(tmp_path):
    scoped_workspace(tmp_path, SCOPED_TOML + "\n[run.time_limits]\nmismatch = 30\n")

    config = load_config(tmp_path)

    assert config.time_limit_for("mismatch") == 30.0
    assert config.time_limit_for("alpha") is None


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("time_limit = nan", "found nan"),
        ("time_limit = inf", "found inf"),
        ("time_limit = -inf", "found -inf"),
        ("time_limit = 0", "above 0, found 0"),
        ("time_limit = -5", "above 0, found -5"),
        ("time_limit = 1e9", "at most 604800"),
        ('time_limit = "600"', "expected a number, found '600'"),
        ("time_limit = true", "expected a number, found true"),
    ],
)
def test_a_time_limit_that_is_not_a_finite_positive_number_is_refused(
    tmp_path, load_fails, line, fragment
):
    unit_workspace(tmp_path, UNIT_TOML + f"\n[run]\n{line}\n")

    load_fails(tmp_path, str(tmp_path / "workspace.toml"), "[run] time_limit", fragment)


def test_a_step_time_limit_that_is_nan_is_refused_naming_the_step(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML + "\n[run.time_limits]\ncount = nan\n")

    load_fails(tmp_path, "[run] time_limits.count", "found nan")


def test_a_time_limit_for_an_unknown_step_names_it_and_lists_the_steps(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML + "\n[run.time_limits]\ncuont = 10\n")

    load_fails(
        tmp_path,
        str(tmp_path / "workspace.toml"),
        "[run] time_limits.cuont",
        "no step is named 'cuont'",
        "did you mean 'count'?",
        "steps: count, mean",
    )


def test_time_limits_given_as_a_number_is_refused(tmp_path, load_fails):
    unit_workspace(tmp_path, UNIT_TOML + "\n[run]\ntime_limits = 10\n")

    load_fails(tmp_path, "[run] time_limits", "expected a table, found 10")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("0", "at least 1, found 0"),
        ("-1", "at least 1"),
        ("2.5", "expected an integer, found 2.5"),
        ("true", "expected an integer, found true"),
        ("1000", "at most 100, found 1000"),
    ],
)
def test_max_attempts_must_be_a_whole_number_from_one(tmp_path, load_fails, value, fragment):
    unit_workspace(tmp_path, UNIT_TOML + f"\n[run]\nmax_attempts = {value}\n")

    load_fails(tmp_path, "[run] max_attempts", fragment)


# -- the daemon's settings -----------------------------------------------------------------


def daemon_settings(tmp_path: Path, daemon_table: str = "", **flags):
    unit_workspace(tmp_path, UNIT_TOML + "\n[daemon]\n" + daemon_table)
    return load_settings(load_config(tmp_path), **flags)


@pytest.fixture
def no_daemon_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SINAGOTD_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    "name",
    ["settle_seconds", "rescan_seconds", "polling_seconds", "stop_grace_seconds", "retry_seconds"],
)
def test_a_daemon_setting_that_is_not_finite_is_refused_naming_file_and_key(
    tmp_path, no_daemon_env, name, value
):
    with pytest.raises(ConfigError) as info:
        daemon_settings(tmp_path, f"{name} = {value}\n")

    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'workspace.toml'}: [daemon] {name}: ")
    assert value in message


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "NaN"])
def test_a_settle_time_from_the_environment_that_is_not_finite_names_the_variable(
    tmp_path, no_daemon_env, value
):
    no_daemon_env.setenv("SINAGOTD_SETTLE_SECONDS", value)

    with pytest.raises(ConfigError) as info:
        daemon_settings(tmp_path, "settle_seconds = 2\n")

    assert str(info.value) == (
        f"$SINAGOTD_SETTLE_SECONDS: expected a finite number of seconds, found {value!r}"
    )


def test_a_settle_time_flag_that_is_not_finite_names_the_flag(tmp_path, no_daemon_env):
    with pytest.raises(ConfigError, match=r"^--settle-seconds: .*finite.*nan"):
        daemon_settings(tmp_path, settle_seconds=float("nan"))


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ("settle_seconds = -1", "[daemon] settle_seconds: must not be negative, found -1"),
        ("settle_seconds = 86400", "[daemon] settle_seconds: must be at most 3600"),
        ("rescan_seconds = 0", "[daemon] rescan_seconds: must be above 0"),
        ("polling_seconds = 0", "[daemon] polling_seconds: must be above 0"),
        ("retry_seconds = 0", "[daemon] retry_seconds: must be above 0"),
        ("rescan_seconds = 1e12", "[daemon] rescan_seconds: must be at most 604800"),
        ("stop_grace_seconds = 1e300", "[daemon] stop_grace_seconds: must be at most 86400"),
    ],
)
def test_a_daemon_setting_out_of_range_is_refused_naming_the_key(
    tmp_path, no_daemon_env, table, fragment
):
    with pytest.raises(ConfigError) as info:
        daemon_settings(tmp_path, table + "\n")

    assert fragment in str(info.value)


def test_an_out_of_range_variable_is_blamed_on_the_variable_not_the_file(tmp_path, no_daemon_env):
    no_daemon_env.setenv("SINAGOTD_RETRY_SECONDS", "-3")

    with pytest.raises(ConfigError) as info:
        daemon_settings(tmp_path, "retry_seconds = 5\n")

    assert str(info.value) == "$SINAGOTD_RETRY_SECONDS: must be above 0, found '-3'"


def test_a_wrong_observer_from_the_environment_is_blamed_on_the_variable(tmp_path, no_daemon_env):
    no_daemon_env.setenv("SINAGOTD_OBSERVER", "fanotify")

    with pytest.raises(ConfigError) as info:
        daemon_settings(tmp_path, 'observer = "polling"\n')

    assert str(info.value) == (
        "$SINAGOTD_OBSERVER: 'fanotify' is not one of auto, inotify, polling"
    )


# -- broken step scripts -------------------------------------------------------------------


def broken_mean(tmp_path: Path, source: str) -> Path:
    unit_workspace(tmp_path)
    return write(tmp_path / "scripts" / "mean.py", source)


def test_an_unclosed_parenthesis_early_in_a_script_still_lets_the_workspace_load(tmp_path):
    mean = broken_mean(
        tmp_path,
        """
        from sinagot import ScriptTemplate

        print(

        class Script(ScriptTemplate):
            PATH_IN = ("computed", "{id}-count.csv")
            PATH_OUT = ("computed", "{id}-mean.csv")

            def run(self):
                pass
        """,
    )
    write(tmp_path / "dataset" / "raw" / "REC-1-raw.csv", "x\n")

    ws = Workspace(tmp_path)

    step = ws._engine.layout.steps(None, None)[1]
    assert step.broken == f"{mean}, line 3: syntax error: '(' was never closed"
    assert [str(p) for p in step.outputs.patterns] == ["computed/{id}-mean.csv"]
    assert ws.records.ids() == ["REC-1"]


def test_a_long_method_without_its_colon_still_lets_the_workspace_load(tmp_path):
    body = "".join(f"        x{i} = {i}\n" for i in range(300))
    broken_mean(
        tmp_path,
        script_source(*MEAN).replace("    def run(self):\n        pass\n", "")
        + "\n    def run(self)\n"
        + body,
    )

    step = Engine(tmp_path).layout.steps(None, None)[1]

    assert "syntax error: expected ':'" in step.broken
    assert [str(p) for p in step.inputs.patterns] == ["computed/{id}-count.csv"]


def test_a_nul_byte_in_a_script_marks_it_broken_at_its_line(tmp_path):
    mean = broken_mean(tmp_path, script_source(*MEAN) + "\n# a stray \0 byte\n")

    step = Engine(tmp_path).layout.steps(None, None)[1]

    line = script_source(*MEAN).count("\n") + 2
    assert step.broken == f"{mean}, line {line}: syntax error: a NUL byte"
    assert [str(p) for p in step.outputs.patterns] == ["computed/{id}-mean.csv"]


@pytest.mark.parametrize(
    ("source", "line"),
    [
        pytest.param(
            script_source(*MEAN).replace(
                "PATH_OUT = ('computed', '{id}-mean.csv')",
                "PATH_OUT = ('computed', '{id}-mean.csv'",
            ),
            6,
            id="unclosed-in-PATH_OUT",
        ),
        pytest.param(
            script_source(*MEAN).replace(
                "PATH_OUT = ('computed', '{id}-mean.csv')",
                "PATH_OUT = {\n        'a': ('computed', '{id}-a.csv')\n"
                "        'b': ('computed', '{id}-b.csv'),\n    }",
            ),
            7,
            id="missing-comma-inside-PATH_OUT",
        ),
        pytest.param(
            script_source(*MEAN)
            .replace("PATH_OUT = ('computed', '{id}-mean.csv')", "PATH_OUT = out('mean')")
            .replace("    def run(self):", "    def run(self)"),
            8,
            id="computed-PATH_OUT",
        ),
        pytest.param(
            script_source(*MEAN).replace("class Script(ScriptTemplate):", "class Script(Template)"),
            4,
            id="class-line",
        ),
    ],
)
def test_a_broken_script_whose_patterns_cannot_be_read_is_refused_naming_file_and_line(
    tmp_path, load_fails, source, line
):
    mean = broken_mean(tmp_path, source)

    message = load_fails(tmp_path, f"{mean}, line {line}: syntax error", layout=True)
    assert "PATH_IN and PATH_OUT are known neither" in message


def test_a_broken_script_whose_recovered_patterns_are_bad_is_still_refused(tmp_path, load_fails):
    mean = broken_mean(
        tmp_path,
        script_source(MEAN[0], ("computed", "mean.csv")).replace("def run(self):", "def run(self)"),
    )

    load_fails(tmp_path, str(mean), "PATH_OUT", "must hold {id}", layout=True)


BROKEN_CLASS_LINE = "from sinagot import ScriptTemplate\n\nclass Script(ScriptTemplate:\n    pass\n"


def test_a_script_broken_on_its_class_line_keeps_the_patterns_of_the_last_good_load(tmp_path):
    unit_workspace(tmp_path)
    (tmp_path / "dataset" / ".sinagot").mkdir(parents=True)
    Engine(tmp_path).layout.remember_patterns()  # as the daemon or `sinagot run` does
    mean = write(tmp_path / "scripts" / "mean.py", BROKEN_CLASS_LINE)

    step = Engine(tmp_path).layout.steps(None, None)[1]

    assert step.broken == f"{mean}, line 3: syntax error: invalid syntax"
    assert [str(p) for p in step.inputs.patterns] == ["computed/{id}-count.csv"]
    assert [str(p) for p in step.outputs.patterns] == ["computed/{id}-mean.csv"]


def test_computed_patterns_of_a_script_that_no_longer_parses_come_from_the_last_good_load(
    tmp_path,
):
    unit_workspace(tmp_path)
    (tmp_path / "dataset" / ".sinagot").mkdir(parents=True)
    computed = script_source(*MEAN).replace(
        "PATH_OUT = ('computed', '{id}-mean.csv')", "PATH_OUT = ('computed', '{id}-' + 'avg.csv')"
    )
    write(tmp_path / "scripts" / "mean.py", computed)
    Engine(tmp_path).layout.remember_patterns()
    write(tmp_path / "scripts" / "mean.py", computed.replace("def run(self):", "def run(self)"))

    step = Engine(tmp_path).layout.steps(None, None)[1]

    assert "line 8: syntax error" in step.broken
    assert [str(p) for p in step.outputs.patterns] == ["computed/{id}-avg.csv"]


def test_patterns_edited_along_with_a_slip_are_taken_from_the_file_not_the_last_load(tmp_path):
    unit_workspace(tmp_path)
    (tmp_path / "dataset" / ".sinagot").mkdir(parents=True)
    Workspace(tmp_path)
    write(
        tmp_path / "scripts" / "mean.py",
        script_source(MEAN[0], ("computed", "{id}-median.csv")).replace("run(self):", "run(self)"),
    )

    step = Engine(tmp_path).layout.steps(None, None)[1]

    assert step.broken is not None
    assert [str(p) for p in step.outputs.patterns] == ["computed/{id}-median.csv"]


@pytest.mark.parametrize(
    "cache",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param('["a list"]', id="a-list"),
        pytest.param(
            '{"scripts": {"MEAN": {"PATH_IN": ["..", "x"], "PATH_OUT": ["/etc"]}}}', id="escaping"
        ),
        pytest.param('{"scripts": {"MEAN": {"PATH_IN": 3}}}', id="wrong-shape"),
    ],
)
def test_a_damaged_pattern_cache_is_ignored_and_the_broken_script_refused_by_line(
    tmp_path, load_fails, cache
):
    unit_workspace(tmp_path)
    state = tmp_path / "dataset" / ".sinagot"
    state.mkdir(parents=True)
    mean = write(tmp_path / "scripts" / "mean.py", BROKEN_CLASS_LINE)
    (state / "patterns.json").write_text(cache.replace("MEAN", str(mean)))

    load_fails(tmp_path, f"{mean}, line 3: syntax error", "known neither", layout=True)
