"""Graceful shutdown of a real worker process: SIGINT, SIGTERM, grace, second signal."""

from __future__ import annotations

import json
import signal

import pytest
import redis

from taskq import App
from taskq.keys import Keys

from . import tasks
from .helpers import start_worker, until_blocked, wait_event

KEYS = Keys()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_running_job_finishes_within_grace(
    app: App, r: redis.Redis, worker_env: dict[str, str], sig: signal.Signals
) -> None:
    with start_worker(worker_env, "--grace", "20") as worker:
        job = tasks.slow.push(0.5, name="a")
        wait_event(r, "start:a")
        worker.signal(sig)
        assert worker.wait() == 0, worker.log
    assert job.result(timeout=1) == "a"
    assert (
        f"stopped ({sig.name}): 1 done, 0 failed, 0 retried, 0 dead-lettered, 0 put back"
        in worker.log
    )
    assert "Traceback" not in worker.log


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("task", ["slow", "slow_sync"])
def test_job_outliving_grace_is_put_back_at_the_front(
    app: App, r: redis.Redis, worker_env: dict[str, str], task: str, loop: str
) -> None:
    args = ("--grace", "0.3", "--concurrency", "1", "--loop", loop)
    with start_worker(worker_env, *args) as worker:
        assert f"concurrency 1, {loop} loop" in worker.log
        long = tasks.app.tasks[task].push(60, name="long")
        wait_event(r, "start:long")
        later = tasks.add.push(1, 2)  # queued behind the running job
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, worker.log
    assert "0 done, 0 failed, 0 retried, 0 dead-lettered, 1 put back" in worker.log
    # The put-back job is at the end workers take from: it runs first, before `later`.
    front, behind = (json.loads(x)["id"] for x in r.lrange(KEYS.queue("default"), -2, -1)[::-1])
    assert (front, behind) == (long.id, later.id)
    assert long.status() == "queued"
    assert r.keys("taskq:{default}:active:*") == []


def test_second_signal_skips_the_grace_period(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    with start_worker(worker_env, "--grace", "600") as worker:
        job = tasks.slow.push(600, name="forever")
        wait_event(r, "start:forever")
        worker.signal(signal.SIGINT)
        worker.wait_for_line(r"stopping \(SIGINT\): waiting up to 600s for 1 running job")
        worker.signal(signal.SIGINT)
        assert worker.wait(timeout=20) == 0, worker.log
    assert "1 put back" in worker.log
    assert job.status() == "queued"
    assert r.llen(KEYS.queue("default")) == 1


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_thread_of_asyncio_to_thread_still_blocked_does_not_hold_the_exit(
    app: App, r: redis.Redis, worker_env: dict[str, str], loop: str
) -> None:
    # The standard default executor's threads are joined at interpreter exit.
    with start_worker(worker_env, "--grace", "0.5", "--loop", loop) as worker:
        job = tasks.blocks_a_to_thread_thread.push("to_thread")
        wait_event(r, "start:to_thread")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, worker.log
    assert "1 put back" in worker.log
    assert job.status() == "queued"


def test_idle_worker_blocks_inside_redis_and_starts_a_pushed_job(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    with start_worker(worker_env) as worker:
        until_blocked(r, 1)  # the master waits in a blocking move, not in a sleep loop
        tasks.slow.push(0, name="prompt")
        wait_event(r, "start:prompt", timeout=5)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0


def test_a_worker_waiting_on_several_queues_stops_on_sigterm_and_leaves_none_taken(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    with start_worker(worker_env, "--queue", "default", "--queue", "low") as worker:
        until_blocked(r, 2)
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=10) == 0, worker.log
    assert "stopped (SIGTERM): 0 done" in worker.log
    assert r.keys("taskq:{*}:active:*") == []
