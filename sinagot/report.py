"""`sinagot status --html FILE`: the status page as one self-contained file, for an email or
an archive. The same page the daemon serves (`sinagot/web/`), with its script, its style and
the data inlined: it opens offline, from anywhere, without a server.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .board import Query, iter_rows
from .engine import Engine
from .layout import Unit
from .pageview import board_for, record_detail
from .planner import StepPlan

#: Records with a step not DONE get their detail (reasons, last run, log tail) in the
#: report, the first this many of them: a report of 100,000 failures stays openable.
DETAILS = 500
_CSS_TAG = '<link rel="stylesheet" href="static/app.css">'
_JS_TAG = '<script src="static/app.js" defer></script>'
_DATA_TAG = '<script id="sinagot-data" type="application/json"></script>'


def page_assets() -> dict[str, bytes]:
    """index.html, app.js and app.css, as shipped in the package."""
    folder = resources.files("sinagot") / "web"
    return {name: (folder / name).read_bytes() for name in ("index.html", "app.js", "app.css")}


def build_report(engine: Engine, plans: Sequence[StepPlan]) -> str:
    """The HTML of a report of these plans (every step of the units shown)."""
    board = board_for(engine, live=False)
    board.replace_all(iter_rows(plans))
    status = board.query(Query(per_page=max(board.counts()["units"], 1)))  # type: ignore[arg-type]
    records: dict[str, Any] = {}
    units_of: dict[str, list[Unit]] = {}
    for plan in plans:
        units_of.setdefault(plan.unit.record_id, [])
        if plan.unit not in units_of[plan.unit.record_id]:
            units_of[plan.unit.record_id].append(plan.unit)
    for row in status["rows"]:  # type: ignore[union-attr]
        record_id = row["record_id"]
        if len(records) >= DETAILS or record_id in records:
            continue
        if any(cell["status"] != "DONE" for cell in row["cells"]):
            records[record_id] = record_detail(engine, units_of[record_id], live=False)
    return inline_page(page_assets(), {"status": status, "records": records})


def inline_page(assets: dict[str, bytes], data: dict[str, Any]) -> str:
    page = assets["index.html"].decode()
    for tag in (_CSS_TAG, _JS_TAG, _DATA_TAG):
        if tag not in page:
            raise RuntimeError(f"sinagot/web/index.html lacks {tag}")
    payload = json.dumps(data, separators=(",", ":"))
    # Inside a <script> element, only "</" (and "<!--") can end it early: escaped in JSON.
    payload = payload.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = page.replace(_CSS_TAG, f"<style>\n{assets['app.css'].decode()}\n</style>")
    page = page.replace(_JS_TAG, "")
    script = assets["app.js"].decode().replace("</script", "<\\/script")
    return page.replace(
        _DATA_TAG,
        f'<script id="sinagot-data" type="application/json">{payload}</script>\n'
        f"<script>\n{script}\n</script>",
    )


def write_report(engine: Engine, plans: Sequence[StepPlan], path: Path) -> None:
    """Written whole or not at all: a reader never sees half a report."""
    html = build_report(engine, plans)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:  # name the folder asked for, not the temporary name
        raise OSError(exc.errno, exc.strerror, str(folder)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(html)
        os.chmod(tmp, 0o666 & ~_umask())  # as any file the user makes (mkstemp: 0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
