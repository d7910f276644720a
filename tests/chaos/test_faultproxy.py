"""The fault proxy itself, against a local echo server: it forwards, latency adds delay
(each direction on its own, without capping throughput), a blackhole forwards nothing (and
heals without losing bytes), a reset closes both sides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.polling import eventually

pytestmark = pytest.mark.chaos


class EchoServer:
    def __init__(self) -> None:
        self.received = bytearray()
        #: time.monotonic() of the last chunk the server read.
        self.received_at = 0.0
        self.accepted = 0
        self.closed = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            while data := await reader.read(65536):
                self.received += data
                self.received_at = time.monotonic()
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.closed += 1
            writer.close()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[FaultProxy, EchoServer]]:
    echo = EchoServer()
    port = await echo.start()
    proxy = await FaultProxy("127.0.0.1", port, name="echo").start()
    try:
        yield proxy, echo
    finally:
        await proxy.stop()
        await echo.stop()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 5
) -> float:
    started = time.monotonic()
    writer.write(data)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(data)), timeout) == data
    return time.monotonic() - started


async def test_forwards_both_ways(proxy: tuple[FaultProxy, EchoServer]) -> None:
    fault, echo = proxy
    reader, writer = await connect(fault)
    big = bytes(range(256)) * 4096  # 1 MiB, several chunks, in order
    await round_trip(reader, writer, big)
    assert echo.received == big
    assert fault.stats.bytes_up == fault.stats.bytes_down == len(big)
    writer.close()


async def test_latency_adds_delay_each_way(proxy: tuple[FaultProxy, EchoServer]) -> None:
    fault, _ = proxy
    reader, writer = await connect(fault)
    baseline = await round_trip(reader, writer, b"ping")
    fault.latency = 0.2
    delayed = await round_trip(reader, writer, b"ping")
    assert delayed >= 0.4 - 0.02, f"round trip {delayed:.3f}s with 200 ms each way"
    assert baseline < 0.2, f"round trip {baseline:.3f}s without latency"
    # Order is kept across chunks sent in a row.
    writer.write(b"a")
    writer.write(b"b")
    writer.write(b"c")
    assert await asyncio.wait_for(reader.readexactly(3), 5) == b"abc"
    fault.latency = 0.0
    assert await round_trip(reader, writer, b"ping") < 0.2
    writer.close()


async def test_latency_per_direction(proxy: tuple[FaultProxy, EchoServer]) -> None:
    fault, echo = proxy
    reader, writer = await connect(fault)
    await round_trip(reader, writer, b"warm")

    fault.latency_up = 0.3  # client → server only
    sent = time.monotonic()
    took = await round_trip(reader, writer, b"up")
    assert echo.received_at - sent >= 0.3 - 0.02, "held on the way up"
    assert took >= 0.3 - 0.02 and took < 0.6, f"round trip {took:.3f}s with 300 ms up only"

    fault.latency_up, fault.latency_down = 0.0, 0.3  # server → client only
    sent = time.monotonic()
    took = await round_trip(reader, writer, b"down")
    assert echo.received_at - sent < 0.3, "held on the way up"
    assert took >= 0.3 - 0.02 and took < 0.6, f"round trip {took:.3f}s with 300 ms down only"

    # Chunks in flight are each delayed, not queued behind each other's delay: five sent
    # 50 ms apart arrive about 300 ms after the last, not 5 x 300 ms after the first.
    fault.latency_up, fault.latency_down = 0.3, 0.0
    started = time.monotonic()
    for i in range(5):
        writer.write(b"%d" % i)
        await writer.drain()
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"01234"
    took = time.monotonic() - started
    assert took < 1.0, f"5 chunks took {took:.3f}s: the latency was serialised"
    writer.close()


async def test_latency_set_at_construction() -> None:
    echo = EchoServer()
    port = await echo.start()
    async with FaultProxy("127.0.0.1", port, latency_up=0.2, latency_down=0.1) as fault:
        assert fault.latency == 0.2  # the larger of the two
        reader, writer = await connect(fault)
        took = await round_trip(reader, writer, b"ping")
        assert took >= 0.3 - 0.02, f"round trip {took:.3f}s with 200 ms up and 100 ms down"
        fault.latency = 0.0  # sets both
        assert (fault.latency_up, fault.latency_down) == (0.0, 0.0)
        writer.close()
    await echo.stop()


async def test_blackhole_forwards_nothing_then_heals(
    proxy: tuple[FaultProxy, EchoServer],
) -> None:
    fault, echo = proxy
    reader, writer = await connect(fault)
    await round_trip(reader, writer, b"hello")
    fault.blackhole()
    writer.write(b"lost?")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(5), 0.5)
    assert bytes(echo.received) == b"hello", "the blackhole forwarded data upstream"
    # A new connection is accepted but never reaches the server.
    other_reader, other_writer = await connect(fault)
    other_writer.write(b"x")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(other_reader.readexactly(1), 0.3)
    assert echo.accepted == 1
    # Healed: what was held arrives, intact and in order, like TCP after a partition.
    fault.heal()
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"lost?"
    assert await asyncio.wait_for(other_reader.readexactly(1), 5) == b"x"
    assert echo.accepted == 2
    writer.close()
    other_writer.close()


async def test_reset_closes_every_connection(proxy: tuple[FaultProxy, EchoServer]) -> None:
    fault, echo = proxy
    pairs = [await connect(fault) for _ in range(3)]
    for reader, writer in pairs:
        await round_trip(reader, writer, b"up")
    assert fault.connections == 3
    assert fault.reset() == 3
    for reader, _ in pairs:
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)

    async def server_saw_all_closed() -> bool:
        return echo.closed == 3

    await eventually(server_saw_all_closed, timeout=5, what="the server seeing every reset")
    assert fault.connections == 0
    # The proxy itself keeps working.
    reader, writer = await connect(fault)
    await round_trip(reader, writer, b"again")
    writer.close()
    for _, w in pairs:
        w.close()
