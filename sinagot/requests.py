"""Run requests: how `sinagot run` asks a running sinagotd to run steps.

The daemon is the workspace's only writer, so a `sinagot run` while it runs does not run
anything itself: it leaves a small JSON file in the state folder, which the daemon reads,
plans (with `force` and `step` as asked) and deletes.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

FOLDER = "requests"


@dataclass(frozen=True)
class RunRequest:
    records: list[str] | None = None
    task: str | None = None
    modality: str | None = None
    step: str | None = None
    force: bool = False

    def write(self, state_dir: Path) -> Path:
        folder = state_dir / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        temp = folder / f".{name}"
        temp.write_text(json.dumps(asdict(self)))
        final = folder / f"{name}.json"
        os.replace(temp, final)
        return final


def take_requests(state_dir: Path) -> list[RunRequest]:
    """The pending requests, oldest first, each removed as it is read (a bad one too)."""
    folder = state_dir / FOLDER
    try:
        entries = sorted(
            (e for e in os.scandir(folder) if e.name.endswith(".json")),
            key=lambda e: e.stat().st_mtime_ns,
        )
    except FileNotFoundError:
        return []
    requests = []
    for entry in entries:
        try:
            data = json.loads(Path(entry.path).read_text())
            requests.append(RunRequest(**data))
        except (OSError, ValueError, TypeError):
            pass  # unreadable: dropped below rather than retried forever
        Path(entry.path).unlink(missing_ok=True)
    return requests
