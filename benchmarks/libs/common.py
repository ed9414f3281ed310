"""The job bodies every library runs, and the Redis keys the harness watches.

A job records its completion with one ``INCR`` of :data:`COUNTER` through
``redis.asyncio`` (``noop_job_sync`` for Huey, whose worker cannot run coroutines). The
latency job instead pushes the time it started onto :data:`STAMPS`.

The clients are made with ``socket_timeout=None`` in every venv: redis-py 8 defaults
asyncio clients to a 5 s socket timeout (every command then goes through
``asyncio.wait_for``, a Task per send), redis-py 5 and 7 (arq's and SAQ's venvs) to
none, and the job bodies must cost the same everywhere.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

COUNTER = "bench:done"
STAMPS = "bench:stamps"
#: The sleep job's await, seconds.
SLEEP_SECONDS = 0.01

_async_clients: dict[int, Any] = {}
_sync_clients: list[Any] = []
_lock = threading.Lock()


def redis_url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def concurrency() -> int:
    """The worker concurrency the harness asked for (read by settings modules)."""
    return int(os.environ.get("BENCH_CONCURRENCY", "10"))


def aredis() -> Any:
    """The redis.asyncio client of the running event loop (one per loop)."""
    import redis.asyncio

    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        client = _async_clients[id(loop)] = redis.asyncio.Redis.from_url(
            redis_url(), socket_timeout=None
        )
    return client


def sredis() -> Any:
    """A thread-safe synchronous client (its connection pool is shared)."""
    if not _sync_clients:
        import redis

        with _lock:
            if not _sync_clients:
                _sync_clients.append(redis.Redis.from_url(redis_url(), socket_timeout=None))
    return _sync_clients[0]


# -- the job bodies --------------------------------------------------------------------
async def noop_job() -> None:
    await aredis().incr(COUNTER)


async def sleep_job() -> None:
    await asyncio.sleep(SLEEP_SECONDS)
    await aredis().incr(COUNTER)


async def stamp_job() -> None:
    await aredis().rpush(STAMPS, repr(time.time()))


def noop_job_sync() -> None:
    sredis().incr(COUNTER)


def sleep_job_sync() -> None:
    time.sleep(SLEEP_SECONDS)
    sredis().incr(COUNTER)


def stamp_job_sync() -> None:
    sredis().rpush(STAMPS, repr(time.time()))


JOBS = {"noop": noop_job, "sleep": sleep_job, "stamp": stamp_job}
SYNC_JOBS = {"noop": noop_job_sync, "sleep": sleep_job_sync, "stamp": stamp_job_sync}
