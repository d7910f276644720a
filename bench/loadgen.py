"""Load generation: open loop at a fixed rate (latency measured from each request's
*scheduled* time, so a stalled server cannot hide its queueing: no coordinated
omission) and closed loop at saturation (throughput)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

Request = tuple[dict[str, str], bytes]


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


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def _post(
    http: aiohttp.ClientSession, url: str, request: Request, started: float, result: Result
) -> None:
    headers, body = request
    try:
        async with http.post(url, data=body, headers=headers) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError):
        result.errors += 1
        return
    result.statuses[status] = result.statuses.get(status, 0) + 1
    result.latencies_s.append(time.perf_counter() - started)


async def open_loop(
    url: str, requests: Sequence[Request], rate: float, *, connections: int = 256
) -> Result:
    """Send ``requests`` at ``rate``/s; each latency counts from its scheduled time."""
    result = Result()
    async with _session(connections) as http:
        start = time.perf_counter()
        tasks = []
        for i, request in enumerate(requests):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(http, url, request, scheduled, result)))
            result.sent += 1
        await asyncio.gather(*tasks)
        result.duration_s = time.perf_counter() - start
    return result


async def closed_loop(
    url: str, requests: Sequence[Request], *, concurrency: int = 64, seconds: float = 10.0
) -> Result:
    """``concurrency`` workers send back to back for ``seconds``: acknowledged/s."""
    result = Result()
    index = 0
    deadline = time.perf_counter() + seconds

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal index
        while time.perf_counter() < deadline and index < len(requests):
            request = requests[index]
            index += 1
            result.sent += 1
            await _post(http, url, request, time.perf_counter(), result)

    async with _session(concurrency) as http:
        start = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        result.duration_s = time.perf_counter() - start
    return result
