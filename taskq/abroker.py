"""The asyncio verbs: a worker's event loop thread, and async producers.

One :class:`AsyncBroker` per event loop: its client belongs to that loop. Changes
are built by :class:`taskq.writes.WriteBuilder`, shared with the sync broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from . import scripts
from .broker import PUSH_BATCH, fields_of, is_cluster, queue_records, queue_status, text
from .keys import Keys
from .payload import Payload
from .writes import WriteBuilder, Writes, round_trips


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
        self.cluster = is_cluster(client)
        self.writes = WriteBuilder(self.keys, result_ttl, dead_retention)
        self._scripts: dict[str, Any] = {}

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    async def apply(self, w: Writes) -> None:
        """Carry out ``w`` in its phase order (see :func:`taskq.writes.round_trips`)."""
        for trip in round_trips(w, self.cluster):
            if not trip.commands and len(trip.scripts) == 1:
                source, keys, args = trip.scripts[0]
                await self._script(source)(keys=keys, args=args)
                continue
            pipe = self.client.pipeline(transaction=False)
            for name, key, command_args in trip.commands:
                pipe.execute_command(name, key, *command_args)
            for source, keys, args in trip.scripts:
                await self._script(source)(keys=keys, args=args, client=pipe)
            await pipe.execute()

    async def push(
        self, queue: str, jobs: Sequence[tuple[Payload, bytes]], due: float | None = None
    ) -> None:
        for start in range(0, len(jobs), PUSH_BATCH):
            await self.apply(self.writes.push(queue, jobs[start : start + PUSH_BATCH], due))

    async def push_unique(self, queue: str, payload: Payload, raw: bytes, due: float | None) -> str:
        """See :meth:`taskq.broker.Broker.push_unique`."""
        assert payload.key is not None
        w = self.writes.push(queue, [(payload, raw)], due)
        await self.apply(Writes(records=w.records))
        target = self.keys.queue(queue) if due is None else self.keys.delayed(queue)
        holder = await self._script(scripts.PUSH_UNIQUE)(
            keys=[self.keys.unique(queue, payload.key), target],
            args=[payload.id, raw, "" if due is None else repr(due)],
        )
        holder = text(holder) or ""
        if holder != payload.id:
            await self.client.delete(self.keys.job(payload.id))
        return holder

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
