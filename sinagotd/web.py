"""The status page, its JSON API and `/metrics`, served by Tornado in a thread of its own.

Tornado because the daemon already carries it (Dask's scheduler and dashboard run on it):
no new dependency, a mature HTTP/1.1 server, and async handlers that wait for the status
keeper without holding a thread. Read-only by construction: GET and HEAD only (Tornado
answers 405 to anything else), and no handler touches the workspace.

A page served on a loopback address answers only requests that name a loopback host: a
web page elsewhere cannot use DNS rebinding to read the lab's record IDs through the
browser of someone on this machine. SSH tunnels and a reverse proxy's default
`proxy_pass http://127.0.0.1:PORT` both send such a host.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import json
import socket
import threading
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sinagot.board import API_VERSION, Query
from sinagot.report import page_assets

from .statusview import NotReady, StatusKeeper

MAX_CONNECTIONS = 64  # open at once; more are closed at once (a flood costs the daemon nothing)
HEADER_TIMEOUT = 10.0  # seconds a client has to send its request's headers
DETAIL_TIMEOUT = 15.0  # seconds a record's detail may take (a full plan may be under way)
MAX_ID = 1024  # characters of a record ID in a URL
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_LOOPBACK_ONLY = (
    "this page answers only on a loopback address (localhost); "
    "docs/operations.md says how to reach it from another machine"
)
_ASSETS = {"app.js": "application/javascript", "app.css": "text/css"}


class StatusServer:
    """Binds at construction (a port in use is an OSError the daemon reports), then serves
    from its own thread and event loop until `stop()`."""

    def __init__(
        self, keeper: StatusKeeper, registry: CollectorRegistry, host: str, port: int
    ) -> None:
        self._sockets = tornado.netutil.bind_sockets(port, host, family=_family(host))
        self.port = self._sockets[0].getsockname()[1]
        self.url = f"http://{_bracketed(host)}:{self.port}/"
        loopback = ipaddress.ip_address(host).is_loopback
        context = {"keeper": keeper, "registry": registry, "loopback_only": loopback,
                   "assets": page_assets()}  # fmt: skip
        self._app = tornado.web.Application(
            [
                (r"/", PageHandler, context),
                (r"/static/([a-z]+\.[a-z]+)", AssetHandler, context),
                (r"/api/status", StatusHandler, context),
                (r"/api/records/(.+)", RecordHandler, context),
                (r"/metrics", MetricsHandler, context),
            ],
            default_handler_class=NotFoundHandler,
            default_handler_args=context,
            log_function=lambda handler: None,  # no access log: the daemon's events are its log
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sinagotd-web", daemon=True)

    def start(self) -> StatusServer:
        self._thread.start()
        self._ready.wait(timeout=10.0)
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        server = _CappedServer(
            self._app, max_body_size=4096, max_header_size=16384,
            idle_connection_timeout=HEADER_TIMEOUT, body_timeout=HEADER_TIMEOUT,
        )  # fmt: skip
        server.add_sockets(self._sockets)
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            server.stop()
            loop.run_until_complete(server.close_all_connections())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5.0)
        else:
            for sock in self._sockets:
                sock.close()


class _CappedServer(tornado.httpserver.HTTPServer):
    """At most `MAX_CONNECTIONS` open: the page is for a few people, and a flood of idle
    connections must not take the file descriptors the daemon needs for its own work."""

    def handle_stream(self, stream: Any, address: tuple) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            stream.close()
            return
        super().handle_stream(stream, address)


class _Base(tornado.web.RequestHandler):
    def initialize(self, keeper: StatusKeeper, registry: CollectorRegistry,
                   loopback_only: bool, assets: dict[str, bytes]) -> None:  # fmt: skip
        self.keeper, self.registry, self.assets = keeper, registry, assets
        self.loopback_only = loopback_only

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", _CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Cache-Control", "no-store")
        self.clear_header("Server")

    def prepare(self) -> None:
        if self.loopback_only and not _loopback_host(self.request.host_name):
            self._json(421, {"error": _LOOPBACK_ONLY})
            self.finish()

    def _json(self, code: int, body: Any) -> None:
        if "error" in body:
            body = {"api": API_VERSION, **body}
        self.set_status(code)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.write(json.dumps(body, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._json(status_code, {"error": self._reason})

    async def head(self, *args: str) -> None:
        answer = self.get(*args)  # type: ignore[func-returns-value]
        if inspect.isawaitable(answer):
            await answer


class PageHandler(_Base):
    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.write(self.assets["index.html"])


class AssetHandler(_Base):
    def get(self, name: str) -> None:
        if name not in _ASSETS:
            raise tornado.web.HTTPError(404)
        self.set_header("Content-Type", f"{_ASSETS[name]}; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.write(self.assets[name])


class StatusHandler(_Base):
    def get(self) -> None:
        params = {k: self.get_query_argument(k) for k in self.request.query_arguments}
        try:
            query = Query.parse(params)
        except ValueError as exc:
            self._json(400, {"error": str(exc)})
            return
        board = self.keeper.board
        if board is None:
            self._json(503, {"error": "the status is being computed; try again in a moment"})
            return
        self._json(200, board.query(query))


class RecordHandler(_Base):
    async def get(self, record_id: str) -> None:
        if len(record_id) > MAX_ID:
            self._json(400, {"error": f"a record ID of at most {MAX_ID} characters"})
            return
        future = self.keeper.detail(record_id)
        try:
            detail = await asyncio.wait_for(asyncio.wrap_future(future), DETAIL_TIMEOUT)
        except (TimeoutError, NotReady):
            self._json(503, {"error": "the daemon is busy planning; try again in a moment"})
            return
        if detail is None:
            self._json(404, {"error": f"no record {record_id!r} in this workspace"})
        else:
            self._json(200, detail)


class MetricsHandler(_Base):
    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(generate_latest(self.registry))


class NotFoundHandler(_Base):
    def get(self, *args: str) -> None:
        self._json(404, {"error": f"no page {self.request.path!r}"})


def _loopback_host(name: str) -> bool:
    if name.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
