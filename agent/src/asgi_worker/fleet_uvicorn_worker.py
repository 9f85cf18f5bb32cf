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
"""

import asyncio
import logging

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


class UvicornWorker(_Base):
    def run(self):
        # In the worker process only (after the fork), before uvicorn builds its Server.
        _install()
        return super().run()
