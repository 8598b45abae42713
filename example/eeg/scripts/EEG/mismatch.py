import json

import pandas as pd

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    """Mismatch negativity: mean amplitude after deviant minus after standard stimuli."""

    PATH_IN = {
        "eeg": ("{id}", "{task}", "EEG", "processed", "clean.csv"),
        "events": ("{id}", "{task}", "EEG", "events.csv"),
    }
    PATH_OUT = ("{id}", "{task}", "EEG", "processed", "mismatch.json")

    def run(self):
        clean = pd.read_csv(self.path.input["eeg"], index_col="time")
        events = pd.read_csv(self.path.input["events"])
        amplitude = {}
        for kind, rows in events.groupby("kind"):
            windows = [clean.loc[t + 0.1 : t + 0.25] for t in rows["time"]]
            amplitude[kind] = float(pd.concat(windows)["Fz"].mean())
        with open(self.path.output, "w") as fh:
            json.dump({"mmn_fz": amplitude["deviant"] - amplitude["standard"]}, fh, indent=2)
