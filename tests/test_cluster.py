"""The whole job lifecycle against a real three-master Redis Cluster on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

import taskq
from taskq import App, scripts
from taskq.abroker import AsyncBroker
from taskq.broker import Broker
from taskq.keys import Keys
from taskq.payload import Payload
from taskq.writes import PUSH_MARK_TTL

from . import tasks
from .helpers import LossyProxy, start_worker, tasks_app_at, wait_event, worker_thread
from .redis_server import RedisCluster, running

KEYS = Keys()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with running(RedisCluster()) as server:
        yield server


@pytest.fixture
def capp(cluster: RedisCluster) -> Iterator[App]:
    cluster.flush()
    with tasks_app_at(cluster.url) as tasks_app:
        yield tasks_app


@pytest.fixture
def rc(cluster: RedisCluster) -> Iterator[redis.RedisCluster]:
    client = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    yield client
    client.close()


def test_keys_of_a_queue_share_one_slot_and_records_spread(rc: redis.RedisCluster) -> None:
    q = "default"
    slots = {
        rc.keyslot(  # type: ignore[no-untyped-call]
            k
        )
        for k in (
            KEYS.queue(q),
            KEYS.active(q, "w"),
            KEYS.delayed(q),
            KEYS.workers(q),
            KEYS.stalls(q),
            KEYS.stats(q),
            KEYS.dead(q),
            KEYS.dead_data(q),
        )
    }
    assert len(slots) == 1
    assert (
        len(
            {
                rc.keyslot(  # type: ignore[no-untyped-call]
                    KEYS.job(str(i))
                )
                for i in range(50)
            }
        )
        > 1
    )


def test_push_run_results_and_failures(capp: App, rc: redis.RedisCluster) -> None:
    jobs = tasks.add.push_many([(i, i) for i in range(50)])
    bad = tasks.boom.push("on a cluster")
    rc.lpush(KEYS.queue("default"), b"garbage")
    stats = taskq.Worker(capp, burst=True, handle_signals=False).run()
    assert (stats.done, stats.failed, stats.dead) == (50, 1, 1)
    assert taskq.gather(*jobs, timeout=5) == [2 * i for i in range(50)]
    with pytest.raises(taskq.JobFailed, match="on a cluster"):
        bad.result(timeout=5)
    dead = capp.broker.dead_letters("default")
    assert {e["reason"] for e in dead} >= {"failed"}
    assert len(dead) == 2


def test_delayed_jobs_and_retries(capp: App) -> None:
    delayed = tasks.incr.push("cluster-once", delay=0.3)
    flaky = tasks.flaky.push("cluster-flaky", 2)
    assert delayed.status() == "scheduled"
    with worker_thread(capp), worker_thread(capp):
        assert delayed.result(timeout=10) == 1
        assert flaky.result(timeout=10) == 3


def test_recovery_after_kill_9(capp: App, cluster: RedisCluster) -> None:
    env = dict(os.environ, TASKQ_REDIS_URL=cluster.url, PYTHONUNBUFFERED="1")
    events = redis.RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    fast = ["--heartbeat-timeout", "1"]
    try:
        with start_worker(env, *fast) as doomed, start_worker(env, *fast) as other:
            job = tasks.stuck_first_time.push("cluster-k9")
            wait_event(events, "start:cluster-k9:1")
            doomed.kill()
            wait_event(events, "start:cluster-k9:2")
            assert job.result(timeout=15) == 2
            other.signal(signal.SIGTERM)
            assert other.wait() == 0, other.log
    finally:
        events.close()


def test_dead_letters_can_be_retried_on_a_cluster(capp: App) -> None:
    job = tasks.boom.push("retry me")
    taskq.Worker(capp, burst=True, handle_signals=False).run()
    (entry,) = capp.broker.dead_letters("default")
    payload, _ = taskq.payload.decode(json.loads(json.dumps(entry))["payload"].encode())
    assert capp.broker.revive("default", entry["id"], payload) == ""
    assert job.status() == "queued"


@pytest.mark.parametrize("due", [False, True], ids=["queued", "delayed"])
@pytest.mark.parametrize("jobs", [1, 3])
@pytest.mark.parametrize("side", ["sync", "async"])
def test_a_push_whose_reply_is_lost_is_queued_once(
    cluster: RedisCluster, rc: redis.RedisCluster, side: str, jobs: int, due: bool
) -> None:
    # redis-py's cluster client sends a command again when its connection drops
    # before the reply: a bare LPUSH sent twice queued every job twice.
    cluster.flush()
    q = "default"
    client_of_tests: Any = rc  # redis-py's cluster client is partly untyped
    node = client_of_tests.get_node_from_key(KEYS.queue(q))
    proxy = LossyProxy(node.port)  # stands between the client and the queue's node

    def remap(address: tuple[str, int]) -> tuple[str, int]:
        return ("127.0.0.1", proxy.port) if address[1] == node.port else address

    payloads = [Payload("add", [i, i], recorded=True) for i in range(jobs)]  # as pushed
    pushed = [(p, p.encode()) for p in payloads]
    when = 4102444800.0 if due else None  # 2100: never due in this test
    # The script is known to the node: else the try whose reply is lost would be an
    # EVALSHA refused with NOSCRIPT, which runs nothing.
    client_of_tests.script_load(scripts.PUSH_ONCE)
    # Only the jobs themselves carry this: their records and the queue's name do not.
    proxy.lose_reply_to(b'"recorded":true')
    try:
        if side == "sync":
            client: Any = redis.RedisCluster(
                host="127.0.0.1", port=cluster.ports[0], address_remap=remap
            )
            try:
                Broker(client).push(q, pushed, when)
            finally:
                client.close()
        else:

            async def apush() -> None:
                aclient: Any = aioredis.RedisCluster(
                    host="127.0.0.1", port=cluster.ports[0], address_remap=remap
                )
                try:
                    await AsyncBroker(aclient).push(q, pushed, when)
                finally:
                    await aclient.aclose()

            asyncio.run(apush())
    finally:
        proxy.close()
    assert proxy.lost.is_set()
    target = KEYS.delayed(q) if due else KEYS.queue(q)
    queued = client_of_tests.execute_command("ZRANGE" if due else "LRANGE", target, 0, -1)
    ids = [json.loads(raw)["id"] for raw in queued]
    assert sorted(ids) == sorted(p.id for p in payloads)
    marks = list(rc.scan_iter(match=f"taskq:{{{q}}}:pushed:*", target_nodes="all"))
    assert len(marks) == (0 if due else 1)  # a ZADD sent twice adds a job once
    assert all(0 < rc.ttl(mark) <= PUSH_MARK_TTL for mark in marks)


def test_a_push_refused_for_its_queues_type_raises_and_keeps_no_record(
    capp: App, rc: redis.RedisCluster
) -> None:
    rc.set(KEYS.queue("default"), "not a list")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        tasks.add.push(1, 2)
    assert rc.get(KEYS.queue("default")) == b"not a list"
    client: Any = rc
    assert not list(client.scan_iter(match="taskq:job:*", target_nodes="all"))
    assert not list(client.scan_iter(match="taskq:{default}:pushed:*", target_nodes="all"))
