"""Load generation: open loop at a fixed rate (latency measured from each request's
*scheduled* time, so a stalled server cannot hide its queueing: no coordinated
omission) and closed loop at saturation (throughput).

The generator shares the machine's cores with what it measures, so it is lean: each
request is rendered to its HTTP/1.1 bytes before the clock starts, and sent over
keep-alive connections by a bare asyncio protocol that reads only the status line and
the body's length (a few microseconds a request, where a full HTTP client costs tens).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

Request = tuple[dict[str, str], bytes]

#: Seconds a request may take before it counts as an error.
TIMEOUT_S = 30.0


@dataclass
class Result:
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_s: list[float] = field(default_factory=list)
    duration_s: float = 0.0
    errors: int = 0

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    @property
    def rate(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> dict[str, float]:
        return {
            "sent": self.sent,
            "acked": self.ok,
            "errors": self.errors,
            "non_2xx": self.sent - self.ok - self.errors,
            "rate_per_s": round(self.rate, 1),
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p95_ms": round(self.percentile(95) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
        }


def render(url: str, request: Request) -> bytes:
    """A keep-alive ``POST`` of the request's body to ``url``, as bytes."""
    parts = urlsplit(url)
    headers, body = request
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{lines}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _targets(
    urls: str | Sequence[str], requests: Sequence[Request], limit: int
) -> list[tuple[_Connections, bytes]]:
    """Each request rendered for its target, round-robin over ``urls`` (replicas, as a
    load balancer would spread them), with a connection pool per target."""
    urls = [urls] if isinstance(urls, str) else list(urls)
    pools = []
    for url in urls:
        parts = urlsplit(url)
        pools.append(_Connections(parts.hostname or "127.0.0.1", parts.port or 80, limit))
    return [
        (pools[i % len(urls)], render(urls[i % len(urls)], request))
        for i, request in enumerate(requests)
    ]


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).lower()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(self._buffer) < end + 4 + length:
            return
        del self._buffer[: end + 4 + length]
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(int(head[9:12]))
        if b"\r\nconnection: close" in head and self._transport is not None:
            self._transport.close()

    async def send(self, raw: bytes) -> int:
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter


class _Connections:
    """Keep-alive connections, at most ``limit`` (as a client's connection pool): a
    request waits for a free one, its latency still counted from its scheduled time."""

    def __init__(self, host: str, port: int, limit: int):
        self._host, self._port = host, port
        self._idle: deque[_Connection] = deque()
        self._free = asyncio.Semaphore(limit)

    async def take(self) -> _Connection:
        await self._free.acquire()
        try:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
            _, conn = await asyncio.get_running_loop().create_connection(
                _Connection, self._host, self._port
            )
        except BaseException:
            self._free.release()
            raise
        return conn

    def give_back(self, conn: _Connection) -> None:
        if not conn.closed:
            self._idle.append(conn)
        self._free.release()


async def _one(pool: _Connections, raw: bytes, started: float, result: Result) -> None:
    try:
        conn = await pool.take()
    except OSError:
        result.errors += 1
        return
    try:
        async with asyncio.timeout(TIMEOUT_S):
            status = await conn.send(raw)
    except (OSError, TimeoutError):
        result.errors += 1
        conn.closed = True  # its answer may still come: never reuse it
        return
    finally:
        pool.give_back(conn)
    result.latencies_s.append(time.perf_counter() - started)
    result.statuses[status] = result.statuses.get(status, 0) + 1


async def open_loop(
    urls: str | Sequence[str],
    requests: Sequence[Request],
    rate: float,
    *,
    connections: int = 256,
) -> Result:
    """Send ``requests`` at ``rate``/s; each latency counts from its scheduled time."""
    targets = _targets(urls, requests, connections)
    result = Result()
    tasks = []
    start = time.perf_counter()
    i = 0
    while i < len(targets):
        now = time.perf_counter()
        # Everything due by now goes out (a late wake-up sends a burst, as clients would).
        while i < len(targets) and start + i / rate <= now:
            pool, raw = targets[i]
            tasks.append(asyncio.create_task(_one(pool, raw, start + i / rate, result)))
            i += 1
        result.sent = i
        if i < len(targets):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    result.duration_s = time.perf_counter() - start
    return result


async def closed_loop(
    urls: str | Sequence[str],
    requests: Sequence[Request],
    *,
    concurrency: int = 64,
    seconds: float = 10.0,
) -> Result:
    """``concurrency`` workers send back to back for ``seconds``: acknowledged/s."""
    targets = _targets(urls, requests, concurrency)
    result = Result()
    index = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal index
        while time.perf_counter() < deadline and index < len(targets):
            pool, raw = targets[index]
            index += 1
            result.sent += 1
            await _one(pool, raw, time.perf_counter(), result)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.duration_s = time.perf_counter() - start
    return result
