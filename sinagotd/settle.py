"""Debouncing in one place: a key is acted on once nothing happened to it for a while.

Pure and clock-injected: the loop calls `touch` as events arrive and `due` on each tick.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Settler(Generic[K]):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[K, float] = {}

    def touch(self, key: K, now: float) -> None:
        self._last[key] = now

    def due(self, now: float) -> list[K]:
        """Keys quiet for `seconds`, forgotten as they are returned."""
        ready = [key for key, last in self._last.items() if now - last >= self.seconds]
        for key in ready:
            del self._last[key]
        return ready

    def next_due(self) -> float | None:
        return min(self._last.values()) + self.seconds if self._last else None

    def keys(self) -> frozenset[K]:
        """What is waiting to settle."""
        return frozenset(self._last)

    def __contains__(self, key: object) -> bool:
        """Is `key` waiting to settle? (Cheaper than `key in keys()` in a loop.)"""
        return key in self._last

    def __len__(self) -> int:
        return len(self._last)
