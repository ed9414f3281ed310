"""The ``taskq`` command. Every option also reads a ``TASKQ_*`` environment variable."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from . import demo as demo_tasks
from .app import App, Task
from .cli_common import app_option, friendly_errors, load_app, setup_logging, url_option
from .cli_dead import dead, purge, retry
from .config import MULTIPROC_ENV, ConfigError, mask_url
from .connection import is_memory
from .dashboard.command import dashboard
from .job import Job, JobFailed, JobRecord, ResultTimeout
from .waiting import as_completed
from .worker.loop_thread import LOOPS
from .worker.master import AUTO_PREFETCH_MAX, AUTO_PREFETCH_WAIT, Worker
from .worker.supervisor import Supervisor

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("taskq")


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "TASKQ"}
)
@click.version_option(package_name="taskq")
def main() -> None:
    """taskq: run Python functions as background jobs through Redis."""


# -- worker ----------------------------------------------------------------------------
@main.command()
@app_option
@url_option
@click.option(
    "--queue",
    "-q",
    "queues",
    multiple=True,
    envvar="TASKQ_QUEUES",
    metavar="NAME",
    help="Queue to serve, highest priority first (repeatable). Default: default.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    envvar="TASKQ_CONCURRENCY",
    default=None,
    help="Jobs running at once (default 10).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    envvar="TASKQ_GRACE",
    default=None,
    help="Seconds running jobs get to finish on shutdown (default 20).",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=None,
    envvar="TASKQ_PREFETCH",
    help="Jobs taken ahead of free slots, held in this worker's in-progress list "
    f"(default: automatic, as many as start within about {AUTO_PREFETCH_WAIT * 1000:.0f} ms "
    f"judging by how fast runs ended lately, at most {AUTO_PREFETCH_MAX:,}; 0 takes none "
    "ahead).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    default=None,
    envvar="TASKQ_METRICS_PORT",
    help="Serve Prometheus metrics on this port (/metrics); with --processes, the sum "
    "over all processes.",
)
@click.option(
    "--processes",
    "-p",
    type=click.IntRange(min=1),
    default=1,
    envvar="TASKQ_PROCESSES",
    help="Run this many worker processes, supervised (restarted if they crash).",
)
@click.option(
    "--heartbeat-timeout",
    type=click.FloatRange(min=0.5),
    default=None,
    envvar="TASKQ_HEARTBEAT_TIMEOUT",
    help="Seconds without a heartbeat before this worker counts as dead and its jobs "
    "are recovered by the others (default 15). Others judge it by this, it judges them "
    "by theirs and its own, whichever is longer.",
)
@click.option(
    "--burst",
    is_flag=True,
    envvar="TASKQ_BURST",
    help="Stop once the queues are empty and nothing runs (delayed jobs are left).",
)
@click.option(
    "--loop",
    default="auto",
    envvar="TASKQ_LOOP",
    type=click.Choice(LOOPS, case_sensitive=False),
    show_default=True,
    help="Event loop the jobs run on: auto is uvloop where it is installed (~15 % less "
    "CPU a quick job), else asyncio.",
)
@click.option(
    "--log-level",
    default="info",
    envvar="TASKQ_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@friendly_errors
def worker(
    app_spec: str | None,
    redis_url: str | None,
    queues: tuple[str, ...],
    concurrency: int | None,
    grace: float | None,
    prefetch: int | None,
    metrics_port: int | None,
    processes: int,
    heartbeat_timeout: float | None,
    burst: bool,
    loop: str,
    log_level: str,
) -> None:
    """Run a worker: take jobs off Redis and run them until Ctrl+C or SIGTERM."""
    setup_logging(log_level)
    app = load_app(app_spec, redis_url)  # fail here, once, on a bad --app or URL
    names = tuple(q for item in queues for q in item.split(",") if q) or None
    if processes > 1:
        options = {
            "--queue": ",".join(names) if names else None,
            "--concurrency": concurrency,
            "--grace": grace,
            "--prefetch": prefetch,
            "--heartbeat-timeout": heartbeat_timeout,
            "--loop": loop,
            "--log-level": log_level,
        }
        args = [str(x) for k, v in options.items() if v is not None for x in (k, v)]
        args += ["--burst"] if burst else []
        env = dict(os.environ, TASKQ_REDIS_URL=app.settings.redis_url)
        if app_spec:
            env["TASKQ_APP"] = app_spec
        sys.exit(_supervise(app, args, processes, env, metrics_port))
    Worker(
        app,
        queues=names,
        concurrency=concurrency,
        grace=grace,
        heartbeat_timeout=heartbeat_timeout,
        prefetch=prefetch,
        metrics_port=metrics_port,
        burst=burst,
        loop=loop,
    ).run()


def _supervise(
    app: App, args: list[str], processes: int, env: dict[str, str], metrics_port: int | None
) -> int:
    """Run worker processes; with metrics, the children write them to a shared
    directory and this process serves their sum."""
    if metrics_port is None:
        return Supervisor(args, processes, env).run()
    from prometheus_client.multiprocess import mark_process_dead

    from .metrics import serve

    with tempfile.TemporaryDirectory(prefix="taskq-metrics-") as directory:
        env[MULTIPROC_ENV] = directory
        try:
            server = serve(metrics_port, app.broker, app.settings.heartbeat_timeout, directory)
        except OSError as exc:
            raise click.ClickException(
                f"cannot serve metrics on port {metrics_port}: {exc}"
            ) from None

        def forget(pid: int) -> None:  # a dead child's live gauges stop counting
            mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]

        try:
            return Supervisor(args, processes, env, on_exit=forget).run()
        finally:
            server.close()


# -- push ------------------------------------------------------------------------------
def _parse_json(value: str, what: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.ClickException(f"{what}: {value!r} is not JSON ({exc})") from None


@main.command()
@click.argument("values", nargs=-1)
@app_option
@url_option
@click.option(
    "--task",
    "task_name",
    default="sleep",
    show_default=True,
    help="Task to push; each VALUE (JSON) becomes one job's single argument.",
)
@click.option(
    "--args",
    "args_json",
    default=None,
    metavar="JSON",
    help="Positional arguments of one job, as a JSON array.",
)
@click.option(
    "--kwargs",
    "kwargs_json",
    default=None,
    metavar="JSON",
    help="Keyword arguments of one job, as a JSON object.",
)
@click.option("--count", type=click.IntRange(min=1), default=1, help="Copies of each job.")
@click.option(
    "--delay",
    type=click.FloatRange(min=0),
    default=None,
    help="Hold the jobs back this many seconds.",
)
@click.option("--wait", "wait_", is_flag=True, help="Wait for the results; fail if any job fails.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait: give up after this many seconds.",
)
@friendly_errors
def push(
    values: tuple[str, ...],
    app_spec: str | None,
    redis_url: str | None,
    task_name: str,
    args_json: str | None,
    kwargs_json: str | None,
    count: int,
    delay: float | None,
    wait_: bool,
    timeout: float | None,
) -> None:
    """Push jobs and print their ids, one per line.

    \b
    taskq push 3                   the demo job: sleep 3 seconds, return "Done"
    taskq push 1 2 3 --wait        three demo jobs; wait for all of them
    taskq push --app tasks --task crawl '"https://example.org"'
    taskq push --app tasks --task add --args '[1, 2]'
    """
    app = load_app(app_spec, redis_url)
    if is_memory(app.settings.redis_url):
        raise click.ClickException(
            "memory:// lives inside one process: jobs pushed here would be gone when this "
            "command ends (run taskq demo, or push and run from one Python process)"
        )
    task = app.tasks.get(task_name)
    if task is None:
        names = ", ".join(sorted(app.tasks)) or "none"
        raise click.ClickException(f"no task named {task_name!r} (registered: {names})")
    items = _push_items(values, args_json, kwargs_json)
    try:
        jobs = task.options(delay=delay).push_many([item for item in items for _ in range(count)])
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # arguments the task cannot take
        raise click.ClickException(str(exc)) from None
    for job in jobs:
        click.echo(job.id)
    if wait_:
        failed = _wait_and_report(jobs, timeout)
        if failed:
            sys.exit(1)


def _push_items(
    values: tuple[str, ...], args_json: str | None, kwargs_json: str | None
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    if values and (args_json or kwargs_json):
        raise click.UsageError("give either VALUES or --args/--kwargs, not both")
    if not values and not (args_json or kwargs_json):
        raise click.UsageError("nothing to push: give VALUES (e.g. taskq push 3) or --args")
    if values:
        return [((_parse_json(v, "VALUES"),), {}) for v in values]
    args = _parse_json(args_json, "--args") if args_json else []
    kwargs = _parse_json(kwargs_json, "--kwargs") if kwargs_json else {}
    if not isinstance(args, list):
        raise click.ClickException("--args must be a JSON array")
    if not isinstance(kwargs, dict):
        raise click.ClickException("--kwargs must be a JSON object")
    return [(tuple(args), kwargs)]


def _wait_and_report(jobs: list[Job[Any]], timeout: float | None) -> int:
    """Wait for every job (a progress bar on stderr when there are several)."""
    finished: list[Job[Any]] = []
    try:
        if len(jobs) > 1:
            with click.progressbar(length=len(jobs), label="waiting", file=sys.stderr) as bar:
                for job in as_completed(jobs, timeout):
                    finished.append(job)
                    bar.update(1)
        else:
            finished.extend(as_completed(jobs, timeout))
    except ResultTimeout as exc:
        click.echo(f"timed out: {exc}", err=True)
    records = {
        r.id: r
        for r in (
            JobRecord.from_fields(j.id, f)
            for j, f in zip(jobs, jobs[0].app.broker.records([j.id for j in jobs]), strict=True)
        )
    }
    failed = 0
    for job in jobs:
        record = records[job.id]
        if record.status == "done":
            click.echo(f"{job.id} done: {json.dumps(record.result)}", err=True)
        elif record.status in ("failed", "aborted"):
            failed += 1
            click.echo(f"{job.id} {record.status}: {record.error}", err=True)
        else:
            failed += 1
            click.echo(f"{job.id} not finished: {record.status}", err=True)
    return failed


# -- result / info -------------------------------------------------------------------
@main.command()
@click.argument("job_id")
@url_option
@click.option("--wait", "wait_", is_flag=True, help="Wait for the job to finish.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@friendly_errors
def result(
    job_id: str, redis_url: str | None, wait_: bool, timeout: float | None, as_json: bool
) -> None:
    """Show a job's result (exit 1 if it failed or was aborted, 2 if it has not
    finished)."""
    job: Job[Any] = App(redis_url).job(job_id)
    if wait_:
        with contextlib.suppress(JobFailed, ResultTimeout):  # reported below from the record
            job.result(timeout)
    record = job.info()
    if as_json:
        click.echo(json.dumps(record.as_dict(), indent=2))
    if record.status == "done":
        if not as_json:
            click.echo(json.dumps(record.result))
    elif record.status == "failed":
        if not as_json:
            click.echo(record.traceback or "", err=True, nl=False)
            click.echo(f"job {job_id} failed: {record.error}", err=True)
        sys.exit(1)
    elif record.status == "aborted":
        if not as_json:
            click.echo(f"job {job_id} was aborted", err=True)
        sys.exit(1)
    else:
        if not as_json:
            click.echo(f"job {job_id} is {record.status}", err=True)
        sys.exit(2)


@main.command()
@url_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def info(redis_url: str | None, as_json: bool) -> None:
    """Queues (queued, in progress, delayed, done, failed, dead) and live workers."""
    app = App(redis_url)
    broker = app.broker
    alive_after = time.time() - app.settings.heartbeat_timeout
    queues = [broker.queue_info(q, alive_after) for q in broker.queue_names()]
    workers = broker.workers(alive_after)
    schedules = broker.schedules()
    if as_json:
        click.echo(
            json.dumps({"queues": queues, "workers": workers, "schedules": schedules}, indent=2)
        )
        return
    click.echo(f"redis: {mask_url(app.settings.redis_url)}")
    columns = ("queued", "in_progress", "delayed", "done", "failed", "retried", "dead")
    click.echo(f"{'queue':<20}" + "".join(f"{c.replace('_', ' '):>12}" for c in columns))
    for q in queues:
        click.echo(f"{q['queue']:<20}" + "".join(f"{q[c]:>12}" for c in columns))
    if not queues:
        click.echo("(no queues yet)")
    for cron in schedules:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(cron["next_run"]))
        click.echo(
            f"cron {cron['name']}: {cron['spec']} ({cron['tz']}) -> {cron['task']}, "
            f"next run {when} UTC"
        )
    click.echo(f"workers alive: {len(workers)}")
    for w in workers:
        click.echo(
            f"  {w['id']}  queues={w.get('queues', '')}  pid={w.get('pid', '')}  "
            f"heartbeat {w['heartbeat_age']:.1f}s ago"
        )


@main.command()
@click.argument("job_id")
@url_option
@friendly_errors
def abort(job_id: str, redis_url: str | None) -> None:
    """Abort a job: removed if waiting, cancelled by its worker if running."""
    job: Job[Any] = App(redis_url).job(job_id)
    before = job.status()
    if not job.abort():
        raise click.ClickException(f"job {job_id} already finished ({before})")
    after = job.status()
    if after == "aborted":
        click.echo(f"job {job_id} aborted")
    else:
        click.echo(f"job {job_id} is {after}: its worker cancels it within a second")


@main.command()
@url_option
@click.option("--host", default=None, help="Host name of the worker (default: this host).")
@friendly_errors
def health(redis_url: str | None, host: str | None) -> None:
    """Exit 0 if a worker on this host has a live heartbeat (a container healthcheck)."""
    app = App(redis_url)
    host = host or socket.gethostname()
    alive_after = time.time() - app.settings.heartbeat_timeout
    mine = [w for w in app.broker.workers(alive_after) if w.get("host") == host]
    if not mine:
        raise click.ClickException(f"no worker on {host} has a live heartbeat")
    for w in mine:
        click.echo(f"{w['id']} alive: heartbeat {w['heartbeat_age']:.1f}s ago")


# -- demo ------------------------------------------------------------------------------
@main.command()
@click.argument("seconds", nargs=-1, type=click.FloatRange(min=0, max=86_400))
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=10, show_default=True)
@friendly_errors
def demo(seconds: tuple[float, ...], concurrency: int) -> None:
    """Everything in one process with no Redis: push the article's jobs and run them.

    Jobs sleep 1, 2 and 3 seconds (or SECONDS); a worker runs them concurrently, so the
    whole run takes about as long as the longest job, not the sum.
    """
    if any(math.isnan(s) for s in seconds):  # NaN passes FloatRange's bounds
        raise click.BadParameter("nan is not a number of seconds", param_hint="SECONDS")
    setup_logging("info")
    seconds = seconds or (1.0, 2.0, 3.0)
    app = App("memory://demo")
    demo_tasks.register(app)
    sleep: Task[Any, Any] = app.tasks["sleep"]
    more_work: Task[Any, Any] = app.tasks["more_work"]
    click.echo(f"taskq demo: in-memory Redis (memory://), concurrency {concurrency}")
    jobs = sleep.push_many([(s,) for s in seconds])
    for job, s in zip(jobs, seconds, strict=True):
        click.echo(f"pushed sleep({s:g}) as job {job.id}  (async def: awaits asyncio.sleep)")
    blocking = min(seconds)
    jobs.append(more_work.push(blocking))
    click.echo(
        f"pushed more_work({blocking:g}) as job {jobs[-1].id}  (plain def: blocks in "
        "time.sleep, runs in a thread)"
    )
    began = time.monotonic()
    Worker(app, concurrency=concurrency, burst=True).run()
    elapsed = time.monotonic() - began
    results = [job.result(timeout=0) for job in jobs]
    click.echo(f"results: {results}")
    click.echo(
        f"{len(jobs)} jobs finished in {elapsed:.2f}s; one after another they would "
        f"take {sum(seconds) + blocking:g}s"
    )
    app.close()


main.add_command(dead)
main.add_command(retry)
main.add_command(purge)
main.add_command(dashboard)
