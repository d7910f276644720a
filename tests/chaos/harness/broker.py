"""Stopping and starting the RabbitMQ app under the stack (``rabbitmqctl``)."""

from __future__ import annotations

import asyncio

from tests.support.infra import Infra


async def stop_broker(infra: Infra) -> None:
    await asyncio.to_thread(infra.broker.stop)


async def start_broker(infra: Infra) -> None:
    await asyncio.to_thread(infra.broker.start)
