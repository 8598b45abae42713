"""A stand-in for the daemon's structlog logger, for tests of its parts without a daemon:
structlog's own `CapturingLogger` (any level), read as (level, event, fields), what a
person reads in the journal."""

from __future__ import annotations

from typing import Any

from structlog.testing import CapturingLogger


class Said(CapturingLogger):
    @property
    def lines(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Each event said, in order: (level, event, fields)."""
        return [(call.method_name, call.args[0], call.kwargs) for call in self.calls]

    def events(self) -> list[str]:
        """The names of the events said, in order."""
        return [call.args[0] for call in self.calls]

    def named(self, event: str) -> list[dict[str, Any]]:
        """The fields of each `event` said."""
        return [call.kwargs for call in self.calls if call.args[0] == event]
