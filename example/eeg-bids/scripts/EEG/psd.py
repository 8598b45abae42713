import matplotlib

matplotlib.use("Agg")  # files only, no display

import mne
import pandas as pd
from matplotlib.figure import Figure
from scipy.integrate import trapezoid

from sinagot import ScriptTemplate

ALPHA = (8.0, 12.0)  # Hz
FMIN, FMAX = 1.0, 45.0


class Script(ScriptTemplate):
    """Welch power spectrum of a recording: alpha-band power per channel, and a figure."""

    PATH_IN = (
        "derivatives", "sinagot", "{id}", "ses-01", "eeg",
        "{id}_ses-01_task-{task}_desc-preproc_eeg.fif",
    )  # fmt: skip
    PATH_OUT = {
        "alpha": ("derivatives", "sinagot", "{id}", "ses-01", "eeg",
                  "{id}_ses-01_task-{task}_desc-alpha_power.tsv"),
        "figure": ("derivatives", "sinagot", "{id}", "ses-01", "eeg",
                   "{id}_ses-01_task-{task}_psd.png"),
    }  # fmt: skip

    def run(self):
        raw = mne.io.read_raw_fif(self.path.input, preload=True, verbose="error")
        sfreq = raw.info["sfreq"]
        spectrum = raw.compute_psd(
            method="welch", fmin=FMIN, fmax=FMAX, n_fft=int(4 * sfreq),
            n_overlap=int(2 * sfreq), verbose="error",
        )  # fmt: skip  # 4 s windows, half overlapping: 0.25 Hz resolution
        psd, freqs = spectrum.get_data(return_freqs=True)
        psd = psd * 1e12  # V²/Hz -> µV²/Hz
        band = (freqs >= ALPHA[0]) & (freqs <= ALPHA[1])
        alpha = trapezoid(psd[:, band], freqs[band], axis=1)  # µV²
        table = pd.DataFrame(
            {
                "channel": raw.ch_names,
                "alpha_power_uv2": alpha,
                "relative_alpha": alpha / trapezoid(psd, freqs, axis=1),
                "peak_alpha_hz": freqs[band][psd[:, band].argmax(axis=1)],
            }
        )
        table.to_csv(self.path.output["alpha"], sep="\t", index=False, float_format="%.4g")
        self.figure(raw.ch_names, freqs, psd, table)
        strongest = table.loc[table.alpha_power_uv2.idxmax()]
        self.logger.info(
            "alpha strongest at %s: %.1f µV² (peak %.1f Hz)",
            strongest.channel, strongest.alpha_power_uv2, strongest.peak_alpha_hz,
        )  # fmt: skip

    def figure(self, channels, freqs, psd, table):
        fig = Figure(figsize=(9, 3.6), layout="constrained")
        spectra, bars = fig.subplots(1, 2, width_ratios=(2, 1))
        for channel, row in zip(channels, psd, strict=True):
            spectra.semilogy(freqs, row, label=channel, lw=1.2)
        spectra.axvspan(*ALPHA, color="gold", alpha=0.3, label="alpha 8-12 Hz")
        spectra.set(xlabel="frequency (Hz)", ylabel="PSD (µV²/Hz)", xlim=(FMIN, FMAX))
        spectra.set_title(f"{self.id} task-{self.task}: Welch PSD", loc="left")
        spectra.legend(fontsize="small", ncols=2)
        colours = ["tab:red" if c.startswith("O") else "tab:grey" for c in table.channel]
        bars.barh(table.channel, table.alpha_power_uv2, color=colours)
        bars.invert_yaxis()
        bars.set(xlabel="alpha power (µV²)", title="8-12 Hz per channel")
        fig.savefig(self.path.output["figure"], format="png", dpi=90)
