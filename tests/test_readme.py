"""The README's Python sessions run as written, on a copy of the bundled examples."""

from __future__ import annotations

import ast
import doctest
import re
from pathlib import Path

import pytest
from conftest import copy_example

ROOT = Path(__file__).resolve().parents[1]
# Records come in file-system order, which differs between machines: these two flags let
# the README show the seed's session word for word while checking what can be checked.
ANY_ORDER = doctest.register_optionflag("ANY_ORDER")
ANY_RECORD = doctest.register_optionflag("ANY_RECORD")


class Checker(doctest.OutputChecker):
    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        if optionflags & ANY_ORDER:
            return _same_items(want, got)
        if optionflags & ANY_RECORD:
            shape = re.compile(r"<Record instance \| id: [^>]+>\n")
            return bool(shape.fullmatch(want) and shape.fullmatch(got))
        return super().check_output(want, got, optionflags)


def _same_items(want: str, got: str) -> bool:
    try:
        return sorted(ast.literal_eval(want)) == sorted(ast.literal_eval(got))
    except (ValueError, SyntaxError):
        return sorted(want.splitlines()) == sorted(got.splitlines())


def test_readme_sessions_run_as_written(tmp_path, monkeypatch):
    """Every `>>>` session of the README, in order, against fresh copies of the examples."""
    # Without what running the examples in place left (the README's first command does).
    for name in ("harbor", "eeg"):
        copy_example(name, tmp_path / "example")
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```pycon\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no Python session"
    parser = doctest.DocTestParser()
    test = parser.get_doctest("\n".join(blocks), {}, "README.md", str(ROOT / "README.md"), 0)
    runner = doctest.DocTestRunner(checker=Checker(), optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    if result.failed:
        pytest.fail(f"{result.failed} README example(s) failed; see the output above")
