"""Batching the writes of many jobs into one round trip, on the loop thread.

Jobs hand their writes (start, outcome) to the :class:`WriteBatcher` instead of each
sending its own pipeline. One flusher task sends everything pending as one merged
:class:`~taskq.writes.Writes`; whatever arrives while that round trip is in flight,
or within FLUSH_GAP of its start, goes in the next one. An idle worker's single job
is flushed on the next loop pass, so batching adds no latency there; a busy worker
sends one round trip for many jobs, and its outcomes are stored at most about
FLUSH_GAP (3 ms) later.

Order is kept for each job: its writes are applied in the order they were submitted,
so its start is always stored before its outcome. (Across jobs a merged batch may
reorder: the outcomes of jobs done come after the batch's other record writes, see
:attr:`taskq.writes.Writes.done`.) During a Redis outage the flusher retries
the same batch with capped backoff; the master cannot take jobs either, and takes
none once MAX_UNSTORED outcomes wait (see :mod:`taskq.worker.master`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from ..abroker import AsyncBroker
from ..writes import JobDone, Writes, take_batch

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

MAX_BATCH = 1000
#: A busy worker stores outcomes at most once per this many seconds: on a loop
#: that runs quick jobs, a round trip for every few of them cost ~10 % of its CPU,
#: and one a millisecond still cost 3-7 % more noop jobs/s than one every 3 ms (a
#: redis-py round trip costs the loop some 30 us however few jobs it carries).
#: An idle worker's first write still goes on the next loop pass.
FLUSH_GAP = 0.003
_MAX_BACKOFF = 5.0


class WriteAbandoned(Exception):
    """Writes that were not stored before the worker stopped (the jobs run again)."""


#: Called once the writes are stored (with None) or refused (with the error).
Stored = Callable[[BaseException | None], None]
#: Told how many jobs of a batch are over, and how: "done" (stored) or "error" (not).
Counted = Callable[[str, int], None]


def _counted(error: BaseException | None) -> None:
    """Marks the writes of a job done that need no callback of their own once stored
    (see :meth:`WriteBatcher.submit_done`); never called."""


class WriteBatcher:
    def __init__(
        self, broker: AsyncBroker, metrics: Metrics | None = None, on_done: Counted | None = None
    ) -> None:
        self.broker = broker
        self.metrics = metrics
        self.on_done = on_done
        self._pending: list[tuple[Writes | JobDone, Stored | None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()  # made on the loop it serves

    def submit(self, writes: Writes | JobDone, stored: Stored | None = None) -> None:
        """Queue ``writes`` (they stay ordered with the rest); ``stored`` is called on
        the loop once Redis has them, or with the error if Redis refused them."""
        self._pending.append((writes, stored))
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush())

    def submit_done(self, writes: Writes | JobDone) -> None:
        """Queue the writes of a job done that needs nothing once they are stored but
        to be counted: ``on_done("done", n)`` is told once for all such jobs of a
        batch (``"error"`` if it was not stored), instead of a callback a job."""
        self._pending.append((writes, _counted))
        if self._flusher is None:
            self._flusher = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        loop = self._loop
        try:
            # Let every job that is ready this loop pass add its writes first: one
            # batch for all of them instead of one for the first and one for the rest.
            await asyncio.sleep(0)
            while self._pending:
                began = loop.time()
                await self._flush_one()
                # Then gather for the rest of FLUSH_GAP before the next round trip.
                await asyncio.sleep(max(0.0, began + FLUSH_GAP - loop.time()))
        finally:
            self._flusher = None

    async def _flush_one(self) -> None:
        n = take_batch([w for w, _ in self._pending], MAX_BATCH)
        batch = self._pending[:n]
        del self._pending[:n]
        merged = Writes()
        rows, counters = merged.done, merged.counters
        for writes, _ in batch:
            if isinstance(writes, Writes):
                merged.merge(writes)
            else:  # most of a busy worker's: a job done, no Writes made for it
                rows.append(writes[0])
                counter = (writes[1], "done")
                counters[counter] = counters.get(counter, 0) + 1
        try:
            await self._apply(merged)
        except Exception as exc:  # a refused command: tell these jobs, go on
            log.exception("redis refused a batch of %d writes", len(batch))
            self._tell(batch, exc)
            return
        except asyncio.CancelledError:  # drain gave up: maybe not stored
            self._tell(batch, WriteAbandoned("not stored before the worker stopped"))
            raise
        self._tell(batch, None)

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
        """Wait up to ``timeout`` seconds for pending writes; False if some remain
        (their callbacks are then told they were not stored)."""
        flusher = self._flusher
        if flusher is None:
            return not self._pending
        try:
            await asyncio.wait_for(asyncio.shield(flusher), timeout)
        except TimeoutError:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            left, self._pending = self._pending, []
            self._tell(left, WriteAbandoned("not stored before the worker stopped"))
            return False
        return not self._pending

    def _tell(
        self, batch: list[tuple[Writes | JobDone, Stored | None]], error: BaseException | None
    ) -> None:
        """Call the callbacks of ``batch`` with how its writes went, and count the jobs
        done submitted without one (:meth:`submit_done`)."""
        counted = 0
        for _, stored in batch:
            if stored is _counted:
                counted += 1
            elif stored is not None:
                try:
                    stored(error)
                except Exception:
                    log.exception("error in a write's callback")
        if not counted:
            return
        if error is not None and not isinstance(error, WriteAbandoned):
            log.error("could not store the outcome of %d jobs, they run again: %r", counted, error)
        if self.on_done is not None:
            try:
                self.on_done("done" if error is None else "error", counted)
            except Exception:
                log.exception("error in a write's callback")
