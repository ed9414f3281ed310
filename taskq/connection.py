"""Redis clients from a URL: ``redis://``, ``rediss://``, ``unix://``, ``memory://``,
or ``redis-cluster://`` / ``rediss-cluster://`` (any one node of a Redis Cluster;
redis-py's cluster client discovers the rest).

``memory://NAME`` is an in-process Redis (fakeredis): every client made for the same
URL in one process shares one server, so a worker and its producers can run together
with no Redis at all (``taskq demo``, tests). It is single-process by nature.

Thread ownership: a sync client is used by one thread (the master, the heartbeat
thread, or a producer); an async client belongs to the event loop it was created on.
Clients are never shared between threads.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import redis
import redis.asyncio as aioredis

from .config import ConfigError, mask_url

SyncRedis = redis.Redis
AsyncRedis = aioredis.Redis

_memory_servers: dict[str, Any] = {}
_memory_lock = threading.Lock()


def is_memory(url: str) -> bool:
    return url.startswith("memory://")


def _memory_server(url: str) -> Any:
    import fakeredis

    with _memory_lock:
        server = _memory_servers.get(url)
        if server is None:
            server = _memory_servers[url] = fakeredis.FakeServer(version=(7, 2))
        return server


@functools.cache
def _memory_client_classes() -> tuple[type[Any], type[Any]]:
    import fakeredis

    class MemoryRedis(fakeredis.FakeRedis):
        # fakeredis's BLMOVE returns at once instead of blocking; BRPOPLPUSH is the
        # same move (tail of the source to the head of the destination) and blocks.
        def blmove(  # type: ignore[override]
            self, first_list: str, second_list: str, timeout: float, src: str, dest: str
        ) -> Any:
            if (src, dest) != ("RIGHT", "LEFT"):
                raise NotImplementedError("memory:// supports BLMOVE RIGHT LEFT only")
            return self.brpoplpush(first_list, second_list, timeout)

    return MemoryRedis, fakeredis.FakeAsyncRedis


#: What a Redis client raises when Redis is unreachable or refuses a command.
REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
)

_CLIENT_OPTIONS: dict[str, Any] = {
    "health_check_interval": 30,
    "socket_keepalive": True,
}


def cluster_node_url(url: str) -> str | None:
    """``redis://host:port`` for a cluster URL, None for any other URL."""
    for scheme in ("redis-cluster://", "rediss-cluster://"):
        if url.startswith(scheme):
            return scheme.replace("-cluster", "") + url[len(scheme) :]
    return None


def connect(url: str, *, socket_timeout: float | None = None) -> redis.Redis:
    """A synchronous client for ``url``. No I/O happens until the first command,
    except for a cluster client, which discovers the cluster's nodes at once."""
    if is_memory(url):
        sync_cls, _ = _memory_client_classes()
        client: redis.Redis = sync_cls(server=_memory_server(url))
        return client
    node = cluster_node_url(url)
    try:
        if node is not None:
            cluster: Any = redis.RedisCluster.from_url(
                node, socket_timeout=socket_timeout, socket_connect_timeout=5
            )
            return cluster  # type: ignore[no-any-return]
        return redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=5, **_CLIENT_OPTIONS
        )
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL {mask_url(url)}: {exc}") from None


def connect_async(url: str, *, socket_timeout: float | None = None) -> aioredis.Redis:
    """An asyncio client for ``url``, to be used only on the loop that first uses it."""
    if is_memory(url):
        _, async_cls = _memory_client_classes()
        client: aioredis.Redis = async_cls(server=_memory_server(url))
        return client
    node = cluster_node_url(url)
    try:
        if node is not None:
            cluster: Any = aioredis.RedisCluster.from_url(
                node, socket_timeout=socket_timeout, socket_connect_timeout=5
            )
            return cluster  # type: ignore[no-any-return]
        return aioredis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=5, **_CLIENT_OPTIONS
        )
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL {mask_url(url)}: {exc}") from None
