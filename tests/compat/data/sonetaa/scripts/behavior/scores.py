from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    """Score a behavior trial (here: copy its report).

    0.3's test script had no run(): 0.3 logged "Run finished" for a step that wrote
    nothing. Sinagot fails such a step (its output is missing), so this one writes.
    """

    PATH_IN = ("HDC", "{id}", "Trial1_report.txt")
    PATH_OUT = ("PROCESSED", "{id}", "HDC", "behavior-scores.csv")

    def run(self):
        self.path.output.write_text(self.path.input.read_text())

    def test_modif(self):
        return "test-before-modif"
