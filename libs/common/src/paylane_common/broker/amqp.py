"""The robust RabbitMQ connection every service holds, to one broker or to the nodes of a
cluster (``AMQP_URL`` naming several hosts: each connection attempt goes to the next)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Generator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aio_pika.robust_connection import RobustConnection

log = structlog.get_logger(__name__)

#: Between whole URLs: whitespace (never part of a URL), or a comma before a scheme.
_URL_SEPARATOR = re.compile(r"\s+|,\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
RECONNECT_INTERVAL_S = 1.0
#: Connecting to one node (TCP, AMQP handshake) may take this long.
CONNECT_TIMEOUT_S = 5.0


def broker_urls(url: str) -> tuple[str, ...]:
    """One URL a broker node, in the order given, from ``AMQP_URL``'s two forms:

    - hosts separated by commas in one URL: ``amqp://user:pw@h1:5672,h2:5672,h3/vhost``
      (the credentials, vhost and query apply to every host);
    - whole URLs separated by commas or whitespace: ``amqp://…@h1/vhost amqp://…@h2/vhost``.

    Checks nothing else (the settings type does); a single host comes back unchanged."""
    urls: list[str] = []
    for part in _URL_SEPARATOR.split(url.strip()):
        if part.rstrip(","):
            urls.extend(_one_url_per_host(part.rstrip(",")))
    return tuple(urls) or ("",)


def _one_url_per_host(url: str) -> list[str]:
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return [url]
    return [urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}")) for host in hosts.split(",")]


def host_of(url: str) -> str:
    """``host:port`` of a single-host URL: what logs may say about a broker (never the
    credentials)."""
    parts = urlsplit(url)
    default = 5671 if parts.scheme == "amqps" else 5672
    host = parts.hostname or ""
    return f"[{host}]:{parts.port or default}" if ":" in host else f"{host}:{parts.port or default}"


class FailoverConnection(RobustConnection):
    """A robust connection over the nodes of a cluster: every failed attempt and every
    lost connection moves it to the next URL, so it reconnects to a node that is up
    (round robin, ``reconnect_interval`` between attempts); channels, queues and
    consumers are restored on whichever node it reaches."""

    def __init__(self, urls: tuple[str, ...], *, start: int = 0, **kwargs: Any) -> None:
        super().__init__(make_url(urls[start]), **kwargs)
        self._urls = urls
        self._current = start

    @property
    def broker(self) -> str:
        """``host:port`` of the node this connection is on (or tries next)."""
        return host_of(self._urls[self._current])

    async def _on_connected(self) -> None:
        await super()._on_connected()
        log.info("broker_connected", broker=self.broker, connection=self._name)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Called for a failed attempt as well as for a lost connection.
        await super()._on_connection_close(closing)
        if self._close_called or len(self._urls) == 1:
            return
        failed = self.broker
        self._current = (self._current + 1) % len(self._urls)
        self.url = make_url(self._urls[self._current])
        log.warning(
            "broker_failover",
            broker=failed,
            error=_reason(closing),
            next=self.broker,
            connection=self._name,
        )

    @property
    def _name(self) -> str:
        properties = self.kwargs.get("client_properties") or {}
        return str(properties.get("connection_name", ""))


def _reason(closing: asyncio.Future[Any]) -> str:
    """Why a connection closed or an attempt failed, for the log."""
    if closing.cancelled():
        return "closed"
    exc = closing.exception()
    return repr(exc) if exc is not None else "closed"


def connect(url: str, name: str) -> Connecting:
    """A connection that reconnects (every second, to the next node of ``url``'s hosts)
    and restores its channels and consumers. The first connection tries every host once;
    when none answered, it raises what a single host answered, or a ConnectionError
    saying what each of several did.

    ``async with connect(url, name) as connection:`` closes it on leaving (within
    :data:`CLOSE_TIMEOUT_S`); ``await connect(url, name)`` hands it over, for an owner
    that closes it itself."""
    return Connecting(url, name)


class Connecting:
    """What :func:`connect` returns: an async context manager, or an awaitable."""

    def __init__(self, url: str, name: str) -> None:
        self._url = url
        self._name = name
        self._connection: AbstractRobustConnection | None = None

    def __await__(self) -> Generator[Any, None, AbstractRobustConnection]:
        return _connect(self._url, self._name).__await__()

    async def __aenter__(self) -> AbstractRobustConnection:
        self._connection = await _connect(self._url, self._name)
        return self._connection

    async def __aexit__(self, *_exc: object) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await close_quietly(connection, "connection")


async def _connect(url: str, name: str) -> AbstractRobustConnection:
    urls = broker_urls(url)
    failures: list[str] = []
    for start in range(len(urls)):
        connection = FailoverConnection(
            urls,
            start=start,
            reconnect_interval=RECONNECT_INTERVAL_S,
            client_properties={"connection_name": f"paylane-{name}"},
        )
        try:
            # aio-pika keeps the timeout for every reconnection too: a node that drops
            # packets costs this long, not the kernel's two minutes, before the next.
            await connection.connect(timeout=CONNECT_TIMEOUT_S)
            return connection
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
            await connection.close()
            if len(urls) == 1:
                raise
            failures.append(f"{host_of(urls[start])}: {exc or type(exc).__name__}")
        except BaseException:  # cancelled (a start-up probe's own timeout): nothing left open
            await asyncio.shield(connection.close())
            raise
    raise ConnectionError(f"no broker answered ({'; '.join(failures)})")


#: What closing a channel or a connection may take: with the broker away a robust one
#: would wait for it to come back, and SIGTERM must end a service within its budget.
CLOSE_TIMEOUT_S = 2.0


async def close_quietly(closable: Any, what: str) -> None:
    """``await closable.close()``, given up after :data:`CLOSE_TIMEOUT_S` (the broker is
    away: it drops what was open) or on an error, which is logged."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await closable.close()
    except Exception as exc:
        log.warning("amqp_close_failed", what=what, error=repr(exc)[:200])


def hosts_of(url: str) -> list[str]:
    """``host:port`` of each broker node ``url`` names, without credentials (for logs)."""
    return [host_of(one) for one in broker_urls(url)]


def broker_ready(connection: AbstractRobustConnection | None) -> bool:
    return connection is not None and not connection.is_closed and not connection.reconnecting


#: Broker bookkeeping that must not follow a copy (it describes the original's deliveries).
_BROKER_HEADERS = frozenset({"x-death", "x-delivery-count", "x-stream-offset"})
_BROKER_HEADER_PREFIXES = ("x-first-death-", "x-last-death-")


def without_broker_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        name: value
        for name, value in (headers or {}).items()
        if name not in _BROKER_HEADERS and not name.startswith(_BROKER_HEADER_PREFIXES)
    }


def copy_message(message: AbstractIncomingMessage, headers: dict[str, Any]) -> aio_pika.Message:
    """A persistent copy to publish elsewhere (retry, DLQ, replay) with exactly ``headers``.

    Not copied: expiration (the copy must not expire in its new queue) and user_id (the
    broker checks it against the publishing user)."""
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )
