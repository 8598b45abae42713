import matplotlib

matplotlib.use("Agg")  # files only, no display

import mne
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sinagot import ScriptTemplate

EVENT_ID = {"standard": 1, "deviant": 2}
TMIN, TMAX = -0.1, 0.5  # s around each tone
PEAK_WINDOW = (0.08, 0.25)  # s: where N1 and the mismatch negativity peak
REJECT = {"eeg": 150e-6}  # V peak to peak: drop epochs with artefacts
H_FREQ = 30.0  # Hz: ERPs are read below 30 Hz


class Script(ScriptTemplate):
    """Event-related potentials of the oddball: standard, deviant, and their difference
    (the mismatch negativity), with the peak latency and amplitude of each, and a figure."""

    PATH_IN = {
        "raw": ("derivatives", "sinagot", "{id}", "ses-01", "eeg",
                "{id}_ses-01_task-{task}_desc-preproc_eeg.fif"),
        "events": ("{id}", "ses-01", "eeg", "{id}_ses-01_task-{task}_events.tsv"),
    }  # fmt: skip
    PATH_OUT = {
        "evoked": ("derivatives", "sinagot", "{id}", "ses-01", "eeg",
                   "{id}_ses-01_task-{task}_ave.fif"),
        "peaks": ("derivatives", "sinagot", "{id}", "ses-01", "eeg",
                  "{id}_ses-01_task-{task}_desc-peaks_erp.tsv"),
        "figure": ("derivatives", "sinagot", "{id}", "ses-01", "eeg",
                   "{id}_ses-01_task-{task}_erp.png"),
    }  # fmt: skip

    def run(self):
        raw = mne.io.read_raw_fif(self.path.input["raw"], preload=True, verbose="error")
        raw.filter(None, H_FREQ, verbose="error")
        table = pd.read_csv(self.path.input["events"], sep="\t")
        table = table[table.trial_type.isin(EVENT_ID)]
        samples = np.round(table.onset.to_numpy() * raw.info["sfreq"]).astype(int)
        events = np.column_stack(
            [samples + raw.first_samp, np.zeros_like(samples), table.trial_type.map(EVENT_ID)]
        )
        epochs = mne.Epochs(
            raw, events, EVENT_ID, tmin=TMIN, tmax=TMAX, baseline=(None, 0),
            reject=REJECT, preload=True, verbose="error",
        )  # fmt: skip
        standard, deviant = epochs["standard"].average(), epochs["deviant"].average()
        mismatch = mne.combine_evoked([deviant, standard], weights=[1, -1])
        mismatch.comment = "mismatch"
        evokeds = {"standard": standard, "deviant": deviant, "mismatch": mismatch}
        mne.write_evokeds(self.path.output["evoked"], list(evokeds.values()), verbose="error")

        rows = []
        for condition, evoked in evokeds.items():
            window = (evoked.times >= PEAK_WINDOW[0]) & (evoked.times <= PEAK_WINDOW[1])
            for channel, trace in zip(evoked.ch_names, evoked.data * 1e6, strict=True):
                at = np.flatnonzero(window)[trace[window].argmin()]  # most negative
                rows.append(
                    {
                        "condition": condition,
                        "channel": channel,
                        "latency_ms": round(1000 * evoked.times[at], 1),
                        "amplitude_uv": round(float(trace[at]), 3),
                        "n_epochs": round(evoked.nave, 1),  # mismatch: the effective number
                    }
                )
        peaks = pd.DataFrame(rows)
        peaks.to_csv(self.path.output["peaks"], sep="\t", index=False)
        self.figure(evokeds, peaks)
        fz = peaks[(peaks.condition == "mismatch") & (peaks.channel == "Fz")].iloc[0]
        self.logger.info(
            "%d standard, %d deviant epochs; mismatch negativity at Fz: %.2f µV at %.0f ms",
            standard.nave, deviant.nave, fz.amplitude_uv, fz.latency_ms,
        )  # fmt: skip

    def figure(self, evokeds, peaks):
        fig = Figure(figsize=(9, 3.6), layout="constrained")
        at_fz, by_channel = fig.subplots(1, 2, sharey=True)
        labels = {
            "standard": f"standard (n={evokeds['standard'].nave})",
            "deviant": f"deviant (n={evokeds['deviant'].nave})",
            "mismatch": "deviant - standard",
        }
        colours = {"standard": "tab:blue", "deviant": "tab:orange", "mismatch": "black"}
        fz = evokeds["standard"].ch_names.index("Fz")
        for condition, evoked in evokeds.items():
            width = 2.0 if condition == "mismatch" else 1.2
            trace = 1e6 * evoked.data[fz]
            style = {"color": colours[condition], "lw": width, "label": labels[condition]}
            at_fz.plot(1000 * evoked.times, trace, **style)
        peak = peaks[(peaks.condition == "mismatch") & (peaks.channel == "Fz")].iloc[0]
        label = f"MMN {peak.amplitude_uv:.1f} µV at {peak.latency_ms:.0f} ms"
        at_fz.plot(peak.latency_ms, peak.amplitude_uv, "v", color="crimson", label=label)
        mismatch = evokeds["mismatch"]
        for channel, trace in zip(mismatch.ch_names, 1e6 * mismatch.data, strict=True):
            by_channel.plot(1000 * mismatch.times, trace, label=channel, lw=1.2)
        for ax in (at_fz, by_channel):
            ax.axvspan(*(1000 * np.array(PEAK_WINDOW)), color="0.9")
            ax.axhline(0, color="0.5", lw=0.6)
            ax.axvline(0, color="0.5", lw=0.6)
            ax.set_xlabel("time from tone (ms)")
            ax.legend(fontsize="small")
        at_fz.set_ylabel("amplitude (µV)")
        at_fz.set_title(f"{self.id} task-{self.task}: ERP at Fz", loc="left")
        by_channel.set_title("deviant - standard, per channel", loc="left")
        fig.savefig(self.path.output["figure"], format="png", dpi=90)
