"""A Consumer that reports every message it has finished settling (ack, retry or DLQ)."""

from __future__ import annotations

import asyncio
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from paylane_common.delivery.consumer import Consumer


class Observed(Consumer):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settled: asyncio.Queue[str | None] = asyncio.Queue()

    async def process(self, message: AbstractIncomingMessage) -> None:
        await super().process(message)
        self.settled.put_nowait(message.message_id)

    async def wait_settled(self, count: int) -> None:
        async with asyncio.timeout(10):
            for _ in range(count):
                await self.settled.get()
