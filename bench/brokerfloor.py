"""The broker's own cost on this machine: confirmed, persistent publishes of a real
``payment.succeeded`` message into paylane's topology (the ``paylane`` exchange, routed to
the ``order.payments`` quorum queue and the ``paylane.log`` stream), from a minimal client
that keeps a fixed number of publishes awaiting their confirm.

With one publish in flight (a lone request, as a quiet ingress sends them) every message
is its own write-ahead-log batch and confirm; with many in flight the broker groups them.
Its CPU per publish at each window is the floor under every publish paylane makes. Then
the same client paced at 1,000/s, each publish awaiting its confirm: the broker's share of
an acknowledgement's latency when it has the cores to itself.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import aiormq

from paylane_common.broker import topology
from paylane_common.broker.publisher import envelope_message
from paylane_ingress.mapping import to_event

from .cpu import CpuMeter, server_pids
from .loadgen import Result
from .presign import transaction

WINDOWS = (1, 16, 256)
#: Paced like ingress at the rate of the ack-latency target, one publish per request.
PACED_RATE = 1000


@dataclass
class _Publish:
    """One confirmed, persistent, mandatory publish of the payment message."""

    channel: aiormq.abc.AbstractChannel
    body: bytes
    properties: Any

    async def __call__(self) -> None:
        await self.channel.basic_publish(
            self.body,
            exchange=topology.EXCHANGE,
            routing_key="payment.succeeded",
            properties=self.properties,
            mandatory=True,
        )


def _message(appid: str, mchid: str) -> tuple[bytes, Any]:
    envelope = to_event(
        "EV-broker-floor", "TRANSACTION.SUCCESS", transaction(appid, mchid, "FLOOR0001", 2990)
    )
    message = envelope_message(envelope)
    return message.body, message.properties


async def _publish_for(publish: _Publish, window: int, seconds: float) -> int:
    """Publish for ``seconds`` with at most ``window`` awaiting a confirm; count confirms."""
    slots = asyncio.Semaphore(window)
    confirmed = 0
    failures: list[BaseException] = []

    async def one() -> None:
        nonlocal confirmed
        try:
            await publish()
            confirmed += 1
        except Exception as exc:  # reported below: a floor measured on failures is none
            failures.append(exc)
        finally:
            slots.release()

    tasks = set()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline and not failures:
        await slots.acquire()
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    if failures:
        raise RuntimeError(f"broker floor publish failed: {failures[0]!r}")
    return confirmed


async def _paced(publish: _Publish, rate: int, seconds: float) -> Result:
    """Publish at ``rate``/s, each awaiting its confirm; latency from its scheduled time."""
    result = Result()

    async def one(scheduled: float) -> None:
        await publish()
        result.latencies_s.append(time.perf_counter() - scheduled)
        result.statuses[200] = result.statuses.get(200, 0) + 1

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(one(scheduled)))
    result.sent = len(tasks)
    await asyncio.gather(*tasks)
    result.duration_s = time.perf_counter() - start
    return result


async def measure(amqp_url: str, appid: str, mchid: str, seconds: float) -> dict[str, Any]:
    """Confirmed publishes/s and broker CPU per publish at each window. The caller purges
    ``order.payments`` afterwards."""
    body, properties = _message(appid, mchid)
    pids = {**server_pids(), "client": os.getpid()}
    pids.pop("mariadb", None)
    connection = await aiormq.connect(amqp_url)
    out: dict[str, Any] = {"message_bytes": len(body)}
    try:
        publish = _Publish(await connection.channel(publisher_confirms=True), body, properties)
        for window in WINDOWS:
            meter = CpuMeter(pids).start()
            confirmed = await _publish_for(publish, window, seconds)
            meter.stop()
            out[f"window_{window}"] = {
                "confirmed_per_s": round(confirmed / meter.wall_s),
                **meter.summary(confirmed),
            }
        out[f"paced_{PACED_RATE}"] = (await _paced(publish, PACED_RATE, seconds)).summary()
    finally:
        await connection.close()
    return out
