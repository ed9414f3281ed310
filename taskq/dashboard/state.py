"""What the dashboard shows, read from Redis through the broker's verbs.

Everything here is synchronous (the web handlers run it in a thread pool) and
returns plain JSON-ready values: the same dicts feed the HTML and ``/api/state``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from ..broker import Broker
from ..job import JobRecord
from ..payload import BadPayload, decode, peek_id

log = logging.getLogger(__name__)

#: How many waiting, delayed, running and dead jobs each list shows per queue.
LIST_LIMIT = 50
#: Rates are averaged over the samples of this many seconds.
RATE_WINDOW = 60.0


class Rates:
    """Jobs per second from the ``done``/``failed`` counters, sampled at each refresh.

    Shared by every request (hence the lock): a rate is the counters' growth over
    the samples of the last :data:`RATE_WINDOW` seconds, None until a second has
    passed since the first sample.
    """

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}
        self._lock = threading.Lock()

    def update(self, queue: str, now: float, done: int, failed: int) -> dict[str, float | None]:
        with self._lock:
            samples = self._samples.setdefault(queue, deque())
            if samples and (done < samples[-1][1] or failed < samples[-1][2]):
                samples.clear()  # counters were reset: start over
            if not samples or now - samples[-1][0] >= 0.5:
                samples.append((now, done, failed))
            while len(samples) > 2 and now - samples[1][0] >= self.window:
                samples.popleft()
            first_at, first_done, first_failed = samples[0]
        elapsed = now - first_at
        if elapsed < 1.0:
            return {"done_rate": None, "failed_rate": None}
        return {
            "done_rate": (done - first_done) / elapsed,
            "failed_rate": (failed - first_failed) / elapsed,
        }


def job_summary(raw: bytes) -> dict[str, Any]:
    """What a raw job in a list says about itself; unreadable jobs say why."""
    try:
        payload, _ = decode(raw)
    except BadPayload as exc:
        return {
            "id": peek_id(raw),
            "task": None,
            "args": [],
            "kwargs": {},
            "attempts": 0,
            "enqueued_at": None,
            "bad": str(exc),
            "raw": raw[:200].decode("utf-8", "replace"),
        }
    return {
        "id": payload.id,
        "task": payload.task,
        "args": payload.args,
        "kwargs": payload.kwargs,
        "attempts": payload.attempts,
        "enqueued_at": payload.enqueued_at,
    }


def snapshot(broker: Broker, rates: Rates, heartbeat_timeout: float) -> dict[str, Any]:
    """Queues, workers, delayed jobs and dead letters, as of now."""
    now = time.time()
    alive_after = now - heartbeat_timeout
    names = broker.queue_names()
    queues = []
    delayed = []
    dead = []
    for name in names:
        info = broker.queue_info(name, alive_after)
        info.update(rates.update(name, now, info["done"], info["failed"]))
        info["waiting"] = [job_summary(raw) for raw in broker.waiting_jobs(name, LIST_LIMIT)]
        queues.append(info)
        for raw, due in broker.delayed_jobs(name, LIST_LIMIT):
            delayed.append({**job_summary(raw), "queue": name, "due": due})
        for entry in broker.dead_letters(name, LIST_LIMIT):
            dead.append({**entry, "queue": name})
    workers = []
    for worker in broker.workers(alive_after):
        served = [q for q in str(worker.get("queues", "")).split(",") if q] or names
        running = broker.running_jobs(worker["id"], served, LIST_LIMIT)
        worker["running"] = [
            {**job_summary(raw), "queue": q} for q, raws in running.items() for raw in raws
        ]
        workers.append(worker)
    delayed.sort(key=lambda d: float(d["due"]))
    dead.sort(key=lambda d: -float(d.get("died_at") or 0))
    return {
        "time": now,
        "queues": queues,
        "workers": workers,
        "delayed": delayed,
        "dead": dead,
    }


def job(broker: Broker, job_id: str) -> dict[str, Any] | None:
    """A job's whole record (None if there is none), with its dead letter if it has one."""
    fields = broker.record(job_id)
    if not fields:
        return None
    try:
        record = JobRecord.from_fields(job_id, fields).as_dict()
    except ValueError as exc:  # a record written by hand, or by another producer
        log.warning("job %s has an unreadable record: %s", job_id, exc)
        record = {"id": job_id, **fields, "unreadable": str(exc)}
    record["stalls"] = int(fields.get("stalls") or 0)
    queue = str(record.get("queue") or "")
    record["dead_letter"] = broker.dead_letter(queue, job_id) if queue else None
    return record
