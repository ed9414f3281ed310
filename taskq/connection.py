"""Redis clients from a URL: ``redis://``, ``rediss://``, ``unix://``, ``memory://``,
``redis-cluster://`` / ``rediss-cluster://`` (any one node of a Redis Cluster;
redis-py's cluster client discovers the rest), or ``redis+sentinel://`` /
``rediss+sentinel://`` (the master of a service that Redis Sentinels watch; see
:func:`sentinel_target`).

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
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

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


def _client_options(url: str) -> dict[str, Any]:
    """_CLIENT_OPTIONS for ``url``: TCP keepalive is a TCP socket option, which
    redis-py's unix-socket connection rejects."""
    if url.startswith("unix://"):
        return {k: v for k, v in _CLIENT_OPTIONS.items() if k != "socket_keepalive"}
    return _CLIENT_OPTIONS


def cluster_node_url(url: str) -> str | None:
    """``redis://host:port`` for a cluster URL, None for any other URL."""
    for scheme in ("redis-cluster://", "rediss-cluster://"):
        if url.startswith(scheme):
            return scheme.replace("-cluster", "") + url[len(scheme) :]
    return None


#: The Sentinel URL schemes, and whether each uses TLS.
SENTINEL_SCHEMES = {"redis+sentinel://": False, "rediss+sentinel://": True}
SENTINEL_PORT = 26379
#: The options of a ``rediss+sentinel://`` URL that go to redis-py's TLS connections.
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


class SentinelRedis(redis.Redis):
    """The client of a master a Sentinel names: closing it also closes its
    connections to the sentinels, which redis-py's leaves open."""

    def close(self) -> None:
        super().close()
        pool: Any = self.connection_pool  # a SentinelConnectionPool
        pool.disconnect()  # redis-py 5.0's close leaves it connected
        for node in pool.sentinel_manager.sentinels:
            node.close()


class AsyncSentinelRedis(aioredis.Redis):
    """The asyncio :class:`SentinelRedis`."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool: Any = self.connection_pool  # a SentinelConnectionPool
        await pool.disconnect()
        for node in pool.sentinel_manager.sentinels:
            await node.aclose()


@dataclass(frozen=True)
class SentinelTarget:
    """Where a ``redis+sentinel://`` URL points: the sentinels to ask, the service
    whose master to use, and how to log in to each."""

    nodes: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False
    #: TLS options (TLS_OPTIONS) as (name, value) pairs, for both the master and the
    #: sentinels.
    tls: tuple[tuple[str, str], ...] = ()

    def master(
        self, sentinel_class: Any, redis_class: type[Any], socket_timeout: float | None
    ) -> Any:
        """A ``redis_class`` client of the service's current master (``sentinel_class``
        is redis-py's sync or asyncio Sentinel). Its connections ask the sentinels where the
        master is each time they connect, so after a failover a lost connection
        is made again to the new master."""
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 5}
        if self.sentinel_password is not None:
            sentinel_kwargs["password"] = self.sentinel_password
        if self.ssl:
            sentinel_kwargs.update(ssl=True, **dict(self.tls))
        sentinel = sentinel_class(list(self.nodes), sentinel_kwargs=sentinel_kwargs)
        return sentinel.master_for(
            self.service,
            redis_class=redis_class,
            db=self.db,
            username=self.username,
            password=self.password,
            ssl=self.ssl,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5,
            **dict(self.tls),
            **_CLIENT_OPTIONS,
        )


def sentinel_target(url: str) -> SentinelTarget | None:
    """What a Sentinel URL names; None for any other URL. The form::

        redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
            [?sentinel_password=...]

    Sentinels listen on port 26379 unless told; the user and password are the
    master's, ``sentinel_password`` the sentinels' own if they require one.
    ``rediss+sentinel://`` speaks TLS to both, and takes TLS_OPTIONS as options too.
    Raises ValueError for a malformed URL."""
    tls = next((v for scheme, v in SENTINEL_SCHEMES.items() if url.startswith(scheme)), None)
    if tls is None:
        return None
    rest = url.partition("://")[2].partition("#")[0]
    rest, _, query = rest.partition("?")
    userinfo, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    username, _, password = userinfo.partition(":")
    parts = [unquote(part) for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise ValueError("name the service after the sentinels: .../SERVICE or .../SERVICE/DB")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"the database must be a number, not {parts[1]!r}")
    options = {name: values[-1] for name, values in parse_qs(query, True).items()}
    known = ("sentinel_password", *TLS_OPTIONS) if tls else ("sentinel_password",)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} (known: {', '.join(known)})")
    return SentinelTarget(
        nodes=tuple(_host_port(node) for node in hosts.split(",")),
        service=parts[0],
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) if userinfo and password else None,
        sentinel_password=options.pop("sentinel_password", None),
        ssl=tls,
        tls=tuple(sorted(options.items())),
    )


def _host_port(node: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6 address]`` or ``[v6 address]:port``."""
    if node.startswith("["):
        host, bracket, port = node[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"bad sentinel address {node!r}")
        port = port[1:]
    else:
        host, colon, port = node.partition(":")
        if colon and not port:
            raise ValueError(f"bad sentinel port in {node!r}")
    host = unquote(host)
    if not host:
        raise ValueError(f"a sentinel address has no host: {node!r}")
    if not port:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad sentinel port in {node!r}")
    return host, int(port)


def connect(url: str, *, socket_timeout: float | None = None) -> redis.Redis:
    """A synchronous client for ``url``. No I/O happens until the first command,
    except for a cluster client, which discovers the cluster's nodes at once."""
    if is_memory(url):
        sync_cls, _ = _memory_client_classes()
        client: redis.Redis = sync_cls(server=_memory_server(url))
        return client
    node = cluster_node_url(url)
    try:
        target = sentinel_target(url)
        if target is not None:
            client = target.master(Sentinel, SentinelRedis, socket_timeout)
            return client
        if node is not None:
            cluster: Any = redis.RedisCluster.from_url(
                node, socket_timeout=socket_timeout, socket_connect_timeout=5
            )
            return cluster  # type: ignore[no-any-return]
        return redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5,
            **_client_options(url),
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
        target = sentinel_target(url)
        if target is not None:
            client = target.master(AsyncSentinel, AsyncSentinelRedis, socket_timeout)
            return client
        if node is not None:
            cluster: Any = aioredis.RedisCluster.from_url(
                node, socket_timeout=socket_timeout, socket_connect_timeout=5
            )
            return cluster  # type: ignore[no-any-return]
        return aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=5,
            **_client_options(url),
        )
    except ValueError as exc:
        raise ConfigError(f"bad Redis URL {mask_url(url)}: {exc}") from None
