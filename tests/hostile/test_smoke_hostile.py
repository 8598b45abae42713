"""The adversarial suite's own baseline: a plain daemon passes `still_processing`."""

from __future__ import annotations

from .conftest import still_processing


def test_a_daemon_on_a_plain_workspace_processes_a_new_record(make_lab, outside):
    lab = make_lab(2)
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=60)
    still_processing(lab, daemon)
