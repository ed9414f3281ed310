"""Profile a taskq worker on the benchmark's jobs, every thread (cProfile per thread).

    benchmarks/.venvs/taskq/bin/python benchmarks/profile_taskq.py [--jobs 20000]
        [--kind noop|sleep] [--concurrency 10] [--top 25] [--out prof-dir]

Starts a private redis-server, pushes the jobs with ``push_many``, then runs
``taskq worker --burst`` in this process with a profiler on the master thread, the
event-loop thread and every other thread, and prints each thread's hottest functions
(by own time) and the whole process's. ``--out`` also writes one ``.pstats`` per
thread (open with ``python -m pstats`` or snakeviz). The profiler slows everything
~2x: compare the shares, not the rates, with bench.py's.
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(HERE))

from bench import redis_server  # noqa: E402  (needs HERE on sys.path)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--kind", default="noop", choices=["noop", "sleep"])
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="taskq-profile-"))
    with redis_server(workdir) as url:
        os.environ.update(BENCH_REDIS_URL=url, TASKQ_REDIS_URL=url)
        os.environ["BENCH_CONCURRENCY"] = str(args.concurrency)
        import redis
        from libs import common
        from libs import taskq as bench_tasks

        from taskq import cli

        bench_tasks.TASKS[args.kind].push_many([()] * args.jobs)
        bench_tasks.app.close()  # the CLI configures the app afresh
        argv = ["worker", "--app", "libs.taskq", "--redis-url", url, "--burst"]
        argv += ["--concurrency", str(args.concurrency), "--log-level", "warning"]
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
    combined: pstats.Stats | None = None
    for name, prof in _profiles:
        with suppress(Exception):
            prof.disable()
        stats = pstats.Stats(prof)
        if stats.total_tt < 0.05:  # type: ignore[attr-defined]
            continue
        report(stats, f"thread {name}", args.top)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            stats.dump_stats(args.out / f"{name.split()[0]}.pstats")
        if combined is None:
            combined = pstats.Stats(prof)
        else:
            combined.add(prof)
    if combined is not None:
        report(combined, "all threads", args.top)


if __name__ == "__main__":
    main()
