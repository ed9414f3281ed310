"""Never lose a job: real worker processes killed, signalled, starved of Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
from redis._parsers import BaseParser
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry

import taskq
from taskq import App, Worker, scripts
from taskq.abroker import _client_of
from taskq.broker import (
    PUSH_BATCH,
    Broker,
    Client,
    Landed,
    client_described,
    client_of,
    landed,
    refused_for_now,
)
from taskq.keys import Keys
from taskq.payload import Payload
from taskq.worker import runner
from taskq.worker.promoter import RetryPromoter
from taskq.worker.recovery import Recoverer
from taskq.writes import Outcome

from . import tasks
from .helpers import (
    LossyProxy,
    start_worker,
    tasks_app_at,
    until_blocked,
    wait_event,
    worker_thread,
)
from .redis_server import RedisServer, running, wait_until

KEYS = Keys()
FAST = ["--heartbeat-timeout", "1"]


def test_job_of_a_killed_worker_completes_on_another(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    with start_worker(worker_env, *FAST) as doomed, start_worker(worker_env, *FAST) as other:
        job = tasks.stuck_first_time.push("k9")
        wait_event(r, "start:k9:1")
        doomed.kill()  # SIGKILL: no chance to put anything back
        wait_event(r, "start:k9:2")  # recovered once the heartbeat expired, run again
        assert job.result(timeout=15) == 2
        info = job.info()
        assert info.attempts == 2
        assert r.hget(KEYS.job(job.id), "stalls") == b"1"
        other.signal(signal.SIGTERM)
        assert other.wait() == 0
    assert r.keys("taskq:{default}:active:*") == []
    assert r.hlen(KEYS.stalls("default")) == 0


def test_poison_job_goes_to_the_dead_letters_after_max_stalls(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    job = tasks.suicide.push()
    for _ in range(2):  # max_stalls=1: it may kill one worker, and one more
        with start_worker(worker_env, *FAST) as victim:
            wait_event(r, "start:suicide")
            assert victim.wait() == -signal.SIGKILL
    with start_worker(worker_env, *FAST) as survivor:
        survivor.wait_for_line(r"killed its worker 2 times \(max_stalls=1\): dead-lettered")
        survivor.signal(signal.SIGTERM)
        assert survivor.wait() == 0
    entry = json.loads(r.hget(KEYS.dead_data("default"), job.id) or b"{}")
    assert entry["reason"] == "killed its worker 2 times (max_stalls=1)"
    assert entry["task"] == "suicide"
    assert job.status() == "failed"
    assert r.llen(KEYS.queue("default")) == 0


def test_sigterm_with_a_thousand_jobs_queued_loses_none(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    jobs = tasks.incr_at_gate.push_many([("effects",)] * 1000)
    with start_worker(worker_env, "--concurrency", "20") as worker:
        for _ in range(20):  # every slot busy; the rest queued or taken ahead
            wait_event(r, "at gate")
        worker.signal(signal.SIGTERM)
        worker.wait_for_line(r"stopping \(SIGTERM\)")  # it starts no more jobs
        r.rpush("gate", "open")  # the running jobs end within the grace period
        assert worker.wait() == 0, worker.log
    assert r.get("effects") == b"20"
    taskq.Worker(app, burst=True, handle_signals=False).run()
    assert int(r.get("effects") or 0) == 1000
    assert set(app.broker.statuses([j.id for j in jobs])) == {"done"}


def test_long_job_is_not_run_twice_while_its_worker_lives(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    with start_worker(worker_env, *FAST) as one, start_worker(worker_env, *FAST) as two:
        job = tasks.long_sync.push(3, name="long")  # blocks its thread 3x the timeout
        wait_event(r, "start:long:1")
        assert job.result(timeout=20) == 1
        for worker in (one, two):
            worker.signal(signal.SIGTERM)
        assert (one.wait(), two.wait()) == (0, 0)
    assert r.get("runs:long") == b"1"
    assert r.hget(KEYS.job(job.id), "stalls") is None


def test_counts_overwritten_by_hand_start_again_and_stop_no_job(app: App, r: redis.Redis) -> None:
    # HINCRBY refuses a field that is not a whole number. In a script that stopped
    # the script after it had taken a job out of a list (recovery: the job was lost),
    # and every later outcome with it (no job could end again).
    stats, stalls = KEYS.stats("default"), KEYS.stalls("default")
    r.hset(stats, mapping={"done": "many", "failed": "?", "dead": "x", "stalled": "!"})
    ghost = tasks.add.payload((2, 2), {})[0]
    ghost_raw = ghost.encode()
    r.lpush(KEYS.active("default", "ghost"), ghost_raw)
    r.zadd(KEYS.workers("default"), {"ghost": 0})
    r.hset(stalls, ghost.id, "a lot")
    assert Recoverer(app, app.broker, 1, "me").sweep(["default"]) == 1
    assert r.lrange(KEYS.queue("default"), 0, -1) == [Payload.next_attempt(ghost).encode()]
    good, bad = tasks.add.push(1, 2), tasks.boom.push("dies")
    stats_run = Worker(app, burst=True, handle_signals=False).run()
    assert (stats_run.done, stats_run.failed, stats_run.put_back) == (2, 1, 0)
    assert good.result(timeout=1) == 3
    assert app.job(ghost.id).result(timeout=1) == 4
    assert bad.status() == "failed"
    assert r.hexists(KEYS.dead_data("default"), bad.id)
    assert r.keys("taskq:{default}:active:*") == []
    # Each started again from what was added: 2 done, 1 failed and dead, 1 stalled.
    assert {k: int(r.hget(stats, k) or 0) for k in ("done", "failed", "dead", "stalled")} == {
        "done": 2,
        "failed": 1,
        "dead": 1,
        "stalled": 1,
    }


def test_counts_overwritten_by_hand_start_again_through_pipelines_too(
    app: App, r: redis.Redis
) -> None:
    # A Redis Cluster, memory:// or a client subclass get a worker's writes as
    # redis-py pipelines, not as APPLY: their counts must start again the same way.
    import redis.asyncio as aioredis

    from taskq.abroker import AsyncBroker

    class Piped(redis.Redis):  # not exactly redis.Redis: the broker sends pipelines
        pass

    class APiped(aioredis.Redis):
        pass

    stats, active = KEYS.stats("default"), KEYS.active("default", "w1")
    writes = app.broker.writes

    def finish() -> tuple[Payload, Any]:
        payload, raw = tasks.add.payload((1, 2), {})
        r.lpush(active, raw)
        return payload, writes.finish("default", "w1", raw, payload, Outcome("done", "3"), 1.0)

    async def apply_async(w: Any) -> None:
        broker = AsyncBroker(APiped.from_url(app.settings.redis_url), KEYS)
        assert not broker._raw
        try:
            await broker.apply(w)
        finally:
            await broker.client.aclose()

    piped = Broker(Piped.from_url(app.settings.redis_url), KEYS)
    assert not piped._raw
    try:
        for apply in (piped.apply, lambda w: asyncio.run(apply_async(w))):
            r.hset(stats, "done", "many")
            payload, w = finish()
            apply(w)
            assert r.hget(stats, "done") == b"1"
            assert r.llen(active) == 0
            assert r.hget(KEYS.job(payload.id), "status") == b"done"
    finally:
        piped.close()


def test_job_records_overwritten_by_hand_are_written_anew_and_hold_up_no_outcome(
    app: App, r: redis.Redis
) -> None:
    # A worker stores a batch of outcomes in one script, which stopped at a record
    # that is not a hash: every job of the batch ran again, and again.
    jobs = [tasks.add.push(i, 1) for i in range(6)]
    failing = tasks.boom.push("dies")
    garbage = {jobs[1].id: "a string", jobs[4].id: ["a", "list"], failing.id: "a string"}
    for job_id, value in garbage.items():
        r.delete(KEYS.job(job_id))
        if isinstance(value, str):
            r.set(KEYS.job(job_id), value)
        else:
            r.rpush(KEYS.job(job_id), *value)
    stats = Worker(app, burst=True, handle_signals=False).run()
    assert (stats.done, stats.failed, stats.put_back) == (6, 1, 0)
    assert [job.result(timeout=1) for job in jobs] == [1, 2, 3, 4, 5, 6]
    assert failing.status() == "failed"
    assert r.hexists(KEYS.dead_data("default"), failing.id)
    assert r.keys("taskq:{default}:active:*") == []
    assert r.llen(KEYS.queue("default")) == 0


def test_job_records_overwritten_by_hand_are_written_anew_through_pipelines_too(
    app: App, r: redis.Redis
) -> None:
    # A Redis Cluster, memory:// or a client subclass get a worker's writes as
    # redis-py pipelines, not as APPLY; a job's start and the put-back of a job go as
    # scripts of their own.
    import redis.asyncio as aioredis

    from taskq.abroker import AsyncBroker

    class Piped(redis.Redis):
        pass

    class APiped(aioredis.Redis):
        pass

    active = KEYS.active("default", "w1")
    writes = app.broker.writes

    def overwritten() -> tuple[Payload, bytes]:
        payload, raw = tasks.add.payload((1, 2), {})
        r.lpush(active, raw)
        r.set(KEYS.job(payload.id), "by hand")
        return payload, raw

    async def apply_async(w: Any) -> None:
        broker = AsyncBroker(APiped.from_url(app.settings.redis_url), KEYS)
        try:
            await broker.apply(w)
        finally:
            await broker.client.aclose()

    piped = Broker(Piped.from_url(app.settings.redis_url), KEYS)
    try:
        for apply in (piped.apply, lambda w: asyncio.run(apply_async(w))):
            for outcome in (Outcome("done", "3"), Outcome("failed", error="E")):
                payload, raw = overwritten()
                apply(writes.finish("default", "w1", raw, payload, outcome, 1.0))
                assert r.hget(KEYS.job(payload.id), "status") == outcome.status.encode()
                assert r.llen(active) == 0
            payload, _ = overwritten()
            apply(writes.start("default", "w1", payload, 1.0))
            assert r.hget(KEYS.job(payload.id), "worker") == b"w1"
            r.delete(active)
        payload, raw = overwritten()
        assert app.broker.put_back("default", "w1") == [payload.id]
        assert r.hget(KEYS.job(payload.id), "status") == b"queued"
        assert r.lrange(KEYS.queue("default"), 0, -1) == [raw]
    finally:
        piped.close()


def test_a_dead_workers_jobs_are_taken_again_in_the_order_they_were_taken(
    app: App, r: redis.Redis
) -> None:
    # Each goes back to the front of the queue: recovered oldest first, they came back
    # newest first, ahead of the job already waiting.
    raws = [tasks.add.payload((i, i), {})[0] for i in range(250)]  # over one page of 100
    waiting = tasks.add.push(9, 9)
    r.lpush(KEYS.active("default", "ghost"), *(p.encode() for p in raws))  # 0 the oldest
    r.zadd(KEYS.workers("default"), {"ghost": 0})
    assert Recoverer(app, app.broker, 1, "me").sweep(["default"]) == 250
    queue = [json.loads(raw)["id"] for raw in r.lrange(KEYS.queue("default"), 0, -1)]
    assert queue[::-1] == [p.id for p in raws] + [waiting.id]  # the tail is taken first


def test_recovery_is_exactly_once_across_racing_workers(app: App, r: redis.Redis) -> None:
    # A dead worker's active list, swept by several recoverers at the same moment.
    raws = [tasks.add.payload((i, i), {})[1] for i in range(200)]
    r.lpush(KEYS.active("default", "ghost"), *raws)
    r.zadd(KEYS.workers("default"), {"ghost": 0})
    recoverers = [
        Recoverer(app, Broker(redis.Redis.from_url(app.settings.redis_url)), 1, f"w{i}")
        for i in range(4)
    ]
    barrier = threading.Barrier(len(recoverers))

    def sweep(rec: Recoverer) -> None:
        barrier.wait()
        rec.sweep(["default"])

    threads = [threading.Thread(target=sweep, args=(rec,)) for rec in recoverers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(rec.recovered for rec in recoverers) == 200
    requeued = [json.loads(raw) for raw in r.lrange(KEYS.queue("default"), 0, -1)]
    assert sorted(j["id"] for j in requeued) == sorted(json.loads(raw)["id"] for raw in raws)
    assert {j["attempts"] for j in requeued} == {1}  # a stall counts as an attempt
    assert r.zscore(KEYS.workers("default"), "ghost") is None


def test_a_job_put_back_and_run_to_its_end_meanwhile_stays_ended(app: App, r: redis.Redis) -> None:
    # A worker stopping puts its jobs back, then notes them "queued" in their
    # records; recovery likewise. Another worker may run one to its end in between:
    # its outcome must not be overwritten.
    jobs = [tasks.add.push(i, i) for i in range(3)]
    raws = r.lrange(KEYS.queue("default"), 0, -1)
    r.delete(KEYS.queue("default"))
    r.lpush(KEYS.active("default", "w1"), *raws)
    r.hset(KEYS.job(jobs[0].id), mapping={"status": "done", "result": "0", "worker": "w2"})
    r.hset(KEYS.job(jobs[1].id), mapping={"status": "active", "worker": "w1"})
    # Ended by w1 itself, but still in its list (taking it out was refused): it runs again.
    r.hset(KEYS.job(jobs[2].id), mapping={"status": "failed", "worker": "w1"})
    assert sorted(app.broker.put_back("default", "w1")) == sorted(j.id for j in jobs)
    assert [j.status() for j in jobs] == ["done", "queued", "queued"]
    assert r.hget(KEYS.job(jobs[1].id), "worker") == b""
    app.broker.note_stall(jobs[0].id, "w1", "queued")
    app.broker.note_stall(jobs[2].id, "w1", "failed", error="PoisonJob: x")
    assert [j.status() for j in jobs] == ["done", "queued", "failed"]
    assert [r.hget(KEYS.job(j.id), "stalls") for j in jobs] == [b"1", None, b"1"]
    assert jobs[0].result(timeout=1) == 0


def test_a_worker_is_judged_dead_by_its_own_heartbeat_timeout_too(app: App, r: redis.Redis) -> None:
    # One worker beats every 2 s with a timeout of 30 s; another, given 1 s, must not
    # take its beat 1.5 s old for a death. Its description expires after its own
    # timeout: as long as it is there, the worker is alive by its own account.
    raw = tasks.add.payload((1, 2), {})[1]
    r.lpush(KEYS.active("default", "patient"), raw)
    broker = app.broker
    broker.heartbeat("patient", ["default"], {"host": "h"}, ttl=30)
    r.zadd(KEYS.workers("default"), {"patient": time.time() - 1.5})
    hasty = Recoverer(app, broker, 1, "hasty")
    assert hasty.sweep(["default"]) == 0
    assert r.lrange(KEYS.active("default", "patient"), 0, -1) == [raw]
    # What info, the dashboard, health and metrics show agrees.
    alive_after = time.time() - 1
    assert broker.queue_info("default", alive_after)["workers"] == ["patient"]
    assert [w["id"] for w in broker.workers(alive_after)] == ["patient"]
    r.delete(KEYS.worker("patient"))  # as once its own 30 s have passed
    assert broker.queue_info("default", alive_after)["workers"] == []
    assert broker.workers(alive_after) == []
    assert hasty.sweep(["default"]) == 1
    assert r.llen(KEYS.queue("default")) == 1


def test_live_worker_keeps_its_jobs(app: App, r: redis.Redis) -> None:
    raw = tasks.add.payload((1, 2), {})[1]
    r.lpush(KEYS.active("default", "slowpoke"), raw)
    r.zadd(KEYS.workers("default"), {"slowpoke": 0})
    broker = Broker(redis.Redis.from_url(app.settings.redis_url))
    rec = Recoverer(app, broker, 1, "me")
    # The worker beats again between being seen as dead and its job being moved.
    assert (
        broker.recover_one("default", "slowpoke", raw, 1, -1.0, {"id": "x", "died_at": 0.0}, raw)
        == -1
    )
    assert r.lrange(KEYS.active("default", "slowpoke"), 0, -1) == [raw]
    assert rec.sweep(["default"]) == 1


def test_a_dead_workers_job_with_a_lone_surrogate_in_its_id_is_recovered(
    app: App, r: redis.Redis
) -> None:
    # Its id cannot be a key (UTF-8 cannot carry it): it is recovered as garbage is.
    odd = b'{"id":"\\ud800","task":"add","args":[1,2]}'
    good = tasks.add.payload((2, 2), {})[1]
    r.lpush(KEYS.active("default", "ghost"), odd, good)
    r.zadd(KEYS.workers("default"), {"ghost": 0})
    rec = Recoverer(app, Broker(redis.Redis.from_url(app.settings.redis_url)), 1, "me")
    assert rec.sweep(["default"]) == 2
    stats = taskq.Worker(app, burst=True, handle_signals=False).run()
    assert (stats.done, stats.dead) == (1, 1)
    assert app.job(json.loads(good)["id"]).result(timeout=1) == 4
    [entry] = [json.loads(v) for v in r.hvals(KEYS.dead_data("default"))]
    assert "lone surrogate" in entry["reason"]


def test_a_move_into_a_key_of_the_wrong_type_is_refused_and_loses_no_job(
    app: App, r: redis.Redis
) -> None:
    # A script stops at a refused command but keeps what it wrote: each that takes
    # a job out of one key must refuse before that if the key it puts it in was
    # overwritten by hand.
    queue, delayed = KEYS.queue("default"), KEYS.delayed("default")
    active, dead = KEYS.active("default", "w1"), KEYS.dead("default")
    dead_id = tasks.boom.push("dies").id
    taskq.Worker(app, burst=True, handle_signals=False).run()
    dead_payload = Payload("boom", ["dies"], id=dead_id)
    waiting = tasks.add.push(1, 1, delay=60)
    ghost = tasks.add.payload((2, 2), {})[1]
    r.lpush(KEYS.active("default", "ghost"), ghost)
    r.zadd(KEYS.workers("default"), {"ghost": 0})
    payload, raw = tasks.add.payload((3, 3), {})
    r.lpush(active, raw)
    broker, writes = app.broker, app.broker.writes
    retry = Outcome("scheduled", error="E", due=time.time() + 60)
    failed = Outcome("failed", error="E")
    refused: list[Callable[[], object]] = [
        lambda: broker.promote("default", time.time() + 120),
        lambda: broker.revive("default", dead_id, dead_payload),
        lambda: Recoverer(app, broker, 1, "me").sweep(["default"]),
        lambda: broker.apply(writes.give_back("default", "w1", [raw])),
    ]
    r.set(queue, "oops")
    for move in refused:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            move()
    r.delete(queue)
    r.set(KEYS.active("default", "w2"), "oops")  # a fetch's move too
    r.lpush(queue, raw)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        broker.fetch("default", "w2", 5)
    assert r.lrange(queue, 0, -1) == [raw]
    r.delete(queue)
    for key, outcome in ((delayed, retry), (dead, failed)):
        held = r.dump(key)
        r.set(key, "oops")
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            broker.apply(writes.finish("default", "w1", raw, payload, outcome, None))
        r.delete(key)
        if held is not None:
            r.restore(key, 0, held)
    # Every job is where it was, and moves on now.
    still: list[bytes] = r.zrange(delayed, 0, -1)  # type: ignore[assignment]
    assert [json.loads(d)["id"] for d in still] == [waiting.id]
    assert r.hkeys(KEYS.dead_data("default")) == [dead_id.encode()]  # and no half entry
    assert r.lrange(KEYS.active("default", "ghost"), 0, -1) == [ghost]
    assert r.lrange(active, 0, -1) == [raw]
    assert broker.promote("default", time.time() + 120)[0] == 1
    assert broker.revive("default", dead_id, dead_payload) == ""
    assert Recoverer(app, broker, 1, "me").sweep(["default"]) == 1
    assert r.llen(queue) == 3


def test_a_set_of_queue_names_overwritten_by_hand_fails_no_push_and_no_recovery(
    app: App, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # The set only lists queues. Refused, it made a push raise though its job was
    # queued (pushed again: twice), and a heartbeat fail before its sweep.
    r.set(KEYS.queues(), "not a set")

    def first_push() -> None:  # each push below adds the queue's name, or tries to
        app.broker.writes._registered.clear()

    async def apush() -> taskq.Job[int]:
        try:
            return await tasks.add.apush(3, 3)
        finally:
            await app.aclose()

    jobs = [tasks.add.push(1, 1)]
    first_push()
    jobs += tasks.add.push_many([(i, i) for i in range(PUSH_BATCH + 3)])
    first_push()
    jobs.append(tasks.add.options(key="once").push(2, 2))
    first_push()
    delayed = tasks.add.options(delay=60).push(4, 4)
    jobs.append(asyncio.run(apush()))  # a new event loop's broker: its first push
    assert {job.status() for job in jobs} == {"queued"}
    assert r.llen(KEYS.queue("default")) == len(jobs)
    assert (delayed.status(), r.zcard(KEYS.delayed("default"))) == ("scheduled", 1)
    ghost = tasks.add.payload((5, 5), {})[1]  # a dead worker's job, recovered by a sweep
    r.lpush(KEYS.active("default", "ghost"), ghost)
    r.zadd(KEYS.workers("default"), {"ghost": 0})
    Worker(app, burst=True, handle_signals=False).run()
    assert [job.result(timeout=5) for job in (*jobs[:2], *jobs[-2:])] == [2, 0, 4, 6]
    assert set(app.broker.statuses([job.id for job in jobs])) == {"done"}
    assert r.llen(KEYS.queue("default")) == 0
    assert r.hget(KEYS.job(json.loads(ghost)["id"]), "status") == b"done"
    assert r.get(KEYS.queues()) == b"not a set"  # left as it is, and said once
    assert caplog.text.count("taskq:queues is not a set: queues go unlisted") == 1


# -- retries, delays, timeouts -----------------------------------------------------------
def test_retries_with_backoff_then_success(app: App, r: redis.Redis) -> None:
    job = tasks.flaky.push("f", 2)
    with worker_thread(app) as worker:
        assert job.result(timeout=10) == 3
    assert job.info().attempts == 3
    assert worker.stats.retried == 2
    assert r.hget(KEYS.stats("default"), "retried") == b"2"


def test_retries_exhausted_fail_and_dead_letter(app: App, r: redis.Redis) -> None:
    job = tasks.flaky.push("g", 10)
    with worker_thread(app), pytest.raises(taskq.JobFailed, match="flaky failure 4"):
        job.result(timeout=10)
    assert job.info().attempts == 4
    entry = json.loads(r.hget(KEYS.dead_data("default"), job.id) or b"{}")
    assert entry["attempts"] == 4


def test_retry_on_restricts_which_errors_retry(app: App) -> None:
    retried = tasks.only_key_errors_retry.push("KeyError")
    not_retried = tasks.only_key_errors_retry.push("ValueError")
    with worker_thread(app):
        with pytest.raises(taskq.JobFailed):
            retried.result(timeout=10)
        with pytest.raises(taskq.JobFailed):
            not_retried.result(timeout=10)
    assert (retried.info().attempts, not_retried.info().attempts) == (6, 1)


def test_a_retry_due_soon_runs_while_the_master_blocks(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A master that blocks 3 s in Redis: a retry 10 ms later must still run then, not
    # when the master next looks at the delayed set (five of them: about 15 s).
    monkeypatch.setattr("taskq.worker.master.BLOCK_SECONDS", 3.0)
    monkeypatch.setattr("taskq.worker.master.ABORT_POLL", 3.0)
    job = tasks.only_key_errors_retry.push("KeyError")  # 5 retries, 10 ms apart
    with worker_thread(app) as worker:
        with pytest.raises(taskq.JobFailed, match="KeyError"):
            job.result(timeout=8)
        assert worker.stats.retried == 5
    assert job.info().attempts == 6


def test_retries_due_together_are_moved_together(app: App, r: redis.Redis) -> None:
    # A hundred retries stored at once, due in 20 ms, and one due in 5 s (the
    # master's): one move for the hundred, none for the late one.
    moves: list[float] = []

    async def main() -> None:
        broker = app.abroker()
        real = broker.promote
        moved = asyncio.Event()

        async def counted(queue: str, now: float) -> tuple[int, float | None]:
            moves.append(now)
            try:
                return await real(queue, now)
            finally:
                moved.set()

        broker.promote = counted  # type: ignore[method-assign]
        promoter = RetryPromoter(broker)
        due = time.time() + 0.02
        retries = [(due, tasks.add.payload((i, i), {})[1]) for i in range(100)]
        late = tasks.add.payload((0, 0), {})[1]
        r.zadd(KEYS.delayed("default"), {raw: when for when, raw in retries} | {late: due + 5})
        for when, _ in retries:
            promoter.due("default", when)
        promoter.due("default", due + 5)
        await asyncio.wait_for(moved.wait(), 5)  # the move ended in the same step
        assert not promoter._timers  # and no other move to come
        await promoter.aclose()
        await app.aclose()

    asyncio.run(main())
    assert len(moves) == 1
    assert r.llen(KEYS.queue("default")) == 100
    assert r.zcard(KEYS.delayed("default")) == 1


def test_raise_retry_runs_again(app: App) -> None:
    job = tasks.asks_to_retry.push("again")
    spent = tasks.asks_to_retry_without_budget.push()
    with worker_thread(app):
        assert job.result(timeout=10) == 2
        with pytest.raises(taskq.JobFailed, match="no retries left"):
            spent.result(timeout=10)


def test_a_job_too_big_to_retry_fails_instead_of_staying_in_its_list(
    app: App, r: redis.Redis
) -> None:
    # One attempt along, its payload grows by '"attempts":1,' past the 1 MiB limit.
    from taskq.payload import MAX_PAYLOAD_BYTES

    overhead = len(tasks.fails_holding.payload(("",), {})[1])
    job = tasks.fails_holding.push("x" * (MAX_PAYLOAD_BYTES - overhead - 1))
    stats = taskq.Worker(app, burst=True, handle_signals=False).run()
    assert (stats.failed, stats.retried, stats.put_back) == (1, 0, 0)
    with pytest.raises(taskq.JobFailed, match=r"ValueError: failed holding .* \(not retried: "):
        job.result(timeout=1)
    assert r.keys("taskq:{default}:active:*") == []
    assert r.hexists(KEYS.dead_data("default"), job.id)


def test_an_abort_request_left_by_a_job_that_failed_does_not_abort_its_retry(
    app: App, r: redis.Redis
) -> None:
    # Asked while it ran, the abort came too late: the job failed first. The
    # request must not abort the job when it is retried from the dead letters.
    payload, raw = tasks.boom.payload(("late",), {})
    r.lpush(KEYS.active("default", "w1"), raw)
    r.hset(KEYS.aborts("default"), payload.id, time.time())
    writes = app.broker.writes
    app.broker.apply(writes.finish("default", "w1", raw, payload, Outcome("failed", error="E")))
    assert r.hlen(KEYS.aborts("default")) == 0
    r.hset(KEYS.aborts("default"), payload.id, time.time())  # one left all the same
    assert app.broker.revive("default", payload.id, payload) == ""
    assert r.hlen(KEYS.aborts("default")) == 0


def test_a_dead_letter_purged_as_it_is_retried_leaves_its_record_as_it_was(
    app: App, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The retry wrote the job's record as "queued" before its script found the dead
    # letter gone: a record of a job that was nowhere, "queued" for good. On one Redis
    # the script writes the record, or nothing.
    job = tasks.boom.push("dies")
    taskq.Worker(app, burst=True, handle_signals=False).run()
    assert job.status() == "failed"
    broker = app.broker
    assert [entry["id"] for entry in broker.dead_letters("default")] == [job.id]
    payload = Payload("boom", ["dies"], id=job.id)
    revive = broker._revive

    def purged_first(**kwargs: object) -> object:
        broker.purge_dead("default", [job.id])  # the purge lands just before
        return revive(**kwargs)

    monkeypatch.setattr(broker, "_revive", purged_first)
    assert broker.revive("default", job.id, payload) == f"{job.id}: already retried or purged"
    assert job.status() == "failed"
    assert r.llen(KEYS.queue("default")) == 0


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    policy = taskq.retry.RetryPolicy(retries=10, backoff=1, backoff_max=8)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (9, 8)]:
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert policy.delay(3, taskq.Retry(delay=0.5)) == 0.5


def test_a_retry_never_due_is_refused_before_the_job_leaves_its_list(
    app: App, r: redis.Redis
) -> None:
    # A delayed set refuses a NaN score, after the job left the active list: lost.
    for delay in (-1, math.nan, math.inf):
        with pytest.raises(ValueError, match="zero or more seconds, finite"):
            taskq.Retry(delay=delay)
    for backoff, backoff_max in ((math.nan, 1.0), (1.0, math.inf), (2.0, 1.0)):
        with pytest.raises(taskq.ConfigError, match="both finite"):
            taskq.retry.RetryPolicy(retries=1, backoff=backoff, backoff_max=backoff_max)
    payload, raw = tasks.add.payload((1, 2), {})
    active = KEYS.active("default", "w1")
    r.lpush(active, raw)
    never = Outcome("scheduled", error="E", due=math.nan)
    with pytest.raises(redis.ResponseError, match="due at a finite time, not nan"):
        app.broker.apply(app.broker.writes.finish("default", "w1", raw, payload, never, None))
    assert r.lrange(active, 0, -1) == [raw]


def test_delayed_jobs_run_once_when_due_across_two_workers(app: App, r: redis.Redis) -> None:
    jobs = [tasks.incr.push(f"once:{i}", delay=0.5) for i in range(40)]
    assert {j.status() for j in jobs} == {"scheduled"}
    assert r.zcard(KEYS.delayed("default")) == 40
    with worker_thread(app), worker_thread(app):
        assert taskq.gather(*jobs, timeout=15) == [1] * 40
    for job in jobs:
        info = job.info()
        assert info.started_at is not None
        assert info.started_at >= float(r.hget(KEYS.job(job.id), "due_at") or 0)
    assert all(r.get(f"once:{i}") == b"1" for i in range(40))


def test_push_at_and_options_delay(app: App, r: redis.Redis) -> None:
    import datetime

    later = datetime.datetime.now() + datetime.timedelta(hours=1)
    a = tasks.add.push(1, 2, at=later)
    b = tasks.add.options(delay=3600).push(1, 2)
    now = tasks.add.push(1, 2, delay=0)
    assert (a.status(), b.status(), now.status()) == ("scheduled", "scheduled", "queued")
    scored: list[tuple[bytes, float]] = r.zrange(KEYS.delayed("default"), 0, -1, withscores=True)  # type: ignore[assignment]
    dues = sorted(score for _, score in scored)
    assert dues[0] == pytest.approx(later.timestamp(), abs=1)
    assert dues[1] == pytest.approx(later.timestamp(), abs=5)
    with pytest.raises(TypeError, match="not both"):
        tasks.add.push(1, 2, delay=1, at=later)
    for bad in (-1, math.nan):
        with pytest.raises(ValueError, match="delay must be zero or more"):
            tasks.add.push(1, 2, delay=bad)
    with pytest.raises(ValueError, match="at most 100 years ahead"):
        tasks.add.push(1, 2, at=time.time() + 101 * 365 * 86_400)
    for never in ({"delay": math.inf}, {"at": math.inf}, {"at": math.nan}):
        with pytest.raises(ValueError, match="must be finite"):
            tasks.add.options(**never).push(1, 2)  # type: ignore[arg-type]
    assert r.zcard(KEYS.delayed("default")) == 2


def test_a_sync_job_past_its_timeout_ends_when_its_thread_returns(
    app: App, r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A thread cannot be interrupted: the job fails once it has returned, so that its
    # retry (and the next job: one slot) do not run beside it, as they did before.
    past_timeout = threading.Semaphore(0)
    wait_for_thread = runner.JobRunner._wait_for_thread

    async def noted(self: runner.JobRunner, *args: Any) -> Any:
        past_timeout.release()
        return await wait_for_thread(self, *args)

    monkeypatch.setattr(runner.JobRunner, "_wait_for_thread", noted)
    job = tasks.overruns_its_timeout.push("over")
    after = tasks.record.push("after")
    with worker_thread(app, concurrency=1):
        for _ in range(2):  # the run, then its retry: one after the other
            wait_event(r, "start:over")
            assert past_timeout.acquire(timeout=10)  # its timeout of 0.2 s has passed
            r.rpush("gate:over", "open")
            wait_event(r, "end:over")
        with pytest.raises(taskq.JobFailed, match=r"timeout of 0\.2s"):
            job.result(timeout=15)
        assert after.result(timeout=5) == "after"
    assert r.llen("events") == 0  # nothing ran beside them
    assert app.job(job.id).info().attempts == 2


def test_a_sync_job_stuck_past_its_timeout_ends_after_a_bounded_wait(
    app: App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A thread that does not return ends its job SYNC_STOP_WAIT seconds after the
    # timeout all the same, with a warning, and the slot serves the next job.
    monkeypatch.setattr(runner, "SYNC_STOP_WAIT", 0.2)
    tasks.gate.clear()
    stuck = tasks.blocked_past_its_timeout.push()
    after = tasks.add.push(1, 1)
    try:
        with worker_thread(app, concurrency=1):
            with pytest.raises(taskq.JobFailed, match=r"timeout of 0\.2s"):
                stuck.result(timeout=10)
            assert after.result(timeout=5) == 2
    finally:
        tasks.gate.set()
    assert "its thread is still running after 0.2s more" in caplog.text


# -- bad input ----------------------------------------------------------------------------
def test_every_kind_of_garbage_is_dead_lettered_with_its_reason(app: App, r: redis.Redis) -> None:
    garbage = {
        b"\xc3\x28": "not UTF-8",
        b"{": "not JSON",
        b'"a string"': "JSON object",
        b'{"args": [1]}': "'task'",
        b'{"task": "add", "args": {"a": 1}}': "'args' must be a JSON array",
        b'{"task": "add", "kwargs": []}': "'kwargs' must be a JSON object",
        b'{"task": "add", "id": 5}': "'id' must be",
        b'{"task": "add", "args": [' + b"1," * 600_000 + b"1]}": "over the",
    }
    r.lpush(KEYS.queue("default"), *garbage)
    r.lpush(KEYS.queue("default"), json.dumps({"id": "u", "task": "no_such_task"}))
    r.lpush(KEYS.queue("default"), json.dumps({"id": "a", "task": "add", "args": [1, 2, 3]}))
    good = tasks.add.push(2, 2)
    stats = taskq.Worker(app, burst=True, handle_signals=False).run()
    assert good.result(timeout=1) == 4
    assert (stats.dead, stats.failed, stats.done) == (len(garbage), 2, 1)
    entries = [json.loads(v) for v in r.hvals(KEYS.dead_data("default"))]
    assert len(entries) == len(garbage) + 2
    reasons = " | ".join(e["reason"] + " " + (e["error"] or "") for e in entries)
    for expected in garbage.values():
        assert expected in reasons
    assert "no task named 'no_such_task'" in reasons
    assert "bad arguments for task 'add'" in reasons


def test_dead_letters_cli_lists_retries_and_purges(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    from click.testing import CliRunner

    from taskq.cli import main

    failed = tasks.boom.push("once")
    r.lpush(KEYS.queue("default"), b"garbage")
    taskq.Worker(app, burst=True, handle_signals=False).run()
    runner = CliRunner()
    env = {"TASKQ_REDIS_URL": app.settings.redis_url}
    listing = runner.invoke(main, ["dead"], env=env)
    assert listing.exit_code == 0, listing.output
    assert failed.id in listing.output
    assert "ValueError: once" in listing.output
    as_json = runner.invoke(main, ["dead", "--json"], env=env)
    entries = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert {e["reason"] for e in entries} == {
        "failed",
        "bad payload: payload is not JSON: Expecting value: line 1 column 1 (char 0)",
    }
    retried = runner.invoke(main, ["retry", failed.id], env=env)
    assert retried.exit_code == 0, retried.output
    assert failed.status() == "queued"
    garbage_id = next(e["id"] for e in entries if e["id"] != failed.id)
    refused = runner.invoke(main, ["retry", garbage_id], env=env)
    assert refused.exit_code == 1
    assert "cannot retry a bad payload" in refused.output
    assert runner.invoke(main, ["purge"], env=env, input="n\n").exit_code == 1
    assert r.hlen(KEYS.dead_data("default")) == 1
    purged = runner.invoke(main, ["purge", "--yes"], env=env)
    assert purged.exit_code == 0
    assert r.hlen(KEYS.dead_data("default")) == 0


def test_dead_letters_past_their_retention_go_even_if_no_other_job_dies(
    app: App, r: redis.Redis
) -> None:
    old, recent = tasks.boom.push("old"), tasks.boom.push("recent")
    taskq.Worker(app, burst=True, handle_signals=False).run()
    eight_days_ago = time.time() - 8 * 86_400  # the retention is 7 days
    r.zadd(KEYS.dead("default"), {old.id: eight_days_ago})
    taskq.Worker(app, burst=True, handle_signals=False).run()  # nothing to run
    assert r.hkeys(KEYS.dead_data("default")) == [recent.id.encode()]
    assert r.zrange(KEYS.dead("default"), 0, -1) == [recent.id.encode()]
    assert app.broker.queue_info("default", 0.0)["dead_trimmed"] == 1


def test_an_error_in_recovery_does_not_end_the_heartbeat(
    app: App, r: redis.Redis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskq.worker.heartbeat import Heartbeat

    heartbeat = Heartbeat(app, "w-beats", ("default",), 1)

    def broken(queues: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(heartbeat.recoverer, "sweep", broken)
    try:
        for _ in range(2):
            r.zrem(KEYS.workers("default"), "w-beats")
            heartbeat.beat()  # raises nothing: its thread beats on
            assert r.zscore(KEYS.workers("default"), "w-beats") is not None
    finally:
        heartbeat.stop()
    assert caplog.text.count("the heartbeat goes on") == 2


def test_dead_letters_written_by_hand_are_listed_and_purged_not_a_traceback(
    app: App, r: redis.Redis
) -> None:
    from click.testing import CliRunner

    from taskq.cli import main

    failed = tasks.boom.push("once")
    taskq.Worker(app, burst=True, handle_signals=False).run()
    by_hand: dict[Any, Any] = {
        "text": "not json",
        "list": "[1,2]",
        "bare": "{}",
        "b64": '{"payload_base64":5}',
    }
    r.hset(KEYS.dead_data("default"), mapping=by_hand)
    r.zadd(KEYS.dead("default"), dict.fromkeys(by_hand, 1.0))
    runner = CliRunner()
    env = {"TASKQ_REDIS_URL": app.settings.redis_url}
    listing = runner.invoke(main, ["dead"], env=env)
    assert listing.exit_code == 0, listing.output
    assert "unreadable dead letter: not JSON" in listing.output
    assert "unreadable dead letter: a JSON list, not an object" in listing.output
    assert "5 dead letter(s)" in listing.output
    lines = runner.invoke(main, ["dead", "--json"], env=env).output.splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == sorted([*by_hand, failed.id])
    retried = runner.invoke(main, ["retry", "--all"], env=env)
    assert retried.exit_code == 1
    for no_job in ("bare", "b64"):
        assert f"{no_job}: the dead letter holds no readable job; purge" in retried.output
    assert retried.output.count("cannot retry a bad payload") == 2
    assert "retried 1 job(s)" in retried.output
    purged = runner.invoke(main, ["purge", "--yes", *by_hand], env=env)
    assert (purged.exit_code, r.hlen(KEYS.dead_data("default"))) == (0, 0)
    again = runner.invoke(main, ["purge", "--yes", "text", "nope"], env=env)
    assert again.exit_code == 1  # as retry: the ids given were not there
    assert "2 of the ids given were no dead letter" in again.output


@pytest.mark.parametrize(
    ("queues", "before"),
    [(("default",), 0), (("default", "other"), 1)],  # one wait on several: CLIENT ID first
)
def test_a_job_moved_by_a_wait_whose_reply_was_lost_runs_once_the_worker_is_idle(
    redis_server: RedisServer, r: redis.Redis, queues: tuple[str, ...], before: int
) -> None:
    proxy = LossyProxy(redis_server.port)
    try:
        with tasks_app_at(proxy.url) as app, worker_thread(app, queues=queues):
            proxy.lose_reply_to(b"BLMOVE", after=before)  # the idle master's next wait
            assert proxy.doomed.wait(10)
            until_blocked(r, len(queues))
            job = tasks.add.push(20, 22)  # moved by that wait, which never hears of it
            assert job.result(timeout=15) == 42
            assert proxy.lost.is_set()
    finally:
        proxy.close()


# -- Redis outages ------------------------------------------------------------------------
FETCH = scripts.FETCH_MANY.encode()


def test_a_fetch_whose_reply_is_lost_returns_its_jobs_when_sent_again(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    proxy = LossyProxy(redis_server.port)
    broker = Broker(redis.Redis.from_url(proxy.url))
    queue, active = KEYS.queue("default"), KEYS.active("default", "w1")
    try:
        r.lpush(queue, b"a", b"b", b"c", b"d", b"e")
        assert broker.fetch("default", "w1", 1) == [b"a"]
        proxy.lose_reply_to(FETCH)
        with pytest.raises(redis.ConnectionError):
            broker.fetch("default", "w1", 2)
        assert proxy.lost.is_set()
        assert r.lrange(active, 0, -1) == [b"c", b"b", b"a"]  # it ran: b and c moved
        assert broker.unsettled() == ["default"]
        r.lpush(queue, b"f")
        # Sent again: the jobs it moved, none more, however many are asked for.
        assert broker.fetch("default", "w1", 4) == [b"b", b"c"]
        assert broker.unsettled() == []
        assert r.lrange(queue, 0, -1) == [b"f", b"e", b"d"]
        assert broker.fetch("default", "w1", 4) == [b"d", b"e", b"f"]  # then on as before
        # The lost fetch itself, held up on its dead connection, reaching Redis only
        # now: older than the last fetch, it moves nothing.
        fetched = KEYS.fetched("default", "w1")
        r.lpush(queue, b"g")
        lost_number = broker._fetches - 1
        late = r.eval(
            scripts.FETCH_MANY,
            3,
            queue,
            active,
            fetched,
            2,
            broker._fetcher,
            lost_number,
            60_000,
            0,
        )
        assert late == []
        # A lost fetch that had moved nothing, sent again and lost again (the retry
        # notes what it moved: nothing): sent a third time, it returns nothing (not
        # the whole active list); the fetch after it takes the job.
        r.delete(queue)
        for _ in range(2):
            proxy.lose_reply_to(FETCH)
            with pytest.raises(redis.ConnectionError):
                broker.fetch("default", "w1", 2)
        r.lpush(queue, b"h")
        assert broker.fetch("default", "w1", 2) == []
        assert broker.fetch("default", "w1", 2) == [b"h"]
        assert r.exists(fetched)
        broker.put_back("default", "w1")
        assert r.llen(queue) == 7
        assert not r.exists(fetched)  # forgotten with the list
        r.delete(queue)
        assert broker.fetch("default", "w1", 2) == []
        assert not r.exists(fetched)  # an idle worker's fetches write nothing
    finally:
        broker.close()
        proxy.close()


def with_retries(
    client: Any, retries: int, retry: Any = RedisRetry, errors: tuple[type, ...] = ()
) -> None:
    """Have ``client``'s connections send a command again ``retries`` times on a lost
    connection (``retry``: redis-py's sync or asyncio Retry), or only on ``errors``
    where given."""
    chosen = {"supported_errors": errors} if errors else {}
    client.connection_pool.connection_kwargs["retry"] = retry(NoBackoff(), retries, **chosen)


async def apushed(
    app: App, retries: int, many: list[tuple[int, int]] | None, errors: tuple[type, ...] = ()
) -> list[taskq.Job[int]]:
    """``add(1, 2)`` pushed with ``apush`` (``many`` None), or ``many`` with
    ``apush_many``, by an async client retrying ``retries`` times (on ``errors``
    only, where given); closed after."""
    try:
        with_retries(app.abroker().client, retries, AsyncRetry, errors)
        if many is None:
            return [await tasks.add.apush(1, 2)]
        return await tasks.add.apush_many(many)
    finally:
        await app.aclose()


@pytest.mark.parametrize("retries", [0, 3], ids=["not retried", "retried"])
@pytest.mark.parametrize("first", [True, False], ids=["naming the queue", "named"])
@pytest.mark.parametrize("how", ["push", "push_many", "apush", "apush_many"])
def test_a_push_whose_reply_is_lost_is_queued_once_and_does_not_raise(
    redis_server: RedisServer, r: redis.Redis, how: str, first: bool, retries: int
) -> None:
    # A push is one transaction: Redis applied it, then the connection died before its
    # reply came. Raising would have the caller push again, and sending it again (as
    # redis-py does with a client told to retry) would queue the job twice, one id.
    proxy = LossyProxy(redis_server.port)
    try:
        with tasks_app_at(proxy.url) as app:
            with_retries(app.broker.client, retries)
            before = [] if first else [tasks.add.push(0, 0)]  # the queue named already
            proxy.lose_reply_to(b"EXEC")
            if how == "push":
                jobs = [tasks.add.push(1, 2)]
            elif how == "push_many":
                jobs = tasks.add.push_many([(1, 2), (3, 4)])
            else:
                many = None if how == "apush" else [(1, 2), (3, 4)]
                jobs = asyncio.run(apushed(app, retries, many))
            assert proxy.lost.is_set()
            queued = [json.loads(raw)["id"] for raw in r.lrange(KEYS.queue("default"), 0, -1)]
            assert sorted(queued) == sorted(job.id for job in before + jobs)
            Worker(app, burst=True, handle_signals=False).run()
            assert [job.result(timeout=5) for job in jobs] == [3, 7][: len(jobs)]
    finally:
        proxy.close()


@pytest.mark.parametrize("retries", [0, 3], ids=["not retried", "retried"])
@pytest.mark.parametrize("before_redis", [False, True], ids=["reply lost", "command lost"])
@pytest.mark.parametrize("first", [True, False], ids=["naming the queue", "named"])
@pytest.mark.parametrize("how", ["push_many", "apush_many"])
def test_a_push_in_slices_whose_connection_drops_is_queued_once(
    redis_server: RedisServer,
    r: redis.Redis,
    retries: int,
    before_redis: bool,
    how: str,
    first: bool,
) -> None:
    # More jobs than one transaction takes go in slices, streamed: the connection dies
    # as the first slice's reply comes back, when Redis has that slice and maybe the
    # next (or as the first slice goes out, before Redis has any). The slices it
    # applied are not sent again, the others are: each job is queued once, the push
    # returns, and the queue's name is listed (the first slice named it).
    proxy = LossyProxy(redis_server.port)
    try:
        args = [(i, 1) for i in range(2 * PUSH_BATCH + 500)]
        with tasks_app_at(proxy.url) as app:
            with_retries(app.broker.client, retries)
            before = [] if first else [tasks.add.push(0, 0)]  # the queue named already
            r.delete(KEYS.queues())
            proxy.lose_reply_to(b"EXEC", before_redis=before_redis)
            sync = how == "push_many"
            jobs = tasks.add.push_many(args) if sync else asyncio.run(apushed(app, retries, args))
            assert proxy.lost.is_set()
            queued = [json.loads(raw)["id"] for raw in r.lrange(KEYS.queue("default"), 0, -1)]
            assert sorted(queued) == sorted(job.id for job in before + jobs)
            if first:
                assert r.smembers(KEYS.queues()) == {b"default"}
    finally:
        proxy.close()


@pytest.mark.parametrize(
    ("retries", "errors"),
    [(0, ()), (3, ()), (3, (redis.ConnectionError,))],
    ids=["not retried", "retried", "retried on a closed connection only"],
)
@pytest.mark.parametrize("how", ["push", "push_many", "apush", "apush_many", "sliced", "asliced"])
def test_a_push_held_up_past_its_timeout_is_queued_once_even_if_it_lands_later(
    redis_server: RedisServer, r: redis.Redis, how: str, retries: int, errors: tuple[type, ...]
) -> None:
    # A timeout means late, not lost: the push is still on its way (held up here by a
    # proxy) when the producer asks Redis whether it landed, and gets there after
    # the answer. The producer closes the connection it went out on first, so it
    # never lands: sent again, each job is queued once; not sent again (no retries,
    # or none on a timeout; one transaction), the push raises and nothing is queued.
    proxy = LossyProxy(redis_server.port)
    many = 2 * PUSH_BATCH + 500 if how in ("sliced", "asliced") else 2
    args = [(i, 1) for i in range(many)]

    def push() -> list[taskq.Job[int]]:
        if how == "push":
            return [tasks.add.push(1, 2)]
        if how in ("push_many", "sliced"):
            return tasks.add.push_many(args)
        return asyncio.run(apushed(app, retries, None if how == "apush" else args, errors))

    try:
        with tasks_app_at(f"{proxy.url}?socket_timeout=0.5") as app:
            with_retries(app.broker.client, retries, errors=errors)
            before = tasks.add.push(0, 0)  # the queue named: the push is one transaction
            proxy.hold(b"EXEC")
            raises = (retries == 0 or bool(errors)) and how not in ("sliced", "asliced")
            if raises:
                with pytest.raises(redis.TimeoutError):
                    push()
                jobs = []
            else:
                jobs = push()
            assert proxy.held.is_set()
            proxy.release()
            assert proxy.delivered.wait(10)
            queued = [json.loads(raw)["id"] for raw in r.lrange(KEYS.queue("default"), 0, -1)]
            assert sorted(queued) == sorted(job.id for job in [before, *jobs])
    finally:
        proxy.release()
        proxy.close()


def test_a_connection_over_a_unix_socket_is_never_fenced(redis_server: RedisServer) -> None:
    # Every client of a Unix socket has the same address: after a restart, the id of
    # a connection lost with a push could name another client's, which nothing tells
    # apart. Such a push gets the record's answer alone.
    for url, fenced in ((redis_server.url, True), (redis_server.unix_url, False)):
        client = redis.Redis.from_url(url)
        conn = client.connection_pool.get_connection()
        try:
            found = client_of(conn, conn._sock)
            assert (found is not None) == fenced
            if found is not None:
                host, port = cast(Any, conn)._sock.getsockname()
                assert found[1] == f"{host}:{port}"
        finally:
            client.connection_pool.release(conn)
            client.close()


# Busy until SCRIPT KILL (or 10 s): Redis answers BUSY to every other command meanwhile.
BUSY_SCRIPT = """
local start = tonumber(redis.call('TIME')[1])
while tonumber(redis.call('TIME')[1]) - start < 10 do end
"""


def busy(client: redis.Redis) -> bool:
    """Whether Redis answers BUSY (a script is running long)."""
    try:
        client.ping()
    except redis.ResponseError as exc:
        return "BUSY" in str(exc)
    return False


def test_a_connection_redis_would_not_describe_for_now_is_asked_again() -> None:
    # A refusal for now (BUSY: a script running long) is not one for good (an ACL's
    # NOPERM): the next push on the connection asks again, and can be fenced.
    def run_script(url: str) -> None:
        with redis.Redis.from_url(url) as c, contextlib.suppress(redis.ResponseError):
            c.eval(BUSY_SCRIPT, 0)  # killed

    async def described(server: RedisServer) -> list[Client | None]:
        client, aclient = redis.Redis.from_url(server.url), aioredis.Redis.from_url(server.url)
        conn = client.connection_pool.get_connection()
        aconn = await cast(Any, aclient.connection_pool).get_connection()
        script = threading.Thread(target=run_script, args=(server.url,), daemon=True)
        try:
            script.start()
            wait_until(server.port, busy, "busy")
            found = [client_of(conn, conn._sock), await _client_of(aconn)]
            cast(Any, client).execute_command("SCRIPT", "KILL")
            script.join(10)
            assert not script.is_alive()
            return [*found, client_of(conn, conn._sock), await _client_of(aconn)]
        finally:
            with contextlib.suppress(redis.ResponseError):  # not busy (any more)
                cast(Any, client).execute_command("SCRIPT", "KILL")
            script.join(10)
            client.connection_pool.release(conn)
            client.close()
            await aclient.connection_pool.release(aconn)
            await aclient.aclose()

    with running(RedisServer()) as server:
        with redis.Redis.from_url(server.url) as admin:
            admin.config_set("lua-time-limit", 10)  # busy-reply-threshold, before Redis 7
        found = asyncio.run(described(server))
    assert found[:2] == [None, None]
    assert None not in found[2:]


@pytest.mark.parametrize(
    ("error", "for_now"),
    [
        ("NOPERM User taskq has no permissions to run the 'client|info' command", False),
        ("ERR unknown subcommand 'INFO'. Try CLIENT HELP.", False),
        ("ERR unknown command 'CLIENT', with args beginning with: 'INFO' ", False),
        ("ERR unsupported command 'client'", False),  # a proxy
        ("BUSY Redis is busy running a script. You can only call SCRIPT KILL", True),
        ("TRYAGAIN Multiple keys request during rehashing of slot", True),
        ("CLUSTERDOWN The cluster is down", True),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
    ],
)
def test_only_a_refusal_for_now_of_client_info_is_asked_again(error: str, for_now: bool) -> None:
    # Asked again on every push, a refusal for good would cost each a round trip.
    reply = cast(Any, BaseParser).parse_error(error)  # as redis-py's parsers turn an error reply
    assert refused_for_now(reply) is for_now


def test_the_fence_of_a_lost_push_closes_only_the_connection_it_went_out_on(
    app: App, r: redis.Redis
) -> None:
    # A restarted Redis gives ids out again from 1, and each server of a failover
    # counts its own: the id of a connection lost with a push may be another client's
    # by the time the push is checked. The address Redis saw tells them apart.
    bystander = redis.Redis.from_url(app.settings.redis_url)
    seen = client_described(cast(Any, bystander).execute_command("CLIENT", "INFO"))
    assert seen is not None
    payload, _ = tasks.add.payload((1, 2), {})  # never pushed
    conn = r.connection_pool.get_connection()
    try:
        other_address = (seen[0], "192.0.2.1:6000")
        assert not landed(conn, Landed(KEYS, "default", None, payload, [other_address]))
        assert bystander.client_id() == seen[0]  # the same connection: not closed
        assert not landed(conn, Landed(KEYS, "default", None, payload, [seen]))
        assert bystander.client_id() != seen[0]  # closed: redis-py connected again
    finally:
        r.connection_pool.release(conn)
        bystander.close()


@pytest.mark.parametrize("how", ["push", "push_many", "apush", "apush_many"])
def test_a_push_refused_for_its_queues_type_whose_reply_is_lost_raises_and_keeps_no_record(
    redis_server: RedisServer, r: redis.Redis, how: str
) -> None:
    # Redis ran the transaction and refused its LPUSH (the queue's key is not a list),
    # and the reply was lost: the records it wrote do not say the push landed.
    proxy = LossyProxy(redis_server.port)

    async def apush() -> None:
        try:
            if how == "apush":
                await tasks.add.apush(1, 2)
            else:
                await tasks.add.apush_many([(1, 2), (3, 4)])
        finally:
            await app.aclose()

    def push() -> None:
        if how == "push":
            tasks.add.push(1, 2)
        elif how == "push_many":
            tasks.add.push_many([(1, 2), (3, 4)])
        else:
            asyncio.run(apush())

    try:
        with tasks_app_at(proxy.url) as app:
            tasks.add.push(0, 0)  # the queue named already: the push is one transaction
            r.delete(KEYS.queue("default"), *r.keys(KEYS.job("*")))
            r.set(KEYS.queue("default"), "not a list")
            proxy.lose_reply_to(b"EXEC")
            with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
                push()
            assert proxy.lost.is_set()
            assert r.keys(KEYS.job("*")) == []
            assert r.get(KEYS.queue("default")) == b"not a list"
    finally:
        proxy.close()


def test_a_push_whose_connection_drops_before_redis_has_it_raises(
    redis_server: RedisServer, r: redis.Redis
) -> None:
    # Not applied (the job's record is not there): the lost connection is raised, as
    # before, and nothing is queued. The queue's first push named it: lost, the next
    # push names it.
    proxy = LossyProxy(redis_server.port)
    try:
        with tasks_app_at(proxy.url):
            proxy.lose_reply_to(b"EXEC", before_redis=True)
            with pytest.raises(redis.ConnectionError):
                tasks.add.push(0, 0)
            assert proxy.lost.is_set()
            assert not r.exists(KEYS.queue("default"), KEYS.queues())
            assert r.keys(KEYS.job("*")) == []
            tasks.add.push(1, 2)
            assert r.llen(KEYS.queue("default")) == 1
            assert len(r.keys(KEYS.job("*"))) == 1
            assert r.smembers(KEYS.queues()) == {b"default"}
    finally:
        proxy.close()


def test_a_worker_runs_every_job_of_a_fetch_whose_reply_was_lost(
    redis_server: RedisServer, redis_url: str, r: redis.Redis
) -> None:
    proxy = LossyProxy(redis_server.port)
    try:
        with tasks_app_at(proxy.url) as app:
            tasks.seen.clear()
            tasks.record.push_many([(n,) for n in range(60)])
            proxy.lose_reply_to(FETCH)  # the master's first fetch
            stats = Worker(app, burst=True, handle_signals=False, concurrency=10).run()
            assert proxy.lost.is_set()
        # Each job ran once, in this worker: none lay in its active list until it stopped.
        assert sorted(tasks.seen) == list(range(60))
        assert stats.done == 60
        assert stats.put_back == 0
        assert r.llen(KEYS.queue("default")) == 0
    finally:
        proxy.close()


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True)
    server.start()
    yield server
    server.kill()


@pytest.mark.parametrize("outage", ["restart", "until felt"])
def test_redis_restart_under_load_every_job_completes(aof_redis: RedisServer, outage: str) -> None:
    import os

    from .proc import TaskqProcess

    app = App(aof_redis.url)
    tasks_app = tasks.app
    env = dict(os.environ, TASKQ_REDIS_URL=aof_redis.url, PYTHONUNBUFFERED="1")
    r = redis.Redis.from_url(aof_redis.url)
    try:
        tasks_app.close()
        tasks_app.configure(redis_url=aof_redis.url)
        jobs = tasks.incr_slowly.push_many([("effects",)] * 400)
        with TaskqProcess(["worker", "--app", "tests.tasks", "-c", "5"], env) as worker:
            worker.wait_for_line(r"job \S+ incr_slowly done")
            aof_redis.kill()  # kill -9; it starts again from its AOF
            if outage == "until felt":  # a restart may be too short for the worker to see
                worker.wait_for_line(r"redis unavailable|redis error")
            aof_redis.start()
            results = taskq.gather(*[tasks_app.job(j.id) for j in jobs], timeout=60)
            assert len(results) == len(jobs)
            assert all(isinstance(n, int) and n >= 1 for n in results)
            assert set(tasks_app.broker.statuses([j.id for j in jobs])) == {"done"}
            worker.signal(signal.SIGTERM)
            assert worker.wait() == 0, worker.log
        assert int(r.get("effects") or 0) >= 400
        assert "Traceback" not in worker.log
    finally:
        r.close()
        app.close()
        tasks_app.close()


def test_shutdown_during_an_outage_still_exits(aof_redis: RedisServer) -> None:
    import os

    from .proc import TaskqProcess

    env = dict(os.environ, TASKQ_REDIS_URL=aof_redis.url, PYTHONUNBUFFERED="1")
    with TaskqProcess(["worker", "--app", "tests.tasks", "--grace", "1"], env) as worker:
        worker.wait_for_line(r"worker \S+ started")
        aof_redis.kill()
        worker.wait_for_line(r"redis error|heartbeat failed")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.log
    assert "stopped (SIGTERM)" in worker.log


def test_password_never_appears_in_logs_or_info() -> None:
    import os

    from click.testing import CliRunner

    from taskq.cli import main

    from .proc import TaskqProcess

    server = RedisServer(password="s3cret-pw")
    server.start()
    try:
        env = dict(os.environ, TASKQ_REDIS_URL=server.url, PYTHONUNBUFFERED="1")
        with TaskqProcess(["worker"], env) as worker:
            worker.wait_for_line(r"worker \S+ started")
            info = CliRunner().invoke(main, ["info"], env={"TASKQ_REDIS_URL": server.url})
            assert info.exit_code == 0, info.output
            assert "workers alive: 1" in info.output
            worker.signal(signal.SIGTERM)
            assert worker.wait() == 0
        wrong = server.url.replace("s3cret-pw", "wrong-pw")
        denied = CliRunner().invoke(main, ["info"], env={"TASKQ_REDIS_URL": wrong})
        assert denied.exit_code == 1
        for output in (worker.log, info.output, denied.output):
            assert "s3cret-pw" not in output
            assert "wrong-pw" not in output
        assert ":***@" in worker.log
    finally:
        server.kill()
