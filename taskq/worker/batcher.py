"""Batching the writes of many jobs into one round trip, on the loop thread.

Jobs hand their writes (start, outcome) to the :class:`WriteBatcher` instead of each
sending its own pipeline. One flusher task sends everything pending as one merged
:class:`~taskq.writes.Writes`; whatever arrives while that round trip is in flight
goes in the next one. An idle worker's single job is flushed on the next loop pass,
so batching adds no latency; a busy worker sends one pipeline for many jobs.

Order is kept: writes are applied in the order they were submitted, so a job's
start is always stored before its outcome. During a Redis outage the flusher retries
the same batch with capped backoff; the jobs waiting on it keep their slots, so the
master takes no new work until Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import redis

from ..abroker import AsyncBroker
from ..writes import Writes, take_batch

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

MAX_BATCH = 1000
_MAX_BACKOFF = 5.0


class WriteBatcher:
    def __init__(self, broker: AsyncBroker, metrics: Metrics | None = None) -> None:
        self.broker = broker
        self.metrics = metrics
        self._pending: list[tuple[Writes, asyncio.Future[None] | None]] = []
        self._flusher: asyncio.Task[None] | None = None

    def submit(self, writes: Writes) -> None:
        """Queue ``writes`` without waiting for them (they stay ordered with the rest)."""
        self._pending.append((writes, None))
        self._ensure_flusher()

    async def write(self, writes: Writes) -> None:
        """Queue ``writes`` and wait until Redis has them."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((writes, done))
        self._ensure_flusher()
        await done  # if this job is cancelled, the write still goes out

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        # Let every job that is ready this loop pass add its writes first: one batch
        # for all of them instead of one for the first and one for the rest.
        await asyncio.sleep(0)
        while self._pending:
            n = take_batch([w for w, _ in self._pending], MAX_BATCH)
            batch = self._pending[:n]
            del self._pending[:n]
            merged = Writes()
            for writes, _ in batch:
                merged.merge(writes)
            try:
                await self._apply(merged)
            except Exception as exc:  # a refused command: fail these jobs' waits, go on
                log.exception("redis refused a batch of %d writes", len(batch))
                for _, done in batch:
                    if done is not None and not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if done is not None and not done.done():
                    done.set_result(None)

    async def _apply(self, writes: Writes) -> None:
        delay = 0.1
        while True:
            try:
                await self.broker.apply(writes)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if self.metrics:
                    self.metrics.reconnects.inc()
                log.warning("redis unavailable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for pending writes; False if some remain."""
        if self._flusher is None or self._flusher.done():
            return not self._pending
        try:
            await asyncio.wait_for(asyncio.shield(self._flusher), timeout)
        except TimeoutError:
            self._flusher.cancel()
            return False
        return not self._pending
