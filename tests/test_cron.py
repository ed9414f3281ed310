"""Cron: each tick runs once across workers; missed ticks are not replayed."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner

import taskq
from taskq import App
from taskq.cli import main
from taskq.config import ConfigError

from .helpers import as_text, worker_thread


@pytest.fixture
def cron_app(redis_url: str) -> Iterator[App]:
    app = App(redis_url)

    @app.cron("* * * * * *", name="every_second", kwargs={"counter": "cron:runs"})
    def every_second(counter: str) -> int:
        with redis.Redis.from_url(redis_url) as client:
            client.rpush("events", "tick")
            return int(client.incr(counter))

    yield app
    app.close()


def test_each_tick_runs_once_across_two_workers(cron_app: App, r: redis.Redis) -> None:
    started = time.time()
    with worker_thread(cron_app), worker_thread(cron_app):
        for _ in range(3):
            assert r.blpop(["events"], timeout=10) is not None
    ids = sorted(as_text(k).split(":", 2)[2] for k in r.keys("taskq:job:cron-every_second-*"))
    ticks = [int(i.rsplit("-", 1)[1]) for i in ids]
    runs = int(r.get("cron:runs") or 0)
    done = [i for i in ids if cron_app.job(i).status() == "done"]
    assert runs >= 3
    # A tick pushed as the workers stopped may still wait in the queue; every run
    # has a job of its own, and no tick has two.
    assert len(done) == runs, "a tick ran twice, or a run has no job of its own"
    assert len(set(ticks)) == len(ticks)
    assert min(ticks) >= int(started), "no tick from before the workers started"


def test_info_lists_schedules(cron_app: App) -> None:
    taskq.Worker(cron_app, burst=True, handle_signals=False).run()
    out = CliRunner().invoke(main, ["info"], env={"TASKQ_REDIS_URL": cron_app.settings.redis_url})
    assert out.exit_code == 0, out.output
    assert "cron every_second: * * * * * * (UTC) -> every_second, next run" in out.output


def test_bad_schedules_are_refused_at_once(redis_url: str) -> None:
    app = App(redis_url)
    with pytest.raises(ConfigError, match="not a cron expression"):
        app.cron("every minute")(lambda: None)
    with pytest.raises(ConfigError, match="unknown time zone"):
        app.cron("* * * * *", tz="Mars/Olympus")(lambda: None)
    with pytest.raises(TypeError, match="bad arguments"):
        app.cron("* * * * *", args=(1, 2))(lambda: None)

    def on(day: object) -> None: ...

    # Pushed by every worker at every tick: refused now, not at the first tick.
    with pytest.raises(TypeError, match=r"bad arguments: .* must be JSON-serialisable"):
        app.cron("* * * * *", kwargs={"day": datetime.date(2026, 1, 1)})(on)
    assert app.schedules == {}
