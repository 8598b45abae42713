"""What the benchmarks share: the machine they ran on, and the example generator."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    """One line naming the machine and its load, printed under every summary."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = ", " + line.partition(":")[2].strip()
                break
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"nproc {len(os.sched_getaffinity(0))}{cpu}, Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}; load average now {load}"
    )


def create_cost(folder: Path, files: int = 500) -> float:
    """Microseconds of kernel and user CPU to create one empty file in `folder`'s file
    system, the mean over `files` new files. Sinagot makes more files a record than the raw
    Dask side does (receipts, the record's log), so the comparison of the two moves with
    this figure: on the 2-core VMs here it has ranged from tens of microseconds to a
    millisecond (ext4, one machine to the next and on one machine as files churn), where a
    link, a rename or an unlink costs 5-25 microseconds."""
    where = Path(tempfile.mkdtemp(prefix=".create-cost-", dir=folder))
    try:
        start = time.process_time()
        for i in range(files):
            os.close(os.open(where / str(i), os.O_CREAT | os.O_WRONLY, 0o644))
        return (time.process_time() - start) / files * 1e6
    finally:
        shutil.rmtree(where, ignore_errors=True)


def load_make_dataset() -> ModuleType:
    """example/make_dataset.py, which writes harbor-like workspaces of N records."""
    path = ROOT / "example" / "make_dataset.py"
    spec = importlib.util.spec_from_file_location("make_dataset", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what changes how sinagot and sinagotd run (a SINAGOTD_*
    setting, a scheduler address, Dask's own settings; a shell's PYTHONDONTWRITEBYTECODE,
    which has every start compile sinagot's modules again): a benchmark measures the
    defaults."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SINAGOTD_", "SINAGOT_", "DASK_"))
        and key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "PYTHONDONTWRITEBYTECODE")
    }
    env["SINAGOTD_STATUS_PORT"] = "0"  # never the default port a running daemon may hold
    env.update(extra)
    return env
