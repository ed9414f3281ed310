"""Profile a taskq worker on the benchmark's jobs, every thread (cProfile per thread).

    benchmarks/.venvs/taskq/bin/python benchmarks/profile_taskq.py [--jobs 20000]
        [--kind noop|sleep|empty] [--concurrency 10] [--top 25] [--out prof-dir]
        [--cpu | --ceiling] [--loop auto|uvloop|asyncio]

Starts a private redis-server, pushes the jobs with ``push_many``, then runs
``taskq worker --burst`` in this process with a profiler on the master thread, the
event-loop thread and every other thread, and prints each thread's hottest functions
(by own time) and the whole process's. ``--out`` also writes one ``.pstats`` per
thread (open with ``python -m pstats`` or snakeviz). The profiler slows everything
~2x: compare the shares, not the rates, with bench.py's.

``--kind empty`` runs jobs that do nothing at all: what taskq itself costs a job.

``--ceiling`` prints the same for the no-queue ceiling (the job bodies run straight from
an asyncio loop at the same concurrency, in this process), to compare with ``--cpu``.

``--loop`` picks the event loop, of the worker (``taskq worker --loop``) and of the
ceiling alike (default: auto, which is uvloop where installed, as for the worker).

``--cpu`` runs without the profiler and prints what each thread cost per job instead:
CPU time (from /proc, read as the last job completes) and context switches, and the
private redis-server's CPU time per job (from INFO: while a script writes a batch of
outcomes, every job's command waits). The loop thread's CPU per job is the steadiest
figure to compare changes by on a noisy machine; many voluntary switches in the
master mean it waits for the GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The working tree's taskq, not the copy run.sh last installed into the venv.
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench import redis_server  # noqa: E402  (needs HERE on sys.path)

from taskq.worker.loop_thread import LOOPS  # noqa: E402  (the working tree's)

_profiles: list[tuple[str, cProfile.Profile]] = []
_lock = threading.Lock()


def _profile_new_thread(frame: Any, event: str, arg: Any) -> None:
    """First profile event of a new thread: give it its own profiler."""
    prof = cProfile.Profile()
    with _lock:
        _profiles.append((threading.current_thread().name, prof))
    prof.enable()  # replaces this hook for this thread


def report(stats: pstats.Stats, title: str, top: int) -> None:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    lines = out.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    print(f"\n== {title}: {stats.total_tt:.2f}s on CPU (profiled)")  # type: ignore[attr-defined]
    print("\n".join(lines[start:]))


def _thread_costs() -> dict[str, tuple[float, float, int, int]]:
    """User and system CPU seconds and (voluntary, involuntary) context switches of
    each thread."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    costs = {}
    for tid in os.listdir("/proc/self/task"):
        stat = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        status = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines()
            if ":\t" in line
        )
        costs[names.get(int(tid), tid)] = (
            int(stat[11]) / tick,
            int(stat[12]) / tick,
            int(status["voluntary_ctxt_switches"]),
            int(status["nonvoluntary_ctxt_switches"]),
        )
    return costs


def _redis_cpu() -> tuple[float, float, int, int]:
    """The private redis-server's user and system CPU seconds (its switches: 0)."""
    import redis

    cpu = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]).info("cpu")
    return float(cpu["used_cpu_user"]), float(cpu["used_cpu_sys"]), 0, 0


def _measure_cpu(jobs: int) -> None:
    """Make the next worker print each thread's cost per job: from the moment it
    starts taking jobs to the moment it starts shutting down (threads all alive)."""
    from taskq.worker.master import Worker

    fetch_loop, shutdown = Worker._fetch_loop, Worker._shutdown
    before: dict[str, tuple[float, float, int, int]] = {}

    began: list[float] = []

    def measured_fetch_loop(self: Worker, *a: Any) -> None:
        before.update(_thread_costs())
        before["redis-server"] = _redis_cpu()
        began.append(time.perf_counter())
        fetch_loop(self, *a)

    def measured_shutdown(self: Worker, *a: Any) -> None:
        elapsed = time.perf_counter() - began[0]
        print(f"{jobs / elapsed:.0f} jobs/s, {elapsed * 1e6 / jobs:.1f} us a job in all")
        costs = _thread_costs()
        costs["redis-server"] = _redis_cpu()
        for name, (user, system, vol, invol) in sorted(costs.items()):
            user0, system0, vol0, invol0 = before.get(name, (0.0, 0.0, 0, 0))
            cpu = (user - user0 + system - system0) * 1e6 / jobs
            print(
                f"{name:16} {cpu:7.1f} us CPU/job ({(system - system0) * 1e6 / jobs:5.1f} in "
                f"the kernel)   {(vol - vol0) / jobs:5.2f} voluntary + "
                f"{(invol - invol0) / jobs:.2f} forced switches/job"
            )
        shutdown(self, *a)

    Worker._fetch_loop = measured_fetch_loop  # type: ignore[method-assign]
    Worker._shutdown = measured_shutdown  # type: ignore[method-assign]


def _report_threads(top: int, out: Path | None) -> None:
    """Print each profiled thread's hottest functions, then all threads', and write
    their .pstats to ``out``."""

    combined: pstats.Stats | None = None
    for name, prof in _profiles:
        with suppress(Exception):
            prof.disable()
        stats = pstats.Stats(prof)
        if stats.total_tt < 0.05:  # type: ignore[attr-defined]
            continue
        report(stats, f"thread {name}", top)
        if out:
            out.mkdir(parents=True, exist_ok=True)
            stats.dump_stats(out / f"{name.split()[0]}.pstats")
        if combined is None:
            combined = pstats.Stats(prof)
        else:
            combined.add(prof)
    if combined is not None:
        report(combined, "all threads", top)


def _ceiling_cpu(kind: str, jobs: int, concurrency: int, loop: str) -> None:
    """Run the ceiling's jobs in this process, on ``loop``; print its CPU time per job."""
    import resource

    from driver import run_ceiling
    from libs import common

    from taskq.worker.loop_thread import loop_kind, new_event_loop

    async def run() -> None:
        await common.aredis().ping()
        server0 = _redis_cpu()
        before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.perf_counter()
        await run_ceiling(kind, jobs, concurrency)
        elapsed = time.perf_counter() - began
        after = resource.getrusage(resource.RUSAGE_SELF)
        server1 = _redis_cpu()
        server = (server1[0] - server0[0] + server1[1] - server0[1]) * 1e6 / jobs
        user = (after.ru_utime - before.ru_utime) * 1e6 / jobs
        system = (after.ru_stime - before.ru_stime) * 1e6 / jobs
        print(
            f"ceiling {user + system:7.1f} us CPU/job ({system:5.1f} in the kernel)   "
            f"{jobs / elapsed:.0f} jobs/s, {loop_kind(loop)} loop; "
            f"redis-server {server:.1f} us CPU/job"
        )

    with asyncio.Runner(loop_factory=lambda: new_event_loop(loop)) as runner:
        runner.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--kind", default="noop", choices=["noop", "sleep", "empty"])
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cpu", action="store_true", help="per-thread CPU, no profiler")
    parser.add_argument("--ceiling", action="store_true", help="the ceiling's CPU per job")
    parser.add_argument("--loop", default="auto", choices=LOOPS)
    args = parser.parse_args()
    if args.ceiling and args.kind == "empty":
        parser.error("the ceiling runs the benchmark's jobs: --kind noop or sleep")
    workdir = Path(tempfile.mkdtemp(prefix="taskq-profile-"))
    with redis_server(workdir) as url:
        os.environ.update(BENCH_REDIS_URL=url, TASKQ_REDIS_URL=url)
        os.environ["BENCH_CONCURRENCY"] = str(args.concurrency)
        import redis
        from libs import common
        from libs import taskq as bench_tasks

        from taskq import cli

        if args.ceiling:
            _ceiling_cpu(args.kind, args.jobs, args.concurrency, args.loop)
            return
        bench_tasks.TASKS[args.kind].push_many([()] * args.jobs)
        bench_tasks.app.close()  # the CLI configures the app afresh
        argv = ["worker", "--app", "libs.taskq", "--redis-url", url, "--burst"]
        argv += ["--concurrency", str(args.concurrency), "--log-level", "warning"]
        argv += ["--loop", args.loop]
        if args.cpu:
            _measure_cpu(args.jobs)
            cli.main(argv, standalone_mode=False)
            return
        main_prof = cProfile.Profile()
        _profiles.append(("MainThread (master)", main_prof))
        threading.setprofile(_profile_new_thread)
        began = time.perf_counter()
        main_prof.enable()
        try:
            cli.main(argv, standalone_mode=False)
        finally:
            main_prof.disable()
            threading.setprofile(None)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - began
        done = int(redis.Redis.from_url(url).get(common.COUNTER) or 0)
    print(
        f"{done}/{args.jobs} {args.kind} jobs, concurrency {args.concurrency}: {elapsed:.1f}s "
        f"with the profiler on ({done / elapsed:.0f} jobs/s, start-up included)"
    )
    _report_threads(args.top, args.out)


if __name__ == "__main__":
    main()
