import pandas as pd

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    """Count the boats of each country in the harbor that day."""

    PATH_IN = ("raw", "{id}-raw.csv")
    PATH_OUT = ("computed", "{id}-count.csv")

    def run(self):
        df = pd.read_csv(self.path.input)
        df.groupby("country")["boat_name"].count().to_csv(self.path.output)
