import json

import pandas as pd

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    """Coordination scores of the human dynamic clamp trials."""

    PATH_IN = ("{id}", "{task}", "behavior", "trials.csv")
    PATH_OUT = ("{id}", "{task}", "behavior", "scores.json")

    def run(self):
        trials = pd.read_csv(self.path.input)
        scores = {
            "trials": len(trials),
            "mean_phase_error": float(trials["phase_error"].abs().mean()),
            "success_rate": float(trials["success"].mean()),
        }
        with open(self.path.output, "w") as fh:
            json.dump(scores, fh, indent=2)
