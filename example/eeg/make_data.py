"""Write the tiny synthetic EEG dataset bundled in example/eeg/dataset (already committed).

python example/eeg/make_data.py [DATASET]   # regenerate it, deterministic
"""

import json
import math
import random
import sys
from pathlib import Path

RECORDS = ("REC-200331-A", "REC-200331-B", "REC-200401-A")
TASKS = ("RS", "MMN", "HDC")
CHANNELS = ("Fz", "Cz", "Pz")
RATE = 64  # Hz; two seconds per recording keeps the files small


def eeg(rng: random.Random, alpha: float) -> str:
    lines = ["time," + ",".join(CHANNELS)]
    for i in range(2 * RATE):
        t = i / RATE
        values = [alpha * math.sin(2 * math.pi * 10 * t + k) + rng.gauss(0, 1) for k in range(3)]
        lines.append(f"{t:.4f}," + ",".join(f"{v:.3f}" for v in values))
    return "\n".join(lines) + "\n"


def main(dataset: Path) -> None:
    rng = random.Random(2020)
    for n, record in enumerate(RECORDS):
        folder = dataset / record
        folder.mkdir(parents=True, exist_ok=True)
        clinical = {"age": 24 + 7 * n, "group": "control" if n % 2 else "patient"}
        (folder / "clinical.json").write_text(json.dumps(clinical, indent=2) + "\n")
        for task in TASKS:
            (folder / task / "EEG").mkdir(parents=True, exist_ok=True)
            (folder / task / "EEG" / "raw.csv").write_text(eeg(rng, 3.0 + n))
        events = ["time,kind"] + [
            f"{0.2 * i:.1f},{'deviant' if i % 4 == 3 else 'standard'}" for i in range(8)
        ]
        (folder / "MMN" / "EEG" / "events.csv").write_text("\n".join(events) + "\n")
        (folder / "HDC" / "behavior").mkdir(parents=True, exist_ok=True)
        trials = ["trial,phase_error,success"] + [
            f"{i},{rng.uniform(-0.5, 0.5):.3f},{int(rng.random() < 0.7)}" for i in range(10)
        ]
        (folder / "HDC" / "behavior" / "trials.csv").write_text("\n".join(trials) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "dataset")
