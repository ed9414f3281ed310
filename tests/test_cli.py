"""The `taskq` command, run as the real console script (and in-process with CliRunner)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

import taskq
from taskq import App, Worker
from taskq.cli import main

from . import tasks
from .redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = Path(sys.executable).with_name("taskq")
TASKQ = str(_SCRIPT) if _SCRIPT.exists() else (shutil.which("taskq") or "taskq")
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
QUEUE = "taskq:{default}:queue"
UNREACHABLE = "redis://:s3cret@127.0.0.1:1/0"


def taskq_cli(
    env: dict[str, str], *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run `taskq ARGS` to completion (killed if it outlives ``timeout``)."""
    return subprocess.run(
        [TASKQ, *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_error_runs: dict[tuple[str, ...], subprocess.CompletedProcess[str]] = {}


def failing_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`taskq ARGS` for a command that fails before touching data: run once per session."""
    key = (env["TASKQ_REDIS_URL"], *args)
    if key not in _error_runs:
        _error_runs[key] = taskq_cli(env, *args)
    return _error_runs[key]


def ids_of(out: subprocess.CompletedProcess[str], n: int, returncode: int = 0) -> list[str]:
    """The job ids `taskq push` printed: exactly ``n`` lines of 32 hex digits."""
    assert out.returncode == returncode, out.stderr
    ids = out.stdout.splitlines()
    assert len(ids) == n, out.stdout
    for job_id in ids:
        assert JOB_ID.match(job_id), job_id
    assert len(set(ids)) == n
    return ids


class BackgroundWorker:
    """A `taskq worker` subprocess, its output in a file (a pipe could fill up and block it)."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [TASKQ, "worker", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM, then wait for the worker to drain and exit; returns its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker ignored SIGTERM:\n{self.log}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Kill the worker if the test did not stop it, and close its log."""
        self.kill()
        self._log.close()


@contextmanager
def background_worker(
    env: dict[str, str], tmp_path: Path, *args: str
) -> Iterator[BackgroundWorker]:
    worker = BackgroundWorker(env, tmp_path / "worker.log", *args)
    try:
        yield worker
    finally:
        worker.close()


def burst(app: App) -> None:
    Worker(app, burst=True, handle_signals=False).run()


# -- push --------------------------------------------------------------------------------
def test_push_prints_one_id_per_job_and_queues_them(
    worker_env: dict[str, str], r: redis.Redis
) -> None:
    ids = ids_of(taskq_cli(worker_env, "push", "0", "0"), 2)
    queued = [json.loads(raw) for raw in r.lrange(QUEUE, 0, -1)]
    assert {job["id"] for job in queued} == set(ids)
    assert all(job["task"] == "sleep" and job["args"] == [0] for job in queued)
    for job_id in ids:
        assert r.hget(f"taskq:job:{job_id}", "status") == b"queued"
    assert r.smembers("taskq:queues") == {b"default"}


def test_push_count_makes_copies(worker_env: dict[str, str], r: redis.Redis) -> None:
    ids_of(taskq_cli(worker_env, "push", "0", "--count", "3"), 3)
    assert r.llen(QUEUE) == 3
    ids_of(taskq_cli(worker_env, "push", "1", "2", "--count", "2"), 4)
    args = sorted(json.loads(raw)["args"][0] for raw in r.lrange(QUEUE, 0, -1))
    assert args == [0, 0, 0, 1, 1, 2, 2]


def test_push_args_and_kwargs_run_by_a_burst_worker_then_result(
    worker_env: dict[str, str],
) -> None:
    [by_args] = ids_of(
        taskq_cli(worker_env, "push", "--task", "add", "--app", "tests.tasks", "--args", "[1,2]"),
        1,
    )
    [by_kwargs] = ids_of(
        taskq_cli(
            worker_env,
            *("push", "--task", "add", "--app", "tests.tasks"),
            *("--args", "[10]", "--kwargs", '{"b": 20}'),
        ),
        1,
    )
    ran = taskq_cli(worker_env, "worker", "--app", "tests.tasks", "--burst")
    assert ran.returncode == 0, ran.stderr
    assert "2 done, 0 failed" in ran.stderr

    out = taskq_cli(worker_env, "result", by_args)
    assert (out.returncode, out.stdout) == (0, "3\n"), out.stderr
    out = taskq_cli(worker_env, "result", by_kwargs, "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["status"] == "done"
    assert record["result"] == 30
    assert (record["task"], record["args"], record["kwargs"]) == ("add", [10], {"b": 20})


def test_a_unix_socket_url_serves_producers_workers_and_commands(
    worker_env: dict[str, str], redis_server: RedisServer, r: redis.Redis
) -> None:
    env = {**worker_env, "TASKQ_REDIS_URL": redis_server.unix_url}
    [job_id] = ids_of(
        taskq_cli(env, "push", "--task", "add", "--app", "tests.tasks", "--args", "[4,5]"), 1
    )
    assert r.llen(QUEUE) == 1  # the same server, seen over TCP
    ran = taskq_cli(env, "worker", "--app", "tests.tasks", "--burst")
    assert ran.returncode == 0, ran.stderr
    assert "1 done, 0 failed" in ran.stderr
    out = taskq_cli(env, "result", job_id)
    assert (out.returncode, out.stdout) == (0, "9\n"), out.stderr


# -- result ------------------------------------------------------------------------------
def test_result_of_a_failed_job_exits_1_with_its_traceback(
    app: App, worker_env: dict[str, str]
) -> None:
    job = tasks.boom.push("cli kaput")
    burst(app)
    out = taskq_cli(worker_env, "result", job.id)
    assert out.returncode == 1
    assert out.stdout == ""
    assert "raise ValueError(message)" in out.stderr
    assert out.stderr.rstrip().endswith(f"job {job.id} failed: ValueError: cli kaput")

    as_json = taskq_cli(worker_env, "result", job.id, "--json")
    assert as_json.returncode == 1
    record = json.loads(as_json.stdout)
    assert (record["status"], record["error"]) == ("failed", "ValueError: cli kaput")


def test_result_of_a_queued_job_exits_2(app: App, worker_env: dict[str, str]) -> None:
    job = tasks.add.push(1, 2)
    out = taskq_cli(worker_env, "result", job.id)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.strip() == f"job {job.id} is queued"
    as_json = taskq_cli(worker_env, "result", job.id, "--json")
    assert as_json.returncode == 2
    assert json.loads(as_json.stdout)["status"] == "queued"


def test_result_wait_of_a_finished_job(app: App, worker_env: dict[str, str]) -> None:
    job = tasks.add.push(4, 5)
    burst(app)
    out = taskq_cli(worker_env, "result", job.id, "--wait", "--timeout", "5")
    assert (out.returncode, out.stdout) == (0, "9\n"), out.stderr


def test_result_wait_that_times_out_exits_2(app: App, worker_env: dict[str, str]) -> None:
    job = tasks.add.push(1, 2)
    out = taskq_cli(worker_env, "result", job.id, "--wait", "--timeout", "0.1")
    assert out.returncode == 2, out.stderr


# -- push --wait -------------------------------------------------------------------------
def test_push_wait_with_a_worker_running(worker_env: dict[str, str], tmp_path: Path) -> None:
    with background_worker(worker_env, tmp_path) as worker:
        out = taskq_cli(worker_env, "push", "1", "1", "1", "--wait")
        assert out.returncode == 0, f"{out.stderr}\nworker:\n{worker.log}"
        ids = ids_of(out, 3)
        for job_id in ids:
            assert f'{job_id} done: "Done"' in out.stderr
        assert worker.stop() == 0, worker.log
    assert "3 done, 0 failed" in worker.log


def test_push_wait_exits_1_when_a_job_fails(worker_env: dict[str, str], tmp_path: Path) -> None:
    with background_worker(worker_env, tmp_path, "--app", "tests.tasks") as worker:
        out = taskq_cli(
            worker_env, "push", "--task", "boom", "--app", "tests.tasks", '"x"', "--wait"
        )
        assert out.returncode == 1, f"{out.stderr}\nworker:\n{worker.log}"
        [job_id] = ids_of(out, 1, returncode=1)
        assert f"{job_id} failed: ValueError: x" in out.stderr
        assert worker.stop() == 0, worker.log


def test_push_wait_timeout_without_a_worker(worker_env: dict[str, str]) -> None:
    out = taskq_cli(worker_env, "push", "0", "0", "--wait", "--timeout", "0.2")
    assert out.returncode == 1
    assert len(out.stdout.splitlines()) == 2
    assert "timed out: 2 job(s) did not finish within 0.2s" in out.stderr
    assert out.stderr.count("not finished: queued") == 2


def test_push_wait_reports_an_aborted_job_as_ended(
    app: App, capsys: pytest.CaptureFixture[str]
) -> None:
    from taskq.cli import _wait_and_report

    job = tasks.add.push(1, 1)
    assert job.abort()
    assert _wait_and_report([job], 1) == 1
    assert capsys.readouterr().err == f"{job.id} aborted: Aborted before it ran\n"


# -- info --------------------------------------------------------------------------------
COUNTS = ("queued", "in_progress", "done", "failed", "dead")


def column(header: str, row: str, label: str) -> str:
    """The cell of ``row`` under ``label`` (numbers are right-aligned to their label)."""
    end = header.index(label) + len(label)
    return row[:end].rsplit(maxsplit=1)[-1]


def test_info_shows_queue_counts(app: App, worker_env: dict[str, str]) -> None:
    tasks.add.push(1, 2)
    tasks.add.push(3, 4)
    tasks.boom.push("counted")
    burst(app)
    tasks.add.push_many([(5, 5), (6, 6), (7, 7)])
    expected = {"queued": 3, "in_progress": 0, "done": 2, "failed": 1, "dead": 1}

    as_json = taskq_cli(worker_env, "info", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    [queue] = report["queues"]
    assert queue["queue"] == "default"
    assert {c: queue[c] for c in COUNTS} == expected
    assert queue["workers"] == []
    assert report["workers"] == []

    out = taskq_cli(worker_env, "info")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"redis: {worker_env['TASKQ_REDIS_URL']}"
    header, row = lines[1], lines[2]
    assert header.split()[0] == "queue"
    assert row.split()[0] == "default"
    for label, count in [("queued", 3), ("in progress", 0), ("done", 2), ("failed", 1)]:
        assert column(header, row, label) == str(count), out.stdout
    assert column(header, row, "dead") == "1", out.stdout
    assert lines[3] == "workers alive: 0"


def test_data_edited_by_hand_gets_a_clear_line_not_a_traceback(
    app: App, r: redis.Redis, worker_env: dict[str, str]
) -> None:
    job = tasks.add.push(1, 2)
    r.hset("taskq:{default}:stats", mapping={"done": "many", "failed": "2"})
    r.hset("taskq:cron", mapping={"by-hand": "not json"})
    r.hset("taskq:{default}:aborts", mapping={"some-id": "never"})
    out = taskq_cli(worker_env, "info", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["queues"][0]["done"], report["queues"][0]["failed"]) == (0, 2)
    assert report["schedules"] == []
    assert app.broker.abort_requests("default", 0.0) == set()  # unreadable: stale
    assert r.hlen("taskq:{default}:aborts") == 0
    r.hset(f"taskq:job:{job.id}", "attempts", "several")
    out = taskq_cli(worker_env, "result", job.id)
    assert (out.returncode, out.stderr) == (
        1,
        f"Error: job {job.id}: its record cannot be read "
        "(invalid literal for int() with base 10: 'several')\n",
    )


def test_info_of_an_empty_redis(worker_env: dict[str, str]) -> None:
    out = taskq_cli(worker_env, "info")
    assert out.returncode == 0, out.stderr
    assert "(no queues yet)" in out.stdout
    assert "workers alive: 0" in out.stdout
    as_json = taskq_cli(worker_env, "info", "--json")
    assert json.loads(as_json.stdout) == {"queues": [], "workers": [], "schedules": []}


def test_info_shows_live_workers_and_jobs_in_progress(
    app: App, r: redis.Redis, worker_env: dict[str, str], tmp_path: Path
) -> None:
    with background_worker(worker_env, tmp_path, "--app", "tests.tasks", "--grace", "0") as worker:
        tasks.slow.push(60, name="held")
        started = r.blpop(["events"], timeout=15)
        assert started == (b"events", b"start:held"), worker.log

        as_json = taskq_cli(worker_env, "info", "--json")
        assert as_json.returncode == 0, as_json.stderr
        report: dict[str, Any] = json.loads(as_json.stdout)
        [live] = report["workers"]
        assert live["pid"] == str(worker.proc.pid)
        assert live["queues"] == "default"
        [queue] = report["queues"]
        assert (queue["queue"], queue["queued"], queue["in_progress"]) == ("default", 0, 1)
        assert queue["workers"] == [live["id"]]

        out = taskq_cli(worker_env, "info")
        assert out.returncode == 0, out.stderr
        assert "workers alive: 1" in out.stdout
        assert f"  {live['id']}  queues=default  pid={worker.proc.pid}  heartbeat" in out.stdout
        lines = out.stdout.splitlines()
        assert column(lines[1], lines[2], "in progress") == "1", out.stdout

        assert worker.stop() == 0, worker.log
    gone = json.loads(taskq_cli(worker_env, "info", "--json").stdout)
    assert gone["workers"] == []


# -- errors: one line, non-zero, no traceback --------------------------------------------
ONE_LINE = [
    pytest.param(("push", "0", "--redis-url", UNREACHABLE), id="push-unreachable"),
    pytest.param(("info", "--redis-url", UNREACHABLE), id="info-unreachable"),
    pytest.param(("result", "abc", "--redis-url", UNREACHABLE), id="result-unreachable"),
    pytest.param(("worker", "--redis-url", UNREACHABLE), id="worker-unreachable"),
    pytest.param(("push", "--app", "nosuchmodule", "0"), id="push-bad-app"),
    pytest.param(("worker", "--app", "nosuchmodule"), id="worker-bad-app"),
    pytest.param(("push", "--app", "tests.tasks:nothing", "0"), id="bad-app-attr"),
    pytest.param(("result", "0" * 32), id="unknown-job"),
    pytest.param(("info", "--redis-url", "bogus://h/0"), id="info-bad-url"),
    pytest.param(
        ("push", "--task", "add", "--app", "tests.tasks", "--args", "not json"),
        id="bad-json-args",
    ),
    pytest.param(("push", "not json"), id="bad-json-value"),
    pytest.param(("push", "--task", "nosuchtask", "0"), id="unknown-task"),
    pytest.param(
        ("push", "--task", "add", "--app", "tests.tasks", "--args", "[1]"),
        id="wrong-arguments",
    ),
    pytest.param(
        ("push", "0", "--redis-url", "bogus://h/0"),
        id="push-bad-url",
    ),
    pytest.param(
        ("info", "--redis-url", "redis-cluster://:s3cret@127.0.0.1:1/0"),
        id="cluster-unreachable",
    ),
]


@pytest.mark.parametrize("args", ONE_LINE)
def test_errors_exit_non_zero_without_a_traceback(
    worker_env: dict[str, str], args: tuple[str, ...]
) -> None:
    out = failing_cli(worker_env, *args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert out.stdout == ""
    assert "Error: " in out.stderr


@pytest.mark.parametrize("args", ONE_LINE)
def test_errors_are_one_line(worker_env: dict[str, str], args: tuple[str, ...]) -> None:
    out = failing_cli(worker_env, *args)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("Error: ")
    assert out.returncode == 1


@pytest.mark.parametrize("command", ["push", "info", "result", "worker"])
def test_unreachable_redis_does_not_show_the_password(
    worker_env: dict[str, str], command: str
) -> None:
    args = {"push": ["push", "0"], "info": ["info"], "result": ["result", "abc"]}.get(
        command, [command]
    )
    out = taskq_cli(worker_env, *args, "--redis-url", UNREACHABLE)
    assert out.returncode == 1
    assert "s3cret" not in out.stdout + out.stderr
    assert "redis://:***@127.0.0.1:1/0" in out.stderr
    # The same through the environment variable:
    env = {**worker_env, "TASKQ_REDIS_URL": UNREACHABLE}
    out = taskq_cli(env, *args)
    assert out.returncode == 1
    assert "s3cret" not in out.stdout + out.stderr
    assert "redis://:***@127.0.0.1:1/0" in out.stderr


def test_error_messages_name_the_problem(worker_env: dict[str, str]) -> None:
    out = failing_cli(worker_env, "push", "--app", "nosuchmodule", "0")
    assert "cannot import --app 'nosuchmodule'" in out.stderr
    out = failing_cli(worker_env, "push", "--task", "nosuchtask", "0")
    assert "no task named 'nosuchtask' (registered: more_work, sleep)" in out.stderr
    out = taskq_cli(worker_env, "push", "--task", "add", "--app", "tests.tasks", "--args", "x y")
    assert "'x y' is not JSON" in out.stderr
    assert "--args" in out.stderr
    out = failing_cli(worker_env, "push", "--app", "tests.tasks:nothing", "0")
    assert "tests.tasks.nothing is not a taskq.App" in out.stderr
    for spec in ("", ":app", ".tasks"):
        out = failing_cli(worker_env, "worker", "--burst", "--app", spec)
        assert (out.returncode, out.stderr) == (
            1,
            f"Error: --app {spec!r}: name a module, as MODULE or MODULE:ATTR\n",
        )


# -- in-process (CliRunner) --------------------------------------------------------------
def test_cli_runner_push_usage_errors() -> None:
    runner = CliRunner()
    nothing = runner.invoke(main, ["push"])
    assert nothing.exit_code == 2
    assert "nothing to push" in nothing.output
    both = runner.invoke(main, ["push", "1", "--args", "[1]"])
    assert both.exit_code == 2
    assert "either VALUES or --args/--kwargs" in both.output
    not_array = runner.invoke(main, ["push", "--args", '{"a": 1}'])
    assert not_array.exit_code == 1  # a bad value: one-line error, not usage
    assert "must be a JSON array" in not_array.output
    not_object = runner.invoke(main, ["push", "--args", "[1]", "--kwargs", "[1]"])
    assert not_object.exit_code == 1
    assert "must be a JSON object" in not_object.output


def test_cli_runner_unreachable_redis_is_a_click_error() -> None:
    result = CliRunner().invoke(main, ["info", "--redis-url", UNREACHABLE])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # not an unhandled RedisError
    assert "s3cret" not in result.output
    assert result.output.startswith("Error: Redis at redis://:***@127.0.0.1:1/0:")


def test_cli_runner_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert taskq.__version__ in result.output


# -- demo --------------------------------------------------------------------------------
def test_push_refuses_memory_url_whose_jobs_would_vanish(worker_env: dict[str, str]) -> None:
    out = failing_cli({**worker_env, "TASKQ_REDIS_URL": "memory://x"}, "push", "1")
    assert (out.returncode, out.stdout) == (1, "")
    assert "memory:// lives inside one process" in out.stderr


def test_demo_runs_without_redis(worker_env: dict[str, str]) -> None:
    env = {**worker_env, "TASKQ_REDIS_URL": "redis://127.0.0.1:1/0"}  # unreachable: unused
    out = taskq_cli(env, "demo", "0.1", "0.2")
    assert out.returncode == 0, out.stderr
    assert "results: ['Done', 'Done', 'Finished more work 0.1']" in out.stdout.splitlines()
    assert re.search(r"^3 jobs finished in \d+\.\d\ds", out.stdout, re.MULTILINE)
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"TASKQ_CONCURRENCY": "abc"}, [], "Error: TASKQ_CONCURRENCY='abc' is not a whole"),
        ({}, ["nan"], "Invalid value for SECONDS: nan is not a number of seconds"),
        ({}, ["inf"], "inf is not in the range 0<=x<=86400"),
    ],
)
def test_demo_refuses_bad_input_in_one_line(
    env: dict[str, str], args: list[str], message: str
) -> None:
    out = CliRunner().invoke(main, ["demo", *args], env=env)
    assert out.exit_code == (2 if args else 1)
    assert message in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)


def test_the_taskq_command_loads_no_optional_stack_it_does_not_use() -> None:
    # Every `taskq push` and `taskq worker` would pay for them at start-up (the web
    # stack alone took ~30 ms): each is imported where it is used.
    heavy = ("starlette", "uvicorn", "prometheus_client", "croniter", "fakeredis")
    code = f"import sys, taskq.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
