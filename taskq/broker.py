"""Every Redis key taskq uses, and every command it sends.

Key space (``Q`` is a queue name, ``W`` a worker id, ``ID`` a job id). Keys of one
queue share the hash tag ``{Q}``, so every script and pipeline touching them stays in
one Redis Cluster slot.

=============================  ======  ==================================================
key                            type    holds / lifetime
=============================  ======  ==================================================
``taskq:{Q}:queue``            list    jobs waiting (JSON, see :mod:`taskq.payload`);
                                       producers LPUSH, workers take from the right
``taskq:{Q}:active:W``         list    jobs worker W has taken and not yet finished;
                                       a job leaves only once its outcome is written
``taskq:{Q}:workers``          zset    W -> time of W's last heartbeat, for workers of Q
``taskq:{Q}:stats``            hash    ``done`` / ``failed`` / ``dead`` counters
``taskq:{Q}:dead``             zset    dead-letter id -> time it died; entries older than
                                       ``dead_retention`` are trimmed (and counted) on write
``taskq:{Q}:dead:data``        hash    dead-letter id -> JSON entry: reason, error,
                                       traceback, attempts and the job's raw payload
``taskq:queues``               set     names of queues that ever had a job pushed
``taskq:job:ID``               hash    the job's record (status, task, args, times,
                                       worker, result or error); expires ``result_ttl``
                                       seconds after the job finishes
``taskq:worker:W``             hash    W's host, pid, queues, start time; expires when
                                       W stops heart-beating
=============================  ======  ==================================================

Writes that span a queue's keys and a job record are pipelined in an order that is
safe if cut short: the record is written first, the job leaves the active list last,
so a crash in between makes the job run again rather than vanish.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from .payload import Payload, dumps, new_id

PREFIX = "taskq"


@dataclass(frozen=True)
class Keys:
    """Builds key names; nothing else in taskq spells a key."""

    prefix: str = PREFIX

    def queue(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:queue"

    def active(self, q: str, worker: str) -> str:
        return f"{self.prefix}:{{{q}}}:active:{worker}"

    def workers(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:workers"

    def stats(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:stats"

    def dead(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:dead"

    def dead_data(self, q: str) -> str:
        return f"{self.prefix}:{{{q}}}:dead:data"

    def queues(self) -> str:
        return f"{self.prefix}:queues"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def worker(self, worker: str) -> str:
        return f"{self.prefix}:worker:{worker}"


# KEYS[1] queue, KEYS[2] active list; ARGV[1] how many. Moves up to that many jobs,
# oldest first, in one round trip.
FETCH_MANY = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local v = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not v then break end
  out[i] = v
end
return out
"""

# KEYS[1] active list, KEYS[2] queue. Puts every job of the active list back at the
# front of the queue (the end workers take from), oldest job frontmost.
PUT_BACK = """
local n = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end
return n
"""

# KEYS[1] active list; ARGV[1] raw job, ARGV[2] the same job with its id filled in.
# Replaces a job in place, so it is never out of the active list.
REPLACE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


# KEYS[1] active list, KEYS[2] dead zset, KEYS[3] dead data hash, KEYS[4] stats;
# ARGV[1] raw job, ARGV[2] dead-letter id, ARGV[3] entry JSON, ARGV[4] now,
# ARGV[5] trim entries that died before this time. Adds the entry and takes the job
# out of the active list in one step; returns how many old entries were trimmed.
BURY = """
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5])
for _, id in ipairs(old) do redis.call('HDEL', KEYS[3], id) end
if #old > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5])
  redis.call('HINCRBY', KEYS[4], 'dead_trimmed', #old)
end
redis.call('HINCRBY', KEYS[4], 'dead', 1)
redis.call('LREM', KEYS[1], 1, ARGV[1])
return #old
"""


def dead_entry(
    queue: str,
    raw: bytes,
    reason: str,
    *,
    job_id: str | None = None,
    task: str | None = None,
    error: str | None = None,
    traceback: str | None = None,
    attempts: int = 0,
) -> dict[str, Any]:
    """A dead letter: everything needed to understand and retry the job."""
    entry: dict[str, Any] = {
        "id": job_id or new_id(),
        "queue": queue,
        "task": task,
        "reason": reason,
        "error": error,
        "traceback": traceback,
        "attempts": attempts,
        "died_at": time.time(),
    }
    try:
        entry["payload"] = raw.decode("utf-8")
    except UnicodeDecodeError:
        entry["payload_base64"] = base64.b64encode(raw).decode()
    return entry


def _record_fields(payload: Payload, queue: str) -> dict[str, Any]:
    return {
        "status": "queued",
        "task": payload.task,
        "queue": queue,
        "args": dumps(payload.args),
        "kwargs": dumps(payload.kwargs),
        "attempts": 0,
        "enqueued_at": repr(payload.enqueued_at),
    }


def queue_push(pipe: Any, keys: Keys, queue: str, jobs: Sequence[tuple[Payload, bytes]]) -> None:
    """Queue the commands that push ``jobs`` (payload, encoded) onto ``queue``."""
    for payload, _ in jobs:
        pipe.hset(keys.job(payload.id), mapping=_record_fields(payload, queue))
    pipe.lpush(keys.queue(queue), *(raw for _, raw in jobs))
    pipe.sadd(keys.queues(), queue)


def queue_status(pipe: Any, keys: Keys, job_ids: Iterable[str]) -> None:
    for job_id in job_ids:
        pipe.hget(keys.job(job_id), "status")


@dataclass(frozen=True)
class Outcome:
    """How a job ended, as written to its record."""

    status: str  # "done" or "failed"
    result: str | None = None  # JSON of the return value
    error: str | None = None  # "ExcType: message"
    traceback: str | None = None


class Broker:
    """Synchronous verbs: producers, the master thread, the CLI."""

    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        # redis-py's annotations assume str replies and int timeouts; taskq reads bytes
        # and blocks for fractions of a second, so the client is typed loosely here.
        self.client: Any = client
        self.keys = keys or Keys()
        self._fetch_many = client.register_script(FETCH_MANY)
        self._put_back = client.register_script(PUT_BACK)

    # -- producers -------------------------------------------------------------------
    def push(self, queue: str, jobs: Sequence[tuple[Payload, bytes]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        queue_push(pipe, self.keys, queue, jobs)
        pipe.execute()

    def statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        queue_status(pipe, self.keys, job_ids)
        return [_text(s) for s in pipe.execute()]

    def record(self, job_id: str) -> dict[str, str]:
        return _fields(self.client.hgetall(self.keys.job(job_id)))

    def records(self, job_ids: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [_fields(r) for r in pipe.execute()]

    # -- the master ------------------------------------------------------------------
    def fetch(self, queue: str, worker: str, n: int) -> list[bytes]:
        """Move up to ``n`` jobs into the worker's active list at once, without waiting."""
        if n == 1:
            one = self.client.lmove(
                self.keys.queue(queue), self.keys.active(queue, worker), "RIGHT", "LEFT"
            )
            return [one] if one is not None else []
        got = self._fetch_many(
            keys=[self.keys.queue(queue), self.keys.active(queue, worker)], args=[n]
        )
        return list(got)

    def fetch_blocking(self, queue: str, worker: str, timeout: float) -> bytes | None:
        """Wait inside Redis up to ``timeout`` seconds for one job and move it."""
        got: bytes | None = self.client.blmove(
            self.keys.queue(queue), self.keys.active(queue, worker), timeout, "RIGHT", "LEFT"
        )
        return got

    def put_back(self, queue: str, worker: str) -> list[str]:
        """Put every job still in the worker's active list back at the queue's front.

        Returns the ids that could be read; their records go back to ``queued``.
        """
        active = self.keys.active(queue, worker)
        raws = self.client.lrange(active, 0, -1)
        moved = self._put_back(keys=[active, self.keys.queue(queue)])
        from .payload import peek_id

        ids = [i for i in (peek_id(r) for r in raws[:moved]) if i is not None]
        if ids:
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hset(self.keys.job(job_id), mapping={"status": "queued", "worker": ""})
            pipe.execute()
        return ids

    def heartbeat(
        self, worker: str, queues: Sequence[str], info: dict[str, str], ttl: float
    ) -> None:
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.zadd(self.keys.workers(q), {worker: now})
        pipe.hset(self.keys.worker(worker), mapping=info)
        pipe.pexpire(self.keys.worker(worker), int(ttl * 1000))
        pipe.execute()

    def unregister(self, worker: str, queues: Sequence[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for q in queues:
            pipe.zrem(self.keys.workers(q), worker)
        pipe.delete(self.keys.worker(worker))
        pipe.execute()

    # -- inspection ------------------------------------------------------------------
    def queue_names(self) -> list[str]:
        return sorted(_text(q) or "" for q in self.client.smembers(self.keys.queues()))

    def queue_info(self, queue: str, alive_after: float) -> dict[str, Any]:
        workers_key = self.keys.workers(queue)
        alive = [
            _text(w) or "" for w in self.client.zrangebyscore(workers_key, alive_after, "+inf")
        ]
        every = [_text(w) or "" for w in self.client.zrange(workers_key, 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(self.keys.queue(queue))
        for w in every:
            pipe.llen(self.keys.active(queue, w))
        pipe.hgetall(self.keys.stats(queue))
        replies = pipe.execute()
        stats = {_text(k): int(v) for k, v in replies[-1].items()}
        return {
            "queue": queue,
            "queued": replies[0],
            "in_progress": sum(replies[1:-1]),
            "done": stats.get("done", 0),
            "failed": stats.get("failed", 0),
            "dead": self.client.zcard(self.keys.dead(queue)),
            "workers": sorted(alive),
        }

    def workers(self, alive_after: float) -> list[dict[str, Any]]:
        """Live workers (heartbeat after ``alive_after``) with what they told about themselves."""
        seen: dict[str, float] = {}
        for q in self.queue_names():
            for w, score in self.client.zrangebyscore(
                self.keys.workers(q), alive_after, "+inf", withscores=True
            ):
                name = _text(w) or ""
                seen[name] = max(score, seen.get(name, 0.0))
        now = time.time()
        out = []
        for name in sorted(seen):
            fields = _fields(self.client.hgetall(self.keys.worker(name)))
            out.append({"id": name, "age": max(0.0, now - seen[name]), **fields})
        return out


class AsyncBroker:
    """Asyncio verbs: the event-loop thread of a worker, and async producers.

    One instance per event loop: its client belongs to that loop.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        keys: Keys | None = None,
        result_ttl: int = 86_400,
        dead_retention: int = 7 * 86_400,
    ) -> None:
        self.client: Any = client  # loosely typed: see Broker
        self.keys = keys or Keys()
        self.result_ttl = result_ttl
        self.dead_retention = dead_retention
        self._replace = client.register_script(REPLACE)
        self._bury = client.register_script(BURY)

    async def _queue_bury(self, pipe: Any, worker: str, raw: bytes, entry: dict[str, Any]) -> None:
        q = entry["queue"]
        now = entry["died_at"]
        await self._bury(
            keys=[
                self.keys.active(q, worker),
                self.keys.dead(q),
                self.keys.dead_data(q),
                self.keys.stats(q),
            ],
            args=[raw, entry["id"], dumps(entry), repr(now), repr(now - self.dead_retention)],
            client=pipe,
        )

    async def bury(self, worker: str, raw: bytes, entry: dict[str, Any]) -> None:
        """Move a job from the worker's active list to the dead letters."""
        pipe = self.client.pipeline(transaction=False)
        await self._queue_bury(pipe, worker, raw, entry)
        await pipe.execute()

    async def push(self, queue: str, jobs: Sequence[tuple[Payload, bytes]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        queue_push(pipe, self.keys, queue, jobs)
        await pipe.execute()

    async def statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        queue_status(pipe, self.keys, job_ids)
        return [_text(s) for s in await pipe.execute()]

    async def record(self, job_id: str) -> dict[str, str]:
        return _fields(await self.client.hgetall(self.keys.job(job_id)))

    async def records(self, job_ids: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [_fields(r) for r in await pipe.execute()]

    async def give_id(self, queue: str, worker: str, raw: bytes, payload: Payload) -> bytes:
        """Store a job pushed without an id under the id the worker gave it."""
        new_raw = payload.encode()
        await self._replace(keys=[self.keys.active(queue, worker)], args=[raw, new_raw])
        return new_raw

    async def start(self, queue: str, worker: str, payload: Payload) -> int:
        """Mark the job active; returns its attempt number."""
        key = self.keys.job(payload.id)
        pipe = self.client.pipeline(transaction=False)
        fields = _record_fields(payload, queue)
        del fields["attempts"]
        fields.update(status="active", started_at=repr(time.time()), worker=worker)
        pipe.hset(key, mapping=fields)
        pipe.hincrby(key, "attempts", 1)
        attempts: int = (await pipe.execute())[1]
        return attempts

    async def finish(
        self, queue: str, worker: str, raw: bytes, payload: Payload, outcome: Outcome, attempts: int
    ) -> None:
        """Write the outcome, then release the job: failures go to the dead letters."""
        job_id = payload.id
        key = self.keys.job(job_id)
        fields: dict[str, str] = {"status": outcome.status, "finished_at": repr(time.time())}
        for name in ("result", "error", "traceback"):
            value = getattr(outcome, name)
            if value is not None:
                fields[name] = value
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self.result_ttl)
        pipe.hincrby(self.keys.stats(queue), outcome.status, 1)
        if outcome.status == "failed":
            entry = dead_entry(
                queue,
                raw,
                "failed",
                job_id=job_id,
                task=payload.task,
                error=outcome.error,
                traceback=outcome.traceback,
                attempts=attempts,
            )
            await self._queue_bury(pipe, worker, raw, entry)
        else:
            pipe.lrem(self.keys.active(queue, worker), 1, raw)
        await pipe.execute()


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", "replace")


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {_text(k) or "": _text(v) or "" for k, v in raw.items()}
