"""Gunicorn worker class for ASGI apps under fleet: uvicorn's worker, minus a lost request
on every graceful stop.

Written by fleet-agent (agent/src/asgi_worker.rs); overwritten on every deploy.

Why: on SIGTERM (a restart stops the master, a HUP reload retires old workers) uvicorn's
`Server.shutdown` stops accepting and at once closes every connection that has no request
in progress (`cycle is None`). That includes connections the event loop accepted a moment
ago whose request is already in the kernel's receive buffer but not yet read: closing a
socket with unread data makes the kernel send RST, so the client gets "connection reset"
for a request that never failed. Same code in uvicorn 0.17.6 (Debian 12) and 0.54
(docs/host.md, docs/benchmarks.md).

Fix: stop accepting first (new connections wait in the listen socket's backlog, which
systemd's .socket unit keeps open for the next master or the other workers), then give
each connection that has not started a request up to FIRST_REQUEST_GRACE seconds to send
one, and only then run uvicorn's own shutdown, which lets requests in progress finish and
closes their connections. Keep-alive connections that already served a request are closed
at once as before (HTTP lets a server close an idle keep-alive connection).

Only the public shape both uvicorn generations share is used (`Server.shutdown`,
`Server.servers`, `server_state.connections`, a protocol's `cycle`); if any of it is
missing the worker logs it and falls back to uvicorn's own shutdown.

Access log: uvicorn's own access lines carry no response time, so the worker turns them
off and writes fleet's line for every HTTP request itself, in the format the unit gives
Gunicorn (`--access-logformat`, the same one sync workers use; agent/src/requests/) and
through Gunicorn's access logger, so the lines land in the same file and are reopened on
the same signals. The agent counts requests per release from that file.
"""

import asyncio
import inspect
import logging
import time

try:
    # The maintained home of the worker class since uvicorn 0.30 (PyPI `uvicorn-worker`).
    from uvicorn_worker import UvicornWorker as _Base
except ImportError:
    from uvicorn.workers import UvicornWorker as _Base
from uvicorn.server import Server

# How long a just-accepted connection may take to send its first request once the worker
# is stopping. Bounded: a client that connects and stays silent (a browser's preconnect)
# delays the stop by at most this.
FIRST_REQUEST_GRACE = 1.0
# How often the wait looks again; the loop reads pending data in between.
POLL = 0.005

_log = logging.getLogger("uvicorn.error")
_NO_CYCLE = object()


def _fresh(server):
    """Connections that were accepted but have not started a request."""
    return [
        c
        for c in list(server.server_state.connections)
        if getattr(c, "cycle", _NO_CYCLE) is None
    ]


async def _let_accepted_connections_speak(server):
    for s in server.servers:
        s.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FIRST_REQUEST_GRACE
    # Connections accepted just before close() get their protocol in a later loop turn.
    await asyncio.sleep(0)
    while _fresh(server) and loop.time() < deadline:
        await asyncio.sleep(POLL)
    left = len(_fresh(server))
    if left:
        _log.info("Closing %d connection(s) that sent no request in %.1fs", left, FIRST_REQUEST_GRACE)


def _install():
    original = Server.shutdown
    if getattr(original, "_fleet", False):
        return

    async def shutdown(self, *args, **kwargs):
        try:
            await _let_accepted_connections_speak(self)
        except AttributeError as e:
            # A uvicorn whose Server no longer has the shape read above.
            _log.warning("fleet worker: %s; falling back to uvicorn's own shutdown", e)
        return await original(self, *args, **kwargs)

    shutdown._fleet = True
    Server.shutdown = shutdown


class _Atoms(dict):
    """Gunicorn's access-log atoms; any the format names that ASGI has no value for is '-'
    (as Gunicorn's own SafeAtoms does)."""

    def __missing__(self, key):
        return "-"


def _target(scope):
    """The request target as the client sent it, with nothing that could end the line or
    split a field: bytes outside printable ASCII, space and '"' are %-escaped."""
    raw = scope.get("raw_path")
    if not raw:
        raw = scope.get("path", "").encode("utf-8", "surrogateescape")
    query = scope.get("query_string") or b""
    if query:
        raw = raw + b"?" + query
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b != 0x22 else "%%%02X" % b for b in raw
    )


def _is_asgi3(app):
    # uvicorn's own test for the interface (Config.load, interface = "auto").
    if inspect.isclass(app):
        return hasattr(app, "__await__")
    if inspect.isfunction(app):
        return asyncio.iscoroutinefunction(app)
    return asyncio.iscoroutinefunction(getattr(app, "__call__", None))


class _AccessLog:
    """ASGI wrapper: times each HTTP request from the call to the app's return, takes the
    status from `http.response.start` and writes one access line."""

    def __init__(self, app, logger, fmt):
        if not _is_asgi3(app):
            from uvicorn.middleware.asgi2 import ASGI2Middleware

            app = ASGI2Middleware(app)
        self.app = app
        self.logger = logger
        self.fmt = fmt

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        start = time.monotonic()
        sent = {"status": None, "bytes": 0}

        async def timed_send(message):
            kind = message.get("type")
            if kind == "http.response.start":
                sent["status"] = message.get("status")
            elif kind == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
            await send(message)

        status = None
        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            # uvicorn answers 500 when the app raises before it started a response.
            status = 500
            raise
        except BaseException:
            # Cancelled (the client went away): nginx's "client closed request".
            status = 499
            raise
        finally:
            # An app that returns without a response gets uvicorn's 500.
            self._write(scope, sent["status"] or status or 500, time.monotonic() - start, sent["bytes"])

    def _write(self, scope, status, seconds, size):
        try:
            client = scope.get("client")
            atoms = _Atoms(
                s=str(status),
                D=str(int(seconds * 1_000_000)),
                r="%s %s HTTP/%s"
                % (scope.get("method", "-"), _target(scope), scope.get("http_version", "1.1")),
                m=scope.get("method", "-"),
                h=client[0] if client else "-",
                b=str(size),
                t=time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
            )
            self.logger.info(self.fmt % atoms)
        except Exception as e:
            # Never fail a request over its log line.
            _log.warning("fleet worker: cannot write the access line: %s", e)


class UvicornWorker(_Base):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # uvicorn's access lines off (no response time in them): _AccessLog writes fleet's.
        access = logging.getLogger("uvicorn.access")
        access.handlers = []
        access.propagate = False
        self.config.access_log = False

    def run(self):
        # In the worker process only (after the fork), before uvicorn builds its Server
        # (which takes `self.wsgi` as the app).
        _install()
        if self.cfg.accesslog:
            self.wsgi = _AccessLog(self.wsgi, self.log.access_log, self.cfg.access_log_format)
        return super().run()
