"""The pushes recorded for the operators' console (push_log.py, ``notifier_pushes``): a
push to connected clients reaches the table, by channel, and the console's timeline; the
buffer is bounded and written in one INSERT."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiomysql
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from paylane_common.broker.publisher import Publisher
from paylane_common.storage.db import transaction
from paylane_notifier.push_log import PushLog
from paylane_order import console_data
from services.notifier.tests.support import Listener, granted_for, insert_user, token_for
from tests.support.cloud_function import new_out_trade_no
from tests.support.events import order_paid
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
Connect = Callable[..., Awaitable[Listener]]


def _dropped(why: str) -> float:
    sample = "paylane_notifier_push_records_dropped_total"
    return REGISTRY.get_sample_value(sample, {"why": why}) or 0.0


async def _pushes(pool: aiomysql.Pool, out_trade_no: str) -> list[tuple[str, str, int]]:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT event_type, channel, connections FROM notifier_pushes"
            " WHERE out_trade_no = %s ORDER BY event_type, channel",
            (out_trade_no,),
        )
        return [(r["event_type"], r["channel"], r["connections"]) for r in await cur.fetchall()]


async def test_a_push_to_connected_clients_is_recorded_and_shown_in_the_timeline(
    notifier: Client, connect: Connect, publisher: Publisher, db_pool: aiomysql.Pool
) -> None:
    user_id = await insert_user(db_pool)
    first_ws = await connect(notifier, "ws", token_for(user_id))
    second_ws = await connect(notifier, "ws", token_for(user_id))
    sse = await connect(notifier, "sse", token_for(user_id))
    paid = order_paid(user_id).envelope
    no = paid.data["out_trade_no"]

    await publisher.publish(granted_for(paid))
    for client in (first_ws, second_ws, sse):
        assert (await client.next()).data["type"] == "order.paid"
        assert (await client.next()).data["type"] == "entitlement.granted"

    expected = [  # the channel in its ENUM's order: ws, sse
        ("entitlement.granted", "ws", 2),
        ("entitlement.granted", "sse", 1),
        ("order.paid", "ws", 2),
        ("order.paid", "sse", 1),
    ]

    async def recorded() -> bool:
        return await _pushes(db_pool, no) == expected

    await eventually(recorded, what="the pushes recorded")
    timeline = await console_data.timeline(db_pool, {"out_trade_no": no, "status": "paid"})
    lines = [(e.what, e.origin, e.detail) for e in timeline]
    assert ("pushed order.paid (ws)", "push", "connections=2") in lines
    assert ("pushed entitlement.granted (sse)", "push", "connections=1") in lines


async def test_a_push_nobody_took_is_not_recorded(
    notifier: Client, connect: Connect, publisher: Publisher, db_pool: aiomysql.Pool
) -> None:
    """Every replica sees every event: only the one whose clients took it records it."""
    listening, alone = await insert_user(db_pool), await insert_user(db_pool)
    ws = await connect(notifier, "ws", token_for(listening))
    unheard = order_paid(alone, package_type="free", amount_total=100).envelope
    heard = order_paid(listening, package_type="free", amount_total=100).envelope
    await publisher.publish(unheard)
    await publisher.publish(heard)
    assert (await ws.next()).data["out_trade_no"] == heard.data["out_trade_no"]

    async def recorded() -> bool:
        return bool(await _pushes(db_pool, heard.data["out_trade_no"]))

    await eventually(recorded, what="the heard push recorded")
    assert await _pushes(db_pool, unheard.data["out_trade_no"]) == []


async def test_the_buffer_is_bounded_and_written_in_one_insert(db_pool: aiomysql.Pool) -> None:
    push_log = PushLog(db_pool, max_buffer=2)
    numbers = [new_out_trade_no() for _ in range(3)]
    before = _dropped("buffer_full")
    for no in numbers:
        push_log.add(no, "order.paid", "ws", 1)
    assert _dropped("buffer_full") == before + 1  # the third did not fit
    assert await push_log.flush() == 2
    assert await push_log.flush() == 0  # nothing written twice
    assert [await _pushes(db_pool, no) for no in numbers] == [
        [("order.paid", "ws", 1)],
        [("order.paid", "ws", 1)],
        [],
    ]
