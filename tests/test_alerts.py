"""Failure alerts (sinagotd/alerts.py), against real local servers: an HTTP server that
records the webhook's POSTs (plain and TLS), and an SMTP server (aiosmtpd) for e-mail.

The batching window runs on a clock the tests drive (`clock=lambda: t[0]`, `tick(t[0])`);
what the servers receive is waited for with polls bounded by a deadline. Events are those of
a real structlog logger, rendered to JSON lines as the daemon renders them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from sinagot import ConfigError, __version__
from sinagot.config import load_config
from sinagotd import alerts as alerts_module
from sinagotd.alerts import MAX_LINES, Alerts, NotifySettings, load_notify

SECRET = "T0000/B0000/sEcReTtOkEn"  # the path of a Slack webhook URL is its token

# A self-signed certificate for localhost and 127.0.0.1, valid 2020-2120, for the TLS tests
# only (made with `openssl req` and `openssl ca -selfsign`).
CERT = """\
-----BEGIN CERTIFICATE-----
MIIBiDCCAS+gAwIBAgIBATAKBggqhkjOPQQDAjAUMRIwEAYDVQQDDAlsb2NhbGhv
c3QwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMBQxEjAQBgNVBAMM
CWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABDaxLYbzooj8zfhI
blZcRJvSvwU9Bzkz5eoVdJO1j3XidoW31sujysmX22341a6ex7Ehy2s8FOnYtERi
qWVnOnCjcDBuMBoGA1UdEQQTMBGCCWxvY2FsaG9zdIcEfwAAATAMBgNVHRMBAf8E
AjAAMA4GA1UdDwEB/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAdBgNVHQ4E
FgQUOpUHDHNiLceI+xm491OH6BPCRjQwCgYIKoZIzj0EAwIDRwAwRAIgDdzN7kIV
TIi5veaWymVIkjjahwdQ+tAk0TE8cNTHewkCIBx038wHd8Mjppj5a7KN2APyD3Zh
lcMNulwCthsalLRg
-----END CERTIFICATE-----
"""
KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgE+A1BC6M5uAV9PtM
qqp4q+q7k8PGG1B+ZX4JEuGjj7ihRANCAAQ2sS2G86KI/M34SG5WXESb0r8FPQc5
M+XqFXSTtY914naFt9bLo8rJl9tt+NWunsexIctrPBTp2LREYqllZzpw
-----END PRIVATE KEY-----
"""


# --- fixtures: a logger, a webhook server, a clock -----------------------------------------


@dataclass
class Events:
    log: Any
    entries: list[dict[str, Any]]
    out: io.StringIO

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["event"] == name]

    @property
    def text(self) -> str:
        """The JSON lines a user would read."""
        return self.out.getvalue()


@pytest.fixture
def events() -> Events:
    """A real structlog logger, as the daemon's (filtering at INFO, JSON lines)."""
    out, entries = io.StringIO(), []

    def keep(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        entries.append(dict(event))
        return event

    log = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[structlog.processors.add_log_level, keep, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    return Events(log, entries, out)


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        payload = json.loads(self.body)
        assert list(payload) == ["text"]
        return payload["text"]


@dataclass
class Hook:
    """A local HTTP server recording POSTs; `answers` are given first, then 200."""

    server: ThreadingHTTPServer
    posts: list[Post] = field(default_factory=list)
    answers: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    gate: threading.Event | None = None  # set: requests are answered once it opens

    @property
    def base(self) -> str:
        scheme = "https" if isinstance(self.server.socket, ssl.SSLSocket) else "http"
        return f"{scheme}://127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{self.base}/services/{SECRET}"

    def received(self) -> list[Post]:
        with self.lock:
            return list(self.posts)


def serve(tls: ssl.SSLContext | None = None) -> Hook:
    hook: Hook

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with hook.lock:
                hook.posts.append(Post(self.path, dict(self.headers), body))
            if hook.gate is not None:
                hook.gate.wait(10)
            with hook.lock:
                status, headers, answer = hook.answers.pop(0) if hook.answers else (200, {}, b"ok")
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    hook = Hook(server)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()  # fmt: skip
    return hook


@pytest.fixture
def hook() -> Iterator[Hook]:
    hook = serve()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "cert.pem").write_text(CERT)
    (tmp_path / "key.pem").write_text(KEY)
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def server_tls(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    return context


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(done: Callable[[], Any], alerts: Alerts, now: float, timeout: float = 10.0) -> Any:
    """Tick (at the driven time `now`) until `done()` is true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not (result := done()):
        assert time.monotonic() < deadline, "not done before the deadline"
        alerts.tick(now)
        time.sleep(0.005)
    return result


def make(url: str, events: Events, t: list[float], **kwargs: Any) -> Alerts:
    settings = NotifySettings(webhook_url=url, batch_seconds=30.0, timeout_seconds=5.0)
    return Alerts(settings, events.log, clock=lambda: t[0], workspace="eeg-lab", **kwargs)


def fail(alerts: Alerts, record: str, step: str = "preprocess", error: str = "ValueError: bad"):
    alerts.step_ended(record, "RS", "EEG", step, ok=False, error=error)


def succeed(alerts: Alerts, record: str, step: str = "preprocess") -> None:
    alerts.step_ended(record, "RS", "EEG", step, ok=True, error=None)


# --- batching and messages -----------------------------------------------------------------


def test_a_burst_of_failures_is_one_post(hook: Hook, events: Events) -> None:
    t = [100.0]
    alerts = make(hook.url, events, t)
    for i in range(50):
        t[0] = 100.0 + i * 0.5  # within the 30 s window
        fail(alerts, f"REC-{i}", error=f"ValueError: channel {i} is flat")
        alerts.tick(t[0])
    t[0] = 129.9
    alerts.tick(t[0])  # the first failure is not yet 30 s old: nothing is handed over
    assert hook.received() == [] and events.named("notify.sent") == []

    t[0] = 130.0
    wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    alerts.close()
    [post] = hook.received()
    assert post.path == f"/services/{SECRET}"
    assert post.headers["Content-Type"] == "application/json"
    assert "sinagot" in post.headers["User-Agent"] and __version__ in post.headers["User-Agent"]
    text = post.text
    assert text.splitlines()[0] == "sinagot: 50 steps failed in workspace eeg-lab"
    listed = [line for line in text.splitlines() if line.startswith("  REC-")]
    assert len(listed) == MAX_LINES == 20
    assert listed[0] == "  REC-0 RS/EEG preprocess: ValueError: channel 0 is flat"
    assert "  … and 30 more" in text.splitlines()
    [sent] = events.named("notify.sent")
    assert sent["failed"] == 50 and sent["recovered"] == 0 and sent["level"] == "info"
    assert sent["channel"] == "webhook" and sent["target"] == hook.base


def test_a_recovery_after_a_failure_is_announced(hook: Hook, events: Events) -> None:
    t = [0.0]
    alerts = make(hook.url, events, t)
    fail(alerts, "REC-1")
    assert alerts.failed == {("REC-1", "RS", "EEG", "preprocess")}
    t[0] = 30.0
    wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    t[0] = 100.0
    succeed(alerts, "REC-1")
    t[0] = 130.0
    wait_for(lambda: len(events.named("notify.sent")) == 2, alerts, t[0])
    alerts.close()
    first, second = hook.received()
    assert "REC-1 RS/EEG preprocess: ValueError: bad" in first.text
    assert second.text.splitlines()[0] == "sinagot: 1 step recovered in workspace eeg-lab"
    assert "  REC-1 RS/EEG preprocess" in second.text.splitlines()
    assert "failed" not in second.text.lower()
    sent = events.named("notify.sent")[1]
    assert (sent["failed"], sent["recovered"]) == (0, 1)


def test_a_success_never_failed_says_nothing(hook: Hook, events: Events) -> None:
    t = [0.0]
    alerts = make(hook.url, events, t)
    for i in range(10):
        succeed(alerts, f"REC-{i}")
    t[0] = 1000.0
    alerts.tick(t[0])
    started = time.monotonic()
    alerts.close()
    assert time.monotonic() - started < 1.0
    assert hook.received() == [] and events.entries == []


def test_failed_before_seeds_recoveries(hook: Hook, events: Events) -> None:
    t = [0.0]
    before = [("REC-1", "RS", "EEG", "preprocess"), ("REC-2", None, None, "count")]
    alerts = make(hook.url, events, t, failed_before=before)
    succeed(alerts, "REC-1")
    alerts.step_ended("REC-2", None, None, "count", ok=True, error=None)  # unit mode
    succeed(alerts, "REC-3")  # never failed
    succeed(alerts, "REC-1", step="features")  # another step of a failed unit
    t[0] = 30.0
    wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    assert alerts.failed == set()  # what a successor would be given
    alerts.close()
    [post] = hook.received()
    lines = post.text.splitlines()
    assert lines[0] == "sinagot: 2 steps recovered in workspace eeg-lab"
    assert "  REC-1 RS/EEG preprocess" in lines and "  REC-2 count" in lines
    assert "REC-3" not in post.text and "features" not in post.text


def test_within_a_batch_only_the_latest_state_counts(hook: Hook, events: Events) -> None:
    t = [0.0]
    alerts = make(hook.url, events, t, failed_before=[("REC-2", "RS", "EEG", "preprocess")])
    fail(alerts, "REC-1", error="ValueError: first")
    fail(alerts, "REC-1", error="ValueError: second")  # twice: one line, the latest error
    fail(alerts, "REC-3")
    succeed(alerts, "REC-3")  # failed then recovered: recovered
    succeed(alerts, "REC-2")
    fail(alerts, "REC-2", error="KeyError: again")  # recovered then failed: failed
    t[0] = 30.0
    wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    alerts.close()
    lines = hook.received()[0].text.splitlines()
    assert lines[0] == "sinagot: 2 steps failed, 1 recovered in workspace eeg-lab"
    assert "  REC-1 RS/EEG preprocess: ValueError: second" in lines
    assert "  REC-2 RS/EEG preprocess: KeyError: again" in lines
    assert "  REC-3 RS/EEG preprocess" in lines
    assert "first" not in "\n".join(lines)
    assert events.named("notify.sent")[0]["failed"] == 2


def test_failures_and_recoveries_share_the_lines(hook: Hook, events: Events) -> None:
    t = [0.0]
    before = [(f"OLD-{i}", "RS", "EEG", "preprocess") for i in range(8)]
    alerts = make(hook.url, events, t, failed_before=before)
    for i in range(30):
        fail(alerts, f"REC-{i}")
    for i in range(8):
        succeed(alerts, f"OLD-{i}")
    t[0] = 30.0
    wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    alerts.close()
    lines = hook.received()[0].text.splitlines()
    assert lines[0] == "sinagot: 30 steps failed, 8 recovered in workspace eeg-lab"
    units = [line for line in lines if line.startswith(("  REC-", "  OLD-"))]
    assert len(units) == MAX_LINES
    assert sum(u.startswith("  OLD-") for u in units) == 5  # recoveries keep a few lines
    assert "  … and 15 more" in lines and "  … and 3 more" in lines
    assert lines.index("Failed (30):") < lines.index("Recovered (8):")


def test_markup_in_an_error_is_defused(hook: Hook, events: Events) -> None:
    t = [0.0]
    alerts = make(hook.url, events, t)
    traceback = (
        'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\n'
        "RuntimeError: ``` done <!channel> <https://evil.example|click>"
    )
    fail(alerts, "REC-1", error=traceback)
    fail(alerts, "REC-2", error="OSError: " + "x" * 5000)
    fail(alerts, "REC-3", error="")
    t[0] = 30.0
    wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    alerts.close()
    text = hook.received()[0].text
    assert text.count("```") == 2  # ours: the units in one code block
    assert "<" not in text and ">" not in text
    assert "RuntimeError: ''' done \u2039!channel\u203a" in text  # the exception, not "Traceback"
    assert "Traceback" not in text
    assert max(len(line) for line in text.splitlines()) <= 302
    assert "  REC-3 RS/EEG preprocess: failed" in text.splitlines()


# --- sending, failures of the far end ------------------------------------------------------


def test_a_500_is_logged_then_the_kept_items_are_delivered(hook: Hook, events: Events) -> None:
    hook.answers.append((500, {}, b"invalid_payload"))
    t = [0.0]
    alerts = make(hook.url, events, t)
    fail(alerts, "REC-1")
    t[0] = 30.0
    [error] = wait_for(lambda: events.named("notify.error"), alerts, t[0])
    assert error["level"] == "error" and error["channel"] == "webhook"
    assert error["error"] == "HTTP 500 Internal Server Error: invalid_payload"
    assert error["target"] == hook.base and error["failed"] == 1 and error["retry_in_s"] == 30
    t[0] = 40.0
    fail(alerts, "REC-2")  # joins the kept item
    t[0] = 59.9
    alerts.tick(t[0])  # before the retry's wait is over: nothing sent
    assert len(hook.received()) == 1
    t[0] = 60.0
    wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    alerts.close()
    assert len(hook.received()) == 2
    lines = hook.received()[1].text.splitlines()
    assert lines[0] == "sinagot: 2 steps failed in workspace eeg-lab"
    assert "  REC-1 RS/EEG preprocess: ValueError: bad" in lines
    assert "  REC-2 RS/EEG preprocess: ValueError: bad" in lines
    assert events.named("notify.sent")[0]["failed"] == 2
    assert SECRET not in events.text and "sEcReT" not in events.text


def test_retries_wait_longer_each_time(hook: Hook, events: Events) -> None:
    hook.answers.extend([(503, {}, b"")] * 3)
    t = [0.0]
    alerts = make(hook.url, events, t)
    fail(alerts, "REC-1")
    waits = []
    for n in range(1, 4):
        t[0] += 30.0 if n == 1 else waits[-1]
        wait_for(lambda n=n: len(events.named("notify.error")) == n, alerts, t[0])
        waits.append(events.named("notify.error")[-1]["retry_in_s"])
    assert waits == [30, 60, 120]
    t[0] += waits[-1]
    wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    alerts.close()
    assert events.named("notify.error")[0]["error"] == "HTTP 503 Service Unavailable"


def test_kept_items_are_capped_and_counted(
    hook: Hook, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(alerts_module, "MAX_KEPT", 30)
    hook.answers.append((500, {}, b""))
    t = [0.0]
    alerts = make(hook.url, events, t)
    for i in range(25):
        fail(alerts, f"REC-{i}")
    t[0] = 30.0
    wait_for(lambda: events.named("notify.error"), alerts, t[0])
    for i in range(25, 100):  # while the endpoint is down
        fail(alerts, f"REC-{i}")
    (channel,) = alerts._channels
    assert len(channel.pending.items) == 30  # no unbounded growth: the rest is counted
    t[0] = 60.0
    wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    alerts.close()
    text = hook.received()[1].text
    assert text.splitlines()[0] == "sinagot: 100 steps failed in workspace eeg-lab"
    assert "  … and 80 more" in text.splitlines()
    assert events.named("notify.sent")[0]["failed"] == 100


def test_an_unreachable_url_is_logged_and_never_blocks(events: Events) -> None:
    t = [0.0]
    url = f"http://127.0.0.1:{closed_port()}/services/{SECRET}"
    alerts = make(url, events, t)
    fail(alerts, "REC-1")
    t[0] = 30.0
    started = time.monotonic()
    alerts.tick(t[0])
    assert time.monotonic() - started < 0.5
    [error] = wait_for(lambda: events.named("notify.error"), alerts, t[0])
    assert "refused" in error["error"].lower()
    assert error["target"] == url.split("/services")[0]
    fail(alerts, "REC-2")
    started = time.monotonic()
    alerts.close(timeout=5.0)  # tries once more, fails at once, says so
    assert time.monotonic() - started < 2.0
    last = events.named("notify.error")[-1]
    assert last["failed"] == 2 and last["retry_in_s"] is None
    assert SECRET not in events.text
    alerts.tick(100.0)  # after close: nothing, no exception
    fail(alerts, "REC-3")


def test_a_hanging_server_blocks_neither_tick_nor_close(events: Events) -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/services/{SECRET}"
        settings = NotifySettings(webhook_url=url, batch_seconds=0.0, timeout_seconds=5.0)
        t = [0.0]
        alerts = Alerts(settings, events.log, clock=lambda: t[0])
        fail(alerts, "REC-1")
        started = time.monotonic()
        for _ in range(20):
            alerts.tick(t[0])
            fail(alerts, "REC-2")  # meanwhile: pending, not a second request
        assert time.monotonic() - started < 1.0  # the request waits 5 s for an answer
        started = time.monotonic()
        alerts.close(timeout=0.1)
        assert time.monotonic() - started < 1.0
        [error] = events.named("notify.error")  # one, for both batches
        assert error["error"] == "not sent within 0.1 s of shutting down"
        assert error["failed"] == 2 and error["retry_in_s"] is None


def test_a_slow_server_at_shutdown_gets_nothing_more(hook: Hook, events: Events) -> None:
    hook.gate = threading.Event()
    t = [0.0]
    alerts = make(hook.url, events, t)
    fail(alerts, "REC-1")
    t[0] = 30.0
    alerts.tick(t[0])
    wait_for(lambda: hook.received(), alerts, t[0])  # it has the request, and sits on it
    fail(alerts, "REC-2")
    started = time.monotonic()
    alerts.close(timeout=0.2)
    assert time.monotonic() - started < 2.0  # the server holds the request 10 s
    [error] = events.named("notify.error")
    assert error["failed"] == 2 and error["error"] == "not sent within 0.2 s of shutting down"
    (channel,) = alerts._channels
    hook.gate.set()  # the first request is answered now; the second is never sent
    assert channel.thread is not None
    channel.thread.join(10)
    assert not channel.thread.is_alive() and len(hook.received()) == 1


def test_a_timeout_is_an_error_and_the_items_are_kept(hook: Hook, events: Events) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/services/{SECRET}"
        settings = NotifySettings(webhook_url=url, batch_seconds=0.0, timeout_seconds=0.2)
        t = [0.0]
        alerts = Alerts(settings, events.log, clock=lambda: t[0])
        fail(alerts, "REC-1")
        [error] = wait_for(lambda: events.named("notify.error"), alerts, t[0])
        assert error["error"] == "timed out" and error["retry_in_s"] == 5  # RETRY_MIN_SECONDS
        assert alerts._channels[0].pending.counts() == (1, 0)
        alerts.close(timeout=0.0)


def test_a_redirect_is_not_followed(hook: Hook, events: Events) -> None:
    elsewhere = serve()
    try:
        hook.answers.append((307, {"Location": f"{elsewhere.url}/stolen"}, b""))
        t = [0.0]
        alerts = make(hook.url, events, t)
        fail(alerts, "REC-1")
        t[0] = 30.0
        [error] = wait_for(lambda: events.named("notify.error"), alerts, t[0])
        alerts.close(timeout=0.0)
        assert error["error"] == (
            f"HTTP 307 Temporary Redirect (a redirect to {elsewhere.base}; not followed)"
        )
        assert elsewhere.received() == []
        assert SECRET not in events.text
    finally:
        elsewhere.server.shutdown()
        elsewhere.server.server_close()


def test_close_flushes_what_is_pending(hook: Hook, events: Events) -> None:
    settings = NotifySettings(webhook_url=hook.url)  # 30 s window, the real clock
    alerts = Alerts(settings, events.log, workspace="eeg-lab")
    fail(alerts, "REC-1")
    alerts.tick(time.monotonic())
    assert hook.received() == []
    alerts.close()
    [post] = hook.received()
    assert "REC-1 RS/EEG preprocess" in post.text
    assert events.named("notify.sent")[0]["failed"] == 1
    alerts.close()  # twice: nothing more
    assert len(hook.received()) == 1


def test_close_sends_what_waits_for_a_retry(hook: Hook, events: Events) -> None:
    hook.answers.append((502, {}, b""))
    t = [0.0]
    alerts = make(hook.url, events, t)
    fail(alerts, "REC-1")
    t[0] = 30.0
    wait_for(lambda: events.named("notify.error"), alerts, t[0])
    alerts.close()  # the retry is 30 s away: shutting down sends it now
    assert "REC-1" in hook.received()[1].text
    assert len(events.named("notify.sent")) == 1


def test_real_clock_and_a_short_window(hook: Hook, events: Events) -> None:
    settings = NotifySettings(webhook_url=hook.url, batch_seconds=0.2)
    alerts = Alerts(settings, events.log)
    fail(alerts, "REC-1")
    deadline = time.monotonic() + 10
    while not events.named("notify.sent"):
        assert time.monotonic() < deadline
        alerts.tick(time.monotonic())
        time.sleep(0.01)
    alerts.close()
    assert hook.received()[0].text.splitlines()[0] == "sinagot: 1 step failed"


def test_alerts_off_do_nothing(events: Events) -> None:
    alerts = Alerts(NotifySettings(), events.log)
    fail(alerts, "REC-1")
    alerts.tick(1e9)
    alerts.close()
    assert alerts.targets == () and events.entries == []
    assert not any(t.name.startswith("sinagotd-notify") for t in threading.enumerate())


def test_https_webhook_verifies_the_certificate(
    cert: tuple[Path, Path], events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    secure = serve(server_tls(cert))
    try:
        t = [0.0]
        alerts = make(secure.url, events, t)
        fail(alerts, "REC-1")
        t[0] = 30.0
        [error] = wait_for(lambda: events.named("notify.error"), alerts, t[0])
        assert "CERTIFICATE_VERIFY_FAILED" in error["error"]  # not trusted: not sent
        monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))  # trusted: sent
        t[0] = 60.0
        wait_for(lambda: events.named("notify.sent"), alerts, t[0])
        alerts.close()
        assert "REC-1" in secure.received()[-1].text
        assert events.named("notify.sent")[0]["target"] == secure.base
    finally:
        secure.server.shutdown()
        secure.server.server_close()


# --- e-mail, against a real SMTP server ----------------------------------------------------


@dataclass
class Mailbox:
    port: int
    mails: list[Any]
    logins: list[tuple[bytes, bytes]]

    def received(self) -> list[Any]:
        return list(self.mails)


@pytest.fixture
def smtp_server(cert: tuple[Path, Path]) -> Iterator[Callable[..., Mailbox]]:
    """`smtp_server(mode)`: an aiosmtpd server on 127.0.0.1; mode "none" (plain), "starttls"
    (offers STARTTLS, requires it and a login) or "tls" (TLS from the start, login)."""
    from aiosmtpd import smtp  # a test dependency

    started = []

    def start(mode: str) -> Mailbox:
        box = Mailbox(0, [], [])

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                box.mails.append(envelope)
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            box.logins.append((auth_data.login, auth_data.password))
            ok = auth_data.password == b"s3cret"
            return smtp.AuthResult(success=ok, handled=ok)  # not handled: 535 is answered

        tls = server_tls(cert)
        kwargs: dict[str, Any] = {"hostname": "mail.test"}
        if mode == "starttls":
            kwargs |= {"tls_context": tls, "require_starttls": True,
                       "authenticator": authenticator, "auth_required": True}  # fmt: skip
        elif mode == "tls":  # TLS from the first byte, which aiosmtpd does not see: a login
            # is then allowed, not required (requiring it would warn that it is unsafe)
            kwargs |= {"authenticator": authenticator, "auth_require_tls": False}
        protocols: list[Any] = []
        ready, control = threading.Event(), {}

        def factory() -> Any:
            protocols.append(smtp.SMTP(Handler(), **kwargs))
            return protocols[-1]

        async def serve_until_stopped() -> None:
            loop = asyncio.get_running_loop()
            control["loop"], control["stop"] = loop, asyncio.Event()
            server = await loop.create_server(
                factory, "127.0.0.1", 0, ssl=tls if mode == "tls" else None
            )
            box.port = server.sockets[0].getsockname()[1]
            ready.set()
            await control["stop"].wait()
            server.close()
            for protocol in protocols:  # connections left open by a client that failed
                if protocol.transport is not None:
                    protocol.transport.close()
            await server.wait_closed()
            for _ in range(5):  # the transports' closing callbacks
                await asyncio.sleep(0)

        thread = threading.Thread(target=asyncio.run, args=(serve_until_stopped(),))
        thread.start()
        assert ready.wait(10), "the SMTP server did not start"
        started.append((control, thread))
        return box

    yield start
    for control, thread in started:
        control["loop"].call_soon_threadsafe(control["stop"].set)
        thread.join(10)


def mail_settings(port: int, **kwargs: Any) -> NotifySettings:
    base = {"email_to": ("lab@example.org", "pi@example.org"), "email_from": "eeg@example.org",
            "smtp_host": "127.0.0.1", "smtp_port": port, "batch_seconds": 30.0,
            "timeout_seconds": 5.0}  # fmt: skip
    return NotifySettings(**(base | kwargs))


def test_email_plain(smtp_server: Callable[..., Mailbox], events: Events) -> None:
    box = smtp_server("none")
    t = [0.0]
    alerts = Alerts(mail_settings(box.port, smtp_security="none"), events.log,
                    clock=lambda: t[0], workspace="eeg-lab")  # fmt: skip
    assert alerts.targets == (f"email smtp://127.0.0.1:{box.port}",)
    fail(alerts, "REC-1", error="ValueError: <b>flat</b>")
    t[0] = 30.0
    [sent] = wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    alerts.close()
    assert sent["channel"] == "email" and sent["failed"] == 1
    [envelope] = box.received()
    assert envelope.mail_from == "eeg@example.org"
    assert envelope.rcpt_tos == ["lab@example.org", "pi@example.org"]
    mail = envelope.content.decode()
    assert "Subject: sinagot: 1 step failed in workspace eeg-lab" in mail
    assert "To: lab@example.org, pi@example.org" in mail
    assert "User-Agent: sinagot/" in mail
    assert "REC-1 RS/EEG preprocess: ValueError: <b>flat</b>" in mail  # plain text: as it is
    assert "```" not in mail


def test_email_starttls_and_login(
    smtp_server: Callable[..., Mailbox], cert: tuple[Path, Path], events: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    box = smtp_server("starttls")
    t = [0.0]
    settings = mail_settings(box.port, smtp_user="sinagot", smtp_password="s3cret")
    assert "s3cret" not in repr(settings)
    alerts = Alerts(settings, events.log, clock=lambda: t[0])
    assert alerts.targets == (f"email smtp+starttls://127.0.0.1:{box.port}",)
    fail(alerts, "REC-1")
    t[0] = 30.0
    wait_for(lambda: events.named("notify.sent"), alerts, t[0])
    alerts.close()
    assert box.logins == [(b"sinagot", b"s3cret")]
    assert len(box.received()) == 1


def test_email_wrong_password_is_an_error(
    smtp_server: Callable[..., Mailbox], cert: tuple[Path, Path], events: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    box = smtp_server("tls")
    t = [0.0]
    settings = mail_settings(box.port, smtp_security="tls", smtp_user="sinagot",
                             smtp_password="wrong")  # fmt: skip
    alerts = Alerts(settings, events.log, clock=lambda: t[0])
    fail(alerts, "REC-1")
    t[0] = 30.0
    [error] = wait_for(lambda: events.named("notify.error"), alerts, t[0])
    alerts.close(timeout=0.0)
    assert error["channel"] == "email" and "535" in error["error"], error
    assert set(box.logins) == {(b"sinagot", b"wrong")}  # smtplib tries PLAIN, then LOGIN
    assert box.received() == []
    assert "wrong" not in events.text


def test_email_tls_delivers(
    smtp_server: Callable[..., Mailbox], cert: tuple[Path, Path], events: Events,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    box = smtp_server("tls")
    settings = mail_settings(box.port, smtp_security="tls", smtp_user="u",
                             smtp_password="s3cret")  # fmt: skip
    alerts = Alerts(settings, events.log)
    fail(alerts, "REC-1")
    alerts.close()  # sends now
    assert len(box.received()) == 1
    assert events.named("notify.sent")[0]["channel"] == "email"


def test_email_starttls_refused_by_a_plain_server(
    smtp_server: Callable[..., Mailbox], events: Events
) -> None:
    box = smtp_server("none")
    alerts = Alerts(mail_settings(box.port), events.log)  # starttls, the default
    fail(alerts, "REC-1")
    alerts.close()
    [error] = events.named("notify.error")
    assert "does not offer STARTTLS" in error["error"] and box.received() == []


def test_webhook_and_email_are_independent(
    smtp_server: Callable[..., Mailbox], events: Events
) -> None:
    box = smtp_server("none")
    url = f"http://127.0.0.1:{closed_port()}/x"
    t = [0.0]
    settings = mail_settings(box.port, smtp_security="none", webhook_url=url)
    alerts = Alerts(settings, events.log, clock=lambda: t[0])
    fail(alerts, "REC-1")
    t[0] = 30.0
    wait_for(lambda: events.named("notify.sent") and events.named("notify.error"), alerts, t[0])
    alerts.close(timeout=0.0)
    assert events.named("notify.sent")[0]["channel"] == "email"
    assert events.named("notify.error")[0]["channel"] == "webhook"
    assert len(box.received()) == 1


# --- configuration -------------------------------------------------------------------------


@pytest.fixture
def workspace(harbor: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Any]:
    """`workspace(toml, top="")`: harbor with `toml` appended (`top` put first), loaded; no
    SINAGOTD_NOTIFY_* variable set."""
    for name in [n for n in os.environ if n.startswith("SINAGOTD_NOTIFY_")]:
        monkeypatch.delenv(name)
    original = (harbor / "workspace.toml").read_text()

    def load(toml: str, top: str = "") -> Any:
        (harbor / "workspace.toml").write_text(f"{top}\n{original}\n{toml}")
        return load_config(harbor)

    return load


def refusal(config: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_notify(config)
    return str(caught.value)


def test_defaults_without_notify(workspace: Callable[[str], Any]) -> None:
    settings = load_notify(workspace(""))
    assert settings == NotifySettings() and not settings.enabled
    assert settings.batch_seconds == 30.0 and settings.timeout_seconds == 10.0


def test_notify_table_is_read(workspace: Callable[[str], Any]) -> None:
    config = workspace(f"""
[notify]
webhook_url = "https://hooks.example.org/services/{SECRET}"
batch_seconds = 5
timeout_seconds = 2.5
email_to = ["lab@example.org"]
smtp_host = "mail.example.org"
smtp_port = 2525
smtp_security = "tls"
""")
    settings = load_notify(config)
    assert settings.webhook_url == f"https://hooks.example.org/services/{SECRET}"
    assert (settings.batch_seconds, settings.timeout_seconds) == (5.0, 2.5)
    assert settings.email_to == ("lab@example.org",) and settings.smtp_port == 2525
    assert settings.enabled and SECRET not in repr(settings)
    alerts = Alerts(settings, structlog.get_logger())
    assert alerts.targets == ("webhook https://hooks.example.org",
                              "email smtps://mail.example.org:2525")  # fmt: skip


def test_unknown_key_names_file_key_and_known_ones(workspace: Callable[[str], Any]) -> None:
    config = workspace('[notify]\nwebhok_url = "https://x.org/a"\n')
    message = refusal(config)
    assert message.startswith(f"{config.files[0]}: [notify] webhok_url: unknown key")
    assert "did you mean webhook_url?" in message and "batch_seconds" in message


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (f'webhook_url = "ftp://hooks.example.org/{SECRET}"',
         "[notify] webhook_url: expected an http:// or https:// URL, found scheme 'ftp'"),
        (f'webhook_url = "hooks.example.org/{SECRET}"',
         "[notify] webhook_url: expected an http:// or https:// URL, found scheme none"),
        (f'webhook_url = "https:///{SECRET}"', "[notify] webhook_url: the URL has no host"),
        (f'webhook_url = "https://u:p@hooks.example.org/{SECRET}"',
         "[notify] webhook_url: a user name or password in the URL is not supported"),
        (f'webhook_url = "https://hooks.example.org/{SECRET} x"',
         "[notify] webhook_url: the URL holds a space or a control character"),
        (f'webhook_url = "https://hooks.example.org:99999/{SECRET}"',
         "[notify] webhook_url: not a valid URL (Port out of range 0-65535)"),
        ("webhook_url = 3", "[notify] webhook_url: expected a string, found 3"),
        ("batch_seconds = -1", "[notify] batch_seconds: must not be negative, found -1"),
        ("batch_seconds = nan",
         "[notify] batch_seconds: expected a finite number of seconds, found nan"),
        ("batch_seconds = 1e9", "[notify] batch_seconds: must be at most 86400 seconds"),
        ("batch_seconds = true", "[notify] batch_seconds: expected a number of seconds"),
        ("timeout_seconds = 0", "[notify] timeout_seconds: must be above 0, found 0"),
        ("timeout_seconds = inf", "[notify] timeout_seconds: expected a finite number"),
        ('email_to = ["lab"]', "[notify] email_to: 'lab' is not an e-mail address"),
        ('email_to = ["a@b.org\\nBcc: x@y.org"]', "[notify] email_to: holds the control"),
        ("email_to = 3", "[notify] email_to: expected a list of e-mail addresses, found 3"),
        ("smtp_port = 0", "[notify] smtp_port: a port is from 1 to 65535, found 0"),
        ('smtp_port = "25"', "[notify] smtp_port: expected a port number, found '25'"),
        ('smtp_security = "ssl"',
         "[notify] smtp_security: 'ssl' is not one of starttls, tls, none"),
        ('smtp_host = "mail host"', "[notify] smtp_host: 'mail host' is not a host name"),
        ('email_to = ["a@b.org"]\nsmtp_user = "u"',
         "[notify] smtp_user: given without smtp_password"),
        ('smtp_host = "mail.example.org"',
         "[notify] smtp_host: given without email_to (the recipients)"),
        ('email_to = ["a@b.org"]\nsmtp_user = "u"\nsmtp_password = "p"\nsmtp_security = "none"',
         "[notify] smtp_user: a password cannot be sent with smtp_security = \"none\""),
    ],
)  # fmt: skip
def test_bad_values_name_file_and_key(
    workspace: Callable[[str], Any], toml: str, expected: str
) -> None:
    config = workspace(f"[notify]\n{toml}\n")
    message = refusal(config)
    assert message.startswith(f"{config.files[0]}: "), message
    assert expected in message, message
    assert SECRET not in message  # the URL is a secret: never repeated


def test_notify_must_be_a_table(workspace: Callable[[str], Any]) -> None:
    with pytest.raises(ConfigError, match=r"\[notify\]: expected a table, found 'x'"):
        workspace("", top='notify = "x"')


def test_environment_overrides_the_table(
    workspace: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = workspace('[notify]\nwebhook_url = "https://public.example.org/x"\nbatch_seconds = 5')
    monkeypatch.setenv("SINAGOTD_NOTIFY_WEBHOOK_URL", f"https://hooks.example.org/{SECRET}")
    monkeypatch.setenv("SINAGOTD_NOTIFY_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("SINAGOTD_NOTIFY_EMAIL_TO", "a@example.org, b@example.org")
    monkeypatch.setenv("SINAGOTD_NOTIFY_SMTP_PORT", "2525")
    settings = load_notify(config)
    assert settings.webhook_url == f"https://hooks.example.org/{SECRET}"
    assert (settings.batch_seconds, settings.timeout_seconds) == (5.0, 3.0)
    assert settings.email_to == ("a@example.org", "b@example.org")
    assert settings.smtp_port == 2525
    monkeypatch.setenv("SINAGOTD_NOTIFY_WEBHOOK_URL", "")  # empty: this machine sends none
    assert load_notify(config).webhook_url is None


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SINAGOTD_NOTIFY_BATCH_SECONDS", "soon",
         "$SINAGOTD_NOTIFY_BATCH_SECONDS: expected a number of seconds, found 'soon'"),
        ("SINAGOTD_NOTIFY_BATCH_SECONDS", "-3",
         "$SINAGOTD_NOTIFY_BATCH_SECONDS: must not be negative, found '-3'"),
        ("SINAGOTD_NOTIFY_WEBHOOK_URL", f"gopher://x.org/{SECRET}",
         "$SINAGOTD_NOTIFY_WEBHOOK_URL: expected an http:// or https:// URL"),
        ("SINAGOTD_NOTIFY_SMTP_PORT", "smtp",
         "$SINAGOTD_NOTIFY_SMTP_PORT: expected a port number, found 'smtp'"),
        ("SINAGOTD_NOTIFY_WEBHOOK_ULR", "https://x.org/a",
         "$SINAGOTD_NOTIFY_WEBHOOK_ULR: unknown variable (did you mean "
         "SINAGOTD_NOTIFY_WEBHOOK_URL?)"),
    ],
)  # fmt: skip
def test_bad_environment_names_the_variable(
    workspace: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch, variable: str,
    value: str, expected: str,
) -> None:  # fmt: skip
    config = workspace('[notify]\nwebhook_url = "https://x.org/a"\nbatch_seconds = 5\n')
    monkeypatch.setenv(variable, value)
    message = refusal(config)
    assert message.startswith(expected), message
    assert SECRET not in message


def test_settings_from_the_environment_win_over_a_bad_table_value(
    workspace: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = workspace("[notify]\nbatch_seconds = -1\n")
    monkeypatch.setenv("SINAGOTD_NOTIFY_BATCH_SECONDS", "1")
    assert load_notify(config).batch_seconds == 1.0


# --- end to end: a real sinagotd posts to a real webhook -----------------------------------


def _poll(what: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := what()):
        assert time.monotonic() < deadline, "nothing within the deadline"
        time.sleep(0.05)
    return found


def test_a_running_daemon_alerts_a_failure_then_its_recovery(ws, sinagotd, hook: Hook) -> None:
    from test_daemon import make_count_fail_for

    script = ws / "scripts" / "count.py"
    good = script.read_text()
    make_count_fail_for(ws, "REC-20200602", "no boats on 2020-06-02")
    make_count_fail_for(ws, "REC-20200603", "no boats on 2020-06-03")
    with (ws / "workspace.toml").open("a") as file:
        file.write(f'\n[notify]\nwebhook_url = "{hook.url}"\nbatch_seconds = 0.5\n')
    daemon = sinagotd(ws)
    started = daemon.wait_for("daemon.started")
    assert started["alerts"] == [f"webhook {hook.base}"]  # the secret path is never logged
    daemon.wait_for("notify.sent", failed=2, recovered=0)
    [post] = hook.received()  # two failures, one message
    assert "REC-20200602" in post.text and "REC-20200603" in post.text
    assert "no boats on 2020-06-02" in post.text

    script.write_text(good)  # fixed: both run again and succeed
    daemon.wait_for("notify.sent", failed=0, recovered=2)
    recovery = _poll(lambda: hook.received()[1:])[0]
    assert "recovered" in recovery.text and "REC-20200602" in recovery.text
    assert SECRET not in json.dumps(daemon.events)
