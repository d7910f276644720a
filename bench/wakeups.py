"""What a wake-up costs on this machine: a 50-byte echo over loopback TCP between two
uvloop processes, at a low and a high rate, with the CPU both spend per round trip.

Every hop of a payment (HTTP request, AMQP frame, MySQL query) wakes a process. Where a
wake-up is dear (on a virtual machine each one can mean exits to the hypervisor), CPU per
payment is far higher at a low rate, when every hop finds its process asleep, than at
saturation, when nobody sleeps. This probe measures that, so the per-payment CPU of the
bench can be read against the machine it ran on.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from .cpu import cpu_seconds

RATES = (100, 1000, 5000)

_ECHO_SERVER = """
import asyncio, sys, uvloop
async def main():
    async def echo(reader, writer):
        while data := await reader.read(100):
            writer.write(data)
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
uvloop.run(main())
"""


async def _round_trips(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rate: int, seconds: float
) -> int:
    count = int(rate * seconds)
    start = time.perf_counter()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        writer.write(b"x" * 50)
        await reader.readexactly(50)
    return count


async def measure(seconds: float = 3.0) -> dict[str, dict[str, float]]:
    """CPU µs per round trip of the echo server and of the client, at each rate."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ECHO_SERVER, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        port = int((await server.stdout.readline()).decode())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        out = {}
        for rate in RATES:
            before = _cpu(server.pid)
            count = await _round_trips(reader, writer, rate, seconds)
            after = _cpu(server.pid)
            out[f"rate_{rate}"] = {
                "server_us": round((after[0] - before[0]) * 1e6 / count),
                "client_us": round((after[1] - before[1]) * 1e6 / count),
            }
        writer.close()
        return out
    finally:
        server.kill()
        await server.wait()


def _cpu(server_pid: int) -> tuple[float, float]:
    """CPU seconds so far of the echo server and of this process."""
    server, client = cpu_seconds(server_pid), cpu_seconds(os.getpid())
    if server is None or client is None:
        raise RuntimeError("the echo server is gone")
    return server, client
