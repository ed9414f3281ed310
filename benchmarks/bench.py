"""The benchmark harness: taskq against its peers and the no-queue ceiling.

Run it through ``bash benchmarks/run.sh [options]`` (which creates the venvs first).
It starts a private redis-server on a free loopback port, and for each round, each
library in turn (the order rotates between rounds), runs the workloads with that
library's own driver (``driver.py``) in that library's own venv, polling the job
counter in Redis. It writes ``results/results.md``, ``results/results.json`` and
``results/chart.png``. See README.md for the method.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
LIBS = ["taskq", "saq", "arq", "taskiq", "dramatiq", "huey", "streaq"]
CEILING = "ceiling"
COUNTER = "bench:done"  # libs/common.py: every job INCRs it
POLL_SECONDS = 0.005
#: Processes pushing the preload of a library without a bulk API (only saves time).
PRELOAD_PROCS = 2
TIMES = "\N{MULTIPLICATION SIGN}"


class BenchError(RuntimeError):
    """One measurement failed (timeout, wrong count, crash); the others go on."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Config:
    rounds: int = 3
    noop_jobs: int = 20_000
    noop_concurrency: int = 10
    sleep_jobs: int = 5_000
    sleep_concurrency: int = 100
    single_jobs: int = 10_000
    latency_jobs: int = 100
    idle_seconds: float = 5.0
    soak_jobs: int = 100_000
    soak_libs: list[str] = field(default_factory=lambda: ["taskq"])
    libs: list[str] = field(default_factory=lambda: list(LIBS))
    ceiling: bool = True
    quick: bool = False
    out: str = str(HERE / "results")


# -- processes -------------------------------------------------------------------------
_live: list[subprocess.Popen[bytes]] = []


def kill_group(proc: subprocess.Popen[bytes], grace: float = 0.0) -> None:
    """End the process group: SIGKILL at once (a worker's clean shutdown is not
    measured, and Redis is flushed before the next run), or SIGTERM first and SIGKILL
    after ``grace`` seconds."""
    if grace > 0:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    if proc in _live:
        _live.remove(proc)


def kill_all() -> None:
    for proc in list(_live):
        kill_group(proc)


def _on_signal(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=HERE,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as a whole
        )
    _live.append(proc)
    return proc


def proc_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """On-CPU time of every thread of ``pids``, from schedstat (ns resolution; /proc's
    utime/stime count 10 ms ticks, too coarse for an idle worker)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def memory_kib(pids: list[int]) -> dict[int, dict[str, int]]:
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        mem = {}
        for line in lines:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                mem[key] = int(value.split()[0])
        if mem:
            out[pid] = mem
    return out


# -- redis -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: apt-get install redis-server (Redis 6.2+)")
    port = free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(workdir / "redis.log"),
    ]
    proc = spawn(argv, dict(os.environ), workdir / "redis.stdout")
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: see {workdir}") from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        kill_group(proc, grace=2.0)


class Stats:
    """Redis's own counters: commands by name (scripts' inner commands included) and
    read events (a pipelined batch is usually one read: about one round trip)."""

    def __init__(self, r: redis.Redis) -> None:
        info = r.info("all")
        self.calls = {
            k[len("cmdstat_") :]: int(v["calls"])
            for k, v in info.items()
            if k.startswith("cmdstat_")
        }
        self.reads = int(info.get("total_reads_processed", 0))
        self.commands = int(info["total_commands_processed"])

    def minus(self, before: Stats) -> dict[str, int]:
        keys = set(self.calls) | set(before.calls)
        diff = {k: self.calls.get(k, 0) - before.calls.get(k, 0) for k in keys}
        return {k: v for k, v in sorted(diff.items()) if v}


# -- one library -----------------------------------------------------------------------
class Lib:
    def __init__(self, name: str, url: str, logdir: Path) -> None:
        self.name = name
        venv = "harness" if name == CEILING else name
        self.python = str(VENVS / venv / "bin" / "python")
        self.url = url
        self.logdir = logdir
        self.env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
        self.env.update(
            BENCH_REDIS_URL=url,
            TASKQ_REDIS_URL=url,
            PYTHONPATH=str(HERE),
            PATH=f"{VENVS / venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            PYTHONUNBUFFERED="1",
        )

    def driver(self, *args: str, timeout: float = 600) -> dict[str, Any]:
        """Run one driver command in this library's venv; its JSON answer."""
        return self.drivers([list(args)], timeout)[0]

    def drivers(self, commands: list[list[str]], timeout: float = 600) -> list[dict[str, Any]]:
        """Run driver commands side by side (one process each); their JSON answers."""
        log = self.logdir / f"{self.name}-driver.log"
        procs = []
        with open(log, "ab") as err:
            for args in commands:
                argv = [self.python, str(HERE / "driver.py"), self.name, *args]
                procs.append(
                    subprocess.Popen(
                        argv, cwd=HERE, env=self.env, stdout=subprocess.PIPE, stderr=err
                    )
                )
        _live.extend(procs)
        deadline = time.monotonic() + timeout
        try:
            outs = []
            for proc, args in zip(procs, commands, strict=True):
                what = " ".join(args)
                try:
                    stdout, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    raise BenchError("timeout", f"driver {what} ran over {timeout:g}s") from None
                if proc.returncode != 0:
                    raise BenchError("error", f"driver {what} failed: {tail(log)}")
                outs.append(json.loads(stdout.decode().strip().splitlines()[-1]))
            return outs
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                _live.remove(proc)

    def preload(self, kind: str, n: int, bulk: bool) -> dict[str, Any]:
        """Push ``n`` jobs before the worker starts: in bulk where the library can,
        else from PRELOAD_PROCS processes at once (concurrent pushes in each)."""
        if bulk:
            out = self.driver("enqueue", "--kind", kind, "--n", str(n), "--mode", "fast")
            return {"mode": out["mode"], "seconds": out["seconds"]}
        parts = [n // PRELOAD_PROCS + (i < n % PRELOAD_PROCS) for i in range(PRELOAD_PROCS)]
        cmds = [["enqueue", "--kind", kind, "--n", str(k), "--mode", "fast"] for k in parts if k]
        outs = self.drivers(cmds)
        return {
            "mode": f"{outs[0]['mode']} x{len(outs)}",
            "seconds": max(o["seconds"] for o in outs),
        }

    def start_worker(self, concurrency: int, tag: str, *extra: str) -> subprocess.Popen[bytes]:
        env = dict(self.env, BENCH_CONCURRENCY=str(concurrency))
        argv = [self.python, str(HERE / "driver.py"), self.name, "worker"]
        argv += ["--concurrency", str(concurrency), *extra]
        log = self.logdir / f"{self.name}-{tag}.log"
        proc = spawn(argv, env, log)
        proc.log = log  # type: ignore[attr-defined]
        return proc


def tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


@dataclass
class Progress:
    startup: float  # worker start to the first completion seen, s
    rate: float  # jobs/s from the first completion seen to the last
    seconds: float  # worker start to the last completion
    polls: int


def wait_for_count(
    r: redis.Redis,
    target: int,
    proc: subprocess.Popen[bytes],
    started: float,
    timeout: float,
    stall: float = 30.0,
) -> Progress:
    """Poll the counter until it reaches ``target``; fail on a stall, timeout or exit."""
    polls = 0
    first_t: float | None = None
    first_n = 0
    last_n, last_change = 0, time.monotonic()
    while True:
        n = int(r.get(COUNTER) or 0)
        now = time.monotonic()
        polls += 1
        if n and first_t is None:
            first_t, first_n = now, n
        if n >= target:
            assert first_t is not None
            span = now - first_t
            rate = (n - first_n) / span if span > 0 and n > first_n else float("nan")
            return Progress(first_t - started, rate, now - started, polls)
        if n != last_n:
            last_n, last_change = n, now
        if proc.poll() is not None:
            raise BenchError("error", f"worker exited ({proc.returncode}) at {n}/{target} jobs")
        if now - last_change > stall:
            raise BenchError("timeout", f"no progress for {stall:g}s at {n}/{target} jobs")
        if now - started > timeout:
            raise BenchError("timeout", f"{n}/{target} jobs after {timeout:g}s")
        time.sleep(POLL_SECONDS)


def check_exact(r: redis.Redis, target: int) -> int:
    """Every job ran (looked at again a moment later); returns how many ran twice.

    A count above ``target`` is kept as a finding (the library ran a job twice), not
    a failure: every job did run, and the throughput stands.
    """
    time.sleep(0.3)
    n = int(r.get(COUNTER) or 0)
    if n < target:
        raise BenchError("wrong count", f"counter {n}, expected {target}")
    if n > target:
        print(f"    note: counter {n} > {target}: {n - target} job(s) ran twice", flush=True)
    return n - target


def run_timeout(n: int) -> float:
    return max(60.0, n / 50)


class Bench:
    def __init__(self, cfg: Config, url: str, logdir: Path) -> None:
        self.cfg = cfg
        self.url = url
        self.logdir = logdir
        self.r = redis.Redis.from_url(url)
        self.raw: dict[str, list[dict[str, Any]]] = {}
        self.info: dict[str, Any] = {}
        self.soak: dict[str, Any] = {}
        self.revision = taskq_revision()
        self.cpu_model = cpu_model()

    def lib(self, name: str) -> Lib:
        return Lib(name, self.url, self.logdir)

    def bulk(self, lib: Lib) -> bool:
        return bool(self.info.get(lib.name, {}).get("bulk_api"))

    def flush(self) -> None:
        self.r.flushall()

    def measure(self, what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        began = time.monotonic()
        try:
            out = fn()
        except BenchError as exc:
            print(f"    {what}: {exc.kind}: {exc.detail}", flush=True)
            return {"error": exc.kind, "detail": exc.detail}
        out["wall"] = round(time.monotonic() - began, 2)
        return out

    # -- workloads ---------------------------------------------------------------------
    def enqueue_single(self, lib: Lib) -> dict[str, Any]:
        self.flush()
        n = self.cfg.single_jobs
        out = lib.driver("enqueue", "--kind", "noop", "--n", str(n), "--mode", "single")
        return {"enqueue_single": n / out["seconds"]}

    def noop(self, lib: Lib) -> dict[str, Any]:
        """Preload, then one worker: throughput, start-up, cost, idle CPU, peak RSS."""
        cfg = self.cfg
        n = cfg.noop_jobs
        self.flush()
        res: dict[str, Any] = {}
        before = Stats(self.r)
        if lib.name != CEILING:
            res["preload"] = pre = lib.preload("noop", n, self.bulk(lib))
            if pre["mode"] == "bulk":
                res["enqueue_bulk"] = n / pre["seconds"]
        enqueued = Stats(self.r)
        extra = ["--kind", "noop", "--n", str(n)] if lib.name == CEILING else []
        started = time.monotonic()
        proc = lib.start_worker(cfg.noop_concurrency, "noop", *extra)
        try:
            prog = wait_for_count(self.r, n, proc, started, run_timeout(n))
            after = Stats(self.r)
            res["noop_duplicates"] = check_exact(self.r, n)
            res.update(noop_rate=prog.rate, noop_startup=prog.startup, noop_seconds=prog.seconds)
            if lib.name != CEILING:
                res.update(self._cost(n, before, enqueued, after, prog.polls))
            res.update(self._idle(proc))
        except BenchError as exc:
            exc.detail += f"\n{tail(proc.log)}"  # type: ignore[attr-defined]
            raise
        finally:
            kill_group(proc)
        return res

    def _cost(
        self, n: int, before: Stats, enqueued: Stats, after: Stats, polls: int
    ) -> dict[str, Any]:
        """Commands and round trips per job, without the harness's own (INFO, the GET
        polls) and without the job body's INCR (redis-py sends INCRBY)."""
        enq = enqueued.minus(before)
        work = after.minus(enqueued)
        for diff in (enq, work):
            diff.pop("info", None)
        work["get"] = work.get("get", 0) - polls
        work["incrby"] = work.get("incrby", 0) - n
        enq_reads = enqueued.reads - before.reads - 1  # the INFO of the `enqueued` snapshot
        work_reads = after.reads - enqueued.reads - 1 - polls - n
        return {
            "cmds_per_job": (sum(enq.values()) + sum(work.values())) / n,
            "enqueue_cmds_per_job": sum(enq.values()) / n,
            "worker_cmds_per_job": sum(work.values()) / n,
            "trips_per_job": (enq_reads + work_reads) / n,
            "worker_trips_per_job": work_reads / n,
            "commands_enqueue": enq,
            "commands_worker": {k: v for k, v in work.items() if v},
        }

    def _idle(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        """The worker, now idle: CPU % and Redis commands/s over ``idle_seconds``;
        peak RSS (VmHWM) of its process tree."""
        time.sleep(0.5)
        pids = proc_tree(proc.pid)
        before = Stats(self.r)
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        time.sleep(self.cfg.idle_seconds)
        pids = proc_tree(proc.pid)
        cpu1, t1 = cpu_seconds(pids), time.monotonic()
        after = Stats(self.r)
        idle_cmds = after.minus(before)
        idle_cmds.pop("info", None)
        mem = memory_kib(pids)
        if proc.poll() is not None:
            raise BenchError("error", f"worker exited ({proc.returncode}) while idle")
        return {
            "idle_cpu": 100 * (cpu1 - cpu0) / (t1 - t0),
            "idle_cmds_per_s": sum(idle_cmds.values()) / (t1 - t0),
            "idle_commands": idle_cmds,
            "peak_rss": sum(m.get("VmHWM", 0) for m in mem.values()) / 1024,
            "processes": len(mem),
            "memory_kib": {str(pid): m for pid, m in mem.items()},
        }

    def sleep_and_latency(self, lib: Lib) -> dict[str, Any]:
        cfg = self.cfg
        n = cfg.sleep_jobs
        self.flush()
        if lib.name != CEILING:
            lib.preload("sleep", n, self.bulk(lib))
        extra = ["--kind", "sleep", "--n", str(n)] if lib.name == CEILING else []
        started = time.monotonic()
        proc = lib.start_worker(cfg.sleep_concurrency, "sleep", *extra)
        res: dict[str, Any] = {}
        try:
            prog = wait_for_count(self.r, n, proc, started, run_timeout(n))
            res["sleep_duplicates"] = check_exact(self.r, n)
            res.update(sleep_rate=prog.rate, sleep_startup=prog.startup)
            if lib.name != CEILING:
                time.sleep(0.5)
                lat = lib.driver("latency", "--n", str(cfg.latency_jobs), "--timeout", "20")
                if lat["error"]:
                    raise BenchError("timeout", f"latency: {lat['error']}")
                res.update(
                    lat_p50=percentile(lat["push_to_start"], 50),
                    lat_p99=percentile(lat["push_to_start"], 99),
                    lat_done_p50=percentile(lat["push_to_done"], 50),
                    push_p50=percentile(lat["push"], 50),
                )
        except BenchError as exc:
            exc.detail += f"\n{tail(proc.log)}"  # type: ignore[attr-defined]
            raise
        finally:
            kill_group(proc)
        return res

    def one_round(self, rnd: int, names: list[str]) -> None:
        for name in names:
            lib = self.lib(name)
            began = time.monotonic()
            rec: dict[str, Any] = {"round": rnd}
            steps: list[tuple[str, Callable[[Lib], dict[str, Any]]]] = [
                ("noop", self.noop),
                ("sleep+latency", self.sleep_and_latency),
            ]
            if name != CEILING:
                steps.insert(0, ("enqueue", self.enqueue_single))
            for what, fn in steps:
                out = self.measure(what, lambda fn=fn, lib=lib: fn(lib))  # type: ignore[misc]
                if "error" in out:
                    rec.setdefault("errors", {})[what] = out
                else:
                    rec.update(out)
            self.raw.setdefault(name, []).append(rec)
            print(f"  {name:<9} {short(rec)}  ({time.monotonic() - began:.0f}s)", flush=True)

    def soak_run(self, name: str) -> None:
        """RSS of the worker after each tenth of ``soak_jobs`` noop jobs."""
        cfg = self.cfg
        lib = self.lib(name)
        chunk = max(cfg.soak_jobs // 10, 1)
        self.flush()
        began = time.monotonic()
        proc = lib.start_worker(cfg.noop_concurrency, "soak")
        rss: list[float] = []
        res: dict[str, Any] = {"jobs": chunk * 10, "rss_mib": rss}
        try:
            for i in range(1, 11):
                lib.preload("noop", chunk, self.bulk(lib))
                wait_for_count(self.r, chunk * i, proc, time.monotonic(), run_timeout(chunk))
                mem = memory_kib(proc_tree(proc.pid))
                rss.append(sum(m.get("VmRSS", 0) for m in mem.values()) / 1024)
            res["duplicates"] = check_exact(self.r, chunk * 10)
            res["growth_mib"] = rss[-1] - rss[0]
            res["seconds"] = time.monotonic() - began
        except BenchError as exc:
            res.update(error=exc.kind, detail=exc.detail + "\n" + tail(proc.log))  # type: ignore[attr-defined]
            print(f"  soak {name}: {exc.kind}: {exc.detail}", flush=True)
        finally:
            kill_group(proc)
        self.soak[name] = res
        if "growth_mib" in res:
            print(
                f"  soak {name}: {res['jobs']} jobs, RSS {rss[0]:.1f} -> {rss[-1]:.1f} MiB "
                f"({res['growth_mib']:+.1f}) in {res['seconds']:.0f}s",
                flush=True,
            )


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def short(rec: dict[str, Any]) -> str:
    parts = []
    for key, label, fmt in (
        ("noop_rate", "noop", "{:.0f}/s"),
        ("sleep_rate", "sleep", "{:.0f}/s"),
        ("enqueue_single", "push", "{:.0f}/s"),
        ("enqueue_bulk", "bulk", "{:.0f}/s"),
        ("lat_p50", "p50", "{:.1f}ms"),
        ("cmds_per_job", "cmds", "{:.1f}"),
        ("idle_cpu", "idle", "{:.2f}%"),
        ("peak_rss", "rss", "{:.0f}MiB"),
    ):
        if key in rec:
            parts.append(f"{label} " + fmt.format(rec[key]))
    for what, err in rec.get("errors", {}).items():
        parts.append(f"{what} {err['error'].upper()}")
    return "  ".join(parts)


# -- report ----------------------------------------------------------------------------
#: key, label, whether higher is better
METRICS: list[tuple[str, str, bool]] = [
    ("noop_rate", "noop: jobs/s (first to last completion)", True),
    ("noop_startup", "noop: worker start-up to first completion, s", False),
    ("sleep_rate", "sleep 10 ms: jobs/s", True),
    ("enqueue_single", "enqueue one at a time: jobs/s", True),
    ("enqueue_bulk", "enqueue in bulk: jobs/s", True),
    ("lat_p50", "latency push→start p50, ms", False),
    ("lat_p99", "latency push→start p99, ms", False),
    ("cmds_per_job", "Redis commands per job (push + run)", False),
    ("enqueue_cmds_per_job", "… of which to push", False),
    ("trips_per_job", "round trips (Redis reads) per job", False),
    ("idle_cpu", "idle worker CPU, %", False),
    ("idle_cmds_per_s", "idle worker Redis commands/s", False),
    ("peak_rss", "worker peak RSS, MiB", False),
]


def summarise(raw: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Median over rounds of each metric; a metric that failed in every round is
    reported by its error ("timeout", "error", "wrong count")."""
    out: dict[str, dict[str, Any]] = {}
    for name, recs in raw.items():
        med: dict[str, Any] = {}
        for key, _, _ in METRICS:
            values = [r[key] for r in recs if key in r and r[key] == r[key]]  # drop NaN
            if values:
                med[key] = statistics.median(values)
                med[key + "_n"] = len(values)
        errors = [e["error"] for r in recs for e in r.get("errors", {}).values()]
        if errors:
            med["errors"] = errors
        out[name] = med
    return out


def fmt(value: Any, key: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if key.endswith("rate") or key in ("enqueue_single", "enqueue_bulk"):
        return f"{value:,.0f}"
    if key in ("idle_cpu",):
        return f"{value:.2f}"
    if key in ("peak_rss", "idle_cmds_per_s"):
        return f"{value:.1f}" if value < 100 else f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def failed_label(raw: list[dict[str, Any]], key: str) -> str | None:
    step = {"noop": "noop", "sleep": "sleep+latency", "lat": "sleep+latency"}
    for prefix, what in step.items():
        if key.startswith(prefix):
            for r in raw:
                err = r.get("errors", {}).get(what)
                if err:
                    return str(err["error"])
    if key.startswith("enqueue_single"):
        for r in raw:
            if "enqueue" in r.get("errors", {}):
                return str(r["errors"]["enqueue"]["error"])
    return None


def table(
    summary: dict[str, dict[str, Any]], raw: dict[str, list[dict[str, Any]]], names: list[str]
) -> str:
    peers = [n for n in names if n not in ("taskq", CEILING)]
    head = [*names, "taskq ÷ best peer", "taskq ÷ ceiling"]
    lines = [
        "| metric | better | " + " | ".join(head) + " |",
        "|---|:-:|" + "---:|" * len(head),
    ]
    for key, label, higher in METRICS:
        cells = []
        for name in names:
            value = summary.get(name, {}).get(key)
            if value is None:
                failed = failed_label(raw.get(name, []), key)
                if failed and name != CEILING:
                    value = failed
            cells.append(fmt(value, key))
        taskq = summary.get("taskq", {}).get(key)
        peer_values = [summary[p][key] for p in peers if key in summary.get(p, {})]
        ratio_peer = ratio_ceiling = "—"
        if taskq is not None and peer_values:
            best = max(peer_values) if higher else min(peer_values)
            ratio_peer = f"{taskq / best:.2f}{TIMES}" if best else "—"
        ceiling = summary.get(CEILING, {}).get(key)
        if taskq is not None and ceiling:
            ratio_ceiling = f"{taskq / ceiling:.2f}{TIMES}"
        arrow = "↑" if higher else "↓"
        lines.append(
            f"| {label} | {arrow} | " + " | ".join([*cells, ratio_peer, ratio_ceiling]) + " |"
        )
    return "\n".join(lines)


def soak_table(soak: dict[str, Any]) -> str:
    if not soak:
        return ""
    lines = [
        "| library | jobs | RSS after first tenth, MiB | RSS at the end, MiB | growth, MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, res in soak.items():
        if "growth_mib" in res:
            rss = res["rss_mib"]
            lines.append(
                f"| {name} | {res['jobs']:,} | {rss[0]:.1f} | {rss[-1]:.1f} | "
                f"{res['growth_mib']:+.1f} |"
            )
        else:
            lines.append(f"| {name} | {res['jobs']:,} | {res.get('error')} | | |")
    return "\n".join(lines)


def taskq_revision() -> str:
    """The commit taskq was measured at, "+ changes" if taskq/ differs from it."""
    root = HERE.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "taskq"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" + uncommitted changes in taskq/" if dirty else "")


def cpu_model() -> str:
    """The processor's model name. Ratios to the ceiling moved between days with
    taskq's hot path unchanged (0.74x, then 0.44x); results name the processor, so
    that runs on different ones are not compared as if alike."""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def markdown(bench: Bench, names: list[str], elapsed: float) -> str:
    cfg = bench.cfg
    summary = summarise(bench.raw)
    versions = ", ".join(
        f"{n} {bench.info[n]['version']}" for n in names if n in bench.info and n != CEILING
    )
    versions = versions.replace("taskq 0.1.0", f"taskq {bench.revision}")
    py = next(iter(bench.info.values()), {}).get("python", "?")
    parts = [
        "# taskq benchmark results",
        "",
        f"Median of {cfg.rounds} round(s); one worker process per library; "
        f"noop: {cfg.noop_jobs:,} jobs at concurrency {cfg.noop_concurrency}; "
        f"sleep: {cfg.sleep_jobs:,} jobs of `asyncio.sleep(0.01)` at concurrency "
        f"{cfg.sleep_concurrency} (at most {cfg.sleep_concurrency / 0.01:,.0f} jobs/s); "
        f"enqueue one at a time: {cfg.single_jobs:,} jobs; bulk: the noop preload; "
        f"latency: {cfg.latency_jobs} jobs, one at a time, to an idle worker. "
        f"Commands, round trips and idle figures exclude the harness's own commands "
        f"and the job's INCR. RSS is the sum over the worker's process tree.",
        "",
        f"Machine: {os.cpu_count()} CPUs ({bench.cpu_model}), Python {py}, redis-server "
        f"{bench.r.info('server')['redis_version']}. Versions: {versions}. "
        f"Whole run: {elapsed / 60:.1f} min{' (--quick)' if cfg.quick else ''}.",
        "",
        table(summary, bench.raw, names),
        "",
    ]
    notes = [
        f"- **{n}**: {bench.info[n]['notes']}" for n in names if bench.info.get(n, {}).get("notes")
    ]
    if notes:
        parts += ["How each library was run:", "", *notes, ""]
    if bench.soak:
        parts += [f"Memory over a longer run (noop jobs, concurrency {cfg.noop_concurrency}):", ""]
        parts += [soak_table(bench.soak), ""]
    errors = [
        f"- {n} round {r['round']} {what}: {e['error']}: {e['detail'].splitlines()[0]}"
        for n in names
        for r in bench.raw.get(n, [])
        for what, e in r.get("errors", {}).items()
    ]
    dups = [
        f"- {n} round {r['round']} {what}: {r[key]} job(s) ran twice (counter above the "
        "number of jobs pushed)"
        for n in names
        for r in bench.raw.get(n, [])
        for what, key in (("noop", "noop_duplicates"), ("sleep", "sleep_duplicates"))
        if r.get(key)
    ]
    if dups:
        parts += ["Jobs run twice (every job ran; the rates stand):", "", *dups, ""]
    if errors:
        parts += ["Failures:", "", *errors, ""]
    return "\n".join(parts)


def draw_chart(bench: Bench, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(bench.raw)
    panels = [
        ("noop_rate", None, "noop jobs/s ↑", False),
        ("sleep_rate", None, "sleep 10 ms jobs/s ↑", False),
        ("enqueue_single", "enqueue_bulk", "enqueue jobs/s ↑ (single | bulk)", True),
        ("lat_p50", "lat_p99", "latency push→start ms ↓ (p50 | p99)", True),
        ("cmds_per_job", "trips_per_job", "per job ↓ (commands | round trips)", False),
        ("idle_cpu", None, "idle worker CPU % ↓", False),
        ("peak_rss", None, "worker peak RSS MiB ↓", False),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(18, 8.5))
    colors = {n: ("#d62728" if n == "taskq" else "#7f7f7f") for n in names}
    colors[CEILING] = "#2ca02c"
    for ax, (key, key2, title, log) in zip(axes.flat, panels, strict=False):
        shown = [n for n in names if key in summary.get(n, {}) or key2 in summary.get(n, {})]
        xs = range(len(shown))
        width = 0.4 if key2 else 0.7
        v1 = [summary[n].get(key, 0) for n in shown]
        ax.bar(
            [x - (width / 2 if key2 else 0) for x in xs],
            v1,
            width,
            color=[colors[n] for n in shown],
        )
        if key2:
            v2 = [summary[n].get(key2, 0) for n in shown]
            ax.bar(
                [x + width / 2 for x in xs],
                v2,
                width,
                color=[colors[n] for n in shown],
                alpha=0.5,
                hatch="//",
            )
        ax.set_xticks(list(xs), shown, rotation=30, fontsize=9)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    ax = axes.flat[7]
    if any(r.get("rss_mib") for r in bench.soak.values()):
        for name, res in bench.soak.items():
            if res.get("rss_mib"):
                step = res["jobs"] / 10
                xs2 = [step * (i + 1) for i in range(len(res["rss_mib"]))]
                ax.plot(xs2, res["rss_mib"], marker="o", label=name, color=colors.get(name))
        top = max((max(r["rss_mib"]) for r in bench.soak.values() if r.get("rss_mib")), default=1)
        ax.set_ylim(0, top * 1.25)
        ax.set_title("worker RSS MiB over a long run", fontsize=10)
        ax.set_xlabel("jobs done")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    else:
        ax.axis("off")
    fig.suptitle(
        f"taskq vs peers: one worker process each, median of {bench.cfg.rounds} round(s) "
        f"(red: taskq, green: no-queue ceiling)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> Config:
    p = argparse.ArgumentParser(description="Benchmark taskq against its peers.")
    p.add_argument("--quick", action="store_true", help="fewer jobs, one round (~4 min)")
    p.add_argument("--only", help="comma-separated libraries (default: all)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--noop-jobs", type=int)
    p.add_argument("--noop-concurrency", type=int)
    p.add_argument("--sleep-jobs", type=int)
    p.add_argument("--sleep-concurrency", type=int)
    p.add_argument("--single-jobs", type=int, help="jobs pushed one at a time")
    p.add_argument("--latency-jobs", type=int)
    p.add_argument("--idle-seconds", type=float)
    p.add_argument("--soak-jobs", type=int, help="jobs of the RSS-growth run (0: skip)")
    p.add_argument("--soak-libs", help="libraries to soak (default: taskq; 'all')")
    p.add_argument("--no-ceiling", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results", help="where results go")
    args = p.parse_args(argv)
    cfg = Config(quick=args.quick, out=str(args.out))
    if args.quick:
        cfg.rounds, cfg.noop_jobs, cfg.sleep_jobs = 1, 5_000, 2_000
        cfg.single_jobs, cfg.latency_jobs, cfg.idle_seconds = 500, 30, 3.0
        cfg.soak_jobs = 20_000
    for name in (
        "rounds",
        "noop_jobs",
        "noop_concurrency",
        "sleep_jobs",
        "sleep_concurrency",
        "single_jobs",
        "latency_jobs",
        "idle_seconds",
        "soak_jobs",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg, name, value)
    if args.only:
        cfg.libs = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = set(cfg.libs) - set(LIBS) - {CEILING}
        if unknown:
            p.error(f"unknown libraries {sorted(unknown)}; known: {', '.join(LIBS)}")
        cfg.ceiling = CEILING in cfg.libs or not args.no_ceiling
        cfg.libs = [n for n in cfg.libs if n != CEILING]
    else:
        cfg.ceiling = not args.no_ceiling
    if args.soak_libs:
        soak = [n.strip() for n in args.soak_libs.split(",") if n.strip()]
        cfg.soak_libs = list(LIBS) if soak == ["all"] else soak
    cfg.soak_libs = [n for n in cfg.soak_libs if n in cfg.libs]
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    names = list(cfg.libs) + ([CEILING] if cfg.ceiling else [])
    missing = [n for n in cfg.libs if not (VENVS / n / "bin" / "python").exists()]
    if missing:
        sys.exit(f"missing venvs {missing}: run bash benchmarks/setup.sh")
    signal.signal(signal.SIGTERM, _on_signal)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="taskq-bench-"))
    began = time.monotonic()
    print(f"config: {json.dumps(asdict(cfg))}", flush=True)
    print(f"logs and redis data: {workdir}", flush=True)
    try:
        with redis_server(workdir) as url:
            bench = Bench(cfg, url, workdir)
            for name in list(names):
                try:
                    bench.info[name] = bench.lib(name).driver("info")
                except BenchError as exc:
                    print(f"  {name}: cannot load, skipped: {exc.detail}", flush=True)
                    names.remove(name)
                    continue
                print(f"  {name:<9} {bench.info[name]}", flush=True)
            for rnd in range(cfg.rounds):
                order = names[rnd % len(names) :] + names[: rnd % len(names)]
                print(f"round {rnd + 1}/{cfg.rounds}: {', '.join(order)}", flush=True)
                bench.one_round(rnd + 1, order)
            if cfg.soak_jobs > 0:
                for name in cfg.soak_libs:
                    bench.soak_run(name)
            elapsed = time.monotonic() - began
            md = markdown(bench, names, elapsed)
            (out_dir / "results.md").write_text(md)
            (out_dir / "results.json").write_text(
                json.dumps(
                    {
                        # where the results went is this machine's business
                        "config": {k: v for k, v in asdict(cfg).items() if k != "out"},
                        "elapsed_seconds": elapsed,
                        "machine": {"cpus": os.cpu_count(), "cpu_model": bench.cpu_model},
                        "versions": bench.info,
                        "taskq_revision": bench.revision,
                        "summary": summarise(bench.raw),
                        "rounds": bench.raw,
                        "soak": bench.soak,
                    },
                    indent=1,
                    default=str,
                )
            )
            draw_chart(bench, names, out_dir / "chart.png")
    except KeyboardInterrupt:
        print("interrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        kill_all()
    print()
    print(md)
    print(f"\nwrote {out_dir}/results.md, results.json, chart.png; logs in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
