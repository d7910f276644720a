"""``order.created`` → a ``payment_orders`` row as the cloud function writes it
(docs/adoption.md, docs/database.md), on the real (seed-shaped) database."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiomysql
import pytest

from paylane_common.contract import events
from paylane_common.contract.events import OrderCreated, make_event
from paylane_common.contract.money import yuan
from paylane_common.delivery.batching import BatchItem
from paylane_common.delivery.consumer import Reject
from paylane_common.storage.db import transaction
from paylane_order.main import OrderEvents
from paylane_order.order_created import OrderCreatedApplier
from paylane_order.payments import PaymentApplier
from paylane_order.refunds import RefundApplier
from tests.support.seeding import add_order, add_user

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 4, 5, 6, 789000, tzinfo=UTC)
TTL_S = 1800


def applier(pool: aiomysql.Pool) -> OrderCreatedApplier:
    return OrderCreatedApplier(pool, order_ttl_s=TTL_S, clock=lambda: NOW)


def _ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def new_ids() -> dict[str, str]:
    """Ids as the cloud function makes them."""
    tail = uuid.uuid4().hex
    return {
        "out_trade_no": f"{_ms()}{uuid.uuid4().int % 100_000:05d}",
        "order_id": f"order-{_ms()}-{tail[:8]}",
        "user_id": f"user-{_ms()}-{tail[8:14]}",
        "openid": f"o-created-{tail[14:30]}",
    }


def created(event_id: str | None = None, **changes: Any) -> tuple[events.Envelope, OrderCreated]:
    fields: dict[str, Any] = {
        **new_ids(),
        "amount_total": 2990,
        "package_type": "premium",
        "trade_type": "JSAPI",
        "reason": "db_insert_failed",
    }
    fields.update(changes)
    data = OrderCreated(**fields)
    event_id = event_id or f"order-created:{data.out_trade_no}"
    return make_event(events.ORDER_CREATED, data, event_id), data


async def rows(pool: aiomysql.Pool, sql: str, *args: object) -> list[dict[str, Any]]:
    async with transaction(pool) as cur:
        await cur.execute(sql, args)
        return list(await cur.fetchall())


async def order_row(pool: aiomysql.Pool, out_trade_no: str) -> list[dict[str, Any]]:
    return await rows(
        pool,
        "SELECT id, user_id, generation_id, out_trade_no, transaction_id, amount, amount_total,"
        " package_type, payment_method, trade_type, status, paid_at, _openid, currency,"
        " expires_at, created_at FROM payment_orders WHERE out_trade_no = %s",
        out_trade_no,
    )


async def log_rows(pool: aiomysql.Pool, out_trade_no: str) -> list[dict[str, Any]]:
    return await rows(
        pool,
        "SELECT id, type, kind, out_trade_no, event_id, amount_total, source, detail"
        " FROM payment_logs WHERE out_trade_no = %s",
        out_trade_no,
    )


async def test_the_order_is_written_as_the_cloud_function_writes_it(db_pool):
    envelope, data = created()
    assert await applier(db_pool)(envelope, data) == "created"

    [row] = await order_row(db_pool, data.out_trade_no)
    assert row["created_at"] is not None
    assert row == {
        "id": data.order_id,
        "user_id": data.user_id,
        "generation_id": "",
        "out_trade_no": data.out_trade_no,
        "transaction_id": None,
        "amount": Decimal("29.90"),
        "amount_total": 2990,
        "package_type": "premium",
        "payment_method": "wechat",
        "trade_type": "JSAPI",
        "status": "pending",
        "paid_at": None,
        "_openid": data.openid,
        "currency": "CNY",
        "expires_at": (NOW + timedelta(seconds=TTL_S)).replace(tzinfo=None),
        "created_at": row["created_at"],
    }
    # The user the cloud function named, created with its openid.
    user = await rows(
        db_pool,
        "SELECT id, openid, payment_status, regenerate_count FROM users WHERE id = %s",
        data.user_id,
    )
    assert user == [
        {"id": data.user_id, "openid": data.openid, "payment_status": "free", "regenerate_count": 3}
    ]
    [log] = await log_rows(db_pool, data.out_trade_no)
    assert re.fullmatch(r"log-\d{13}-[a-z0-9]{8}", log["id"])
    assert log == {
        "id": log["id"],
        "type": "order_create",
        "kind": "order_created_call",
        "out_trade_no": data.out_trade_no,
        "event_id": envelope.event_id,
        "amount_total": 2990,
        "source": "internal",
        "detail": "db_insert_failed",
    }


@pytest.mark.parametrize(
    ("fen", "stored"),
    [
        (1, "0.01"),
        (10, "0.10"),
        (999, "9.99"),
        (2990, "29.90"),
        (12345, "123.45"),
        (2**31 - 1, "21474836.47"),  # the most the INT fen columns hold
    ],
)
async def test_the_yuan_amount_is_exact(db_pool, fen, stored):
    assert yuan(fen) == Decimal(stored)
    envelope, data = created(amount_total=fen, package_type="basic")
    assert await applier(db_pool)(envelope, data) == "created"
    [row] = await order_row(db_pool, data.out_trade_no)
    assert (row["amount"], row["amount_total"]) == (Decimal(stored), fen)
    assert str(row["amount"]) == stored


async def test_the_same_event_again_is_a_duplicate_and_the_same_order_is_kept(db_pool):
    envelope, data = created()
    apply = applier(db_pool)
    assert await apply(envelope, data) == "created"
    assert await apply(envelope, data) == "duplicate"
    # The same order under another event id (a replay, another path): the row is there.
    again, again_data = created("replayed-" + uuid.uuid4().hex, **_ids_of(data))
    assert await apply(again, again_data) == "exists"
    assert len(await order_row(db_pool, data.out_trade_no)) == 1
    assert len(await log_rows(db_pool, data.out_trade_no)) == 1


def _ids_of(data: OrderCreated) -> dict[str, Any]:
    return {
        "out_trade_no": data.out_trade_no,
        "order_id": data.order_id,
        "user_id": data.user_id,
        "openid": data.openid,
    }


async def test_concurrent_deliveries_write_one_order(db_pool):
    envelope, data = created()
    apply = applier(db_pool)
    outcomes = await asyncio.gather(*(apply(envelope, data) for _ in range(10)))
    assert sorted(outcomes) == ["created"] + ["duplicate"] * 9
    others = [created("other-" + uuid.uuid4().hex, **_ids_of(data)) for _ in range(5)]
    outcomes = await asyncio.gather(*(apply(e, d) for e, d in others))
    assert outcomes == ["exists"] * 5
    assert len(await order_row(db_pool, data.out_trade_no)) == 1
    assert len(await log_rows(db_pool, data.out_trade_no)) == 1


async def test_concurrent_events_for_one_new_user_and_two_orders(db_pool):
    """Two orders of a user the cloud function could not insert either: one user row."""
    first_env, first = created()
    second_ids = {**new_ids(), "user_id": first.user_id, "openid": first.openid}
    second_env, second = created(**second_ids)
    apply = applier(db_pool)
    assert list(await asyncio.gather(apply(first_env, first), apply(second_env, second))) == [
        "created",
        "created",
    ]
    users = await rows(db_pool, "SELECT id FROM users WHERE id = %s", first.user_id)
    assert len(users) == 1
    for data in (first, second):
        [row] = await order_row(db_pool, data.out_trade_no)
        assert row["user_id"] == first.user_id


async def test_an_existing_user_is_used_as_it_is(db_pool):
    ids = new_ids()
    await add_user(db_pool, id=ids["user_id"], openid=ids["openid"])
    envelope, data = created(**ids)
    assert await applier(db_pool)(envelope, data) == "created"
    [row] = await order_row(db_pool, data.out_trade_no)
    assert row["user_id"] == ids["user_id"]
    users = await rows(db_pool, "SELECT openid FROM users WHERE id = %s", ids["user_id"])
    assert users == [{"openid": ids["openid"]}]


async def test_the_user_id_is_authoritative_even_when_its_openid_differs(db_pool):
    """The cloud function found the user by openid: the id it sends is the user. Another
    payer openid on the order (a shared device…) is recorded on the order, the user's own
    openid is left alone."""
    ids = new_ids()
    await add_user(db_pool, id=ids["user_id"], openid="o-own-" + uuid.uuid4().hex[:12])
    envelope, data = created(**ids)
    assert await applier(db_pool)(envelope, data) == "created"
    [row] = await order_row(db_pool, data.out_trade_no)
    assert (row["user_id"], row["_openid"]) == (ids["user_id"], ids["openid"])
    [user] = await rows(db_pool, "SELECT openid FROM users WHERE id = %s", ids["user_id"])
    assert user["openid"].startswith("o-own-")


async def test_a_missing_user_whose_openid_belongs_to_another_is_dead_lettered(db_pool):
    ids = new_ids()
    owner = f"user-{_ms()}-owner{uuid.uuid4().hex[:4]}"
    await add_user(db_pool, id=owner, openid=ids["openid"])
    envelope, data = created(**ids)
    with pytest.raises(Reject) as rejected:
        await applier(db_pool)(envelope, data)
    reason = rejected.value.reason
    assert ids["user_id"] in reason and owner in reason and data.out_trade_no in reason
    assert ids["openid"] not in reason  # payer data stays out of headers and logs
    assert await order_row(db_pool, data.out_trade_no) == []
    assert await rows(db_pool, "SELECT id FROM users WHERE id = %s", ids["user_id"]) == []
    # Nothing claimed either: a replay after an operator fixed the user is applied.
    claimed = await rows(db_pool, "SELECT 1 FROM inbox WHERE event_id = %s", envelope.event_id)
    assert claimed == []
    await add_user(db_pool, id=ids["user_id"], openid=None)
    assert await applier(db_pool)(envelope, data) == "created"


async def test_a_missing_user_without_openid_is_created_without_one(db_pool):
    envelope, data = created(openid=None, trade_type="NATIVE")
    assert await applier(db_pool)(envelope, data) == "created"
    users = await rows(db_pool, "SELECT openid FROM users WHERE id = %s", data.user_id)
    assert users == [{"openid": None}]
    [row] = await order_row(db_pool, data.out_trade_no)
    assert (row["_openid"], row["trade_type"]) == (None, "NATIVE")


async def test_a_row_the_cloud_function_did_write_is_left_alone(db_pool):
    """Its insert went through after all (it timed out on the answer): nothing to do."""
    ids = new_ids()
    await add_user(db_pool, id=ids["user_id"], openid=ids["openid"])
    await add_order(
        db_pool,
        ids["user_id"],
        ids["out_trade_no"],
        id=ids["order_id"],
        generation_id="gen-1",
        amount="29.90",
        package_type="premium",
        trade_type="JSAPI",
        status="pending",
        _openid=ids["openid"],
    )
    before = await order_row(db_pool, ids["out_trade_no"])
    # Even under another order id (ingress made one up: the call named none).
    envelope, data = created(**{**ids, "order_id": f"order-{_ms()}-zzzzzzzz"})
    assert await applier(db_pool)(envelope, data) == "exists"
    assert await order_row(db_pool, ids["out_trade_no"]) == before
    assert before[0]["generation_id"] == "gen-1"
    assert await log_rows(db_pool, ids["out_trade_no"]) == []


async def test_an_order_id_naming_another_order_is_dead_lettered(db_pool):
    taken_env, taken = created()
    assert await applier(db_pool)(taken_env, taken) == "created"
    envelope, data = created(order_id=taken.order_id)
    with pytest.raises(Reject, match=f"order id {taken.order_id} already names another order"):
        await applier(db_pool)(envelope, data)
    assert await order_row(db_pool, data.out_trade_no) == []


async def test_without_order_id_or_ttl_a_row_id_is_made_and_no_expiry_set(db_pool):
    envelope, data = created(order_id=None)
    assert await OrderCreatedApplier(db_pool)(envelope, data) == "created"
    [row] = await order_row(db_pool, data.out_trade_no)
    assert re.fullmatch(r"order-\d{13}-[a-z0-9]{8}", row["id"])
    assert row["expires_at"] is None


async def test_the_order_consumer_dispatches_order_created(db_pool, gate):
    """The hook in the order service's handler; batches leave order.created to it."""
    handler = OrderEvents(
        PaymentApplier(db_pool, gate),
        RefundApplier(db_pool),
        applier(db_pool),
    )
    envelope, data = created()
    async with transaction(db_pool) as cur:
        outcomes = await handler.apply_batch(cur, [BatchItem(envelope, data, lambda: None)])
    assert outcomes == [None]  # nothing of it written by the batch path
    assert await order_row(db_pool, data.out_trade_no) == []
    assert await handler(envelope, data) == "created"
    assert len(await order_row(db_pool, data.out_trade_no)) == 1
    # Without an explicit applier the handler still knows the event.
    default = OrderEvents(
        PaymentApplier(db_pool, gate),
        RefundApplier(db_pool),
    )
    other_env, other = created()
    assert await default(other_env, other) == "created"
