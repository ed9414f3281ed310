"""What the ``taskq`` commands share: options, app loading, one-line errors."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import demo as demo_tasks
from .app import App
from .config import ConfigError, Settings, mask_url
from .connection import REDIS_ERRORS
from .job import JobNotFound, RecordUnreadable
from .worker.master import WorkerError

F = TypeVar("F", bound=Callable[..., Any])

url_option = click.option(
    "--redis-url",
    envvar="TASKQ_REDIS_URL",
    default=None,
    metavar="URL",
    help="Redis URL (redis://, rediss://, unix://, memory://); default redis://localhost:6379/0.",
)
app_option = click.option(
    "--app",
    "app_spec",
    envvar="TASKQ_APP",
    default=None,
    metavar="MODULE[:ATTR]",
    help="Where your App lives (the current directory is importable). Default: the demo tasks.",
)


def friendly_errors(fn: F) -> F:
    """Turn expected failures into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, WorkerError, JobNotFound, RecordUnreadable) as exc:
            raise click.ClickException(str(exc)) from None
        except REDIS_ERRORS as exc:
            url = mask_url(
                kwargs.get("redis_url") or os.environ.get("TASKQ_REDIS_URL") or Settings().redis_url
            )
            raise click.ClickException(f"Redis at {url}: {_short(str(exc))}") from None

    return wrapper  # type: ignore[return-value]


# redis-py names each sentinel it failed to ask by its client's whole repr (~700
# characters of connection settings): the address says as much.
_CLIENT_REPR = re.compile(r"<redis\.client\.Redis\(.*?\)>\)>\)>")
_ADDRESS = re.compile(r"host=([^,]+),port=(\d+)")


def _short(message: str) -> str:
    def address(found: re.Match[str]) -> str:
        where = _ADDRESS.search(found.group(0))
        return f"sentinel {where.group(1)}:{where.group(2)}" if where else "a sentinel"

    return _CLIENT_REPR.sub(address, message)


def load_app(spec: str | None, redis_url: str | None) -> App:
    """The user's App from ``module[:attr]``, or an App serving the demo tasks."""
    if spec is None:
        app = App(redis_url)
        demo_tasks.register(app)
        return app
    module_name, _, attr = spec.partition(":")
    if not module_name or module_name.startswith("."):
        raise ConfigError(f"--app {spec!r}: name a module, as MODULE or MODULE:ATTR")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import --app {spec!r}: {exc}") from None
    if attr:
        found = getattr(module, attr, None)
        if not isinstance(found, App):
            raise ConfigError(f"--app {spec!r}: {module_name}.{attr} is not a taskq.App")
        app = found
    else:
        apps = [v for v in vars(module).values() if isinstance(v, App)]
        if len(apps) != 1:
            raise ConfigError(
                f"--app {spec!r}: found {len(apps)} taskq.App objects in "
                f"{module_name}; name one as {module_name}:ATTR"
            )
        app = apps[0]
    if redis_url:
        app.configure(redis_url=redis_url)
    return app


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(message)s"
    )
