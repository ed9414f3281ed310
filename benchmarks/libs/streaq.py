"""streaQ: ``Worker(concurrency=N)``, ``task.enqueue()``, bulk ``Worker.enqueue_many``.

The worker runs through ``Worker.run_sync()`` (what ``streaq run`` calls) with logging
at WARNING: ``streaq run`` always logs two INFO lines per task.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from streaq import Worker

from . import common

NAME = "streaq"
BULK_API = "Worker.enqueue_many"
NOTES = "Worker(concurrency=N).run_sync(); enqueue_many for bulk"

worker = Worker(redis_url=common.redis_url(), concurrency=common.concurrency())


@worker.task
async def noop() -> None:
    await common.noop_job()


@worker.task
async def sleep() -> None:
    await common.sleep_job()


@worker.task
async def stamp() -> None:
    await common.stamp_job()


TASKS = {"noop": noop, "sleep": sleep, "stamp": stamp}


def run_worker(concurrency: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("streaq").setLevel(logging.WARNING)
    assert worker.concurrency == concurrency, "set BENCH_CONCURRENCY before the import"
    worker.run_sync()


class Client:
    async def start(self) -> None:
        self.stack = AsyncExitStack()
        await self.stack.enter_async_context(worker)

    async def push(self, kind: str) -> None:
        await TASKS[kind].enqueue()

    async def push_many(self, kind: str, n: int) -> None:
        await worker.enqueue_many([TASKS[kind].enqueue() for _ in range(n)])

    async def close(self) -> None:
        await self.stack.aclose()
