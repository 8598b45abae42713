"""The seed API: workspaces, record collections, records, subscopes and step collections."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sinagot import ScriptTemplate, StepStatus, Workspace

HARBOR_IDS = {"REC-20200601", "REC-20200602", "REC-20200603"}
EEG_IDS = {"REC-200331-A", "REC-200331-B", "REC-200401-A"}


# -- reprs -------------------------------------------------------------------------------


def test_harbor_reprs(harbor):
    ws = Workspace(harbor, verbose=False)
    assert repr(ws) == "<Workspace instance>"
    assert repr(ws.records.get("REC-20200603")) == "<Record instance | id: REC-20200603>"


def test_scoped_reprs(eeg):
    ws = Workspace(eeg, verbose=False)
    assert repr(ws.RS) == "<RecordCollection instance | task: RS, modality: None>"
    assert repr(ws.RS.EEG) == "<RecordCollection instance | task: RS, modality: EEG>"
    assert repr(ws.EEG.RS) == "<RecordCollection instance | task: RS, modality: EEG>"
    rec = ws.records.get("REC-200331-A")
    assert repr(rec.EEG) == "<Record instance | id: REC-200331-A, task: None, modality: EEG>"
    assert (
        repr(rec.RS.clinical)
        == "<Record instance | id: REC-200331-A, task: RS, modality: clinical>"
    )


# -- records -----------------------------------------------------------------------------


@pytest.mark.parametrize(("example", "ids"), [("harbor", HARBOR_IDS), ("eeg", EEG_IDS)])
def test_records_are_listed_counted_and_fetched(example, ids, request):
    ws = Workspace(request.getfixturevalue(example), verbose=False)
    records = ws.records

    listed = list(records.iter_ids())
    assert sorted(listed) == sorted(ids)
    assert len(listed) == len(set(listed)), "each record is listed once"
    assert records.ids() == listed
    assert records.count() == 3
    assert all(records.has(rid) for rid in ids)

    first = records.first()
    assert first is not None
    assert first.id == next(records.iter_ids())
    assert [r.id for r in records.all()] == listed
    assert [r.id for r in records.head(2)] == listed[:2]
    assert [r.id for r in records.head()] == listed  # default n=5, only 3 records

    some = sorted(ids)[1]
    assert records.get(some).id == some


def test_has_is_false_for_a_record_without_data(harbor):
    ws = Workspace(harbor, verbose=False)
    assert not ws.records.has("REC-20991231")


def test_a_record_with_no_data_yet_can_still_be_got(harbor):
    ws = Workspace(harbor, verbose=False)
    rec = ws.records.get("REC-20991231")
    assert rec.id == "REC-20991231"
    assert repr(rec) == "<Record instance | id: REC-20991231>"
    status = rec.steps.status()
    assert list(status["step_label"]) == ["count", "mean"]
    assert set(status["step_status"]) == {StepStatus.DATA_NOT_AVAILABLE}


@pytest.mark.parametrize("bad", ["REC-2020", "nope", "../REC-20200601", "REC-20200601/x"])
def test_get_rejects_an_id_that_does_not_match_the_pattern(harbor, bad):
    ws = Workspace(harbor, verbose=False)
    with pytest.raises(ValueError, match="REC-"):
        ws.records.get(bad)


def test_an_empty_dataset_has_no_records(harbor):
    for raw in (harbor / "dataset" / "raw").iterdir():
        raw.unlink()
    ws = Workspace(harbor, verbose=False)
    assert ws.records.count() == 0
    assert ws.records.ids() == []
    assert ws.records.first() is None
    assert ws.records.all() == []
    assert ws.records.head(2) == []


def test_a_missing_dataset_folder_has_no_records(harbor):
    shutil.rmtree(harbor / "dataset")
    ws = Workspace(harbor, verbose=False)
    assert ws.records.count() == 0
    assert ws.records.first() is None


def test_a_subscope_lists_only_the_records_with_data_for_it(eeg):
    (eeg / "dataset" / "REC-200331-B" / "HDC" / "behavior" / "trials.csv").unlink()
    ws = Workspace(eeg, verbose=False)
    assert ws.records.count() == 3
    assert sorted(ws.HDC.behavior.ids()) == ["REC-200331-A", "REC-200401-A"]
    assert not ws.HDC.behavior.has("REC-200331-B")
    assert ws.HDC.count() == 3  # its EEG data is still there


def test_a_new_record_shows_up_without_a_new_workspace(harbor):
    ws = Workspace(harbor, verbose=False)
    assert ws.records.count() == 3
    shutil.copy(
        harbor / "dataset" / "raw" / "REC-20200601-raw.csv",
        harbor / "dataset" / "raw" / "REC-20200604-raw.csv",
    )
    assert ws.records.count() == 4
    assert ws.records.has("REC-20200604")


# -- subscopes ---------------------------------------------------------------------------


def test_valid_pairs_select_a_unit(eeg):
    ws = Workspace(eeg, verbose=False)
    assert (ws.RS.EEG.task, ws.RS.EEG.modality) == (ws.EEG.RS.task, ws.EEG.RS.modality)
    assert (ws.HDC.behavior.task, ws.HDC.behavior.modality) == ("HDC", "behavior")
    assert ws.HDC.behavior.is_unit and not ws.HDC.is_unit
    rec = ws.records.get("REC-200331-A")
    assert (rec.RS.clinical.task, rec.RS.clinical.modality) == ("RS", "clinical")
    assert rec.RS.clinical.id == "REC-200331-A"


@pytest.mark.parametrize(
    ("path", "wrong", "valid"),
    [
        (("RS", "behavior"), "behavior", "valid here: EEG, clinical"),
        (("RS", "MMN"), "MMN", "valid here: EEG, clinical"),
        (("EEG", "EEG"), "EEG", "valid here: RS, MMN, HDC"),
        (("nonsense",), "nonsense", "valid here: RS, MMN, HDC, EEG, behavior, clinical"),
    ],
)
def test_invalid_subscope_says_which_names_are_valid(eeg, path, wrong, valid):
    ws = Workspace(eeg, verbose=False)
    *head, last = path
    scope = ws
    for name in head:
        scope = getattr(scope, name)
    with pytest.raises(AttributeError) as exc:
        getattr(scope, last)
    message = str(exc.value)
    assert repr(wrong) in message
    assert valid in message


def test_record_subscopes_are_checked_like_collection_ones(eeg):
    rec = Workspace(eeg, verbose=False).records.get("REC-200331-A")
    with pytest.raises(AttributeError, match="valid here: EEG, clinical"):
        rec.RS.behavior  # noqa: B018


def test_a_unit_mode_workspace_has_no_subscopes(harbor):
    ws = Workspace(harbor, verbose=False)
    with pytest.raises(AttributeError, match="'RS'"):
        ws.RS  # noqa: B018
    with pytest.raises(AttributeError, match="'EEG'"):
        ws.records.EEG  # noqa: B018
    with pytest.raises(AttributeError, match="'EEG'"):
        ws.records.get("REC-20200601").EEG  # noqa: B018


def _write_other_workspace(root: Path) -> Path:
    """A scoped workspace with tasks A and B and one modality M (step `measure`)."""
    root.mkdir()
    (root / "workspace.toml").write_text(
        '[records]\nid_pattern = "S\\\\d{3}"\n\n'
        '[tasks.A]\nmodalities = ["M"]\n[tasks.B]\nmodalities = ["M"]\n\n'
        '[modalities.M]\nscripts = ["measure"]\n'
    )
    (root / "scripts" / "M").mkdir(parents=True)
    (root / "scripts" / "M" / "measure.py").write_text(
        "from sinagot import ScriptTemplate\n\n\n"
        "class Script(ScriptTemplate):\n"
        '    PATH_IN = ("{task}", "{id}.txt")\n'
        '    PATH_OUT = ("{task}", "{id}-measure.txt")\n\n'
        "    def run(self):\n"
        "        self.path.output.write_text(self.path.input.read_text().upper())\n"
    )
    (root / "dataset" / "A").mkdir(parents=True)
    (root / "dataset" / "A" / "S001.txt").write_text("a\n")
    return root


def test_two_workspaces_never_share_state(eeg, tmp_path):
    first = Workspace(eeg, verbose=False)
    assert repr(first.RS) == "<RecordCollection instance | task: RS, modality: None>"
    other = Workspace(_write_other_workspace(tmp_path / "other"), verbose=False)

    assert repr(other.A.M) == "<RecordCollection instance | task: A, modality: M>"
    with pytest.raises(AttributeError, match="valid here: A, B, M"):
        other.RS  # noqa: B018
    assert other.records.ids() == ["S001"]
    assert other.steps.scripts_names() == {"M": ["measure"]}

    # The first workspace is untouched by the second one.
    with pytest.raises(AttributeError, match="valid here: RS, MMN, HDC, EEG, behavior, clinical"):
        first.A  # noqa: B018
    assert repr(first.RS.EEG) == "<RecordCollection instance | task: RS, modality: EEG>"
    assert sorted(first.records.ids()) == sorted(EEG_IDS)
    assert "measure" not in [n for names in first.steps.scripts_names().values() for n in names]


def test_two_workspaces_with_same_step_names_keep_their_own_scripts(harbor, tmp_path):
    other = shutil.copytree(harbor, tmp_path / "other-harbor")
    count = other / "scripts" / "count.py"
    count.write_text(count.read_text().replace('"{id}-count.csv"', '"{id}-tally.csv"'))
    ws, ws_other = Workspace(harbor, verbose=False), Workspace(other, verbose=False)
    assert ws_other.steps.get("count").script.PATH_OUT == ("computed", "{id}-tally.csv")
    assert ws.steps.get("count").script.PATH_OUT == ("computed", "{id}-count.csv")


# -- steps -------------------------------------------------------------------------------


def test_unit_mode_steps(harbor):
    ws = Workspace(harbor, verbose=False)
    steps = ws.steps
    assert steps.scripts_names() == ["count", "mean"]
    assert steps.count() == 2
    assert steps.first().label == "count"
    assert steps.get("mean").label == "mean"
    rec_steps = ws.records.get("REC-20200601").steps
    assert rec_steps.scripts_names() == ["count", "mean"]


def test_steps_of_each_scope_in_order(eeg):
    ws = Workspace(eeg, verbose=False)
    rec = ws.records.get("REC-200331-A")
    assert rec.RS.EEG.steps.scripts_names() == ["preprocess", "alpha"]
    assert rec.RS.EEG.steps.count() == 2
    assert rec.RS.EEG.steps.first().label == "preprocess"
    assert ws.MMN.EEG.steps.scripts_names() == ["preprocess", "mismatch"]
    assert ws.HDC.behavior.steps.scripts_names() == ["scores"]
    # Without a modality, one entry per modality (sinagot 0.3's shape).
    assert ws.HDC.steps.scripts_names() == {
        "EEG": ["preprocess"], "behavior": ["scores"], "clinical": ["summary"],
    }  # fmt: skip
    assert ws.RS.steps.scripts_names() == {"EEG": ["preprocess", "alpha"], "clinical": ["summary"]}
    assert ws.steps.scripts_names() == {
        "EEG": ["preprocess", "alpha", "mismatch"], "behavior": ["scores"], "clinical": ["summary"],
    }  # fmt: skip
    assert ws.steps.count() == {"EEG": 3, "behavior": 1, "clinical": 1}


def test_running_an_unknown_step_names_the_valid_ones(eeg):
    rs_eeg = Workspace(eeg, verbose=False).records.get("REC-200331-A").RS.EEG
    assert rs_eeg.steps.get("mismatch") is None  # an MMN step, not an RS one (0.3: None)
    with pytest.raises(KeyError) as exc:
        rs_eeg.steps.run("mismatch")
    message = str(exc.value)
    assert "mismatch" in message
    assert "preprocess" in message
    assert "alpha" in message


def test_step_script_is_the_users_script(harbor, eeg):
    count = Workspace(harbor, verbose=False).steps.get("count").script
    assert isinstance(count, ScriptTemplate)  # 0.3: an instance of the user's script
    assert count.PATH_IN == ("raw", "{id}-raw.csv")
    assert count.PATH_OUT == ("computed", "{id}-count.csv")

    ws = Workspace(eeg, verbose=False)
    preprocess = ws.RS.EEG.steps.get("preprocess").script
    assert preprocess.PATH_IN == ("{id}", "{task}", "EEG", "raw.csv")
    mismatch = ws.MMN.EEG.steps.get("mismatch").script
    assert set(mismatch.PATH_IN) == {"eeg", "events"}


def test_step_script_is_read_fresh_from_its_file(harbor):
    ws = Workspace(harbor, verbose=False)
    script = harbor / "scripts" / "count.py"
    script.write_text(script.read_text().replace('"""Count', '"""Tally'))
    assert ws.steps.get("count").script.__doc__.startswith("Tally")
