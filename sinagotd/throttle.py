"""At most one event of a kind a while: a flood of bad input must not become a flood of
events (or of work). Pure and clock-injected, like `Settler`."""

from __future__ import annotations

from collections.abc import Hashable

_PRUNE_ABOVE = 1024


class Throttle:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._next: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def allow(self, key: Hashable, now: float) -> int | None:
        """None while `key` is held back (counted); otherwise how many were held back
        since the last one let through."""
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if len(self._next) > _PRUNE_ABOVE:  # keys are paths and peers: forget quiet ones
            self._next = {k: t for k, t in self._next.items() if t > now}
        self._next[key] = now + self.seconds
        return self._held.pop(key, 0)
