"""Redis Sentinel: ``redis+sentinel://`` URLs, and a failover under a running worker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskq import App
from taskq.config import ConfigError, mask_url
from taskq.connection import SentinelTarget, connect, sentinel_target
from taskq.keys import Keys

from . import tasks
from .helpers import start_worker, tasks_app_at, wait_event
from .redis_server import RedisSentinel, free_port, running, wait_until


# -- the URL ---------------------------------------------------------------------------
def test_a_sentinel_url_names_the_sentinels_the_service_and_the_logins() -> None:
    url = "redis+sentinel://us%40r:p%3Ass@a:1,[::1]:2,b/main/3?sentinel_password=sp"
    assert sentinel_target(url) == SentinelTarget(
        nodes=(("a", 1), ("::1", 2), ("b", 26379)),
        service="main",
        db=3,
        username="us@r",
        password="p:ss",
        sentinel_password="sp",
        ssl=False,
    )
    assert sentinel_target(
        "rediss+sentinel://s/main?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem#ignored"
    ) == SentinelTarget(
        nodes=(("s", 26379),),
        service="main",
        ssl=True,
        tls=(("ssl_ca_certs", "/ca.pem"), ("ssl_cert_reqs", "required")),
    )
    assert sentinel_target("redis+sentinel://[fe80::1%25eth0]:5/m").nodes == (  # type: ignore[union-attr]
        ("fe80::1%eth0", 5),
    )
    assert sentinel_target("redis+sentinel://:pw@s/main") == SentinelTarget(
        nodes=(("s", 26379),), service="main", password="pw"
    )
    assert sentinel_target("redis://localhost:6379/0") is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s:26379", "name the service"),
        ("redis+sentinel://s/main/0/x", "name the service"),
        ("redis+sentinel://s/main/zero", "the database must be a number"),
        ("redis+sentinel://s:port/main", "bad sentinel port"),
        ("redis+sentinel://s:70000/main", "bad sentinel port"),
        ("redis+sentinel://:1/main", "has no host"),
        ("redis+sentinel://[::1/main", "bad sentinel address"),
        ("redis+sentinel://s/main?password=x", "unknown option 'password'"),
        ("redis+sentinel://s/main?ssl_ca_certs=x", "unknown option 'ssl_ca_certs'"),
        ("redis+sentinel://s:/main", "bad sentinel port"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_saying_why(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        connect(url)


def test_tls_options_reach_the_master_and_the_sentinels_connections() -> None:
    client = connect("rediss+sentinel://s:1/main/2?ssl_ca_certs=/ca.pem&sentinel_password=sp")
    try:  # no I/O yet: only what the connections will be made with
        pool: Any = client.connection_pool
        assert pool.connection_class.__name__ == "SentinelManagedSSLConnection"
        assert (pool.connection_kwargs["ssl_ca_certs"], pool.connection_kwargs["db"]) == (
            "/ca.pem",
            2,
        )
        (node,) = pool.sentinel_manager.sentinels
        options = node.connection_pool.connection_kwargs
        assert (options["ssl_ca_certs"], options["password"]) == ("/ca.pem", "sp")
        assert node.connection_pool.connection_class.__name__ == "SSLConnection"
    finally:
        client.close()


def test_both_passwords_of_a_sentinel_url_are_masked() -> None:
    masked = mask_url("redis+sentinel://u:secret@a,b/main?sentinel_password=other")
    assert masked == "redis+sentinel://u:***@a,b/main?sentinel_password=***"


def test_no_sentinel_answering_is_one_short_line_naming_each() -> None:
    from click.testing import CliRunner

    from taskq.cli import main

    ports = [free_port(), free_port()]
    url = f"redis+sentinel://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/mymaster"
    out = CliRunner().invoke(main, ["info"], env={"TASKQ_REDIS_URL": url})
    assert out.exit_code == 1
    assert out.output.startswith(f"Error: Redis at {url}: No master found for 'mymaster'")
    for port in ports:
        assert f"sentinel 127.0.0.1:{port} - network:ConnectionError" in out.output
    assert "ConnectionPool" not in out.output
    assert len(out.output) < 400


# -- a real sentinel -------------------------------------------------------------------
@pytest.fixture
def sentinel() -> Iterator[RedisSentinel]:
    with running(RedisSentinel()) as watched:
        yield watched


@pytest.fixture
def sapp(sentinel: RedisSentinel) -> Iterator[App]:
    with tasks_app_at(sentinel.url) as tasks_app:
        yield tasks_app


def test_through_a_sentinel_jobs_are_pushed_to_the_master_and_run(
    sapp: App, sentinel: RedisSentinel
) -> None:
    assert sapp.broker._raw  # the fast path: writes straight on a connection
    jobs = [tasks.add.push(i, i) for i in range(20)]
    master = redis.Redis(port=sentinel.master.port)
    assert master.llen(Keys().queue("default")) == 20
    from taskq import Worker

    stats = Worker(sapp, burst=True, handle_signals=False).run()
    assert stats.done == 20
    assert [job.result(timeout=5) for job in jobs] == [2 * i for i in range(20)]
    sapp.close()  # the worker closed its clients; closed, they let go of the sentinel too
    with redis.Redis(port=sentinel.port) as asking:
        assert len(asking.client_list()) == 1, asking.client_list()


def test_a_worker_and_a_producer_go_on_with_the_new_master_after_a_failover(
    sapp: App, sentinel: RedisSentinel
) -> None:
    env = dict(os.environ, TASKQ_REDIS_URL=sentinel.url, PYTHONUNBUFFERED="1")
    events = connect(sentinel.url)
    # Two queues: the master's waits on each go through the failover too.
    with start_worker(env, "--queue", "default", "--queue", "other") as worker:
        before = tasks.slow.push(0, name="before")
        wait_event(events, "start:before")
        wait_event(events, "end:before")
        assert before.result(timeout=5) == "before"
        with redis.Redis(port=sentinel.master.port) as master:
            master.incr("synced")  # WAIT counts this connection's writes: all before it too
            assert master.wait(1, 10_000) == 1  # the replica has every write so far
        sentinel.master.kill()  # kill -9: the sentinel promotes the replica
        wait_until(sentinel.port, sentinel.promoted, "failed over")
        after = tasks.slow.push(0, name="after")  # the producer's connection is remade
        wait_event(events, "start:after", timeout=30)
        assert after.result(timeout=5) == "after"
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0, worker.log
    assert "stopped (SIGTERM)" in worker.log
