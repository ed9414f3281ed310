"""Waiting on many jobs, the way asyncio waits on many tasks.

=========================  ===============================  ===========================
asyncio                    taskq, blocking                  taskq, in a coroutine
=========================  ===============================  ===========================
``asyncio.gather``         :func:`gather`                   :func:`agather`
``asyncio.as_completed``   :func:`as_completed`             :func:`aas_completed`
``asyncio.wait``           :func:`wait`                     :func:`async_wait`
=========================  ===============================  ===========================

(``await`` is a keyword, hence ``async_wait``.) Each poll asks Redis for the status of
every pending job in one pipelined round trip, backing off from 2 ms to 100 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, Final, Literal

from .job import FINAL, UNSUCCESSFUL, Job, JobFailed, JobNotFound, JobRecord, ResultTimeout

FIRST_COMPLETED: Final = "FIRST_COMPLETED"
FIRST_EXCEPTION: Final = "FIRST_EXCEPTION"
ALL_COMPLETED: Final = "ALL_COMPLETED"
ReturnWhen = Literal["FIRST_COMPLETED", "FIRST_EXCEPTION", "ALL_COMPLETED"]
_RETURN_WHEN = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)

_FIRST_DELAY = 0.002
_MAX_DELAY = 0.1


class _Poll:
    """The state shared by the sync and async forms: what is pending, when to stop."""

    def __init__(self, jobs: Iterable[Job[Any]], timeout: float | None) -> None:
        self.pending: dict[str, Job[Any]] = {j.id: j for j in jobs}
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.delay = _FIRST_DELAY

    def ids(self) -> list[str]:
        return list(self.pending)

    def update(
        self, ids: Sequence[str], statuses: Sequence[str | None]
    ) -> list[tuple[Job[Any], str]]:
        """Drop finished jobs from ``pending``; return them with their final status."""
        finished = []
        for job_id, status in zip(ids, statuses, strict=True):
            if status is None:
                raise JobNotFound(f"no job {job_id} (never pushed, or its record expired)")
            if status in FINAL:
                finished.append((self.pending.pop(job_id), status))
        return finished

    def next_sleep(self) -> float | None:
        """Seconds to sleep before the next poll, or None once the deadline has passed."""
        delay = self.delay
        self.delay = min(self.delay * 1.5, _MAX_DELAY)
        if self.deadline is None:
            return delay
        left = self.deadline - time.monotonic()
        return None if left <= 0 else min(delay, left)


def _app_of(jobs: Sequence[Job[Any]]) -> Any:
    apps = {id(j.app) for j in jobs}
    if len(apps) > 1:
        raise ValueError("all jobs waited on together must come from the same App")
    return jobs[0].app


def _check(return_when: str) -> None:
    if return_when not in _RETURN_WHEN:
        raise ValueError(f"invalid return_when {return_when!r}: use one of {_RETURN_WHEN}")


def _stop(status: str, return_when: str) -> bool:
    """Whether a wait ends now that a job finished with ``status``."""
    if return_when == FIRST_COMPLETED:
        return True
    return return_when == FIRST_EXCEPTION and status in UNSUCCESSFUL


# -- blocking ------------------------------------------------------------------------
def _finished(jobs: list[Job[Any]], timeout: float | None) -> Iterator[tuple[Job[Any], str]]:
    if not jobs:
        return
    broker = _app_of(jobs).broker
    poll = _Poll(jobs, timeout)
    while True:
        ids = poll.ids()
        yield from poll.update(ids, broker.statuses(ids))
        if not poll.pending:
            return
        pause = poll.next_sleep()
        if pause is None:
            raise ResultTimeout(f"{len(poll.pending)} job(s) did not finish within {timeout}s")
        time.sleep(pause)


def as_completed(jobs: Iterable[Job[Any]], timeout: float | None = None) -> Iterator[Job[Any]]:
    """Yield the jobs as they finish (done or failed); :class:`ResultTimeout` on timeout."""
    for job, _ in _finished(list(jobs), timeout):
        yield job


def wait(
    jobs: Iterable[Job[Any]],
    timeout: float | None = None,
    return_when: ReturnWhen = "ALL_COMPLETED",
) -> tuple[set[Job[Any]], set[Job[Any]]]:
    """Wait for jobs as ``asyncio.wait`` does; returns ``(done, pending)`` sets."""
    _check(return_when)
    jobs = list(jobs)
    done: set[Job[Any]] = set()
    try:
        for job, status in _finished(jobs, timeout):
            done.add(job)
            if _stop(status, return_when):
                break
    except ResultTimeout:
        pass
    return done, set(jobs) - done


def gather(
    *jobs: Job[Any], timeout: float | None = None, return_exceptions: bool = False
) -> list[Any]:
    """Results in the order of ``jobs``, as ``asyncio.gather`` gives them.

    A failure raises its :class:`~taskq.JobFailed` as soon as it is seen, unless
    ``return_exceptions``, in which case failures take their place in the list.
    """
    if not jobs:
        return []
    _, pending = wait(jobs, timeout, _gather_mode(return_exceptions))
    records = _app_of(jobs).broker.records([j.id for j in jobs])
    return _results(jobs, records, pending, timeout, return_exceptions)


def _gather_mode(return_exceptions: bool) -> ReturnWhen:
    return "ALL_COMPLETED" if return_exceptions else "FIRST_EXCEPTION"


def _results(
    jobs: Sequence[Job[Any]],
    records: list[dict[str, str]],
    pending: set[Job[Any]],
    timeout: float | None,
    return_exceptions: bool,
) -> list[Any]:
    parsed = [JobRecord.from_fields(j.id, f) for j, f in zip(jobs, records, strict=True)]
    if not return_exceptions:
        for record in parsed:
            if record.status in UNSUCCESSFUL:
                record.outcome()  # raises JobFailed
    if pending:
        raise ResultTimeout(f"{len(pending)} job(s) did not finish within {timeout}s")
    out: list[Any] = []
    for record in parsed:
        try:
            out.append(record.outcome())
        except JobFailed as exc:
            out.append(exc)
    return out


# -- asyncio -------------------------------------------------------------------------
async def _afinished(
    jobs: list[Job[Any]], timeout: float | None
) -> AsyncIterator[tuple[Job[Any], str]]:
    if not jobs:
        return
    broker = _app_of(jobs).abroker()
    poll = _Poll(jobs, timeout)
    while True:
        ids = poll.ids()
        for item in poll.update(ids, await broker.statuses(ids)):
            yield item
        if not poll.pending:
            return
        pause = poll.next_sleep()
        if pause is None:
            raise ResultTimeout(f"{len(poll.pending)} job(s) did not finish within {timeout}s")
        await asyncio.sleep(pause)


async def aas_completed(
    jobs: Iterable[Job[Any]], timeout: float | None = None
) -> AsyncIterator[Job[Any]]:
    """Async form of :func:`as_completed`: ``async for job in aas_completed(jobs)``."""
    async for job, _ in _afinished(list(jobs), timeout):
        yield job


async def async_wait(
    jobs: Iterable[Job[Any]],
    timeout: float | None = None,
    return_when: ReturnWhen = "ALL_COMPLETED",
) -> tuple[set[Job[Any]], set[Job[Any]]]:
    """Async form of :func:`wait`."""
    _check(return_when)
    jobs = list(jobs)
    done: set[Job[Any]] = set()
    try:
        async for job, status in _afinished(jobs, timeout):
            done.add(job)
            if _stop(status, return_when):
                break
    except ResultTimeout:
        pass
    return done, set(jobs) - done


async def agather(
    *jobs: Job[Any], timeout: float | None = None, return_exceptions: bool = False
) -> list[Any]:
    """Async form of :func:`gather`."""
    if not jobs:
        return []
    _, pending = await async_wait(jobs, timeout, _gather_mode(return_exceptions))
    records = await _app_of(jobs).abroker().records([j.id for j in jobs])
    return _results(jobs, records, pending, timeout, return_exceptions)
