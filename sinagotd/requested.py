"""`sinagot run` while the daemon runs: what a request names, and what its reply says.

The request server's threads only put requests (and the refusals they made themselves) on
the loop's queue; the loop checks each against the workspace, plans, queues and answers.
What is decided (the check, the reply, what waits for a busy unit to land) reads only the
workspace and what the loop gives it, so that it is tested alone (tests/test_requested.py).
`RunDesk` is the loop's side of it, in the loop's thread: it takes what the server handed
over, says `run.requested` or `run.refused`, and asks the loop (late-bound, as
sinagotd/flights.py's `Loop` is) to queue and submit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sinagot.engine import Engine
from sinagot.layout import Scope, Unit
from sinagot.planner import StepPlan
from sinagot.requests import Handoff, Peer, RunRequest

if TYPE_CHECKING:
    from .backlog import Backlog
    from .flights import Flights

REQUEST_TIMEOUT = 10.0  # seconds a `sinagot run` request may wait for the loop to take it


@dataclass(frozen=True)
class RequestRefused:
    """The request server refused a request before it reached the loop (logged by the loop)."""

    peer: Peer
    error: str


def hand_over(
    put: Callable[[Handoff], object],
    request: RunRequest,
    peer: Peer,
    timeout: float = REQUEST_TIMEOUT,
) -> dict[str, object]:
    """A request server thread: hand the request to the loop, wait for its answer."""
    handoff = Handoff(request, peer)
    put(handoff)
    return handoff.wait(timeout)


def who(peer: Peer) -> dict[str, int]:
    """The asking process, as the events name it."""
    return {"peer_pid": peer.pid, "peer_uid": peer.uid}


def refusal_key(peer: Peer, error: str) -> str:
    """What `run.refused` is throttled by: one user's flood of one mistake is said once a
    second, and another user's mistake is still said."""
    return f"{peer.uid}:{error}"


def check(ws: Engine, request: RunRequest) -> tuple[Scope, list[str] | None]:
    """The scope and record IDs (None: every record) a request names; `ValueError` naming
    the task, modality, record or step that does not exist here."""
    scope = ws.layout.scope(request.task, request.modality)
    records = request.records
    ids = None if records is None else [ws.check_id(r) for r in records]
    if request.step is not None and request.step not in ws.layout.step_names(scope):
        names = ", ".join(ws.layout.step_names(scope))
        raise ValueError(f"no step {request.step!r} here; steps: {names}")
    return scope, ids


@dataclass(frozen=True)
class Asked:
    """What the loop made of a request: the units it names, the plans queued for those not
    on the cluster, those that are (`busy`, as named: a record asked twice counts twice)
    and the generation in flight of each (what `sinagot run --wait` follows)."""

    request: RunRequest
    units: Sequence[Unit]
    plans: Sequence[StepPlan]
    busy: Sequence[Unit]
    generations: Mapping[Unit, str]

    def fields(self) -> dict[str, object]:
        """`run.requested`'s keys (besides the peer's)."""
        request = self.request
        return {
            "units": len(self.units), "steps": len(self.plans), "busy": len(self.busy),
            "force": request.force, "step": request.step, "wait": request.wait,
        }  # fmt: skip

    def later(self) -> dict[Unit, tuple[bool, str | None]]:
        """Busy units to plan again as asked when they land (force, step); none when the
        request asks nothing a plan would not do anyway (landing replans those changed)."""
        if not (self.request.force or self.request.step is not None):
            return {}
        return dict.fromkeys(self.busy, (self.request.force, self.request.step))

    def reply(self) -> dict[str, object]:
        """What `sinagot run` is told. Asked to (`--wait`), it also names them:
        `queued_steps` [[record_id, task, modality, step], ...], and `busy_units`
        [[record_id, task, modality, generation in flight], ...], the units on the cluster
        already, planned again as asked when they land."""
        reply: dict[str, object] = {
            "ok": True, "units": len(self.units), "steps": len(self.plans), "busy": len(self.busy),
        }  # fmt: skip
        if self.request.wait:
            reply["queued_steps"] = [[*p.unit, p.step.name] for p in self.plans]
            reply["busy_units"] = [[*u, flying] for u, flying in self.generations.items()]
        return reply


def refused_reply(error: str) -> dict[str, object]:
    """What `sinagot run` is told when its request names nothing that exists here."""
    return {"ok": False, "error": error}


class RunDesk:
    """`sinagot run` while the daemon runs, as the loop answers it: the server's threads
    hand requests over (`on_request`, `on_refused`), the loop takes them (`take`,
    `refused`) between two messages, plans as asked and queues."""

    def __init__(
        self,
        books: Backlog[Unit, Any, Any],
        flights: Flights,
        log: Any,
        *,
        engine: Callable[[], Engine],  # the workspace (a reload replaces it)
        put: Callable[[object], object],  # the loop's queue
        say: Callable[..., None],  # an event, throttled by kind and key (the loop's `_say`)
        queue: Callable[..., int],  # queue these plans, the units replanned dropped first
        fill: Callable[[], None],  # submit what waits, if the loop may
    ) -> None:
        self.books = books
        self.flights = flights
        self.log = log
        self.engine = engine
        self.put = put
        self.say = say
        self.queue = queue
        self.fill = fill

    def on_request(self, request: RunRequest, peer: Peer) -> dict[str, object]:
        """A request server thread: hand the request to the loop, wait for its answer."""
        return hand_over(self.put, request, peer)

    def on_refused(self, peer: Peer, error: str) -> None:
        """A request server thread refused a request: the loop says so (`refused`)."""
        self.put(RequestRefused(peer, error))

    def take(self, handoff: Handoff) -> None:
        """A request handed over, unless its asker gave up waiting: answered whatever
        happens (the loop's own failure is said by the loop)."""
        if handoff.take():
            reply: dict[str, object] = {"ok": False, "error": "the daemon failed on this request"}
            try:
                reply = self.requested(handoff.request, handoff.peer)
            finally:
                handoff.answer(reply)

    def refused(self, peer: Peer, error: str) -> None:
        key = refusal_key(peer, error)  # one user's flood of one mistake: once a second
        self.say("run.refused", self.log.warning, key=key, error=error, **who(peer))

    def requested(self, request: RunRequest, peer: Peer) -> dict[str, object]:
        """`sinagot run` while the daemon runs: plan as asked (forced, one step) and queue;
        the reply says what was queued, or why nothing was. Asked to (`sinagot run --wait`),
        it also names them: `queued_steps` [[record_id, task, modality, step], ...], and
        `busy_units` [[record_id, task, modality, generation in flight], ...], the units on
        the cluster already, planned again as asked when they land (`Asked.reply`)."""
        ws = self.engine()
        try:
            scope, ids = check(ws, request)
        except ValueError as exc:
            self.refused(peer, str(exc))
            return refused_reply(str(exc))
        units = ws.units(scope, ids)
        free = self.books.split(units)  # those in flight are planned again when they land
        busy = [u for u in units if u in self.books.flights]
        generations = {u: self.books.flights[u].generation for u in busy}  # what --wait follows
        plans = ws.plan(free, force=request.force, only=request.step, stale_only=True)
        asked = Asked(request, units, plans, busy, generations)
        self.log.info("run.requested", **asked.fields(), **who(peer))
        self.flights.later.update(asked.later())  # forced or one step: applied as each lands
        self.queue(plans, replanned=free)
        self.fill()
        return asked.reply()
