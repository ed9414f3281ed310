"""taskiq + taskiq-redis: the README's setup, ``RedisStreamBroker`` (acknowledged
delivery, the one taskiq-redis recommends) with ``RedisAsyncResultBackend``
(results kept a day, like taskq's). ``taskiq worker --workers 1 --max-async-tasks N``.
"""

from __future__ import annotations

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from . import common

NAME = "taskiq"
BULK_API = None
NOTES = "RedisStreamBroker + RedisAsyncResultBackend; taskiq worker --workers 1 --max-async-tasks N"

result_backend = RedisAsyncResultBackend(redis_url=common.redis_url(), result_ex_time=86_400)
broker = RedisStreamBroker(url=common.redis_url()).with_result_backend(result_backend)


@broker.task(task_name="noop")
async def noop() -> None:
    await common.noop_job()


@broker.task(task_name="sleep")
async def sleep() -> None:
    await common.sleep_job()


@broker.task(task_name="stamp")
async def stamp() -> None:
    await common.stamp_job()


TASKS = {"noop": noop, "sleep": sleep, "stamp": stamp}


def worker_argv(concurrency: int) -> list[str]:
    return [
        "taskiq",
        "worker",
        "libs.taskiq:broker",
        "--workers",
        "1",
        "--max-async-tasks",
        str(concurrency),
        "--log-level",
        "WARNING",
    ]


class Client:
    async def start(self) -> None:
        await broker.startup()  # also creates the stream's consumer group

    async def push(self, kind: str) -> None:
        await TASKS[kind].kiq()

    push_many = None

    async def close(self) -> None:
        await broker.shutdown()
