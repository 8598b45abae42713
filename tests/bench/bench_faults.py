"""Soak benchmark: rounds of random faults against sinagotd; the books must stay balanced.

    python tests/bench/bench_faults.py [--rounds K (default 100)] [--seed S] [--keep DIR]

One workspace (tests/faults/harness.py's Lab: trivial steps that can be slowed down), one
external Dask cluster (a scheduler on a fixed port, two workers under nannies) and one
sinagotd, for the whole run. Each round adds a few recordings (now and then one existing
recording is replaced, so its steps are due again), injects one fault chosen at random at a
random moment while the steps run, waits for the system to recover, and checks the books
with the same `check_books` as the pytest scenarios (tests/faults/): every due step has run
to success exactly once since its input last changed, its output is complete and right,
nothing is left in flight, and every run was announced by a `step.finished` event (except
the ones a daemon killed -9 never heard of).

Faults: kill-daemon (kill -9 of sinagotd; a new one is started), kill-worker (kill -9 of the
Dask worker process running a step; its nanny starts another), restart-scheduler (the
scheduler killed or stopped, down for a moment, restarted on the same port; new workers),
overflow (sinagotd SIGSTOPped, its inotify queue flooded past the kernel's limit, the
recordings dropped, SIGCONT), slow-copy (recordings copied in chunks, in place, or to a temp
name renamed after), unwritable (`chattr +i` on the outputs' folder for a moment), and
broken-config (workspace.toml broken, noticed by the watcher or SIGHUP, fixed later).

A key found run twice, half-written, unannounced or still not done at a round's deadline is
reported with its round and set aside, so that later rounds are judged on their own. Prints
the figures and exits 1 if any of the three loss columns (twice, lost, half-written) is not 0.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
HARNESS = HERE.parent / "faults" / "harness.py"


def _load_harness():
    spec = importlib.util.spec_from_file_location("sinagot_faults_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


h = _load_harness()

FAULTS = (
    "kill-daemon",
    "kill-worker",
    "restart-scheduler",
    "overflow",
    "slow-copy",
    "unwritable",
    "broken-config",
)
ROUND_TIMEOUT = 90.0  # seconds for a round to recover before what is left counts as lost
LOSSES = ("twice", "lost", "half_written")
#: Problems nothing will mend once the daemon is idle.
PERMANENT = frozenset({"twice", "half_written", "unreported", "overreported"})
#: How the books' problems are tallied.
CATEGORY = {"not_done": "lost", "receipts": "in_flight", "leftovers": "in_flight"}


@dataclass
class Tally:
    rounds: int = 0
    faults: Counter = field(default_factory=Counter)
    due: set = field(default_factory=set)  # (record_id, step, input mtime)
    found: dict = field(default_factory=dict)  # problem -> {(key, since): (round, kind, note)}
    early: list = field(default_factory=list)  # runs started while their input was copied
    overflows: int = 0  # overflow rounds where the daemon logged watch.error
    crashes: list = field(default_factory=list)  # sinagotd exited by itself
    worst: tuple[float, int, str] = (0.0, 0, "")
    recoveries: list = field(default_factory=list)

    def add(self, problem: str, key, since: float, where: tuple[int, str], note: str) -> bool:
        seen = self.found.setdefault(problem, {})
        if (key, since) in seen:
            return False
        seen[(key, since)] = (*where, note)
        return True

    def count(self, problem: str) -> int:
        return len(self.found.get(problem, {}))


class Soak:
    def __init__(self, root: Path, rng: random.Random, verbose: bool) -> None:
        self.rng = rng
        self.verbose = verbose
        self.lab = h.Lab.create(root, 4, settle=h.SETTLE, rescan=5.0, retry=0.5, grace=2.0)
        # Unwritable outputs last up to a few seconds here: enough attempts to outlast them
        # (the default, 3, gives a step up after about 1.5 s with retry = 0.5).
        with self.lab.config.open("a") as config:
            config.write("\n[run]\nmax_attempts = 12\n")
        self.next_record = 4
        self.tally = Tally()
        self.set_aside: set = set()  # (key, since) already reported
        self.good_config = self.lab.config.read_text()
        self.scratch = self.lab.dataset / "scratch"  # matches no pattern
        h.prepare_flood(self.scratch)
        self.limit = h.read_max_queued_events()
        self.chattr = h.chattr_works(root / "probe")
        try:
            self.cluster = self.lab.cluster(port=h.free_port())
            self.cluster.start_scheduler()
            for _ in range(2):
                self.cluster.start_worker(nanny=True)
            self.cluster.wait_workers(2)
            self.daemon = self.start_daemon()
            self.wait_recovered(0, "start")
        except BaseException:
            self.lab.close()
            raise

    # -- processes ----------------------------------------------------------------------------

    def start_daemon(self):
        daemon = self.lab.daemon("--scheduler", self.cluster.address)
        daemon.wait_for("daemon.ready", timeout=60)
        return daemon

    def worker_processes(self) -> list[int]:
        """The worker processes the nannies started (where steps run)."""
        nannies = {proc.pid for proc in self.cluster.workers if proc.poll() is None}
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) in nannies:
                    cmdline = (stat.parent / "cmdline").read_bytes()
                    if b"spawn_main" in cmdline:
                        pids.append(int(stat.parent.name))
        return pids

    def restart_scheduler(self) -> None:
        """The scheduler again, on its port. A worker under a nanny may come back by itself,
        or close with its scheduler (after its running task): new workers make up for the
        ones that do not register within a few seconds."""
        cluster = self.cluster
        offsets = cluster.log_offsets()
        cluster.start_scheduler()
        cluster.workers = [w for w in cluster.workers if w.poll() is None]
        with contextlib.suppress(h.FaultError):
            cluster.wait_workers(2, since=offsets, timeout=4)
        for _ in range(2 - cluster.registered(offsets)):
            cluster.start_worker(nanny=True)
        cluster.wait_workers(2, since=offsets)

    # -- a round ------------------------------------------------------------------------------

    def new_ids(self) -> list[int]:
        count = self.rng.randint(2, 4)
        numbers = list(range(self.next_record, self.next_record + count))
        self.next_record += count
        return numbers

    def drop(self, numbers: list[int]) -> None:
        self.lab.add(numbers, seed=self.rng.randrange(10**6))
        if self.rng.random() < 0.25 and self.next_record > 8:  # an old recording replaced
            rid = h.record_id(self.rng.randrange(0, self.next_record - 8))
            text = h.raw_text(self.rng.randint(3, 9), seed=self.rng.randrange(10**6))
            h.write_then_rename(self.lab.raw(rid), text, f".{rid}-raw.csv.{os.getpid()}")

    def moment(self) -> None:
        time.sleep(self.rng.uniform(0.0, 1.2))  # the fault's random moment, deliberately

    def round(self, number: int, kind: str) -> None:
        lab, rng = self.lab, self.rng
        lab.set_delay(rng.choice((0.0, 0.1, 0.3, 0.6)))
        numbers = self.new_ids()
        injected = time.monotonic()
        if kind == "kill-daemon":
            self.drop(numbers)
            self.moment()
            injected = time.monotonic()
            self.daemon.kill()
            self.daemon = self.start_daemon()
        elif kind == "kill-worker":
            self.drop(numbers)
            self.moment()
            injected = time.monotonic()
            workers = self.worker_processes()
            busy = [pid for _, _, pid, _ in lab.started()[-6:] if pid in workers]
            victim = busy[-1] if busy else (rng.choice(workers) if workers else None)
            if victim is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
        elif kind == "restart-scheduler":
            self.drop(numbers)
            self.moment()
            injected = time.monotonic()
            self.cluster.stop_scheduler(rng.choice((signal.SIGKILL, signal.SIGTERM)))
            time.sleep(rng.uniform(0.2, 3.0))  # the outage, deliberately
            self.restart_scheduler()
        elif kind == "overflow":
            injected = time.monotonic()
            mark = self.daemon.mark()
            with h.stopped(self.daemon.pid):
                h.flood_inotify(self.scratch, self.limit + 1024)
                self.drop(numbers)
        elif kind == "slow-copy":
            ended: dict[str, float] = {}

            def copy(n: int, how: str) -> None:
                rid = h.record_id(n)
                text = h.raw_text(rng.randint(6, 20), seed=n)
                if how == "in place":
                    h.write_slowly(lab.raw(rid), text, chunks=8, pause=0.1)
                else:
                    temp = f".{rid}-raw.csv.Ab{n}" if how == "rsync" else f"upload-{n}.part"
                    h.write_then_rename(lab.raw(rid), text, temp, chunks=8, pause=0.1)
                ended[rid] = time.time()

            hows = [rng.choice(("in place", "rsync", "upload")) for _ in numbers]
            writers = [
                threading.Thread(target=copy, args=(n, how))
                for n, how in zip(numbers, hows, strict=True)
            ]
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join()
            injected = time.monotonic()
            self.slow_copies = ended
        elif kind == "unwritable":
            computed = lab.dataset / "computed"
            if self.chattr:
                h.chattr(computed, "+i")
                try:
                    self.drop(numbers)
                    injected = time.monotonic()
                    time.sleep(rng.uniform(0.5, 2.5))  # the folder stays unwritable a while
                finally:
                    h.chattr(computed, "-i")
            else:
                self.drop(numbers)
        elif kind == "broken-config":
            sighup = rng.random() < 0.5
            broken = self.good_config.replace('id_pattern = "REC-[\\\\d]{8}"', 'id_pattern = "("')
            lab.config.write_text(broken)
            if sighup:
                self.daemon.proc.send_signal(signal.SIGHUP)
            injected = time.monotonic()
            self.drop(numbers)
            time.sleep(rng.uniform(0.3, 1.5))  # broken for a while, deliberately
            lab.config.write_text(self.good_config)
            if sighup:
                self.daemon.proc.send_signal(signal.SIGHUP)
        self.tally.faults[kind] += 1
        self.wait_recovered(number, kind, injected)
        if kind == "overflow":
            self.tally.overflows += bool(self.daemon.seen("watch.error", since=mark))
        if kind == "slow-copy":
            self.check_early_starts(number)

    def check_early_starts(self, number: int) -> None:
        """A recording still being copied must start nothing (DESIGN.md §8.3)."""
        for rid, end in self.slow_copies.items():
            for entry in h.log_entries(self.lab, rid):
                if entry.get("message") == "Init run" and h.epoch(entry["time"]) < end:
                    self.tally.early.append((number, rid, entry.get("step_label")))

    # -- recovery and the books -------------------------------------------------------------

    def open_problems(self, books) -> dict:
        out = {}
        for key, names in books.problems().items():
            if (key, books.since.get(key)) not in self.set_aside:
                out[key] = names
        return out

    def wait_recovered(self, number: int, kind: str, injected: float | None = None) -> None:
        """Until the daemon is idle and every new problem is one nothing will mend (a step
        run twice, a half-written output, a run never announced): those are reported; the
        others (not run yet, in flight, a receipt not yet ingested) must clear by the
        deadline, or count as lost / left in flight."""
        started = injected if injected is not None else time.monotonic()
        deadline = time.monotonic() + ROUND_TIMEOUT
        while time.monotonic() < deadline:
            if self.daemon.proc.poll() is not None:  # it died: systemd would restart it
                tail = " | ".join(self.daemon.stderr().strip().splitlines()[-2:])
                self.tally.crashes.append((number, kind, self.daemon.proc.returncode, tail))
                self.say(f"  round {number} ({kind}): sinagotd exited: {tail}")
                self.daemon = self.start_daemon()
            books, idle = h.quiet_books(self.lab, self.daemon)
            transient = [
                key for key, names in self.open_problems(books).items() if set(names) - PERMANENT
            ]
            if idle and not transient:
                break
            time.sleep(0.2)  # polling, with a deadline
        books = h.check_books(self.lab, with_status=True)
        self.last_books = books
        recovery = time.monotonic() - started
        self.tally.recoveries.append(recovery)
        if recovery > self.tally.worst[0]:
            self.tally.worst = (recovery, number, kind)
        for key, since in books.since.items():
            self.tally.due.add((key, since))
        new = self.open_problems(books)
        for key, names in new.items():
            since = books.since.get(key)
            notes = "; ".join(books.notes.get(key, []))
            note = ", ".join(names) + (f" ({notes})" if notes else "")
            for name in names:
                self.tally.add(CATEGORY.get(name, name), key, since, (number, kind), note)
            self.say(f"  round {number} ({kind}): {key[0]} {key[1]}: {note}")
            self.set_aside.add((key, since))
        if self.verbose or new:
            self.say(
                f"round {number:3d} {kind:17s} recovered in {recovery:5.1f} s; "
                f"{len(books.due)} steps due, {books.ran} run; "
                f"{len(new)} new problem key(s)"
            )
        self.tally.rounds = number

    def final_check(self) -> None:
        """At the end: a step counted lost at its round's deadline that is fine now was late."""
        with contextlib.suppress(h.FaultError):
            h.wait_until(self.daemon.idle, 60, "the daemon idle at the end")
        books = h.check_books(self.lab, with_status=True)
        self.last_books = books
        problems = books.problems()
        lost = self.tally.found.get("lost", {})
        for (key, since), where in list(lost.items()):
            if key not in problems and books.since.get(key) == since:
                del lost[(key, since)]
                self.tally.found.setdefault("late", {})[(key, since)] = where

    def say(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        self.lab.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated kinds")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per round")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    kinds = [kind for kind in args.faults.split(",") if kind]
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        parser.error(f"unknown fault kinds: {', '.join(sorted(unknown))}")
    rng = random.Random(seed)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so that every process is cleaned up

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)  # even when started in the background (SIG_IGN)
    root = args.keep or Path(tempfile.mkdtemp(prefix="sinagot-bench-faults-"))
    began = time.monotonic()
    print(f"bench_faults: {args.rounds} rounds, seed {seed}, in {root}", flush=True)
    soak = Soak(root, rng, args.verbose)
    try:
        for number in range(1, args.rounds + 1):
            soak.round(number, rng.choice(kinds))
        soak.final_check()
    finally:
        soak.close()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    tally = soak.tally
    wall = time.monotonic() - began
    worst, worst_round, worst_kind = tally.worst
    recoveries = sorted(tally.recoveries)
    median = f"{recoveries[len(recoveries) // 2]:.1f} s" if recoveries else "-"
    rows = [
        ("rounds", str(tally.rounds)),
        ("faults injected", ", ".join(f"{k} {tally.faults[k]}" for k in kinds)),
        ("steps due", str(len(tally.due))),
        ("steps run", str(sum(soak.last_books.ever.values()))),
        ("steps run twice", str(tally.count("twice"))),
        ("steps lost", str(tally.count("lost"))),
        ("half-written outputs", str(tally.count("half_written"))),
        ("recovered late", f"{tally.count('late')} (after their round's {ROUND_TIMEOUT:.0f} s)"),
        ("overflows noticed", f"{tally.overflows} of {tally.faults['overflow']} (watch.error)"),
        ("left in flight", f"{tally.count('in_flight')} (submitted marks, receipts, temp outputs)"),
        ("runs not announced", str(tally.count("unreported") + tally.count("overreported"))),
        ("started mid-copy", str(len(tally.early))),
        ("daemon crashes", f"{len(tally.crashes)} (restarted, as systemd would)"),
        ("worst recovery time", f"{worst:.1f} s (round {worst_round}, {worst_kind})"),
        ("median recovery time", median),
        ("total wall time", f"{wall:.0f} s"),
    ]
    print()
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    for problem, found in sorted(tally.found.items()):
        for (key, _), (number, kind, note) in sorted(found.items(), key=lambda i: i[1][0]):
            print(f"  {problem}: round {number} ({kind}) {key[0]} {key[1]}: {note}")
    for number, rid, step in tally.early:
        print(f"  started mid-copy: round {number} {rid} {step}")
    for number, kind, status, tail in tally.crashes:
        print(f"  sinagotd exited ({status}): round {number} ({kind}): {tail}")
    return 1 if any(tally.count(name) for name in LOSSES) else 0


if __name__ == "__main__":
    sys.exit(main())
