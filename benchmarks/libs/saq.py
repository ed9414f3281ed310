"""SAQ: ``settings`` dict for the ``saq`` CLI, ``Queue.enqueue``.

Defaults kept: ``dequeue_timeout`` 0 (each of the ``concurrency`` consumers blocks in
``BLMOVE`` until a job comes), job ``ttl`` 600 s. The CLI's default log level is
WARNING.
"""

from __future__ import annotations

from typing import Any

from saq import Queue

from . import common

NAME = "saq"
BULK_API = None
NOTES = "saq libs.saq.settings --workers 1, concurrency=N"

queue = Queue.from_url(common.redis_url())


async def noop(ctx: dict[str, Any]) -> None:
    await common.noop_job()


async def sleep(ctx: dict[str, Any]) -> None:
    await common.sleep_job()


async def stamp(ctx: dict[str, Any]) -> None:
    await common.stamp_job()


settings = {
    "queue": queue,
    "functions": [noop, sleep, stamp],
    "concurrency": common.concurrency(),
}


def worker_argv(concurrency: int) -> list[str]:
    return ["saq", "libs.saq.settings", "--workers", "1"]


class Client:
    async def start(self) -> None:
        await queue.connect()

    async def push(self, kind: str) -> None:
        await queue.enqueue(kind)

    push_many = None

    async def close(self) -> None:
        await queue.disconnect()
