"""Benchmark: sinagot on Dask against raw Dask, end to end, on the same cluster and files.

    python tests/bench/bench_dask.py [N] [--workdir DIR] [--keep] [--profile]

It builds a harbor-like workspace of N records (default 10000; `example/make_dataset.py`,
trivial plain-Python steps) with `[run] mode = "dask"` and an embedded LocalCluster of
2 workers x 1 thread, plus a fresh copy of the same raw files. With the cluster started and
warmed (one trivial `client.submit` and a `client.run` on every worker), it measures, wall
clock with `time.perf_counter`, in this one process:

(s) sinagot: `ws.execute(ws.plan(ws.units(Scope()), stale_only=True))`, timed from just
    before discovery and planning to the end of execute, split into planning (discovery +
    plan) and execution (execute: submitting, running on the workers, recording the results
    in the state store); also the steps' own run time on the workers, summed from the
    results' start and end times (a step's run with its logs and atomic outputs, not
    its receipt, nor Dask's overhead);
(r) raw Dask: `client.map` of a no-frills function over the copy's raw files (read the csv,
    count its rows, write the count and the mean outputs: the work of the two trivial steps,
    done directly, with no atomic rename, no logs, no receipts, no state store), then
    `client.gather`;
(c) for reference only: raw Dask with one task per step, two tasks a record (count, then
    mean depending on it), on a second copy: what a graph of chained steps costs by itself
    (Sinagot runs each unit's chain as one task).

For each, the CPU time used meanwhile by this process (the client, and the embedded
scheduler, which runs in it) and by the two worker processes: on a small machine they
compete for the same cores.

and prints both times, steps per second (2 N steps; for (r) the 2 N outputs it writes), and
the ratio (s)/(r) (target <= 1.5 at N = 10000). `--profile` then makes every raw file newer
and runs (s) again under cProfile, printing the top 20 functions of the submitting process
by tottime (that run is slower than the measured one and is not part of the figures).

`--workdir DIR` builds the workspaces there (the folder must not exist, or be empty) and
keeps them; without it a temporary folder is used, removed at the end unless `--keep`.
Exit status 1 when a check fails (a step did not succeed, an output is missing).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import load_make_dataset, machine

from sinagot.engine import Engine
from sinagot.layout import Scope

ROOT = Path(__file__).resolve().parents[2]
TARGET_RATIO = 1.5
DASK_SETTINGS = """
[run]
mode = "dask"

[dask]
n_workers = 2
threads_per_worker = 1
dashboard_address = ":0"
"""


# -- raw Dask: what the two trivial steps do, written directly --------------------------


def raw_both(raw: str) -> int:
    """Read one raw csv, count its rows, write the count and the mean outputs."""
    folder, name = os.path.split(raw)
    rid = name[: -len("-raw.csv")]
    computed = os.path.join(os.path.dirname(folder), "computed")
    with open(raw) as fh:
        rows = len(fh.read().splitlines()) - 1
    for step in ("count", "mean"):
        with open(os.path.join(computed, f"{rid}-{step}.csv"), "w") as fh:
            fh.write(f"rows\n{rows}\n")
    return rows


def raw_one(raw: str, step: str, previous: int | None = None) -> int:
    """One step of the chain variant: read the raw csv, count, write that step's output."""
    folder, name = os.path.split(raw)
    rid = name[: -len("-raw.csv")]
    with open(raw) as fh:
        rows = len(fh.read().splitlines()) - 1
    path = os.path.join(os.path.dirname(folder), "computed", f"{rid}-{step}.csv")
    with open(path, "w") as fh:
        fh.write(f"rows\n{rows}\n")
    return rows


def copy_raw(source: Path, dest: Path) -> Path:
    """A fresh copy of the raw files in `dest/raw`, with an empty `dest/computed`."""
    shutil.copytree(source, dest / "raw")
    (dest / "computed").mkdir()
    return dest / "raw"


def raws(folder: Path) -> list[str]:
    return sorted(os.path.join(folder, name) for name in os.listdir(folder))


def run_raw(client, folder: Path) -> float:
    """(r): list the files, map, gather."""
    start = time.perf_counter()
    futures = client.map(raw_both, raws(folder), pure=False)
    client.gather(futures)
    took = time.perf_counter() - start
    del futures
    return took


def run_raw_chains(client, folder: Path) -> float:
    """(c): two tasks a record, the second depending on the first."""
    start = time.perf_counter()
    paths = raws(folder)
    first = client.map(raw_one, paths, ["count"] * len(paths), pure=False)
    second = client.map(raw_one, paths, ["mean"] * len(paths), first, pure=False)
    client.gather(second)
    took = time.perf_counter() - start
    del first, second
    return took


def outputs_missing(computed: Path, ids: list[str]) -> int:
    have = set(os.listdir(computed)) if computed.is_dir() else set()
    return sum(f"{rid}-{step}.csv" not in have for rid in ids for step in ("count", "mean"))


# -- sinagot --------------------------------------------------------------------------------


def run_sinagot(ws: Engine) -> tuple[float, float, list]:
    """(s): (planning seconds, execution seconds, results)."""
    start = time.perf_counter()
    plans = ws.plan(ws.units(Scope()), stale_only=True)
    planned = time.perf_counter()
    results = ws.execute(plans)
    return planned - start, time.perf_counter() - planned, results


def profile_sinagot(ws: Engine, raw: Path, top: int = 20) -> None:
    """Make every raw file newer, then plan and execute again with execute under cProfile."""
    now = time.time_ns() + 5_000_000_000
    for path in raws(raw):
        os.utime(path, ns=(now, now))
    plans = ws.plan(ws.units(Scope()), stale_only=True)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    results = ws.execute(plans)
    profiler.disable()
    took = time.perf_counter() - start
    print(
        f"\ncProfile of ws.execute ({len(plans)} steps, {len(results)} results, "
        f"{took:.2f} s under the profiler), top {top} by tottime:"
    )
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("tottime")
    stats.print_stats(top)
    print(f"top {top} by cumtime:")
    stats.sort_stats("cumtime").print_stats(top)


def cpu_seconds(client) -> tuple[float, float]:
    """CPU seconds used so far by this process (sinagot or the raw client, with the
    embedded scheduler: it lives in this process) and by the worker processes together."""
    workers = client.run(time.process_time)
    return time.process_time(), sum(workers.values())


def cpu_delta(before: tuple[float, float], after: tuple[float, float]) -> str:
    return f"this process {after[0] - before[0]:.1f} s, workers {after[1] - before[1]:.1f} s"


def warm(client) -> None:
    """The cluster started, both workers up and answering."""
    client.wait_for_workers(2, timeout=60)
    client.submit(int, 1, pure=False).result()
    client.run(lambda: None)


# -- main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=10000, help="records (default 10000)")
    parser.add_argument("--workdir", type=Path, help="build the workspaces here and keep them")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--profile", action="store_true", help="cProfile a further ws.execute")
    args = parser.parse_args()

    make_dataset = load_make_dataset()
    temporary = args.workdir is None
    root = Path(tempfile.mkdtemp(prefix="bench-dask-")) if temporary else args.workdir.resolve()
    if not temporary:
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            sys.exit(f"{root} is not empty")
    problems: list[str] = []
    try:
        start = time.perf_counter()
        dest = make_dataset.make_workspace(root / "ws", args.n, trivial=True)
        with (dest / "workspace.toml").open("a") as fh:
            fh.write(DASK_SETTINGS)
        raw_map = copy_raw(dest / "dataset" / "raw", root / "raw-map")
        raw_chain = copy_raw(dest / "dataset" / "raw", root / "raw-chain")
        ids = [make_dataset.record_id(i) for i in range(args.n)]
        print(f"built {root} ({args.n} records, 3 copies) in {time.perf_counter() - start:.1f} s")

        with Engine(dest, verbose=False) as ws:
            start = time.perf_counter()
            client = ws.executor.connection.client
            warm(client)
            print(f"cluster started and warm in {time.perf_counter() - start:.1f} s")

            cpu0 = cpu_seconds(client)
            plan_s, exec_s, results = run_sinagot(ws)
            cpu1 = cpu_seconds(client)
            sinagot_s = plan_s + exec_s
            busy = sum(r.duration for r in results)
            bad = [r for r in results if not r.ok]
            if len(results) != 2 * args.n or bad:
                first = f"; first: {bad[0].step} {bad[0].unit} {bad[0].error}" if bad else ""
                problems.append(f"sinagot: {len(results)} results, {len(bad)} not ok{first}")
            missing = outputs_missing(dest / "dataset" / "computed", ids)
            if missing:
                problems.append(f"sinagot: {missing} output(s) missing")
            print(f"sinagot: {sinagot_s:.2f} s (plan {plan_s:.2f} s, execute {exec_s:.2f} s)")

            raw_s = run_raw(client, raw_map)
            cpu2 = cpu_seconds(client)
            missing = outputs_missing(raw_map.parent / "computed", ids)
            if missing:
                problems.append(f"raw Dask: {missing} output(s) missing")
            print(f"raw Dask: {raw_s:.2f} s")

            cpu3 = cpu_seconds(client)
            chain_s = run_raw_chains(client, raw_chain)
            cpu4 = cpu_seconds(client)
            missing = outputs_missing(raw_chain.parent / "computed", ids)
            if missing:
                problems.append(f"raw Dask chains: {missing} output(s) missing")
            print(f"raw Dask, two-task chains: {chain_s:.2f} s")

            if args.profile:
                profile_sinagot(ws, dest / "dataset" / "raw")

        steps = 2 * args.n
        ratio = sinagot_s / raw_s
        verdict = "ok" if ratio <= TARGET_RATIO else "MISSED"
        if verdict == "MISSED" and args.n >= 10_000:
            problems.append(f"(s)/(r) = {ratio:.2f}, target <= {TARGET_RATIO} at N = 10000")
        print("\n=== bench_dask summary ===")
        rows = [
            ("N records / steps", f"{args.n} / {steps}"),
            ("cluster", "embedded LocalCluster, 2 workers x 1 thread, warm"),
            ("(s) sinagot plan + execute", f"{sinagot_s:.2f} s  ({steps / sinagot_s:.0f} steps/s)"),
            ("    planning (units + plan)", f"{plan_s:.2f} s  ({100 * plan_s / sinagot_s:.0f} %)"),
            ("    execution (execute)", f"{exec_s:.2f} s  ({100 * exec_s / sinagot_s:.0f} %)"),
            (
                "    steps' own run time",
                f"{busy:.2f} s summed over results, {busy / 2:.2f} s a worker"
                f" ({1000 * busy / steps:.2f} ms a step)",
            ),
            ("    CPU", cpu_delta(cpu0, cpu1)),
            ("(r) raw Dask map + gather", f"{raw_s:.2f} s  ({steps / raw_s:.0f} steps/s)"),
            ("    CPU", cpu_delta(cpu1, cpu2)),
            ("(s)/(r)", f"{ratio:.2f}  (target <= {TARGET_RATIO} at N = 10000): {verdict}"),
            ("(c) raw Dask two-task chains", f"{chain_s:.2f} s  ({steps / chain_s:.0f} steps/s)"),
            ("    CPU", cpu_delta(cpu3, cpu4)),
            ("(s)/(c)", f"{sinagot_s / chain_s:.2f}  (reference only)"),
        ]
        for label, value in rows:
            print(f"{label:<32}{value}")
        print(f"machine: {machine()}")
        for problem in problems:
            print(f"PROBLEM: {problem}")
    finally:
        if temporary and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif temporary:
            print(f"kept {root}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
