import json

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    """The clinical data of the session, copied beside each task's results."""

    PATH_IN = ("{id}", "clinical.json")
    PATH_OUT = ("{id}", "{task}", "clinical", "summary.json")

    def run(self):
        with open(self.path.input) as fh:
            clinical = json.load(fh)
        summary = {"record": self.id, "task": self.task, **clinical}
        with open(self.path.output, "w") as fh:
            json.dump(summary, fh, indent=2)
