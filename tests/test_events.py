"""The daemon's events as people read them on a console, and as programs read them."""

from __future__ import annotations

import io
import json

import pytest

from sinagotd.events import configure


def emit(log_format: str) -> str:
    stream = io.StringIO()
    log = configure(log_format, stream)
    log.info(
        "step.submitted", record_id="REC-1", task=None, modality=None, step="count",
        reasons=["output computed/REC-1-count.csv is missing", "forced"],
    )  # fmt: skip
    return stream.getvalue()


def test_console_lines_leave_out_empty_fields_and_say_reasons_as_text(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    line = emit("console")
    assert "step.submitted" in line and "record_id=REC-1" in line
    assert "task" not in line and "modality" not in line and "None" not in line
    assert "output computed/REC-1-count.csv is missing; forced" in line
    assert "[" not in line.split("step.submitted", 1)[1]  # no Python list


def test_json_lines_keep_every_field():
    event = json.loads(emit("json"))
    assert event["task"] is None and event["modality"] is None
    assert event["reasons"] == ["output computed/REC-1-count.csv is missing", "forced"]


@pytest.mark.parametrize(
    ("env", "coloured"),
    [({"NO_COLOR": "1"}, False), ({"FORCE_COLOR": "1"}, True),
     ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, False), ({}, False)],
)  # fmt: skip
def test_colours_follow_no_color_and_force_color(monkeypatch, env, coloured):
    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = emit("console")  # a StringIO is no terminal: no colours unless forced
    assert ("\x1b[" in line) is coloured
