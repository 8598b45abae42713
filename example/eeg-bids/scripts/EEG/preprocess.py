import mne

from sinagot import ScriptTemplate

LINE_FREQ = 50.0  # Hz, mains in Europe (the recordings' PowerLineFrequency)
BAND = (0.5, 45.0)  # Hz: drift below, muscle and line noise above
SFREQ = 128.0  # Hz after filtering: plenty below 45 Hz, and half the disk


class Script(ScriptTemplate):
    """Band-pass and notch filter one recording, resample it, save it as FIF."""

    PATH_IN = ("{id}", "ses-01", "eeg", "{id}_ses-01_task-{task}_eeg.edf")
    PATH_OUT = (
        "derivatives", "sinagot", "{id}", "ses-01", "eeg",
        "{id}_ses-01_task-{task}_desc-preproc_eeg.fif",
    )  # fmt: skip

    def run(self):
        raw = mne.io.read_raw_edf(self.path.input, preload=True, verbose="error")
        raw.notch_filter(LINE_FREQ, verbose="error")
        raw.filter(*BAND, verbose="error")
        raw.resample(SFREQ, verbose="error")
        raw.save(self.path.output, verbose="error")
        self.logger.info(
            "%d channels, %.0f s; filtered %g-%g Hz, notch %g Hz, resampled to %g Hz",
            len(raw.ch_names), raw.times[-1], *BAND, LINE_FREQ, SFREQ,
        )  # fmt: skip
