"""Benchmark: sinagot on Dask against raw Dask, end to end, on the same cluster and files.

    python tests/bench/bench_dask.py [N] [--repeat R] [--workdir DIR] [--keep] [--profile]

It builds a harbor-like workspace of N records (default 10000; `example/make_dataset.py`,
trivial plain-Python steps) and starts one Dask LocalCluster in this process (scheduler
here, 2 worker processes x 1 thread: what `[run] mode = "dask"` embeds), warmed (one trivial
`client.submit` and a `client.run` on every worker). Then, R times (default 3), in
alternating order (s, r, r, s, s, r, ...), each on a fresh copy of the files made before
the clock starts, wall clock with `time.perf_counter`:

(s) sinagot: a new `Engine` on the copy (a new state store: nothing is known of the steps
    yet) given the cluster's address, `ws.execute(ws.plan(ws.units(Scope()),
    stale_only=True))`, timed from just before discovery and planning to the end of
    execute (submitting, running on the workers, recording the results in the state store);
    also the steps' own run time on the workers, summed from the results' start and end
    times (a step's run with its logs and atomic outputs, not its receipt, nor Dask's
    overhead), and Sinagot's overhead: (s) minus the steps' own run time per worker thread,
    per step;
(r) raw Dask: `client.map` of a no-frills function over the copy's raw files, one task per
    record (read the csv, count its rows, write the count and the mean outputs: the work of
    the two trivial steps, done directly, with no atomic rename, no logs, no receipts, no
    state store), then `client.gather`;
(c) once, for reference only: raw Dask with one task per step, two tasks a record (count,
    then mean depending on it): what a graph of chained steps costs by itself.

For each, the CPU time used meanwhile by this process (the client, and the scheduler, which
runs in it) and by the two worker processes: on a small machine they compete for the same
cores. Before the samples and after them, what creating a file costs on the workdir's file
system (`_common.create_cost`): Sinagot makes five files a record (two outputs, two
receipts, the record's log), the raw side two, so the speed-up moves with it. The summary
gives medians (min-max) and two targets, judged at N >= 10000: the speed-up
(r)/(s) of the medians at least 2, and Sinagot's overhead at most 0.3 ms a step.
`--profile` then makes every raw file of the last sinagot copy newer and runs (s) again under
cProfile, printing the top 20 functions of the submitting process (not part of the figures).

`--workdir DIR` builds the workspaces there (the folder must not exist, or be empty) and
keeps them; without it a temporary folder is used, removed at the end unless `--keep`.
Exit status 1 when a check fails (a step did not succeed, an output is missing) or, at
N >= 10000, a target is missed.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import create_cost, load_make_dataset, machine

from sinagot.engine import Engine
from sinagot.layout import Scope

ROOT = Path(__file__).resolve().parents[2]
TARGET_SPEEDUP = 2.0  # (r) / (s), medians
TARGET_OVERHEAD_MS = 0.3  # Sinagot's time beyond the steps' own, a step
TARGET_N = 10_000  # the targets are judged at this size and above
WORKERS = 2


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


@dataclass
class Sample:
    """One timed run of (s) or (r)."""

    seconds: float
    cpu_here: float
    cpu_workers: float
    busy: float = 0.0  # (s): the steps' own run time, summed


def run_sinagot(dest: Path, address: str, n: int, problems: list[str]) -> Sample:
    """(s) on a fresh workspace: a new Engine, a new state store, the cluster at `address`."""
    with Engine(dest, verbose=False, scheduler=address) as ws:
        client = ws.executor.connection.client
        before = cpu_seconds(client)
        start = time.perf_counter()
        results = ws.execute(ws.plan(ws.units(Scope()), stale_only=True))
        took = time.perf_counter() - start
        after = cpu_seconds(client)
    bad = [r for r in results if not r.ok]
    if len(results) != 2 * n or bad:
        first = f"; first: {bad[0].step} {bad[0].unit} {bad[0].error}" if bad else ""
        problems.append(f"sinagot: {len(results)} results, {len(bad)} not ok{first}")
    busy = sum(r.duration for r in results)
    return Sample(took, after[0] - before[0], after[1] - before[1], busy)


def profile_sinagot(dest: Path, address: str, top: int = 20) -> None:
    """Make every raw file newer, then plan and execute again with execute under cProfile."""
    now = time.time_ns() + 5_000_000_000
    for path in raws(dest / "dataset" / "raw"):
        os.utime(path, ns=(now, now))
    with Engine(dest, verbose=False, scheduler=address) as ws:
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
    scheduler: it lives in this process) and by the worker processes together."""
    workers = client.run(time.process_time)
    return time.process_time(), sum(workers.values())


def warm(client) -> None:
    """The cluster started, both workers up and answering."""
    client.wait_for_workers(WORKERS, timeout=60)
    client.submit(int, 1, pure=False).result()
    client.run(lambda: None)


def run_raw_sample(client, folder: Path) -> Sample:
    before = cpu_seconds(client)
    took = run_raw(client, folder)
    after = cpu_seconds(client)
    return Sample(took, after[0] - before[0], after[1] - before[1])


def spread(values: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    """'median (min-max)' of the samples."""
    if not values:
        return "-"
    med, low, high = (scale * v for v in (statistics.median(values), min(values), max(values)))
    return f"{med:.{digits}f} {unit} ({low:.{digits}f}-{high:.{digits}f})"


# -- main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", default=10000, help="records (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="samples of (s) and (r) (3)")
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
    ids = [make_dataset.record_id(i) for i in range(args.n)]
    ours: list[Sample] = []
    raw: list[Sample] = []
    try:
        start = time.perf_counter()
        source = make_dataset.make_workspace(root / "source", args.n, trivial=True)
        print(f"built {source} ({args.n} records) in {time.perf_counter() - start:.1f} s")

        from distributed import Client, LocalCluster

        start = time.perf_counter()
        with (
            LocalCluster(
                n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=":0", silence_logs=logging.WARNING,
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):  # fmt: skip
            warm(client)
            print(f"cluster started and warm in {time.perf_counter() - start:.1f} s")
            creates = [create_cost(root)]
            for sample in range(args.repeat):
                order = ("s", "r") if sample % 2 == 0 else ("r", "s")
                for which in order:
                    if which == "s":
                        dest = root / f"s{sample}"
                        shutil.copytree(source, dest)
                        ours.append(run_sinagot(dest, cluster.scheduler_address, args.n, problems))
                        missing = outputs_missing(dest / "dataset" / "computed", ids)
                        label = f"(s) sample {sample + 1}: {ours[-1].seconds:.2f} s"
                    else:
                        folder = copy_raw(source / "dataset" / "raw", root / f"r{sample}")
                        raw.append(run_raw_sample(client, folder))
                        missing = outputs_missing(folder.parent / "computed", ids)
                        label = f"(r) sample {sample + 1}: {raw[-1].seconds:.2f} s"
                    if missing:
                        problems.append(f"{label}: {missing} output(s) missing")
                    print(label, flush=True)

            creates.append(create_cost(root))
            chain_folder = copy_raw(source / "dataset" / "raw", root / "raw-chain")
            cpu0 = cpu_seconds(client)
            chain_s = run_raw_chains(client, chain_folder)
            cpu1 = cpu_seconds(client)
            missing = outputs_missing(chain_folder.parent / "computed", ids)
            if missing:
                problems.append(f"raw Dask chains: {missing} output(s) missing")
            print(f"(c) raw Dask, two-task chains: {chain_s:.2f} s")

            if args.profile:
                profile_sinagot(root / f"s{args.repeat - 1}", cluster.scheduler_address)

        steps = 2 * args.n
        s_med = statistics.median(x.seconds for x in ours)
        r_med = statistics.median(x.seconds for x in raw)
        speedup = r_med / s_med
        overheads = [(x.seconds - x.busy / WORKERS) / steps for x in ours]
        overhead = statistics.median(overheads)
        judged = args.n >= TARGET_N
        speed_ok = speedup >= TARGET_SPEEDUP
        overhead_ok = overhead * 1000 <= TARGET_OVERHEAD_MS
        if judged and not speed_ok:
            problems.append(f"speed-up (r)/(s) = {speedup:.2f}, target >= {TARGET_SPEEDUP}")
        if judged and not overhead_ok:
            problems.append(
                f"overhead {1000 * overhead:.3f} ms a step, target <= {TARGET_OVERHEAD_MS}"
            )

        def verdict(ok: bool) -> str:
            return ("ok" if ok else "MISSED") if judged else f"not judged below N = {TARGET_N}"

        print("\n=== bench_dask summary ===")
        rows = [
            ("N records / steps", f"{args.n} / {steps}"),
            ("cluster", f"LocalCluster in this process, {WORKERS} workers x 1 thread, warm"),
            ("samples", f"{args.repeat} of (s) and of (r), alternating; median (min-max)"),
            ("(s) sinagot plan + execute", f"{spread([x.seconds for x in ours])}"
             f"  ({steps / s_med:.0f} steps/s)"),
            ("    steps' own run time", f"{spread([x.busy / steps for x in ours], 'ms', 1000, 3)}"
             " a step"),
            ("    overhead beyond them", f"{spread(overheads, 'ms', 1000, 3)} a step"
             f"  (target <= {TARGET_OVERHEAD_MS}): {verdict(overhead_ok)}"),
            ("    CPU, this process", spread([x.cpu_here for x in ours])),
            ("    CPU, workers", spread([x.cpu_workers for x in ours])),
            ("(r) raw Dask map + gather", f"{spread([x.seconds for x in raw])}"
             f"  ({steps / r_med:.0f} steps/s)"),
            ("    CPU, this process", spread([x.cpu_here for x in raw])),
            ("    CPU, workers", spread([x.cpu_workers for x in raw])),
            ("speed-up (r)/(s)", f"{speedup:.2f}x  (target >= {TARGET_SPEEDUP}): "
             f"{verdict(speed_ok)}"),
            ("(c) raw Dask two-task chains", f"{chain_s:.2f} s  ({steps / chain_s:.0f} steps/s),"
             f" CPU this process {cpu1[0] - cpu0[0]:.1f} s, workers {cpu1[1] - cpu0[1]:.1f} s"),
            ("(c)/(s)", f"{chain_s / s_med:.2f}x  (reference only)"),
            ("file create, this file system", f"{creates[0]:.0f} us CPU before the samples,"
             f" {creates[1]:.0f} us after (Sinagot makes 5 files a record, raw 2)"),
        ]  # fmt: skip
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
