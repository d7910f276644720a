"""Current state on connect, and Last-Event-ID: a reconnecting client gets what changed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiomysql
import pytest
from aiohttp.test_utils import TestClient

from paylane_common.broker.publisher import Publisher
from paylane_notifier.messages import epoch_ms
from paylane_notifier.snapshot import load_snapshot
from services.notifier.tests.support import (
    Listener,
    granted_for,
    insert_order,
    insert_user,
    last_ms,
    token_for,
    update_user,
)
from tests.support.events import order_paid

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
    async with db_pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT generation_id FROM payment_orders WHERE out_trade_no = %s", (out_trade_no,)
        )
        (generation_id,) = await cur.fetchone()
    assert generation_id.startswith("gen-")  # the generation the client unlocks
    assert {k: v for k, v in state.data.items() if k != "occurred_at"} == {
        "type": "order.state",
        "out_trade_no": out_trade_no,
        "status": "paid",
        "payment_status": "premium",
        "regenerate_count": 33,
        "amount_refund": None,
        "generation_id": generation_id,
        "reason": None,
        "event_id": None,
    }
    if transport == "sse":
        assert state.id == str(last_ms(updated_ms))


async def test_snapshot_is_sent_oldest_first_and_then_live_events(
    notifier: Client, connect: Connect, publisher: Publisher, db_pool: aiomysql.Pool
) -> None:
    user_id = await insert_user(db_pool)
    older, older_ms = await insert_order(db_pool, user_id, status="failed", age_s=600)
    newer, newer_ms = await insert_order(db_pool, user_id, status="pending", age_s=60)

    client = await connect(notifier, "sse", token_for(user_id))
    first, second = await client.next(), await client.next()
    assert [(first.data["out_trade_no"], first.id), (second.data["out_trade_no"], second.id)] == [
        (older, str(last_ms(older_ms))),
        (newer, str(last_ms(newer_ms))),
    ]
    assert (first.data["status"], second.data["status"]) == ("failed", "pending")
    paid = order_paid(user_id, out_trade_no=newer).envelope
    await publisher.publish(granted_for(paid))  # pushes order.paid first
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
        notifier, transport, token_for(user_id), last_event_id=last_ms(seen_ms), header=header
    )

    # The snapshot goes oldest first: had the seen order been included, it would come first.
    assert (await client.next()).data["out_trade_no"] == changed
    paid = order_paid(user_id).envelope
    await publisher.publish(granted_for(paid))  # pushes order.paid first
    assert (await client.next()).data["event_id"] == paid.event_id


async def test_nothing_changed_since_last_event_id_means_no_snapshot(
    notifier: Client, connect: Connect, publisher: Publisher, db_pool: aiomysql.Pool
) -> None:
    user_id = await insert_user(db_pool)
    await insert_order(db_pool, user_id, age_s=600)
    _, newest_ms = await insert_order(db_pool, user_id, age_s=60)

    client = await connect(notifier, "sse", token_for(user_id), last_event_id=last_ms(newest_ms))

    paid = order_paid(user_id).envelope
    await publisher.publish(granted_for(paid))  # pushes order.paid first
    assert (await client.next()).data["event_id"] == paid.event_id


async def test_an_entitlement_change_after_last_event_id_resends_the_state(
    notifier: Client, connect: Connect, db_pool: aiomysql.Pool
) -> None:
    """The client saw the order paid, then the grant happened while it was away."""
    user_id = await insert_user(db_pool)
    out_trade_no, paid_ms = await insert_order(db_pool, user_id, age_s=60)
    granted_ms = await update_user(db_pool, user_id, payment_status="basic", regenerate_count=13)

    client = await connect(notifier, "sse", token_for(user_id), last_event_id=last_ms(paid_ms))

    state = await client.next()
    assert (state.data["out_trade_no"], state.data["payment_status"]) == (out_trade_no, "basic")
    assert state.id is not None
    # The grant's second, no later than its end nor than the snapshot was read.
    assert granted_ms <= int(state.id) <= last_ms(granted_ms)


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


async def test_a_change_in_the_second_of_last_event_id_is_sent_again(
    db_pool: aiomysql.Pool,
) -> None:
    """``updated_at`` holds whole seconds: a change stamped in the second of the client's
    last id may have happened after it, so that state is sent (again)."""
    user_id = await insert_user(db_pool)
    out_trade_no, second_ms = await insert_order(db_pool, user_id, age_s=60)

    for since in (second_ms - 1, second_ms, second_ms + 500, second_ms + 998):
        snapshot = await load_snapshot(db_pool, user_id, window_s=3600, limit=20, since_ms=since)
        assert [(m.out_trade_no, m.id) for m in snapshot] == [
            (out_trade_no, str(last_ms(second_ms)))
        ], since
    assert (
        await load_snapshot(db_pool, user_id, window_s=3600, limit=20, since_ms=last_ms(second_ms))
        == []
    )


async def test_a_change_in_the_current_second_has_the_time_of_reading_as_its_id(
    db_pool: aiomysql.Pool,
) -> None:
    """A snapshot read at S.400 cannot vouch for a change at S.700: its id is not beyond
    the time it was read, so a client reconnecting with it asks for that second again."""
    user_id = await insert_user(db_pool)
    await insert_order(db_pool, user_id, age_s=0)
    before = epoch_ms(datetime.now(UTC))
    (message,) = await load_snapshot(db_pool, user_id, window_s=3600, limit=20)
    after = epoch_ms(datetime.now(UTC))
    assert before - 1000 <= int(message.id) <= after + 5  # the database's clock, not ours


async def test_orders_and_users_the_other_writers_made(db_pool: aiomysql.Pool) -> None:
    """Rows with none of paylane's columns filled: a refunded order carries its whole amount
    (fen, from the yuan ``amount``); a NULL plan / count reads as free / 0."""
    user_id = await insert_user(db_pool, payment_status=None, regenerate_count=None)
    refunded, _ = await insert_order(
        db_pool, user_id, status="refunded", package_type="premium", amount="29.90", age_s=300
    )
    failed, _ = await insert_order(db_pool, user_id, status="failed", age_s=200)
    paid, _ = await insert_order(db_pool, user_id, status="paid", amount="0.01", age_s=100)

    snapshot = await load_snapshot(db_pool, user_id, window_s=3600, limit=20)
    assert [
        (m.out_trade_no, m.status, m.amount_refund, m.payment_status, m.regenerate_count)
        for m in snapshot
    ] == [
        (refunded, "refunded", 2990, "free", 0),
        (failed, "failed", None, "free", 0),
        (paid, "paid", None, "free", 0),
    ]


async def test_the_seed_systems_own_orders(db_pool: aiomysql.Pool) -> None:
    """The orders already in the adopted database (tests/support/seed_db.py, from 2024)."""
    snapshot = await load_snapshot(db_pool, "user-1706345679999-abc123", window_s=10**9, limit=20)
    seeded = {
        m.out_trade_no: m for m in snapshot if (m.out_trade_no or "").startswith("1706345680")
    }
    assert {no: (m.status, m.amount_refund) for no, m in seeded.items()} == {
        "170634568000254321": ("paid", None),
        "170634568000398765": ("refunded", 2990),
    }
    assert {(m.payment_status, m.regenerate_count) for m in seeded.values()} == {("premium", 103)}
