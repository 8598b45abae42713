"""Benchmark: how long sinagot takes to plan a whole workspace, against the floor and a peer.

    python tests/bench/bench_plan.py N [--workdir DIR] [--keep] [--profile]

It builds a harbor-like workspace of N records (`example/make_dataset.py`, trivial steps),
runs every step once so that the state store is full, then measures in this process, each
the best of 3 with `time.perf_counter`:

(a) a full plan with nothing stale: a fresh `Engine`, record discovery and
    `plan(units, stale_only=True)`;
(b) the same after touching one record's raw file (it must find exactly that record's two
    steps stale);
(c) planning that one unit alone (the `plan` call only, on a fresh `Engine`);
(d) the floor: a bare `os.stat` of every record's raw, count and mean files;

and the peak RSS of a separate process that only plans. Then, as whole processes (wall clock,
median of 3 run alternately, peak RSS from GNU `/usr/bin/time` when there is one), with the
same record touched:

(e) `snakemake -n` over an equivalent Snakefile (two rules, one job per record);
(f) `sinagot status --stale`.

(e)/(f) need snakemake: `pip install -e '.[bench]'`; without it the benchmark fails, unless
`--no-peer` says to skip them. Each runs once untimed first (its byte code compiled and
cached, as an installed tool's is), then REPEAT times each, alternately, and the medians
are compared.

`--workdir DIR` keeps the workspace and reuses it when it already holds N records (so repeated
runs at large N neither rebuild nor rerun); without it a temporary folder is used, removed at
the end unless `--keep`. `--profile` also prints a cProfile of one (a), top 15 by tottime.
The touched file gets its mtime back at the end. Exit status 1 when a check fails or a
target is missed (planning RSS < 400 MB; at N >= 10,000 (c) < 5 ms, (a)/(d) <= 3 and
(e)/(f) >= 40: below, fixed costs and noise dominate the times, and the smoke run of
tests/test_bench_smoke.py must not fail on them; every answer is checked at every N).
Subprocesses run without SINAGOT*_ and DASK_ variables: the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, TypeVar

from _common import clean_env, load_make_dataset, machine

from sinagot.engine import Engine
from sinagot.layout import Scope, Unit

ROOT = Path(__file__).resolve().parents[2]
REPEAT = 3
PEER_TARGET = 40  # (e)/(f): snakemake's dry run against `sinagot status --stale`
T = TypeVar("T")

SNAKEFILE = """\
# Equivalent of the trivial harbor workspace, for `snakemake -n` (bench_plan.py).
wildcard_constraints:
    id="REC-[0-9]{8}",

IDS, = glob_wildcards("raw/{id}-raw.csv")

rule all:
    input:
        expand("computed/{id}-count.csv", id=IDS),
        expand("computed/{id}-mean.csv", id=IDS),

rule count:
    input: "raw/{id}-raw.csv"
    output: "computed/{id}-count.csv"
    shell: "wc -l {input} > {output}"

rule mean:
    input: "raw/{id}-raw.csv"
    output: "computed/{id}-mean.csv"
    shell: "wc -l {input} > {output}"
"""

# Run in a child process: plans only, and prints its peak RSS (KiB) after imports, after a
# stale-only plan and after planning every step (as `sinagot status` does). VmHWM, not
# ru_maxrss: a child's ru_maxrss starts at its parent's peak (Linux keeps it across exec).
RSS_PROBE = """\
import sys
from sinagot.engine import Engine
from sinagot.layout import Scope
def peak():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
base = peak()
with Engine(sys.argv[1], verbose=False) as ws:
    stale = len(ws.plan(ws.units(Scope()), stale_only=True))
    stale_peak = peak()
    every = len(ws.plan(ws.units(Scope())))
print(base, stale_peak, peak(), stale, every)
"""


GNU_TIME = "/usr/bin/time"


class Proc(NamedTuple):
    seconds: float
    max_rss_kib: int | None
    returncode: int
    stdout: str


# -- the dataset --------------------------------------------------------------------------


def raw_folder(dest: Path) -> Path:
    return dest / "dataset" / "raw"


def prepare(dest: Path, n: int, make_dataset: ModuleType) -> None:
    """Build the workspace at `dest` unless it already holds exactly N records."""
    raw = raw_folder(dest)
    have = len(os.listdir(raw)) if raw.is_dir() else 0
    if have == n and (dest / "workspace.toml").exists():
        print(f"reusing {dest} ({n} records)")
        return
    if have:
        sys.exit(f"{dest} holds {have} records, not {n}: pick another --workdir")
    start = time.perf_counter()
    make_dataset.make_workspace(dest, n, trivial=True)
    print(f"built {dest} ({n} records) in {time.perf_counter() - start:.1f} s")


def run_all(dest: Path) -> None:
    """Run every stale step, in this process, so that the state store is full."""
    with Engine(dest, verbose=False) as ws:
        plans = ws.plan(ws.units(Scope()), stale_only=True)
        if not plans:
            print("every step already done: nothing to run")
            return
        start = time.perf_counter()
        results = ws.execute(plans)
        took = time.perf_counter() - start
    failed = sum(not r.ok for r in results)
    print(
        f"ran {len(results)} step(s) in {took:.1f} s ({1000 * took / len(results):.2f} ms"
        f" a step), {failed} failed"
    )
    if failed:
        sys.exit("some steps failed: the benchmark would measure nothing useful")


@contextlib.contextmanager
def touched(path: Path) -> Iterator[None]:
    """Make `path` newer than everything (both tools then see it changed); restore it after."""
    before = path.stat()
    now = time.time_ns()
    os.utime(path, ns=(now, now))
    try:
        yield
    finally:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


# -- in-process measurements --------------------------------------------------------------


def best_of(measure: Callable[[], tuple[float, T]]) -> tuple[float, T]:
    """The fastest of REPEAT runs of `measure`, which returns (seconds, result)."""
    runs = [measure() for _ in range(REPEAT)]
    return min(runs, key=lambda run: run[0])


def full_plan(dest: Path) -> tuple[float, list]:
    """(a), (b): a fresh Engine, discovery and a stale-only plan, all timed."""
    start = time.perf_counter()
    with Engine(dest, verbose=False) as ws:
        plans = ws.plan(ws.units(Scope()), stale_only=True)
        took = time.perf_counter() - start
    return took, plans


def one_unit_plan(dest: Path, record_id: str) -> tuple[float, list]:
    """(c): only the plan call, on a fresh Workspace."""
    with Engine(dest, verbose=False) as ws:
        start = time.perf_counter()
        plans = ws.plan([Unit(record_id)], stale_only=True)
        took = time.perf_counter() - start
    return took, plans


def stat_paths(dest: Path, ids: list[str]) -> list[str]:
    dataset = str(dest / "dataset")
    return [
        f"{dataset}/{folder}/{rid}-{suffix}.csv"
        for rid in ids
        for folder, suffix in (("raw", "raw"), ("computed", "count"), ("computed", "mean"))
    ]


def stat_floor(paths: list[str]) -> tuple[float, int]:
    """(d): one os.stat a path, nothing else."""
    stat = os.stat
    start = time.perf_counter()
    for path in paths:
        stat(path)
    return time.perf_counter() - start, len(paths)


def planning_rss(dest: Path) -> tuple[float, float, float]:
    """Peak RSS (MB) of a process that only plans: after imports, stale-only, every step."""
    out = subprocess.run(
        [sys.executable, "-c", RSS_PROBE, str(dest)],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    ).stdout.split()
    base, stale, every = (int(kib) / 1024 for kib in out[:3])
    return base, stale, every


def profile_full_plan(dest: Path) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    full_plan(dest)
    profiler.disable()
    print("\ncProfile of one (a), top 15 by tottime:")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)


# -- whole processes: the peer ------------------------------------------------------------


def run_process(cmd: list[str], cwd: Path) -> Proc:
    """Run `cmd` to its end: wall clock, peak RSS (GNU time, else None), exit code, stdout.

    Not os.wait4's ru_maxrss: Linux carries the parent's peak into its child across exec,
    so it would report this benchmark's own size.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.NamedTemporaryFile("r") as rss:
        timed = [GNU_TIME, "-f", "%M", "-o", rss.name, *cmd] if has_gnu_time() else cmd
        start = time.perf_counter()
        returncode = subprocess.run(
            timed, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=clean_env()
        ).returncode
        took = time.perf_counter() - start
        out.seek(0)
        peak = rss.read().split()
        return Proc(took, int(peak[-1]) if peak else None, returncode, out.read())


def has_gnu_time() -> bool:
    return os.access(GNU_TIME, os.X_OK)


def median_process(runs: list[Proc]) -> Proc:
    """The median run by time; the RSS reported is the largest seen."""
    middle = sorted(runs, key=lambda run: run.seconds)[len(runs) // 2]
    peaks = [run.max_rss_kib for run in runs if run.max_rss_kib is not None]
    return middle._replace(max_rss_kib=max(peaks) if peaks else None)


def tool(name: str) -> list[str]:
    """The console script beside this interpreter, or `python -m name`."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", name]


def side_by_side(dest: Path) -> tuple[Proc, Proc]:
    """(e) and (f), REPEAT runs each in alternating order (a machine's mood is shared by
    both); the median run of each."""
    (dest / "Snakefile").write_text(SNAKEFILE)
    snakefile = str(dest / "Snakefile")
    snake_cmd = [*tool("snakemake"), "-n", "--cores", "1", "--quiet", "rules", "-s", snakefile]
    ours_cmd = [*tool("sinagot"), "status", "--stale", str(dest)]
    for cmd, cwd in ((snake_cmd, dest / "dataset"), (ours_cmd, dest)):
        run_process(cmd, cwd)  # untimed: each tool's byte code compiled and cached, as installed
    snakes, ours = [], []
    for round_ in range(REPEAT):
        pair = [(snakes, snake_cmd, dest / "dataset"), (ours, ours_cmd, dest)]
        for runs, cmd, cwd in pair if round_ % 2 == 0 else reversed(pair):
            runs.append(run_process(cmd, cwd))
    return median_process(snakes), median_process(ours)


def snakemake_jobs(stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count."""
    jobs: dict[str, int] = {}
    lines = iter(stdout.splitlines())
    for line in lines:
        if line.startswith("Job stats"):
            break
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            jobs[fields[0]] = int(fields[1])
        elif jobs and not fields:
            break
    return jobs


# -- the report ---------------------------------------------------------------------------


class Report:
    def __init__(self, n: int) -> None:
        self.n = n
        self.lines = [f"N = {n}"]
        self.problems: list[str] = []

    def add(self, label: str, value: str) -> None:
        self.lines.append(f"{label:<34}{value}")

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)
            print(f"CHECK FAILED: {problem}")

    def print(self) -> None:
        print("\n" + "\n".join(self.lines))
        print(f"machine: {machine()}")
        print(f"all times: (a)-(d) best of {REPEAT} in process; (e)/(f) whole processes, "
              f"the median of {REPEAT} each, run alternately")  # fmt: skip
        for problem in self.problems:
            print(f"PROBLEM: {problem}")


def measure_in_process(dest: Path, n: int, make_dataset: ModuleType, report: Report) -> str:
    """(a)-(d) and the planning RSS; returns the touched raw file's record ID."""
    ids = [make_dataset.record_id(i) for i in range(n)]
    secs_a, plans = best_of(lambda: full_plan(dest))
    report.check(not plans, f"(a) found {len(plans)} stale step(s), expected none")
    report.add("(a) full plan, nothing stale", f"{secs_a:.3f} s")

    base, stale, every = planning_rss(dest)
    target = ids[n // 2]
    with touched(raw_folder(dest) / f"{target}-raw.csv"):
        secs, plans = best_of(lambda: full_plan(dest))
        found = sorted((p.unit.record_id, p.step.name) for p in plans)
        expected = [(target, "count"), (target, "mean")]
        report.check(found == expected, f"(b) found {found[:4]}..., expected {expected}")
        report.add("(b) full plan, one input touched", f"{secs:.3f} s")
        secs_c, plans = best_of(lambda: one_unit_plan(dest, target))
        report.check(len(plans) == 2, f"(c) found {len(plans)} stale step(s), expected 2")
    report.add("(c) one unit", f"{1000 * secs_c:.2f} ms    (target < 5 ms at N >= 10000)")
    secs_d, count = best_of(lambda: stat_floor(stat_paths(dest, ids)))
    report.add("(d) floor: os.stat loop", f"{secs_d:.3f} s ({count} paths)")
    report.add("(a)/(d)", f"{secs_a / secs_d:.1f}    (target <= 3 at N >= 10000)")
    if n >= 10_000:  # below, fixed costs (a fresh Engine) dwarf the stats
        report.check(secs_a / secs_d <= 3, f"(a)/(d) = {secs_a / secs_d:.1f}, target <= 3")
    if n >= 10_000:  # a fresh Engine's first plan: milliseconds of noise on a busy machine
        report.check(secs_c < 0.005, f"(c) {1000 * secs_c:.2f} ms, target < 5 ms")
    report.add(
        "planning peak RSS",
        f"{every:.0f} MB (target < 400 MB); stale only {stale:.0f} MB, after imports {base:.0f} MB",
    )
    report.check(every < 400, f"planning peak RSS {every:.0f} MB, target < 400 MB")
    return target


def measure_peer(dest: Path, target: str, report: Report) -> None:
    """(e) and (f), with the same raw file touched for both."""
    if importlib.util.find_spec("snakemake") is None:
        report.check(False, "(e)/(f) not measured: snakemake is not installed "
                     "(pip install -e '.[bench]'; or --no-peer)")  # fmt: skip
        return
    with touched(raw_folder(dest) / f"{target}-raw.csv"):
        snake, ours = side_by_side(dest)
    jobs = snakemake_jobs(snake.stdout)
    report.check(snake.returncode == 0, f"(e) snakemake exited {snake.returncode}")
    report.check(
        jobs.get("count") == 1 and jobs.get("mean") == 1,
        f"(e) snakemake would run {jobs or snake.stdout[-500:]}, expected count 1, mean 1",
    )
    report.check(ours.returncode == 0, f"(f) sinagot exited {ours.returncode}")
    counts = [line for line in ours.stdout.splitlines() if " step(s)" in line]
    report.check(any(line.startswith("2 step(s)") for line in counts), f"(f) sinagot said {counts}")
    report.add("(e) snakemake -n", f"{snake.seconds:.2f} s, peak RSS {mb(snake)}")
    report.add("(f) sinagot status --stale", f"{ours.seconds:.2f} s, peak RSS {mb(ours)}")
    ratio = snake.seconds / ours.seconds
    report.add("(e)/(f)", f"{ratio:.0f}    (target >= {PEER_TARGET} at N >= 10000)")
    if report.n >= 10_000:
        report.check(ratio >= PEER_TARGET, f"(e)/(f) = {ratio:.0f}, target >= {PEER_TARGET}")


def mb(proc: Proc) -> str:
    if proc.max_rss_kib is None:
        return f"n/a (no {GNU_TIME})"
    return f"{proc.max_rss_kib / 1024:.0f} MB"


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="number of records")
    parser.add_argument("--workdir", type=Path, help="build (or reuse) the workspace here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    parser.add_argument("--profile", action="store_true", help="cProfile one (a) as well")
    parser.add_argument("--no-peer", action="store_true", help="skip (e)/(f) (no snakemake)")
    args = parser.parse_args()

    make_dataset = load_make_dataset()
    temporary = args.workdir is None
    dest = Path(tempfile.mkdtemp(prefix="bench-plan-")) if temporary else args.workdir.resolve()
    report = Report(args.n)
    try:
        prepare(dest, args.n, make_dataset)
        run_all(dest)
        target = measure_in_process(dest, args.n, make_dataset, report)
        if not args.no_peer:
            measure_peer(dest, target, report)
        report.print()
        if args.profile:
            profile_full_plan(dest)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(dest, ignore_errors=True)
        elif temporary:
            print(f"kept {dest}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
