"""example/eeg-bids end to end: EDF recordings in BIDS, processed with MNE by Sinagot.

The data are generated once for the module (`make_data.py`, four subjects, into tmp), and
processed once by `sinagot run`, the CLI, in a subprocess. Then a real `sinagotd` runs a
copy of the processed workspace: a fifth subject copied in slowly is processed, and an edit
of psd.py reruns psd alone.

The example needs the `eeg` extra (mne, mne-bids, edfio, matplotlib); without it this whole
file is skipped, and pytest's summary says so in capitals.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

_REASON = "EEG EXAMPLE NOT TESTED: the eeg extra is missing (pip install -e '.[eeg]'): no {}"
for _module in ("mne", "mne_bids", "edfio", "matplotlib"):
    pytest.importorskip(_module, reason=_REASON.format(_module))

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="sinagotd's tests use process groups, /proc"
)

EXAMPLE = Path(__file__).resolve().parents[1] / "example" / "eeg-bids"
SUBJECTS = ("sub-01", "sub-02", "sub-03", "sub-04")
CHANNELS = ("Fz", "Cz", "Pz", "O1", "O2")
LIGHT_DASK = '\n[dask]\nn_workers = 1\ndashboard_address = ":0"\n'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def derivatives(ws: Path, subject: str) -> Path:
    return ws / "bids" / "derivatives" / "sinagot" / subject / "ses-01" / "eeg"


def make_data(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / "make_data.py"), *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def sinagot(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = shutil.which("sinagot", path=os.path.dirname(sys.executable))
    command = [exe] if exe else [sys.executable, "-m", "sinagot"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of example/eeg-bids (scripts and configuration) with its data generated."""
    ws = tmp_path_factory.mktemp("eeg-bids") / "eeg-bids"
    shutil.copytree(EXAMPLE, ws, ignore=shutil.ignore_patterns("bids", "__pycache__"))
    with (ws / "workspace.toml").open("a") as file:
        file.write(LIGHT_DASK)
    started = time.monotonic()
    make_data("--dest", ws / "bids")
    print(f"make_data.py: {time.monotonic() - started:.1f} s")
    return ws


@pytest.fixture(scope="module")
def processed(generated: Path) -> Path:
    """The generated workspace after one `sinagot run`."""
    started = time.monotonic()
    result = sinagot("run", generated)
    print(f"sinagot run: {time.monotonic() - started:.1f} s")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "16 step(s) done, 0 failed" in result.stdout, result.stdout
    return generated


# -- the data ---------------------------------------------------------------------------------


def edf_header(path: Path) -> dict[str, Any]:
    """The fields of an EDF header that say what the file holds (EDF spec, fixed widths)."""
    head = path.read_bytes()[:256]
    signals = int(head[252:256])
    labels = path.read_bytes()[256 : 256 + 16 * signals]
    return {
        "version": head[:8],
        "reserved": head[192:236].strip(),  # "EDF+C": continuous EDF+ (annotations)
        "records": int(head[236:244]),
        "record_seconds": float(head[244:252]),
        "labels": [labels[16 * i : 16 * (i + 1)].decode().strip() for i in range(signals)],
    }


def test_make_data_writes_a_bids_dataset_of_edf_recordings(generated, tmp_path):
    bids = generated / "bids"
    description = json.loads((bids / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw" and description["BIDSVersion"]
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    assert list(participants.participant_id) == list(SUBJECTS)
    assert (bids / ".bidsignore").read_text().split() == ["LOG/"]

    for subject in SUBJECTS:
        eeg = bids / subject / "ses-01" / "eeg"
        for task, seconds in (("RS", 40), ("MMN", 60)):
            stem = f"{subject}_ses-01_task-{task}"
            header = edf_header(eeg / f"{stem}_eeg.edf")
            assert header["version"] == b"0       "
            assert header["reserved"].startswith(b"EDF+")
            assert header["labels"][: len(CHANNELS)] == list(CHANNELS)
            assert header["records"] * header["record_seconds"] == pytest.approx(seconds, abs=1)
            sidecar = json.loads((eeg / f"{stem}_eeg.json").read_text())
            assert sidecar["SamplingFrequency"] == 256
            assert sidecar["PowerLineFrequency"] == 50
            assert sidecar["EEGReference"] == "linked mastoids"
            channels = pd.read_csv(eeg / f"{stem}_channels.tsv", sep="\t")
            assert list(channels.name) == list(CHANNELS)
            assert set(channels.type) == {"EEG"}
        events = pd.read_csv(eeg / f"{subject}_ses-01_task-MMN_events.tsv", sep="\t")
        counts = events.trial_type.value_counts()
        assert set(counts.index) == {"standard", "deviant"}
        assert 0.12 < counts["deviant"] / len(events) < 0.28, counts
        assert not (eeg / f"{subject}_ses-01_task-RS_events.tsv").exists()
    assert folder_size(bids) < 2_000_000

    # Seeded per subject: one subject written alone is the same bytes.
    alone = tmp_path / "alone"
    make_data("--subject", "02", "--dest", alone)
    assert [p.name for p in alone.iterdir() if p.name.startswith("sub-")] == ["sub-02"]
    for path in (alone / "sub-02").rglob("*"):
        if path.is_file():
            twin = bids / path.relative_to(alone)
            assert path.read_bytes() == twin.read_bytes(), path


def test_a_record_is_a_subject_whose_id_agrees_in_folder_and_file_name(tmp_path):
    from sinagot import Workspace

    ws = tmp_path / "eeg-bids"
    shutil.copytree(EXAMPLE / "scripts", ws / "scripts")
    shutil.copy(EXAMPLE / "workspace.toml", ws)
    names = [
        "sub-01/ses-01/eeg/sub-01_ses-01_task-RS_eeg.edf",
        "sub-01/ses-01/eeg/sub-01_ses-01_task-MMN_eeg.edf",
        "sub-01/ses-01/eeg/sub-01_ses-01_task-MMN_events.tsv",
        "sub-02/ses-01/eeg/sub-02_ses-01_task-RS_eeg.edf",
        "sub-03/ses-01/eeg/sub-04_ses-01_task-RS_eeg.edf",  # misfiled: the IDs disagree
        "sub-05/ses-02/eeg/sub-05_ses-02_task-RS_eeg.edf",  # another session
        "derivatives/ses-01/eeg/derivatives_ses-01_task-RS_eeg.edf",  # not a BIDS label
    ]
    for name in names:
        (ws / "bids" / name).parent.mkdir(parents=True, exist_ok=True)
        (ws / "bids" / name).write_bytes(b"")
    workspace = Workspace(ws, verbose=False)
    try:
        assert sorted(workspace.records.iter_ids()) == ["sub-01", "sub-02"]
        assert workspace.RS.EEG.steps.scripts_names() == ["preprocess", "psd"]
        assert workspace.MMN.EEG.steps.scripts_names() == ["preprocess", "erp"]
        step = workspace.records.get("sub-01").MMN.EEG.steps.get("preprocess")
        output = "derivatives/sinagot/sub-01/ses-01/eeg/sub-01_ses-01_task-MMN_desc-preproc_eeg.fif"
        assert f"output {output} is missing" in step.reasons()
    finally:
        workspace.close()


# -- processing -------------------------------------------------------------------------------


def assert_png(path: Path) -> None:
    """A real picture: PNG signature, a plausible size, and not one flat colour."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    assert 400 <= width <= 2000 and 200 <= height <= 1500, (path, width, height)
    assert 20_000 < len(data) < 400_000, (path, len(data))
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05, f"{path} is nearly blank"


def test_sinagot_run_writes_derivatives_and_figures_for_every_recording(processed):
    for subject in SUBJECTS:
        out = derivatives(processed, subject)
        for task in ("RS", "MMN"):
            fif = out / f"{subject}_ses-01_task-{task}_desc-preproc_eeg.fif"
            assert fif.stat().st_size > 50_000, fif
        assert (out / f"{subject}_ses-01_task-MMN_ave.fif").is_file()
        assert_png(out / f"{subject}_ses-01_task-RS_psd.png")
        assert_png(out / f"{subject}_ses-01_task-MMN_erp.png")
    assert folder_size(processed) < 5_000_000
    check = sinagot("status", processed, "--check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_alpha_power_is_highest_at_the_occipital_channels_at_rest(processed):
    for subject in SUBJECTS:
        path = derivatives(processed, subject) / f"{subject}_ses-01_task-RS_desc-alpha_power.tsv"
        alpha = pd.read_csv(path, sep="\t").set_index("channel")
        assert list(alpha.index) == list(CHANNELS)
        power = alpha.alpha_power_uv2
        assert min(power["O1"], power["O2"]) > max(power["Fz"], power["Cz"], power["Pz"]), power
        assert power["Pz"] > power["Fz"], power  # and it falls off towards the front
        assert alpha.peak_alpha_hz.between(8, 12).all(), alpha
        assert (alpha.relative_alpha > 0).all() and (alpha.relative_alpha < 1).all()


def test_erp_peaks_have_plausible_latencies(processed):
    for subject in SUBJECTS:
        path = derivatives(processed, subject) / f"{subject}_ses-01_task-MMN_desc-peaks_erp.tsv"
        peaks = pd.read_csv(path, sep="\t").set_index(["condition", "channel"])
        assert set(peaks.index.get_level_values(0)) == {"standard", "deviant", "mismatch"}
        n1 = peaks.loc[("standard", "Fz")]
        assert 70 <= n1.latency_ms <= 140 and n1.amplitude_uv < -1, n1
        mmn = peaks.loc[("mismatch", "Fz")]
        assert 120 <= mmn.latency_ms <= 230 and mmn.amplitude_uv < -2, mmn
        n_epochs = peaks.n_epochs.xs("Fz", level="channel")
        assert n_epochs["standard"] > 3 * n_epochs["deviant"] > 3 * 15, n_epochs


# -- the daemon -------------------------------------------------------------------------------


def wait_for_steps(daemon, pairs: set[tuple[str, str, str]], timeout: float) -> None:
    """Until every (record, task, step) of `pairs` has a step.finished event."""
    left = set(pairs)

    def one_of_them(event: dict[str, Any]) -> bool:
        if event.get("event") == "step.failed":
            return True
        return event.get("event") == "step.finished" and (
            (event["record_id"], event["task"], event["step"]) in left
        )

    deadline = time.monotonic() + timeout
    while left:
        event = daemon.wait_for(one_of_them, timeout=max(deadline - time.monotonic(), 0.1))
        assert event["event"] != "step.failed", event
        left.discard((event["record_id"], event["task"], event["step"]))


def record_log(ws: Path, record_id: str) -> list[dict[str, Any]]:
    lines = (ws / "bids" / "LOG" / f"{record_id}.log").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_sinagotd_processes_a_subject_copied_in_and_reruns_psd_alone_when_it_changes(
    processed, sinagotd, tmp_path
):
    ws = tmp_path / "eeg-bids"
    shutil.copytree(processed, ws)  # keeps the state store: nothing to redo
    daemon = sinagotd(ws, settle=1.0)  # the slow copy pauses for 0.03 s at a time
    ready = daemon.wait_for("daemon.ready", timeout=90)
    assert (ready["units"], ready["stale_units"]) == (8, 0)
    daemon.wait_for("daemon.idle")

    # A new subject, copied in over about 2 s, as an acquisition PC would.
    mark = daemon.mark()
    make_data("--subject", "05", "--dest", ws / "bids", "--slow", "2")
    new = {("sub-05", "RS", "preprocess"), ("sub-05", "RS", "psd")}
    new |= {("sub-05", "MMN", "preprocess"), ("sub-05", "MMN", "erp")}
    wait_for_steps(daemon, new, timeout=90)
    daemon.wait_for("daemon.idle")
    submitted = daemon.seen("step.submitted", since=mark)
    assert sorted((e["record_id"], e["task"], e["step"]) for e in submitted) == sorted(new)
    out = derivatives(ws, "sub-05")
    assert_png(out / "sub-05_ses-01_task-RS_psd.png")
    assert_png(out / "sub-05_ses-01_task-MMN_erp.png")
    messages = [line["message"] for line in record_log(ws, "sub-05")]
    assert any(m.startswith("5 channels, 60 s;") for m in messages), messages  # all of it
    participants = pd.read_csv(ws / "bids" / "participants.tsv", sep="\t")
    assert list(participants.participant_id) == [*SUBJECTS, "sub-05"]

    # A reviewed psd.py: psd runs again for every subject, and nothing else does.
    mark = daemon.mark()
    with (ws / "scripts" / "EEG" / "psd.py").open("a") as file:
        file.write("\n# alpha band reviewed on 2024-05-02\n")
    everyone = (*SUBJECTS, "sub-05")
    wait_for_steps(daemon, {(s, "RS", "psd") for s in everyone}, timeout=90)
    daemon.wait_for("daemon.idle")
    submitted = daemon.seen("step.submitted", since=mark)
    assert sorted((e["record_id"], e["step"]) for e in submitted) == [(s, "psd") for s in everyone]
    for event in submitted:
        assert "script EEG/psd.py changed since last run" in event["reasons"], event
    assert daemon.stop() == 0
