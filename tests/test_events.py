"""The daemon's events as people read them on a console, and as programs read them."""

from __future__ import annotations

import io
import json
import threading

import pytest

from sinagotd.events import batch, configure


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


class Writes(io.StringIO):
    """A stream that keeps each write apart: what a reader of the pipe sees arrive."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_events_of_one_loop_pass_are_written_together_and_others_at_once():
    stream = Writes()
    log = configure("json", stream)
    log.info("daemon.idle")
    assert len(stream.writes) == 1  # outside a batch: at once
    with batch():
        for step in ("count", "mean"):
            log.info("step.finished", record_id="REC-1", step=step)
        other = threading.Thread(target=log.warning, args=("watch.error",))
        other.start()
        other.join()
        # another thread's event is not held back by the loop's batch
        assert [json.loads(w)["event"] for w in stream.writes[1:]] == ["watch.error"]
    finished = stream.writes[2]  # the batch: one write, one line an event, in order
    assert [json.loads(line)["step"] for line in finished.splitlines()] == ["count", "mean"]
    assert len(stream.writes) == 3 and finished.endswith("\n")
    with pytest.raises(RuntimeError), batch():
        log.info("step.finished", record_id="REC-2", step="count")
        raise RuntimeError("the loop failed mid-pass")
    assert json.loads(stream.writes[3])["record_id"] == "REC-2"  # said even so
