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
