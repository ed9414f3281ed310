"""Runs one job on the event loop: validate, record the start, call, record the outcome."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import functools
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..abroker import AsyncBroker
from ..app import App, Task
from ..payload import BadPayload, Payload, decode, dumps, peek_id
from ..retry import Retry
from ..writes import JobDone, Outcome, Writes, dead_entry, row_alone
from .batcher import WriteAbandoned, WriteBatcher
from .executor import DaemonExecutor
from .promoter import RetryPromoter

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

_MAX_BACKOFF = 5.0


#: A job's "active" status is stored once it has run this long (a sweep, set for the
#: oldest job's due time, stores the starts due); a job that ends sooner goes from
#: "queued" to its outcome in one write (half the writes per job).
START_RECORD_DELAY = 0.05

#: How often the runner looks for job tasks that ended without reporting it: cancelled
#: before they ran by code other than the runner's (a job cancelling its siblings,
#: say). Their slots are freed then. (A done callback on every task would catch them
#: at once, at the cost of a loop callback a job.)
REAP_EVERY = 1.0

#: How long a sync job past its timeout, or aborted, waits for its thread (which
#: cannot be interrupted) to return before it ends all the same, seconds: until then
#: its retry, or the next job of its unique key, cannot run beside it.
SYNC_STOP_WAIT = 10.0

#: The name of every job's task. Given, not left to asyncio: a default name
#: ("Task-123") is formatted for each task, ~0.2 us a job.
JOB_TASK_NAME = "taskq-job"

#: The outcome of every job that returns None (an Outcome is frozen: one serves all,
#: and making one costs about a microsecond).
_DONE_NONE = Outcome("done", result="null")

#: Reports a job's run is over (seconds it ran; None if it did not run).
Ran = Callable[[float | None], None]
#: Reports jobs are over: how they ended, and how many of them.
Done = Callable[[str, int], None]
#: How many jobs the worker wants taken ahead now (its prefetch).
Ahead = Callable[[], int]


class _Ended:
    """How a job ended: its status, the writes that store its outcome, and how long
    it ran (None if it never ran: then that is all)."""

    __slots__ = ("run_time", "status", "writes")

    def __init__(self, status: str, writes: Writes | JobDone) -> None:
        self.status = status
        self.writes = writes
        self.run_time: float | None = None


class _Running(_Ended):
    """A job from its start; once it has run (:meth:`JobRunner._end`), also how it
    ended (one object a job, not two), with what to log once that is stored."""

    __slots__ = (
        "attempt",
        "outcome",
        "payload",
        "queue",
        "raw",
        "start_stored",
        "started_at",
        "task",
    )

    def __init__(
        self, queue: str, raw: bytes, payload: Payload, task: Task[Any, Any] | None
    ) -> None:
        self.queue = queue
        self.raw = raw
        self.payload = payload
        self.task = task
        self.attempt = payload.attempts + 1
        self.started_at = time.time()
        self.start_stored = False
        self.outcome: Outcome | None = None  # set by _end, with status, writes, run_time


class BadArguments(TypeError):
    """The job's arguments do not fit the task's signature."""


def _bad_arguments(task: Task[Any, Any], payload: Payload) -> BadArguments | None:
    try:
        task.signature.bind(*payload.args, **payload.kwargs)
    except TypeError as exc:
        return BadArguments(str(exc))
    return None


def _coroutine(task: Task[Any, Any], payload: Payload) -> Awaitable[Any]:
    """The async task's coroutine for this job; wrong arguments fail here, before the
    coroutine exists (BadArguments, or the task's own TypeError)."""
    try:
        return task.fn(*payload.args, **payload.kwargs)
    except TypeError as exc:
        raise _bad_arguments(task, payload) or exc from None


class JobTimeout(TimeoutError):
    """A job ran past its task's ``timeout``."""


class _Aborted(Exception):
    """A sync job aborted, whose thread has returned (or was waited for long
    enough): it ends aborted. Decided when the abort reached the job, not after the
    wait: by then a twin's end may have cleared the abort request."""


class JobRunner:
    """Lives on the loop thread; owns that thread's Redis client (``broker``).

    For each job, on the loop: ``on_ran(seconds)`` once its run is over (None if it
    did not run), then ``on_done(status)`` once its outcome is stored, or with
    "cancelled" if it was cancelled (shutdown) before that, "unstarted" if starting
    stopped before its turn, "given back" if it went back to its queue unstarted (see
    :meth:`_give_back_excess`), or "error" if its outcome could not be stored (it stays
    active)."""

    def __init__(
        self,
        app: App,
        broker: AsyncBroker,
        worker_id: str,
        executor: DaemonExecutor,
        concurrency: int,
        on_ran: Ran,
        on_done: Done,
        metrics: Metrics | None = None,
        ahead: Ahead | None = None,
        promote_within: float = 1.0,
    ) -> None:
        self.app = app
        self.on_ran = on_ran
        self.on_done = on_done
        self.ahead = ahead  # None: keep every job taken ahead (a fixed prefetch)
        self._giving_back = 0  # give-back writes not yet stored
        self.broker = broker
        self.worker_id = worker_id
        self.executor = executor
        self.writes = broker.writes
        self.metrics = metrics
        self.batcher = WriteBatcher(broker, metrics, on_done)
        self.promoter = RetryPromoter(broker, promote_within)
        # Made on the loop it serves. Kept: looking the running loop up costs a getpid()
        # system call each time, and it was looked up several times a job.
        self._loop = asyncio.get_running_loop()
        # What every job task starts with: a copy of this. Not the context of the
        # step that starts it, which may be another job's, with that job's changes.
        self._context = contextvars.copy_context()
        self.concurrency = concurrency
        # Jobs handed over beyond `concurrency` (the master's prefetch) wait here, not
        # as tasks: a task parked on a semaphore cost ~2.7 us more a job.
        self._waiting: collections.deque[tuple[str, bytes]] = collections.deque()
        self._starting = True
        self._aborting: set[str] = set()  # ids whose abort was asked (from Redis)
        self._current: dict[str, asyncio.Task[Any]] = {}  # running jobs by id
        # Sync jobs' tasks waiting for their thread to return (see _wait_for_thread),
        # and those of them whose abort was asked meanwhile.
        self._stopping: set[asyncio.Task[Any]] = set()
        self._abort_asked: set[asyncio.Task[Any]] = set()
        # More runs of a job id already in _current: the same job twice in the queue
        # (pushed so, or put back while a copy ran on), both taken at once.
        self._twins: dict[str, list[asyncio.Task[Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # started jobs (a slot each), until they end
        # Running jobs whose start is not stored yet, oldest first (insertion order).
        self._unrecorded: dict[_Running, None] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._reaper: asyncio.TimerHandle | None = None

    def abort(self, job_ids: set[str]) -> None:
        """Cancel the running jobs among ``job_ids``; jobs not started yet are dropped
        when they come up. Call on the loop thread with every pending abort request."""
        self._aborting = job_ids
        stopping = self._stopping
        for job_id in job_ids & self._current.keys():
            for task in (self._current[job_id], *self._twins.get(job_id, ())):
                if task in stopping:
                    self._abort_asked.add(task)
                else:
                    task.cancel()

    def _is_abort(self, payload: Payload) -> bool:
        """Whether the cancellation of this job's task is its abort (else it is a
        shutdown's: the job goes back to its queue)."""
        return payload.id in self._aborting and self._starting

    def stop_starting(self) -> None:
        """Start no more jobs: those still waiting for a slot stay in the active list
        (the master puts them back). Call on the loop thread."""
        self._starting = False
        self._start_waiting()

    async def cancel_running(self, timeout: float) -> None:
        """Cancel every job still running (shutdown, after the grace period) and wait
        up to ``timeout`` seconds for them to unwind; they stay in the active list."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        self._report_silent_ends()  # those cancelled before they ever ran

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is pending (bounded), then close this loop's client."""
        for timer in (self._sweep, self._reaper):
            if timer is not None:
                timer.cancel()
        if not await self.batcher.drain(timeout):
            log.error("some job writes could not be stored: those jobs run again")
        await self.promoter.aclose()  # after the last retries are stored
        await self.broker.aclose()

    async def run_batch(self, queue: str, raws: list[bytes]) -> None:
        """Take the jobs taken together: each starts as a task of its own once a slot
        is free (at most ``concurrency`` run at once); return at once."""
        self._waiting.extend((queue, raw) for raw in raws)
        self._start_waiting()

    def _start_waiting(self) -> None:
        """Start waiting jobs while slots are free; once starting has stopped, report
        them unstarted instead (they stay in the active list: put back)."""
        waiting = self._waiting
        if not self._starting:
            while waiting:
                waiting.popleft()
                self.on_ran(None)
                self.on_done("unstarted", 1)
            return
        loop, tasks = self._loop, self._tasks
        # Tasks made directly unless a job's code set a task factory on this loop (a
        # tracing library, say): loop.create_task costs ~0.2 us a job more.
        direct = loop.get_task_factory() is None
        while waiting and len(tasks) < self.concurrency:
            queue, raw = waiting.popleft()
            coro, context = self._run_reporting(queue, raw), self._context.copy()
            tasks.add(
                asyncio.Task(coro, loop=loop, context=context, name=JOB_TASK_NAME)
                if direct
                else loop.create_task(coro, context=context, name=JOB_TASK_NAME)
            )
        if self._reaper is None and self._tasks:
            self._reaper = loop.call_later(REAP_EVERY, self._reap)

    def _reap(self) -> None:
        """Every REAP_EVERY seconds while jobs run: see _report_silent_ends."""
        self._reaper = None
        self._report_silent_ends()
        if self._tasks:
            self._reaper = self._loop.call_later(REAP_EVERY, self._reap)

    def _give_back_excess(self, excess: int) -> None:
        """Give back the newest ``excess`` jobs waiting: the jobs waiting beyond what
        the worker wants taken ahead now, once they are more than that and than a job
        per slot (not for every wobble of the prefetch). Jobs were taken ahead while
        runs were quick and runs have turned slow, so idle workers should have them.
        One give-back at a time."""
        back: dict[str, list[bytes]] = {}
        for _ in range(excess):
            queue, raw = self._waiting.pop()
            back.setdefault(queue, []).append(raw)
            self.on_ran(None)  # its place is free
        self._giving_back = len(back)
        for queue, raws in back.items():
            count = len(raws)

            def stored(exc: BaseException | None, queue: str = queue, count: int = count) -> None:
                self._giving_back -= 1
                if exc is not None and not isinstance(exc, WriteAbandoned):
                    # They stay in the active list: put back when the worker stops, or
                    # recovered by another worker if it dies.
                    log.error("could not give back %d jobs of queue %r: %r", count, queue, exc)
                self.on_done("given back", count)

            self.batcher.submit(self.writes.give_back(queue, self.worker_id, raws), stored)
        log.info("gave back %d jobs taken ahead: runs turned slow", excess)

    def _report_silent_ends(self) -> None:
        """Report the job tasks that ended without reporting it: cancelled before
        their first step, so their coroutine never ran (see REAP_EVERY)."""
        for task in [t for t in self._tasks if t.done()]:
            self._cancelled(task)

    def _cancelled(self, task: asyncio.Task[Any]) -> None:
        """A job's task was cancelled, during its run (a shutdown, or the job's own
        code) or before it (see _report_silent_ends): nothing more is written, the
        job stays in the active list. Its slot is free."""
        self._tasks.discard(task)
        self.on_ran(None)
        self.on_done("cancelled", 1)
        if self._waiting and len(self._tasks) < self.concurrency:
            self._start_waiting()

    async def _run_reporting(self, queue: str, raw: bytes) -> None:
        """A job's task: run it, then report it and hand its outcome to the batcher.
        Two levels of coroutine, this one and _outcome_or_abort (which calls the job
        inline), with plain methods around the await: each level of awaiting costs
        every step of every job."""
        on_ran, on_done = self.on_ran, self.on_done
        me = asyncio.current_task(self._loop)
        assert me is not None
        ended: _Ended | None = None
        try:
            began = self._begin(queue, raw)
            if not isinstance(began, _Running):  # it did not run
                ended = began
            else:
                try:
                    outcome = await self._outcome_or_abort(began, me)
                except BaseException:
                    self._unrecorded.pop(began, None)
                    if self.metrics:  # cancelled by a shutdown: put back, not finished
                        self.metrics.in_progress.dec()
                    raise
                ended = self._end(began, outcome)
        except Exception as exc:
            log.exception("error running a job, it will run again: %r", exc)
        except asyncio.CancelledError:
            # Reported here, not by a done callback on every job's task (a loop
            # callback a job); a task cancelled before it ran: _report_silent_ends.
            self._cancelled(me)
            raise
        # No await from here on: a cancellation cannot come in between.
        # The run is over: its slot goes to the next job now, not a loop pass later
        # when the task's end is reported (quick jobs would wait a pass each).
        self._tasks.discard(me)
        waiting = self._waiting
        if waiting:
            self._start_waiting()
            ahead = self.ahead
            if ahead is not None and not self._giving_back:
                wanted = ahead()
                if len(waiting) - wanted > max(wanted, self.concurrency):
                    self._give_back_excess(len(waiting) - wanted)
        if ended is None:
            on_ran(None)
            on_done("error", 1)
            return
        on_ran(ended.run_time)
        # A job done is logged at INFO (skipped at once when that is off): else all
        # that is left once its outcome is stored is to count it, with its batch.
        ran = ended.run_time is not None
        if ran and ended.status == "done" and not log.isEnabledFor(logging.INFO):
            self.batcher.submit_done(ended.writes)
        else:
            self._submit(queue, ended)

    def _submit(self, queue: str, ended: _Ended) -> None:
        """Hand the writes of a job that ended to the batcher, with what to do once
        they are stored: log its run, count it, and watch for its retry."""

        def stored(exc: BaseException | None) -> None:
            if exc is None:
                if isinstance(ended, _Running):
                    assert ended.outcome is not None
                    assert ended.run_time is not None
                    self._log(ended.payload, ended.outcome, ended.run_time, ended.attempt)
                    if ended.status == "scheduled" and ended.outcome.due is not None:
                        self.promoter.due(queue, ended.outcome.due)  # a retry
                self.on_done(ended.status, 1)
                return
            if not isinstance(exc, WriteAbandoned):
                log.error("could not store a job's outcome, it will run again: %r", exc)
            self.on_done("error", 1)

        self.batcher.submit(ended.writes, stored)

    def _begin(self, queue: str, raw: bytes) -> _Running | _Ended:
        """Read the job and record that it runs; or how it ended without running
        (a bad payload, an abort that came first)."""
        try:
            payload, missing_id = decode(raw)
        except BadPayload as exc:
            log.error("bad job in queue %r, moved to the dead letters: %s", queue, exc)
            entry = dead_entry(
                queue, raw, f"bad payload: {exc}", job_id=peek_id(raw), error=f"BadPayload: {exc}"
            )
            if self.metrics:
                self.metrics.count("", "dead")
            return _Ended("dead", self.writes.bury(self.worker_id, raw, entry))
        if missing_id:
            new_raw = payload.encode()
            self.batcher.submit(self.writes.give_id(queue, self.worker_id, raw, new_raw))
            raw = new_raw
        if payload.id in self._aborting:
            aborted = Outcome("aborted", error="Aborted before it ran")
            if self.metrics:
                self.metrics.count(payload.task, "aborted")
            return _Ended(
                "aborted", self.writes.finish(queue, self.worker_id, raw, payload, aborted)
            )
        running = _Running(queue, raw, payload, self.app.tasks.get(payload.task))
        self._unrecorded[running] = None
        if self._sweep is None:
            self._sweep = self._loop.call_later(START_RECORD_DELAY, self._store_starts)
        if self.metrics:
            self.metrics.job_started(payload.task, payload.enqueued_at)
        return running

    def _end(self, running: _Running, outcome: Outcome) -> _Running:
        """``running`` with how its run ended, ``outcome``, and the writes that store it."""
        self._unrecorded.pop(running, None)
        ended_at = time.time()
        running.run_time = run_time = ended_at - running.started_at
        if outcome.status == "scheduled":
            outcome = _retry_or_fail(running.payload, outcome)
        running.outcome = outcome
        running.status = status = outcome.status
        payload, queue, raw = running.payload, running.queue, running.raw
        if self.metrics:
            self.metrics.job_ended(payload.task, status, run_time)
        # Ended before its start was stored: the outcome stores both at once.
        started = None if running.start_stored else running.started_at
        if status == "done" and row_alone(payload):
            running.writes = self.writes.done(
                queue, self.worker_id, raw, payload, outcome.result, started, ended_at
            )
        else:
            running.writes = self.writes.finish(
                queue, self.worker_id, raw, payload, outcome, started, ended_at
            )
        return running

    def _store_starts(self) -> None:
        """Store the start of every job running for START_RECORD_DELAY or more; come
        back when the next one is due."""
        self._sweep = None
        due = time.time() - START_RECORD_DELAY
        unrecorded = self._unrecorded
        while unrecorded:
            r = next(iter(unrecorded))  # the oldest (insertion order)
            if r.started_at > due:
                break
            del unrecorded[r]
            r.start_stored = True
            self.batcher.submit(self.writes.start(r.queue, self.worker_id, r.payload, r.started_at))
        if unrecorded:
            oldest = next(iter(unrecorded))
            wait = max(oldest.started_at - due, 0.001)
            self._sweep = self._loop.call_later(wait, self._store_starts)

    async def _outcome_or_abort(self, running: _Running, me: asyncio.Task[Any]) -> Outcome:
        """The job's outcome, or "aborted" if its abort cancelled it (a shutdown's
        cancellation goes on up: the job is put back). The job's call is inline: each
        level of awaiting costs every step of every job."""
        task, payload = running.task, running.payload
        if task is None:
            names = ", ".join(sorted(self.app.tasks)) or "none"
            return Outcome(
                "failed",
                error=f"UnknownTask: no task named {payload.task!r} is "
                f"registered with this worker (registered: {names})",
            )
        current = self._current
        if payload.id in current:
            self._twins.setdefault(payload.id, []).append(me)
        else:
            current[payload.id] = me
        try:
            try:
                if task.is_async and task.timeout is None:  # the common case, inline
                    value = await _coroutine(task, payload)
                else:
                    value = await self._call(task, payload)
            except BadArguments as exc:
                return Outcome(
                    "failed", error=f"TypeError: bad arguments for task {task.name!r}: {exc}"
                )
            except _Aborted:
                return Outcome("aborted", error="Aborted while running")
            except asyncio.CancelledError as exc:
                if me.cancelling():
                    raise  # cancelled from outside: an abort or a shutdown
                return self._failure(task, exc, running.attempt)  # the job's code raised it itself
            except BaseException as exc:  # a task's SystemExit must not stop the loop thread
                return self._failure(task, exc, running.attempt)
        except asyncio.CancelledError:
            if not self._is_abort(payload):
                raise
            me.uncancel()
            return Outcome("aborted", error="Aborted while running")
        finally:
            held = current.pop(payload.id)
            if held is not me or self._twins:
                self._untwin(payload.id, me, held)
        try:
            return _DONE_NONE if value is None else Outcome("done", result=dumps(value))
        except (TypeError, ValueError, RecursionError) as exc:
            problem = "nested too deeply" if isinstance(exc, RecursionError) else exc
            return Outcome(
                "failed",
                error=f"TypeError: the return value of task {task.name!r} "
                f"is not JSON-serialisable: {problem}",
            )

    def _untwin(self, job_id: str, me: asyncio.Task[Any], held: asyncio.Task[Any]) -> None:
        """A run of a job id that has twins (see _twins) ended: the id's entry in
        _current goes to a twin still running."""
        twins = self._twins.get(job_id, [])
        if held is not me:  # the entry was a twin's: it stays; I was among the twins
            self._current[job_id] = held
            twins.remove(me)
        elif twins:
            self._current[job_id] = twins.pop()
        if not twins:
            self._twins.pop(job_id, None)

    def _failure(self, task: Task[Any, Any], exc: BaseException, attempt: int) -> Outcome:
        error = _describe(exc)
        try:
            tb = traceback.format_exc()
        except Exception as unprintable:  # an exception whose __str__ raises, say
            tb = f"(the traceback could not be formatted: {_describe(unprintable)})"
        if task.retry.should_retry(exc, attempt):
            due = time.time() + task.retry.delay(attempt, exc)
            return Outcome("scheduled", error=error, traceback=tb, due=due)
        if isinstance(exc, Retry):
            error = f"{error} (no retries left after {attempt} attempts; set retries=)"
        return Outcome("failed", error=error, traceback=tb)

    async def _call(self, task: Task[Any, Any], payload: Payload) -> Any:
        """Call a sync task in a thread, or an async one with a timeout."""
        if not task.is_async:
            return await self._call_sync(task, payload)
        try:
            async with asyncio.timeout(task.timeout) as deadline:
                return await _coroutine(task, payload)
        except TimeoutError:
            if deadline.expired():
                raise _timed_out(task) from None
            raise

    async def _call_sync(self, task: Task[Any, Any], payload: Payload) -> Any:
        """Call a sync task in a thread of the executor. A thread cannot be
        interrupted: at the job's timeout, or its abort, the job waits for its thread
        to return (see _wait_for_thread), so that its retry, or the next job of its
        unique key, does not run beside it."""
        bad = _bad_arguments(task, payload)  # checked here: the call is in a thread
        if bad is not None:
            raise bad
        call = functools.partial(task.fn, *payload.args, **payload.kwargs)
        ran = self._loop.run_in_executor(self.executor, call)
        ran.add_done_callback(_seen)  # its end is discarded if the job ended before it
        try:
            async with asyncio.timeout(task.timeout) as deadline:
                return await asyncio.shield(ran)  # a cancellation leaves the thread be
        except TimeoutError:
            if not deadline.expired():
                raise
            if await self._wait_for_thread(ran, payload, "timed out"):
                raise _Aborted from None  # asked while it waited
            raise _timed_out(task) from None
        except asyncio.CancelledError:
            if not self._is_abort(payload):
                raise  # a shutdown: the job goes back to its queue
            await self._wait_for_thread(ran, payload, "was aborted")
            me = asyncio.current_task()
            assert me is not None
            me.uncancel()
            raise _Aborted from None

    async def _wait_for_thread(self, ran: asyncio.Future[Any], payload: Payload, why: str) -> bool:
        """Wait up to SYNC_STOP_WAIT seconds for a sync job's thread to return; warn
        if it runs on. The job's slot stays taken meanwhile, and its task is not
        cancelled (by the abort requests that come until its outcome is stored): only
        a shutdown ends the wait early. Returns whether its abort was asked meanwhile."""
        if ran.done():
            return False
        me = asyncio.current_task()
        assert me is not None
        self._stopping.add(me)
        try:
            await asyncio.wait([ran], timeout=SYNC_STOP_WAIT)
        finally:
            self._stopping.discard(me)
            asked = me in self._abort_asked
            self._abort_asked.discard(me)
        if not ran.done():
            log.warning(
                "job %s %s %s, and its thread is still running after %gs more: the job "
                "ends now, and the thread runs on (its result discarded) beside whatever "
                "runs next, a retry of it too",
                payload.id,
                payload.task,
                why,
                SYNC_STOP_WAIT,
            )
        return asked

    def _log(self, payload: Payload, outcome: Outcome, elapsed: float, attempt: int) -> None:
        if outcome.status == "done":
            log.info("job %s %s done in %.2fs", payload.id, payload.task, elapsed)
        elif outcome.status == "scheduled":
            assert outcome.due is not None
            log.warning(
                "job %s %s attempt %d failed (%s); retrying in %.2fs",
                payload.id,
                payload.task,
                attempt,
                outcome.error,
                max(0.0, outcome.due - time.time()),
            )
        elif outcome.status == "aborted":
            log.info("job %s %s aborted after %.2fs", payload.id, payload.task, elapsed)
        else:
            log.warning(
                "job %s %s failed in %.2fs: %s", payload.id, payload.task, elapsed, outcome.error
            )


def _seen(future: asyncio.Future[Any]) -> None:
    """Mark a future's exception as seen: asyncio logs one never looked at."""
    if not future.cancelled():
        future.exception()


def _timed_out(task: Task[Any, Any]) -> JobTimeout:
    return JobTimeout(f"task {task.name!r} ran longer than its timeout of {task.timeout}s")


def _retry_or_fail(payload: Payload, retry: Outcome) -> Outcome:
    """A retry runs the job one attempt along, a payload a few bytes bigger: one that
    no longer fits the size limit fails now, rather than stay in the worker's list."""
    try:
        raw = payload.next_attempt().encode()
    except (TypeError, ValueError) as exc:
        return Outcome(
            "failed", error=f"{retry.error} (not retried: {exc})", traceback=retry.traceback
        )
    return dataclasses.replace(retry, retry_raw=raw)  # encoded once, stored by finish


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # its __str__ raises: the job fails all the same
        text = "(its message could not be read)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
