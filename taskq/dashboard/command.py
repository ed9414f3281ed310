"""The ``taskq dashboard`` command (starlette and uvicorn are imported only when it runs)."""

from __future__ import annotations

import logging

import click

from ..app import App
from ..cli_common import friendly_errors, setup_logging, url_option
from ..config import mask_url
from ..connection import REDIS_ERRORS
from . import LOOPBACK_NAMES, ROUTE_ROOTS

log = logging.getLogger(__name__)


def _root_path(value: str) -> str:
    """``--root-path``, checked: "" or "/a/path" (a trailing slash is dropped), in
    plain ASCII (uvicorn encodes it so), not starting like one of the dashboard's
    own routes (a request's path could then not tell which it is)."""
    value = value.rstrip("/")
    if not value:
        return value
    if not value.startswith("/") or value.startswith("//"):
        raise click.BadParameter(f"{value!r} must start with / (and only one)")
    if not value.isascii() or any(c in value for c in "?#%\\ \t\r\n"):
        raise click.BadParameter(f"{value!r} must be a plain ASCII path")
    first = value[1:].partition("/")[0]
    if first in ROUTE_ROOTS:
        raise click.BadParameter(f"{value!r} must not start with /{first}, a route of its own")
    return value


@click.command()
@url_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="TASKQ_DASHBOARD_HOST",
    help="Address to listen on. Anything but loopback lets others read your jobs.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    envvar="TASKQ_DASHBOARD_PORT",
)
@click.option(
    "--token",
    envvar="TASKQ_DASHBOARD_TOKEN",
    default=None,
    metavar="SECRET",
    help="Allow retry and purge to whoever gives this token (prefer the env var: "
    "arguments show in ps). Without it the dashboard is read-only.",
)
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.2),
    default=2.0,
    show_default=True,
    envvar="TASKQ_DASHBOARD_REFRESH",
    help="Seconds between the page's refreshes.",
)
@click.option(
    "--root-path",
    envvar="TASKQ_DASHBOARD_ROOT_PATH",
    default="",
    metavar="PATH",
    callback=lambda _ctx, _param, value: _root_path(value),
    help="URL path a reverse proxy serves the dashboard under (e.g. /taskq), the "
    "proxy stripping it from requests. Default: served at the root.",
)
@click.option(
    "--log-level",
    default="info",
    envvar="TASKQ_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="debug also logs every request.",
)
@friendly_errors
def dashboard(
    redis_url: str | None,
    host: str,
    port: int,
    token: str | None,
    refresh: float,
    root_path: str,
    log_level: str,
) -> None:
    """Serve a web page of queues, workers, jobs and dead letters (retry, purge).

    \b
    taskq dashboard                          read-only, on http://127.0.0.1:8000
    TASKQ_DASHBOARD_TOKEN=s3cret taskq dashboard   retry and purge with the token
    """
    import uvicorn

    from .web import create_app

    setup_logging(log_level)
    app = App(redis_url)
    url = mask_url(app.settings.redis_url)
    try:
        app.broker.client.ping()
    except REDIS_ERRORS as exc:  # serve anyway: the page says so until Redis is back
        log.warning("Redis at %s is unreachable for now: %s", url, exc)
    if host not in LOOPBACK_NAMES:
        log.warning(
            "listening on %s: anyone who can reach it can read job arguments and results%s",
            host,
            " and, over plain HTTP, see the token" if token else "",
        )
    log.info(
        "taskq dashboard for %s on http://%s:%d%s (%s)",
        url,
        f"[{host}]" if ":" in host else host,
        port,
        f", linked as {root_path}/ behind its proxy" if root_path else "",
        "retry and purge need the token" if token else "read-only: no --token",
    )
    uvicorn.run(
        create_app(app, token=token, refresh=refresh, host=host),
        host=host,
        port=port,
        log_level=log_level.lower(),
        root_path=root_path,
        log_config=None,
        access_log=log_level.lower() == "debug",
        server_header=False,
    )
