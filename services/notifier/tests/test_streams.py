"""Live events reach exactly their user's clients, over both transports and any replica."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiomysql
import pytest
from aiohttp.test_utils import TestClient

from paylane_common.broker.publisher import Publisher
from paylane_common.contract import events
from services.notifier.tests.support import (
    Listener,
    entitlement,
    granted_for,
    insert_user,
    sse_id,
    token_for,
)
from tests.support.events import order_failed, order_paid, order_refunded

pytestmark = pytest.mark.integration

Client = TestClient[Any, Any]
Connect = Callable[..., Awaitable[Listener]]


async def test_ws_and_sse_clients_receive_their_users_events(
    notifier: Client, connect: Connect, publisher: Publisher, db_pool: aiomysql.Pool
) -> None:
    user_id = await insert_user(db_pool)
    ws = await connect(notifier, "ws", token_for(user_id))
    sse = await connect(notifier, "sse", token_for(user_id))
    paid = order_paid(user_id, generation_id="gen-1").envelope
    out_trade_no = paid.data["out_trade_no"]
    # One event per payment: the grant carries the order.paid, and both are pushed.
    granted = granted_for(paid, "premium", 33)

    await publisher.publish(granted)

    for client in (ws, sse):
        first, second = await client.next(), await client.next()
        if client is sse:  # SSE ids: occurred_at in ms, what Last-Event-ID echoes on reconnect
            assert (first.id, second.id) == (sse_id(paid.occurred_at), sse_id(granted.occurred_at))
        assert first.data == {
            "type": "order.paid",
            "out_trade_no": out_trade_no,
            "status": "paid",
            "payment_status": None,
            "regenerate_count": None,
            "amount_refund": None,
            "generation_id": "gen-1",
            "reason": None,
            "event_id": paid.event_id,
            "occurred_at": paid.occurred_at.isoformat().replace("+00:00", "Z"),
        }
        assert second.data == {
            "type": "entitlement.granted",
            "out_trade_no": out_trade_no,
            "status": "paid",
            "payment_status": "premium",
            "regenerate_count": 33,
            "amount_refund": None,
            "generation_id": None,
            "reason": None,
            "event_id": granted.event_id,
            "occurred_at": granted.occurred_at.isoformat().replace("+00:00", "Z"),
        }


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_refunds_and_revocations(
    transport: str,
    notifier: Client,
    connect: Connect,
    publisher: Publisher,
    db_pool: aiomysql.Pool,
) -> None:
    user_id = await insert_user(db_pool)
    client = await connect(notifier, transport, token_for(user_id))

    await publisher.publish(order_refunded(user_id, "partial-1", 300, full=False).envelope)
    await publisher.publish(order_refunded(user_id, "full-1", 990, full=True).envelope)
    await publisher.publish(entitlement(events.ENTITLEMENT_REVOKED, user_id, "full-1", "free", 3))

    partial, full, revoked = [(await client.next()).data for _ in range(3)]
    assert (partial["type"], partial["status"], partial["amount_refund"]) == (
        "order.refunded",
        "paid",
        300,
    )
    assert (full["type"], full["status"], full["amount_refund"]) == (
        "order.refunded",
        "refunded",
        990,
    )
    assert (revoked["type"], revoked["status"], revoked["payment_status"]) == (
        "entitlement.revoked",
        "refunded",
        "free",
    )


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_an_order_that_ended_unpaid_is_pushed(
    transport: str,
    notifier: Client,
    connect: Connect,
    publisher: Publisher,
    db_pool: aiomysql.Pool,
) -> None:
    """``order.failed`` reaches the replica's queue (topology.NOTIFIER_KEYS) and the client."""
    user_id = await insert_user(db_pool)
    client = await connect(notifier, transport, token_for(user_id))
    failed = order_failed(user_id, "expired-1", "expired").envelope
    await publisher.publish(failed)
    message = (await client.next()).data
    assert (message["type"], message["status"], message["reason"], message["event_id"]) == (
        "order.failed",
        "failed",
        "expired",
        failed.event_id,
    )


async def test_a_client_receives_nothing_of_another_user(
    notifier: Client, connect: Connect, publisher: Publisher, db_pool: aiomysql.Pool
) -> None:
    alice, bob = await insert_user(db_pool), await insert_user(db_pool)
    alice_ws = await connect(notifier, "ws", token_for(alice))
    bob_ws = await connect(notifier, "ws", token_for(bob))
    bob_sse = await connect(notifier, "sse", token_for(bob))

    alices = order_paid(alice).envelope
    await publisher.publish(granted_for(alices))
    assert (await alice_ws.next()).data["event_id"] == alices.event_id

    # Bob's first message is his own later event: Alice's two never reached him.
    bobs = order_paid(bob).envelope
    await publisher.publish(granted_for(bobs))
    for client in (bob_ws, bob_sse):
        assert (await client.next()).data["event_id"] == bobs.event_id


async def test_every_replica_delivers_to_its_own_clients(
    start_notifier: Callable[..., Awaitable[Client]],
    connect: Connect,
    publisher: Publisher,
    db_pool: aiomysql.Pool,
) -> None:
    one, two = await start_notifier(), await start_notifier()
    user_id = await insert_user(db_pool)
    on_one = await connect(one, "ws", token_for(user_id))
    on_two = await connect(two, "sse", token_for(user_id))

    paid = order_paid(user_id).envelope
    await publisher.publish(granted_for(paid))

    assert (await on_one.next()).data["event_id"] == paid.event_id
    assert (await on_two.next()).data["event_id"] == paid.event_id


async def test_several_clients_of_one_user_all_receive(
    notifier: Client, connect: Connect, publisher: Publisher, db_pool: aiomysql.Pool
) -> None:
    user_id = await insert_user(db_pool)
    clients = [await connect(notifier, t, token_for(user_id)) for t in ("ws", "ws", "sse")]
    paid = order_paid(user_id).envelope
    await publisher.publish(granted_for(paid))
    for client in clients:
        assert (await client.next()).data["event_id"] == paid.event_id
