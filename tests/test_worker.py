"""The worker in-process: the master thread, the loop thread, results, failures, order."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
import uvloop
from redis._parsers import _RESP3Parser
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

import taskq
from taskq import App, JobFailed, Worker, payload
from taskq import broker as broker_module
from taskq.abroker import AsyncBroker
from taskq.broker import PUSH_BATCH, Broker, own_connection, pack, raw_commands, read_replies
from taskq.config import ConfigError
from taskq.keys import Keys
from taskq.payload import Payload
from taskq.worker.batcher import WriteAbandoned, WriteBatcher
from taskq.worker.executor import DaemonExecutor
from taskq.worker.loop_thread import loop_kind, new_event_loop
from taskq.worker.master import AUTO_PREFETCH_MAX, MAX_UNSTORED, WorkerStats
from taskq.worker.runner import JobRunner
from taskq.writes import REGISTER_EVERY, Outcome, Writes, row_alone, stamp, take_batch

from . import tasks
from .helpers import as_text, blocked_moves, until_blocked, wait_event, worker_thread
from .redis_server import RedisServer, running

KEYS = Keys()


def burst(app: App, **options: object) -> WorkerStats:
    return Worker(app, burst=True, handle_signals=False, **options).run()  # type: ignore[arg-type]


def test_async_and_sync_results_are_recorded(app: App, r: redis.Redis) -> None:
    job = tasks.add.push(2, 3)
    sync_job = tasks.add_sync.push(4, 5)
    assert job.status() == "queued"
    stats = burst(app)
    assert (stats.done, stats.failed) == (2, 0)
    assert job.result(timeout=5) == 5
    assert sync_job.result(timeout=5) == 9
    info = job.info()
    assert info.status == "done"
    assert (info.task, info.queue, info.args, info.attempts) == ("add", "default", [2, 3], 1)
    assert info.enqueued_at is not None
    assert info.started_at is not None
    assert info.finished_at is not None
    assert info.enqueued_at <= info.started_at <= info.finished_at
    assert info.worker
    ttl = r.ttl(KEYS.job(job.id))
    assert 0 < ttl <= app.settings.result_ttl
    assert r.llen(KEYS.queue("default")) == 0
    assert r.keys("taskq:{default}:active:*") == []


def test_a_job_pushed_with_a_raw_lpush_gets_its_whole_record(app: App, r: redis.Redis) -> None:
    # No record was stored as it was pushed: the worker stores all of it.
    job = {"id": "raw-1", "task": "add", "args": [2, 3], "enqueued_at": 1700000000.5}
    r.lpush(KEYS.queue("default"), json.dumps(job))
    assert burst(app).done == 1
    info = app.job("raw-1").info()
    assert (info.status, info.task, info.queue) == ("done", "add", "default")
    assert (info.args, info.kwargs, info.attempts) == ([2, 3], {}, 1)
    assert info.enqueued_at == 1700000000.5
    assert info.worker
    assert info.started_at is not None
    assert info.finished_at is not None
    assert app.job("raw-1").result(timeout=1) == 5


def test_master_hands_jobs_to_the_loop_thread_and_sync_jobs_to_threads(app: App) -> None:
    a = tasks.where.push()
    s = tasks.where_sync.push()
    burst(app)
    # Each job is a task of its own, named (not "Task-N", formatted a task).
    assert a.result(timeout=5) == {"thread": "taskq-loop", "loop": "uvloop", "task": "taskq-job"}
    assert s.result(timeout=5)["thread"].startswith("taskq-sync")
    assert threading.current_thread() is threading.main_thread()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_jobs_run_on_the_event_loop_asked_for(app: App, loop: str) -> None:
    # The loop thread, the sync threads, timeouts and outcomes work on either loop.
    jobs = [tasks.where.push(), tasks.add.push(2, 3), tasks.add_sync.push(4, 5)]
    too_slow = tasks.too_slow.push()
    stats = burst(app, loop=loop)
    assert (stats.done, stats.failed) == (3, 1)
    assert taskq.gather(*jobs, timeout=5) == [
        {"thread": "taskq-loop", "loop": loop, "task": "taskq-job"},
        5,
        9,
    ]
    with pytest.raises(JobFailed, match=r"timeout of 0\.2s"):
        too_slow.result(timeout=5)


def test_the_default_loop_is_uvloop_where_installed_else_asyncio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert loop_kind() == loop_kind("auto") == "uvloop"  # a dependency on this platform
    for kind, on_uvloop in (("auto", True), ("uvloop", True), ("asyncio", False)):
        loop = new_event_loop(kind)
        loop.close()
        assert isinstance(loop, uvloop.Loop) is on_uvloop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert loop_kind("auto") == "asyncio"
    with pytest.raises(ConfigError, match=r"uvloop event loop is not installed .* --loop asyncio"):
        Worker(taskq.App("memory://"), loop="uvloop")
    with pytest.raises(ConfigError, match="unknown event loop 'trio'"):
        loop_kind("trio")


def test_a_blocking_sync_job_does_not_stall_async_jobs(app: App) -> None:
    tasks.gate.clear()
    blocked = tasks.blocking_wait_for_gate.push()
    opener = tasks.open_gate.push()
    burst(app, concurrency=2)
    # Had the sync job run on the loop, the async job could never open the gate.
    assert blocked.result(timeout=5) == "released"
    assert opener.result(timeout=5) == "opened"


def test_a_bounded_daemon_executor_queues_work_beyond_its_threads() -> None:
    pool = DaemonExecutor("bounded", max_workers=2)
    gate = threading.Event()
    try:
        held = [pool.submit(gate.wait, 10) for _ in range(2)]
        queued = [pool.submit(threading.current_thread) for _ in range(3)]
        assert not any(f.done() for f in queued)  # both threads are held
        gate.set()
        assert all(f.result(timeout=10) for f in held)
        names = {f.result(timeout=10).name for f in queued}
        assert names <= {"bounded-0", "bounded-1"}
        assert [t.daemon for t in pool._threads] == [True, True]
    finally:
        gate.set()
        pool.shutdown()


def test_concurrency_bound_is_respected(app: App) -> None:
    tasks.concurrency.update(running=0, max=0)
    jobs = tasks.count_concurrency.push_many([(0.05,)] * 12)
    burst(app, concurrency=3)
    assert tasks.concurrency["max"] == 3
    assert all(isinstance(v, int) and v <= 3 for v in taskq.gather(*jobs, timeout=5))


def test_fifo_first_pushed_first_run(app: App) -> None:
    tasks.seen.clear()
    for i in range(20):
        tasks.record.push(i)
    burst(app, concurrency=1)
    assert tasks.seen == list(range(20))


def test_failure_stores_error_and_traceback_and_worker_carries_on(app: App, r: redis.Redis) -> None:
    bad = tasks.boom.push("kaput")
    good = tasks.add.push(1, 1)
    stats = burst(app)
    assert (stats.done, stats.failed) == (1, 1)
    with pytest.raises(JobFailed, match="ValueError: kaput") as caught:
        bad.result(timeout=5)
    assert "raise ValueError(message)" in caught.value.remote_traceback
    assert any("Remote traceback" in note for note in caught.value.__notes__)
    assert good.result(timeout=5) == 2
    entry = json.loads(r.hget(KEYS.dead_data("default"), bad.id) or b"{}")
    assert entry["reason"] == "failed"
    assert entry["error"] == "ValueError: kaput"
    assert json.loads(entry["payload"])["id"] == bad.id
    # The push stored the record; the failure added the run's fields to it.
    info = bad.info()
    assert (info.status, info.task, info.queue) == ("failed", "boom", "default")
    assert info.args == ["kaput"]
    assert (info.attempts, info.worker) == (1, good.info().worker)
    assert info.enqueued_at is not None
    assert info.started_at is not None


def test_unknown_task_fails_naming_it_and_listing_registered_tasks(
    app: App, r: redis.Redis
) -> None:
    r.lpush(KEYS.queue("default"), json.dumps({"id": "job-unknown", "task": "nope", "args": [1]}))
    stats = burst(app)
    assert stats.failed == 1
    record = app.job("job-unknown").info()
    assert record.status == "failed"
    assert record.error is not None
    assert "'nope'" in record.error
    assert "add" in record.error
    assert "boom" in record.error


def test_non_serialisable_return_fails_the_job_only(app: App) -> None:
    bad = tasks.unserialisable.push()
    deep = tasks.nested_too_deeply.push(5000)
    unprintable = tasks.raises_unprintable.push()
    good = tasks.add.push(2, 2)
    stats = burst(app)
    assert (stats.failed, stats.done, stats.put_back) == (3, 1, 0)  # none left to run again
    with pytest.raises(JobFailed, match="not JSON-serialisable"):
        bad.result(timeout=5)
    with pytest.raises(JobFailed, match="not JSON-serialisable: nested too deeply"):
        deep.result(timeout=5)
    with pytest.raises(JobFailed, match=r"Unprintable: \(its message could not be read\)"):
        unprintable.result(timeout=5)
    assert good.result(timeout=5) == 4
    deeply: list[Any] = []
    for _ in range(5000):
        deeply = [deeply]
    with pytest.raises(TypeError, match="must be JSON-serialisable: nested too deeply"):
        tasks.record.push(deeply)


def test_wrong_arguments_in_queue_fail_the_job(app: App, r: redis.Redis) -> None:
    r.lpush(KEYS.queue("default"), json.dumps({"id": "j1", "task": "add", "args": [1]}))
    burst(app)
    with pytest.raises(JobFailed, match="bad arguments for task 'add'"):
        app.job("j1").result(timeout=5)


def test_raw_lpush_without_id_runs_and_gets_an_id(app: App, r: redis.Redis) -> None:
    r.lpush(KEYS.queue("default"), json.dumps({"task": "add", "args": [20, 22]}))
    stats = burst(app)
    assert stats.done == 1
    ids = [as_text(k).rsplit(":", 1)[1] for k in r.keys("taskq:job:*")]
    assert len(ids) == 1
    assert app.job(ids[0]).result(timeout=1) == 42


def test_giving_an_id_or_giving_back_leaves_the_active_lists_head_alone(
    redis_url: str, r: redis.Redis
) -> None:
    # Not at the head, where only fetches push: a fetch sent again after a lost reply
    # takes its jobs from there (see FETCH_MANY).
    broker = Broker(redis.Redis.from_url(redis_url))
    active = KEYS.active("default", "w1")
    try:
        r.rpush(active, b"fetched last", b"old", b"fetched first")
        broker.apply(broker.writes.give_id("default", "w1", b"old", b"old, with an id"))
        assert r.lrange(active, 0, -1) == [b"fetched last", b"old, with an id", b"fetched first"]
        # Gone meanwhile (recovered by another worker): nothing is added.
        broker.apply(broker.writes.give_id("default", "w1", b"gone", b"gone, with an id"))
        assert r.llen(active) == 3
        # Of identical jobs, the oldest is the worker's own: the newest may be a fetch's
        # whose reply was lost. Giving an id and giving back both take from the tail.
        r.delete(active)
        r.rpush(active, b"same", b"other", b"same")
        broker.apply(broker.writes.give_id("default", "w1", b"same", b"same, with an id"))
        assert r.lrange(active, 0, -1) == [b"same", b"other", b"same, with an id"]
        r.rpush(active, b"other")
        broker.apply(broker.writes.give_back("default", "w1", [b"other"]))
        assert r.lrange(active, 0, -1) == [b"same", b"other", b"same, with an id"]
    finally:
        broker.close()


def test_garbage_in_the_queue_is_dead_lettered_and_nothing_else_is_lost(
    app: App, r: redis.Redis
) -> None:
    garbage = [b"\xff\xfe not utf-8", b"not json", b"[1,2]", b'{"args": []}', b"3"]
    r.lpush(KEYS.queue("default"), *garbage)
    good = tasks.add.push(1, 2)
    stats = burst(app)
    assert (stats.dead, stats.done) == (len(garbage), 1)
    assert good.result(timeout=5) == 3
    entries = [json.loads(v) for v in r.hvals(KEYS.dead_data("default"))]
    reasons = sorted(e["reason"] for e in entries)
    assert any("not UTF-8" in x for x in reasons)
    assert any("not JSON" in x for x in reasons)
    assert any("JSON object" in x for x in reasons)
    assert any("'task'" in x for x in reasons)
    assert any(e.get("payload_base64") for e in entries)
    assert r.keys("taskq:{default}:active:*") == []


def test_lone_surrogates_in_jobs_results_and_errors_fail_nothing_else(
    app: App, r: redis.Redis
) -> None:
    # JSON may escape a lone surrogate (\udXXX), which UTF-8 cannot carry: it must
    # round-trip in arguments and results, be escaped in errors, and a payload with
    # one in its id, task or key is garbage, not a write that fails the whole batch.
    pushed = tasks.record.push("lone \udc80")
    raised = tasks.boom.push("lone \ud800")
    garbage = [
        '{"id":"\\ud800","task":"add","args":[1,1]}',
        '{"task":"a\\udfff","args":[]}',
        '{"task":"add","args":[1,1],"key":"\\ud800"}',
    ]
    r.lpush(KEYS.queue("default"), *garbage)
    r.lpush(KEYS.queue("default"), '{"id":"by-hand","task":"record","args":["lone \\udbff"]}')
    r.lpush(KEYS.queue("default"), '{"id":"kw","task":"add","args":[1,2],"kwargs":{"\\udbff":2}}')
    good = tasks.add.push(1, 2)
    stats = burst(app)
    assert (stats.done, stats.failed, stats.dead) == (3, 2, 3)
    assert pushed.result(timeout=1) == "lone \udc80"
    assert app.job("by-hand").result(timeout=1) == "lone \udbff"
    with pytest.raises(JobFailed, match=r"ValueError: lone \\ud800"):
        raised.result(timeout=1)
    with pytest.raises(JobFailed, match=r"bad arguments for task 'add'.*\\udbff"):
        app.job("kw").result(timeout=1)
    assert good.result(timeout=1) == 3
    reasons = sorted(json.loads(v)["reason"] for v in r.hvals(KEYS.dead_data("default")))
    assert len([x for x in reasons if "bad payload" in x]) == 3, reasons
    assert r.keys("taskq:{default}:active:*") == []


def test_timeout_fails_an_async_job(app: App) -> None:
    job = tasks.too_slow.push()
    burst(app)
    with pytest.raises(JobFailed, match=r"timeout of 0\.2s"):
        job.result(timeout=5)


def test_push_refuses_bad_values_before_anything_reaches_redis(app: App, r: redis.Redis) -> None:
    with pytest.raises(TypeError, match="JSON-serialisable"):
        tasks.record.push(object())
    with pytest.raises(TypeError, match="bad arguments for task 'add'"):
        tasks.add.push(1)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="limit"):
        tasks.record.push("x" * (2 << 20))
    assert r.dbsize() == 0


def test_a_bulk_push_over_several_batches_keeps_order_and_reports_errors(
    app: App, r: redis.Redis
) -> None:
    n = PUSH_BATCH * 2 + 7  # streamed: three batches on one connection
    jobs = tasks.record.push_many([(i,) for i in range(n)])
    queue = KEYS.queue("default")
    assert r.llen(queue) == n
    first_out = json.loads(r.lindex(queue, -1) or "")  # LPUSH: the oldest is at the tail
    assert (first_out["id"], first_out["args"]) == (jobs[0].id, [0])
    assert json.loads(r.lindex(queue, 0) or "")["args"] == [n - 1]
    assert r.exists(*(KEYS.job(j.id) for j in jobs[:: PUSH_BATCH // 2])) == 5
    r.delete(queue)
    r.set(queue, "not a list")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        tasks.record.push_many([(i,) for i in range(n)])
    r.delete(queue)
    tasks.record.push_many([(i,) for i in range(n)])  # the connection is still good
    assert r.llen(queue) == n


def test_a_push_refused_for_its_queues_type_leaves_no_record(app: App, r: redis.Redis) -> None:
    # A transaction runs on past a refused command: the records went in, no job did.
    def records() -> int:
        return len(r.keys(KEYS.job("*")))

    def apush(delay: float | None) -> None:
        async def push() -> None:
            try:
                await tasks.add.options(delay=delay).apush(1, 2)
            finally:
                await app.aclose()

        asyncio.run(push())

    queue, delayed = KEYS.queue("default"), KEYS.delayed("default")
    kept = tasks.add.push(1, 1)  # its record stays
    r.set(queue, "not a list")  # (SET replaces the list holding it)
    r.set(delayed, "not a sorted set")
    for push in (
        lambda: tasks.add.push(1, 2),
        lambda: tasks.add.push_many([(i, i) for i in range(PUSH_BATCH + 3)]),
        lambda: tasks.add.push(1, 2, delay=60),
        lambda: tasks.add.options(key="u").push(1, 2),
        lambda: tasks.add.options(key="u", delay=60).push(1, 2),
        lambda: apush(None),
    ):
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            push()
        assert records() == 1
        assert r.get(KEYS.unique("default", "u")) is None  # no key held for no job
    r.delete(queue)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        apush(60)
    assert records() == 1
    job = tasks.add.push(1, 2)
    assert (kept.status(), job.status()) == ("queued", "queued")
    assert (records(), r.llen(queue)) == (2, 1)


def test_a_big_fetch_moves_the_oldest_jobs_in_order(redis_url: str, r: redis.Redis) -> None:
    # One range read, trim and push (in slices: Lua's unpack has a limit) leave the
    # lists as one LMOVE a job did: the oldest first out, the newest moved at the head.
    broker = Broker(redis.Redis.from_url(redis_url))
    queue, active = KEYS.queue("default"), KEYS.active("default", "w1")
    try:
        r.lpush(queue, *(b"%d" % i for i in range(2500)))  # 0 is the oldest
        assert broker.fetch("default", "w1", 0) == []
        got = broker.fetch("default", "w1", 2100)
        assert got == [b"%d" % i for i in range(2100)]
        assert r.lrange(active, 0, -1) == got[::-1]
        assert r.lrange(queue, 0, -1) == [b"%d" % i for i in range(2499, 2099, -1)]
        assert broker.fetch("default", "w1", 1000) == [b"%d" % i for i in range(2100, 2500)]
        assert r.exists(queue) == 0
        assert r.lrange(active, 0, 0) == [b"2499"]
    finally:
        broker.close()


def test_a_fetch_straight_on_a_connection_reports_errors_and_reconnects(
    redis_url: str, r: redis.Redis
) -> None:
    broker = Broker(redis.Redis.from_url(redis_url))
    queue, active = KEYS.queue("default"), KEYS.active("default", "w1")
    try:
        r.lpush(queue, b"a", b"b", b"c")
        assert broker.fetch("default", "w1", 2) == [b"a", b"b"]  # the oldest first
        sock = broker._own._sock
        r.set(queue, "not a list")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            broker.fetch("default", "w1", 2)
        r.delete(queue)
        r.lpush(queue, b"d")
        assert broker.fetch("default", "w1", 5) == [b"d"]
        assert broker._own._sock is sock  # the refusal was read: the connection kept
        r.client_kill_filter(_type="normal", skipme=True)  # Redis drops it while idle
        r.lpush(queue, b"e")
        assert broker.fetch("default", "w1", 5) == [b"e"]
        # Lost as the command goes out (redis-py's default: no retry): the error goes
        # to the master, which pauses and fetches again, on a new connection.
        conn = broker._own
        send = conn.send_packed_command
        lost: list[Any] = []

        def lost_once(*args: Any, **kwargs: Any) -> None:
            if not lost:
                lost.append(conn._sock)
                raise redis.ConnectionError("lost")
            send(*args, **kwargs)

        conn.send_packed_command = lost_once
        r.lpush(queue, b"f")
        with pytest.raises(redis.ConnectionError):
            broker.fetch("default", "w1", 5)
        assert conn._sock is None  # dropped: a reply may have been left unread
        assert broker.fetch("default", "w1", 5) == [b"f"]
        assert r.lrange(active, 0, -1) == [b"f", b"e", b"d", b"b", b"a"]
    finally:
        broker.close()


def test_job_tasks_go_through_a_task_factory_that_a_job_sets(redis_url: str) -> None:
    # Job tasks are made directly (cheaper than loop.create_task), unless code on the
    # loop set a task factory (a tracing library, say): then through it.
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro.__qualname__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    traced = App(redis_url)

    @traced.task(name="tests.set_factory")
    async def set_factory() -> None:
        asyncio.get_running_loop().set_task_factory(factory)

    @traced.task(name="tests.nothing")
    async def nothing() -> None:
        pass

    try:
        nothing.push()
        set_factory.push()
        nothing.push()
        nothing.push()
        stats = burst(traced, concurrency=1)  # one at a time, in the order pushed
    finally:
        traced.close()
    assert stats.done == 4
    assert made.count("JobRunner._run_reporting") == 2


def test_burst_worker_returns_when_queue_is_empty(app: App) -> None:
    stats = burst(app)
    assert (stats.done, stats.failed, stats.put_back) == (0, 0, 0)


def test_jobs_pushed_by_running_jobs_are_run_in_the_same_burst(app: App) -> None:
    first = tasks.add.push(1, 1)
    burst(app)
    assert first.result(timeout=1) == 2


def test_automatic_prefetch_takes_ahead_only_jobs_that_start_soon(app: App) -> None:
    worker = Worker(app, concurrency=10, handle_signals=False)
    assert worker.capacity == 10  # nothing ended yet: nothing taken ahead

    def runs_end(every: float, n: int, start: float) -> float:
        for i in range(1, n + 1):
            worker._adapt_prefetch(start + i * every)
        return start + n * every

    t = runs_end(0.0001, 150, 0.0)  # 10,000 runs end a second, for 15 ms
    assert worker.capacity == 10  # the first window (20 ms) is still open
    t = runs_end(0.0001, 60, t)
    assert 10 + 490 < worker.capacity < 10 + 510  # about 500 start within 50 ms
    first = worker.capacity
    t = runs_end(0.00005, 1000, t)  # 50 ms at 20,000 a second: later windows are 100 ms
    assert worker.capacity == first
    t = runs_end(0.0001, 2000, t)
    assert worker.capacity == 10 + 500
    t = runs_end(0.00001, 20_000, t)  # at 100,000 a second: capped
    assert worker.capacity == 10 + AUTO_PREFETCH_MAX
    runs_end(1.0, 2, t)  # long jobs: keep them for idle workers
    assert worker.capacity == 10
    # A burst of quick jobs, then slow ones: the first window ends with the first slow
    # run, at the slow rate; nothing was taken ahead meanwhile.
    burst_then_slow = Worker(app, concurrency=10, handle_signals=False)
    for when in (0.0001, 0.0002, 0.0003, 0.0004, 0.0005):
        burst_then_slow._adapt_prefetch(when, runs=4)
        assert burst_then_slow.capacity == 10
    burst_then_slow._adapt_prefetch(10.0)
    assert burst_then_slow.capacity == 10
    fixed = Worker(app, concurrency=10, prefetch=3, handle_signals=False)
    fixed._running, fixed._ran, fixed._runs = 50, 50, 50  # as the loop tallies them
    fixed._tally()
    assert (fixed.capacity, fixed._running) == (13, 0)


def test_jobs_taken_ahead_go_back_to_the_queue_once_runs_turn_slow(
    app: App, r: redis.Redis
) -> None:
    # Taken ahead while runs were quick; the prefetch has since dropped to nothing.
    raws = [tasks.add.payload((i, i), {})[1] for i in range(10)]
    active, queue = KEYS.active("default", "w1"), KEYS.queue("default")
    r.lpush(active, *raws)  # as the master's fetch leaves them, oldest at the tail
    ran: list[float | None] = []
    done: list[str] = []

    async def main() -> None:
        over = asyncio.Event()

        def on_done(status: str, count: int) -> None:
            done.extend([status] * count)
            if len(done) == len(raws):
                over.set()

        runner = JobRunner(
            app, app.abroker(), "w1", DaemonExecutor(), 1, ran.append, on_done, ahead=lambda: 0
        )
        try:
            await runner.run_batch("default", raws)
            await asyncio.wait_for(over.wait(), 10)
        finally:
            await runner.close()

    asyncio.run(main())
    # Concurrency 1: as the first run ended, the second job started and the eight
    # still waiting went back to the front of the queue, in their order.
    assert sorted(done) == ["done"] * 2 + ["given back"] * 8
    assert ran.count(None) == 8
    assert r.lrange(queue, 0, -1) == raws[2:][::-1]  # the oldest is taken first
    assert r.llen(active) == 0


def test_jobs_whose_outcome_is_not_stored_yet_hold_no_slot_but_are_bounded(app: App) -> None:
    worker = Worker(app, concurrency=4, prefetch=0, handle_signals=False)
    worker._in_flight, worker._running = 10, 1  # 9 ran, their outcomes on the way
    assert worker._free() == 3
    worker._in_flight = MAX_UNSTORED + 1
    assert worker._free() == 0


def test_free_slots_never_go_negative_when_the_prefetch_shrinks(app: App) -> None:
    worker = Worker(app, concurrency=4, handle_signals=False)
    worker._in_flight = worker._running = 7  # taken while the prefetch was larger
    assert worker._free() == 0


def test_burst_waits_for_an_immediate_retry_to_be_stored_and_run(app: App) -> None:
    job = tasks.asks_to_retry.push("now", 0)
    stats = burst(app)
    assert job.result(timeout=1) == 2
    assert (stats.retried, stats.done) == (1, 1)


def test_a_retry_is_encoded_once_and_stored_as_encoded(
    app: App, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runner encodes the retry's job to check its size; the write stores those
    # very bytes (it encoded them a second time before).
    job = tasks.asks_to_retry.push("now", 0)
    encoded: list[bytes] = []
    encode = Payload.encode

    def counted(self: Payload) -> bytes:
        raw = encode(self)
        if self.id == job.id:
            encoded.append(raw)
        return raw

    monkeypatch.setattr(Payload, "encode", counted)
    stats = burst(app)
    assert (stats.retried, stats.done) == (1, 1)
    assert len(encoded) == 1  # the retry's job, attempts 1
    assert json.loads(encoded[0])["attempts"] == 1
    assert job.result(timeout=1) == 2


def test_a_job_raising_cancelled_error_itself_fails_and_frees_its_slot(
    app: App, r: redis.Redis
) -> None:
    job = tasks.raises_cancelled.push()
    after = tasks.add.push(1, 2)
    stats = burst(app, concurrency=1)
    with pytest.raises(JobFailed, match="CancelledError"):
        job.result(timeout=1)
    assert after.result(timeout=1) == 3
    assert (stats.failed, stats.done) == (1, 1)
    assert r.keys("taskq:{default}:active:*") == []


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_system_exit_in_a_jobs_own_asyncio_task_fails_only_that_job(
    app: App, r: redis.Redis, loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    # asyncio raises a task's SystemExit or KeyboardInterrupt out of run_forever too:
    # the loop thread must go on running jobs, and the burst end.
    gathered = tasks.exits_in_a_sub_task.push("gather")
    waited = tasks.exits_in_a_sub_task.push("wait_for")
    unawaited = tasks.exits_in_a_sub_task.push("unawaited")
    after = [tasks.add.push(1, n) for n in range(3)]
    ran: list[WorkerStats] = []
    thread = threading.Thread(
        target=lambda: ran.append(burst(app, loop=loop, concurrency=2)), daemon=True
    )
    thread.start()
    thread.join(30)
    assert ran, "the burst did not end: its event loop thread died"
    [stats] = ran
    assert (stats.done, stats.failed) == (4, 2)
    with pytest.raises(JobFailed, match="SystemExit: 3"):
        gathered.result(timeout=1)
    with pytest.raises(JobFailed, match="KeyboardInterrupt"):
        waited.result(timeout=1)
    assert unawaited.result(timeout=1) == "went on"
    assert [job.result(timeout=1) for job in after] == [1, 2, 3]
    assert r.keys("taskq:{default}:active:*") == []
    assert "the event loop runs on" in caplog.text  # it did escape run_forever


def test_a_job_starts_with_no_context_variable_set_by_an_earlier_job(app: App) -> None:
    # One slot, jobs taken together: each starts as the one before it ends, in the
    # step where that one ends.
    jobs = [tasks.sets_a_context_variable.push(value) for value in "abc"]
    burst(app, concurrency=1, prefetch=10)
    assert [job.result(timeout=1) for job in jobs] == [None, None, None]


def test_a_job_cancelling_its_own_task_frees_its_slot_and_is_put_back(
    app: App, r: redis.Redis
) -> None:
    tasks.cancels_its_own_task.push()
    after = tasks.add.push(1, 2)
    stats = burst(app, concurrency=1)
    assert after.result(timeout=1) == 3  # its slot went to the next job
    assert (stats.done, stats.put_back) == (1, 1)
    assert r.llen(KEYS.queue("default")) == 1  # back in its queue, as after a shutdown


def test_a_job_task_cancelled_before_it_ran_by_another_job_frees_its_slot(
    app: App, r: redis.Redis
) -> None:
    tasks.cancels_its_siblings.push()
    tasks.add.push(1, 2)  # taken in the same fetch: its task is cancelled before it runs
    stats = burst(app, concurrency=2)  # returns: the slot is found free (REAP_EVERY)
    assert (stats.done, stats.put_back) == (1, 1)
    assert r.llen(KEYS.queue("default")) == 1  # back in its queue


def test_jobs_cancelled_before_they_ran_are_reported_cancelled(app: App) -> None:
    raws = [tasks.add.payload((i, i), {})[1] for i in range(3)]
    ran: list[float | None] = []
    done: list[str] = []

    async def main() -> None:
        def on_done(status: str, count: int) -> None:
            done.extend([status] * count)

        runner = JobRunner(app, app.abroker(), "w1", DaemonExecutor(), 3, ran.append, on_done)
        try:
            await runner.run_batch("default", raws)  # their tasks exist, none has run
            await runner.cancel_running(5)
        finally:
            await runner.close()

    asyncio.run(main())
    assert (ran, done) == ([None] * 3, ["cancelled"] * 3)


def test_writes_not_stored_when_the_worker_stops_are_reported(app: App) -> None:
    class Unreachable:
        def __init__(self) -> None:
            self.sending = asyncio.Event()

        async def apply(self, writes: Writes) -> None:
            self.sending.set()
            await asyncio.Event().wait()  # Redis never answers

    async def stop_with_writes_pending() -> list[BaseException | None]:
        redis_down = Unreachable()
        batcher = WriteBatcher(cast(AsyncBroker, redis_down))
        told: list[BaseException | None] = []
        batcher.submit(Writes(), told.append)
        await redis_down.sending.wait()  # the first batch is in flight
        batcher.submit(Writes(), told.append)  # still waiting its turn
        assert not await batcher.drain(0.05)
        return told

    told = asyncio.run(stop_with_writes_pending())
    assert [type(e) for e in told] == [WriteAbandoned, WriteAbandoned]


def test_jobs_done_without_a_callback_are_counted_by_batch(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    # Most jobs done need nothing once stored but to be counted: one call a batch
    # says how many, "done" if stored, "error" if refused (they run again) or left
    # unstored as the worker stops.
    payload, raw = tasks.add.payload((1, 2), {})
    row = app.broker.writes.done("default", "w1", raw, payload, "3", None, 1.0)

    class Flaky:
        def __init__(self) -> None:
            self.calls = 0

        async def apply(self, writes: Writes) -> None:
            self.calls += 1
            if self.calls == 1:
                raise redis.ResponseError("OOM command not allowed")
            if self.calls == 3:
                await asyncio.Event().wait()  # Redis never answers

    async def main() -> tuple[list[tuple[str, int]], list[BaseException | None]]:
        counts: list[tuple[str, int]] = []
        told: list[BaseException | None] = []
        batcher = WriteBatcher(
            cast(AsyncBroker, Flaky()), on_done=lambda s, n: counts.append((s, n))
        )
        for writes in (row, row, Writes(), row):
            if isinstance(writes, Writes):
                batcher.submit(writes, told.append)
            else:
                batcher.submit_done(writes)
        assert await batcher.drain(5)  # refused, as one batch
        batcher.submit_done(row)
        batcher.submit_done(row)
        assert await batcher.drain(5)  # stored
        batcher.submit_done(row)
        assert not await batcher.drain(0.05)  # never answered
        return counts, told

    counts, told = asyncio.run(main())
    assert counts == [("error", 3), ("done", 2), ("error", 1)]
    assert [type(e) for e in told] == [redis.ResponseError]
    assert "could not store the outcome of 3 jobs, they run again" in caplog.text
    assert "of 1 jobs" not in caplog.text  # a stop's leftovers are not an error


def test_a_batch_ends_at_the_first_write_with_scripts_rows_included(app: App) -> None:
    builder = app.broker.writes
    payload, raw = tasks.add.payload((1, 2), {})
    keyed, keyed_raw = tasks.add.payload((3, 4), {})
    done = builder.done("default", "w1", raw, payload, "3", None, 1.0)
    retry = builder.finish("default", "w1", raw, payload, Outcome("scheduled", due=2.0))
    start = builder.start("default", "w1", payload, 1.0)
    assert take_batch([done, start, retry, done], 10) == 3
    assert take_batch([done, start, done], 2) == 2
    assert take_batch([done, done], 10) == 2
    # A row alone does not cover what a unique key or an earlier attempt also needs.
    assert row_alone(payload)
    keyed = dataclasses.replace(keyed, key="k")
    assert not row_alone(keyed)
    assert builder.finish("default", "w1", keyed_raw, keyed, Outcome("done", "7")).scripts
    again = payload.next_attempt()
    assert not row_alone(again)
    assert builder.finish("default", "w1", raw, again, Outcome("done", "3")).queue  # HDEL stalls


def test_a_jobs_writes_stay_in_order_across_batches(app: App, r: redis.Redis) -> None:
    # A batch ends at the first write with scripts (a retry): a job done as a bare row
    # after it goes in the next batch, after its own start, never ahead of it.
    (x, raw_x), (y, raw_y) = tasks.add.payload((1, 2), {}), tasks.add.payload((3, 4), {})
    r.lpush(KEYS.active("default", "w1"), raw_x, raw_y)
    builder = app.broker.writes
    now = time.time()
    retry = builder.finish("default", "w1", raw_y, y, Outcome("scheduled", due=now + 60))
    start = builder.start("default", "w1", x, now)
    done = builder.done("default", "w1", raw_x, x, "3", None, now)
    assert retry.scripts

    applied: list[Writes] = []

    async def submit() -> list[BaseException | None]:
        broker = app.abroker()
        real_apply = broker.apply

        async def apply(writes: Writes) -> None:
            applied.append(writes)
            await real_apply(writes)

        broker.apply = apply  # type: ignore[method-assign,assignment]
        batcher = WriteBatcher(broker)
        told: list[BaseException | None] = []
        for writes in (retry, start, done):
            batcher.submit(writes, told.append)
        assert await batcher.drain(5)
        await broker.aclose()
        return told

    assert asyncio.run(submit()) == [None] * 3
    # Two batches: the retry alone, then X's start and X's row, in that order.
    assert [(len(w.scripts), len(w.records), len(w.done)) for w in applied] == [
        (1, 1, 0),
        (0, 1, 1),
    ]
    assert r.hget(KEYS.job(x.id), "status") == b"done"
    assert r.hget(KEYS.stats("default"), "done") == b"1"
    assert r.llen(KEYS.active("default", "w1")) == 0
    assert r.zcard(KEYS.delayed("default")) == 1


def test_a_streamed_bulk_push_sends_no_health_check_between_batches(
    redis_url: str, r: redis.Redis
) -> None:
    # A health check before every command but those of the stream, whose PING would
    # read a batch's reply instead of its PONG.
    broker = Broker(redis.Redis.from_url(redis_url))
    jobs = [tasks.add.payload((i, i), {}) for i in range(PUSH_BATCH * 2 + 1)]
    broker.push("default", jobs[:1])  # connected first: redis-py 8.2's own handshake
    broker._own.health_check_interval = 1e-9  # fails a check due before it ends
    broker.push("default", jobs[1:])
    assert r.llen(KEYS.queue("default")) == len(jobs)
    broker.client.close()


def test_a_streamed_bulk_push_reads_replies_as_it_goes(
    app: App, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read only at the end, the replies of a push of millions of jobs (a QUEUED a
    # command, then EXEC's array: ~26 kB for PUSH_BATCH jobs) would pile up in Redis.
    read = 0
    real_read = broker_module.read_replies

    def counted(conn: Any, count: int) -> list[Any]:
        nonlocal read
        read += count
        return real_read(conn, count)

    monkeypatch.setattr(broker_module, "read_replies", counted)
    replies: list[int] = []  # of each batch
    unread: list[int] = []  # when each batch is built

    def batches() -> Iterator[Writes]:
        for k in range(5):
            jobs = [tasks.add.payload((k, i), {}) for i in range(100)]
            w = app.broker.writes.push("default", jobs)
            unread.append(sum(replies) - read)
            replies.append(len(raw_commands(w)))
            yield w

    app.broker._apply_streamed(batches())
    assert r.llen(KEYS.queue("default")) == 500
    # Sent, read the batch before, built the next: one batch's replies unread at most.
    assert unread == [0, *replies[:-1]]


def test_writes_redis_refuses_change_nothing(app: App, r: redis.Redis) -> None:
    # Out of memory, Redis refuses HSET but would run LREM: an outcome must not
    # take the job out of its active list while its record is refused.
    payload, raw = tasks.add.payload((1, 2), {})
    active = KEYS.active("default", "w1")
    r.lpush(active, raw)
    writes = app.broker.writes
    started = time.time()
    done = writes.finish("default", "w1", raw, payload, Outcome("done", result="3"), started)
    retry = Outcome("scheduled", error="E", due=started + 60)  # with a script of its own
    retried = writes.finish("default", "w1", raw, payload, retry, started)

    async def apply_async() -> None:
        try:
            await app.abroker().apply(done)
        finally:
            await app.aclose()

    r.config_set("maxmemory", 1)
    try:
        appliers: list[Callable[[], None]] = [
            lambda: app.broker.apply(done),
            lambda: app.broker.apply(retried),
            lambda: asyncio.run(apply_async()),
        ]
        for apply in appliers:
            with pytest.raises(redis.ResponseError, match="maxmemory"):
                apply()
        # Nor may a push leave a record without its job, or the reverse: the first
        # (it names the queue too), nor the next (the usual push).
        for _ in range(2):
            with pytest.raises(redis.ResponseError, match="maxmemory"):
                tasks.add.push(5, 6)
    finally:
        r.config_set("maxmemory", 0)
    assert r.lrange(active, 0, -1) == [raw]
    assert r.exists(KEYS.job(payload.id), KEYS.delayed("default")) == 0
    assert r.keys(KEYS.job("*")) == []
    assert r.llen(KEYS.queue("default")) == 0
    app.broker.apply(done)  # and once Redis has room, it goes through
    assert r.llen(active) == 0
    assert r.hget(KEYS.job(payload.id), "status") == b"done"


def test_a_done_rows_times_are_stored_in_whole_microseconds(app: App, r: redis.Redis) -> None:
    now = time.time()
    # Half a microsecond, and the float's own rounding in the text read back.
    assert abs(float(stamp(now)) - now) <= 0.5e-6 + math.ulp(now)
    assert stamp(1700000000.25) == "1700000000.250000"
    assert stamp(1.0000004) == "1.000000"  # rounded to the nearest
    assert stamp(0.000042) == "0.000042"

    # Stored as they are, on one Redis (APPLY) and on others (commands).
    class Piped(redis.Redis):  # not exactly redis.Redis: the broker sends pipelines
        pass

    piped = Broker(Piped.from_url(app.settings.redis_url))
    for broker in (app.broker, piped):
        for started_at, finished_at in ((now, now + 0.25), (0.5, 1.000042), (1e-6, 4.2e-5)):
            payload, raw = tasks.add.payload((1, 2), {})
            row, _ = broker.writes.done("default", "w1", raw, payload, "3", started_at, finished_at)
            broker.apply(Writes(done=[row]))
            stored = r.hmget(KEYS.job(payload.id), "started_at", "finished_at")
            assert stored == [stamp(started_at).encode(), stamp(finished_at).encode()]
    piped.close()


@pytest.mark.parametrize("recorded", [True, False], ids=["taskq's push", "raw LPUSH"])
@pytest.mark.parametrize("start_stored", [False, True], ids=["quick", "start stored"])
def test_a_done_job_is_stored_alike_as_a_compact_row_or_as_commands(
    app: App, r: redis.Redis, start_stored: bool, recorded: bool
) -> None:
    # On one Redis a job done goes to APPLY as its values alone; a Redis Cluster or
    # memory:// gets the same write as commands. Both must leave the same record: for
    # a quick job, its start's fields too; all of them if it was pushed without its
    # record (a raw LPUSH), else only those a run adds (the push stored the rest).
    class Piped(redis.Redis):  # not exactly redis.Redis: the broker sends pipelines
        pass

    piped = Broker(Piped.from_url(app.settings.redis_url))
    writes = app.broker.writes
    active, stalls = KEYS.active("default", "w1"), KEYS.stalls("default")
    records = []
    for broker in (app.broker, piped):
        payload, raw = tasks.add.payload((1, 2), {})
        assert payload.recorded
        # Run before: it may have stalled.
        payload = dataclasses.replace(payload.next_attempt(), recorded=recorded)
        other, _ = tasks.add.payload((3, 4), {})
        r.lpush(active, raw)
        r.hset(stalls, payload.id, 1)
        started = None if start_stored else 1000.00025  # (zero-padded: .000250)
        done = writes.finish("default", "w1", raw, payload, Outcome("done", "3"), started)
        assert len(done.done) == 1  # the compact form
        assert not done.records
        # Merged with other writes, as the worker's batcher sends them.
        broker.apply(writes.start("default", "w1", other, 999.0).merge(done))
        assert r.hget(KEYS.job(other.id), "status") == b"active"
        assert r.llen(active) == 0
        assert not r.hexists(stalls, payload.id)
        assert 0 < r.ttl(KEYS.job(payload.id)) <= app.settings.result_ttl
        record = r.hgetall(KEYS.job(payload.id))
        finished_at = record.pop(b"finished_at")
        assert isinstance(finished_at, bytes)
        assert re.fullmatch(rb"\d+\.\d{6}", finished_at)  # whole microseconds
        assert float(finished_at) == pytest.approx(time.time(), abs=60)
        enqueued_at = record.pop(b"enqueued_at", None)  # only with a whole start
        whole_start = not start_stored and not recorded
        assert enqueued_at == (repr(payload.enqueued_at).encode() if whole_start else None)
        records.append(record)
    piped.close()
    assert records[0] == records[1]
    expected = {b"status": b"done", b"result": b"3"}
    if not start_stored:
        expected |= {b"attempts": b"2", b"worker": b"w1", b"started_at": b"1000.000250"}
    if not start_stored and not recorded:
        expected |= {b"task": b"add", b"queue": b"default", b"args": b"[1,2]", b"kwargs": b"{}"}
    assert records[0] == expected


def test_jobs_done_leave_their_active_list_by_one_trim_or_one_by_one(
    app: App, r: redis.Redis
) -> None:
    # Jobs done that are the last of their active list go in one LTRIM; otherwise
    # each goes as an LREM from the tail. Both leave the same list.
    writes, active = app.broker.writes, KEYS.active("default", "w1")
    jobs = [tasks.add.payload((i, i), {}) for i in range(6)]
    raw = [raw for _, raw in jobs]

    def done(*picked: int) -> Writes:
        w = Writes()
        for i in picked:
            job, _ = jobs[i]
            w.merge(writes.finish("default", "w1", raw[i], job, Outcome("done", "1"), 1.0))
        return w

    cases = [
        # The list (head first), the jobs done (in the order they ended), what is
        # left, and whether that took one trim.
        ([0, 1, 2, 3, 4], [4, 2, 3], [0, 1], True),  # the last three
        ([0, 1, 2, 3, 4], [3, 4, 1], [0, 2], False),  # one further in
        ([2, 5, 2], [2], [2, 5], True),  # the same job twice: the copy at the tail goes
        ([5, 0, 5], [5, 0], [5], True),
        ([5, 0, 5], [0], [5, 5], False),
    ]
    for listed, ended, left, trimmed in cases:
        r.delete(active)
        r.rpush(active, *(raw[i] for i in listed))
        r.config_resetstat()
        app.broker.apply(done(*ended))
        assert r.lrange(active, 0, -1) == [raw[i] for i in left], (listed, ended)
        trims = r.info("commandstats").get("cmdstat_ltrim", {}).get("calls", 0)
        assert trims == int(trimmed), (listed, ended)
    for job, _ in jobs:
        assert r.hget(KEYS.job(job.id), "status") == b"done"


def test_a_bounded_pool_is_not_short_of_a_connection(redis_url: str) -> None:
    # Each broker's own connection is made outside redis-py's pool.
    bounded = App(redis_url + "?max_connections=1")
    task = bounded.task(name="tests.bounded")(tasks.add.fn)
    try:
        job = task.push(1, 2)
        assert job.status() == "queued"

        async def apush() -> str | None:
            try:
                return await (await task.apush(3, 4)).astatus()
            finally:
                await bounded.aclose()

        assert asyncio.run(apush()) == "queued"
    finally:
        bounded.close()


@pytest.mark.parametrize(
    "how", ["resp3", "resp2", "python parser"], ids=["hiredis resp3", "hiredis resp2", "python"]
)
def test_replies_read_straight_are_what_redis_py_reads(
    redis_url: str, r: redis.Redis, how: str
) -> None:
    # read_replies reads hiredis's reader itself (redis-py's wrappers cost a push ~10 %
    # of its CPU), and falls back on redis-py's read where the parser is another. The
    # replies, errors among them (returned, not raised, in EXEC's too), are the same,
    # and the connection stays in step.
    kwargs: dict[str, Any] = {"protocol": 2 if how == "resp2" else 3}
    if how == "python parser":
        kwargs["parser_class"] = _RESP3Parser
    client = redis.Redis.from_url(redis_url, **kwargs)
    r.set("a-string", "x")
    commands: list[tuple[Any, ...]] = [
        ("PING",),
        ("MULTI",),
        ("INCR", "counter"),
        ("LPUSH", "a-string", "y"),
        ("EXEC",),
        ("HGET", "no-such-hash", "f"),
        ("EVAL", "return redis.error_reply('refused')", 0),
        ("GET", "a-string"),
    ]
    conn = own_connection(client.connection_pool)
    try:
        conn.connect()
        straight = type(conn._parser).__name__ == "_HiredisParser"
        assert straight == (how != "python parser")
        conn.send_packed_command(pack(conn, commands))
        replies = read_replies(conn, len(commands))
        assert replies[:4] == [b"PONG", b"OK", b"QUEUED", b"QUEUED"]
        incremented, refused = replies[4]
        assert incremented == 1
        assert isinstance(refused, redis.ResponseError)
        assert "WRONGTYPE" in str(refused)
        assert replies[5] is None
        assert isinstance(replies[6], redis.ResponseError)
        assert "refused" in str(replies[6])
        assert replies[7] == b"x"
        conn.send_packed_command(pack(conn, [("ECHO", "in step")]))
        assert read_replies(conn, 1) == [b"in step"]
    finally:
        conn.disconnect()
        client.close()


def test_a_push_frame_among_replies_read_straight_is_handed_to_redis_py(
    redis_url: str, r: redis.Redis
) -> None:
    # RESP3 lets Redis send a push frame (here a client-tracking invalidation) ahead of
    # a reply: it goes to redis-py's handler, and is not taken for the reply.
    client = redis.Redis.from_url(redis_url, protocol=3)
    conn = own_connection(client.connection_pool)
    seen: list[Any] = []
    try:
        conn.connect()
        conn._parser.set_invalidation_push_handler(seen.append)
        r.set("tracked", "1")
        conn.send_packed_command(pack(conn, [("CLIENT", "TRACKING", "ON"), ("GET", "tracked")]))
        assert read_replies(conn, 2) == [b"OK", b"1"]
        r.set("tracked", "2")  # Redis pushes an invalidation to conn
        conn.send_packed_command(pack(conn, [("GET", "tracked")]))
        assert read_replies(conn, 1) == [b"2"]
        assert len(seen) == 1
        assert b"tracked" in repr(seen[0]).encode()
    finally:
        conn.disconnect()
        client.close()


def test_a_connection_closed_while_replies_are_read_straight_raises_connection_error(
    redis_url: str, r: redis.Redis
) -> None:
    client = redis.Redis.from_url(redis_url)
    conn = own_connection(client.connection_pool)
    try:
        conn.connect()
        conn.send_packed_command(
            pack(
                conn,
                [
                    (
                        "CLIENT",
                        "ID",
                    )
                ],
            )
        )
        (client_id,) = read_replies(conn, 1)
        r.client_kill_filter(_id=client_id)
        conn.send_packed_command(pack(conn, [("PING",)]))
        with pytest.raises(redis.ConnectionError):
            read_replies(conn, 1)
    finally:
        conn.disconnect()
        client.close()


@pytest.mark.parametrize("first", ["push", "fetch"], ids=["after a push", "after a fetch"])
@pytest.mark.parametrize("retries", [0, 3], ids=["not retried", "retried"])
def test_a_push_on_a_connection_redis_closed_while_idle_is_sent_again_once(
    redis_url: str, r: redis.Redis, retries: int, first: str
) -> None:
    # The broker's own connection is not polled before a push (a system call each):
    # closed by Redis meanwhile (a restart, a client timeout), the push fails on it,
    # did not land, and goes again on a new connection, retries or not. Used by a
    # fetch before, the connection's id is not known yet: asking it fails first.
    broker = Broker(redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), retries)))
    jobs = [tasks.add.payload((i, i), {}) for i in range(2)]
    try:
        if first == "push":
            broker.push("default", jobs[:1])
        else:
            assert broker.fetch("default", "w1", 1) == []
            r.lpush(KEYS.queue("default"), jobs[0][1])
        sock = broker._own._sock
        assert r.client_kill_filter(_type="normal", skipme=True) >= 1
        broker.push("default", jobs[1:])
        assert broker._own._sock is not sock
    finally:
        broker.close()
    queued = [json.loads(raw)["id"] for raw in r.lrange(KEYS.queue("default"), 0, -1)]
    assert sorted(queued) == sorted(payload.id for payload, _ in jobs)


def test_a_write_whose_send_fails_is_retried_if_the_client_retries(redis_url: str) -> None:
    # A push on the broker's own connection, reused (not polled: it may be one Redis
    # closed while idle), is sent once more if it did not land, retries or not; only
    # a second failure is raised without retries.
    retrying = Broker(redis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 1)))
    plain = Broker(redis.Redis.from_url(redis_url))
    pushed = []
    try:
        for broker in (retrying, plain):
            jobs = [tasks.add.payload((i, i), {}) for i in range(2)]
            pushed += [payload.id for payload, _ in jobs]
            broker.push("default", jobs[:1])  # makes the broker's own connection
            conn = broker._own
            send = conn.send_packed_command
            failures = [redis.ConnectionError("lost")] * (2 if broker is plain else 1)

            def fail_once(
                *args: Any, send: Any = send, failures: list[Any] = failures, **kwargs: Any
            ) -> None:
                if failures:
                    raise failures.pop()
                send(*args, **kwargs)

            conn.send_packed_command = fail_once
            if broker is retrying:
                broker.push("default", jobs[1:])
            else:
                with pytest.raises(redis.ConnectionError, match="lost"):
                    broker.push("default", jobs[1:])
                broker.push("default", jobs[1:])  # the next write goes through
    finally:
        retrying.close()
        plain.close()
    queued = [
        json.loads(raw)["id"]
        for raw in redis.Redis.from_url(redis_url).lrange(KEYS.queue("default"), 0, -1)
    ]
    assert sorted(queued) == sorted(pushed)


def test_an_async_write_whose_send_fails_is_retried_if_the_client_retries(
    redis_url: str, r: redis.Redis
) -> None:
    payloads = [tasks.add.payload((i, i), {}) for i in range(2)]

    async def push_twice() -> None:
        broker = AsyncBroker(aioredis.Redis.from_url(redis_url, retry=AsyncRetry(NoBackoff(), 1)))
        try:
            await broker.push("default", payloads[:1])  # makes the broker's own connection
            conn = broker._own
            send = conn.send_packed_command
            failures = [redis.ConnectionError("lost")]

            async def fail_once(*args: Any, **kwargs: Any) -> None:
                if failures:
                    raise failures.pop()
                await send(*args, **kwargs)

            conn.send_packed_command = fail_once
            await broker.push("default", payloads[1:])
            assert not failures
        finally:
            await broker.aclose()

    asyncio.run(push_twice())
    queued = [json.loads(raw)["id"] for raw in r.lrange(KEYS.queue("default"), 0, -1)]
    assert sorted(queued) == sorted(p.id for p, _ in payloads)


def test_pushes_from_many_threads_land_and_a_killed_connection_is_remade(
    app: App, r: redis.Redis
) -> None:
    # One thread at a time borrows the broker's own connection, the others the pool.
    per_thread, threads = 300, 6
    ids: list[str] = []
    go = threading.Barrier(threads)

    def producer() -> None:
        go.wait()
        ids.extend(tasks.add.push(i, i).id for i in range(per_thread))

    workers = [threading.Thread(target=producer) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert len(set(ids)) == per_thread * threads
    assert r.llen(KEYS.queue("default")) == per_thread * threads
    assert r.exists(*(KEYS.job(i) for i in ids[::50])) == len(ids[::50])
    killed = r.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1  # the broker's connections among them
    job = tasks.add.push(1, 1)  # the closed connection is remade, the push sent again
    assert r.hget(KEYS.job(job.id), "status") == b"queued"
    assert r.llen(KEYS.queue("default")) == per_thread * threads + 1  # once


def test_async_pushes_at_once_land_and_a_killed_connection_is_remade(
    app: App, r: redis.Redis
) -> None:
    # One coroutine at a time writes on the loop's own connection, the others on
    # connections of the pool.
    async def push_all() -> list[str]:
        jobs = await asyncio.gather(*(tasks.add.apush(i, i) for i in range(50)))
        r.client_kill_filter(_type="normal", skipme=True)  # its FIN is sent at once
        # Two loop passes: one polls the sockets, the next reads their EOF.
        for _ in range(2):
            await asyncio.sleep(0)
        jobs.append(await tasks.add.apush(1, 1))  # on a fresh connection
        await app.aclose()
        return [job.id for job in jobs]

    ids = asyncio.run(push_all())
    assert len(set(ids)) == 51
    assert r.llen(KEYS.queue("default")) == 51
    assert r.hget(KEYS.job(ids[-1]), "status") == b"queued"


def test_a_forked_child_pushes_on_its_own_connection(app: App, r: redis.Redis) -> None:
    tasks.add.push(0, 0)  # the parent's connection exists before the fork
    parents = app.broker._own
    payload._ids.clear()
    payload.new_id()  # the parent holds ids made ahead as it forks
    pid = os.fork()
    if pid == 0:  # the child: a shared socket would mix up the replies
        code = 1
        try:
            for i in range(200):
                tasks.add.push(i, i)
            own = app.broker._own
            code = 0 if own is not parents and own.pid == os.getpid() else 2
        finally:
            os._exit(code)
    for i in range(200):
        tasks.add.push(i, i)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert r.llen(KEYS.queue("default")) == 401
    # Ids are made ahead in batches: the child must not hand out its parent's.
    assert len({json.loads(raw)["id"] for raw in r.lrange(KEYS.queue("default"), 0, -1)}) == 401


# -- an idle worker on several queues ------------------------------------------------
def _push_to(app: App, queue: str, task: str, *args: Any, **kwargs: Any) -> str:
    payload = Payload(task, list(args), kwargs)
    app.broker.push(queue, [(payload, payload.encode())])
    return payload.id


def test_an_idle_worker_waits_on_all_its_queues_at_once(app: App, r: redis.Redis) -> None:
    # In turn, a job on "low" would wait while the master blocks on "high".
    with worker_thread(app, queues=("high", "low")):
        until_blocked(r, 2)
        low = _push_to(app, "low", "slow", 0, name="low")
        wait_event(r, "start:low", timeout=5)
        wait_event(r, "end:low", timeout=5)
        assert app.job(low).result(timeout=5) == "low"
        until_blocked(r, 2)  # the waits start again, on connections left clean
        high = _push_to(app, "high", "slow", 0, name="high")
        wait_event(r, "start:high", timeout=5)
        assert app.job(high).result(timeout=5) == "high"
    assert r.keys("taskq:{*}:active:*") == []


@contextmanager
def _waiting_on(
    app: App, queues: list[str], timeout: float = 10, waiters: dict[str, Any] | None = None
) -> Iterator[tuple[Broker, Callable[[], list[tuple[str, bytes]]]]]:
    """A broker of its own waiting in a thread (``timeout`` s at most) for a job on any
    of ``queues`` (as worker "w"), on the connections ``waiters`` gives for some of
    them; yields it and what gives the wait's result."""
    broker = Broker(redis.Redis.from_url(app.settings.redis_url))
    broker._waiters.update(waiters or {})
    got: list[list[tuple[str, bytes]]] = []
    thread = threading.Thread(
        target=lambda: got.append(broker.fetch_blocking_any(queues, "w", timeout))
    )
    thread.start()

    def result() -> list[tuple[str, bytes]]:
        thread.join(timeout + 5)
        assert got, "the wait did not end"
        return got[0]

    try:
        yield broker, result
    finally:
        thread.join(timeout + 5)
        broker.close()


def test_jobs_reaching_several_waiting_queues_at_once_are_all_taken(
    app: App, r: redis.Redis
) -> None:
    with _waiting_on(app, ["a", "b", "c"]) as (broker, result):
        until_blocked(r, 3)
        with r.pipeline(transaction=True) as pipe:  # both served in the same instant
            pipe.lpush(KEYS.queue("c"), b"job-c")
            pipe.lpush(KEYS.queue("a"), b"job-a")
            pipe.execute()
        assert result() == [("a", b"job-a"), ("c", b"job-c")]  # in the order of the queues
        assert r.lrange(KEYS.active("a", "w"), 0, -1) == [b"job-a"]
        assert r.lrange(KEYS.active("c", "w"), 0, -1) == [b"job-c"]
        assert blocked_moves(r) == 0  # the wait on "b" was ended too
        r.lpush(KEYS.queue("b"), b"job-b")
        assert broker.fetch_blocking_any(["a", "b", "c"], "w", 10) == [("b", b"job-b")]


def test_a_wait_cut_short_on_one_queue_still_gives_the_jobs_of_the_others(
    app: App, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with _waiting_on(app, ["a", "b", "c"]) as (broker, result):
        until_blocked(r, 3)
        r.config_resetstat()
        host, port = broker._waiters["a"]._sock.getsockname()[:2]
        with r.pipeline(transaction=True) as pipe:  # in one instant: a job, a lost wait
            pipe.lpush(KEYS.queue("b"), b"job-b")
            pipe.client_kill_filter(addr=f"{host}:{port}")
            pipe.execute()
        assert result() == [("b", b"job-b")]
        assert "lost the wait on a queue" in caplog.text
        # The wait on "c" was ended at once (by the connection that answered, not
        # the lost one), not left to its timeout.
        stats: Any = r.info("commandstats")
        assert stats["cmdstat_client|unblock"]["calls"] == 1
        r.lpush(KEYS.queue("a"), b"job-a")  # the lost connection is made again
        assert broker.fetch_blocking_any(["a", "b", "c"], "w", 10) == [("a", b"job-a")]


def test_a_wait_on_another_server_is_not_ended_with_this_servers_ids(
    app: App, r: redis.Redis
) -> None:
    # As after a failover: the wait on "b" is on a server the others are not. Client
    # ids are per server: its id sent to this one could end some other client's wait.
    with running(RedisServer()) as other:
        o = redis.Redis.from_url(other.url)
        elsewhere = {"b": own_connection(o.connection_pool)}
        with _waiting_on(app, ["a", "b"], timeout=1, waiters=elsewhere) as (_, result):
            until_blocked(r, 1)
            until_blocked(o, 1)
            r.config_resetstat()
            r.lpush(KEYS.queue("a"), b"job-a")
            assert result() == [("a", b"job-a")]
        for server in (r, o):
            assert "cmdstat_client|unblock" not in server.info("commandstats")
        o.close()


def test_an_exception_during_a_wait_on_several_queues_leaves_no_wait_behind(
    app: App, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl+C in the master while it waits, say: the BLMOVEs sent must not go on
    # waiting in Redis (a job would be moved with nobody to read it), nor their
    # replies be read later as the answers to other commands.
    broker = Broker(redis.Redis.from_url(app.settings.redis_url))

    def interrupted(self: Any, deadline: float) -> int | None:
        until_blocked(r, 2)
        raise KeyboardInterrupt

    try:
        with monkeypatch.context() as m:
            m.setattr("taskq.broker._Waits.first_to_answer", interrupted)
            with pytest.raises(KeyboardInterrupt):
                broker.fetch_blocking_any(["a", "b"], "w", 60)
        until_blocked(r, 0)  # at once, not in 60 s
        r.lpush(KEYS.queue("b"), b"job-b")
        assert r.lrange(KEYS.active("b", "w"), 0, -1) == []
        assert broker.fetch_blocking_any(["a", "b"], "w", 10) == [("b", b"job-b")]
        assert r.lrange(KEYS.active("b", "w"), 0, -1) == [b"job-b"]
    finally:
        broker.close()


def test_waiting_on_several_queues_survives_a_redis_restart() -> None:
    server = RedisServer()
    server.start()
    broker = Broker(redis.Redis.from_url(server.url))
    try:
        assert broker.fetch_blocking_any(["a", "b"], "w", 0.05) == []
        server.restart()  # the connections waiting on each queue are closed
        redis.Redis.from_url(server.url).lpush(KEYS.queue("b"), b"job-b")
        assert broker.fetch_blocking_any(["a", "b"], "w", 5) == [("b", b"job-b")]
    finally:
        broker.close()
        server.kill()


@pytest.mark.parametrize("denied", ["-client", "-@dangerous"], ids=["CLIENT", "CLIENT UNBLOCK"])
def test_without_the_client_command_several_queues_are_waited_on_in_turn(
    r: redis.Redis, redis_server: RedisServer, caplog: pytest.LogCaptureFixture, denied: str
) -> None:
    r.acl_setuser(
        "no-client", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", denied]
    )
    broker = Broker(redis.Redis(port=redis_server.port, username="no-client", password="pw"))
    try:
        r.lpush(KEYS.queue("b"), b"job-b")
        assert broker.fetch_blocking_any(["a", "b"], "w", 0.05) == [("b", b"job-b")]
        assert "waiting on several queues in turn: CLIENT is refused" in caplog.text
        r.lpush(KEYS.queue("b"), b"job-b2")
        assert broker.fetch_blocking_any(["a", "b"], "w", 0.05) == [("b", b"job-b2")]
    finally:
        broker.close()
        r.acl_deluser("no-client")


def test_through_redis_py_several_queues_are_waited_on_in_turn(app: App, r: redis.Redis) -> None:
    class Piped(redis.Redis):  # as for a cluster or memory://: no raw connections
        pass

    broker = Broker(Piped.from_url(app.settings.redis_url))
    try:
        assert broker.fetch_blocking_any(["a", "b"], "w", 0.05) == []
        r.lpush(KEYS.queue("b"), b"job-b")  # found once "a" has had its share, 0.1 s
        assert broker.fetch_blocking_any(["a", "b"], "w", 0.2) == [("b", b"job-b")]
        assert r.lrange(KEYS.active("b", "w"), 0, -1) == [b"job-b"]
    finally:
        broker.close()


def test_a_push_of_one_job_is_one_transaction_of_its_record_and_the_job(
    app: App, r: redis.Redis
) -> None:
    # Its record, then the job, in one write: MULTI, HSET, LPUSH, EXEC (a script call
    # took longer end to end).
    writes, job = app.broker.writes, tasks.add.payload((1, 2), {})
    assert writes.push_one("default", *job) is None  # the first push names the queue too
    tasks.add.push(0, 0)
    commands = writes.push_one("default", *job) or []
    assert [c[0] for c in commands] == ["MULTI", "HSET", "LPUSH", "EXEC"]

    async def apush() -> str:
        try:
            await tasks.add.apush(0, 0)  # this broker's first push: a transaction
            r.config_resetstat()
            return (await tasks.add.apush(3, 4)).id
        finally:
            await app.aclose()

    pushed = [asyncio.run(apush()), tasks.add.push(1, 2).id]
    stats = r.info("commandstats")
    assert stats["cmdstat_multi"]["calls"] == stats["cmdstat_exec"]["calls"] == 2
    assert stats["cmdstat_hset"]["calls"] == stats["cmdstat_lpush"]["calls"] == 2
    assert "cmdstat_eval" not in stats
    assert [json.loads(raw)["id"] for raw in r.lrange(KEYS.queue("default"), 0, 1)] == [
        pushed[1],
        pushed[0],
    ]
    record = {as_text(k): as_text(v) for k, v in r.hgetall(KEYS.job(pushed[1])).items()}
    assert float(record.pop("enqueued_at")) == pytest.approx(time.time(), abs=60)
    assert record == {
        "status": "queued",
        "task": "add",
        "queue": "default",
        "args": "[1,2]",
        "kwargs": "{}",
        "attempts": "0",
    }


def test_a_producer_names_its_queue_with_its_first_push_then_once_a_minute(
    app: App, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The set of queue names only grows: adding the name with every push was a
    # command in five of a one-at-a-time push's.
    r.config_resetstat()
    for i in range(3):
        tasks.add.push(i, i)
    assert r.smembers("taskq:queues") == {b"default"}
    assert r.info("commandstats")["cmdstat_sadd"]["calls"] == 1
    r.delete("taskq:queues")  # by hand: back within REGISTER_EVERY seconds
    later = time.monotonic() + REGISTER_EVERY
    monkeypatch.setattr(time, "monotonic", lambda: later)
    tasks.add.push(3, 3)
    assert r.smembers("taskq:queues") == {b"default"}
