"""The dashboard, the JSON API and ``/metrics``, on aiohttp in a thread of its own.

Read-only by default (``GET /api/flows|report|blocks|status|events|traffic``); changes
(``POST /api/blocks``, ``DELETE /api/blocks/ADDR``, ``POST /api/dump``) need the token. A
listen address other than loopback needs a token for everything but ``/metrics``. A bad token
gets 401 and one log line per client address (bounded). Every string reaches the page as JSON
and is inserted as text by the page's script (no HTML is built from data on the server), and a
strict Content-Security-Policy forbids inline script.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from netwarden.config import parse_duration, parse_listen, parse_time
from netwarden.errors import NetwardenError, UsageError
from netwarden.stats.report import GROUPINGS, aggregate
from netwarden.store.sqlite import FlowFilter, Store

log = logging.getLogger(__name__)

MAX_ROWS = 5000
_STATIC = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "application/javascript"),
    "/style.css": ("style.css", "text/css"),
}
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class WebContext:
    """What the web layer may read and do; the daemon fills it in."""

    store_path: str
    metrics: Callable[[], bytes]
    status: Callable[[], dict[str, Any]]
    blocks: Callable[[], list[dict[str, Any]]] = lambda: []
    names: Callable[[str], tuple[list[str], float | None]] = lambda a: ([], None)
    block: Callable[[str, float | None, str], dict[str, Any]] | None = None
    unblock: Callable[[str], dict[str, Any]] | None = None
    dump: Callable[[], dict[str, Any]] | None = None
    token: str | None = None
    token_for_reads: bool = False
    _stores: threading.local = field(default_factory=threading.local)

    def store(self) -> Store:
        s: Store | None = getattr(self._stores, "store", None)
        if s is None:
            s = Store(self.store_path, readonly=True)
            self._stores.store = s
        return s


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flow_filter(q: Any) -> FlowFilter:
    def num(name: str) -> int | None:
        v = q.get(name)
        if v in (None, ""):
            return None
        try:
            return int(v)
        except ValueError:
            raise UsageError("not an integer", option=name, value=v) from None

    def when(name: str) -> float | None:
        v = q.get(name)
        return None if v in (None, "") else parse_time(v, name)

    limit = num("limit")
    return FlowFilter(
        since=when("since"),
        until=when("until"),
        src=q.get("src") or None,
        dst=q.get("dst") or None,
        port=num("port"),
        proto=q.get("proto") or None,
        pid=num("pid"),
        comm=q.get("comm") or None,
        exe=q.get("exe") or None,
        unit=q.get("unit") or None,
        limit=min(limit or MAX_ROWS, MAX_ROWS),
    )


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, separators=(",", ":")),
        status=status,
        content_type="application/json",
        headers=_HEADERS,
    )


class WebServer:
    """Runs the aiohttp app on its own event loop in a daemon thread."""

    def __init__(self, ctx: WebContext, listen: str) -> None:
        self.ctx = ctx
        self.host, self.port = parse_listen(listen)
        if not is_loopback(self.host):
            if not ctx.token:
                raise UsageError(
                    "a listen address other than loopback needs a token "
                    "(--token-file FILE or NETWARDEN_TOKEN)",
                    option="--listen",
                    value=listen,
                )
            ctx.token_for_reads = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._bad_token_logged: set[str] = set()
        self.bound_port: int | None = None

    # ------------------------------------------------------------------ app
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[self._auth])
        r = app.router
        for path in _STATIC:
            r.add_get(path, self._static)
        r.add_get("/metrics", self._metrics)
        r.add_get("/api/flows", self._flows)
        r.add_get("/api/report", self._report)
        r.add_get("/api/blocks", self._blocks)
        r.add_get("/api/status", self._status)
        r.add_get("/api/events", self._events)
        r.add_get("/api/traffic", self._traffic)
        r.add_post("/api/blocks", self._post_block)
        r.add_delete("/api/blocks/{addr}", self._delete_block)
        r.add_post("/api/dump", self._post_dump)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        needs = request.method != "GET" or (
            self.ctx.token_for_reads and request.path.startswith("/api/")
        )
        if needs:
            if not self.ctx.token:
                return _json({"error": "changes through the API need a token"}, 403)
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {self.ctx.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                peer = request.remote or "?"
                if peer not in self._bad_token_logged and len(self._bad_token_logged) < 1024:
                    self._bad_token_logged.add(peer)
                    log.warning("API request from %s with a bad or missing token: 401", peer)
                return _json({"error": "bad or missing token"}, 401)
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except NetwardenError as exc:
            return _json({"error": str(exc)}, 400)

    async def _static(self, request: web.Request) -> web.Response:
        name, ctype = _STATIC[request.path]
        body = resources.files("netwarden.web").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=ctype, headers=_HEADERS)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.ctx.metrics)
        return web.Response(
            body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def _flows(self, request: web.Request) -> web.Response:
        flt = _flow_filter(request.query)
        rows = await asyncio.to_thread(lambda: self.ctx.store().flows(flt))
        return _json(rows)

    async def _report(self, request: web.Request) -> web.Response:
        by = request.query.get("by", "ip")
        if by not in GROUPINGS:
            raise UsageError(
                "unknown grouping", option="by", value=by, allowed=", ".join(GROUPINGS)
            )
        flt = _flow_filter(request.query)
        flt = FlowFilter(**{**flt.__dict__, "limit": None})

        def work() -> list[dict[str, Any]]:
            return aggregate(self.ctx.store().flows(flt), by, names=self.ctx.names)

        return _json(await asyncio.to_thread(work))

    async def _blocks(self, request: web.Request) -> web.Response:
        return _json(await asyncio.to_thread(self.ctx.blocks))

    async def _status(self, request: web.Request) -> web.Response:
        return _json(await asyncio.to_thread(self.ctx.status))

    async def _events(self, request: web.Request) -> web.Response:
        since = request.query.get("since")
        kinds = [k for k in request.query.get("kinds", "").split(",") if k]
        t = None if not since else parse_time(since, "since")
        rows = await asyncio.to_thread(lambda: self.ctx.store().events(t, kinds))
        return _json(rows[-MAX_ROWS:])

    async def _traffic(self, request: web.Request) -> web.Response:
        """Bytes per time step over the flows seen since ``since`` (default 1h)."""
        since = parse_time(request.query.get("since") or "1h", "since")
        step = max(parse_duration(request.query.get("step") or "60", "step"), 1.0)

        def work() -> list[dict[str, float]]:
            buckets: dict[int, list[float]] = {}
            for f in self.ctx.store().flows(FlowFilter(since=since)):
                b = int(float(f["ts"]) // step)
                v = buckets.setdefault(b, [0.0, 0.0])
                inbound = f.get("direction") == "in"
                ob, rb = float(f["orig_bytes"] or 0), float(f["resp_bytes"] or 0)
                v[0] += ob if inbound else rb
                v[1] += rb if inbound else ob
            return [
                {"t": b * step, "bytes_in": v[0], "bytes_out": v[1]}
                for b, v in sorted(buckets.items())
            ]

        return _json(await asyncio.to_thread(work))

    async def _post_block(self, request: web.Request) -> web.Response:
        if self.ctx.block is None:
            return _json({"error": "blocking is not available in this daemon"}, 503)
        try:
            body = await request.json()
            addr = str(body["addr"])
        except (ValueError, KeyError, TypeError):
            return _json({"error": 'body must be {"addr": "...", "for": "1h"}'}, 400)
        dur = body.get("for")
        seconds = None if dur is None else parse_duration(dur, "for")
        result = await asyncio.to_thread(self.ctx.block, addr, seconds, "api")
        return _json(result)

    async def _delete_block(self, request: web.Request) -> web.Response:
        if self.ctx.unblock is None:
            return _json({"error": "blocking is not available in this daemon"}, 503)
        unblock = self.ctx.unblock
        return _json(await asyncio.to_thread(unblock, request.match_info["addr"]))

    async def _post_dump(self, request: web.Request) -> web.Response:
        if self.ctx.dump is None:
            return _json({"error": "no stats dump in this daemon"}, 503)
        return _json(await asyncio.to_thread(self.ctx.dump))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Bind and serve; a port in use or a bad address is a UsageError (exit 2)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
                loop.run_until_complete(runner.setup())
                site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
                loop.run_until_complete(site.start())
                self._runner = runner
                server = getattr(site, "_server", None)
                socks = getattr(server, "sockets", None) or []
                self.bound_port = socks[0].getsockname()[1] if socks else self.port
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="nw-web", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            exc = failure[0]
            reason = getattr(exc, "strerror", None) or str(exc)
            raise UsageError(
                f"cannot listen: {reason}", option="--listen", value=f"{self.host}:{self.port}"
            )

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
