"""The status page's server side, against a real sinagotd: its JSON API (`/api/status`,
`/api/records/<id>`), `/metrics`, its safety rules, and the board it answers from."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from faults.harness import clean_env
from test_daemon import IDS, make_count_fail_for, write_record

from sinagot.board import Board, Overlay, Query, Row, natural_key
from sinagot.engine import Engine
from sinagot.layout import Scope, Unit
from sinagotd.statusview import StatusKeeper


def fetch(url: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, bytes]:
    headers = {"Host": host} if host else {}
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def api(base: str, path: str) -> Any:
    code, _, body = fetch(base + path)
    assert code == 200, (path, code, body)
    return json.loads(body)


def poll(base: str, path: str, ok, timeout: float = 10.0) -> Any:
    """The first answer that satisfies `ok`, asked until the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            code, _, body = fetch(base + path)
        except OSError as exc:  # refused or reset while the server sheds connections
            code, body = 0, json.dumps({"error": str(exc)}).encode()
        answer = json.loads(body)
        if code == 200 and ok(answer):
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: never as expected within {timeout} s; last: {answer}")
        time.sleep(0.1)


def external(html: str) -> list[str]:
    """What a page would fetch from another host: a CDN, a web font (lab networks are
    often offline)."""
    return _EXTERNAL.findall(html)


_EXTERNAL = re.compile(
    r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import"""
)


def cells(answer: dict) -> dict[str, dict[str, str]]:
    return {r["record_id"]: {c["step"]: c["status"] for c in r["cells"]} for r in answer["rows"]}


def test_the_page_shows_each_record_and_why_one_failed(ws, sinagotd):
    make_count_fail_for(ws, "REC-20200602", "no boats on 2020-06-02")
    daemon = sinagotd(ws)
    base = daemon.wait_for("daemon.started")["status_page"]
    assert base.startswith("http://127.0.0.1:") and base.endswith("/")
    daemon.wait_for("daemon.idle")
    settled = {
        "records": 3, "units": 3, "steps": 6, "done": 4, "stale": 1, "queued": 0,
        "in_flight": 0, "failed": 1, "arriving": 0, "by_status": None,
    }  # fmt: skip

    # The failure can show while the steps batched with it are still in flight: the board
    # settles an update (0.25 s) later.
    board = poll(base, "api/status", lambda a: a["counts"] | {"by_status": None} == settled)
    assert [r["record_id"] for r in board["rows"]] == list(IDS)
    # mean reads what count writes: it waits for count to be fixed.
    assert cells(board)["REC-20200602"] == {"count": "ERROR", "mean": "DATA_READY"}
    assert board["steps"] == ["count", "mean"] and board["scoped"] is False
    assert board["live"] is True and board["throughput"]["steps_per_minute"] > 0

    failed = api(base, "api/status?show=failed")
    assert failed["total"] == 1 and failed["rows"][0]["record_id"] == "REC-20200602"
    assert [r["record_id"] for r in api(base, "api/status?order=newest")["rows"]] == list(
        reversed(IDS)
    )
    assert [r["record_id"] for r in api(base, "api/status?q=0603")["rows"]] == ["REC-20200603"]
    second = api(base, "api/status?per_page=1&page=1")
    assert second["total"] == 3 and [r["record_id"] for r in second["rows"]] == ["REC-20200602"]

    detail = api(base, "api/records/REC-20200602")
    count = detail["units"][0]["steps"][0]
    assert count["step"] == "count" and count["status"] == "ERROR"
    assert count["last_run"]["result"] == "failed"
    assert "no boats on 2020-06-02" in count["last_run"]["error"]
    assert count["last_run"]["duration_s"] >= 0 and count["last_run"]["finished"].endswith("Z")
    assert count["inputs"] == ["raw/REC-20200602-raw.csv"]
    assert any(line["status"] == "ERROR" for line in count["log"]), count["log"]


def test_the_api_refuses_what_it_does_not_serve_and_changes_nothing(ws, sinagotd):
    daemon = sinagotd(ws)
    base = daemon.wait_for("daemon.started")["status_page"]
    daemon.wait_for("daemon.idle")
    poll(base, "api/status", lambda a: a["counts"]["done"] == 6)

    code, _, body = fetch(base + "api/records/REC-404")
    assert code == 404 and "REC-404" in json.loads(body)["error"]
    for bad, named in (("show=everything", "show"), ("page=-1", "page"),
                       ("per_page=5000", "per_page"), ("color=red", "color")):  # fmt: skip
        code, headers, body = fetch(base + f"api/status?{bad}")
        assert code == 400 and named in json.loads(body)["error"], (bad, body)
        assert headers["Content-Type"].startswith("application/json")
    for method in ("POST", "PUT", "DELETE"):  # read-only: nothing else is even routed
        assert fetch(base + "api/status", method=method)[0] == 405
    # DNS rebinding: a page elsewhere that resolves its own name to 127.0.0.1 is refused.
    assert fetch(base + "api/status", host="attacker.example")[0] == 421
    assert fetch(base + "api/status", host="localhost")[0] == 200

    code, headers, page = fetch(base)
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b'src="static/app.js"' in page and not external(page.decode())
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    code, headers, _ = fetch(base + "static/app.js")
    assert code == 200 and headers["Content-Type"].startswith("application/javascript")
    assert fetch(base + "static/../../workspace.toml")[0] == 404
    assert fetch(base, method="HEAD")[0] == 200
    # Nothing the page asked for changed the workspace: everything is still done.
    assert api(base, "api/status")["counts"]["done"] == 6


def test_metrics_count_steps_by_name_and_status(ws, sinagotd):
    make_count_fail_for(ws, "REC-20200601", "bad boat")
    daemon = sinagotd(ws)
    base = daemon.wait_for("daemon.started")["status_page"]
    daemon.wait_for("daemon.idle")
    poll(base, "api/status", lambda a: a["counts"]["failed"] == 1)
    code, headers, body = fetch(base + "metrics")
    text = body.decode()
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    for line in (
        'sinagot_steps_finished_total{step="count"} 2.0',
        'sinagot_steps_finished_total{step="mean"} 2.0',
        'sinagot_steps_failed_total{step="count"} 1.0',
        'sinagot_steps{status="ERROR"} 1.0',
        'sinagot_steps{status="DONE"} 4.0',
        "sinagot_records 3.0",
        "sinagot_cluster_connected 1.0",
        "sinagot_units_in_flight 0.0",
        "sinagot_watch_errors_total 0.0",
    ):
        assert line in text, line
    assert 'sinagot_step_duration_seconds_count{step="mean"} 2.0' in text
    assert "sinagot_settled_to_submitted_seconds_count" in text


def test_a_new_record_shows_as_arriving_then_done(ws, sinagotd):
    daemon = sinagotd(ws, settle=4.0)
    base = daemon.wait_for("daemon.started")["status_page"]
    daemon.wait_for("daemon.idle")
    poll(base, "api/status", lambda a: a["counts"]["done"] == 6)
    write_record(ws, "REC-20200604")
    landed = time.monotonic()
    arriving = poll(base, "api/status?show=arriving", lambda a: a["total"] == 1, timeout=4.0)
    assert time.monotonic() - landed < 2.0  # seen settling, not only once processed
    assert cells(arriving)["REC-20200604"] == {"count": "ARRIVING", "mean": "ARRIVING"}
    assert arriving["rows"][0]["arriving"] is True
    done = poll(base, "api/status?q=0604", lambda a: a["counts"]["done"] == 8, timeout=30)
    assert cells(done)["REC-20200604"] == {"count": "DONE", "mean": "DONE"}


def test_the_page_can_be_off_and_a_busy_port_does_not_stop_the_work(ws, sinagotd):
    with (ws / "workspace.toml").open("a") as file:
        file.write("\n[daemon]\nstatus_page = false\n")
    daemon = sinagotd(ws)
    assert daemon.wait_for("daemon.started")["status_page"] is None
    daemon.wait_for("daemon.idle")
    assert daemon.stop() == 0

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = (ws / "workspace.toml").read_text().replace("status_page = false", "")
        (ws / "workspace.toml").write_text(text)
        write_record(ws, "REC-20200604")
        daemon = sinagotd(ws, env=clean_env(SINAGOTD_STATUS_PORT=str(port)))
        refused = daemon.wait_for("status.unavailable")
        assert refused["address"] == f"127.0.0.1:{port}" and refused["level"] == "error"
        assert daemon.wait_for("daemon.started")["status_page"] is None
        daemon.wait_for("step.finished", record_id="REC-20200604", step="mean")


# -- the board, on its own ------------------------------------------------------------------


def _board() -> Board:
    return Board("ws.toml", False, "0", {(None, None): ("count", "mean")})


def _row(record_id: str, *cells: str) -> Row:
    return Row(Unit(record_id), ("count", "mean"), cells)


def test_board_keeps_natural_order_and_its_counts_through_updates():
    board = _board()
    board.replace_all([_row("REC-10", "DONE", "DONE"), _row("REC-2", "ERROR", "INIT")])
    assert board.update([_row("REC-9", "STALE", "DONE")])
    assert not board.update([_row("REC-9", "STALE", "DONE")])  # the same: no new generation
    answer = board.query(Query())
    assert [r["record_id"] for r in answer["rows"]] == ["REC-2", "REC-9", "REC-10"]
    assert answer["counts"]["by_status"] == {"DONE": 3, "STALE": 1, "ERROR": 1, "INIT": 1}
    assert answer["backlog"]["steps"] == 1 and answer["backlog"]["eta_s"] is None
    board.update([_row("REC-2", "DONE", "DONE")], gone=[Unit("REC-10")])
    answer = board.query(Query(order="newest"))
    assert [r["record_id"] for r in answer["rows"]] == ["REC-9", "REC-2"]
    assert answer["counts"]["records"] == 2 and answer["counts"]["failed"] == 0
    assert natural_key("REC-2") < natural_key("REC-10")


_KINDS = {("rest", "eeg"): ("a", "b", "c"), ("task", "eeg"): ("a", "b"), ("rest", None): ("x",)}


def _expected(rows: dict[Unit, Row], query: Query) -> tuple[int, list[tuple]]:
    """What a page must show, the plain way: every row sorted, filtered, sliced."""
    position = {kind: i for i, kind in enumerate(_KINDS)}
    units = sorted(rows, key=lambda u: (natural_key(u.record_id), u.record_id,
                                        position[u.task, u.modality]))  # fmt: skip
    if query.order == "newest":
        units.reverse()
    wanted = {"all": None, "failed": {"ERROR"}, "stale": {"STALE", "DATA_READY"}}[query.show]
    units = [
        u
        for u in units
        if (wanted is None or wanted & set(rows[u].cells))
        and query.task in (None, u.task)
        and query.modality in (None, u.modality)
        and query.q.casefold() in u.record_id.casefold()
    ]
    start = query.page * query.per_page
    return len(units), [(u, rows[u].cells) for u in units[start : start + query.per_page]]


@pytest.mark.parametrize("share", [0.7, 1.0])  # 1.0: every record has its 3 units at first
def test_board_pages_are_the_rows_sorted_filtered_and_sliced(share: float):
    """Records with one, two or three units, IDs equal in natural order ('S-07', 'S-7'),
    rows changed and removed: each page is what sorting every row would show."""
    import random

    rnd = random.Random(14)
    statuses = ("DONE", "DONE", "DONE", "STALE", "DATA_READY", "ERROR", "INIT")
    board = Board("ws.toml", True, "0", _KINDS)

    def row(unit: Unit) -> Row:
        steps = _KINDS[unit.task, unit.modality]
        return Row(unit, steps, tuple(rnd.choice(statuses) for _ in steps))

    ids = sorted({f"{rnd.choice(['S-', 's-', 'S-0'])}{rnd.randint(0, 300)}" for _ in range(400)})
    rows = {u: row(u) for u in (Unit(r, *k) for r in ids for k in _KINDS) if rnd.random() < share}
    board.replace_all(rows.values())
    for round_ in range(4):
        for show in ("all", "failed", "stale"):
            for q, task, order in (("", None, "natural"), ("s-0", None, "newest"),
                                   ("", "task", "natural"), ("7", "rest", "newest")):  # fmt: skip
                for page, per_page in ((0, 100), (3, 7), (40, 13), (999, 10)):
                    query = Query(page, per_page, show, task, None, q, order)
                    answer = board.query(query)
                    total, expected = _expected(rows, query)
                    got = [
                        (Unit(r["record_id"], r["task"], r["modality"]),
                         tuple(c["status"] for c in r["cells"]))
                        for r in answer["rows"]
                    ]  # fmt: skip
                    assert (answer["total"], got) == (total, expected), (round_, query)
        assert board.counts()["units"] == len(rows)
        assert board.counts()["records"] == len({u.record_id for u in rows})
        gone = rnd.sample(list(rows), 40)
        fresh = {u: row(u) for u in rnd.sample(list(rows), 80)}
        fresh.update({u: row(u) for u in (Unit(f"S-{500 + round_}", *k) for k in _KINDS)})
        assert board.update(fresh.values(), gone=gone)
        for unit in gone:
            del rows[unit]
        rows.update(fresh)


def test_a_board_of_a_million_units_fits_in_200_mb():
    """Issue 14: the daemon's status board cost 840 MB a million units (a row object, a
    set and a sort key each); the compact table keeps well under 200 B a unit, the record
    IDs themselves included."""
    import gc
    import tracemalloc

    n = 20_000
    board = Board("ws.toml", False, "0", {(None, None): ("count", "mean")})
    gc.collect()
    tracemalloc.start()
    try:
        board.replace_all(
            Row(Unit(f"REC-{i:07d}"), ("count", "mean"), ("DONE", "DONE")) for i in range(n)
        )
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert board.counts()["units"] == n
    assert kept / n < 200, f"{kept / n:.0f} B a unit"


def test_query_parameters_are_checked_and_named():
    assert Query.parse({"page": "2", "show": "failed", "q": "rec"}) == Query(
        page=2, show="failed", q="rec"
    )
    for params, named in (({"page": "x"}, "page"), ({"per_page": "0"}, "per_page"),
                          ({"order": "random"}, "order"), ({"sort": "1"}, "sort")):  # fmt: skip
        with pytest.raises(ValueError, match=named):
            Query.parse(params)


def test_overlay_marks_queued_and_arriving_cells():
    from sinagot.board import cell_status
    from sinagot.planner import StepPlan
    from sinagot.status import StepStatus

    def plan(status: StepStatus, run: bool) -> StepPlan:
        return StepPlan(Unit("R"), None, 0, status, (), run, (), ())  # type: ignore[arg-type]

    assert cell_status(plan(StepStatus.DATA_READY, True), queued=True, arriving=False) == "QUEUED"
    assert cell_status(plan(StepStatus.DONE, False), queued=True, arriving=False) == "DONE"
    assert cell_status(plan(StepStatus.STALE, True), queued=True, arriving=True) == "ARRIVING"
    assert cell_status(plan(StepStatus.ERROR, False), queued=False, arriving=True) == "ERROR"
    assert Overlay().queued == frozenset()


def test_report_is_one_offline_file_that_no_error_text_can_break_out_of(ws, tmp_path: Path):
    from sinagot.engine import Engine
    from sinagot.layout import Scope
    from sinagot.report import write_report

    make_count_fail_for(ws, "REC-20200601", "</script><script>alert(1)</script>")
    out = tmp_path / "report.html"
    with Engine(ws, verbose=False) as engine:
        engine.execute(engine.plan(engine.units(Scope()), stale_only=True))
        write_report(engine, engine.plan(engine.units(Scope())), out)
    html = out.read_text()
    assert "alert(1)" in html  # the error is there, for the detail panel ...
    assert "<script>alert(1)" not in html  # ... but only as data, never as markup
    assert 'src="static/' not in html and 'href="static/' not in html  # all inlined
    assert not external(html)
    data = html.split('<script id="sinagot-data" type="application/json">')[1]
    data = json.loads(data.split("</script>")[0])
    assert data["status"]["live"] is False and data["status"]["total"] == 3
    assert list(data["records"]) == ["REC-20200601"]  # details of what is not done


def test_status_html_writes_the_report_a_person_can_mail(ws, tmp_path: Path):
    from test_cli import sinagot

    make_count_fail_for(ws, "REC-20200602", "no boats on 2020-06-02")
    assert sinagot("run", ws).returncode == 1
    out = tmp_path / "status.html"
    done = sinagot("status", ws, "--html", out)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {out}: 3 record(s), 6 step(s), 1 failed\n"
    data = _embedded(out.read_text())
    assert [r["record_id"] for r in data["status"]["rows"]] == list(IDS)
    assert data["records"]["REC-20200602"]["units"][0]["steps"][0]["status"] == "ERROR"

    failed = sinagot("status", ws, "--failed", "--html", out, "--check")
    assert failed.returncode == 1  # --check still says a step failed
    assert [r["record_id"] for r in _embedded(out.read_text())["status"]["rows"]] == [
        "REC-20200602"
    ]
    assert sinagot("status", ws, "--html", out, "--json").returncode == 2
    nowhere = sinagot("status", ws, "--html", tmp_path / "no" / "such" / "x.html")
    assert nowhere.returncode == 1 and nowhere.stderr.count("\n") == 1
    assert str(tmp_path / "no" / "such") in nowhere.stderr and "Traceback" not in nowhere.stderr


def _embedded(html: str) -> dict:
    data = html.split('<script id="sinagot-data" type="application/json">')[1]
    return json.loads(data.split("</script>")[0])


def test_the_board_follows_a_reload_and_a_deleted_record(ws, sinagotd):
    daemon = sinagotd(ws)
    base = daemon.wait_for("daemon.started")["status_page"]
    daemon.wait_for("daemon.idle")
    before = poll(base, "api/status", lambda a: a["counts"]["done"] == 6)

    for kind in ("raw", "computed", "computed"):
        for path in (ws / "dataset" / kind).glob("REC-20200603-*"):
            path.unlink()
    gone = poll(base, "api/status", lambda a: a["total"] == 2)
    assert [r["record_id"] for r in gone["rows"]] == ["REC-20200601", "REC-20200602"]
    assert gone["generation"] > before["generation"]

    config = ws / "workspace.toml"
    config.write_text(config.read_text().replace('"count", "mean"', '"count"'))
    daemon.wait_for("config.reloaded")
    after = poll(base, "api/status", lambda a: a["steps"] == ["count"])
    assert after["generation"] > gone["generation"]  # an open page redraws: never back to 1
    assert after["counts"]["steps"] == 2


def test_a_flood_of_idle_connections_leaves_the_daemon_working(ws, sinagotd):
    daemon = sinagotd(ws)
    base = daemon.wait_for("daemon.started")["status_page"]
    daemon.wait_for("daemon.idle")
    host, port = base.removeprefix("http://").rstrip("/").split(":")
    flood = []
    try:
        for _ in range(300):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(b"GET /api/status HTTP/1.1\r\n")  # and never the rest
            flood.append(sock)
        write_record(ws, "REC-20200604")
        daemon.wait_for("step.finished", record_id="REC-20200604", step="mean")
    finally:
        for sock in flood:
            sock.close()
    assert poll(base, "api/status", lambda a: a["counts"]["done"] == 8)
    assert "Traceback" not in daemon.stderr()


def test_a_records_detail_reads_only_the_end_of_a_huge_log(tmp_path: Path):
    from sinagot.pageview import LOG_BYTES, _tail

    log = tmp_path / "REC-1.log"
    line = json.dumps({"step_label": "count", "message": "x" * 200}) + "\n"
    with log.open("w") as fh:
        fh.writelines(line for _ in range(50_000))  # 10 MB
        fh.write(json.dumps({"step_label": "count", "message": "the last one"}) + "\n")
    entries = _tail([log], LOG_BYTES)
    assert entries[-1]["message"] == "the last one"
    assert len(entries) < LOG_BYTES // 200  # a bounded read, and no torn first line
    assert all(entry["step_label"] == "count" for entry in entries)


# -- the keeper's thread and the daemon's stop -------------------------------------------------


def test_a_full_plan_in_progress_ends_at_the_daemon_stop(harbor):
    """At a million records a full plan takes a minute: a stop ends it between two chunks,
    so that the keeper's thread is joined before the process exits (one killed inside RE2
    at exit aborted the daemon after its clean `daemon.stopped`)."""
    engine = Engine(harbor, verbose=False)
    units = engine.units(Scope())
    assert len(units) == 3
    stop = threading.Event()
    seen = []
    for plan in engine.iter_plan(units, chunk=1, stopped=stop.is_set):
        seen.append(plan.unit)
        stop.set()  # the daemon stops while the first chunk is under way
    assert seen == [units[0], units[0]]  # that chunk's two steps, no later chunk
    assert len(list(engine.iter_plan(units, chunk=1, stopped=lambda: False))) == 6


def test_the_keeper_builds_its_board_and_its_thread_ends_at_stop(harbor):
    class Log:
        def exception(self, event: str, **fields: object) -> None:
            raise AssertionError(f"{event} {fields}")

    keeper = StatusKeeper(str(harbor), Log()).start()
    deadline = time.monotonic() + 60
    while keeper.board is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keeper.board is not None
    assert keeper.board.units_of("REC-20200601")
    keeper.stop()
    assert not keeper.started  # joined: nothing of it left running at the process's exit
