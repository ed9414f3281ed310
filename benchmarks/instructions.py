"""Instructions a noop job costs a taskq worker, counted by callgrind: a steady figure
to compare changes by where CPU time swings 20 % from minute to minute.

    benchmarks/.venvs/taskq/bin/python benchmarks/instructions.py [TREE ...]
        [--ceiling] [--pure] [--jobs 2000,6000] [--repeat 2] [--loop auto|uvloop|asyncio]

Each TREE is a directory holding a ``taskq`` package (default: this working tree; for
an older commit, ``git worktree add /tmp/old <rev>``), measured in turn, ``--repeat``
times. For each, a private redis-server gets the jobs (pushed outside valgrind), then
``taskq worker --burst`` runs them under ``valgrind --tool=callgrind`` (every thread,
user space only: the kernel's share of system calls is not counted). Runs of two job
counts are subtracted, which takes out start-up and shutdown: what is left is the
instructions per job, the worker's threads together. The worker takes a fixed 100 jobs
ahead (``--prefetch 100``), which keeps its batches alike from run to run; the
automatic prefetch, which follows the timing, varies them. ``--pure`` leaves the job's
``INCR`` out (taskq's own work alone); ``--ceiling`` also counts the no-queue ceiling's
job the same way. ``--loop`` picks the event loop of the worker and of the ceiling (it
sets ``TASKQ_LOOP``; a tree from before ``--loop`` existed runs on asyncio whatever
it says, so compare such trees with ``--loop asyncio``). A run of 6,000 jobs takes
about a minute.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The working tree's taskq (for its list of loops), beside the harness.
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench import redis_server  # noqa: E402  (needs HERE on sys.path)

from taskq.worker.loop_thread import LOOPS  # noqa: E402

# Run with TASKQ_TREE first on sys.path, from benchmarks/ (for libs.*).
_SETUP = """
import os, sys
sys.path[:0] = [os.environ["TASKQ_TREE"], "."]
from libs import common
if os.environ.get("PURE"):
    async def nothing() -> None:
        pass
    common.noop_job = nothing
"""
_PUSH = (
    _SETUP
    + """
from libs import taskq as bench_tasks
bench_tasks.TASKS["noop"].push_many([()] * int(sys.argv[1]))
bench_tasks.app.close()
"""
)
_WORKER = (
    _SETUP
    + """
from taskq import cli
cli.main(["worker", "--app", "libs.taskq", "--redis-url", os.environ["BENCH_REDIS_URL"],
          "--burst", "--concurrency", "10", "--prefetch", "100", "--log-level", "warning"],
         standalone_mode=False)
"""
)
_CEILING = (
    _SETUP
    + """
import asyncio
from driver import run_ceiling
from taskq.worker.loop_thread import new_event_loop

async def main() -> None:
    await common.aredis().ping()
    await run_ceiling("noop", int(sys.argv[1]), 10)

with asyncio.Runner(loop_factory=lambda: new_event_loop(os.environ["TASKQ_LOOP"])) as runner:
    runner.run(main())
"""
)


def _instructions(script: str, jobs: int, env: dict[str, str], push: bool) -> int:
    """Instructions of one run of ``script`` over ``jobs`` jobs, on a fresh Redis."""
    with redis_server(Path(tempfile.mkdtemp(prefix="taskq-instr-"))) as url:
        env = dict(env, BENCH_REDIS_URL=url, TASKQ_REDIS_URL=url)
        if push:
            subprocess.run([sys.executable, "-c", _PUSH, str(jobs)], env=env, cwd=HERE, check=True)
        valgrind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        run = subprocess.run(
            [*valgrind, sys.executable, "-c", script, str(jobs)],
            env=env,
            cwd=HERE,
            capture_output=True,
            text=True,
            check=False,
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or found is None:
        sys.exit(f"the run under valgrind failed:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def per_job(script: str, jobs: tuple[int, int], env: dict[str, str], push: bool) -> float:
    few, many = (_instructions(script, n, env, push) for n in jobs)
    return (many - few) / (jobs[1] - jobs[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", type=Path, default=[HERE.parent])
    parser.add_argument("--ceiling", action="store_true", help="also count the ceiling")
    parser.add_argument("--pure", action="store_true", help="leave the job's INCR out")
    parser.add_argument("--jobs", default="2000,6000", help="the two job counts")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--loop", default="auto", choices=LOOPS)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found: apt-get install valgrind")
    low, high = (int(n) for n in args.jobs.split(","))
    env = dict(os.environ, PURE="1" if args.pure else "", TASKQ_LOOP=args.loop)
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for tree in args.trees:
            if not (tree / "taskq" / "__init__.py").exists():
                sys.exit(f"{tree} holds no taskq package")
            tree_env = dict(env, TASKQ_TREE=str(tree.resolve()))
            count = per_job(_WORKER, (low, high), tree_env, push=True)
            runs.setdefault(str(tree), []).append(count)
            print(f"{tree}: {count:,.0f} instructions a job", flush=True)
        if args.ceiling:
            ceiling_env = dict(env, PURE="", TASKQ_TREE=str(HERE.parent))  # the whole job
            count = per_job(_CEILING, (low, high), ceiling_env, push=False)
            runs.setdefault("ceiling", []).append(count)
            print(f"ceiling: {count:,.0f} instructions a job", flush=True)
    if args.repeat > 1:
        for name, counts in runs.items():
            print(f"median {name}: {statistics.median(counts):,.0f}")


if __name__ == "__main__":
    main()
