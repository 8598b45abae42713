"""Running steps on Dask: an embedded LocalCluster and a real external scheduler.

Everything here runs real processes on real files. One external cluster (a `dask scheduler`
and two `dask worker` subprocesses) serves the whole module; the embedded-cluster tests start
their own small LocalCluster, as a user's `[run] mode = "dask"` does.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_example
from faults.harness import alive

from sinagot import StepStatus, Workspace
from sinagot.execute import DaskExecutor, chain_token, task_key
from sinagot.layout import Scope

HARBOR_IDS = ("REC-20200601", "REC-20200602", "REC-20200603")
EEG_IDS = ("REC-200331-A", "REC-200331-B", "REC-200401-A")
#: A unit's task: its steps, its unit, the token naming this run of it.
KEY = re.compile(r"(?P<steps>(count|mean)(\+(count|mean))*)-(?P<unit>REC-2020060[1-3])-[0-9a-f]{8}")


# -- helpers -----------------------------------------------------------------------------


def use_dask(workspace: Path, **dask: object) -> None:
    """Switch a workspace to `[run] mode = "dask"` with these `[dask]` settings."""
    settings = {"dashboard_address": ":0", **dask}
    lines = ["", "[run]", 'mode = "dask"', "", "[dask]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    with (workspace / "workspace.toml").open("a") as fh:
        fh.write("\n".join(lines) + "\n")


def results(workspace: Path) -> dict[str, bytes]:
    """Every file of the dataset but the logs and the state store: {relative path: bytes}."""
    dataset = workspace / "dataset"
    out = {}
    for path in sorted(dataset.rglob("*")):
        rel = path.relative_to(dataset)
        if path.is_file() and rel.parts[0] not in ("LOG", ".sinagot"):
            out[str(rel)] = path.read_bytes()
    return out


def status_rows(ws: Workspace) -> list[tuple]:
    frame = ws.steps.status()
    rows = frame[["record_id", "task", "modality", "step_label", "step_status"]]
    return sorted((r[0], r[1] or "", r[2] or "", r[3], int(r[4])) for r in rows.itertuples(False))


def statuses(ws: Workspace) -> dict[tuple, StepStatus]:
    """{(record_id, task, modality, step_label): status} of every step of the workspace."""
    return {
        (r.record_id, r.task, r.modality, r.step_label): StepStatus(r.step_status)
        for r in ws.steps.status().itertuples()
    }


def log_entries(workspace: Path, record_id: str) -> list[dict]:
    path = workspace / "dataset" / "LOG" / f"{record_id}.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_failing_script(path: Path, condition: str, error: str) -> None:
    """Make a script raise ValueError(error) when `condition` holds, run as before otherwise."""
    source = path.read_text()
    marker = "    def run(self):\n"
    assert marker in source
    patch = f"{marker}        if {condition}:\n            raise ValueError({error!r})\n"
    path.write_text(source.replace(marker, patch))


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def sinagot_command() -> list[str]:
    exe = shutil.which("sinagot", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "sinagot"]


def dask_command(kind: str) -> list[str]:
    """`dask scheduler` / `dask worker` of this interpreter's environment."""
    exe = shutil.which("dask", path=os.path.dirname(sys.executable))
    if exe:
        return [exe, kind]
    return [sys.executable, "-m", f"distributed.cli.dask_{kind}"]


def transitions(address: str) -> collections.Counter:
    """How many transitions each task key has gone through on the scheduler so far."""
    from distributed import Client

    with Client(address, timeout=10, set_as_default=False) as client:
        keys = client.run_on_scheduler(
            lambda dask_scheduler: [str(t.key) for t in dask_scheduler.transition_log]
        )
    return collections.Counter(keys)


def new_keys(before: collections.Counter, after: collections.Counter) -> set[str]:
    return {key for key in after if after[key] > before.get(key, 0)}


def steps_in(keys: set[str]) -> list[str]:
    """'<step>-<unit>' for each step of each unit's task among these keys (not unique)."""
    return [
        f"{step}-{match['unit']}"
        for match in map(KEY.fullmatch, keys)
        if match
        for step in match["steps"].split("+")
    ]


# -- an external cluster, shared by the module -------------------------------------------


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (a nanny closes its worker), then SIGKILL the process group if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory) -> Iterator[str]:
    """The address of a `dask scheduler` with two one-thread `dask worker`s."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("cluster")
    file = folder / "scheduler.json"
    processes: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> subprocess.Popen:
        with (folder / log).open("w") as out:
            process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True
            )
        processes.append(process)
        return process

    try:
        main = start(
            [*dask_command("scheduler"), "--host", "127.0.0.1", "--port", "0",
             "--scheduler-file", str(file), "--no-dashboard"],
            "scheduler.log",
        )  # fmt: skip

        def ready() -> bool:
            if main.poll() is not None:
                log = (folder / "scheduler.log").read_text()
                raise AssertionError(f"dask scheduler exited:\n{log}")
            try:
                return bool(json.loads(file.read_text())["address"])
            except (OSError, ValueError, KeyError):
                return False

        wait_for(ready, 30, "the scheduler file")
        address = json.loads(file.read_text())["address"]
        for n in range(2):
            start(
                [*dask_command("worker"), address, "--nthreads", "1", "--no-dashboard"],
                f"worker{n}.log",
            )
        with Client(address, timeout=20, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=30)
        yield address
    finally:
        for process in reversed(processes):  # workers first, then the scheduler
            _stop(process)


# -- both modes, same results ------------------------------------------------------------


@pytest.mark.parametrize("example", ["harbor", "eeg"])
def test_dask_mode_gives_the_same_results_as_the_main_process(tmp_path, example):
    local = copy_example(example, tmp_path / "main")
    distributed = copy_example(example, tmp_path / "dask")
    use_dask(distributed, n_workers=2, threads_per_worker=1)

    with Workspace(local, verbose=False) as ws:
        ws.steps.run()
        local_status = status_rows(ws)
    with Workspace(distributed, verbose=False) as ws:
        ws.steps.run()
        executor = ws._engine.executor
        assert isinstance(executor, DaskExecutor)
        assert executor.connection.scheduler == "embedded"
        client = executor.connection.client
        workers = client.scheduler_info()["workers"]
        assert sorted(w["nthreads"] for w in workers.values()) == [1, 1]
        pids = set(client.run(os.getpid).values())
        dask_status = status_rows(ws)
    assert len(pids) == 2 and os.getpid() not in pids
    wait_for(lambda: not any(alive(pid) for pid in pids), 20, "the embedded workers to stop")

    assert dask_status == local_status
    assert {status for *_, status in dask_status} == {StepStatus.DONE}
    produced = results(distributed)
    assert produced == results(local)
    raw = results(copy_example(example, tmp_path / "raw"))
    assert len(produced) > len(raw), "the runs wrote outputs"


# -- an external scheduler -----------------------------------------------------------------


def test_a_workspace_runs_on_an_external_scheduler(harbor, scheduler):
    before = transitions(scheduler)
    with Workspace(harbor, verbose=False, scheduler=scheduler) as ws:
        plans = ws._engine.plan(ws._engine.units(Scope()))
        chains = collections.defaultdict(list)
        for plan in plans:
            chains[plan.unit].append(ws._engine.job(plan))
        expected = {job.key for c in chains.values() for job in c}
        ws.steps.run()
        assert ws._engine.executor.connection.scheduler == scheduler
        assert set(statuses(ws).values()) == {StepStatus.DONE}

    computed = harbor / "dataset" / "computed"
    assert sorted(p.name for p in computed.iterdir()) == sorted(
        f"{rid}-{step}.csv" for rid in HARBOR_IDS for step in ("count", "mean")
    )
    ran = new_keys(before, transitions(scheduler))
    assert len(expected) == 6 and all(KEY.fullmatch(k) for k in ran)
    assert sorted(steps_in(ran)) == sorted(expected), "every step ran there, once"


def test_the_cli_uses_the_scheduler_in_the_environment(harbor, scheduler):
    before = transitions(scheduler)
    env = {**os.environ, "SINAGOT_DASK_ADDRESS": scheduler}
    done = subprocess.run(
        [*sinagot_command(), "run"], cwd=harbor, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "6 step(s) done, 0 failed" in done.stdout
    assert len(steps_in(new_keys(before, transitions(scheduler)))) == 6
    with Workspace(harbor, verbose=False) as ws:
        assert set(statuses(ws).values()) == {StepStatus.DONE}


def test_the_scheduler_flag_wins_over_the_environment(harbor, scheduler):
    env = {**os.environ, "SINAGOT_DASK_ADDRESS": "tcp://127.0.0.1:9"}  # nothing listens
    done = subprocess.run(
        [*sinagot_command(), "run", "--scheduler", scheduler, "--record", "REC-20200601"],
        cwd=harbor, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 step(s) done, 0 failed" in done.stdout
    assert (harbor / "dataset" / "computed" / "REC-20200601-mean.csv").is_file()


def test_the_dask_address_in_the_config_is_used(harbor, scheduler):
    use_dask(harbor, address=scheduler)
    before = transitions(scheduler)
    with Workspace(harbor, verbose=False) as ws:
        ws.records.get("REC-20200602").steps.run()
        assert ws._engine.executor.connection.scheduler == scheduler
    ran = steps_in(new_keys(before, transitions(scheduler)))
    assert sorted(ran) == ["count-REC-20200602", "mean-REC-20200602"]

    env = {k: v for k, v in os.environ.items() if k != "SINAGOT_DASK_ADDRESS"}
    done = subprocess.run(
        [*sinagot_command(), "run"], cwd=harbor, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "4 step(s) done, 0 failed" in done.stdout
    with Workspace(harbor, verbose=False) as ws:
        assert set(statuses(ws).values()) == {StepStatus.DONE}


def test_two_copies_of_a_dataset_on_one_scheduler_both_get_their_outputs(tmp_path, scheduler):
    """Task keys name the dataset too: a copy (same paths, sizes and mtimes) sharing the
    scheduler must not attach to the first copy's tasks and silently get nothing."""
    first = copy_example("harbor", tmp_path / "a")
    second = copy_example("harbor", tmp_path / "b")  # cp -p: same sizes, same mtimes
    body = "        import time\n        time.sleep(1.5)\n"
    count = first / "scripts" / "count.py"
    count.write_text(
        count.read_text().replace("    def run(self):\n", "    def run(self):\n" + body)
    )

    errors: list[BaseException] = []

    def run_first() -> None:
        try:
            with Workspace(first, verbose=False, scheduler=scheduler) as ws:
                ws.steps.run()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        logs = first / "dataset" / "LOG"
        wait_for(lambda: errors or any(logs.glob("*.log")), 30, "the first run to start")
        with Workspace(second, verbose=False, scheduler=scheduler) as ws:
            ws.steps.run()
    finally:
        thread.join(timeout=60)
    assert not errors
    assert len(results(first)) == 9  # 3 raw files, 6 outputs
    assert results(second) == results(first)
    # The runs overlapped (else sharing the scheduler proves nothing): the second began
    # before the first's last step ended.
    from datetime import datetime

    def log_times(workspace: Path, keep) -> list[datetime]:
        return [
            datetime.fromisoformat(e["time"])
            for rid in HARBOR_IDS
            for e in log_entries(workspace, rid)
            if keep(e)
        ]

    first_ended = max(log_times(first, lambda e: e["step_status"] == StepStatus.DONE))
    second_began = min(log_times(second, lambda e: e["message"] == "Init run"))
    assert second_began < first_ended, (second_began, first_ended)


# -- failures stay in their unit -----------------------------------------------------------


def test_a_failing_record_is_isolated_on_dask(harbor, scheduler):
    write_failing_script(harbor / "scripts" / "count.py", 'self.id == "REC-20200602"', "bad boat")
    with Workspace(harbor, verbose=False, scheduler=scheduler) as ws:
        ws.steps.run()
        status = statuses(ws)

    for rid in ("REC-20200601", "REC-20200603"):
        assert status[(rid, None, None, "count")] is StepStatus.DONE
        assert status[(rid, None, None, "mean")] is StepStatus.DONE
    assert status[("REC-20200602", None, None, "count")] is StepStatus.ERROR
    assert status[("REC-20200602", None, None, "mean")] is not StepStatus.DONE
    started = [e["step_label"] for e in log_entries(harbor, "REC-20200602")
               if e["message"] == "Init run"]  # fmt: skip
    assert started == ["count"], "the unit's later step was not run"
    computed = harbor / "dataset" / "computed"
    assert not (computed / "REC-20200602-count.csv").exists()
    assert not (computed / "REC-20200602-mean.csv").exists()
    errors = [e["message"] for e in log_entries(harbor, "REC-20200602") if e["step_status"] == 40]
    assert len(errors) == 1
    assert "Traceback (most recent call last)" in errors[0]
    assert "ValueError: bad boat" in errors[0]
    assert "count.py" in errors[0]


def test_a_failing_step_stops_only_its_own_chain_on_dask(eeg, scheduler):
    write_failing_script(
        eeg / "scripts" / "EEG" / "preprocess.py",
        'self.id == "REC-200331-B" and self.task == "RS"',
        "flat signal",
    )
    env = {**os.environ, "SINAGOT_DASK_ADDRESS": scheduler}
    done = subprocess.run(
        [*sinagot_command(), "run"], cwd=eeg, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED REC-200331-B RS/EEG preprocess: ValueError: flat signal" in done.stdout
    assert "Traceback" not in done.stderr

    with Workspace(eeg, verbose=False) as ws:
        status = statuses(ws)
    failed = ("REC-200331-B", "RS", "EEG")
    assert status[(*failed, "preprocess")] is StepStatus.ERROR
    assert status[(*failed, "alpha")] is StepStatus.INIT
    others = {key: value for key, value in status.items() if key[:3] != failed}
    assert len(others) == 25
    assert set(others.values()) == {StepStatus.DONE}
    data = eeg / "dataset"
    assert not (data / "REC-200331-B" / "RS" / "EEG" / "processed" / "alpha.json").exists()
    assert (data / "REC-200331-A" / "RS" / "EEG" / "processed" / "alpha.json").is_file()
    assert (data / "REC-200331-B" / "MMN" / "EEG" / "processed" / "mismatch.json").is_file()
    alpha_runs = [
        e for e in log_entries(eeg, "REC-200331-B")
        if e["task"] == "RS" and e["step_label"] == "alpha"
    ]  # fmt: skip
    assert alpha_runs == [], "the later step of the failed unit never started"


WAITING_MEAN = """
import os
import time

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = ("raw", "{id}-raw.csv")
    PATH_OUT = ("computed", "{id}-mean.csv")

    def run(self):
        deadline = time.monotonic() + 20
        while not os.path.exists(RELEASE):
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.02)
        with open(self.path.output, "w") as fh:
            fh.write("released")
"""


def test_a_step_is_recorded_as_soon_as_it_ends_not_when_its_chain_does(harbor, scheduler):
    """A unit's chain is one Dask task; each step's result is still published as it ends,
    so `count` is recorded (and its DONE shows) while `mean` is still running."""
    release = harbor / "release"
    (harbor / "scripts" / "mean.py").write_text(f"RELEASE = {str(release)!r}\n{WAITING_MEAN}")
    seen = []
    with Workspace(harbor, verbose=False, scheduler=scheduler) as ws:

        def on_result(result):
            seen.append((result.step, result.outcome.value))
            if result.step == "count":  # mean waits for this: it runs on until then
                with Workspace(harbor, verbose=False) as reader:  # as `sinagot status` would
                    status = statuses(reader)
                seen.append(status[("REC-20200601", None, None, "count")])
                seen.append(status[("REC-20200601", None, None, "mean")])
                release.touch()

        ws._engine.execute(ws._engine.plan(ws._engine.units(Scope(), ["REC-20200601"])), on_result)
    assert seen == [("count", "done"), StepStatus.DONE, StepStatus.PROCESSING, ("mean", "done")]
    out = harbor / "dataset" / "computed" / "REC-20200601-mean.csv"
    assert out.read_text() == "released"


# -- task keys ---------------------------------------------------------------------------


def _keys(workspace: Path, generation: str) -> dict[str, str]:
    """{step-unit: Dask task key} of every step that would run, for one run's generation."""
    with Workspace(workspace, verbose=False) as ws:
        chains = collections.defaultdict(list)
        for plan in ws._engine.plan(ws._engine.units(Scope()), stale_only=True):
            chains[plan.unit].append(ws._engine.job(plan))
        return {
            job.key: task_key(job, chain_token(c, generation)) for c in chains.values() for job in c
        }


def test_task_keys_are_readable_and_name_one_run(harbor, tmp_path):
    keys = _keys(harbor, "run-1")
    assert sorted(keys) == sorted(f"{s}-{r}" for r in HARBOR_IDS for s in ("count", "mean"))
    for name, key in keys.items():
        assert re.fullmatch(re.escape(name) + r"-[0-9a-f]{8}", key)
    assert _keys(harbor, "run-1") == keys, "the same run submitted again: the same keys"
    again = _keys(harbor, "run-2")
    assert not set(again.values()) & set(keys.values()), "a new run: new keys"
    copy = shutil.copytree(harbor, tmp_path / "copy")
    assert not set(_keys(copy, "run-1").values()) & set(keys.values()), "another dataset"


def test_a_run_resubmitted_after_its_submitter_died_keeps_its_name(harbor):
    """A copy of it may still run on a worker: the same name lets it be waited for."""
    with Workspace(harbor, verbose=False) as ws:
        unit = ws._engine.units(Scope(), ["REC-20200601"])[0]
        chain = [ws._engine.job(p) for p in ws._engine.plan([unit]) if p.run]
        assert ws._engine.generation(unit, chain) != ws._engine.generation(unit, chain), (
            "fresh each time"
        )
        ws._engine.store.mark_submitted([(unit, job.spec.name, "0ldrun00") for job in chain])
    with Workspace(harbor, verbose=False) as ws:  # the submitter died; another one comes
        assert ws._engine.generation(unit, chain) == "0ldrun00"
        other = ws._engine.units(Scope(), ["REC-20200602"])[0]
        other_chain = [ws._engine.job(p) for p in ws._engine.plan([other]) if p.run]
        names = ws._engine.generations([(other, other_chain), (unit, chain)])
        assert names[1] == "0ldrun00", "asked for many units at once, the same answer"
        assert re.fullmatch(r"[0-9a-f]{8}", names[0]) and names[0] != "0ldrun00"


# -- newest first ----------------------------------------------------------------------------


def test_newer_records_run_first(harbor):
    use_dask(harbor, n_workers=1, threads_per_worker=1, max_in_flight=1)
    raw = harbor / "dataset" / "raw"
    source = (raw / "REC-20200601-raw.csv").read_bytes()
    for day in ("04", "05", "06"):
        (raw / f"REC-202006{day}-raw.csv").write_bytes(source)
    # Neither the IDs' order nor its reverse: the mtimes alone decide.
    newest_first = ["REC-20200604", "REC-20200601", "REC-20200606", "REC-20200603",
                    "REC-20200605", "REC-20200602"]  # fmt: skip
    now = time.time()
    for age, rid in enumerate(newest_first):
        os.utime(raw / f"{rid}-raw.csv", (now - 3600 * (age + 1), now - 3600 * (age + 1)))

    with Workspace(harbor, verbose=False) as ws:
        ws.steps.run()
        assert set(statuses(ws).values()) == {StepStatus.DONE}

    started = {
        rid: min(e["time"] for e in log_entries(harbor, rid) if e["message"] == "Init run")
        for rid in newest_first
    }
    assert sorted(newest_first, key=started.__getitem__) == newest_first


def test_every_forced_run_on_the_same_cluster_really_runs(harbor, scheduler):
    """Same inputs, same scripts: a forced rerun must still run, not reuse the last result."""
    with Workspace(harbor, verbose=False, scheduler=scheduler) as ws:
        for _ in range(3):
            ws.steps.run(force=True)
    for record_id in HARBOR_IDS:
        starts = [e for e in log_entries(harbor, record_id) if e["message"] == "Init run"]
        assert len(starts) == 6, f"{record_id}: 3 forced runs of 2 steps each"
