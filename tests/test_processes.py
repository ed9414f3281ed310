"""`taskq worker --processes N`: supervised worker processes."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import redis

from taskq import App
from taskq.keys import Keys
from taskq.worker.supervisor import Supervisor

from . import tasks
from .helpers import as_text, wait_event
from .proc import TaskqProcess

KEYS = Keys()


def test_four_processes_run_ten_thousand_jobs_exactly_once(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    jobs = tasks.incr.push_many([("effects",)] * 10_000)
    args = [
        "worker",
        "--app",
        "tests.tasks",
        "--processes",
        "4",
        "--burst",
        "-c",
        "20",
        "--log-level",
        "warning",
    ]
    with TaskqProcess(args, worker_env) as supervisor:
        assert supervisor.wait(timeout=240) == 0, supervisor.log
    assert r.get("effects") == b"10000"
    statuses = app.broker.statuses([j.id for j in jobs])
    assert statuses.count("done") == 10_000


def test_sigterm_to_the_parent_drains_every_child(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    args = ["worker", "--app", "tests.tasks", "--processes", "2", "-c", "1", "--grace", "30"]
    with TaskqProcess(args, worker_env) as supervisor:
        a = tasks.slow.push(1.0, name="a")
        b = tasks.slow.push(1.0, name="b")
        started = {r.blpop(["events"], timeout=20) for _ in range(2)}
        assert {item[1] for item in started if item} == {b"start:a", b"start:b"}
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(timeout=40) == 0, supervisor.log
    assert (a.status(), b.status()) == ("done", "done")
    assert supervisor.log.count("stopped (SIGTERM): 1 done") == 2
    assert "all worker processes stopped (SIGTERM)" in supervisor.log


def test_a_killed_child_is_restarted_and_its_job_recovered(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    args = ["worker", "--app", "tests.tasks", "--processes", "2", "--heartbeat-timeout", "1"]
    with TaskqProcess(args, worker_env) as supervisor:
        job = tasks.stuck_first_time.push("child")
        wait_event(r, "start:child:1")
        # The child holding the job: the one whose active list has it.
        holder = next(
            as_text(key).rsplit(":", 1)[1]
            for key in r.keys("taskq:{default}:active:*")
            if any(job.id.encode() in raw for raw in r.lrange(key, 0, -1))
        )
        pid = r.hget(KEYS.worker(holder), "pid")
        assert pid is not None
        os.kill(int(pid), signal.SIGKILL)
        supervisor.wait_for_line(r"exited with -9; restarting")
        wait_event(r, "start:child:2")
        assert job.result(timeout=15) == 2
        # The restarted child is up: its own "worker ... started" line, the third.
        supervisor.wait_for_line(r"worker \S+ started:", timeout=15, count=3)
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(timeout=40) == 0, supervisor.log


def test_a_signal_while_every_child_awaits_its_restart_stops_the_supervisor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class SignalledMeanwhile(Supervisor):
        def _wait(self, restarts: dict[int, tuple[float, int]]) -> None:
            if restarts and not self.children and not self.signals:
                os.kill(os.getpid(), signal.SIGTERM)  # handled in this, the main, thread
            super()._wait(restarts)

    caplog.set_level(logging.INFO)
    # Each child fails at start (exit 1): both wait out their restart backoff.
    crashing = SignalledMeanwhile(["--app", "nosuchmodule"], 2, dict(os.environ))
    assert crashing.run() == 0
    assert crashing.signals == [signal.SIGTERM]
    assert caplog.text.count("restarting in 0.5s") == 2
    assert "all worker processes stopped (SIGTERM)" in caplog.text
