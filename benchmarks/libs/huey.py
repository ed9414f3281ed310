"""Huey: ``RedisHuey`` and ``huey_consumer -k thread -w N`` (N threads is how Huey runs
N jobs at once). Huey rejects ``async def`` tasks, so its jobs are the synchronous
twins of the others: ``time.sleep`` and a synchronous ``INCR`` (redis-py, shared pool).
``-q`` keeps the consumer's log at WARNING (it logs every task at INFO otherwise).
"""

from __future__ import annotations

from huey import RedisHuey

from . import common

NAME = "huey"
BULK_API = None
NOTES = "RedisHuey; huey_consumer -k thread -w N -q; sync jobs (Huey has no async tasks)"

huey = RedisHuey("bench", url=common.redis_url())


@huey.task()
def noop() -> None:
    common.noop_job_sync()


@huey.task()
def sleep() -> None:
    common.sleep_job_sync()


@huey.task()
def stamp() -> None:
    common.stamp_job_sync()


TASKS = {"noop": noop, "sleep": sleep, "stamp": stamp}


def worker_argv(concurrency: int) -> list[str]:
    return ["huey_consumer", "libs.huey.huey", "-k", "thread", "-w", str(concurrency), "-q"]


class Client:
    async def start(self) -> None:
        pass

    async def push(self, kind: str) -> None:
        TASKS[kind]()

    push_many = None

    async def close(self) -> None:
        pass
