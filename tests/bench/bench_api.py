"""Benchmark: sinagot 0.3's object API on a large workspace (what a lab's notebook calls).

    python tests/bench/bench_api.py N [--sonetaa] [--workdir DIR]

Builds a harbor-like workspace of N records (`example/make_dataset.py`, trivial steps) and
runs every step once; or, with `--sonetaa`, N records shaped like sinagot 0.3's SoNeTAA
test data (tests/compat/data/sonetaa: 3 tasks, 4 modalities, 7 units a record, custom
models, the pandas plugin; nothing run). Then times in this process, each the best of 3
on a fresh `Workspace`:

- `Workspace(path)`; `records.count()`; `records.count_raw_data()` (a stat per record);
- `steps.status()`: every step of every record as a DataFrame (the engine's whole plan);
- the engine's plan of every unit alone (the floor `status()` builds on);
- one record: `status_dict()`, `steps.get("count").status()`, `logs()`.

Prints one line per figure; exit status 1 if an answer is wrong (counts, statuses).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import ROOT, load_make_dataset, machine

from sinagot import StepStatus, Workspace
from sinagot.layout import Scope

REPEAT = 3


def best(measure: Callable[[Workspace], object], dest: Path) -> tuple[float, object]:
    """Best wall time of REPEAT runs, each on a fresh workspace (built outside the timing)."""
    times, result = [], None
    for _ in range(REPEAT):
        with Workspace(dest, verbose=False) as ws:
            start = time.perf_counter()
            result = measure(ws)
            times.append(time.perf_counter() - start)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int)
    parser.add_argument("--sonetaa", action="store_true", help="0.3's SoNeTAA shape")
    parser.add_argument("--workdir", type=Path, help="build the workspace here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dest = args.workdir or Path(tmp) / "ws"
        if not (dest / "workspace.toml").exists():
            if args.sonetaa:
                make_sonetaa(dest, args.n)
            else:
                load_make_dataset().make_workspace(dest, args.n, trivial=True)
                with Workspace(dest, verbose=False) as ws:
                    ws.steps.run()
        return measure_sonetaa(dest, args.n) if args.sonetaa else measure(dest, args.n)


SONETAA = ROOT / "tests" / "compat" / "data" / "sonetaa"


def make_sonetaa(dest: Path, n: int) -> None:
    """The compat suite's SoNeTAA workspace, its dataset replaced by N records."""
    shutil.copytree(SONETAA, dest, ignore=shutil.ignore_patterns("dataset", "__pycache__"))
    data = dest / "dataset"
    for folder in ("MFF", "HDC", "PROCESSED"):
        (data / folder).mkdir(parents=True)
    for i in range(n):
        rid = f"REC-{200000 + i // 26:06d}-{chr(65 + i % 26)}"
        for task in ("RS", "MMN", "HDC"):
            (data / "MFF" / f"{rid}-{task}.mff").write_text("raw\n")
        if i % 2:
            (data / "HDC" / rid).mkdir()
            (data / "HDC" / rid / "Trial1_report.txt").write_text("bla\n")
        (data / "PROCESSED" / rid).mkdir()
        (data / "PROCESSED" / rid / "clinical.json").write_text('{"age": 7}')


def measure_sonetaa(dest: Path, n: int) -> int:
    ok = True
    rows: list[tuple[str, float, str]] = []

    def add(label: str, seconds: float, note: str = "") -> None:
        rows.append((label, seconds, note))

    seconds, count = best(lambda ws: ws.records.count(), dest)
    ok &= count == n
    add("records.count()", seconds, f"{count} records")
    seconds, frame = best(lambda ws: ws.records.count_raw_data(), dest)
    ok &= int(frame.loc[frame["modality"] == "behavior", "count"].sum()) == n // 2
    add("records.count_raw_data()", seconds, f"{len(frame)} units")
    seconds, frame = best(lambda ws: ws.steps.status(), dest)
    ok &= len(frame) == 6 * n  # RS: 2 steps, MMN: 1, HDC: 1 + behavior 2
    add("steps.status()", seconds, f"{len(frame)} rows")
    seconds, frame = best(lambda ws: ws.clinical.data, dest)
    ok &= len(frame) == n
    add("ws.clinical.data (pandas plugin)", seconds, f"{len(frame)} rows")
    with Workspace(dest, verbose=False) as ws:
        rid = ws.records.first().id
    seconds, status = best(lambda ws: ws.records.get(rid).status_dict(), dest)
    ok &= sorted(status) == ["HDC", "MMN", "RS"]
    add("one record: status_dict()", seconds)
    return report(f"sinagot 0.3 API, SoNeTAA shape, N = {n} records", rows, ok)


def measure(dest: Path, n: int) -> int:
    ok = True
    rows: list[tuple[str, float, str]] = []

    def add(label: str, seconds: float, note: str = "") -> None:
        rows.append((label, seconds, note))

    start = time.perf_counter()
    Workspace(dest, verbose=False).close()
    add("Workspace(path)", time.perf_counter() - start)

    seconds, count = best(lambda ws: ws.records.count(), dest)
    ok &= count == n
    add("records.count()", seconds, f"{count} records")

    seconds, frame = best(lambda ws: ws.records.count_raw_data(), dest)
    ok &= int(frame["count"].sum()) == n
    add("records.count_raw_data()", seconds, f"{int(frame['count'].sum())} with raw data")

    seconds, frame = best(lambda ws: ws.steps.status(), dest)
    ok &= len(frame) == 2 * n and set(frame["step_status"]) == {StepStatus.DONE}
    add("steps.status()", seconds, f"{len(frame)} rows")

    def plan_all(ws: Workspace) -> int:
        engine = ws._engine
        return len(engine.plan(engine.units(Scope())))

    seconds, plans = best(plan_all, dest)
    add("floor: the engine's plan of every unit", seconds, f"{plans} plans")

    with Workspace(dest, verbose=False) as ws:
        rid = ws.records.first().id
    seconds, status = best(lambda ws: ws.records.get(rid).status_dict(), dest)
    ok &= [s["step_status"] for s in status[None][None]] == [30, 30]
    add("one record: status_dict()", seconds)
    seconds, code = best(lambda ws: ws.records.get(rid).steps.get("count").status(), dest)
    ok &= code == StepStatus.DONE
    add("one record: steps.get('count').status()", seconds)
    seconds, logs = best(lambda ws: ws.records.get(rid).logs(), dest)
    add("one record: logs()", seconds, f"{len(logs)} lines")

    return report(f"sinagot 0.3 API, harbor shape, N = {n} records", rows, ok)


def report(title: str, rows: list[tuple[str, float, str]], ok: bool) -> int:
    print(f"{title} (best of {REPEAT}):")
    for label, seconds, note in rows:
        shown = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
        print(f"  {label:<42} {shown:>10}  {note}")
    print(f"  ({machine()})")
    if not ok:
        print("a check failed: wrong counts or statuses", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
