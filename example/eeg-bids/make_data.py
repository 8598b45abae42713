"""Write the example's BIDS dataset: synthetic but realistic EEG, as EDF files with sidecars.

    python example/eeg-bids/make_data.py                # sub-01 .. sub-04 into eeg-bids/bids
    python example/eeg-bids/make_data.py --dest DIR     # somewhere else
    python example/eeg-bids/make_data.py --subject 05 --slow 20
        # one more subject, its files copied in over 20 s, as an acquisition PC would

Each subject has one session (ses-01) with two recordings: resting state (task RS, 40 s)
and an auditory oddball (task MMN, 60 s). Five EEG channels (Fz, Cz, Pz, O1, O2) at 256 Hz
hold 1/f background noise, a slow drift, a 50 Hz line artefact, an alpha rhythm (about
10 Hz) strongest at the occipital channels (and weak in MMN, eyes open), and, in MMN, an
auditory evoked response to every tone with an extra frontal negativity ~170 ms after the
deviant tones: the mismatch negativity. Tone onsets are EDF+ annotations and the BIDS
`*_events.tsv`.

The EDF files are written by MNE's own writer (`mne.export.export_raw`, which uses
`edfio`), as an amplifier's software would, then laid out as BIDS by `mne_bids` (sidecars
`*_eeg.json`, `*_channels.tsv`, `*_events.tsv`, `*_scans.tsv`, `participants.tsv`,
`dataset_description.json`). Everything is seeded per subject: the same subject is the
same bytes, whether written alone or with the others.

Needs the `eeg` extra: pip install -e '.[eeg]'.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import mne
import numpy as np
import pandas as pd
from mne_bids import BIDSPath, make_dataset_description, update_sidecar_json, write_raw_bids

HERE = Path(__file__).resolve().parent
SUBJECTS = ("01", "02", "03", "04")
SESSION = "01"
SEED = 2024
SFREQ = 256.0
CHANNELS = ("Fz", "Cz", "Pz", "O1", "O2")
DURATION = {"RS": 40.0, "MMN": 60.0}  # seconds
EVENT_ID = {"standard": 1, "deviant": 2}
LINE_FREQ = 50.0

# How strongly each source shows at each channel (a crude forward model).
ALPHA_GAIN = np.array([0.15, 0.3, 0.6, 1.0, 0.95])  # occipital alpha
ERP_GAIN = np.array([1.0, 0.85, 0.45, 0.15, 0.15])  # fronto-central auditory responses
ALPHA_UV = {"RS": 14.0, "MMN": 4.0}  # eyes closed at rest; eyes open during the oddball
NOISE_UV = 6.0
LINE_UV = 4.0
DRIFT_UV = 15.0

README = """\
Sinagot EEG example (synthetic data)
====================================

Synthetic EEG written by example/eeg-bids/make_data.py for Sinagot's example: one session
per subject, tasks RS (resting state, eyes closed) and MMN (auditory oddball, 20 % deviant
tones), channels Fz, Cz, Pz, O1, O2 referenced to linked mastoids. No human data.

LOG/ holds Sinagot's per-record logs and .sinagot/ its state: both are listed in
.bidsignore. derivatives/sinagot/ holds what Sinagot's steps compute.
"""


def _gauss(t: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - centre) / width) ** 2)


def _pink(rng: np.random.Generator, n_channels: int, n: int) -> np.ndarray:
    """1/f noise, one row per channel, unit standard deviation."""
    spectrum = np.fft.rfft(rng.standard_normal((n_channels, n)), axis=1)
    freqs = np.fft.rfftfreq(n, 1 / SFREQ)
    spectrum /= np.sqrt(np.maximum(freqs, 1.0))
    noise = np.fft.irfft(spectrum, n, axis=1)
    return noise / noise.std(axis=1, keepdims=True)


def _tones(rng: np.random.Generator, duration: float) -> list[tuple[float, str]]:
    """An oddball sequence: a tone every 0.45-0.55 s, 20 % deviants, never two in a row."""
    tones, onset, since_deviant = [], 1.0, 3
    while onset < duration - 1.0:
        deviant = since_deviant >= 2 and rng.random() < 0.3
        tones.append((round(onset, 4), "deviant" if deviant else "standard"))
        since_deviant = 0 if deviant else since_deviant + 1
        onset += 0.45 + rng.uniform(0.0, 0.1)
    return tones


def _subject(subject: str) -> dict:
    """What stays the same across a subject's recordings: demographics, alpha, MMN size."""
    rng = np.random.default_rng([SEED, int(subject), 99])
    age = int(rng.integers(20, 45))
    return {
        "info": {
            "his_id": f"sub-{subject}",
            "sex": int(rng.integers(1, 3)),  # 1 male, 2 female
            "hand": 1,  # right-handed
            "birthday": date(2024 - age, 1 + int(subject) % 12, 15),
        },
        "alpha_freq": round(float(rng.uniform(8.8, 11.2)), 2),  # Hz
        "mmn_uv": float(rng.uniform(4.0, 6.0)),
    }


def simulate(subject: str, task: str) -> mne.io.RawArray:
    """One recording of `subject` for `task`, in volts, with its events as annotations."""
    traits = _subject(subject)
    rng = np.random.default_rng([SEED, int(subject), list(DURATION).index(task)])
    n = int(DURATION[task] * SFREQ)
    t = np.arange(n) / SFREQ
    n_ch = len(CHANNELS)

    # Background: 1/f noise, partly shared between channels (volume conduction).
    data = NOISE_UV * (0.8 * _pink(rng, n_ch, n) + 0.45 * _pink(rng, 1, n))
    # Alpha: ~10 Hz (each subject's own frequency), waxing and waning.
    alpha_freq = traits["alpha_freq"]
    envelope = 1.0 + 0.5 * np.sin(2 * np.pi * 0.13 * t + rng.uniform(0, 2 * np.pi))
    jitter = np.cumsum(rng.normal(0.0, 0.15, n))  # phase diffusion: a peak ~1 Hz wide
    alpha = ALPHA_UV[task] * envelope * np.sin(2 * np.pi * alpha_freq * t + jitter)
    data += ALPHA_GAIN[:, None] * alpha
    # Slow drift (sweat, electrode settling) and mains interference.
    data += DRIFT_UV * np.sin(2 * np.pi * 0.05 * t + rng.uniform(0, 2 * np.pi, (n_ch, 1)))
    phases = rng.uniform(0, 0.3, (n_ch, 1))
    data += LINE_UV * np.sin(2 * np.pi * LINE_FREQ * t + phases)

    tones = _tones(rng, DURATION[task]) if task == "MMN" else []
    if tones:
        # Every tone: N1 (~100 ms) and P2; a deviant adds the MMN (~170 ms) and a P3a.
        window = np.arange(int(0.6 * SFREQ)) / SFREQ
        standard = -4.0 * _gauss(window, 0.10, 0.02) + 3.0 * _gauss(window, 0.18, 0.03)
        mismatch = -traits["mmn_uv"] * _gauss(window, 0.17, 0.035)
        mismatch += 3.0 * _gauss(window, 0.30, 0.04)
        for onset, kind in tones:
            response = standard + (mismatch if kind == "deviant" else 0.0)
            start = round(onset * SFREQ)
            stop = min(start + len(window), n)
            gain = 1.0 + 0.2 * rng.standard_normal()
            data[:, start:stop] += gain * ERP_GAIN[:, None] * response[: stop - start]

    info = mne.create_info(list(CHANNELS), SFREQ, "eeg")
    info["line_freq"] = LINE_FREQ
    start_of_task = datetime(2024, 3, int(subject) % 28 + 1, 9, 30, tzinfo=UTC)
    if task == "MMN":
        start_of_task += timedelta(minutes=10)
    raw = mne.io.RawArray(data * 1e-6, info, verbose="error")
    raw.set_meas_date(start_of_task)
    onsets, kinds = [onset for onset, _ in tones], [kind for _, kind in tones]
    raw.set_annotations(mne.Annotations(onsets, 0.1, kinds, orig_time=start_of_task))
    return raw


def write_subject(root: Path, subject: str) -> None:
    """Both recordings of `subject`, as BIDS, into `root` (a BIDS dataset folder)."""
    with tempfile.TemporaryDirectory() as scratch:
        for task in DURATION:
            # What the amplifier's software writes: an EDF+ file with its annotations.
            edf = Path(scratch) / f"{subject}_{task}.edf"
            mne.export.export_raw(edf, simulate(subject, task), overwrite=True, verbose="error")
            raw = mne.io.read_raw_edf(edf, verbose="error")
            raw.info["line_freq"] = LINE_FREQ
            raw.info["subject_info"] = _subject(subject)["info"]
            # ... and the BIDS conversion: copied in place, sidecars written beside it.
            path = BIDSPath(subject=subject, session=SESSION, task=task, datatype="eeg", root=root)
            events = {} if task == "RS" else EVENT_ID
            write_raw_bids(raw, path, event_id=events or None, overwrite=True, verbose="error")
            sidecar = path.copy().update(suffix="eeg", extension=".json")
            update_sidecar_json(
                sidecar,
                {
                    "EEGReference": "linked mastoids",
                    "EEGGround": "AFz",
                    "CapManufacturer": "n/a (synthetic)",
                    "TaskDescription": {
                        "RS": "Resting state, eyes closed.",
                        "MMN": "Passive auditory oddball: 1000 Hz standard tones, "
                        "1200 Hz deviant tones (20 %), while watching a silent film.",
                    }[task],
                },
                verbose="error",
            )


def _root_files(root: Path) -> None:
    """The dataset-level files: description, README, .bidsignore, participants.json."""
    make_dataset_description(
        path=root,
        name="Sinagot EEG example (synthetic)",
        dataset_type="raw",
        authors=["Sinagot contributors"],
        data_license="CC0",
        overwrite=True,
        verbose="error",
    )
    (root / "README").write_text(README)
    (root / ".bidsignore").write_text("LOG/\n")
    derivatives = root / "derivatives" / "sinagot"
    derivatives.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": "Sinagot EEG example: preprocessing, PSD and ERP per recording",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "sinagot", "Description": "example/eeg-bids/scripts"}],
    }
    (derivatives / "dataset_description.json").write_text(json.dumps(description, indent=2))


def _copy(source: Path, target: Path, pause: float, chunks: int) -> None:
    """Copy one file in `chunks` pieces, `pause` seconds apart (as a slow network copy)."""
    data = source.read_bytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // chunks) or 1
    with target.open("wb") as out:
        for i in range(0, len(data), size):
            out.write(data[i : i + size])
            out.flush()
            if pause and i + size < len(data):
                time.sleep(pause)


def _merge_participants(source: Path, dest: Path) -> None:
    new = pd.read_csv(source / "participants.tsv", sep="\t", dtype=str)
    target = dest / "participants.tsv"
    if target.exists():
        old = pd.read_csv(target, sep="\t", dtype=str)
        new = pd.concat([old[~old.participant_id.isin(new.participant_id)], new])
    new = new.sort_values("participant_id")
    new.to_csv(target, sep="\t", index=False, na_rep="n/a")
    shutil.copyfile(source / "participants.json", dest / "participants.json")


def make(dest: Path, subjects: tuple[str, ...] = SUBJECTS, slow: float = 0.0) -> None:
    """Write `subjects` into the BIDS dataset at `dest` (made if missing).

    The subjects are written in a scratch folder first, then copied into `dest`: with
    `slow`, each subject's files arrive over about that many seconds, data files in
    pieces, sidecars first, as an acquisition PC's copy would.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        staging = Path(scratch) / "bids"
        for subject in subjects:
            write_subject(staging, subject)
        _root_files(staging)
        for name in ("dataset_description.json", "README", ".bidsignore"):
            if not (dest / name).exists():
                shutil.copyfile(staging / name, dest / name)
        described = dest / "derivatives" / "sinagot" / "dataset_description.json"
        if not described.exists():
            described.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staging / described.relative_to(dest), described)
        for subject in subjects:
            files = sorted(
                (p for p in (staging / f"sub-{subject}").rglob("*") if p.is_file()),
                key=lambda p: (p.suffix == ".edf", str(p)),  # the recordings last
            )
            chunks = 8 if slow else 1
            pause = slow / (len(files) * chunks) if slow else 0.0
            for path in files:
                _copy(path, dest / path.relative_to(staging), pause, chunks)
        _merge_participants(staging, dest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest", type=Path, default=HERE / "bids", help="BIDS folder (default: %(default)s)"
    )
    parser.add_argument(
        "--subject",
        action="append",
        metavar="NN",
        help="write this subject only (repeat for more); default: " + ", ".join(SUBJECTS),
    )
    parser.add_argument(
        "--slow",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="copy each subject's files in over about this long, in pieces",
    )
    args = parser.parse_args(argv)
    subjects = tuple(s.removeprefix("sub-") for s in args.subject or SUBJECTS)
    for subject in subjects:
        if not subject.isdigit():
            parser.error(f"--subject {subject!r}: give a number, such as 05")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mne-bids' notes on a synthetic dataset's metadata
        make(args.dest, subjects, args.slow)
    print(f"wrote {', '.join('sub-' + s for s in subjects)} into {args.dest}")


if __name__ == "__main__":
    sys.exit(main())
