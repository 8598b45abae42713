"""The fault-injection suite runs on Linux only; its `make_lab` fixture is in
tests/conftest.py (tests/test_daemon_paths.py uses it too), its machinery in harness.py
(shared with tests/bench/bench_faults.py)."""

from __future__ import annotations

import sys

if not sys.platform.startswith("linux"):
    collect_ignore_glob = ["test_*.py"]  # signals, process groups, /proc, inotify
