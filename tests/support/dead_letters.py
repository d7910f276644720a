"""Taking one order's dead letter out of a DLQ the whole session shares."""

from __future__ import annotations

import asyncio

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection


async def dead_letter(
    connection: AbstractRobustConnection, queue: str, out_trade_no: str, timeout: float = 30
) -> AbstractIncomingMessage:
    """Take the dead letter of ``out_trade_no`` from ``queue``'s DLQ (others stay).

    Consumes rather than gets and requeues: a quorum queue on RabbitMQ 3.x puts a
    requeued message back at its head, so a get loop would see another test's letter
    forever. Letters not taken go back to the DLQ when the channel closes."""
    channel = await connection.channel()
    try:
        await channel.set_qos(prefetch_count=1000)
        dlq = await channel.get_queue(f"{queue}.dlq", ensure=False)
        async with asyncio.timeout(timeout), dlq.iterator() as letters:
            async for message in letters:
                if message.correlation_id == out_trade_no:
                    await message.ack()
                    return message
        raise AssertionError(f"no dead letter for {out_trade_no}")
    finally:
        await channel.close()
