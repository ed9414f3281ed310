"""Tasks used by the tests, in-process and by `taskq worker --app tests.tasks`."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import time
from typing import Any

import redis

import taskq
from taskq.connection import connect

app = taskq.App()

# In-process observations (tests running the worker in the same process).
seen: list[Any] = []
gate = threading.Event()
_lock = threading.Lock()
concurrency = {"running": 0, "max": 0}


_clients = threading.local()


class _Client:
    """A Redis client per thread (and per URL), reused: tasks run thousands of times."""

    def __enter__(self) -> redis.Redis:
        url = app.settings.redis_url
        cached = getattr(_clients, "client", None)
        if cached is None or _clients.url != url:
            cached = _clients.client = connect(url)
            _clients.url = url
        client: redis.Redis = cached
        return client

    def __exit__(self, *exc: object) -> None:
        pass


def _client() -> _Client:
    return _Client()


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
def nested_too_deeply(depth: int) -> Any:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


@app.task
async def raises_unprintable() -> None:
    raise Unprintable


@app.task
async def where() -> dict[str, Any]:
    """The thread the job runs in, its event loop's package ("uvloop", "asyncio"), and
    the name of its task."""
    loop = type(asyncio.get_running_loop()).__module__.partition(".")[0]
    task = asyncio.current_task()
    assert task is not None
    return {"thread": threading.current_thread().name, "loop": loop, "task": task.get_name()}


#: What a job may set for its own code to read (a request id, a tracing span).
job_var: contextvars.ContextVar[str] = contextvars.ContextVar("job_var")


@app.task
async def sets_a_context_variable(value: str) -> str | None:
    """Sets job_var; returns what it was as the job started (None: not set)."""
    before = job_var.get(None)
    job_var.set(value)
    await asyncio.sleep(0)
    return before


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
async def blocks_a_to_thread_thread(name: str) -> None:
    """Blocks a thread of the loop's default executor (asyncio.to_thread) for good."""

    def block() -> None:
        with _client() as c:
            c.rpush("events", f"start:{name}")
            c.blpop(["never"], timeout=600)

    await asyncio.to_thread(block)


@app.task
async def open_gate() -> str:
    gate.set()
    return "opened"


@app.task
async def count_concurrency(hold: float) -> int:
    with _lock:
        concurrency["running"] += 1
        concurrency["max"] = max(concurrency["max"], concurrency["running"])
    await asyncio.sleep(hold)
    with _lock:
        concurrency["running"] -= 1
    return concurrency["max"]


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


@app.task
def incr_at_gate(key: str) -> int:
    """Count an effect, say so on the `events` list, then wait (in its thread) until
    the test opens the gate: RPUSH onto the `gate` list, which stays open."""
    with _client() as c:
        n = int(c.incr(key))
        c.rpush("events", "at gate")
        if c.blmove("gate", "gate", 20, "RIGHT", "LEFT") is None:
            raise TimeoutError("the gate never opened")
        return n


@app.task(timeout=0.2)
async def too_slow() -> str:
    await asyncio.sleep(30)
    return "finished"


@app.task
def pid() -> int:
    return os.getpid()


@app.task
async def stuck_first_time(name: str) -> int:
    """The first run hangs (so its worker can be killed under it); later runs return."""
    with _client() as c:
        run = int(c.incr(f"runs:{name}"))
    event(f"start:{name}:{run}")
    if run == 1:
        await asyncio.sleep(600)
    return run


@app.task(max_stalls=1)
def suicide() -> None:
    """A poison job: kills the worker process running it."""
    event("start:suicide")
    os.kill(os.getpid(), 9)


@app.task(retries=1)
async def retries_after_gate(name: str) -> int:
    """Its first run waits for the test to open `gate:NAME`, then asks to be retried."""
    with _client() as c:
        run = int(c.incr(f"runs:{name}"))
        if run == 1:
            c.rpush("events", f"start:{name}")
            await asyncio.to_thread(c.blpop, [f"gate:{name}"], 20)
            raise taskq.Retry(delay=0.3)
    return run


@app.task(retries=2, backoff=0.01)
async def fails_holding(data: str) -> None:
    raise ValueError(f"failed holding {len(data)} characters")


@app.task(retries=3, backoff=0.01, backoff_max=0.05)
async def flaky(name: str, failures: int) -> int:
    """Fails `failures` times with ConnectionError, then succeeds."""
    with _client() as c:
        run = int(c.incr(f"runs:{name}"))
    if run <= failures:
        raise ConnectionError(f"flaky failure {run}")
    return run


@app.task(retries=5, retry_on=(KeyError,), backoff=0.01)
async def only_key_errors_retry(exc: str) -> None:
    raise {"KeyError": KeyError, "ValueError": ValueError}[exc]("nope")


@app.task(retries=2)
async def asks_to_retry(name: str, delay: float = 0.05) -> int:
    with _client() as c:
        run = int(c.incr(f"runs:{name}"))
    if run == 1:
        raise taskq.Retry(delay=delay)
    return run


@app.task
async def raises_cancelled() -> None:
    raise asyncio.CancelledError  # from the job's own code, nobody cancelled it


@app.task
async def cancels_its_own_task() -> None:
    """Cancels the task it runs in, as code beyond taskq's reach might."""
    me = asyncio.current_task()
    assert me is not None
    me.cancel()
    await asyncio.get_running_loop().create_future()  # ended by that cancellation alone


@app.task
async def cancels_its_siblings() -> None:
    """Cancels the other jobs' tasks, as code beyond taskq's reach might: those taken
    with it have not run yet."""
    me = asyncio.current_task()
    for task in asyncio.all_tasks():
        if task is not me and "_run_reporting" in repr(task.get_coro()):
            task.cancel()


@app.task
async def exits_in_a_sub_task(how: str) -> str:
    """Raises SystemExit or KeyboardInterrupt in an asyncio task of its own, which
    asyncio lets out of the event loop's run_forever as well as into its awaiter."""

    async def exits() -> None:
        raise SystemExit(3)

    async def interrupted() -> None:
        raise KeyboardInterrupt

    if how == "gather":
        await asyncio.gather(exits())
    elif how == "wait_for":
        await asyncio.wait_for(asyncio.ensure_future(interrupted()), 5)
    else:  # "unawaited": nobody awaits it, the job goes on
        task = asyncio.create_task(exits())
        await asyncio.wait([task])
        assert isinstance(task.exception(), SystemExit)
    return "went on"


@app.task
async def asks_to_retry_without_budget() -> None:
    raise taskq.Retry(delay=0)


@app.task(timeout=0.2, retries=1, backoff=0.01)
def overruns_its_timeout(name: str) -> str:
    """waits_for_its_gate, with a timeout of 0.2 s and a retry: it runs on past its
    timeout until the test opens the gate (a thread cannot be interrupted)."""
    return str(waits_for_its_gate.fn(name))


@app.task
def waits_for_its_gate(name: str) -> str:
    """Blocks its thread until the test pushes onto ``gate:<name>``."""
    event(f"start:{name}")
    with _client() as c:
        c.blpop([f"gate:{name}"], timeout=20)
    event(f"end:{name}")
    return name


@app.task(timeout=0.2)
def waits_past_its_timeout(name: str) -> str:
    """waits_for_its_gate, with a timeout of 0.2 s."""
    return str(waits_for_its_gate.fn(name))


@app.task(timeout=0.2)
def blocked_past_its_timeout() -> bool:
    """Blocked in C (a lock's wait) until the test opens the gate: no interruption
    reaches it before."""
    return gate.wait(timeout=20)


@app.task
def long_sync(seconds: float, name: str) -> int:
    """Runs longer than the heartbeat timeout; counts its runs."""
    with _client() as c:
        run = int(c.incr(f"runs:{name}"))
    event(f"start:{name}:{run}")
    time.sleep(seconds)
    return run


@app.task(retries=10, backoff=0.1, retry_on=(redis.ConnectionError,))
async def incr_slowly(key: str) -> int:
    """Retries when Redis is away: the tests restart Redis under it."""
    await asyncio.sleep(0.005)
    with _client() as c:
        return int(c.incr(key))
