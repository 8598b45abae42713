"""Units whose steps could not run (their worker died, an output could not be written): when
each may try again, how long it waited before, and how many times in a row it could not.

Pure and clock-injected, so that the daemon's loop only asks and the rules are tested alone.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

CEILING = 3600.0  # seconds: the longest wait between two tries


class Retries(Generic[K]):
    def __init__(self, ceiling: float = CEILING) -> None:
        self.ceiling = ceiling
        self._at: dict[K, float] = {}  # when to try again
        self._wait: dict[K, float] = {}  # the wait before the last try
        self._attempts: dict[K, int] = {}  # tries in a row that could not run

    def attempt(self, key: K, now: float, first: float, most: int) -> int:
        """One more try of `key` could not run: its count in a row. Below `most`, the next
        try waits twice as long as the last (`first` the first time, up to the ceiling);
        at `most`, the key is forgotten: the caller gives up."""
        attempts = self._attempts.get(key, 0) + 1
        if attempts >= most:
            self.forget(key)
            return attempts
        self._attempts[key] = attempts
        wait = min(self._wait.get(key, first / 2) * 2, self.ceiling)
        self._wait[key] = wait
        self._at[key] = now + wait
        return attempts

    def due(self, now: float) -> list[K]:
        """Keys whose wait is over (still held until `cancel`ed or `forget`ten)."""
        return [key for key, when in self._at.items() if now >= when]

    def cancel(self, key: K) -> None:
        """Its retry is moot (planned again anyway); the count in a row stays."""
        self._at.pop(key, None)

    def forget(self, key: K) -> None:
        """It ran, or its files changed: the next failure starts from scratch."""
        self._at.pop(key, None)
        self._wait.pop(key, None)
        self._attempts.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._at


class Reconnects:
    """When to try a lost Dask scheduler again, and when to say it is still unreachable.

    A try that is refused costs a millisecond (nothing listens: the scheduler is being
    restarted), so tries come every `every` seconds and find it back within that: a wait
    that doubles finds it up to one outage late (back 15 s after, found 15 s later). A try
    that waits for an answer blocks the daemon's loop meanwhile: the next comes four times
    that long after, so that tries take at most a fifth of the loop's time, up to the
    ceiling. Said at the first failure, when the error changes, and at most once per
    `quiet` seconds otherwise: a long outage is not a line a second.
    """

    def __init__(self, every: float = 1.0, ceiling: float = 60.0, quiet: float = 60.0) -> None:
        self.every = every
        self.ceiling = ceiling
        self.quiet = quiet
        self.failures = 0
        self._said: tuple[str, float] | None = None  # (error, when) last said

    def failed(self, now: float, took: float, error: str) -> tuple[float, bool]:
        """A try that began at `now` failed after `took` seconds with `error`: how long to
        wait before the next, and whether to say so."""
        self.failures += 1
        wait = min(max(self.every, 4 * took), self.ceiling)
        say = self._said is None or self._said[0] != error or now - self._said[1] >= self.quiet
        if say:
            self._said = (error, now)
        return wait, say
