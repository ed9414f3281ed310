"""Moving a worker's own retries onto their queue as they fall due, from the loop.

The master moves due delayed jobs (delayed pushes, retries) onto their queues when it
looks at the delayed sets: at each due time it knows of, every PROMOTE_EVERY seconds
while busy, and after each blocking wait. An idle master blocks in Redis for up to a
second (master.BLOCK_SECONDS) and learns of a retry stored meanwhile only when that
wait ends, so a retry after 10 ms could wait up to a second. A retry due that soon is
therefore also moved by the loop that stored it, when it falls due; the job then
lands on the queue the master is waiting on. A move takes every job of the queue's
delayed set that is due (others' retries and delayed pushes too), and the loop goes
on with the next one due soon. Moving is atomic in Redis (each job once, whoever
moves it), so the master, the loop and other workers may all try.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..abroker import AsyncBroker

log = logging.getLogger(__name__)

#: Moves of one queue's retries, at most once per this many seconds.
GAP = 0.005


class RetryPromoter:
    """On the loop thread: :meth:`due` for each retry stored, :meth:`aclose` at the end."""

    def __init__(self, broker: AsyncBroker, soon: float = 1.0) -> None:
        self.broker = broker
        #: Retries due within this many seconds are moved here: the longest the master
        #: may go without looking (its blocking wait); it moves later ones on time.
        self.soon = soon
        self._loop = asyncio.get_running_loop()
        # Per queue: the move to come (when, its timer); a move under way (its task);
        # the earliest retry stored while one was under way; when the last one ended.
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._moving: dict[str, asyncio.Task[None]] = {}
        self._again: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._closed = False

    def due(self, queue: str, when: float) -> None:
        """A retry of ``queue`` is stored, due at ``when`` (epoch seconds)."""
        now = time.time()
        if when - now > self.soon or self._closed:
            return
        if queue in self._moving:  # looked at again once that move is over
            self._again[queue] = min(self._again.get(queue, when), when)
            return
        at = max(when, self._last.get(queue, 0.0) + GAP)
        pending = self._timers.get(queue)
        if pending is not None:
            if pending[0] <= at:
                return
            pending[1].cancel()
        self._timers[queue] = (at, self._loop.call_later(max(at - now, 0.0), self._move, queue, at))

    def _move(self, queue: str, at: float) -> None:
        del self._timers[queue]
        self._moving[queue] = self._loop.create_task(self._moved(queue, at))

    async def _moved(self, queue: str, at: float) -> None:
        next_due = None
        try:
            # Not before `at`, by the clock that set it: a timer may fire a hair early,
            # and the retry would then wait for the master.
            _, next_due = await self.broker.promote(queue, max(time.time(), at))
        except Exception as exc:  # the master moves them at its next look
            log.warning("could not move the due retries of queue %r: %r", queue, exc)
        finally:
            del self._moving[queue]
            self._last[queue] = time.time()
        for when in (next_due, self._again.pop(queue, None)):
            if when is not None:
                self.due(queue, when)

    async def aclose(self) -> None:
        """Stop: moves to come are dropped (the master, or any worker, makes them)."""
        self._closed = True
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        moving = list(self._moving.values())
        for task in moving:
            task.cancel()
        await asyncio.gather(*moving, return_exceptions=True)
