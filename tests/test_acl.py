"""taskq under the Redis user the README gives it: its own keys, no admin command."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import pytest
import redis
from click.testing import CliRunner
from redis.backoff import NoBackoff
from redis.retry import Retry

import taskq
from taskq import JobFailed
from taskq.cli import main

from . import tasks
from .helpers import LossyProxy, tasks_app_at, worker_thread
from .redis_server import RedisServer
from .test_dashboard import get, post, serve

README = Path(__file__).resolve().parent.parent / "README.md"
TOKEN = "acl-test-token"


def readme_acl() -> list[str]:
    """The README's ``ACL SETUSER`` line, as arguments."""
    found = re.search(r"^ACL SETUSER .*$", README.read_text(), re.MULTILINE)
    assert found, "the README gives no ACL SETUSER line"
    return shlex.split(found.group(0))


def command(client: redis.Redis, *args: str) -> None:
    """A command given as its words (redis-py's ``execute_command`` is untyped)."""
    cast(Any, client).execute_command(*args)


@pytest.fixture
def acl_url(redis_url: str, redis_server: RedisServer) -> Iterator[str]:
    """The session's server, as the README's user."""
    args = readme_acl()
    user, password = args[2], next(a[1:] for a in args if a.startswith(">"))
    admin = redis.Redis.from_url(redis_url)
    command(admin, *args)
    try:
        yield f"redis://{quote(user)}:{quote(password)}@127.0.0.1:{redis_server.port}/0"
    finally:
        admin.acl_deluser(user)
        admin.close()


def test_the_readme_user_reaches_only_taskq_keys(acl_url: str) -> None:
    client = redis.Redis.from_url(acl_url)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get("someone-else:key")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.config_get("dir")
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.script_flush()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.function_flush()
        client.set("taskq:mine", 1)  # and what is its own, it may write
    finally:
        client.close()


def test_producers_workers_and_commands_need_nothing_more(
    acl_url: str, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"TASKQ_REDIS_URL": acl_url}
    cli = CliRunner()
    with tasks_app_at(acl_url) as app:
        pushed = [tasks.add.push(2, 3), tasks.add.options(key="k").push(4, 4)]
        pushed += tasks.add.push_many([(1, 1), (2, 2)])
        doomed = tasks.boom.push("kaput")  # no retries: dead-lettered
        waiting = tasks.add.push(9, 9)
        aborted = cli.invoke(main, ["abort", waiting.id], env=env)
        assert aborted.exit_code == 0, aborted.output

        async def apush() -> taskq.Job[int]:
            try:
                return await tasks.add.apush(5, 5)
            finally:
                await app.aclose()

        pushed.append(asyncio.run(apush()))
        stats = taskq.Worker(app, burst=True, handle_signals=False).run()
        assert (stats.done, stats.failed) == (5, 1)
        assert [job.result(timeout=5) for job in pushed] == [5, 8, 2, 4, 10]
        assert waiting.status() == "aborted"

        info = cli.invoke(main, ["info", "--json"], env=env)
        assert info.exit_code == 0, info.output
        dead = cli.invoke(main, ["dead", "--json"], env=env)
        assert dead.exit_code == 0, dead.output
        assert json.loads(dead.output)["id"] == doomed.id
        retried = cli.invoke(main, ["retry", "--all"], env=env)
        assert retried.exit_code == 0, retried.output
        stats = taskq.Worker(app, burst=True, handle_signals=False).run()
        assert (stats.done, stats.failed) == (0, 1)  # and dead again
        with serve({**env, "PYTHONUNBUFFERED": "1"}, "--token", TOKEN) as dashboard:
            status, body = get(dashboard + "/api/state")
            assert status == 200, body
            assert [d["task"] for d in json.loads(body)["dead"]] == ["boom"]
            purge = {"queue": "default", "id": doomed.id}
            status, reply = post(dashboard + "/api/dead/purge", purge, TOKEN)
            assert status == 200, reply
        assert cli.invoke(main, ["dead", "--json"], env=env).output == ""

        # An idle worker on two queues waits on both at once; a delayed job is moved
        # onto its queue when due, and so are retries.
        with worker_thread(app, queues=("default", "other")):
            late = tasks.add.options(delay=0.1).push(6, 6)
            assert late.result(timeout=5) == 12
            assert taskq_result(cli, env, late.id) == "12"
            retrying = tasks.only_key_errors_retry.push("KeyError")
            with pytest.raises(JobFailed, match="KeyError"):
                retrying.result(timeout=10)
            assert retrying.info().attempts == 6
        assert "CLIENT is refused" not in caplog.text
    assert r.keys("taskq:{*}:active:*") == []


def taskq_result(cli: CliRunner, env: dict[str, str], job_id: str) -> str:
    out = cli.invoke(main, ["result", job_id], env=env)
    assert out.exit_code == 0, out.output
    return out.output.strip()


def test_a_worker_on_several_queues_without_client_unblock_waits_in_turn(
    acl_url: str, r: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    user = readme_acl()[2]
    command(r, "ACL", "SETUSER", user, "-client|unblock")  # after the README's rules
    with tasks_app_at(acl_url) as app, worker_thread(app, queues=("default", "other")):
        job = tasks.add.push(1, 2)
        assert job.result(timeout=5) == 3
    assert "waiting on several queues in turn: CLIENT is refused" in caplog.text


def proxied(acl_url: str, proxy: LossyProxy) -> str:
    """``acl_url`` through ``proxy``."""
    return re.sub(r":\d+/", f":{proxy.port}/", acl_url)


def test_a_push_held_up_past_its_timeout_lands_once_under_the_readme_user(
    acl_url: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    # The producer closes the connection a late push went out on (CLIENT KILL), as
    # the README's user may: sent again, it is queued once, not twice.
    proxy = LossyProxy(redis_server.port)
    try:
        with tasks_app_at(f"{proxied(acl_url, proxy)}?socket_timeout=0.5") as app:
            retry = Retry(NoBackoff(), 3)
            app.broker.client.connection_pool.connection_kwargs["retry"] = retry
            first = tasks.add.push(0, 0)  # the queue named: the next push is one transaction
            proxy.hold(b"EXEC")
            job = tasks.add.push(1, 2)
            proxy.release()
            assert proxy.delivered.wait(10)
        queued = [json.loads(raw)["id"] for raw in r.lrange("taskq:{default}:queue", 0, -1)]
        assert sorted(queued) == sorted([first.id, job.id])
    finally:
        proxy.release()
        proxy.close()


def test_without_client_kill_a_push_whose_reply_is_lost_still_lands_once(
    acl_url: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    # Refused CLIENT KILL and CLIENT INFO, the producer still asks the job's record.
    command(r, "ACL", "SETUSER", readme_acl()[2], "-client|kill", "-client|info")
    proxy = LossyProxy(redis_server.port)
    try:
        with tasks_app_at(proxied(acl_url, proxy)):
            first = tasks.add.push(0, 0)
            proxy.lose_reply_to(b"EXEC")
            job = tasks.add.push(1, 2)
            assert proxy.lost.is_set()
        queued = [json.loads(raw)["id"] for raw in r.lrange("taskq:{default}:queue", 0, -1)]
        assert sorted(queued) == sorted([first.id, job.id])
    finally:
        proxy.close()
