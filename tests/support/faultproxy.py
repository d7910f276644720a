"""A TCP fault proxy for chaos tests and the bench's slow database: sits between the
services and RabbitMQ or MySQL and, on demand, adds latency, blackholes traffic, or resets
every connection.

- ``latency_up`` / ``latency_down``: seconds added to every chunk going to upstream /
  coming back from it; ``latency`` sets both. Chunks are delayed, not serialised: each is
  due its latency after it arrived (order is kept), so throughput is not capped.
- ``blackhole()`` / ``heal()``: while blackholed nothing is forwarded in either direction
  and new connections are accepted but not connected upstream. Data is held, not
  dropped, as with a real partition that heals before TCP gives up: the byte streams stay
  intact (dropping bytes mid-stream would corrupt the AMQP/MySQL framing, which no
  network does).
- ``reset()``: aborts every connection on both sides with a TCP RST (``SO_LINGER`` 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    accepted: int = 0
    upstream_failures: int = 0
    resets: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side, upstream's side, and its pumps."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class FaultProxy:
    """``127.0.0.1:<port>`` → ``upstream_host:upstream_port``; start() / stop()."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        name: str = "proxy",
        latency_up: float = 0.0,
        latency_down: float = 0.0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.name = name
        #: Seconds each chunk from the client is held before it goes upstream.
        self.latency_up = latency_up
        #: Seconds each chunk from upstream is held before it goes to the client.
        self.latency_down = latency_down
        self.stats = ProxyStats()
        self._open = asyncio.Event()
        self._open.set()
        self._refusing = False
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        return len(self._links)

    @property
    def latency(self) -> float:
        """The latency added each way (the larger one if they differ); setting it sets both."""
        return max(self.latency_up, self.latency_down)

    @latency.setter
    def latency(self, seconds: float) -> None:
        self.latency_up = self.latency_down = seconds

    @property
    def blackholed(self) -> bool:
        return not self._open.is_set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.heal()
        self.reset()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- faults ------------------------------------------------------------------------

    def blackhole(self) -> None:
        """Forward nothing (held, not dropped) until :meth:`heal`."""
        self._open.clear()

    def refuse(self) -> None:
        """The upstream as a stopped server: every connection reset, new ones reset at
        once, until :meth:`heal`."""
        self._refusing = True
        self.reset()

    def heal(self) -> None:
        self._refusing = False
        self._open.set()

    def reset(self) -> int:
        """Abort every connection, both sides, with an RST; returns how many."""
        links = list(self._links)
        for link in links:
            self._abort(link)
        self.stats.resets += len(links)
        return len(links)

    # --- plumbing ----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.stats.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        graceful = False
        if self._refusing:
            self._abort(link)
            self._handlers.discard(task)
            return
        try:
            await self._open.wait()  # a blackholed network does not even connect
            if link not in self._links:  # reset while blackholed
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                self.stats.upstream_failures += 1
                return
            if link not in self._links:  # reset while connecting
                _rst(up_writer)
                return
            link.upstream = up_writer
            link.tasks = {
                asyncio.create_task(self._pump(reader, up_writer, "up")),
                asyncio.create_task(self._pump(up_reader, writer, "down")),
            }
            done, _ = await asyncio.wait(link.tasks, return_when=asyncio.FIRST_EXCEPTION)
            # Both directions ended with an EOF: close politely; any error: reset.
            graceful = len(done) == 2 and all(
                not t.cancelled() and t.exception() is None for t in done
            )
        except asyncio.CancelledError:
            pass
        finally:
            if graceful and link in self._links:
                self._links.discard(link)
                for side in (link.client, link.upstream):
                    if side is not None:
                        side.close()
            else:
                self._abort(link)
            self._handlers.discard(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str
    ) -> None:
        """Copy src → dst until EOF (passed on as a half-close); every chunk is held for
        its direction's latency and while blackholed. Raises on a connection error."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, dst, direction))
        last_due = 0.0
        read: asyncio.Future[bytes] | None = None
        try:
            while True:
                await self._open.wait()  # stop reading: the sender's TCP backs off
                read = asyncio.ensure_future(src.read(CHUNK))
                await asyncio.wait({read, deliver}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():  # the writing side failed first
                    read.cancel()
                    await deliver  # raises its error
                    return
                data = read.result()
                latency = self.latency_up if direction == "up" else self.latency_down
                due = max(time.monotonic() + latency, last_due)
                last_due = due
                queue.put_nowait((due, data))
                if not data:
                    break
            await deliver
        finally:
            if read is not None and not read.done():
                read.cancel()
            if not deliver.done():
                deliver.cancel()
            # Reap it whatever happened (its error, if any, is this connection's end).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await deliver

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter, direction: str
    ) -> None:
        while True:
            due, data = await queue.get()
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # the injected latency itself
            await self._open.wait()
            if not data:
                if dst.can_write_eof() and not dst.is_closing():
                    dst.write_eof()
                return
            if dst.is_closing():
                raise ConnectionResetError(f"{direction}: peer gone")
            dst.write(data)
            await dst.drain()
            if direction == "up":
                self.stats.bytes_up += len(data)
            else:
                self.stats.bytes_down += len(data)

    def _abort(self, link: _Link) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        for task in link.tasks:
            task.cancel()
        _rst(link.client)
        if link.upstream is not None:
            _rst(link.upstream)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN, as a dropped connection looks to a peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


__all__ = ["FaultProxy", "ProxyStats"]


def through(proxy: FaultProxy) -> Callable[[str], str]:
    """The same URL (credentials, vhost or database) with the proxy as host and port."""

    def rewrite(url: str) -> str:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    return rewrite
