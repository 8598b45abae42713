"""Every benchmark of tests/bench/, run as a subprocess at a tiny size.

The benchmarks are plain scripts, never collected by pytest: one that rots (an API renamed,
a workspace shape changed, a check that no longer holds) would go unnoticed until someone
ran it at 100,000 records. Here each runs end to end with its answers checked (every
benchmark exits 1 on a wrong answer), at a size that takes seconds. Their timing targets
count only at the sizes they name (10,000 or 100,000 records, 40,000 updates): at these
sizes the times are noise on a busy 2-core machine, so they are printed, not judged.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent / "bench"
TIMEOUT = 300  # seconds for one benchmark; the slowest takes about 70 s here


def _load_common() -> ModuleType:
    """tests/bench/_common.py, which the scripts import as `_common` from their folder."""
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_common = _load_common()


def _browser_missing() -> str | None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from browser import missing

    return missing()


def _has_snakemake() -> bool:
    return importlib.util.find_spec("snakemake") is not None


def run_bench(script: str, *args: str) -> str:
    """Run one benchmark with the default environment (no SINAGOT*_/DASK_ settings); its
    stdout and stderr together, after asserting it exited 0."""
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        cwd=BENCH,
        env=_common.clean_env(PYTHONUNBUFFERED="1"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{script} {' '.join(args)} exited {done.returncode}:\n{output}"
    return output


def assert_lines(output: str, *patterns: str) -> None:
    """Each pattern matches a line of the output: the summary a reader looks for is there."""
    for pattern in patterns:
        assert re.search(pattern, output, re.MULTILINE), f"no line matches {pattern!r}:\n{output}"


# Slowest first: with `-n 2`, the long ones then overlap instead of ending the run alone.


def test_bench_daemon() -> None:
    out = run_bench(
        "bench_daemon.py", "--small", "50", "--drops", "5", "--burst", "50", "--n-big", "200"
    )
    assert_lines(
        out,
        r"^=== bench_daemon summary ===$",
        r"^\(a\) submit latency beyond settle p50 / p95 +\d+ ms / \d+ ms",
        r"^\(a\) daemon stop +exit 0 after SIGTERM .*daemon\.stopped seen",
        r"^\(c\) step\.finished / submitted / failed +100 / 100 / 0 ",
        r"^\(c\) \(record, step\) finished twice / submitted twice +0 / 0 ",
        r"^\(c\) outputs missing +0 ",
        r"^\(b\) bring 200 up to date \(once\) +.*exit 0: 400 step\.finished events",
        r"^\(b\) 200: startup +[\d.]+ s",
        r"^\(b\) median submit latency 200 / 50 ",
        r"^machine: nproc \d+",
    )
    assert "PROBLEM:" not in out


def test_bench_daemon_big_built() -> None:
    """(b) on records written up to date (`--prepare build`, the way a million are made):
    the fresh daemon must find all of them, and none stale."""
    out = run_bench(
        "bench_daemon.py", "--part", "b", "--small", "20", "--n-big", "150", "--prepare", "build"
    )
    assert_lines(
        out,
        r"^\(b\) bring 150 up to date \(build\) +[\d.]+ s: files and 300 runs written, "
        r"the planner finds nothing stale \(checked 150 units\)$",
        r"^\(b\) 150: start to daemon\.ready +[\d.]+ s \(.*units 150, stale 0\)",
        r"^\(b\) 150: daemon CPU once idle +[\d.]+ s",
        r"^\(b\) 150: daemon RSS +\d+ MB +\(target < 300 MB at 100,000, < 1000 MB at 1,000,000\)",
    )
    assert "PROBLEM:" not in out


def test_uptodate_builder(tmp_path: Path) -> None:
    """tests/bench/_uptodate.py writes records up to date without running their steps: as
    a run would, so that `sinagot status` agrees, and a change to what it wrote is seen."""
    dest = tmp_path / "ws"
    done = subprocess.run(
        [sys.executable, str(BENCH / "_uptodate.py"), str(dest), "300"],
        cwd=BENCH, env=_common.clean_env(), capture_output=True, text=True, timeout=TIMEOUT,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "300 records up to date" in done.stdout

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sinagot", "status", str(dest), *args],
            env=_common.clean_env(), capture_output=True, text=True, timeout=TIMEOUT,
            check=False,
        )  # fmt: skip

    every = status()
    assert every.returncode == 0, every.stdout + every.stderr
    assert_lines(every.stdout, r"^600 step\(s\): 600 DONE$")

    output = dest / "dataset" / "computed" / "REC-00000123-mean.csv"
    rows = len((dest / "dataset" / "raw" / "REC-00000123-raw.csv").read_text().splitlines()) - 1
    assert output.read_text() == f"rows\n{rows}\n"  # what the trivial script itself writes
    with output.open("a") as fh:
        fh.write("edited by hand\n")
    stale = status("--stale")
    assert "REC-00000123  mean" in stale.stdout, stale.stdout
    assert "changed since the run that wrote it" in stale.stdout, stale.stdout
    assert_lines(stale.stdout, r"^1 step\(s\): 1 STALE$")
    assert status("--check").returncode == 3


def test_bench_faults() -> None:
    out = run_bench("bench_faults.py", "--rounds", "2", "--seed", "14")
    assert_lines(
        out,
        r"^rounds +2$",
        r"^faults injected +kill-daemon \d",
        r"^steps run twice +0$",
        r"^steps lost +0$",
        r"^half-written outputs +0$",
        r"^left in flight +0 ",
        r"^total wall time +\d+ s$",
    )
    steps_due = re.search(r"^steps due +(\d+)$", out, re.MULTILINE)
    assert steps_due and int(steps_due.group(1)) > 0, out  # the rounds did give work


def test_bench_status_page() -> None:
    browser = _browser_missing() is None
    out = run_bench("bench_status_page.py", "500", *(() if browser else ("--no-browser",)))
    assert_lines(
        out,
        r"^workspace: 500 records written",
        r"^first full board \(plan of every unit\): [\d.]+ s",
        r"^board memory: [\d.]+ MB \(\d+ B a unit",
        r"^GET /api/status +median +[\d.]+ ms",
        r"^GET /api/status\?show=failed +median",
        r"^GET /metrics +median",
        r"^all answers right \(the targets count at N >= 100,000\)$",
    )
    if browser:
        assert_lines(out, r"^browser first paint .*over 5 loads$")


def test_bench_dask() -> None:
    out = run_bench("bench_dask.py", "200", "--repeat", "2")
    assert_lines(
        out,
        r"^=== bench_dask summary ===$",
        r"^N records / steps +200 / 400$",
        r"^\(s\) sinagot plan \+ execute +[\d.]+ s \([\d.]+-[\d.]+\)",
        r"^    overhead beyond them +[\d.-]+ ms .*not judged below N = 10000$",
        r"^\(r\) raw Dask map \+ gather +[\d.]+ s",
        r"^speed-up \(r\)/\(s\) +[\d.]+x +\(target >= 2\.0\): not judged",
        r"^machine: nproc \d+",
    )
    samples = re.findall(r"^\((s|r)\) sample (\d): ", out, re.MULTILINE)
    assert samples == [("s", "1"), ("r", "1"), ("r", "2"), ("s", "2")], "alternating order"
    assert "PROBLEM:" not in out


def test_bench_step() -> None:
    out = run_bench("bench_step.py", "20", "--repeat", "2")
    assert_lines(
        out,
        r"^40 steps x 2 repeats$",
        r"^python calls per step: \d+$",
        r"^CPU per step: [\d.]+ ms .*sinagot's own [\d.-]+ ms$",
        r"^user CPU per step: ",
    )
    assert "PROBLEM:" not in out


def test_bench_plan() -> None:
    peer = _has_snakemake()
    out = run_bench("bench_plan.py", "200", *(() if peer else ("--no-peer",)))
    assert_lines(
        out,
        r"^ran 400 step\(s\) .*, 0 failed$",
        r"^N = 200$",
        r"^\(a\) full plan, nothing stale +[\d.]+ s$",
        r"^\(b\) full plan, one input touched +[\d.]+ s$",
        r"^\(c\) one unit +[\d.]+ ms",
        r"^planning peak RSS +\d+ MB",
    )
    if peer:  # snakemake agreed that one record's two steps are stale
        assert_lines(out, r"^\(e\) snakemake -n +[\d.]+ s", r"^\(e\)/\(f\) +\d+ ")
    assert "PROBLEM:" not in out


@pytest.mark.parametrize(
    ("args", "patterns"),
    [
        (
            ("200",),
            (
                r"^sinagot 0\.3 API, harbor shape, N = 200 records \(best of 3\):$",
                r"^ +records\.count\(\) +[\d.]+ m?s +200 records$",
                r"^ +steps\.status\(\) +[\d.]+ m?s +400 rows$",
                r"^ +one record: logs\(\) +[\d.]+ m?s",
            ),
        ),
        (
            ("200", "--sonetaa"),
            (
                r"^sinagot 0\.3 API, SoNeTAA shape, N = 200 records \(best of 3\):$",
                r"^ +steps\.status\(\) +[\d.]+ m?s +1200 rows$",
                r"^ +ws\.clinical\.data \(pandas plugin\) +[\d.]+ m?s +200 rows$",
            ),
        ),
    ],
    ids=["harbor", "sonetaa"],
)
def test_bench_api(args: tuple[str, ...], patterns: tuple[str, ...]) -> None:
    out = run_bench("bench_api.py", *args)
    assert_lines(out, *patterns, r"^  \(nproc \d+")


def test_bench_capture() -> None:
    out = run_bench("bench_capture.py", "2000")
    assert_lines(
        out,
        r"^ +2000 updates: [\d.]+ s, [\d.]+ us per update$",
        r"^ +8000 updates: [\d.]+ s, [\d.]+ us per update$",
        r"^nproc \d+",
    )
    assert "FAILED" not in out
