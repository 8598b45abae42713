"""The fault harness's own verdict: `Lab.settle` fails at once only when the daemon really is
idle, never on a run a busy daemon has yet to announce.

A CI run failed `test_inotify_queue_overflow_is_reconciled[sigstop-flood]` at once with "ran,
never announced" while the daemon was at work: its last event was still the `daemon.idle`
said before the overflow (a `watch.error` does not take it back), workers had ended steps
before the daemon's `step.submitted` lines were written, and 14 steps were still marked
submitted in its state store. Here that moment is made certain instead of hoped for: the
daemon is SIGSTOPped right after its `daemon.idle`, and the test does what the daemon and a
worker would have done meanwhile (mark a unit's steps submitted, run them, leaving their
receipts).
"""

from __future__ import annotations

import contextlib
import os
import signal

from sinagot.engine import Engine
from sinagot.execute import named_jobs, run_chain
from sinagot.layout import Scope
from sinagot.runner import Outcome

from .harness import STEPS, Lab, quiet_books, stopped

GENERATION = "5e771e00"  # names the staged run (its receipts), as a daemon's submission would


def run_behind_the_daemon(lab: Lab, rid: str) -> None:
    """What a busy daemon's books hold between a step's end on a worker and its announcement:
    the steps marked submitted in the store, run, their receipts left."""
    with contextlib.closing(Engine(str(lab.ws), verbose=False)) as ws:
        chain = [ws.job(plan) for plan in ws.plan(ws.units(Scope(), [rid]), stale_only=True)]
        ws.store.mark_submitted([(job.unit, job.spec.name, GENERATION) for job in chain])
        results = run_chain(named_jobs(chain, GENERATION), lambda _result: None)
    assert [r.outcome for r in results] == [Outcome.DONE] * len(STEPS), results


def test_a_daemon_busy_since_its_last_idle_is_not_judged_idle(make_lab):
    """The daemon's last word is `daemon.idle`, but its store marks a unit's steps submitted
    and they ran unannounced: the books are read as those of a busy daemon (no BooksError at
    once), and once the daemon takes up the receipts (SIGHUP: a reload reconciles) they
    balance, each step run and announced once."""
    lab = make_lab(1)
    daemon = lab.daemon()
    lab.settle()
    with stopped(daemon.pid):
        (rid,) = lab.add([1])
        run_behind_the_daemon(lab, rid)
        assert daemon.idle(), "the premise: the daemon's events alone say idle"
        books, idle = quiet_books(lab, daemon)
        keys = [(rid, step) for step in STEPS]
        assert books.unreported == keys and books.in_flight == keys, books.report()
        assert not idle, f"steps marked submitted, yet judged idle:\n{books.report()}"
    os.kill(daemon.pid, signal.SIGHUP)
    books = lab.settle()
    for key in keys:
        assert (books.runs[key], books.announced[key]) == (1, 1), books.report()
