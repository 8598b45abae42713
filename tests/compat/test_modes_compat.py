"""A 0.3 workspace runs alike in the main process and with `[run] mode = "dask"`.

The sonetaa workspace.toml says `mode = "dask"` with 0.3's `[dask.scheduler]` and
`[dask.cluster]` tables (two worker processes); custom_conf.toml switches it back to the main
process. One embedded cluster for the whole module: it is the slow part of the suite.
"""

from __future__ import annotations

from compat.conftest import ID, IDS, copy_data, dataset_files, log_lines
from sinagot import StepStatus, Workspace

OTHER = "REC-200320-A"
#: What a full run adds to the committed sonetaa dataset.
NEW_FILES = {
    **{
        f"PREPROCESSED/{rid}-{task}-epo.fif.gz": "done"
        for rid in IDS
        for task in ("RS", "MMN", "HDC")
    },
    **{f"PROCESSED/{rid}/alpha": "10.5\n" for rid in IDS},
    f"PROCESSED/{ID}/HDC/norm-scores.csv": "name,value\naccuracy,0.75\nspeed,1.5\n",
}


def run_sonetaa(ws: Workspace) -> dict[str, str]:
    """Run every step, then force REC-200320-A's behavior steps (0.3's test_run_force)."""
    before = dataset_files(ws.data_path)
    norm = ws.behavior.get(OTHER).steps.get("scores_norm").script.path.output
    assert ws.steps.run() is None
    added = {k: v for k, v in dataset_files(ws.data_path).items() if k not in before}
    assert added == NEW_FILES
    assert set(ws.steps.status()["step_status"]) == {StepStatus.DONE}
    assert norm.read_text() == "before force\n"
    ws.behavior.get(OTHER).steps.run(force=True)
    assert norm.read_text() == "bla\n"
    return dataset_files(ws.data_path)


def test_dask_mode_gives_the_main_process_results(tmp_path):
    local = copy_data("sonetaa", tmp_path / "local")
    with Workspace([local, local / "custom_conf.toml"], verbose=False) as ws:
        assert ws.config["run"]["mode"] == "main_process"
        local_files = run_sonetaa(ws)

    distributed = copy_data("sonetaa", tmp_path / "dask")
    # A site file merged on top: any free port for the dashboard (another cluster may run).
    site = tmp_path / "site.toml"
    site.write_text('[dask]\ndashboard_address = ":0"\n')
    with Workspace([distributed, site], verbose=False) as ws:
        assert ws.config["run"]["mode"] == "dask"
        assert ws.config["dask"]["cluster"]["n_workers"] == 2
        dask_files = run_sonetaa(ws)
        for rid in IDS:
            assert list(ws.records.get(rid).logs()["record_id"].unique()) == [rid]

    assert dask_files == local_files
    for rid in IDS:
        lines = [
            line for line in log_lines(distributed / "dataset", rid) if "workspace_version" in line
        ]
        assert lines
        assert {line["workspace_version"] for line in lines} == {"0.1.0"}  # no custom_conf
        assert {line["record_id"] for line in lines} == {rid}
