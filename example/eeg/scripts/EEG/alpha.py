import json

import numpy as np
import pandas as pd

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    """Alpha-band (8-12 Hz) power per channel of the resting-state recording."""

    PATH_IN = ("{id}", "{task}", "EEG", "processed", "clean.csv")
    PATH_OUT = ("{id}", "{task}", "EEG", "processed", "alpha.json")

    def run(self):
        clean = pd.read_csv(self.path.input, index_col="time")
        rate = 1 / np.median(np.diff(clean.index.to_numpy()))
        freqs = np.fft.rfftfreq(len(clean), d=1 / rate)
        band = (freqs >= 8) & (freqs <= 12)
        power = {
            channel: float((np.abs(np.fft.rfft(clean[channel].to_numpy())) ** 2)[band].mean())
            for channel in clean.columns
        }
        with open(self.path.output, "w") as fh:
            json.dump(power, fh, indent=2)
