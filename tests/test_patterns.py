"""Path patterns and record IDs: script patterns forwards (record -> path) and backwards
(path -> record), scanning a dataset, validating IDs, and mapping a changed path to its units."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sinagot
from sinagot import RecordIdError, Workspace
from sinagot.engine import Engine
from sinagot.layout import Unit
from sinagot.models import Record
from sinagot.patterns import TEMP_PREFIX, Match, PathPattern, check_linear, check_record_id

EXAMPLES = Path(__file__).resolve().parents[1] / "example"

REC = re.compile(r"REC-[0-9]{1,8}")
LOOSE = re.compile(r"[A-Za-z0-9_.-]+")
ANYTHING = re.compile(r".+")

RAW = PathPattern.parse(("raw", "{id}-raw.csv"))
EEG_RAW = PathPattern.parse(("{id}", "{task}", "EEG", "raw.csv"))


def touch(root: Path, *relatives: str) -> None:
    for relative in relatives:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")


def all_files(root: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
        for folder, _, names in os.walk(root)
        for name in names
    )


@pytest.fixture
def harbor(tmp_path: Path) -> Workspace:
    shutil.copytree(EXAMPLES / "harbor", tmp_path / "harbor")
    return Workspace(tmp_path / "harbor", verbose=False)


@pytest.fixture
def eeg(tmp_path: Path) -> Workspace:
    shutil.copytree(EXAMPLES / "eeg", tmp_path / "eeg")
    return Workspace(tmp_path / "eeg", verbose=False)


# -- PathPattern.parse ----------------------------------------------------------------------


def test_parse_keeps_the_parts_of_a_tuple_and_knows_its_placeholders():
    assert RAW.parts == ("raw", "{id}-raw.csv")
    assert RAW.fields == {"id"}
    assert str(RAW) == "raw/{id}-raw.csv"
    assert EEG_RAW.parts == ("{id}", "{task}", "EEG", "raw.csv")
    assert EEG_RAW.fields == {"id", "task"}
    assert PathPattern.parse(("raw", "data.csv")).fields == frozenset()


def test_parse_splits_separators_and_drops_dot_parts():
    assert PathPattern.parse("raw/{id}-raw.csv") == RAW
    assert PathPattern.parse(["raw", "{id}-raw.csv"]) == RAW
    assert PathPattern.parse(("./raw", "sub\\{id}.csv", ".")).parts == ("raw", "sub", "{id}.csv")
    assert PathPattern.parse(("raw//x", "{id}")).parts == ("raw", "x", "{id}")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (("..",), "'..'"),
        (("raw", "..", "{id}.csv"), "'..'"),
        (("raw/../{id}.csv",), "'..'"),
        (("{id}", "..\\x.csv"), "'..'"),
        (("/etc", "{id}.csv"), "absolute"),
        (("/etc/{id}.csv",), "absolute"),
        (("raw", "{ID}.csv"), "unknown placeholder {ID} in '{ID}.csv'"),
        (("{record}",), "unknown placeholder {record}"),
        (("{ id }",), "unknown placeholder { id }"),
        (("{}.csv",), "unknown placeholder {}"),
        (("{id",), "stray brace in '{id'"),
        (("raw}", "{id}"), "stray brace in 'raw}'"),
        (("{{id}}.csv",), "stray brace"),
        (("{id}}",), "stray brace"),
        ((), "expected a tuple of path parts"),
        ([], "expected a tuple of path parts"),
        (None, "expected a tuple of path parts"),
        (3, "expected a tuple of path parts"),
        ({"a": "b"}, "expected a tuple of path parts"),
        ("", "empty path"),
        (("",), "empty path"),
        ((".", "", "."), "empty path"),
        ((".", "/", ""), "is absolute"),
        (("raw", 3), "path part 3 is not a string"),
        ((None, "{id}"), "path part None is not a string"),
        ((Path("raw"), "{id}"), "is not a string"),
    ],
)
def test_parse_rejects_bad_patterns_with_a_clear_message(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PathPattern.parse(value)


def test_parse_rejects_an_absolute_part_anywhere():
    with pytest.raises(ValueError, match="absolute"):
        PathPattern.parse(("raw", "/etc/{id}.csv"))


# -- forwards: relative, resolve, glob ----------------------------------------------------


def test_relative_and_resolve_fill_in_the_record_and_task(tmp_path):
    assert RAW.relative("REC-1", None) == "raw/REC-1-raw.csv"
    assert RAW.relative("REC-1", "RS") == "raw/REC-1-raw.csv"  # no {task}: task unused
    assert RAW.resolve(tmp_path, "REC-1", None) == tmp_path / "raw" / "REC-1-raw.csv"
    assert EEG_RAW.relative("REC-1", "RS") == "REC-1/RS/EEG/raw.csv"
    assert EEG_RAW.resolve(tmp_path, "REC-1", "MMN") == tmp_path / "REC-1/MMN/EEG/raw.csv"
    twice = PathPattern.parse(("{id}", "{task}", "{id}-{task}.json"))
    assert twice.relative("S7", "HDC") == "S7/HDC/S7-HDC.json"


def test_relative_needs_a_task_when_the_pattern_has_one():
    with pytest.raises(ValueError, match=r"needs a task"):
        EEG_RAW.relative("REC-1", None)


def test_glob_finds_the_files_of_every_record(tmp_path):
    assert RAW.glob() == "raw/*-raw.csv"
    assert EEG_RAW.glob("RS") == "*/RS/EEG/raw.csv"
    assert EEG_RAW.glob() == "*/*/EEG/raw.csv"
    touch(
        tmp_path,
        "raw/REC-1-raw.csv",
        "raw/REC-2-raw.csv",
        "raw/REC-2-raw.txt",
        "REC-1/RS/EEG/raw.csv",
        "REC-1/MMN/EEG/raw.csv",
        "REC-2/RS/EEG/raw.csv",
    )
    found = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob(RAW.glob()))
    assert found == ["raw/REC-1-raw.csv", "raw/REC-2-raw.csv"]
    found = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob(EEG_RAW.glob("RS")))
    assert found == ["REC-1/RS/EEG/raw.csv", "REC-2/RS/EEG/raw.csv"]
    assert len(list(tmp_path.glob(EEG_RAW.glob()))) == 3


# -- backwards: Matcher.match ---------------------------------------------------------------


def test_match_gives_back_the_record_and_task():
    assert RAW.compile(REC).match("raw/REC-1-raw.csv") == Match("REC-1", None, "raw/REC-1-raw.csv")
    matcher = EEG_RAW.compile(REC, ("RS", "MMN"))
    assert matcher.match("REC-7/MMN/EEG/raw.csv") == Match("REC-7", "MMN", "REC-7/MMN/EEG/raw.csv")
    assert matcher.match("REC-7/RS/EEG/raw.csv").task == "RS"


def test_match_without_known_tasks_accepts_any_task_folder():
    match = EEG_RAW.compile(REC).match("REC-1/Anything_1/EEG/raw.csv")
    assert (match.record_id, match.task) == ("REC-1", "Anything_1")


@pytest.mark.parametrize(
    ("parts", "path"),
    [
        (("raw", "{id}-raw.csv"), "REC-1-raw.csv"),  # too shallow
        (("raw", "{id}-raw.csv"), "raw/sub/REC-1-raw.csv"),  # too deep
        (("raw", "{id}-raw.csv"), "raw/REC-1-raw.csv/x"),  # too deep
        (("raw", "{id}-raw.csv"), "computed/REC-1-raw.csv"),  # wrong folder
        (("raw", "{id}-raw.csv"), "raw/REC-1-raw.txt"),  # wrong suffix
        (("raw", "{id}-raw.csv"), "raw/REC-1-raw.csv.bak"),
        (("raw", "{id}-raw.csv"), "raw/xREC-1-raw.csv"),
        (("raw", "{id}-raw.csv"), "raw/REC-x-raw.csv"),  # ID does not match id_pattern
        (("raw", "{id}-raw.csv"), "raw/REC-123456789-raw.csv"),  # ID too long
        (("raw", "{id}-raw.csv"), "raw/-raw.csv"),
        (("raw", "{id}.csv"), "raw/REC-1xcsv"),  # '.' is literal, not "any character"
        (("data[1]", "{id}.csv"), "data1/REC-1.csv"),  # brackets are literal
        (("{id}+.csv",), "REC-1.csv"),
        (("{id}", "{task}", "EEG", "raw.csv"), "REC-1/XX/EEG/raw.csv"),  # unknown task
        (("{id}", "{task}", "EEG", "raw.csv"), "REC-1/RS/MEG/raw.csv"),
        (("{id}", "{task}", "EEG", "raw.csv"), "REC-1/RSX/EEG/raw.csv"),
        (("{id}", "{id}-x.csv"), "REC-1/REC-2-x.csv"),  # two different IDs
        (("{id}_{id}.csv",), "REC-1_REC-2.csv"),
        (("{task}", "{id}-{task}.csv"), "RS/REC-1-MMN.csv"),  # two different tasks
        (("raw", "data.csv"), "raw/data.csv"),  # no {id}: names no record
    ],
)
def test_match_returns_none_for_paths_of_no_record(parts, path):
    assert PathPattern.parse(parts).compile(REC, ("RS", "MMN")).match(path) is None


@pytest.mark.parametrize(
    ("parts", "path", "expected"),
    [
        (("{id}", "{id}-x.csv"), "REC-1/REC-1-x.csv", ("REC-1", None)),
        (("{id}_{id}.csv",), "REC-1_REC-1.csv", ("REC-1", None)),
        (("{task}", "{id}-{task}.csv"), "RS/REC-1-RS.csv", ("REC-1", "RS")),
        (("data[1]", "{id}.csv"), "data[1]/REC-1.csv", ("REC-1", None)),
        (("{id}+.csv",), "REC-1+.csv", ("REC-1", None)),
        (("(x)", "{id}.*"), "(x)/REC-1.*", ("REC-1", None)),
    ],
)
def test_match_accepts_repeated_placeholders_and_regex_characters(parts, path, expected):
    match = PathPattern.parse(parts).compile(REC, ("RS", "MMN")).match(path)
    assert match is not None
    assert (match.record_id, match.task) == expected


def test_an_alternation_in_id_pattern_stays_inside_the_id():
    matcher = RAW.compile(re.compile(r"A\d|B\d"))
    assert matcher.match("raw/A1-raw.csv").record_id == "A1"
    assert matcher.match("raw/B2-raw.csv").record_id == "B2"
    assert matcher.match("raw/A1") is None
    assert matcher.match("raw/B2-raw.csvx") is None


def test_an_anchored_id_pattern_still_maps_paths_back():
    anchored = re.compile(r"^REC-[0-9]+$")
    assert check_record_id("REC-1", anchored) == "REC-1"
    match = RAW.compile(anchored).match("raw/REC-1-raw.csv")
    assert match is not None and match.record_id == "REC-1"


def test_an_id_pattern_with_inline_flags_still_maps_paths_back():
    ignorecase = re.compile(r"(?i)rec-[0-9]+")
    assert check_record_id("REC-1", ignorecase) == "REC-1"
    match = RAW.compile(ignorecase).match("raw/REC-1-raw.csv")
    assert match is not None and match.record_id == "REC-1"


# -- properties: forwards then backwards is the identity ------------------------------------

# None of these characters may appear in a task name, so each separates {id} from {task}.
SEPARATORS = "-_.+~ "
LITERAL = "abcXYZ019" + SEPARATORS
TASKS = st.lists(
    st.from_regex(r"[A-Z][A-Za-z0-9]{0,5}", fullmatch=True), min_size=1, max_size=4, unique=True
)
LAYOUTS = [["{id}"], ["{task}"], ["{id}", "{task}"], ["{task}", "{id}"], ["{id}", "{id}"], []]


@st.composite
def patterns(draw) -> PathPattern:
    """Patterns whose paths name one (id, task) only: placeholders sharing a part are kept
    apart by a separator no task holds, and a part never holds both a repeated {id} and {task}."""
    literal_part = st.text(LITERAL, min_size=1, max_size=6).filter(lambda s: s not in (".", ".."))
    affix = st.text(LITERAL, max_size=4)
    between = st.builds(
        lambda a, sep, b: a + sep + b,
        st.text(LITERAL, max_size=2),
        st.sampled_from(SEPARATORS),
        st.text(LITERAL, max_size=2),
    )
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        fields = draw(st.sampled_from(LAYOUTS))
        if not fields:
            parts.append(draw(literal_part))
            continue
        text = draw(affix) + fields[0]
        for field in fields[1:]:
            text += draw(between) + field
        parts.append(text + draw(affix))
    if not any("{id}" in p for p in parts):
        parts.insert(draw(st.integers(0, len(parts))), draw(affix) + "{id}" + draw(affix))
    pattern = PathPattern.parse(tuple(parts))
    assert pattern.parts == tuple(parts)
    return pattern


def valid_ids(regex: re.Pattern[str]) -> st.SearchStrategy[str]:
    def valid(record_id: str) -> bool:
        try:
            check_record_id(record_id, regex)
        except RecordIdError:
            return False
        return True

    return st.from_regex(regex, fullmatch=True).filter(valid)


def _round_trip(data, id_regex: re.Pattern[str]) -> None:
    pattern = data.draw(patterns(), label="pattern")
    tasks = data.draw(TASKS, label="tasks")
    task = data.draw(st.sampled_from(tasks), label="task") if "task" in pattern.fields else None
    record_id = data.draw(valid_ids(id_regex), label="record_id")
    relative = pattern.relative(record_id, task)
    assert pattern.compile(id_regex, tasks).match(relative) == Match(record_id, task, relative)


@settings(deadline=None, max_examples=200)
@given(st.data())
def test_forward_then_reverse_is_the_identity_for_strict_ids(data):
    _round_trip(data, REC)


@settings(deadline=None, max_examples=200)
@given(st.data())
def test_forward_then_reverse_is_the_identity_for_loose_ids(data):
    _round_trip(data, LOOSE)


@settings(deadline=None, max_examples=200)
@given(
    pattern=patterns(),
    record_id=st.lists(
        st.sampled_from(["a", "REC-1", "/", ".", "..", "-", "\\", "\0", "\n"]),
        min_size=1,
        max_size=6,
    ).map("".join),
    tasks=TASKS,
    data=st.data(),
)
def test_an_id_found_by_the_reverse_mapping_never_holds_a_slash(pattern, record_id, tasks, data):
    task = data.draw(st.sampled_from(tasks)) if "task" in pattern.fields else None
    match = pattern.compile(ANYTHING, tasks).match(pattern.relative(record_id, task))
    if match is not None:
        assert "/" not in match.record_id
        assert check_record_id(match.record_id, ANYTHING) == match.record_id
    if "/" in record_id:
        assert match is None or match.record_id != record_id


def test_an_id_pattern_matching_anything_cannot_span_folders():
    matcher = RAW.compile(ANYTHING)
    assert matcher.match("raw/a/b-raw.csv") is None
    assert matcher.match("raw/../b-raw.csv") is None
    assert matcher.match("raw/..-raw.csv") is None  # '..' is never an ID
    assert matcher.match("raw/.-raw.csv") is None
    assert matcher.match("raw/a\\b-raw.csv") is None
    assert PathPattern.parse(("{id}", "x.csv")).compile(ANYTHING).match("../x.csv") is None
    assert matcher.match("raw/a b-raw.csv").record_id == "a b"


# -- Matcher.scan ----------------------------------------------------------------------------


def test_scan_finds_exactly_the_matching_files_of_one_folder(tmp_path):
    touch(
        tmp_path,
        "raw/REC-1-raw.csv",
        "raw/REC-22-raw.csv",
        "raw/REC-x-raw.csv",
        "raw/REC-3-raw.txt",
        "raw/notes.md",
        "raw/sub/REC-4-raw.csv",
        "computed/REC-5-raw.csv",
        "REC-6-raw.csv",
    )
    found = sorted(RAW.compile(REC).scan(tmp_path), key=lambda m: m.record_id)
    assert found == [
        Match("REC-1", None, "raw/REC-1-raw.csv"),
        Match("REC-22", None, "raw/REC-22-raw.csv"),
    ]


def test_scan_walks_nested_patterns_and_agrees_with_match(tmp_path):
    touch(
        tmp_path,
        "REC-1/RS/EEG/raw.csv",
        "REC-1/MMN/EEG/raw.csv",
        "REC-1/clinical.json",
        "REC-2/RS/EEG/raw.csv",
        "REC-2/RS/EEG/events.csv",
        "REC-3/XX/EEG/raw.csv",  # unknown task
        "REC-4/RS/MEG/raw.csv",  # other modality
        "bad/RS/EEG/raw.csv",  # not an ID
        "REC-9",  # a file where a record folder would be
        "REC-5/RS",  # a file where a task folder would be
    )
    (tmp_path / "REC-6" / "RS" / "EEG").mkdir(parents=True)  # data not arrived yet
    matcher = EEG_RAW.compile(REC, ("RS", "MMN"))
    found = sorted((m.record_id, m.task, m.relative) for m in matcher.scan(tmp_path))
    assert found == [
        ("REC-1", "MMN", "REC-1/MMN/EEG/raw.csv"),
        ("REC-1", "RS", "REC-1/RS/EEG/raw.csv"),
        ("REC-2", "RS", "REC-2/RS/EEG/raw.csv"),
    ]
    by_match = sorted(
        (m.record_id, m.task, m.relative)
        for m in map(matcher.match, all_files(tmp_path))
        if m is not None
    )
    assert found == by_match


def test_scan_checks_that_repeated_placeholders_agree(tmp_path):
    touch(tmp_path, "REC-1/REC-1-x.csv", "REC-1/REC-2-x.csv", "REC-3/REC-3-y.csv")
    matcher = PathPattern.parse(("{id}", "{id}-x.csv")).compile(REC)
    assert [m.relative for m in matcher.scan(tmp_path)] == ["REC-1/REC-1-x.csv"]


def test_scan_ignores_temporary_outputs(tmp_path):
    touch(
        tmp_path,
        "computed/REC-1-count.csv",
        f"computed/{TEMP_PREFIX}3f2a9c-REC-2-count.csv",
        f"computed/{TEMP_PREFIX}old-REC-3-count.csv",
        f"{TEMP_PREFIX}77/out.csv",
    )
    # With an ID pattern this loose, the temporary names would match if they were read.
    count = PathPattern.parse(("computed", "{id}-count.csv")).compile(ANYTHING)
    assert [m.record_id for m in count.scan(tmp_path)] == ["REC-1"]
    folders = PathPattern.parse(("{id}", "out.csv")).compile(ANYTHING)
    assert list(folders.scan(tmp_path)) == []


def test_match_ignores_temporary_outputs_like_scan():
    count = PathPattern.parse(("computed", "{id}-count.csv")).compile(ANYTHING)
    assert count.match(f"computed/{TEMP_PREFIX}3f2a9c-REC-2-count.csv") is None


@pytest.mark.parametrize("pattern", [RAW, EEG_RAW, PathPattern.parse(("{id}-raw.csv",))])
def test_scan_of_missing_folders_finds_nothing(tmp_path, pattern):
    matcher = pattern.compile(REC, ("RS",))
    assert list(matcher.scan(tmp_path / "missing")) == []
    assert list(matcher.scan(tmp_path)) == []
    touch(tmp_path, "raw", "REC-1")  # files where folders would be
    assert list(matcher.scan(tmp_path / "raw")) == []
    assert list(matcher.scan(tmp_path / "REC-1")) == []


# -- record IDs ------------------------------------------------------------------------------

ESCAPING_IDS = ["..", ".", "", "a/b", "../x", "/abs", "a\\b", "..\\x", "a\0b", "REC-1/"]


@pytest.mark.parametrize("record_id", ESCAPING_IDS)
@pytest.mark.parametrize("regex", [REC, LOOSE, ANYTHING], ids=["strict", "loose", "anything"])
def test_check_record_id_refuses_ids_that_could_leave_the_dataset(record_id, regex):
    with pytest.raises(ValueError) as caught:
        check_record_id(record_id, regex)
    assert caught.type is RecordIdError
    assert repr(record_id) in str(caught.value)


@pytest.mark.parametrize(
    "record_id", ["REC-", "rec-1", "REC-1 ", " REC-1", "REC-1\n", "REC-123456789", "xREC-1"]
)
def test_check_record_id_refuses_ids_that_do_not_fully_match(record_id):
    with pytest.raises(RecordIdError) as caught:
        check_record_id(record_id, REC)
    message = str(caught.value)
    assert repr(record_id) in message
    assert repr(REC.pattern) in message


@pytest.mark.parametrize("record_id", [1, None, b"REC-1", ("REC-1",)])
def test_check_record_id_refuses_non_strings(record_id):
    with pytest.raises(RecordIdError, match=re.escape(repr(record_id))):
        check_record_id(record_id, ANYTHING)


@pytest.mark.parametrize("record_id", ["REC-1", "REC-12345678"])
def test_check_record_id_returns_a_valid_id(record_id):
    assert check_record_id(record_id, REC) == record_id


def test_record_id_error_is_a_value_error():
    assert issubclass(sinagot.RecordIdError, ValueError)
    assert issubclass(sinagot.RecordIdError, sinagot.SinagotError)


@pytest.mark.parametrize("record_id", ESCAPING_IDS)
def test_records_get_refuses_ids_that_could_leave_the_dataset(harbor, record_id):
    before = all_files(harbor._engine.dataset.parent)
    with pytest.raises(RecordIdError) as caught:
        harbor.records.get(record_id)
    assert repr(record_id) in str(caught.value)
    assert all_files(harbor._engine.dataset.parent) == before


@pytest.mark.parametrize(
    "record_id", ["REC-2020060", "rec-20200601", "REC-20200601x", "REC-202006011", "20200601"]
)
def test_records_get_refuses_ids_that_do_not_match_id_pattern(harbor, record_id):
    with pytest.raises(ValueError) as caught:
        harbor.records.get(record_id)
    message = str(caught.value)
    assert repr(record_id) in message
    assert "id_pattern" in message
    assert repr(harbor._engine.config.id_regex.pattern) in message


def test_records_get_gives_a_record_before_its_files_arrive(harbor):
    record = harbor.records.get("REC-19990101")
    assert isinstance(record, Record)
    assert record.id == "REC-19990101"
    assert repr(record) == "<Record instance | id: REC-19990101>"
    assert "REC-19990101" not in harbor.records.ids()
    assert harbor.records.get("REC-20200601").id == "REC-20200601"


def test_scoped_records_get_checks_ids_too(eeg):
    assert eeg.RS.get("REC-990101-Z").id == "REC-990101-Z"
    with pytest.raises(RecordIdError, match=re.escape(repr("../REC-200331-A"))):
        eeg.RS.EEG.get("../REC-200331-A")
    with pytest.raises(RecordIdError, match=re.escape(repr("REC-200331"))):
        eeg.EEG.get("REC-200331")


# -- Layout.units_for_path -------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative",
    [
        "raw/REC-20200601-raw.csv",
        "computed/REC-20200601-count.csv",
        "computed/REC-20200601-mean.csv",
    ],
)
def test_units_for_path_maps_inputs_and_outputs_to_their_record(harbor, relative):
    assert harbor._engine.layout.units_for_path(relative) == [Unit("REC-20200601", None, None)]


@pytest.mark.parametrize(
    "relative",
    [
        "notes.txt",
        "raw/notes.txt",
        "raw/REC-2020060-raw.csv",
        "raw/REC-20200601-raw.csv/extra",
        "raw/sub/REC-20200601-raw.csv",
        "computed/REC-20200601-median.csv",
        "REC-20200601-raw.csv",
        f"computed/{TEMP_PREFIX}3f2a9c-REC-20200601-count.csv",
    ],
)
def test_units_for_path_ignores_unrelated_paths(harbor, relative):
    assert harbor._engine.layout.units_for_path(relative) == []


@pytest.mark.parametrize(
    ("relative", "task", "modality"),
    [
        ("REC-200331-A/RS/EEG/raw.csv", "RS", "EEG"),
        ("REC-200331-A/MMN/EEG/events.csv", "MMN", "EEG"),
        ("REC-200331-A/MMN/EEG/processed/clean.csv", "MMN", "EEG"),
        ("REC-200331-A/RS/EEG/processed/alpha.json", "RS", "EEG"),
        ("REC-200331-A/HDC/behavior/trials.csv", "HDC", "behavior"),
        ("REC-200331-A/HDC/clinical/summary.json", "HDC", "clinical"),
    ],
)
def test_units_for_path_maps_a_task_path_to_its_one_unit(eeg, relative, task, modality):
    assert eeg._engine.layout.units_for_path(relative) == [Unit("REC-200331-A", task, modality)]


def test_units_for_path_maps_a_shared_file_to_every_task_using_it(eeg):
    units = eeg._engine.layout.units_for_path("REC-200331-A/clinical.json")
    assert len(units) == 3
    assert set(units) == {Unit("REC-200331-A", t, "clinical") for t in ("RS", "MMN", "HDC")}


@pytest.mark.parametrize(
    "relative",
    [
        "REC-200331-A/XX/EEG/raw.csv",  # unknown task
        "REC-200331-A/RS/behavior/trials.csv",  # RS has no behavior modality
        "REC-200331-A/RS/EEG/events.csv",  # only MMN's steps read events
        "REC-200331/RS/EEG/raw.csv",  # not an ID
        "REC-200331-A/RS/EEG/raw.csv/extra",
        "REC-200331-A/notes.txt",
        "clinical.json",
    ],
)
def test_units_for_path_ignores_unrelated_eeg_paths(eeg, relative):
    assert eeg._engine.layout.units_for_path(relative) == []


# -- bounded matching (RE2) ------------------------------------------------------------------

BACKTRACKING = re.compile(r"REC-([a-z0-9]+-?)+")  # Python's re: 4**(n/2) steps to refuse
CRAFTED = "REC-" + "a" * 26 + "!"  # seconds with Python's re; more with every character


def test_a_name_crafted_to_backtrack_is_refused_at_once():
    started = time.perf_counter()

    assert RAW.compile(BACKTRACKING).match(f"raw/{CRAFTED}-raw.csv") is None
    with pytest.raises(RecordIdError, match="does not match id_pattern"):
        check_record_id(CRAFTED, BACKTRACKING)

    assert time.perf_counter() - started < 0.5
    assert RAW.compile(BACKTRACKING).match("raw/REC-a1-b2-raw.csv").record_id == "REC-a1-b2"


def test_a_placeholder_twice_in_one_part_is_bounded_and_finds_the_copies_that_agree():
    started = time.perf_counter()
    twice = PathPattern.parse(("{id}_{id}.csv",)).compile(BACKTRACKING)
    assert twice.match(f"{CRAFTED}_{CRAFTED}.csv") is None
    assert PathPattern.parse(("{id}{id}",)).compile(ANYTHING).match("ab" * 120 + "x") is None
    assert time.perf_counter() - started < 0.5
    # RE2 has no backreference: its first split of '.0..0' is ('.0.', '0'); ('.0', '.0') agrees.
    matcher = PathPattern.parse(("{id}.{id}",)).compile(LOOSE)
    assert matcher.match(".0..0") == Match(".0", None, ".0..0")
    assert matcher.match(".0..1") is None
    assert twice.match("REC-a-1_REC-a-1.csv").record_id == "REC-a-1"


def test_a_name_longer_than_any_file_system_holds_names_no_record():
    assert RAW.compile(LOOSE).match("raw/" + "a" * 250 + "-raw.csv") is None  # 258 bytes
    assert RAW.compile(LOOSE).match("raw/" + "a" * 240 + "-raw.csv").record_id == "a" * 240
    with pytest.raises(RecordIdError, match="longer than 255 bytes"):
        check_record_id("é" * 128, LOOSE)


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"REC-(?=\d)\w+", "no lookahead or lookbehind"),
        (r"(?<!x)REC-\d+", "no lookahead or lookbehind"),
        (r"(R)EC-\1", "no backreferences"),
        (r"(?P<x>R)(?P=x)", "no backreferences"),
        (r"REC-\d{,3}", "write {0,n}"),
        (r"(?x) REC - \d+", "its flags are i, m, s and U"),
    ],
)
def test_check_linear_says_why_an_id_pattern_cannot_be_matched_in_bounded_time(pattern, why):
    message = check_linear(pattern)
    assert message is not None
    assert repr(pattern) in message and why in message and "linear" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "pattern",
    [
        r"REC-[\d]{8}",  # README, harbor
        r"REC-\d{6}-[A-Z]",  # eeg
        r"[A-Za-z0-9][A-Za-z0-9_-]*",  # sinagot init
        r"^REC-\d+$",
        r"\AREC-\d+\Z",
        r"(?i)rec-\d+",
        BACKTRACKING.pattern,  # slow only with a backtracking engine
    ],
)
def test_check_linear_accepts_the_id_patterns_in_use(pattern):
    assert check_linear(pattern) is None


# -- what sinagotd watches -----------------------------------------------------------------


def test_a_pattern_reaches_the_folders_its_paths_can_be_in_and_no_other():
    matcher = PathPattern.parse(("raw", "sub-{id}", "eeg", "{id}_{task}.edf")).compile(
        re.compile(r"\d+"), ("rest",)
    )
    for names in ([], ["raw"], ["raw", "sub-12"], ["raw", "sub-12", "eeg"],
                  ["raw", "sub-12", "eeg", "12_rest.edf"],  # a folder where a file goes
                  ["raw", "sub-12", "eeg", "12_rest.edf", "inside"]):  # fmt: skip
        assert matcher.reaches(names), names
    for names in (["scratch"], ["raw", "sub-x"], ["raw", "sub-12", "meg"],
                  ["raw", "sub-12", "eeg", "12_other.edf"]):  # fmt: skip
        assert not matcher.reaches(names), names


def test_the_daemon_watches_the_folders_of_every_step_and_of_the_ready_marker(tmp_path: Path):
    shutil.copytree(EXAMPLES / "harbor", tmp_path / "harbor")
    config = tmp_path / "harbor" / "workspace.toml"
    config.write_text(config.read_text().replace(
        "[records]\n", '[records]\nready_when = "markers/{id}.done"\n', 1))  # fmt: skip
    layout = Engine(tmp_path / "harbor", verbose=False).layout
    for folder in ("raw", "computed", "markers"):  # count's input, both outputs, the marker
        assert layout.may_hold(folder), folder
    assert not layout.may_hold("scratch")
    assert not layout.may_hold("LOG")
    assert not layout.may_hold("raw/elsewhere")  # raw/ holds files: a folder only if named so
    assert layout.may_hold("raw/REC-20200601-raw.csv")
