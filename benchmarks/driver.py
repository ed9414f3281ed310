"""Runs one library's side of the benchmark, inside that library's own venv.

    python driver.py LIB info
    python driver.py LIB worker --concurrency N
    python driver.py LIB enqueue --kind noop --n N --mode single|bulk|fast
    python driver.py LIB latency --n N
    python driver.py ceiling worker --kind noop --n N --concurrency C

Every command but ``worker`` prints one JSON object on stdout. ``worker`` becomes the
library's worker process (``exec`` of its CLI, so the pid stays the same) and runs
until it is terminated. ``ceiling`` is no queue at all: it runs the same job bodies
straight from a plain asyncio loop, C at a time, then idles.

The harness (``bench.py``) sets ``BENCH_REDIS_URL`` and ``BENCH_CONCURRENCY`` and runs
this with ``benchmarks/`` as the working directory and on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import random
import sys
import time
from importlib import metadata
from typing import Any

#: In-flight pushes when preloading jobs with a library that has no bulk API.
PRELOAD_CONCURRENCY = 50
#: Latency jobs run first and not counted (connections, scripts, imports warm up).
LATENCY_WARMUP = 3


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def load(lib: str) -> Any:
    return importlib.import_module(f"libs.{lib}")


def info(lib: str) -> None:
    import redis.utils

    version = metadata.version(lib) if lib != "ceiling" else "-"
    extra = {}
    if lib == "streaq":
        extra["coredis"] = metadata.version("coredis")
    mod = load(lib) if lib != "ceiling" else None
    emit(
        {
            "lib": lib,
            "version": version,
            "redis_py": metadata.version("redis"),
            "hiredis": bool(redis.utils.HIREDIS_AVAILABLE),
            "python": sys.version.split()[0],
            "bulk_api": getattr(mod, "BULK_API", None),
            "notes": getattr(mod, "NOTES", ""),
            **extra,
        }
    )


def worker(lib: str, concurrency: int) -> None:
    mod = load(lib)
    if hasattr(mod, "run_worker"):
        mod.run_worker(concurrency)
        return
    argv = mod.worker_argv(concurrency)
    exe = os.path.join(os.path.dirname(sys.executable), argv[0])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, [exe, *argv[1:]])


async def enqueue(lib: str, kind: str, n: int, mode: str) -> None:
    client = load(lib).Client()
    await client.start()
    try:
        if mode == "bulk" and client.push_many is None:
            emit({"n": n, "mode": mode, "seconds": None, "error": "no bulk API"})
            return
        began = time.perf_counter()
        if mode == "single":
            for _ in range(n):
                await client.push(kind)
        elif client.push_many is not None:  # bulk, or fast with a bulk API
            await client.push_many(kind, n)
            mode = "bulk"
        else:  # fast without a bulk API: pushes from concurrent coroutines
            left = iter(range(n))

            async def pusher() -> None:
                for _ in left:
                    await client.push(kind)

            await asyncio.gather(*(pusher() for _ in range(PRELOAD_CONCURRENCY)))
            mode = "concurrent"
        seconds = time.perf_counter() - began
    finally:
        await client.close()
    emit({"n": n, "mode": mode, "seconds": seconds})


async def latency(lib: str, n: int, jitter: float, timeout: float) -> None:
    """Push one stamp job at a time to an idle worker; wait for each to run.

    push_to_start: from just before the push call to the job's first line (the
    time it records); push_to_done: until this process saw the record (BLPOP).
    """
    from libs import common

    client = load(lib).Client()
    await client.start()
    r = common.aredis()
    await r.delete(common.STAMPS)
    start_ms: list[float] = []
    done_ms: list[float] = []
    push_ms: list[float] = []
    error = None
    try:
        for i in range(n + LATENCY_WARMUP):
            await asyncio.sleep(random.uniform(0, jitter))
            t0 = time.time()
            await client.push("stamp")
            t1 = time.time()
            got = await r.blpop([common.STAMPS], timeout=timeout)
            t2 = time.time()
            if got is None:
                error = f"job {i} did not run within {timeout:g}s"
                break
            if i >= LATENCY_WARMUP:
                start_ms.append((float(got[1]) - t0) * 1000)
                done_ms.append((t2 - t0) * 1000)
                push_ms.append((t1 - t0) * 1000)
    finally:
        await client.close()
    emit({"push_to_start": start_ms, "push_to_done": done_ms, "push": push_ms, "error": error})


async def run_ceiling(kind: str, n: int, concurrency: int) -> None:
    """No queue: run ``n`` of the same job bodies, ``concurrency`` at a time."""
    from libs import common

    body = common.JOBS[kind]
    left = iter(range(n))

    async def runner() -> None:
        for _ in left:
            await body()

    await asyncio.gather(*(runner() for _ in range(concurrency)))


async def ceiling(kind: str, n: int, concurrency: int) -> None:
    """The ceiling as a worker: connect, run the jobs, then idle until terminated."""
    from libs import common

    await common.aredis().ping()
    await run_ceiling(kind, n, concurrency)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lib")
    parser.add_argument("command", choices=["info", "worker", "enqueue", "latency"])
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--kind", default="noop", choices=["noop", "sleep", "stamp"])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--mode", default="fast", choices=["single", "bulk", "fast"])
    parser.add_argument("--jitter", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    os.environ["BENCH_CONCURRENCY"] = str(args.concurrency)
    if args.command == "info":
        info(args.lib)
    elif args.lib == "ceiling":
        asyncio.run(ceiling(args.kind, args.n, args.concurrency))
    elif args.command == "worker":
        worker(args.lib, args.concurrency)
    elif args.command == "enqueue":
        asyncio.run(enqueue(args.lib, args.kind, args.n, args.mode))
    else:
        asyncio.run(latency(args.lib, args.n, args.jitter, args.timeout))


if __name__ == "__main__":
    main()
