import pandas as pd

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    """Re-reference each channel to the common average and drop the DC offset."""

    PATH_IN = ("{id}", "{task}", "EEG", "raw.csv")
    PATH_OUT = ("{id}", "{task}", "EEG", "processed", "clean.csv")

    def run(self):
        raw = pd.read_csv(self.path.input, index_col="time")
        clean = raw.sub(raw.mean(axis=1), axis=0)
        clean = clean - clean.mean()
        self.logger.info("%d samples, %d channels", len(clean), clean.shape[1])
        clean.to_csv(self.path.output)
