"""Failure alerts: a message when a step fails and when a failed step recovers, batched.

Two channels, each optional: a **webhook** (a JSON POST `{"text": ...}`, which Slack,
Mattermost and Teams incoming webhooks accept) and **e-mail** over SMTP. Settings come from
`[notify]` in the workspace configuration, each key overridden by a `SINAGOTD_NOTIFY_<KEY>`
environment variable, so that a secret (the webhook URL, the SMTP password) can live in a
systemd `EnvironmentFile` rather than in the TOML the whole lab reads.

The daemon loop owns an `Alerts`: it calls `step_ended` for every step that finished or
failed, and `tick` about ten times a second. Nothing here blocks the loop or raises into it:
events are gathered into a batch; when its first item is `batch_seconds` old the batch is
handed to the channel's one sender thread, so a burst is one message. A send that fails
(refused, timed out, a non-2xx answer, a redirect, which is never followed) is logged as
`notify.error` and its items are kept, merged into the next send, retried with a growing
wait; at most `MAX_KEPT` items are kept per channel, the rest only counted. The webhook URL
is a secret (Slack's carries its token in the path): events and errors name its scheme and
host only.

Events: `notify.sent` (channel, target, failed, recovered, duration_s) and `notify.error`
(channel, target, error, failed, recovered, retry_in_s: None when it will not be retried,
at shutdown).
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import json
import os
import queue
import re
import smtplib
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

from sinagot import __version__
from sinagot.config import Config
from sinagot.errors import ConfigError

from .settings import seconds

USER_AGENT = f"sinagot/{__version__} (sinagotd alerts)"
ENV_PREFIX = "SINAGOTD_NOTIFY_"
#: Lines of units listed in one message; the rest are counted ("… and N more").
MAX_LINES = 20
#: Items a channel keeps (pending, or kept after a failed send); beyond, only counted.
MAX_KEPT = 1000
MAX_LINE_CHARS = 300
#: The wait before retrying a failed send: max(batch_seconds, RETRY_MIN_SECONDS), doubled
#: after each failure, at most RETRY_MAX_SECONDS.
RETRY_MIN_SECONDS = 5.0
RETRY_MAX_SECONDS = 900.0
SMTP_SECURITY = ("starttls", "tls", "none")
SMTP_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
#: seconds setting -> (lowest, whether the lowest itself is allowed, highest)
RANGES: dict[str, tuple[float, bool, float]] = {
    "batch_seconds": (0.0, True, 86400.0),
    "timeout_seconds": (0.0, False, 600.0),
}
KEYS = (
    "webhook_url", "batch_seconds", "timeout_seconds", "email_to", "email_from",
    "smtp_host", "smtp_port", "smtp_security", "smtp_user", "smtp_password",
)  # fmt: skip

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ADDRESS = re.compile(r"[^\s@,;<>()\"\\]+@[^\s@,;<>()\"\\]+")
_HOST = re.compile(r"[A-Za-z0-9.:\[\]_-]+")

Key = tuple[str, str | None, str | None, str]  # record_id, task, modality, step


@dataclass(frozen=True)
class NotifySettings:
    """`[notify]`, validated. Alerts are on when `webhook_url` or `email_to` is given."""

    webhook_url: str | None = field(default=None, repr=False)  # a secret: never in a repr
    batch_seconds: float = 30.0
    timeout_seconds: float = 10.0
    email_to: tuple[str, ...] = ()  # no recipient: no e-mail
    email_from: str | None = None  # None: sinagotd@<host name>
    smtp_host: str = "localhost"
    smtp_port: int | None = None  # None: 587 (starttls), 465 (tls), 25 (none)
    smtp_security: str = "starttls"
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        return self.webhook_url is not None or bool(self.email_to)


# --- settings ------------------------------------------------------------------------------


def load_notify(config: Config) -> NotifySettings:
    """From [notify] in the workspace config, with SINAGOTD_NOTIFY_<KEY> environment
    variables overriding (so a secret webhook URL can live in a systemd EnvironmentFile,
    not in the TOML that the whole lab reads). Raises `ConfigError` naming the file and key,
    or the variable: an unknown key or variable, a wrong type, a number not finite or out of
    range, a URL not http(s) or without a host, an e-mail address that is not one."""
    for key in config.notify:
        if key not in KEYS:
            raise ConfigError(f"{config.where('notify', key)}: unknown key{_hint(key, KEYS)}")
    names = [ENV_PREFIX + k.upper() for k in KEYS]
    for variable in sorted(os.environ):
        if variable.startswith(ENV_PREFIX) and variable not in names:
            # a misspelt variable would otherwise leave alerts silently off
            raise ConfigError(f"${variable}: unknown variable{_hint(variable, names)}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        variable = ENV_PREFIX + key.upper()
        if (env := os.environ.get(variable)) is not None:
            value, where, from_env = env, f"${variable}", True
        elif config.notify.get(key) is not None:
            value, where, from_env = config.notify[key], config.where("notify", key), False
        else:
            continue
        values[key] = _PARSERS[key](key, value, where, from_env)
        sources[key] = where

    if values.get("webhook_url") is None:
        values.pop("webhook_url", None)
    if "email_to" not in sources:
        for key in ("email_from", "smtp_host", "smtp_port", "smtp_security", "smtp_user"):
            if key in sources:  # set up, and yet no mail would ever be sent
                raise ConfigError(f"{sources[key]}: given without email_to (the recipients)")
    user, password = values.get("smtp_user"), values.get("smtp_password")
    if (user is None) != (password is None):
        given, missing = ("smtp_user", "smtp_password") if user else ("smtp_password", "smtp_user")
        raise ConfigError(f"{sources[given]}: given without {missing}: give both, or neither")
    if user is not None and values.get("smtp_security") == "none":
        raise ConfigError(
            f'{sources["smtp_user"]}: a password cannot be sent with smtp_security = "none" '
            '(it would cross the network in clear): use "starttls" or "tls"'
        )
    return NotifySettings(**values)


def _hint(name: str, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1)
    more = f" (did you mean {close[0]}?)" if close else ""
    return f"{more}; known: {', '.join(known)}"


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, found {_show(value)}")
    if bad := _CONTROL.search(value):
        raise ConfigError(f"{where}: holds the control character {bad.group()!r}")
    return value.strip()


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _url(_key: str, value: Any, where: str, _env: bool) -> str | None:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, found {_show(value)}")
    url = value.strip()
    if not url:
        return None  # empty: alerts by webhook off (an environment may switch them off so)
    # The URL is a secret: no message below repeats it, only its scheme and host.
    if re.search(r"[\x00-\x20\x7f-\x9f]", url):
        raise ConfigError(f"{where}: the URL holds a space or a control character")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError on a port that is not one)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        scheme = f"{parts.scheme!r}" if parts.scheme else "none"
        raise ConfigError(f"{where}: expected an http:// or https:// URL, found scheme {scheme}")
    if not parts.hostname:
        raise ConfigError(f"{where}: the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{where}: a user name or password in the URL is not supported")
    return url


def _seconds(key: str, value: Any, where: str, _env: bool) -> float:
    return seconds(value, where, RANGES[key], show=_show)


def _port(_key: str, value: Any, where: str, env: bool) -> int:
    if env and isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected a port number, found {_show(value)}")
    if not 1 <= value <= 65535:
        raise ConfigError(f"{where}: a port is from 1 to 65535, found {value}")
    return value


def _address(_key: str, value: Any, where: str, _env: bool) -> str:
    text = _text(value, where)
    if not _ADDRESS.fullmatch(text):
        raise ConfigError(f"{where}: {text!r} is not an e-mail address (name@domain)")
    return text


def _addresses(key: str, value: Any, where: str, env: bool) -> tuple[str, ...]:
    if isinstance(value, str):  # "a@x, b@y": the only way an environment variable can
        items: list[Any] = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, list | tuple) and not env:
        items = list(value)
    else:
        raise ConfigError(f"{where}: expected a list of e-mail addresses, found {_show(value)}")
    found = tuple(_address(key, item, where, env) for item in items)
    return tuple(dict.fromkeys(found))


def _host(_key: str, value: Any, where: str, _env: bool) -> str:
    text = _text(value, where)
    if not _HOST.fullmatch(text):
        raise ConfigError(f"{where}: {text!r} is not a host name or address")
    return text


def _security(_key: str, value: Any, where: str, _env: bool) -> str:
    text = _text(value, where).lower()
    if text not in SMTP_SECURITY:
        raise ConfigError(f"{where}: {text!r} is not one of {', '.join(SMTP_SECURITY)}")
    return text


def _credential(_key: str, value: Any, where: str, _env: bool) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, found {_show(value)}")
    if _CONTROL.search(value):  # never repeated: it may be the password
        raise ConfigError(f"{where}: holds a control character")
    if not value:
        raise ConfigError(f"{where}: empty")
    return value


_PARSERS: dict[str, Callable[[str, Any, str, bool], Any]] = {
    "webhook_url": _url,
    "batch_seconds": _seconds,
    "timeout_seconds": _seconds,
    "email_to": _addresses,
    "email_from": _address,
    "smtp_host": _host,
    "smtp_port": _port,
    "smtp_security": _security,
    "smtp_user": _credential,
    "smtp_password": _credential,
}


def redact(url: str) -> str:
    """'https://hooks.slack.com': the scheme and host of a URL, all that may be logged."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(invalid URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}{port}"


# --- batches and messages ------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    key: Key
    failed: bool  # False: recovered
    error: str | None = None


class _Batch:
    """What one message says: the latest state of each (unit, step), in the order they
    came, at most `MAX_KEPT` of them; beyond, only counted."""

    def __init__(self) -> None:
        self.items: dict[Key, _Item] = {}
        self.more_failed = 0
        self.more_recovered = 0

    def __bool__(self) -> bool:
        return bool(self.items) or self.more_failed > 0 or self.more_recovered > 0

    def add(self, item: _Item) -> None:
        if item.key in self.items:
            del self.items[item.key]  # only the latest state matters, at its new place
        elif len(self.items) >= MAX_KEPT:
            if item.failed:
                self.more_failed += 1
            else:
                self.more_recovered += 1
            return
        self.items[item.key] = item

    def then(self, newer: _Batch) -> _Batch:
        """This batch (older) with `newer`'s items after it, newer states winning."""
        merged = _Batch()
        for batch in (self, newer):
            for item in batch.items.values():
                merged.add(item)
            merged.more_failed += batch.more_failed
            merged.more_recovered += batch.more_recovered
        return merged

    def counts(self) -> tuple[int, int]:
        failed = sum(item.failed for item in self.items.values())
        return failed + self.more_failed, len(self.items) - failed + self.more_recovered


def _describe(key: Key) -> str:
    record_id, task, modality, step = key
    scope = "/".join(p for p in (task, modality) if p)
    return " ".join(p for p in (record_id, scope, step) if p)


def _error_line(error: str | None) -> str:
    """One line of a step's error: its first, or for a traceback its last (the exception)."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    if not lines:
        return "failed"
    return lines[-1] if lines[0].startswith("Traceback") else lines[0]


def _clip(text: str, limit: int = MAX_LINE_CHARS) -> str:
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _for_chat(text: str) -> str:
    """What a script's error may hold that a chat would read as markup: a code fence would
    end ours, and `<!channel>` is a Slack mention."""
    return text.replace("```", "'''").replace("<", "\u2039").replace(">", "\u203a")


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def headline(batch: _Batch, workspace: str | None) -> str:
    failed, recovered = batch.counts()
    said = []
    if failed:
        said.append(_plural(failed, "step failed", "steps failed"))
    if recovered:
        said.append(f"{recovered} recovered" if failed else
                    _plural(recovered, "step recovered", "steps recovered"))  # fmt: skip
    where = f" in workspace {workspace}" if workspace else ""
    return f"sinagot: {', '.join(said) or 'nothing new'}{where}"


def message(batch: _Batch, workspace: str | None, *, chat: bool) -> str:
    """The text of one alert: counts, then at most `MAX_LINES` units, then how many more.
    `chat`: the units in a code block, markup defused (for a webhook); else plain text."""
    failures = [i for i in batch.items.values() if i.failed]
    recoveries = [i for i in batch.items.values() if not i.failed]
    n_failed, n_recovered = batch.counts()
    # failures first; recoveries keep a few lines when there are both
    shown_failures = failures[: MAX_LINES - min(len(recoveries), 5)]
    shown_recoveries = recoveries[: MAX_LINES - len(shown_failures)]
    lines = []
    for title, shown, total in (
        ("Failed", shown_failures, n_failed),
        ("Recovered", shown_recoveries, n_recovered),
    ):
        if not total:
            continue
        lines.append(f"{title} ({total}):")
        for item in shown:
            detail = f": {_error_line(item.error)}" if item.failed else ""
            lines.append("  " + _clip(_describe(item.key) + detail))
        if total > len(shown):
            lines.append(f"  … and {total - len(shown)} more")
    head = headline(batch, workspace)
    if chat:
        body = _for_chat("\n".join(lines))
        return f"{_for_chat(head)}\n```\n{body}\n```"
    return f"{head}\n\n" + "\n".join(lines) + "\n"


# --- channels ------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed send, never followed: it would carry the alert elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _error_text(exc: BaseException, secret: str | None = None) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP {exc.code} {exc.reason}"
        if 300 <= exc.code < 400:
            location = exc.headers.get("Location", "") if exc.headers else ""
            text += f" (a redirect to {redact(location) if location else '?'}; not followed)"
        else:
            try:
                answer = exc.read(300).decode("utf-8", "replace").strip()
            except Exception:  # an answer cut short says nothing more
                answer = ""
            if answer:
                text += f": {answer}"
    elif isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        text = str(reason) if not isinstance(reason, BaseException) else _error_text(reason)
    elif isinstance(exc, TimeoutError):
        text = f"timed out ({exc})" if str(exc) and str(exc) != "timed out" else "timed out"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if secret:
        text = text.replace(secret, redact(secret))
        path = urlsplit(secret).path
        if len(path) > 1:
            text = text.replace(path, "/…")
    return _clip(" ".join(text.split()), 500)


class _Channel:
    """One way of sending (webhook, e-mail): its pending batch, its one sender thread.

    Every attribute but the two queues belongs to the daemon loop's thread; the sender
    thread only takes jobs and puts results.
    """

    def __init__(
        self, name: str, target: str, send: Callable[[_Batch], None], settings: NotifySettings,
        log: Any,
    ) -> None:  # fmt: skip
        self.name, self.target, self.send = name, target, send
        self.settings, self.log = settings, log
        self.pending = _Batch()
        self.first_at: float | None = None
        self.retry_at: float | None = None
        self.failures = 0
        self.outstanding: collections.deque[_Batch] = collections.deque()
        self.jobs: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self.results: queue.SimpleQueue[tuple[str | None, float]] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.abandoned = threading.Event()  # shutting down and out of time: send no more

    def add(self, item: _Item, now: float) -> None:
        if not self.pending:
            self.first_at = now
        self.pending.add(item)

    def due(self, now: float) -> bool:
        if self.outstanding or not self.pending or self.first_at is None:
            return False
        at = self.first_at + self.settings.batch_seconds
        if self.retry_at is not None:
            at = max(at, self.retry_at)
        return now >= at

    def hand_off(self) -> None:
        batch, self.pending, self.first_at = self.pending, _Batch(), None
        if self.thread is None:
            self.thread = threading.Thread(
                target=self._run, name=f"sinagotd-notify-{self.name}", daemon=True
            )
            self.thread.start()
        self.outstanding.append(batch)
        self.jobs.put(batch)

    def collect(self, now: float, *, final: bool = False) -> None:
        """Log what the sender did; keep a batch that could not be sent for the next one
        (`final`: none will follow, the daemon is stopping)."""
        while self.outstanding:
            try:
                error, duration = self.results.get_nowait()
            except queue.Empty:
                return
            batch = self.outstanding.popleft()
            failed, recovered = batch.counts()
            fields = {"channel": self.name, "target": self.target,
                      "failed": failed, "recovered": recovered}  # fmt: skip
            if error is None:
                self.failures, self.retry_at = 0, None
                self.log.info("notify.sent", **fields, duration_s=round(duration, 3))
                continue
            if final:
                self.log.error("notify.error", **fields, error=error, retry_in_s=None)
                continue
            self.failures += 1
            wait = max(self.settings.batch_seconds, RETRY_MIN_SECONDS)
            wait = min(RETRY_MAX_SECONDS, wait * 2 ** min(self.failures - 1, 20))
            self.retry_at = now + wait
            self.pending = batch.then(self.pending)
            if self.first_at is None:
                self.first_at = now
            self.log.error("notify.error", **fields, error=error, retry_in_s=wait)

    def _run(self) -> None:
        while True:
            batch = self.jobs.get()
            if batch is None or self.abandoned.is_set():
                return
            started = time.monotonic()
            try:
                self.send(batch)
                error = None
            except Exception as exc:  # whatever the far end does, the sender goes on
                try:
                    error = _error_text(exc, self.settings.webhook_url)
                except Exception:
                    error = type(exc).__name__
            self.results.put((error, time.monotonic() - started))


class Alerts:
    """Failure and recovery alerts for the daemon loop (see the module's docstring)."""

    def __init__(
        self,
        settings: NotifySettings,
        log: Any,
        *,
        failed_before: Iterable[tuple[str, str | None, str | None, str]] = (),
        clock: Callable[[], float] = time.monotonic,
        workspace: str | None = None,
    ) -> None:
        """log: a structlog-style logger (log.info(event, **fields), log.warning, log.error).
        failed_before: (record_id, task, modality, step) whose last run failed, read from the
        state store at start: their later success is a recovery. workspace: its name, said
        in every message."""
        self.settings = settings
        self.log = log
        self.workspace = _clip(workspace, 200) if workspace else None  # in a mail's subject
        self._clock = clock
        self._closed = False
        self._failed: set[Key] = {tuple(k) for k in failed_before}  # type: ignore[misc]
        self._channels: list[_Channel] = []
        if settings.webhook_url is not None:
            self._channels.append(_Channel(
                "webhook", redact(settings.webhook_url), self._post, settings, log
            ))  # fmt: skip
        if settings.email_to:
            security = settings.smtp_security
            port = settings.smtp_port or SMTP_DEFAULT_PORTS[security]
            scheme = {"starttls": "smtp+starttls", "tls": "smtps", "none": "smtp"}[security]
            target = f"{scheme}://{settings.smtp_host}:{port}"
            self._channels.append(_Channel("email", target, self._mail, settings, log))

    @property
    def targets(self) -> tuple[str, ...]:
        """Where alerts go, fit to log: 'webhook https://hooks.slack.com', 'email smtp://...'."""
        return tuple(f"{c.name} {c.target}" for c in self._channels)

    @property
    def failed(self) -> frozenset[Key]:
        """(record_id, task, modality, step) known failed now: `failed_before` for an
        `Alerts` that replaces this one (its settings changed on a reload)."""
        return frozenset(self._failed)

    def step_ended(
        self, record_id: str, task: str | None, modality: str | None, step: str, ok: bool,
        error: str | None,
    ) -> None:  # fmt: skip
        """Called by the daemon loop for every finished/failed step. Cheap, never blocks,
        never raises."""
        if self._closed or not self._channels:
            return
        try:
            key = (record_id, task, modality, step)
            if ok:
                if key not in self._failed:
                    return
                self._failed.discard(key)
                item = _Item(key, failed=False)
            else:
                self._failed.add(key)
                item = _Item(key, failed=True, error=error)
            now = self._clock()
            for channel in self._channels:
                channel.add(item, now)
        except Exception as exc:  # an alert is never worth a fault in the loop
            self._fault(exc)

    def tick(self, now: float) -> None:
        """Called by the loop ~10 times a second: when the first pending item is
        batch_seconds old, hand the batch to a background sender thread. Never blocks."""
        if self._closed:
            return
        try:
            for channel in self._channels:
                channel.collect(now)
                if channel.due(now):
                    channel.hand_off()
        except Exception as exc:
            self._fault(exc)

    def close(self, timeout: float = 5.0) -> None:
        """On shutdown: send what is pending now, wait for the sender at most `timeout`."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + max(0.0, timeout)
        try:
            for channel in self._channels:
                channel.collect(self._clock())  # a failed batch joins what is sent now
                if channel.pending:  # now, whatever the window or a retry's wait
                    channel.hand_off()
                if channel.thread is not None:
                    channel.jobs.put(None)
            for channel in self._channels:
                if channel.thread is not None:
                    channel.thread.join(max(0.0, deadline - time.monotonic()))
                channel.collect(self._clock(), final=True)
                if channel.outstanding:  # the sender is still at it: given up
                    channel.abandoned.set()
                    unsent = _Batch()
                    for batch in channel.outstanding:
                        unsent = unsent.then(batch)
                    failed, recovered = unsent.counts()
                    self.log.error(
                        "notify.error", channel=channel.name, target=channel.target,
                        failed=failed, recovered=recovered, retry_in_s=None,
                        error=f"not sent within {timeout:g} s of shutting down",
                    )  # fmt: skip
                channel.outstanding.clear()
        except Exception as exc:
            self._fault(exc)

    def _fault(self, exc: Exception) -> None:
        with contextlib.suppress(Exception):  # else nothing is left to tell it with
            self.log.error("notify.error", channel=None, target=None, failed=None,
                           recovered=None, retry_in_s=None, error=_error_text(exc))  # fmt: skip

    # The senders, run in each channel's thread.

    def _post(self, batch: _Batch) -> None:
        url = self.settings.webhook_url
        assert url is not None
        body = json.dumps({"text": message(batch, self.workspace, chat=True)}).encode()
        request = urllib.request.Request(
            url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )  # fmt: skip
        # The answer is not read: a slow one cannot hold the sender longer than the timeout.
        with _OPENER.open(request, timeout=self.settings.timeout_seconds):
            pass

    def _mail(self, batch: _Batch) -> None:
        s = self.settings
        host_name = socket.gethostname() or "localhost"
        mail = EmailMessage()
        mail["Subject"] = headline(batch, self.workspace)
        mail["From"] = s.email_from or f"sinagotd@{host_name}"
        mail["To"] = ", ".join(s.email_to)
        mail["Date"] = formatdate(localtime=True)
        mail["Message-ID"] = make_msgid(domain=host_name)
        mail["User-Agent"] = USER_AGENT
        mail.set_content(message(batch, self.workspace, chat=False))
        port = s.smtp_port or SMTP_DEFAULT_PORTS[s.smtp_security]
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if s.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(s.smtp_host, port, timeout=s.timeout_seconds, context=context)
        else:
            smtp = smtplib.SMTP(s.smtp_host, port, timeout=s.timeout_seconds)
        with smtp:
            if s.smtp_security == "starttls":
                try:
                    smtp.starttls(context=context)
                except smtplib.SMTPNotSupportedError:
                    raise smtplib.SMTPNotSupportedError(
                        'the server does not offer STARTTLS (smtp_security = "none" for a '
                        "relay without TLS)"
                    ) from None
            if s.smtp_user is not None and s.smtp_password is not None:
                smtp.login(s.smtp_user, s.smtp_password)
            smtp.send_message(mail)
