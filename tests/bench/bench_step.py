"""Benchmark: what one trivial step costs a worker, outside the script's own work.

    python tests/bench/bench_step.py [N] [--repeat R] [--profile] [--no-strace]

It builds a harbor-like workspace of N records (default 500; `example/make_dataset.py`,
trivial plain-Python steps: read a small csv, write one number), plans it with an `Engine`
and runs each planned step with `sinagot.runner.run_step`, in this process, with a receipt
and a run name as on a Dask worker (what a worker task does, without Dask). Each repeat
(default 5) gets fresh run names; the receipts are dropped between repeats, as the
submitter drops them. Figures, each per step, the first two (and the last) not swayed
by the machine's load:

- syscalls: `strace -f` of a child run of this script, the calls made while it runs its
  steps once more, warm (skipped without strace, or with `--no-strace`);
- Python calls: cProfile's count of function calls over one repeat;
- CPU: `time.process_time` of a repeat, median over the repeats, beside the same for the
  raw work (the two steps' reads and writes, done directly) and the difference, Sinagot's
  own cost; then the same split into user and system time (`getrusage`): creating a file
  costs the kernel more when other processes write to the same file system, so the user
  time is the steadiest of these on a busy machine;
- with `--instructions` (slow: about a minute), the user-space instructions a step takes,
  counted by `valgrind --tool=callgrind` in two child runs at 20 records (1 and 3 runs of
  the steps, once warm), their difference divided by the extra steps: what no load sways.
  The removal of each repeat's outputs and receipts between runs is counted in (about a
  sixth of the raw work's figure, printed beside it for reference).

`--profile` also prints cProfile's top 15 by own time. Exit status 1 when a step did not
succeed or an output is missing. Run with `PYTHONPATH=<another checkout>` to compare builds.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import glob
import os
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import load_make_dataset, machine

from sinagot.engine import Engine
from sinagot.layout import Scope
from sinagot.runner import StepJob, run_step


def jobs_of(dest: Path) -> tuple[list[StepJob], str]:
    """The planned steps' jobs (as `Engine.execute` builds them) and the receipts folder."""
    with Engine(dest, verbose=False) as ws:
        plans = ws.plan(ws.units(Scope()), stale_only=True)
        jobs = [ws.job(plan) for plan in plans if plan.run]
        return jobs, str(ws.receipts)


def named(jobs: list[StepJob], repeat: int) -> list[StepJob]:
    """The jobs with run names of this repeat (a receipt each, as on a worker)."""
    return [dataclasses.replace(job, run_id=f"{job.key}-{repeat:08x}") for job in jobs]


def run_all(jobs: list[StepJob]) -> list[str]:
    """Run every job once; the steps that did not succeed."""
    failed = []
    for job in jobs:
        result = run_step(job)
        if not result.ok:
            failed.append(f"{job.key}: {result.outcome} {result.error}")
    return failed


def raw_all(jobs: list[StepJob]) -> None:
    """The steps' own work, done directly: read the csv, write the count."""
    for job in jobs:
        with open(os.path.join(job.dataset, job.inputs[0])) as fh:
            rows = len(fh.read().splitlines()) - 1
        with open(os.path.join(job.dataset, job.outputs[0]), "w") as fh:
            fh.write(f"rows\n{rows}\n")


def drop_receipts(folder: str) -> None:
    for path in glob.glob(os.path.join(folder, "*.json")):
        os.unlink(path)


def fresh(jobs: list[StepJob], receipts: str) -> None:
    """Receipts dropped (as the submitter drops them) and outputs removed: each repeat
    writes new outputs, as a first run does (renaming over an old output makes ext4 flush
    the new one's data, a cost of the file system that would swamp the rest)."""
    drop_receipts(receipts)
    for job in jobs:
        for rel in job.outputs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(job.dataset, rel))


def cpu(action) -> tuple[float, float, float]:
    """CPU seconds `action` took: in all (`time.process_time`), in this process's own code
    (user) and in the kernel for it (system: file creation there swings with what the
    rest of the machine does to the same file system)."""
    start, usage = time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
    action()
    end = resource.getrusage(resource.RUSAGE_SELF)
    return (
        time.process_time() - start,
        end.ru_utime - usage.ru_utime,
        end.ru_stime - usage.ru_stime,
    )


INSTRUCTIONS_N = 20  # records of the valgrind runs
MARK = b"bench-step: steps start\n"
END = b"bench-step: steps end\n"


def syscalls(n: int) -> dict[str, int]:
    """The system calls a child run of this script made between its marks (strace -f),
    by name: its steps run once more, once warm."""
    with tempfile.TemporaryDirectory(prefix="bench-step-strace-") as tmp:
        out = os.path.join(tmp, "strace.txt")
        args = [sys.executable, __file__, str(n), "--child", "1"]
        subprocess.run(["strace", "-f", "-o", out, *args], check=True, stdout=subprocess.DEVNULL)
        text = Path(out).read_text()
    inside = text.split(repr(MARK)[2:-1], 1)[1].split(repr(END)[2:-1], 1)[0]
    counts: dict[str, int] = {}
    for line in inside.splitlines()[1:-1]:  # the marks' own write calls are left out
        match = re.match(r"(?:\d+ +)?([a-z0-9_]+)\(", line)
        if match and "resumed>" not in line:
            counts[match[1]] = counts.get(match[1], 0) + 1
    return counts


def instructions(n: int, steps: int, raw: bool) -> float:
    """User-space instructions a step takes (valgrind's count), or the raw work does."""
    counts = []
    for runs in (1, 3):
        args = [sys.executable, __file__, str(n), "--child", str(runs), *(["--raw"] * raw)]
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *args],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        counts.append(int(re.search(r"Collected : (\d+)", done.stderr)[1]))
    return (counts[1] - counts[0]) / (2 * steps)


def child(n: int, runs: int, raw: bool) -> None:
    """Run the steps once to warm up, then `runs` times (or their raw work), marked."""
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        dest = load_make_dataset().make_workspace(Path(tmp) / "ws", n, trivial=True)
        jobs, receipts = jobs_of(dest)
        run_all(named(jobs, 0))  # warm: scripts compiled, folders made
        fresh(jobs, receipts)
        all_named = [named(jobs, r + 1) for r in range(runs)]
        for these in all_named:
            os.write(1, MARK)
            if raw:
                raw_all(these)
            else:
                run_all(these)
            os.write(1, END)
            fresh(jobs, receipts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-strace", action="store_true")
    parser.add_argument("--instructions", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.n, args.child, args.raw)
        return 0

    import sinagot

    print(f"sinagot from {Path(sinagot.__file__).parent}; {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        dest = load_make_dataset().make_workspace(Path(tmp) / "ws", args.n, trivial=True)
        jobs, receipts = jobs_of(dest)
        steps = len(jobs)
        run_all(named(jobs, 0))  # warm: scripts compiled, folders made, caches filled
        ours, raw = [], []
        for r in range(args.repeat):
            fresh(jobs, receipts)
            failed: list[str] = []
            these = named(jobs, r + 1)
            ours.append(cpu(lambda these=these, failed=failed: failed.extend(run_all(these))))
            if failed:
                print("FAILED:", *failed[:5], sep="\n  ")
                return 1
            fresh(jobs, receipts)
            raw.append(cpu(lambda: raw_all(jobs)))
        fresh(jobs, receipts)
        run_all(named(jobs, args.repeat + 1))
        missing = [
            job.key for job in jobs if not os.path.exists(os.path.join(job.dataset, job.outputs[0]))
        ]
        if missing:
            print("missing outputs:", *missing[:5])
            return 1
        fresh(jobs, receipts)
        these = named(jobs, args.repeat + 2)
        profiler = cProfile.Profile()
        profiler.enable()
        run_all(these)
        profiler.disable()
        stats = pstats.Stats(profiler)
        print(f"{steps} steps x {args.repeat} repeats")
        print(f"python calls per step: {stats.total_calls / steps:.0f}")
        for i, what in enumerate(("CPU", "user CPU", "system CPU")):
            per_ms = [1000 * t[i] / steps for t in ours]
            raw_ms = [1000 * t[i] / steps for t in raw]
            own = statistics.median(per_ms) - statistics.median(raw_ms)
            print(
                f"{what} per step: {statistics.median(per_ms):.3f} ms"
                f" ({min(per_ms):.3f}-{max(per_ms):.3f});"
                f" raw work {statistics.median(raw_ms):.3f} ms; sinagot's own {own:.3f} ms"
            )
        if args.profile:
            stats.sort_stats("tottime").print_stats(15)
    if not args.no_strace and shutil.which("strace"):
        each = {name: calls / steps for name, calls in syscalls(args.n).items()}
        total = sum(each.values())
        shown = ", ".join(
            f"{name} {v:.1f}"
            for name, v in sorted(each.items(), key=lambda kv: -kv[1])
            if v >= 0.05
        )
        print(f"syscalls per step: {total:.1f} (strace -f): {shown}")
    if args.instructions:
        small = round(INSTRUCTIONS_N * steps / args.n)  # the steps of 20 records
        ours, raw = (
            instructions(INSTRUCTIONS_N, small, False),
            instructions(INSTRUCTIONS_N, small, True),
        )
        print(
            f"instructions per step (valgrind, user space): {ours / 1000:.0f}k;"
            f" raw work {raw / 1000:.0f}k; sinagot's own {(ours - raw) / 1000:.0f}k"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
