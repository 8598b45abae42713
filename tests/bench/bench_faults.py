"""Soak benchmark: rounds of random faults against sinagotd; the books must stay balanced.

    python tests/bench/bench_faults.py [--rounds K (default 100)] [--seed S] [--keep DIR]
                                       [--faults kind,kind] [-v]

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
scheduler killed or stopped, down for a moment, restarted on the same port; its workers
close with it, and new ones are started at once, as a supervisor would, to wait for it),
overflow (sinagotd SIGSTOPped, its inotify queue flooded past the kernel's limit, the
recordings dropped, SIGCONT), slow-copy (recordings copied in chunks, in place, or to a temp
name renamed after), unwritable (`chattr +i` on the outputs' folder for a moment), and
broken-config (workspace.toml broken, noticed by the watcher or SIGHUP, fixed later).

A key found run twice, half-written, unannounced or still not done at a round's deadline is
reported with its round and set aside, so that later rounds are judged on their own. Only
faults actually injected are counted (a kill-worker round with no worker process left to
kill, an unwritable round without `chattr`, are listed apart).

A round's recovery runs from the fault to the daemon's last `daemon.idle` before the books
were found balanced (the moment it said so, not the moment the soak's poll saw it; the full
check with `sinagot status` that follows is not timed); its "daemon share" runs to the same
moment from when the cluster was whole again (restart-scheduler: the scheduler and
two workers registered; other faults: the fault itself). With --keep DIR, `rounds.jsonl`
there has each round's moments and the daemon's events (steps' aside), and each daemon's
whole event stream is in `sinagotd-N.events.jsonl`: the timeline of a slow round.

Prints the figures and exits 1 on a step lost, run twice or half-written, a run not
announced, a daemon crash, a step started on a file still being copied, and, from 100
rounds on, a recovery target missed (worst < 15 s, median < 2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/: the fault lab, daemonproc

import faults.harness as h

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
#: Recovery targets (issue 14), judged from this many rounds on.
TARGET_ROUNDS = 100
WORST_TARGET = 15.0  # seconds
MEDIAN_TARGET = 2.0  # seconds
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
    worst_share: tuple[float, int, str] = (0.0, 0, "")  # the daemon's own share
    recoveries: list = field(default_factory=list)
    shares: list = field(default_factory=list)  # from the cluster whole again to recovered
    not_injected: Counter = field(default_factory=Counter)  # e.g. no worker process to kill

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
        # Files named as no pattern, in a folder the daemon watches: in a folder no pattern
        # reaches (it was `scratch/`), the flood reaches no watch since the watcher stopped
        # watching such folders, and the overflow fault was no fault at all.
        self.scratch = self.lab.dataset / "raw"
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

    def restart_scheduler(self, sig: int, outage: float) -> float:
        """Stop the scheduler, wait `outage` seconds, start it again on its port; when the
        cluster is whole again (two workers registered), as time.monotonic().

        A Dask worker closes when it loses its scheduler (it does not reconnect): as a
        supervisor (systemd, a batch system) would, new workers are started at once, and
        wait for the scheduler to come back. Waiting a few seconds for the old ones to
        re-register first (as this soak used to) only added those seconds to each round."""
        cluster = self.cluster
        offsets = cluster.log_offsets()
        cluster.stop_scheduler(sig)
        for _ in range(2):
            cluster.start_worker(nanny=True)
        time.sleep(outage)  # the outage, deliberately
        cluster.start_scheduler()
        cluster.wait_workers(2, since=offsets)
        cluster.workers = [w for w in cluster.workers if w.poll() is None]
        return time.monotonic()

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
        """Inject one fault of this kind, wait for the recovery, keep the books. A fault
        that could not be injected (no worker process to kill, no `chattr`) is counted as
        such, not as injected."""
        lab, rng = self.lab, self.rng
        lab.set_delay(rng.choice((0.0, 0.1, 0.3, 0.6)))
        numbers = self.new_ids()
        injected = time.monotonic()
        done = True  # the fault was injected
        back: float | None = None  # when the cluster was whole again (restart-scheduler)
        mark = self.daemon.mark()
        if kind == "kill-daemon":
            self.drop(numbers)
            self.moment()
            injected = time.monotonic()
            self.daemon.kill()
            self.daemon = self.start_daemon()
            mark = 0  # the new daemon's events, from its start
        elif kind == "kill-worker":
            self.drop(numbers)
            self.moment()
            injected = time.monotonic()
            workers = self.worker_processes()
            busy = [pid for _, _, pid, _ in lab.started()[-6:] if pid in workers]
            victim = busy[-1] if busy else (rng.choice(workers) if workers else None)
            done = victim is not None and kill(victim)
        elif kind == "restart-scheduler":
            self.drop(numbers)
            self.moment()
            injected = time.monotonic()
            sig = rng.choice((signal.SIGKILL, signal.SIGTERM))
            back = self.restart_scheduler(sig, rng.uniform(0.2, 3.0))
        elif kind == "overflow":
            # The daemon says at most one watch.error a second (the next one counts those
            # held back): an overflow right after another one's would go unsaid for now.
            said = self.daemon.seen("watch.error")
            if said:
                time.sleep(max(0.0, h.epoch(said[-1]["timestamp"]) + 1.1 - time.time()))
            injected = time.monotonic()
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
                done = False
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
        (self.tally.faults if done else self.tally.not_injected)[kind] += 1
        self.wait_recovered(number, kind, injected, back, mark)
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

    def wait_recovered(
        self, number: int, kind: str, injected: float | None = None,
        back: float | None = None, mark: int = 0,
    ) -> None:  # fmt: skip
        """Until the daemon is idle and every new problem is one nothing will mend (a step
        run twice, a half-written output, a run never announced): those are reported; the
        others (not run yet, in flight, a receipt not yet ingested) must clear by the
        deadline, or count as lost / left in flight. The recovery counts from `injected`;
        the daemon's own share of it from `back`, when the cluster was whole again (from
        `injected` where the cluster was not touched)."""
        started = injected if injected is not None else time.monotonic()
        daemon = self.daemon
        deadline = time.monotonic() + ROUND_TIMEOUT
        ended = None
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
                # Not before the cluster is whole again: with nothing lost, the daemon's
                # last word may be the idle said before the fault.
                ended = max(self.idle_since(), back if back is not None else started)
                break
            time.sleep(0.2)  # polling, with a deadline
        ended = ended if ended is not None else time.monotonic()
        books = h.check_books(self.lab, with_status=True)  # (`sinagot status`: not timed)
        self.last_books = books
        recovery = ended - started
        share = ended - (back if back is not None else started)
        self.tally.recoveries.append(recovery)
        self.tally.shares.append(share)
        if recovery > self.tally.worst[0]:
            self.tally.worst = (recovery, number, kind)
        if share > self.tally.worst_share[0]:
            self.tally.worst_share = (share, number, kind)
        self.timeline(number, kind, started, back, ended, daemon, mark)
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
            cluster = f" (cluster whole after {back - started:4.1f} s)" if back else ""
            self.say(
                f"round {number:3d} {kind:17s} recovered in {recovery:5.1f} s{cluster}; "
                f"{len(books.due)} steps due, {books.ran} run; "
                f"{len(new)} new problem key(s)"
            )
        self.tally.rounds = number

    def idle_since(self) -> float:
        """When the daemon said `daemon.idle` last, as time.monotonic(): the moment the
        system was recovered (it has been quiet since), not the moment this poll saw it."""
        said = self.daemon.seen("daemon.idle")
        if not said:
            return time.monotonic()
        return time.monotonic() - (time.time() - h.epoch(said[-1]["timestamp"]))

    def timeline(
        self, number: int, kind: str, started: float, back: float | None, ended: float,
        daemon, mark: int,
    ) -> None:  # fmt: skip
        """One line of `rounds.jsonl` in the run's folder (kept with --keep): the round's
        moments as epoch seconds, and the daemon's events of the round other than steps',
        so that a slow recovery can be read afterwards."""
        offset = time.time() - time.monotonic()
        noise = ("step.submitted", "step.finished", "record.arriving")
        events = [e for e in daemon.events[mark:] if e.get("event") not in noise]
        line = {
            "round": number, "kind": kind, "injected": started + offset,
            "cluster_whole": back + offset if back else None, "recovered": ended + offset,
            "recovery_s": round(ended - started, 3), "daemon": daemon.number, "events": events,
        }  # fmt: skip
        with (self.lab.root / "rounds.jsonl").open("a") as out:
            out.write(json.dumps(line) + "\n")

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


def kill(pid: int) -> bool:
    """SIGKILL a process; whether it was still there to be killed."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def median(values: list[float]) -> float | None:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else None


def verdicts(tally: Tally, rounds: int) -> list[str]:
    """What makes the soak fail: a step lost, run twice or half-written, a daemon that
    died, a run never announced, a step started on a file still being copied, an overflow
    fault that overflowed nothing (it tested nothing); and, at
    TARGET_ROUNDS rounds or more (fewer are too few to judge), a recovery target missed."""
    failures = [f"{tally.count(name)} {name.replace('_', '-')}" for name in LOSSES
                if tally.count(name)]  # fmt: skip
    unannounced = tally.count("unreported") + tally.count("overreported")
    if unannounced:
        failures.append(f"{unannounced} run(s) not announced (or announced twice)")
    if tally.crashes:
        failures.append(f"{len(tally.crashes)} daemon crash(es)")
    if tally.early:
        failures.append(f"{len(tally.early)} step(s) started mid-copy")
    if tally.overflows < tally.faults["overflow"]:
        missed = tally.faults["overflow"] - tally.overflows
        failures.append(f"{missed} overflow fault(s) made no overflow (no watch.error)")
    if rounds >= TARGET_ROUNDS and tally.recoveries:
        if tally.worst[0] >= WORST_TARGET:
            failures.append(f"worst recovery {tally.worst[0]:.1f} s >= {WORST_TARGET:.0f} s")
        middle = median(tally.recoveries) or 0.0
        if middle >= MEDIAN_TARGET:
            failures.append(f"median recovery {middle:.1f} s >= {MEDIAN_TARGET:.0f} s")
    return failures


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
    share, share_round, share_kind = tally.worst_share
    middle = median(tally.recoveries)
    middle_share = median(tally.shares)
    applies = "" if tally.rounds >= TARGET_ROUNDS else f", judged at {TARGET_ROUNDS}+ rounds"
    skipped = ", ".join(f"{k} {n}" for k, n in sorted(tally.not_injected.items())) or "0"
    rows = [
        ("rounds", str(tally.rounds)),
        ("faults injected", ", ".join(f"{k} {tally.faults[k]}" for k in kinds)),
        ("faults not injected", f"{skipped} (nothing to inject them into; not counted)"),
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
        (
            "worst recovery time",
            f"{worst:.1f} s (round {worst_round}, {worst_kind}; "
            f"target < {WORST_TARGET:.0f} s{applies})",
        ),
        (
            "median recovery time",
            (f"{middle:.1f} s" if middle is not None else "-")
            + f" (target < {MEDIAN_TARGET:.0f} s{applies})",
        ),
        (
            "worst daemon share",
            f"{share:.1f} s (round {share_round}, {share_kind}; from the "
            "cluster whole again, or the fault, to recovered)",
        ),
        ("median daemon share", f"{middle_share:.1f} s" if middle_share is not None else "-"),
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
    failures = verdicts(tally, tally.rounds)
    print(f"FAILED: {'; '.join(failures)}" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
