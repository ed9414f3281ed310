"""Prometheus metrics scraped from a real worker, checked against the jobs pushed."""

from __future__ import annotations

import signal

import redis

import taskq
from taskq import App

from . import tasks
from .helpers import scrape
from .proc import TaskqProcess
from .redis_server import free_port


def test_counters_match_the_jobs_pushed(app: App, worker_env: dict[str, str]) -> None:
    port = free_port()
    args = ["worker", "--app", "tests.tasks", "--metrics-port", str(port)]
    with TaskqProcess(args, worker_env) as worker:
        worker.wait_for_line(r"worker \S+ started")
        good = tasks.add.push_many([(i, i) for i in range(20)])
        bad = [tasks.boom.push("x") for _ in range(3)]
        taskq.gather(*good, *bad, timeout=20, return_exceptions=True)
        queued = tasks.add.push(1, 1, delay=3600)  # waits in the delayed set
        m = scrape(port)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0, worker.log
    assert m[("taskq_jobs_finished_total", (("outcome", "done"), ("task", "add")))] == 20
    assert m[("taskq_jobs_finished_total", (("outcome", "failed"), ("task", "boom")))] == 3
    assert m[("taskq_job_duration_seconds_count", (("task", "add"),))] == 20
    assert m[("taskq_job_wait_seconds_count", (("task", "boom"),))] == 3
    assert m[("taskq_jobs_in_progress", ())] == 0
    assert m[("taskq_queue_depth", (("queue", "default"), ("state", "delayed")))] == 1
    assert m[("taskq_queue_depth", (("queue", "default"), ("state", "dead")))] == 3
    assert m[("taskq_workers_alive", (("queue", "default"),))] == 1
    assert queued.status() == "scheduled"


def test_processes_are_summed_by_the_parent(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    port = free_port()
    args = ["worker", "--app", "tests.tasks", "--processes", "2", "--metrics-port", str(port)]
    with TaskqProcess(args, worker_env) as supervisor:
        supervisor.wait_for_line(r"worker \S+ started:", count=2)  # both children up
        jobs = tasks.add.push_many([(i, 1) for i in range(60)])
        taskq.gather(*jobs, timeout=30)
        m = scrape(port)
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(timeout=40) == 0, supervisor.log
    assert m[("taskq_jobs_finished_total", (("outcome", "done"), ("task", "add")))] == 60
    assert m[("taskq_workers_alive", (("queue", "default"),))] == 2
