"""taskq (this repository): ``@app.task`` on async functions, ``taskq worker``."""

from __future__ import annotations

from typing import Any

import taskq

from . import common

NAME = "taskq"
BULK_API = "task.push_many"
NOTES = "taskq worker --concurrency N --log-level warning (on uvloop, its default)"

app = taskq.App(common.redis_url())


@app.task
async def noop() -> None:
    await common.noop_job()


@app.task
async def sleep() -> None:
    await common.sleep_job()


@app.task
async def stamp() -> None:
    await common.stamp_job()


@app.task
async def empty() -> None:
    """Nothing at all (not a benchmark job): what taskq itself costs a job, for
    ``profile_taskq.py --kind empty``."""


TASKS: dict[str, Any] = {"noop": noop, "sleep": sleep, "stamp": stamp, "empty": empty}


def worker_argv(concurrency: int) -> list[str]:
    return [
        "taskq",
        "worker",
        "--app",
        "libs.taskq",
        "--redis-url",
        common.redis_url(),
        "--concurrency",
        str(concurrency),
        "--log-level",
        "warning",
    ]


class Client:
    """Pushes with the synchronous API (``push`` / ``push_many``), as a web app would."""

    async def start(self) -> None:
        pass

    async def push(self, kind: str) -> None:
        TASKS[kind].push()

    async def push_many(self, kind: str, n: int) -> None:
        TASKS[kind].push_many([()] * n)

    async def close(self) -> None:
        app.close()
