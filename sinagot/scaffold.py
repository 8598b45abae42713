"""`sinagot init`: a new workspace that loads and runs as it is."""

from __future__ import annotations

from pathlib import Path

import tomlkit

from .config import DEFAULT_FILE
from .errors import SinagotError

EXAMPLE_STEP = '''from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    """An example step: count the lines of each recording. Edit or replace it."""

    PATH_IN = ("raw", "{id}.csv")  # relative to the dataset folder; {id} is the record ID
    PATH_OUT = ("processed", "{id}-lines.txt")

    def run(self):
        with open(self.path.input) as fh:
            lines = sum(1 for _ in fh)
        self.logger.info("%d lines", lines)
        with open(self.path.output, "w") as fh:  # a temporary name, renamed on success
            fh.write(f"{lines}\\n")
'''


def create(path: Path) -> Path:
    """Write workspace.toml, dataset/raw/ and scripts/count_lines.py under `path`."""
    config = path / DEFAULT_FILE
    if config.exists():
        raise SinagotError(f"{config} already exists; not overwriting it")
    doc = tomlkit.document()
    doc.add(
        tomlkit.comment("A sinagot workspace. Reference: the Configuration section of the README.")
    )
    doc.add(tomlkit.nl())
    records = tomlkit.table()
    records.add(tomlkit.comment("A record ID must match this regex, whole."))
    records.add("id_pattern", "[A-Za-z0-9][A-Za-z0-9_-]*")
    doc.add("records", records)
    steps = tomlkit.table()
    steps.add(tomlkit.comment("Steps run in this order for each record; each is scripts/<name>.py"))
    steps.add("scripts", ["count_lines"])
    doc.add("steps", steps)
    paths = tomlkit.table()
    paths.add(tomlkit.comment("Relative to this file."))
    paths.add("dataset", "./dataset")
    paths.add("scripts", "./scripts")
    doc.add("path", paths)
    run = tomlkit.table()
    run.add(tomlkit.comment('"main_process", or "dask" to run steps on a Dask cluster'))
    run.add("mode", "main_process")
    doc.add("run", run)

    (path / "dataset" / "raw").mkdir(parents=True, exist_ok=True)
    (path / "scripts").mkdir(parents=True, exist_ok=True)
    step = path / "scripts" / "count_lines.py"
    if not step.exists():
        step.write_text(EXAMPLE_STEP)
    config.write_text(tomlkit.dumps(doc))
    return config
