"""Runs one job on the event loop: validate, record the start, call, record the outcome."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import traceback
from typing import Any

from ..app import App, Task
from ..broker import AsyncBroker, Outcome, dead_entry
from ..payload import BadPayload, Payload, decode, dumps, peek_id
from .executor import DaemonExecutor

log = logging.getLogger(__name__)


class JobRunner:
    """Lives on the loop thread; owns that thread's Redis client (``broker``)."""

    def __init__(
        self, app: App, broker: AsyncBroker, worker_id: str, executor: DaemonExecutor
    ) -> None:
        self.app = app
        self.broker = broker
        self.worker_id = worker_id
        self.executor = executor

    async def run(self, queue: str, raw: bytes) -> str:
        """Run the job ``raw`` taken from ``queue``; returns its final status.

        If cancelled (shutdown), nothing is written: the job stays in the active list
        and the master puts it back on the queue.
        """
        try:
            payload, missing_id = decode(raw)
        except BadPayload as exc:
            log.error("bad job in queue %r, moved to the dead letters: %s", queue, exc)
            entry = dead_entry(
                queue, raw, f"bad payload: {exc}", job_id=peek_id(raw), error=f"BadPayload: {exc}"
            )
            await self.broker.bury(self.worker_id, raw, entry)
            return "dead"
        if missing_id:
            raw = await self.broker.give_id(queue, self.worker_id, raw, payload)
        task = self.app.tasks.get(payload.task)
        attempts = await self.broker.start(queue, self.worker_id, payload)
        started = time.monotonic()
        outcome = await self._outcome(task, payload)
        await self.broker.finish(queue, self.worker_id, raw, payload, outcome, attempts)
        elapsed = time.monotonic() - started
        if outcome.status == "done":
            log.info("job %s %s done in %.2fs", payload.id, payload.task, elapsed)
        else:
            log.warning(
                "job %s %s failed in %.2fs: %s", payload.id, payload.task, elapsed, outcome.error
            )
        return outcome.status

    async def _outcome(self, task: Task[Any, Any] | None, payload: Payload) -> Outcome:
        if task is None:
            names = ", ".join(sorted(self.app.tasks)) or "none"
            return Outcome(
                "failed",
                error=f"UnknownTask: no task named {payload.task!r} is "
                f"registered with this worker (registered: {names})",
            )
        try:
            task.signature.bind(*payload.args, **payload.kwargs)
        except TypeError as exc:
            return Outcome(
                "failed", error=f"TypeError: bad arguments for task {task.name!r}: {exc}"
            )
        try:
            value = await self._call(task, payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return Outcome("failed", error=_describe(exc), traceback=traceback.format_exc())
        try:
            return Outcome("done", result=dumps(value))
        except (TypeError, ValueError) as exc:
            return Outcome(
                "failed",
                error=f"TypeError: the return value of task {task.name!r} "
                f"is not JSON-serialisable: {exc}",
            )

    async def _call(self, task: Task[Any, Any], payload: Payload) -> Any:
        if task.is_async:
            coro = task.fn(*payload.args, **payload.kwargs)
        else:
            loop = asyncio.get_running_loop()
            call = functools.partial(task.fn, *payload.args, **payload.kwargs)
            coro = loop.run_in_executor(self.executor, call)
        if task.timeout is None:
            return await coro
        try:
            async with asyncio.timeout(task.timeout) as deadline:
                return await coro
        except TimeoutError:
            if deadline.expired():
                raise JobTimeout(
                    f"task {task.name!r} ran longer than its timeout of {task.timeout}s"
                ) from None
            raise


class JobTimeout(TimeoutError):
    """A job ran past its task's ``timeout``."""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
