"""Dramatiq: ``RedisBroker`` with the ``AsyncIO`` middleware so actors can be
``async def`` (each runs on dramatiq's event-loop thread while one of the worker's
threads waits for it). ``dramatiq --processes 1 --threads N``: N threads is how
dramatiq runs N jobs at once.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.asyncio import AsyncIO

from . import common

NAME = "dramatiq"
BULK_API = None
NOTES = "RedisBroker + AsyncIO middleware (async actors); dramatiq --processes 1 --threads N"

broker = RedisBroker(url=common.redis_url())
broker.add_middleware(AsyncIO())
dramatiq.set_broker(broker)


@dramatiq.actor
async def noop() -> None:
    await common.noop_job()


@dramatiq.actor
async def sleep() -> None:
    await common.sleep_job()


@dramatiq.actor
async def stamp() -> None:
    await common.stamp_job()


ACTORS = {"noop": noop, "sleep": sleep, "stamp": stamp}


def worker_argv(concurrency: int) -> list[str]:
    return ["dramatiq", "libs.dramatiq", "--processes", "1", "--threads", str(concurrency)]


class Client:
    async def start(self) -> None:
        pass

    async def push(self, kind: str) -> None:
        ACTORS[kind].send()

    push_many = None

    async def close(self) -> None:
        broker.close()
