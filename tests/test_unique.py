"""Unique jobs: push(key=...) makes one job per key while it is queued, delayed or running."""

from __future__ import annotations

import threading

import pytest
import redis

import taskq
from taskq import App
from taskq.keys import Keys

from . import tasks

KEYS = Keys()


def burst(app: App) -> None:
    taskq.Worker(app, burst=True, handle_signals=False).run()


def test_pushing_a_key_again_returns_the_job_that_holds_it(app: App, r: redis.Redis) -> None:
    first = tasks.add.push(1, 2, key="invoice-42")
    again = tasks.add.push(5, 5, key="invoice-42")
    other = tasks.add.options(key="invoice-43").push(1, 1)
    assert again.id == first.id
    assert other.id != first.id
    assert r.llen(KEYS.queue("default")) == 2
    assert r.get(KEYS.unique("default", "invoice-42")) == first.id.encode()
    burst(app)
    assert first.result(timeout=5) == 3  # the first push's arguments
    # Released when the job ended: the key makes a new job again.
    fresh = tasks.add.push(2, 2, key="invoice-42")
    assert fresh.id != first.id
    assert r.get(KEYS.unique("default", "invoice-42")) == fresh.id.encode()


def test_racing_producers_make_one_job(app: App, r: redis.Redis) -> None:
    barrier = threading.Barrier(8)
    ids: list[str] = []

    def produce() -> None:
        barrier.wait()
        ids.append(tasks.add.push(1, 1, key="race").id)

    threads = [threading.Thread(target=produce) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    assert r.llen(KEYS.queue("default")) == 1
    assert len(r.keys("taskq:job:*")) == 1, "the losers' records are taken back"


def test_key_is_held_while_delayed_and_released_when_the_job_fails(
    app: App, r: redis.Redis
) -> None:
    later = tasks.add.push(1, 1, key="later", delay=3600)
    assert tasks.add.push(1, 1, key="later").id == later.id
    assert r.zcard(KEYS.delayed("default")) == 1
    failing = tasks.boom.push("x", key="doomed")
    burst(app)
    assert failing.status() == "failed"
    assert r.get(KEYS.unique("default", "doomed")) is None
    assert tasks.boom.push("y", key="doomed").id != failing.id


def test_a_retried_dead_letter_takes_its_key_again_or_waits_for_its_holder(
    app: App, r: redis.Redis
) -> None:
    from click.testing import CliRunner

    from taskq.cli import main

    env = {"TASKQ_REDIS_URL": app.settings.redis_url}
    failed = tasks.boom.push("x", key="once")
    burst(app)
    holder = tasks.add.push(1, 1, key="once")  # the key was free: a new job took it
    refused = CliRunner().invoke(main, ["retry", failed.id], env=env)
    assert refused.exit_code == 1
    assert f"job {holder.id} holds its unique key 'once'" in refused.output
    assert failed.status() == "failed", "its record is left as it was"
    assert r.hexists(KEYS.dead_data("default"), failed.id)
    burst(app)  # the holder ends, releasing the key
    retried = CliRunner().invoke(main, ["retry", failed.id], env=env)
    assert retried.exit_code == 0, retried.output
    assert r.get(KEYS.unique("default", "once")) == failed.id.encode()
    assert tasks.add.push(2, 2, key="once").id == failed.id  # held by the retried job
    again = CliRunner().invoke(main, ["retry", failed.id], env=env)
    assert (again.exit_code, failed.status()) == (1, "queued")
    assert "no such dead letter" in again.output


def test_async_push_and_bad_uses(app: App) -> None:
    import asyncio

    async def main() -> tuple[str, str]:
        a = await tasks.add.apush(1, 1, key="async")
        b = await tasks.add.apush(2, 2, key="async")
        await app.aclose()
        return a.id, b.id

    a, b = asyncio.run(main())
    assert a == b
    with pytest.raises(TypeError, match="push_many"):
        tasks.add.options(key="k").push_many([(1, 1)])
    for bad in ("", "k" * 129, "lone \udc80"):
        with pytest.raises(ValueError, match="key must be"):
            tasks.add.push(1, 1, key=bad)
