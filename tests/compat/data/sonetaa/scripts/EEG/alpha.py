from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = ("PREPROCESSED", "{id}-{task}-epo.fif.gz")
    PATH_OUT = ("PROCESSED", "{id}", "alpha")

    def run(self):
        self.path.output.write_text("10.5\n")
