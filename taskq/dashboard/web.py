"""The dashboard's Starlette application.

Handlers are async; every broker call is synchronous and runs in Starlette's thread
pool (``run_in_threadpool``). The broker's client is redis-py's thread-safe pooled
client, so each call borrows a connection of its own: none is shared between threads.

Changes (retry, purge) are POSTs with a JSON body and the start-up token in the
``X-Taskq-Token`` header, compared with :func:`hmac.compare_digest`. Without a token
the dashboard is read-only: no buttons, and those POSTs answer 403. A custom header
cannot be sent cross-site without a CORS preflight (which this app never allows), so
another site cannot make a visitor's browser retry or purge anything.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..app import App
from ..config import mask_url
from ..connection import REDIS_ERRORS
from . import LOOPBACK_NAMES, actions, markup, state, views

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-taskq-token"

#: Sent with every response: no inline script may run (so even an escaping slip
#: cannot execute), no framing, no referrer leaking job ids.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"connect-src 'self'; form-action 'self'; base-uri 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Pure ASGI middleware adding :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UnderRootPath:
    """Pure ASGI middleware for a dashboard served under a root path (--root-path).
    uvicorn puts the root path in front of every request's path, as if the proxy
    had cut it off; a proxy that passes the whole path on makes it appear twice,
    and once is taken off here. (The root path may not start like a route of the
    dashboard's own, ROUTE_ROOTS, or the two could not be told apart.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        root = scope.get("root_path", "").rstrip("/")
        if root and scope["type"] == "http":
            path = scope["path"]
            twice = root + root
            if path == twice or path.startswith(twice + "/"):
                scope = {**scope, "path": path[len(root) :]}
        await self.app(scope, receive, send)


class LoopbackHostsOnly:
    """Pure ASGI middleware answering 400 to a request whose Host header names no
    loopback address (any port): a site that points a domain of its own at
    127.0.0.1 or ::1 (DNS rebinding) cannot read the dashboard. (Starlette's
    TrustedHostMiddleware cuts "[::1]:8000" at its first colon.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and _host_name(scope) not in LOOPBACK_NAMES:
            response = Response("Invalid host header", 400, media_type="text/plain")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _host_name(scope: Scope) -> str:
    """The name in the request's Host header, without its port or IPv6 brackets
    ("" if the header is missing or malformed)."""
    host = Headers(scope=scope).get("host", "")
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket:
            return ""
    else:
        name, colon, port = host.partition(":")
        rest = colon + port
    if rest and not (rest.startswith(":") and rest[1:].isdigit()):
        return ""
    return name


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class Dashboard:
    """Routes and their handlers, around one App's broker."""

    def __init__(self, app: App, token: str | None, refresh: float) -> None:
        self.broker = app.broker
        self.heartbeat_timeout = app.settings.heartbeat_timeout
        self.redis = mask_url(app.settings.redis_url)
        self.token = token or None
        self.refresh = refresh
        self.rates = state.Rates()
        self.files = {
            "dashboard.js": (_static("dashboard.js"), "text/javascript; charset=utf-8"),
            "dashboard.css": (_static("dashboard.css"), "text/css; charset=utf-8"),
        }

    @property
    def actions(self) -> bool:
        return self.token is not None

    def routes(self) -> list[Route]:
        return [
            Route("/", self.overview),
            Route("/api/state", self.api_state),
            Route("/jobs", self.find_job),
            Route("/jobs/{job_id:path}", self.job_page),
            Route("/api/jobs/{job_id:path}", self.api_job),
            Route("/api/dead/{action}", self.dead_action, methods=["POST"]),
            Route("/static/{name}", self.static),
            Route("/favicon.ico", self.no_icon),
        ]

    # -- pages -------------------------------------------------------------------------
    def _html(self, request: Request, title: str, main: str, status: int = 200) -> Response:
        if request.query_params.get("partial"):
            return HTMLResponse(main, status)
        body = markup.page(
            title,
            main,
            actions=self.actions,
            refresh=self.refresh,
            redis=self.redis,
            base=_root(request) + "/",
        )
        return HTMLResponse(body, status)

    async def overview(self, request: Request) -> Response:
        snap = await self._snapshot()
        return self._html(request, "taskq dashboard", views.overview(snap, self.actions))

    async def job_page(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        record = await run_in_threadpool(state.job, self.broker, job_id)
        if record is None:
            return self._html(request, "taskq: no such job", views.not_found(job_id), 404)
        main = views.job(record, time.time(), self.actions)
        return self._html(request, f"taskq job {job_id}", main)

    async def find_job(self, request: Request) -> Response:
        job_id = request.query_params.get("id", "").strip()
        target = markup.job_href(job_id) if job_id else ""
        return RedirectResponse(f"{_root(request)}/{target}", status_code=303)

    async def static(self, request: Request) -> Response:
        found = self.files.get(request.path_params["name"])
        if found is None:
            return Response("not found", 404, media_type="text/plain")
        return Response(found[0], media_type=found[1])

    async def no_icon(self, request: Request) -> Response:
        return Response(status_code=204)  # browsers ask; a 404 would be logged as an error

    # -- JSON --------------------------------------------------------------------------
    async def api_state(self, request: Request) -> Response:
        snap = await self._snapshot()
        return JSONResponse({**snap, "read_only": not self.actions})

    async def api_job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        record = await run_in_threadpool(state.job, self.broker, job_id)
        if record is None:
            return JSONResponse({"error": f"no job {job_id}"}, 404)
        return JSONResponse(record)

    async def dead_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("retry", "purge"):
            return _reply(False, f"no action {action!r}", 404)
        if self.token is None:
            return _reply(False, "read-only dashboard: start it with --token to change data", 403)
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            log.warning("refused %s from %s: wrong or missing token", action, _client(request))
            return _reply(False, "wrong or missing token", 403)
        try:
            body = await request.json()
        except (ValueError, RecursionError):  # not JSON, or nested too deeply
            return _reply(False, "the body must be a JSON object", 400)
        queue = body.get("queue") if isinstance(body, dict) else None
        dead_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(queue, str) or not (dead_id is None or isinstance(dead_id, str)):
            return _reply(False, 'give {"queue": name, "id": dead-letter id}', 400)
        if action == "retry":
            if dead_id is None:
                return _reply(False, "retry needs the dead letter's id", 400)
            ok, message = await run_in_threadpool(actions.retry, self.broker, queue, dead_id)
        else:
            ok, message = await run_in_threadpool(actions.purge, self.broker, queue, dead_id)
        return _reply(ok, message, 200 if ok else 409)

    async def _snapshot(self) -> dict[str, Any]:
        return await run_in_threadpool(
            state.snapshot, self.broker, self.rates, self.heartbeat_timeout
        )

    # -- errors ------------------------------------------------------------------------
    async def redis_down(self, request: Request, exc: Exception) -> Response:
        log.warning("redis error serving %s: %s", request.url.path, exc)
        message = f"Redis at {self.redis}: {exc}"
        if _route_path(request).startswith("/api/"):
            return JSONResponse({"ok": False, "message": message}, 503)
        return self._html(request, "taskq: Redis unreachable", views.unreachable(message), 503)


def _reply(ok: bool, message: str, status: int) -> Response:
    return JSONResponse({"ok": ok, "message": message}, status)


def _route_path(request: Request) -> str:
    """The request's path below the root path (what the routes match)."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _root(request: Request) -> str:
    """The URL path the dashboard is served under ("" at the root; see --root-path)."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _client(request: Request) -> str:
    return f"{request.client.host}" if request.client else "?"


def create_app(
    app: App, *, token: str | None = None, refresh: float = 2.0, host: str = "127.0.0.1"
) -> Starlette:
    """The dashboard for ``app``'s Redis. ``token`` enables retry and purge.

    Bound to a loopback ``host``, it answers only requests naming a loopback host,
    so a web page cannot reach it by pointing a domain of its own at 127.0.0.1.
    """
    dashboard = Dashboard(app, token, refresh)
    middleware = [Middleware(SecurityHeaders), Middleware(UnderRootPath)]
    if host in LOOPBACK_NAMES:
        middleware.append(Middleware(LoopbackHostsOnly))
    handler: Callable[[Request, Exception], Awaitable[Response]] = dashboard.redis_down
    return Starlette(
        routes=dashboard.routes(),
        middleware=middleware,
        exception_handlers={e: handler for e in REDIS_ERRORS},
    )


__all__ = ["create_app"]
