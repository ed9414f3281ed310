"""gather / as_completed / wait and their asyncio forms, against the test Redis."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
import redis

import taskq
from taskq import (
    App,
    Job,
    JobFailed,
    JobNotFound,
    ResultTimeout,
    Worker,
)
from taskq.waiting import ReturnWhen

from . import tasks

T = TypeVar("T")

FIRST_COMPLETED: ReturnWhen = taskq.FIRST_COMPLETED
FIRST_EXCEPTION: ReturnWhen = taskq.FIRST_EXCEPTION
ALL_COMPLETED: ReturnWhen = taskq.ALL_COMPLETED

#: Plenty for a wait that must end at once; a wait that hangs to this limit fails a test.
LONG = 10.0
#: A wait that is expected to time out.
SHORT = 0.2


def burst(app: App) -> None:
    """Run every job queued so far, in this process, and return once the queues are empty."""
    Worker(app, burst=True, handle_signals=False).run()


@contextmanager
def quick(limit: float = 3.0) -> Iterator[None]:
    """Assert that the block returns within ``limit`` seconds (no waiting for a timeout)."""
    began = time.monotonic()
    yield
    elapsed = time.monotonic() - began
    assert elapsed < limit, f"took {elapsed:.2f}s: it waited instead of returning at once"


def run_async(app: App, main: Callable[[], Awaitable[T]]) -> T:
    """asyncio.run(main()), closing the app's client for that loop before the loop ends."""

    async def wrapped() -> T:
        try:
            return await main()
        finally:
            await app.aclose()

    return asyncio.run(wrapped())


def assert_boom_failure(exc: JobFailed, job: Job[Any], message: str) -> None:
    assert exc.job_id == job.id
    assert exc.error == f"ValueError: {message}"
    assert str(exc) == f"ValueError: {message}"
    assert "raise ValueError(message)" in exc.remote_traceback
    assert exc.remote_traceback.rstrip().endswith(f"ValueError: {message}")
    notes = getattr(exc, "__notes__", [])
    assert len(notes) == 1
    assert notes[0].startswith(f"Remote traceback (job {job.id}):\n")
    assert exc.remote_traceback.rstrip() in notes[0]


# -- gather ------------------------------------------------------------------------------
def test_gather_returns_results_in_the_order_given(app: App) -> None:
    jobs = [tasks.add.push(i, 100) for i in range(5)]
    burst(app)
    shuffled = [jobs[3], jobs[0], jobs[4], jobs[1], jobs[2]]
    assert taskq.gather(*shuffled, timeout=LONG) == [103, 100, 104, 101, 102]


def test_gather_of_nothing_is_an_empty_list(app: App) -> None:
    assert taskq.gather() == []


def test_gather_raises_the_first_failure_with_the_remote_traceback(app: App) -> None:
    ok = tasks.add.push(1, 2)
    bad = tasks.boom.push("kaput")
    burst(app)
    with pytest.raises(JobFailed) as info:
        taskq.gather(ok, bad, timeout=LONG)
    assert_boom_failure(info.value, bad, "kaput")


def test_gather_raises_the_failure_of_the_earliest_failed_job_in_order(app: App) -> None:
    first = tasks.boom.push("first")
    second = tasks.boom.push("second")
    burst(app)
    with pytest.raises(JobFailed) as info:
        taskq.gather(second, first, timeout=LONG)
    assert info.value.job_id == second.id


def test_gather_raises_a_failure_without_waiting_for_unfinished_jobs(app: App) -> None:
    bad = tasks.boom.push("early")
    burst(app)
    never = tasks.add.push(1, 1)  # no worker runs it
    with quick(), pytest.raises(JobFailed) as info:
        taskq.gather(never, bad, timeout=LONG)
    assert info.value.job_id == bad.id


def test_gather_with_return_exceptions_puts_failures_in_the_list(app: App) -> None:
    a = tasks.add.push(1, 2)
    bad = tasks.boom.push("listed")
    b = tasks.add_sync.push(3, 4)
    burst(app)
    results = taskq.gather(a, bad, b, timeout=LONG, return_exceptions=True)
    assert results[0] == 3
    assert results[2] == 7
    failure = results[1]
    assert isinstance(failure, JobFailed)
    assert_boom_failure(failure, bad, "listed")


def test_gather_times_out_when_no_worker_runs(app: App) -> None:
    done = tasks.add.push(1, 2)
    burst(app)
    pending = tasks.add.push(3, 4)
    began = time.monotonic()
    with pytest.raises(ResultTimeout, match=r"1 job\(s\) did not finish within 0.2s"):
        taskq.gather(done, pending, timeout=SHORT)
    assert time.monotonic() - began >= SHORT
    with pytest.raises(ResultTimeout):
        taskq.gather(pending, timeout=SHORT, return_exceptions=True)


def test_job_failed_without_a_remote_traceback_has_no_note() -> None:
    exc = JobFailed("abc", "UnknownTask: no task named 'x'")
    assert (exc.job_id, exc.error, exc.remote_traceback) == ("abc", str(exc), "")
    assert not getattr(exc, "__notes__", [])


def test_job_failed_survives_pickling() -> None:
    exc = JobFailed("abc", "ValueError: x", "Traceback (most recent call last):\nValueError: x")
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.job_id, copy.error, copy.remote_traceback) == (
        exc.job_id,
        exc.error,
        exc.remote_traceback,
    )


def test_return_when_constants_are_the_asyncio_names() -> None:
    assert (taskq.FIRST_COMPLETED, taskq.FIRST_EXCEPTION, taskq.ALL_COMPLETED) == (
        asyncio.FIRST_COMPLETED,
        asyncio.FIRST_EXCEPTION,
        asyncio.ALL_COMPLETED,
    )


def test_result_timeout_is_a_timeout_error() -> None:
    assert issubclass(ResultTimeout, TimeoutError)
    assert issubclass(JobNotFound, LookupError)


def test_gather_of_an_unknown_id_raises_job_not_found(app: App) -> None:
    with quick(), pytest.raises(JobNotFound, match="no job nosuchjob"):
        taskq.gather(app.job("nosuchjob"), timeout=LONG)


def test_gather_refuses_jobs_of_two_apps(app: App) -> None:
    other = App(app.settings.redis_url)
    job = tasks.add.push(1, 2)
    with pytest.raises(ValueError, match="same App"):
        taskq.gather(job, other.job(job.id), timeout=LONG)
    other.close()


# -- Job.result --------------------------------------------------------------------------
def test_result_of_a_finished_job_with_a_zero_timeout(app: App) -> None:
    job = tasks.add.push(20, 22)
    burst(app)
    assert job.result(timeout=0) == 42


def test_result_of_an_unfinished_job_with_a_zero_timeout_times_out_at_once(app: App) -> None:
    job = tasks.add.push(20, 22)
    with quick(1.0), pytest.raises(ResultTimeout, match=job.id):
        job.result(timeout=0)


def test_result_of_a_failed_job_raises_job_failed(app: App) -> None:
    job = tasks.boom.push("result")
    burst(app)
    with pytest.raises(JobFailed) as info:
        job.result(timeout=LONG)
    assert_boom_failure(info.value, job, "result")


def test_unknown_job_raises_job_not_found(app: App) -> None:
    job = app.job("0" * 32)
    with pytest.raises(JobNotFound):
        job.info()
    with pytest.raises(JobNotFound):
        job.status()
    with quick(), pytest.raises(JobNotFound):
        job.result(timeout=LONG)


def test_result_waits_for_a_worker_running_meanwhile(app: App) -> None:
    job = tasks.add.push(2, 2)
    worker = threading.Thread(target=burst, args=(app,))
    worker.start()
    try:
        assert job.result(timeout=LONG) == 4
    finally:
        worker.join(LONG)
    assert not worker.is_alive()


# -- as_completed ------------------------------------------------------------------------
def test_as_completed_yields_each_job_once(app: App) -> None:
    jobs = [tasks.add.push(i, i) for i in range(4)]
    bad = tasks.boom.push("also yielded")
    burst(app)
    given: list[Job[Any]] = [*jobs, bad, jobs[0]]
    seen = list(taskq.as_completed(given, timeout=LONG))
    assert len(seen) == 5
    assert set(seen) == {*jobs, bad}


def test_as_completed_yields_jobs_as_a_concurrent_worker_finishes_them(app: App) -> None:
    jobs = [tasks.add.push(i, 1) for i in range(3)]
    worker = threading.Thread(target=burst, args=(app,))
    worker.start()
    try:
        seen = list(taskq.as_completed(jobs, timeout=LONG))
    finally:
        worker.join(LONG)
    assert sorted(j.result(timeout=0) for j in seen) == [1, 2, 3]


def test_as_completed_of_nothing_yields_nothing(app: App) -> None:
    assert list(taskq.as_completed([], timeout=SHORT)) == []


def test_as_completed_yields_the_finished_then_times_out(app: App) -> None:
    done = tasks.add.push(1, 2)
    burst(app)
    pending = tasks.add.push(3, 4)
    seen: list[Job[Any]] = []
    with pytest.raises(ResultTimeout, match=r"1 job\(s\)"):
        seen.extend(taskq.as_completed([pending, done], timeout=SHORT))
    assert seen == [done]


def test_as_completed_of_an_unknown_id_raises_job_not_found(app: App) -> None:
    with pytest.raises(JobNotFound):
        list(taskq.as_completed([app.job("missing")], timeout=LONG))


# -- wait --------------------------------------------------------------------------------
def test_wait_all_completed(app: App) -> None:
    # Job is invariant in its result type: a list mixing Job[int] and Job[None] needs this.
    jobs: list[Job[Any]] = [tasks.add.push(1, 1), tasks.boom.push("counted"), tasks.add.push(2, 2)]
    burst(app)
    done, pending = taskq.wait(jobs, timeout=LONG, return_when=ALL_COMPLETED)
    assert done == set(jobs)
    assert pending == set()


def test_wait_defaults_to_all_completed_and_returns_timed_out_jobs_as_pending(
    app: App,
) -> None:
    finished: list[Job[Any]] = [tasks.add.push(1, 1), tasks.boom.push("done anyway")]
    burst(app)
    unfinished = tasks.add.push(2, 2)
    began = time.monotonic()
    done, pending = taskq.wait([*finished, unfinished], timeout=SHORT)
    assert time.monotonic() - began >= SHORT
    assert done == set(finished)
    assert pending == {unfinished}


def test_wait_first_completed_returns_at_once(app: App) -> None:
    first = tasks.add.push(1, 2)
    burst(app)
    second = tasks.add.push(3, 4)  # no worker will run it
    with quick():
        done, pending = taskq.wait([second, first], timeout=30, return_when=FIRST_COMPLETED)
    assert done == {first}
    assert pending == {second}


def test_wait_first_completed_counts_a_failure_as_completed(app: App) -> None:
    bad = tasks.boom.push("completed")
    burst(app)
    other = tasks.add.push(3, 4)
    with quick():
        done, pending = taskq.wait([other, bad], timeout=30, return_when=FIRST_COMPLETED)
    assert (done, pending) == ({bad}, {other})


def test_wait_first_exception_returns_at_the_first_failure(app: App) -> None:
    ok = tasks.add.push(1, 2)
    bad = tasks.boom.push("stop here")
    burst(app)
    unfinished = tasks.add.push(3, 4)
    with quick():
        done, pending = taskq.wait([unfinished, ok, bad], timeout=30, return_when=FIRST_EXCEPTION)
    assert bad in done
    assert unfinished in pending
    assert done | pending == {ok, bad, unfinished}
    assert not done & pending


def test_wait_first_exception_without_a_failure_waits_for_all(app: App) -> None:
    ok = tasks.add.push(1, 2)
    burst(app)
    unfinished = tasks.add.push(3, 4)
    began = time.monotonic()
    done, pending = taskq.wait([ok, unfinished], timeout=SHORT, return_when=FIRST_EXCEPTION)
    assert time.monotonic() - began >= SHORT
    assert (done, pending) == ({ok}, {unfinished})


def test_wait_with_nothing_pending_in_time(app: App) -> None:
    unfinished = [tasks.add.push(1, 2), tasks.add.push(3, 4)]
    done, pending = taskq.wait(unfinished, timeout=SHORT, return_when=FIRST_COMPLETED)
    assert done == set()
    assert pending == set(unfinished)


def test_wait_of_an_unknown_id_raises_job_not_found(app: App) -> None:
    job = tasks.add.push(1, 2)
    burst(app)
    with quick(), pytest.raises(JobNotFound, match="no job ghost"):
        taskq.wait([job, app.job("ghost")], timeout=LONG)


def test_wait_rejects_a_bad_return_when_once_a_job_finishes(app: App) -> None:
    job = tasks.add.push(1, 2)
    burst(app)
    with pytest.raises(ValueError, match="invalid return_when 'FIRST'"):
        taskq.wait([job], timeout=LONG, return_when="FIRST")  # type: ignore[arg-type]


def test_wait_rejects_a_bad_return_when_up_front(app: App) -> None:
    job = tasks.add.push(1, 2)  # never finishes: no worker
    with pytest.raises(ValueError, match="return_when"):
        taskq.wait([job], timeout=SHORT, return_when="FIRST")  # type: ignore[arg-type]


def test_wait_sees_jobs_finish_while_it_polls(app: App) -> None:
    jobs = tasks.add.push_many([(i, i) for i in range(3)])
    worker = threading.Thread(target=burst, args=(app,))
    worker.start()
    try:
        done, pending = taskq.wait(jobs, timeout=LONG)
    finally:
        worker.join(LONG)
    assert done == set(jobs)
    assert not pending


# -- asyncio forms -----------------------------------------------------------------------
def test_apush_and_agather_while_a_worker_runs(app: App) -> None:
    async def main() -> list[Any]:
        a = await tasks.add.apush(1, 2)
        b = await tasks.add_sync.apush(3, 4)
        assert await a.astatus() == "queued"
        gathering = asyncio.ensure_future(taskq.agather(b, a, timeout=LONG))
        await asyncio.to_thread(burst, app)
        return await gathering

    assert run_async(app, main) == [7, 3]


def test_apush_checks_the_arguments(app: App) -> None:
    async def main() -> None:
        with pytest.raises(TypeError, match="bad arguments for task 'add'"):
            await tasks.add.apush(1)  # type: ignore[call-overload]

    run_async(app, main)


def test_agather_raises_the_first_failure(app: App) -> None:
    ok = tasks.add.push(1, 2)
    bad = tasks.boom.push("async kaput")
    burst(app)

    async def main() -> None:
        with pytest.raises(JobFailed) as info:
            await taskq.agather(ok, bad, timeout=LONG)
        assert_boom_failure(info.value, bad, "async kaput")

    run_async(app, main)


def test_agather_with_return_exceptions(app: App) -> None:
    ok = tasks.add.push(1, 2)
    bad = tasks.boom.push("in the list")
    burst(app)

    async def main() -> list[Any]:
        return await taskq.agather(ok, bad, timeout=LONG, return_exceptions=True)

    results = run_async(app, main)
    assert results[0] == 3
    assert isinstance(results[1], JobFailed)
    assert_boom_failure(results[1], bad, "in the list")


def test_agather_times_out_and_of_nothing_is_empty(app: App) -> None:
    pending = tasks.add.push(1, 2)

    async def main() -> None:
        assert await taskq.agather() == []
        with pytest.raises(ResultTimeout):
            await taskq.agather(pending, timeout=SHORT)

    run_async(app, main)


def test_aas_completed_yields_each_job_once(app: App) -> None:
    jobs = [tasks.add.push(i, 0) for i in range(3)]
    bad = tasks.boom.push("yielded")
    burst(app)

    async def main() -> list[Job[Any]]:
        given: list[Job[Any]] = [*jobs, bad, bad]
        return [job async for job in taskq.aas_completed(given, timeout=LONG)]

    seen = run_async(app, main)
    assert len(seen) == 4
    assert set(seen) == {*jobs, bad}


def test_aas_completed_times_out(app: App) -> None:
    done = tasks.add.push(1, 2)
    burst(app)
    pending = tasks.add.push(3, 4)

    seen: list[Job[Any]] = []

    async def collect() -> None:
        async for job in taskq.aas_completed([done, pending], timeout=SHORT):
            seen.append(job)

    async def main() -> list[Job[Any]]:
        with pytest.raises(ResultTimeout):
            await collect()
        return seen

    assert run_async(app, main) == [done]


def test_async_wait_first_completed_returns_at_once(app: App) -> None:
    first = tasks.add.push(1, 2)
    burst(app)
    unfinished = tasks.add.push(3, 4)

    async def main() -> tuple[set[Job[Any]], set[Job[Any]]]:
        return await taskq.async_wait([unfinished, first], timeout=30, return_when=FIRST_COMPLETED)

    with quick():
        done, pending = run_async(app, main)
    assert (done, pending) == ({first}, {unfinished})


def test_async_wait_first_exception_returns_at_the_first_failure(app: App) -> None:
    bad = tasks.boom.push("async wait")
    burst(app)
    unfinished = tasks.add.push(3, 4)

    async def main() -> tuple[set[Job[Any]], set[Job[Any]]]:
        return await taskq.async_wait([unfinished, bad], timeout=30, return_when=FIRST_EXCEPTION)

    with quick():
        done, pending = run_async(app, main)
    assert (done, pending) == ({bad}, {unfinished})


def test_async_wait_all_completed_and_timeouts(app: App) -> None:
    ok = tasks.add.push(1, 2)
    bad = tasks.boom.push("async wait")
    burst(app)
    unfinished = tasks.add.push(3, 4)

    async def main() -> list[tuple[set[Job[Any]], set[Job[Any]]]]:
        return [
            await taskq.async_wait([ok, bad], timeout=LONG, return_when=ALL_COMPLETED),
            await taskq.async_wait([ok, bad, unfinished], timeout=SHORT),
            await taskq.async_wait([unfinished], timeout=SHORT, return_when=FIRST_COMPLETED),
            await taskq.async_wait([], timeout=SHORT),
        ]

    everything, timed_out, nothing, empty = run_async(app, main)
    assert everything == ({ok, bad}, set())
    assert timed_out == ({ok, bad}, {unfinished})
    assert nothing == (set(), {unfinished})
    assert empty == (set(), set())


def test_async_wait_of_an_unknown_id_raises_job_not_found(app: App) -> None:
    async def main() -> None:
        with pytest.raises(JobNotFound):
            await taskq.async_wait([app.job("ghost")], timeout=LONG)
        with pytest.raises(JobNotFound):
            await app.job("ghost").ainfo()

    run_async(app, main)


def test_aresult(app: App) -> None:
    ok = tasks.add.push(40, 2)
    bad = tasks.boom.push("aresult")
    burst(app)
    pending = tasks.add.push(0, 0)

    async def main() -> None:
        assert await ok.aresult(timeout=LONG) == 42
        assert await ok.astatus() == "done"
        with pytest.raises(JobFailed) as info:
            await bad.aresult(timeout=LONG)
        assert_boom_failure(info.value, bad, "aresult")
        with pytest.raises(ResultTimeout, match=pending.id):
            await pending.aresult(timeout=SHORT)
        with pytest.raises(JobNotFound):
            await app.job("ghost").aresult(timeout=LONG)

    run_async(app, main)


def test_aresult_waits_for_a_worker_running_meanwhile(app: App, r: redis.Redis) -> None:
    async def main() -> int:
        job = await tasks.add.apush(5, 5)
        result = asyncio.ensure_future(job.aresult(timeout=LONG))
        await asyncio.to_thread(burst, app)
        return await result

    assert run_async(app, main) == 10
    assert r.llen("taskq:{default}:queue") == 0
