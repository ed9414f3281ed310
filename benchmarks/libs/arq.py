"""arq: functions listed in ``WorkerSettings``, ``ArqRedis.enqueue_job``.

Tuning (documented ``WorkerSettings`` options): ``max_jobs`` = the concurrency asked
for; ``poll_delay`` = 0.1 s instead of 0.5 s (``BENCH_ARQ_POLL_DELAY``): arq polls its
queue (a sorted set) and sleeps ``poll_delay`` between reads of up to 100 job ids,
which at the default caps this worker at ~200 noop jobs/s with ~0.5 s latency. At 0.1 s
throughput is no longer capped; 0.01 s cuts latency to ~7 ms but costs ~8% CPU idle.
The worker runs through ``arq.worker.run_worker`` with logging at WARNING: the ``arq``
CLI always logs two INFO lines per job.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import run_worker as arq_run_worker

from . import common

NAME = "arq"
BULK_API = None
POLL_DELAY = float(os.environ.get("BENCH_ARQ_POLL_DELAY", "0.1"))
NOTES = f"run_worker(WorkerSettings), max_jobs=N, poll_delay={POLL_DELAY:g}s"


async def noop(ctx: dict[str, Any]) -> None:
    await common.noop_job()


async def sleep(ctx: dict[str, Any]) -> None:
    await common.sleep_job()


async def stamp(ctx: dict[str, Any]) -> None:
    await common.stamp_job()


def redis_settings() -> RedisSettings:
    return RedisSettings.from_dsn(common.redis_url())


class WorkerSettings:
    functions: ClassVar = [noop, sleep, stamp]
    redis_settings = redis_settings()
    max_jobs = common.concurrency()
    poll_delay = POLL_DELAY


def run_worker(concurrency: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    arq_run_worker(WorkerSettings, max_jobs=concurrency)


class Client:
    async def start(self) -> None:
        self.pool = await create_pool(redis_settings())

    async def push(self, kind: str) -> None:
        await self.pool.enqueue_job(kind)

    push_many = None

    async def close(self) -> None:
        await self.pool.aclose()
