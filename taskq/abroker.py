"""The asyncio verbs: a worker's event loop thread, and async producers.

One :class:`AsyncBroker` per event loop: its client belongs to that loop. See
:mod:`taskq.broker` for the write-ordering rule both follow.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from . import scripts
from .broker import (
    dead_entry,
    fields_of,
    queue_push,
    queue_records,
    queue_status,
    record_fields,
    text,
)
from .keys import Keys
from .payload import Payload, dumps


@dataclass(frozen=True)
class Outcome:
    """How one run of a job ended."""

    status: str  # "done", "failed" (for good: dead-lettered) or "scheduled" (a retry)
    result: str | None = None  # JSON of the return value
    error: str | None = None  # "ExcType: message"
    traceback: str | None = None
    due: float | None = None  # when a retry runs


class AsyncBroker:
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
        self._replace = client.register_script(scripts.REPLACE)
        self._bury = client.register_script(scripts.BURY)
        self._retry_later = client.register_script(scripts.RETRY_LATER)

    # -- producers -------------------------------------------------------------------
    async def push(
        self, queue: str, jobs: Sequence[tuple[Payload, bytes]], due: float | None = None
    ) -> None:
        pipe = self.client.pipeline(transaction=False)
        queue_push(pipe, self.keys, queue, jobs, due)
        await pipe.execute()

    async def statuses(self, job_ids: Sequence[str]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        queue_status(pipe, self.keys, job_ids)
        return [text(s) for s in await pipe.execute()]

    async def record(self, job_id: str) -> dict[str, str]:
        return fields_of(await self.client.hgetall(self.keys.job(job_id)))

    async def records(self, job_ids: Sequence[str]) -> list[dict[str, str]]:
        pipe = self.client.pipeline(transaction=False)
        queue_records(pipe, self.keys, job_ids)
        return [fields_of(r) for r in await pipe.execute()]

    # -- the worker ------------------------------------------------------------------
    async def give_id(self, queue: str, worker: str, raw: bytes, payload: Payload) -> bytes:
        """Store a job pushed without an id under the id the worker gave it."""
        new_raw = payload.encode()
        await self._replace(keys=[self.keys.active(queue, worker)], args=[raw, new_raw])
        return new_raw

    async def start(self, queue: str, worker: str, payload: Payload) -> int:
        """Mark the job active; returns its attempt number."""
        key = self.keys.job(payload.id)
        fields = record_fields(payload, queue, "active")
        fields.update(started_at=repr(time.time()), worker=worker)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.hincrby(key, "attempts", 1)
        attempts: int = (await pipe.execute())[1]
        return attempts

    async def finish(
        self, queue: str, worker: str, raw: bytes, payload: Payload, outcome: Outcome, attempts: int
    ) -> None:
        """Write the outcome, then release the job from the active list: to nowhere
        (done), to the delayed set (a retry) or to the dead letters (failed)."""
        key = self.keys.job(payload.id)
        now = time.time()
        fields = {"status": outcome.status}
        for name in ("result", "error", "traceback"):
            value = getattr(outcome, name)
            if value is not None:
                fields[name] = value
        pipe = self.client.pipeline(transaction=False)
        if outcome.status == "scheduled":
            assert outcome.due is not None
            fields["due_at"] = repr(outcome.due)
            pipe.hset(key, mapping=fields)
            pipe.hincrby(self.keys.stats(queue), "retried", 1)
            await self._retry_later(
                keys=[self.keys.active(queue, worker), self.keys.delayed(queue)],
                args=[raw, repr(outcome.due)],
                client=pipe,
            )
        else:
            fields["finished_at"] = repr(now)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, self.result_ttl)
            pipe.hincrby(self.keys.stats(queue), outcome.status, 1)
            if outcome.status == "failed":
                entry = dead_entry(
                    queue,
                    raw,
                    "failed",
                    job_id=payload.id,
                    task=payload.task,
                    error=outcome.error,
                    traceback=outcome.traceback,
                    attempts=attempts,
                )
                await self._queue_bury(pipe, worker, raw, entry)
            else:
                pipe.hdel(self.keys.stalls(queue), payload.id)
                pipe.lrem(self.keys.active(queue, worker), 1, raw)
        await pipe.execute()

    async def bury(self, worker: str, raw: bytes, entry: dict[str, Any]) -> None:
        """Move a job from the worker's active list to the dead letters."""
        pipe = self.client.pipeline(transaction=False)
        await self._queue_bury(pipe, worker, raw, entry)
        await pipe.execute()

    async def _queue_bury(self, pipe: Any, worker: str, raw: bytes, entry: dict[str, Any]) -> None:
        q = entry["queue"]
        k = self.keys
        now = entry["died_at"]
        await self._bury(
            keys=[k.active(q, worker), k.dead(q), k.dead_data(q), k.stats(q), k.stalls(q)],
            args=[raw, entry["id"], dumps(entry), repr(now), repr(now - self.dead_retention)],
            client=pipe,
        )
