from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
import redis

from taskq import App

from .helpers import tasks_app_at
from .redis_server import INSTALL_HINT, RedisServer, running


def pytest_sessionstart(session: pytest.Session) -> None:
    if shutil.which("redis-server") is None:
        pytest.exit(INSTALL_HINT, returncode=4)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running(RedisServer()) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean database on the session's private server."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def app(redis_url: str) -> Iterator[App]:
    """The test tasks' App, pointed at the clean database."""
    with tasks_app_at(redis_url) as tasks_app:
        yield tasks_app


@pytest.fixture
def worker_env(redis_url: str) -> dict[str, str]:
    """Environment for a `taskq` subprocess using the test database."""
    env = dict(os.environ)
    env["TASKQ_REDIS_URL"] = redis_url
    env["PYTHONUNBUFFERED"] = "1"
    return env
