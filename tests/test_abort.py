"""Aborting jobs: waiting ones are removed, running ones cancelled by their worker."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import pytest
import redis
from click.testing import CliRunner

import taskq
from taskq import App
from taskq.cli import main
from taskq.keys import Keys
from taskq.worker.runner import JobRunner

from . import tasks
from .helpers import as_text, start_worker, wait_event, worker_thread

KEYS = Keys()


def test_queued_and_delayed_jobs_are_removed_and_others_untouched(app: App, r: redis.Redis) -> None:
    before, target, after = (tasks.add.push(i, i) for i in range(3))
    delayed = tasks.add.push(5, 5, delay=3600, key="held")
    assert target.abort() is True
    assert delayed.abort() is True
    assert (target.status(), delayed.status()) == ("aborted", "aborted")
    assert r.llen(KEYS.queue("default")) == 2
    assert r.zcard(KEYS.delayed("default")) == 0
    assert r.get(KEYS.unique("default", "held")) is None, "an aborted job frees its key"
    with pytest.raises(taskq.JobAborted):
        target.result(timeout=1)
    stats = taskq.Worker(app, burst=True, handle_signals=False).run()
    assert stats.done == 2
    assert (before.result(timeout=1), after.result(timeout=1)) == (0, 4)
    assert target.abort() is False, "already finished"


def test_abort_removes_the_job_with_that_id_not_one_naming_it_in_its_arguments(
    app: App, r: redis.Redis
) -> None:
    target = tasks.record.push("target")
    delayed = tasks.record.push("delayed", delay=3600)
    # Newer, so nearer the head of the queue and earlier in the delayed set: each
    # holds the other's id as an argument, in the very text a payload gives its own.
    mentions = tasks.record.push({"id": target.id})
    delayed_mention = tasks.record.push({"id": delayed.id}, delay=1800)
    spaced = tasks.record.push("spaced")  # then rewritten as JSON with spaces
    popped = r.lpop(KEYS.queue("default"))
    assert isinstance(popped, bytes)
    r.lpush(KEYS.queue("default"), json.dumps(json.loads(popped)))
    assert [target.abort(), delayed.abort(), spaced.abort()] == [True, True, True]
    assert [json.loads(q)["id"] for q in r.lrange(KEYS.queue("default"), 0, -1)] == [mentions.id]
    waiting: list[bytes] = r.zrange(KEYS.delayed("default"), 0, -1)  # type: ignore[assignment]
    assert [json.loads(d)["id"] for d in waiting] == [delayed_mention.id]
    assert (mentions.status(), delayed_mention.status()) == ("queued", "scheduled")
    # An id that JSON escapes (a quote, a backslash; non-ASCII, escaped or not).
    for odd, ascii_only in (('a"b\\c', False), ("café", False), ("café", True)):
        r.hset(KEYS.job(odd), mapping={"status": "queued", "queue": "default"})
        pushed = json.dumps({"id": odd, "task": "record", "args": [1]}, ensure_ascii=ascii_only)
        r.lpush(KEYS.queue("default"), pushed)
        assert app.job(odd).abort() is True
        assert r.llen(KEYS.queue("default")) == 1, odd


def test_running_async_job_is_cancelled_within_a_second(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    with start_worker(worker_env, "--concurrency", "2") as worker:
        long = tasks.slow.push(600, name="runaway")
        wait_event(r, "start:runaway")
        assert long.abort() is True
        with pytest.raises(taskq.JobAborted, match="Aborted while running"):
            long.result(timeout=5)
        # The worker goes on: the next job runs, and nothing was lost or duplicated.
        assert tasks.add.push(2, 3).result(timeout=5) == 5
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.log
    assert "0 put back" in worker.log
    assert f"job {long.id} slow aborted after" in worker.log  # not logged as a failure
    assert f"job {long.id} slow failed" not in worker.log
    assert r.hlen(KEYS.aborts("default")) == 0
    assert r.keys("taskq:{default}:active:*") == []


def test_a_job_aborted_as_its_run_asks_for_a_retry_is_not_run_again(
    app: App, r: redis.Redis
) -> None:
    # The request waits in Redis while the retry backs off; an idle worker reads
    # requests every few seconds, but must read it before it starts the retry.
    with worker_thread(app):
        job = tasks.retries_after_gate.push("backoff")
        wait_event(r, "start:backoff")
        assert job.abort() is True
        r.rpush("gate:backoff", "open")  # the run ends at once, asking for a retry
        with pytest.raises(taskq.JobAborted):
            job.result(timeout=10)
    assert r.get("runs:backoff") == b"1"
    assert r.hlen(KEYS.aborts("default")) == 0


def test_running_sync_job_is_recorded_aborted_and_its_result_discarded(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    with start_worker(worker_env, "--grace", "1") as worker:
        job = tasks.long_sync.push(3, name="sync-abort")
        wait_event(r, "start:sync-abort:1")
        job.abort()
        with pytest.raises(taskq.JobAborted):
            job.result(timeout=5)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.log
    assert job.status() == "aborted"


def test_an_aborted_sync_job_ends_when_its_thread_returns(app: App, r: redis.Redis) -> None:
    # A thread cannot be interrupted: the job is recorded aborted, and its unique key
    # freed, once its thread has returned (before: at once, the thread running on).
    with worker_thread(app):
        job = tasks.waits_for_its_gate.options(key="gated").push("gated")
        wait_event(r, "start:gated")
        assert job.abort() is True
        # Still its thread's: through the abort polls of the next 1.5 s, and its key.
        with pytest.raises(taskq.ResultTimeout):
            job.result(timeout=1.5)
        assert job.status() == "active"
        assert tasks.waits_for_its_gate.options(key="gated").push("again").id == job.id
        r.rpush("gate:gated", "open")
        with pytest.raises(taskq.JobAborted, match="Aborted while running"):
            job.result(timeout=10)
        assert r.lrange("events", 0, -1) == [b"end:gated"]  # returned before that


def test_a_sync_job_aborted_while_it_waits_out_its_timeout_ends_aborted(
    app: App, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past its timeout, it waits for its thread to return: an abort then (which
    # says True) makes it end aborted, not failed with the abort request dropped.
    waiting = threading.Event()
    wait_for_thread = JobRunner._wait_for_thread

    async def noted(self: JobRunner, *args: Any) -> Any:
        waiting.set()
        return await wait_for_thread(self, *args)

    monkeypatch.setattr(JobRunner, "_wait_for_thread", noted)
    with worker_thread(app):
        job = tasks.waits_past_its_timeout.push("late")
        wait_event(r, "start:late")
        assert waiting.wait(10)  # its timeout of 0.2 s has passed
        assert job.abort() is True
        with pytest.raises(taskq.ResultTimeout):  # through the abort polls of 1.5 s
            job.result(timeout=1.5)
        r.rpush("gate:late", "open")
        with pytest.raises(taskq.JobAborted, match="Aborted while running"):
            job.result(timeout=10)
    assert r.hlen(KEYS.aborts("default")) == 0


@pytest.mark.parametrize(
    "waits_out_its_timeout", [False, True], ids=["running", "waiting out its timeout"]
)
def test_both_copies_of_an_aborted_sync_job_end_aborted(
    app: App, r: redis.Redis, monkeypatch: pytest.MonkeyPatch, waits_out_its_timeout: bool
) -> None:
    # The same job twice in the queue, both copies running, their threads returning
    # more than an abort poll apart: the first to end clears the abort request, and
    # the second must end aborted all the same (it was left active, or retried).
    task = tasks.waits_past_its_timeout if waits_out_its_timeout else tasks.waits_for_its_gate
    payload, raw = task.payload(("twin",), {})
    waiting = threading.Semaphore(0)  # copies waiting for their thread
    asked = threading.Event()  # the abort reached the runner
    cleared = threading.Event()  # then it was gone, a copy's end having cleared it
    wait_for_thread, abort = JobRunner._wait_for_thread, JobRunner.abort

    async def noted(self: JobRunner, *args: Any) -> Any:
        waiting.release()
        return await wait_for_thread(self, *args)

    def noted_abort(self: JobRunner, job_ids: set[str]) -> None:
        if payload.id in job_ids:
            asked.set()
        elif asked.is_set():
            cleared.set()
        abort(self, job_ids)

    monkeypatch.setattr(JobRunner, "_wait_for_thread", noted)
    monkeypatch.setattr(JobRunner, "abort", noted_abort)
    with worker_thread(app):
        app.broker.push("default", [(payload, raw)] * 2)
        wait_event(r, "start:twin")
        wait_event(r, "start:twin")
        if waits_out_its_timeout:  # both past their timeout, waiting for their thread
            for _ in range(2):
                assert waiting.acquire(timeout=10)
        assert app.job(payload.id).abort() is True
        assert asked.wait(10)
        if not waits_out_its_timeout:  # both cancelled, waiting for their thread
            for _ in range(2):
                assert waiting.acquire(timeout=10)
        r.rpush("gate:twin", "open")  # one copy's thread returns
        wait_event(r, "end:twin")
        assert cleared.wait(10)  # its end cleared the abort request
        r.rpush("gate:twin", "open")  # then the other's
        wait_event(r, "end:twin")
        with pytest.raises(taskq.JobAborted):
            app.job(payload.id).result(timeout=10)
    # Stopped gracefully: nothing was left to put back, and no retry is waiting.
    assert r.llen(KEYS.queue("default")) == 0
    assert r.zcard(KEYS.delayed("default")) == 0
    assert r.keys("taskq:{default}:active:*") == []
    assert app.job(payload.id).status() == "aborted"


def test_abort_from_the_cli(app: App) -> None:
    job = tasks.add.push(1, 1)
    env = {"TASKQ_REDIS_URL": app.settings.redis_url}
    out = CliRunner().invoke(main, ["abort", job.id], env=env)
    assert out.exit_code == 0, out.output
    assert f"job {job.id} aborted" in out.output
    again = CliRunner().invoke(main, ["abort", job.id], env=env)
    assert again.exit_code == 1
    assert "already finished (aborted)" in again.output
    for wait in ([], ["--wait"]):  # ended, with no result: as a failure
        shown = CliRunner().invoke(main, ["result", job.id, *wait], env=env)
        assert (shown.exit_code, shown.output) == (1, f"job {job.id} was aborted\n")


def test_a_job_in_the_queue_twice_runs_twice_and_is_aborted_as_one(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    # The same job may sit twice in a queue (pushed so, or put back while a copy ran
    # on): both copies run at once under one id, and an abort reaches both.
    pair = tasks.slow.payload((0,), {"name": "pair"})[0]
    twin = tasks.slow.payload((600,), {"name": "twin"})[0]
    with start_worker(worker_env) as worker:
        app.broker.push("default", [(pair, pair.encode())] * 2)
        events = [as_text(r.blpop(["events"], timeout=10)[1]) for _ in range(4)]  # type: ignore[index]
        assert sorted(events) == ["end:pair", "end:pair", "start:pair", "start:pair"]
        assert app.job(pair.id).result(timeout=5) == "pair"
        app.broker.push("default", [(twin, twin.encode())] * 2)
        wait_event(r, "start:twin")
        wait_event(r, "start:twin")
        assert app.job(twin.id).abort() is True
        with pytest.raises(taskq.JobAborted, match="Aborted while running"):
            app.job(twin.id).result(timeout=5)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.log
    assert "2 done, 0 failed, 0 retried, 0 dead-lettered, 0 put back" in worker.log
    assert "Traceback" not in worker.log
    assert r.keys("taskq:{default}:active:*") == []
