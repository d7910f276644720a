"""Current state on connect, and Last-Event-ID: a reconnecting client gets what changed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiomysql
import pytest
from aiohttp.test_utils import TestClient

from paylane_common.publisher import Publisher
from paylane_notifier.snapshot import load_snapshot
from services.notifier.tests.support import (
    Listener,
    insert_order,
    insert_user,
    order_paid,
    token_for,
    update_user,
)

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
Connect = Callable[..., Awaitable[Listener]]


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_a_client_connecting_after_the_payment_learns_it(
    transport: str, notifier: Client, connect: Connect, db_pool: aiomysql.Pool
) -> None:
    user_id = await insert_user(db_pool, payment_status="premium", regenerate_count=33)
    out_trade_no, updated_ms = await insert_order(db_pool, user_id, status="paid")

    client = await connect(notifier, transport, token_for(user_id))

    state = await client.next()
    assert {k: v for k, v in state.data.items() if k != "occurred_at"} == {
        "type": "order.state",
        "out_trade_no": out_trade_no,
        "status": "paid",
        "payment_status": "premium",
        "regenerate_count": 33,
        "amount_refund": None,
        "event_id": None,
    }
    if transport == "sse":
        assert state.id == str(updated_ms)


async def test_snapshot_is_sent_oldest_first_and_then_live_events(
    notifier: Client, connect: Connect, publisher: Publisher, db_pool: aiomysql.Pool
) -> None:
    user_id = await insert_user(db_pool)
    older, older_ms = await insert_order(db_pool, user_id, status="closed", age_s=600)
    newer, newer_ms = await insert_order(db_pool, user_id, status="pending", age_s=60)

    client = await connect(notifier, "sse", token_for(user_id))
    first, second = await client.next(), await client.next()
    assert [(first.data["out_trade_no"], first.id), (second.data["out_trade_no"], second.id)] == [
        (older, str(older_ms)),
        (newer, str(newer_ms)),
    ]
    paid = order_paid(user_id, newer)
    await publisher.publish(paid)
    assert (await client.next()).data["event_id"] == paid.event_id


@pytest.mark.parametrize(("transport", "header"), [("sse", True), ("sse", False), ("ws", False)])
async def test_last_event_id_filters_the_snapshot(
    transport: str,
    header: bool,
    notifier: Client,
    connect: Connect,
    publisher: Publisher,
    db_pool: aiomysql.Pool,
) -> None:
    user_id = await insert_user(db_pool)
    _seen, seen_ms = await insert_order(db_pool, user_id, age_s=600)
    changed, _ = await insert_order(db_pool, user_id, age_s=60)

    client = await connect(
        notifier, transport, token_for(user_id), last_event_id=seen_ms, header=header
    )

    # The snapshot goes oldest first: had the seen order been included, it would come first.
    assert (await client.next()).data["out_trade_no"] == changed
    paid = order_paid(user_id)
    await publisher.publish(paid)
    assert (await client.next()).data["event_id"] == paid.event_id


async def test_nothing_changed_since_last_event_id_means_no_snapshot(
    notifier: Client, connect: Connect, publisher: Publisher, db_pool: aiomysql.Pool
) -> None:
    user_id = await insert_user(db_pool)
    await insert_order(db_pool, user_id, age_s=600)
    _, newest_ms = await insert_order(db_pool, user_id, age_s=60)

    client = await connect(notifier, "sse", token_for(user_id), last_event_id=newest_ms)

    paid = order_paid(user_id)
    await publisher.publish(paid)
    assert (await client.next()).data["event_id"] == paid.event_id


async def test_an_entitlement_change_after_last_event_id_resends_the_state(
    notifier: Client, connect: Connect, db_pool: aiomysql.Pool
) -> None:
    """The client saw the order paid, then the grant happened while it was away."""
    user_id = await insert_user(db_pool)
    out_trade_no, paid_ms = await insert_order(db_pool, user_id, age_s=60)
    granted_ms = await update_user(db_pool, user_id, payment_status="basic", regenerate_count=13)

    client = await connect(notifier, "sse", token_for(user_id), last_event_id=paid_ms)

    state = await client.next()
    assert (state.data["out_trade_no"], state.data["payment_status"]) == (out_trade_no, "basic")
    assert state.id == str(granted_ms)


async def test_window_and_limit(db_pool: aiomysql.Pool) -> None:
    user_id = await insert_user(db_pool)
    await insert_order(db_pool, user_id, age_s=7200)
    recent = [await insert_order(db_pool, user_id, age_s=age) for age in (300, 200, 100)]

    in_window = await load_snapshot(db_pool, user_id, window_s=3600, limit=20)
    assert [m.out_trade_no for m in in_window] == [no for no, _ in recent]

    newest_two = await load_snapshot(db_pool, user_id, window_s=3600, limit=2)
    assert [m.out_trade_no for m in newest_two] == [no for no, _ in recent[1:]]

    assert await load_snapshot(db_pool, user_id, window_s=3600, limit=0) == []
    other_user = await insert_user(db_pool)
    assert await load_snapshot(db_pool, other_user, window_s=3600, limit=20) == []
