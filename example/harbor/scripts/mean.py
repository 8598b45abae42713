import pandas as pd

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    """Mean boat size of each country in the harbor that day."""

    PATH_IN = ("raw", "{id}-raw.csv")
    PATH_OUT = ("computed", "{id}-mean.csv")

    def run(self):
        df = pd.read_csv(self.path.input)
        df.groupby("country")["size"].mean().to_csv(self.path.output)
