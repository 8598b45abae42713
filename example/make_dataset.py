"""Write a harbor-like workspace of N records, for benchmarks and soak tests.

    python example/make_dataset.py DEST N [--trivial]

DEST gets a workspace.toml, the scripts and dataset/raw/REC-XXXXXXXX-raw.csv for N records
(IDs REC-00000000, REC-00000001, ... match the harbor's id_pattern). With --trivial the two
steps are plain-Python stand-ins for count and mean (no pandas), so a benchmark measures
sinagot rather than the scripts.
"""

from __future__ import annotations

import argparse
import random
import shutil
from pathlib import Path

HARBOR = Path(__file__).resolve().parent / "harbor"
BOATS = ("Ma Préférée", "Dear Miss", "Sea Lark", "Joli Vent", "Zeevogel", "Morgenster")
COUNTRIES = ("FR", "UK", "NL", "ES")

TRIVIAL = """from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = ("raw", "{{id}}-raw.csv")
    PATH_OUT = ("computed", "{{id}}-{name}.csv")

    def run(self):
        with open(self.path.input) as fh:
            rows = fh.read().splitlines()[1:]
        with open(self.path.output, "w") as fh:
            fh.write("rows\\n%d\\n" % len(rows))
"""


def record_id(n: int) -> str:
    return f"REC-{n:08d}"


def raw_csv(rng: random.Random) -> str:
    rows = ["boat_name,country,size"] + [
        f"{rng.choice(BOATS)},{rng.choice(COUNTRIES)},{rng.uniform(6, 14):.1f}"
        for _ in range(rng.randint(3, 8))
    ]
    return "\n".join(rows) + "\n"


def make_workspace(dest: Path, n: int, *, trivial: bool = False, start: int = 0) -> Path:
    """Create (or extend) a harbor-like workspace at `dest` with records start..start+n-1."""
    dest.mkdir(parents=True, exist_ok=True)
    scripts = dest / "scripts"
    scripts.mkdir(exist_ok=True)
    shutil.copy(HARBOR / "workspace.toml", dest / "workspace.toml")
    for name in ("count", "mean"):
        if trivial:
            (scripts / f"{name}.py").write_text(TRIVIAL.format(name=name))
        else:
            shutil.copy(HARBOR / "scripts" / f"{name}.py", scripts / f"{name}.py")
    add_records(dest, range(start, start + n))
    return dest


def add_records(dest: Path, numbers: range | list[int], seed: int = 1) -> list[str]:
    raw = dest / "dataset" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    ids = []
    for n in numbers:
        ids.append(record_id(n))
        (raw / f"{record_id(n)}-raw.csv").write_text(raw_csv(rng))
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("n", type=int)
    parser.add_argument("--trivial", action="store_true", help="plain-Python steps, no pandas")
    args = parser.parse_args()
    make_workspace(args.dest, args.n, trivial=args.trivial)
    print(f"{args.dest}: {args.n} records")


if __name__ == "__main__":
    main()
