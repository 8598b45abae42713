"""The CI switch `SINAGOT_STRICT_SKIPS=1` (tests/conftest.py): a test skipped for a missing
tool, extra or privilege fails instead, naming the skip's reason, so that a CI run cannot be
green with parts of the suite quietly not run. Unset, a skip is a skip (a developer's machine
lacks chromium or root); a skip marked `allowed_skip` (the test's own logic) stays a skip.

Each test runs pytest on a tiny test file in a temporary folder (pytester), with this
project's tests/conftest.py loaded as a plugin, and checks what a user sees: the outcome
counts, the exit status and the reason in the summary.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent
SWITCH = "SINAGOT_STRICT_SKIPS"
TOOL = "sinagot-no-such-tool"
REASON = f"THE TOOL TEST DID NOT RUN: {TOOL} is not installed here"

# The temporary folder's conftest: this project's, loaded under another name (pytester's
# folder is outside tests/, where pytest would not find it).
LOADER = f"""
import importlib.util

_path = {str(TESTS / "conftest.py")!r}
_spec = importlib.util.spec_from_file_location("sinagot_tests_conftest", _path)
_project = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_project)
pytest_configure = _project.pytest_configure
pytest_runtest_makereport = _project.pytest_runtest_makereport
pytest_make_collect_report = _project.pytest_make_collect_report
"""

TOOL_TESTS = f"""
import shutil

import pytest

needs_tool = pytest.mark.skipif(shutil.which({TOOL!r}) is None, reason={REASON!r})


@needs_tool
def test_uses_the_tool():
    pass


def test_needs_root_inside():
    pytest.skip("needs root, to mount a small file system")


@pytest.mark.allowed_skip("the kernel's limit is too high to flood")
def test_own_logic():
    pytest.skip("max_queued_events is 1000000: too many events to flood")


@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False


def test_plain():
    pass
"""


@pytest.fixture
def tiny(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A folder with the tool tests and this project's conftest; the switch unset (CI's own
    run sets it, and the inner runs would inherit it)."""
    monkeypatch.delenv(SWITCH, raising=False)
    pytester.makeconftest(LOADER)
    pytester.makepyfile(test_tool=TOOL_TESTS)
    return pytester


@pytest.mark.parametrize("value", [None, "0"])
def test_without_the_switch_a_missing_tool_is_a_skip_with_its_reason(tiny, monkeypatch, value):
    if value is not None:
        monkeypatch.setenv(SWITCH, value)
    result = tiny.runpytest("-p", "no:cacheprovider", "-ra", "-vv")
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"SKIPPED *{REASON}"])


def test_with_the_switch_a_missing_tool_or_privilege_fails_naming_the_reason(tiny, monkeypatch):
    monkeypatch.setenv(SWITCH, "1")
    result = tiny.runpytest("-p", "no:cacheprovider", "-ra", "-vv")
    # skipif is decided at setup: an error there; pytest.skip in the test body: a failure.
    # The allowed skip stays a skip; the xfail and the plain test are untouched.
    result.assert_outcomes(passed=1, skipped=1, xfailed=1, errors=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines_random(
        [
            f"ERROR test_tool.py::test_uses_the_tool - skipped, and {SWITCH}=1 makes a skip "
            f"a failure: {REASON} *",
            "FAILED test_tool.py::test_needs_root_inside - skipped, and * needs root, *",
            "SKIPPED * max_queued_events is 1000000: too many events to flood",
        ]
    )


def test_with_the_switch_a_module_skipped_at_import_is_a_collection_error(tiny, monkeypatch):
    """As tests/test_eeg_bids.py without the eeg extra: the whole module is skipped."""
    tiny.makepyfile(
        test_extra="""
        import pytest

        pytest.importorskip("sinagot_no_such_module", reason="EXTRA NOT TESTED: no module")


        def test_with_the_extra():
            pass
        """
    )
    args = ("-p", "no:cacheprovider", "-ra", "-vv", "test_extra.py")
    tiny.runpytest(*args).assert_outcomes(skipped=1)

    monkeypatch.setenv(SWITCH, "1")
    result = tiny.runpytest(*args)
    result.assert_outcomes(errors=1)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [f"ERROR test_extra.py - skipped, and {SWITCH}=1 * EXTRA NOT TESTED: no module *"]
    )


def test_with_the_switch_under_xdist_the_worker_skip_fails_in_the_summary(tiny, monkeypatch):
    """CI's pytest runs with `-n 2` (addopts): the failure is made in a worker process and
    must reach the controller's summary and exit status."""
    monkeypatch.setenv(SWITCH, "1")
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the conftest's own imports (faults, ...)
    result = tiny.runpytest_subprocess("-p", "no:cacheprovider", "-ra", "-vv", "-n", "2")
    result.assert_outcomes(passed=1, skipped=1, xfailed=1, errors=1, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines_random([f"ERROR test_tool.py::test_uses_the_tool - * {REASON} *"])
