"""Tasks used by the tests, in-process and by `taskq worker --app tests.tasks`."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import redis

import taskq

app = taskq.App()

# In-process observations (tests running the worker in the same process).
seen: list[Any] = []
gate = threading.Event()
_lock = threading.Lock()
_running = 0
max_running = 0


def _client() -> redis.Redis:
    return redis.Redis.from_url(app.settings.redis_url)


def event(name: str) -> None:
    """Tell the test something happened: RPUSH onto the `events` list (BLPOP to wait)."""
    with _client() as c:
        c.rpush("events", name)


@app.task
async def add(a: int, b: int) -> int:
    return a + b


@app.task
def add_sync(a: int, b: int) -> int:
    return a + b


@app.task
async def boom(message: str) -> None:
    raise ValueError(message)


@app.task
async def unserialisable() -> Any:
    return object()


@app.task
async def where() -> dict[str, Any]:
    return {"thread": threading.current_thread().name, "loop": True}


@app.task
def where_sync() -> dict[str, Any]:
    return {"thread": threading.current_thread().name}


@app.task
async def record(value: Any) -> Any:
    seen.append(value)
    return value


@app.task
def blocking_wait_for_gate() -> str:
    """Blocks its thread until an async job opens the gate."""
    return "released" if gate.wait(timeout=20) else "gate never opened"


@app.task
async def open_gate() -> str:
    gate.set()
    return "opened"


@app.task
async def count_concurrency(hold: float) -> int:
    global _running, max_running
    with _lock:
        _running += 1
        max_running = max(max_running, _running)
    await asyncio.sleep(hold)
    with _lock:
        _running -= 1
    return max_running


@app.task
async def slow(seconds: float, name: str = "slow") -> str:
    """Announce the start on the `events` list, then sleep."""
    event(f"start:{name}")
    await asyncio.sleep(seconds)
    event(f"end:{name}")
    return name


@app.task
def slow_sync(seconds: float, name: str = "slow_sync") -> str:
    event(f"start:{name}")
    time.sleep(seconds)
    return name


@app.task
async def incr(key: str) -> int:
    """Count an effect in Redis (exactly-once checks count these)."""
    with _client() as c:
        return int(c.incr(key))


@app.task(timeout=0.2)
async def too_slow() -> str:
    await asyncio.sleep(30)
    return "finished"


@app.task
def pid() -> int:
    return os.getpid()
