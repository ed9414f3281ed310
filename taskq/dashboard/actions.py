"""The dashboard's two changes: retry a dead letter, purge dead letters.

Synchronous, like ``taskq retry`` and ``taskq purge`` which they mirror; each returns
whether it worked and a sentence for the page.
"""

from __future__ import annotations

import logging

from ..broker import Broker

log = logging.getLogger(__name__)


def retry(broker: Broker, queue: str, dead_id: str) -> tuple[bool, str]:
    """Put one dead letter back on its queue as a fresh job (same id, attempts reset)."""
    entry = broker.dead_letter(queue, dead_id)
    if entry is None:
        return False, f"no dead letter {dead_id} in queue {queue} (already retried or purged?)"
    problem = broker.revive_dead_letter(queue, entry)
    if problem:
        return False, problem
    log.info("dead letter %s of queue %r retried from the dashboard", dead_id, queue)
    return True, f"retried {dead_id}: back on queue {queue}"


def purge(broker: Broker, queue: str, dead_id: str | None) -> tuple[bool, str]:
    """Delete one dead letter of ``queue``, or every one if ``dead_id`` is None."""
    removed = broker.purge_dead(queue, None if dead_id is None else [dead_id])
    log.info(
        "purged %d dead letter(s) of queue %r from the dashboard (%s)",
        removed,
        queue,
        dead_id or "all",
    )
    if dead_id is not None and not removed:
        return False, f"no dead letter {dead_id} in queue {queue}"
    return True, f"purged {removed} dead letter(s) of queue {queue}"
