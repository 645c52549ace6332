"""How every part of the fleet reaches Redis: plain Redis at ``STYLEBATCH_REDIS_URL``, or the
master of a Redis Sentinel group (``STYLEBATCH_REDIS_SENTINELS``, ``STYLEBATCH_REDIS_MASTER``;
docs/operations.md). The job store's client comes from ``client``; Celery's broker and result
backend settings from ``celery_urls`` and ``celery_transport_options`` (common/queue.py).

With sentinels, ``STYLEBATCH_REDIS_URL`` still holds the password (and user and db), so one
secret stays one setting: ``redis://:PASSWORD@ignored/0``; its host and port are not used."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import Connection, SSLConnection
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

# What a command is retried on, with backoff. A demoted primary answers writes with READONLY
# until the client reconnects: redis-py's Sentinel pool turns that into a ConnectionError and
# asks the sentinels again; with a plain URL (a DNS name or VIP that moves) retrying gives
# the name time to point at the new primary.
RETRY_ON = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
)
SENTINEL_PORT = 26379
SENTINEL_TIMEOUT = 2.0  # seconds to connect to, or hear from, one sentinel before the next


class _RefusedWritesAreTransient:
    """A primary with ``min-replicas-to-write`` answers NOREPLICAS while it lacks replicas (one
    restarting, or it was cut off from them, or demoted): the connection is dropped and the
    command retried like a lost connection, which with Sentinel asks for the master again.
    The command had no effect: Redis refuses it before any write."""

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOREPLICAS"):
                raise
            self.disconnect()
            raise redis.ConnectionError(f"the primary refused the write: {exc}") from exc


class _Connection(_RefusedWritesAreTransient, Connection):
    pass


class _SSLConnection(_RefusedWritesAreTransient, SSLConnection):
    pass


class _SentinelConnection(_RefusedWritesAreTransient, SentinelManagedConnection):
    """Asks the sentinels for the master on every (re)connection. redis-py's own connection
    does so only when taken from the pool: a command retried after an error reconnects to the
    address it had, so after a failover it kept writing to the demoted primary (READONLY on
    every retry) until its retries ran out (redis/redis-py#3874; seen with 8.1)."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True):
        if not self._sock and self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        return super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class _SentinelSSLConnection(_SentinelConnection, SSLConnection):
    pass


def retry_policy(retries: int) -> Retry:
    """Backoff 0.2, 0.4 .. 4 s: 20 retries ride out about a minute."""
    return Retry(ExponentialBackoff(cap=4.0, base=0.1), retries=retries)


def sentinel_addresses(spec: str) -> list[tuple[str, int]]:
    """``"h1:26379,h2,[::1]:26380"`` as ``[(host, port), ...]`` (26379 when no port)."""
    addresses = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":")
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        else:
            host, port = item, ""
        if not host or (port and not port.isdigit()):
            raise ValueError(f"STYLEBATCH_REDIS_SENTINELS: {item!r} is not host:port")
        addresses.append((host, int(port) if port else SENTINEL_PORT))
    return addresses


def _credentials(settings) -> dict[str, Any]:
    """Username, password, db and TLS from STYLEBATCH_REDIS_URL (its host is ignored)."""
    parts = urlsplit(settings.redis_url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("STYLEBATCH_REDIS_URL must start with redis:// or rediss://")
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise ValueError("STYLEBATCH_REDIS_URL: the path must be a database number")
    return {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "db": int(db),
        "tls": parts.scheme == "rediss",
    }


def _tls(settings) -> dict[str, Any]:
    return {"ssl_cert_reqs": "required", "ssl_ca_certs": settings.redis_tls_ca or None}


def sentinel_kwargs(settings) -> dict[str, Any]:
    """How to talk to the sentinels themselves: short timeouts (a dead one is skipped), their
    own password if they have one, and TLS when STYLEBATCH_REDIS_URL is rediss://."""
    kwargs: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
    }
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password
    if _credentials(settings)["tls"]:
        kwargs.update(ssl=True, **_tls(settings))
    return kwargs


def client(settings, retries: int = 20) -> redis.Redis:
    """A client (str replies) that rides out a Redis restart or a Sentinel failover: commands
    retry with backoff (20 retries: about a minute; the command line asks for fewer, to report
    a bad setting quickly). With sentinels, each new connection asks them for the master, so
    after a failover the client follows the new primary. ``rediss://`` verifies the server's
    certificate (against STYLEBATCH_REDIS_TLS_CA if set)."""
    common: dict[str, Any] = {
        "decode_responses": True,
        "health_check_interval": 30,
        "retry": retry_policy(retries),
        "retry_on_error": list(RETRY_ON),
    }
    creds = _credentials(settings)
    tls = _tls(settings) if creds.pop("tls") else {}
    if not settings.redis_sentinels:
        return redis.Redis.from_url(
            settings.redis_url,
            connection_class=_SSLConnection if tls else _Connection,
            **common,
            **tls,
        )
    sentinel = Sentinel(
        sentinel_addresses(settings.redis_sentinels), sentinel_kwargs=sentinel_kwargs(settings)
    )
    return sentinel.master_for(
        settings.redis_master,
        connection_class=_SentinelSSLConnection if tls else _SentinelConnection,
        **creds,
        **tls,
        **common,
    )


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def describe(settings) -> str:
    """Where Redis is, for logs, never with a password: ``redis://host:6379/0`` or
    ``sentinel master 'stylebatch' via h1:26379,h2:26379 db 0 (tls)``."""
    try:
        creds = _credentials(settings)
    except ValueError as exc:
        return f"invalid Redis setting ({exc})"
    tls = " (tls)" if creds["tls"] else ""
    user = f"{creds['username']}@" if creds["username"] else ""
    if settings.redis_sentinels:
        try:
            nodes = ",".join(
                f"{_host(h)}:{p}" for h, p in sentinel_addresses(settings.redis_sentinels)
            )
        except ValueError as exc:
            return f"invalid Redis setting ({exc})"
        return f"sentinel master {settings.redis_master!r} via {nodes} {user}db {creds['db']}{tls}"
    parts = urlsplit(settings.redis_url)
    host = _host(parts.hostname or "127.0.0.1")
    return f"{parts.scheme}://{user}{host}:{parts.port or 6379}/{creds['db']}"


def celery_urls(settings) -> str:
    """Celery's broker and result backend URL: STYLEBATCH_REDIS_URL itself, or with sentinels
    kombu's ``sentinel://:pw@h1:p1/db;sentinel://:pw@h2:p2/db`` (the master's password and db
    in every part; the master's name goes in the transport options)."""
    if not settings.redis_sentinels:
        return settings.redis_url
    creds = _credentials(settings)
    auth = ""
    if creds["username"] or creds["password"]:
        user = quote(creds["username"] or "", safe="")
        password = f":{quote(creds['password'], safe='')}" if creds["password"] else ""
        auth = f"{user}{password}@"
    return ";".join(
        f"sentinel://{auth}{_host(h)}:{p}/{creds['db']}"
        for h, p in sentinel_addresses(settings.redis_sentinels)
    )


def celery_transport_options(settings) -> dict[str, Any]:
    """What the broker's and the result backend's transport options need on top of their own
    for Sentinel: the master's name and how to talk to the sentinels (nothing without)."""
    if not settings.redis_sentinels:
        return {}
    return {"master_name": settings.redis_master, "sentinel_kwargs": sentinel_kwargs(settings)}


def planned_failover(settings, timeout: float = 30.0) -> tuple[str, int]:
    """Move the primary role to a replica without losing a write (maintenance of the primary's
    machine); returns the new primary's address. A bare ``SENTINEL FAILOVER`` is not enough:
    the old primary stays writable until Sentinel demotes it, some 10-15 s later, and what the
    clients still connected to it write in that time is lost (docs/operations.md). So:

    1. ``CLIENT PAUSE WRITE`` on the primary: writes wait (reads go on);
    2. wait until every online replica has replicated all it was sent;
    3. ``SENTINEL FAILOVER`` through one sentinel; wait until every sentinel names the new one;
    4. ``CLIENT KILL TYPE normal`` and ``pubsub`` on the old primary: its clients reconnect,
       ask the sentinels, and retry their waiting writes on the new primary;
    5. ``CLIENT UNPAUSE`` (also if anything above failed: then nothing has changed).
    """
    if not settings.redis_sentinels:
        raise ValueError("a planned failover needs STYLEBATCH_REDIS_SENTINELS")
    creds = _credentials(settings)
    tls = {"ssl": True, **_tls(settings)} if creds.pop("tls") else {}
    sentinel = Sentinel(
        sentinel_addresses(settings.redis_sentinels), sentinel_kwargs=sentinel_kwargs(settings)
    )
    name = settings.redis_master
    host, port = sentinel.discover_master(name)
    old = (host.decode() if isinstance(host, bytes) else host, int(port))
    primary = redis.Redis(old[0], old[1], **creds, **tls, decode_responses=True, socket_timeout=10)
    deadline = time.monotonic() + timeout

    def wait(check, what: str) -> None:
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"planned failover: {what} took over {timeout} s")
            time.sleep(0.1)

    def caught_up() -> bool:
        info = primary.info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        online = [r for r in online if r.get("state") == "online"]
        return bool(online) and all(r["offset"] >= info["master_repl_offset"] for r in online)

    def moved() -> bool:
        # What clients ask (SENTINEL MASTERS, as redis-py's discover_master): during a failover
        # GET-MASTER-ADDR-BY-NAME names the promoted replica already, MASTERS only once the
        # failover is over.
        seen = set()
        for node in sentinel.sentinels:
            try:
                state = node.sentinel_master(name)
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            if not sentinel.check_master_state(state, name):
                return False
            seen.add((state["ip"], int(state["port"])))
        return len(seen) == 1 and old not in seen

    # No replica online to move to (one still resyncing, say, or the last primary not yet
    # following): refused before writes are paused. A pause with none to catch up would last
    # the whole timeout, and the sentinels, whose hello messages it holds up, would find the
    # paused primary down and fail over on their own to whatever replica they have.
    info = primary.info("replication")
    if not any(
        isinstance(v, dict) and v.get("state") == "online"
        for k, v in info.items()
        if k.startswith("slave")
    ):
        primary.close()
        sentinel.close()
        raise TimeoutError("planned failover: no replica online to move the primary to")
    primary.execute_command("CLIENT", "PAUSE", int(timeout * 1000) + 5000, "WRITE")
    try:
        wait(caught_up, "the replicas catching up")
        for node in sentinel.sentinels:  # one sentinel runs the failover
            try:
                node.execute_command("SENTINEL", "FAILOVER", name)
                break
            except (redis.ConnectionError, redis.TimeoutError):
                continue
        else:
            raise redis.ConnectionError("no sentinel reachable")
        wait(moved, "the sentinels naming a new primary")
        new = sentinel.discover_master(name)
        primary.execute_command("CLIENT", "KILL", "TYPE", "normal")
        primary.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    finally:
        primary.execute_command("CLIENT", "UNPAUSE")
        primary.close()
        sentinel.close()
    return new
