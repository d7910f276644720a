"""Waiting for state that gives nothing to await: rows another process writes, a queue's
depth at the broker, a counter of a client running in the background; and calls retried
while what they reach may be restarting (the chaos tests' database and broker).

Where there is something to await (an ``asyncio.Event``, a queue, a condition), the tests
await it instead; polling is for what lives outside the test's reach.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aio_pika.abc import AbstractRobustConnection

T = TypeVar("T")


async def eventually(
    probe: Callable[[], bool | Awaitable[bool]],
    timeout: float = 20.0,
    what: str = "condition",
    *,
    interval: float = 0.05,
) -> None:
    """Call ``probe`` (plain or async) every ``interval`` seconds until it returns true;
    ``TimeoutError`` naming ``what`` once ``timeout`` seconds have passed. An exception
    the probe raises ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = probe()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(interval)


async def within(awaitable: Awaitable[T], seconds: float, what: str) -> T:
    """``awaitable``'s result, or an ``AssertionError`` naming ``what`` once ``seconds``
    have passed, with the stack of every task of the loop then: for a step that hung
    once on CI, so that the next time says where."""
    try:
        async with asyncio.timeout(seconds):
            return await awaitable
    except TimeoutError:
        stacks = io.StringIO()
        for task in asyncio.all_tasks():
            task.print_stack(file=stacks)
        raise AssertionError(
            f"{what} not done within {seconds}s; the loop's tasks:\n{stacks.getvalue()}"
        ) from None


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    errors: tuple[type[BaseException], ...],
    timeout: float,
    *,
    interval: float = 0.2,
    recover: Callable[[], Awaitable[object]] | None = None,
) -> T:
    """What ``attempt()`` returns, calling it again every ``interval`` seconds (after
    ``recover()``, when given) while it raises one of ``errors``; that error itself once
    ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await attempt()
        except errors:
            if time.monotonic() > deadline:
                raise
            if recover is not None:
                await recover()
            await asyncio.sleep(interval)


async def ready_messages(connection: AbstractRobustConnection, queue: str) -> int:
    """``queue``'s ready messages as the broker counts them now (a passive declaration)."""
    channel = await connection.channel()
    try:
        underlay = await channel.get_underlay_channel()
        declared = await underlay.queue_declare(queue, passive=True)
        return int(declared.message_count or 0)
    finally:
        await channel.close()


async def handed_back(connection: AbstractRobustConnection, queue: str, count: int) -> None:
    """Until ``queue`` holds ``count`` ready messages: a DLQ that was looked at (its
    messages fetched unacked, handed back by closing the channel) is whole again only
    once the broker has put them back, after the channel closed."""

    seen: list[int] = []

    async def whole() -> bool:
        seen.append(await ready_messages(connection, queue))
        return seen[-1] == count

    try:
        await eventually(whole, what=f"{queue}'s {count} messages ready again")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc} (last counted: {seen[-1] if seen else None})") from None
