"""Orders another writer settled (effects.py), on the real database: the cloud function
marks an order ``paid`` or ``refunded`` itself; paylane announces the effect exactly once,
from the notify or from the sweep, and never for what was settled before paylane."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import aiomysql
import pytest

from paylane_common.db import transaction
from paylane_common.events import parse_event
from paylane_common.migrate import cutover
from paylane_order import effects
from paylane_order.payments import PaymentApplier
from services.order.tests.support import MERCHANT, payment
from tests.support.seeding import add_order, add_user, ago

pytestmark = pytest.mark.integration

#: Paid and refunded by the system before paylane, in 2024 (tests/support/seed_db.py).
SEED_PAID, SEED_REFUNDED = "170634568000254321", "170634568000398765"


async def paid_elsewhere(
    pool: aiomysql.Pool, *, txn: str | None = "4200009", generation_id: str = "gen-1"
) -> tuple[str, str]:
    """A premium order the cloud function placed and then marked paid itself."""
    out_trade_no = f"{uuid.uuid4().int % 10**18:018d}"
    async with transaction(pool) as cur:
        user_id = await add_user(cur)
        await add_order(
            cur,
            user_id,
            out_trade_no,
            generation_id=generation_id,
            amount="29.90",
            package_type="premium",
            status="paid",
            transaction_id=txn,
            paid_at=ago(0),
        )
    return out_trade_no, user_id


def notify(out_trade_no: str, txn: str = "4200009", amount: int = 2990, **kw: object):
    """A payment as an internal notify becomes once WeChat Pay confirmed it."""
    return payment(out_trade_no, amount, txn, source="internal", **kw)


async def staged(pool: aiomysql.Pool, out_trade_no: str, routing_key: str) -> list[object]:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT payload FROM outbox WHERE routing_key = %s AND payload LIKE %s",
            (routing_key, f"%{out_trade_no}%"),
        )
        return [parse_event(row["payload"].encode())[1] for row in await cur.fetchall()]


async def backdate(pool: aiomysql.Pool, out_trade_no: str, seconds: int = 120) -> None:
    """As if the cloud function wrote the row ``seconds`` ago (beyond the sweep's grace)."""
    async with transaction(pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET updated_at = NOW() - INTERVAL %s SECOND"
            " WHERE out_trade_no = %s",
            (seconds, out_trade_no),
        )


async def test_a_notify_for_an_order_already_paid_announces_it_once(db_pool) -> None:
    applier = PaymentApplier(db_pool, MERCHANT, trust_internal=True)
    out_trade_no, user_id = await paid_elsewhere(db_pool, generation_id="")
    envelope, data = notify(out_trade_no, generation_id="gen-from-notify")
    assert await applier(envelope, data) == "paid"
    for _ in range(5):  # the same notify again, each a new event
        assert await applier(*notify(out_trade_no)) == "duplicate"
    (paid,) = await staged(db_pool, out_trade_no, "order.paid")
    assert (paid.user_id, paid.amount_total, paid.generation_id) == (
        user_id,
        2990,
        "gen-from-notify",
    )
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT status, transaction_id, generation_id, paid_event_at IS NOT NULL AS marked"
            " FROM payment_orders WHERE out_trade_no = %s",
            (out_trade_no,),
        )
        assert await cur.fetchone() == {
            "status": "paid",
            "transaction_id": "4200009",
            "generation_id": "gen-from-notify",
            "marked": 1,
        }
    # And the sweep, later, finds nothing left to do for it.
    await backdate(db_pool, out_trade_no)
    await effects.sweep(db_pool, grace_s=60, limit=500)
    assert len(await staged(db_pool, out_trade_no, "order.paid")) == 1


async def test_paid_elsewhere_without_a_transaction_id_takes_the_notifys(db_pool) -> None:
    applier = PaymentApplier(db_pool, MERCHANT, trust_internal=True)
    out_trade_no, _ = await paid_elsewhere(db_pool, txn=None)
    assert await applier(*notify(out_trade_no, txn="4200077")) == "paid"
    assert len(await staged(db_pool, out_trade_no, "order.paid")) == 1


async def test_paid_elsewhere_but_not_what_wechatpay_says_needs_review(db_pool) -> None:
    applier = PaymentApplier(db_pool, MERCHANT, trust_internal=True)
    out_trade_no, _ = await paid_elsewhere(db_pool)
    assert await applier(*notify(out_trade_no, amount=1)) == "needs_review"
    assert await staged(db_pool, out_trade_no, "order.paid") == []


async def test_another_transaction_for_an_order_paid_elsewhere_is_a_duplicate_payment(
    db_pool,
) -> None:
    applier = PaymentApplier(db_pool, MERCHANT, trust_internal=True)
    out_trade_no, _ = await paid_elsewhere(db_pool)
    assert await applier(*notify(out_trade_no, txn="4200010")) == "duplicate_payment"
    assert await staged(db_pool, out_trade_no, "order.paid") == []


async def test_the_sweep_announces_a_payment_then_its_refund_once_each(db_pool) -> None:
    out_trade_no, user_id = await paid_elsewhere(db_pool)
    # Within the grace the notify may still be on its way: left alone.
    await effects.sweep(db_pool, grace_s=60, limit=500)
    assert await staged(db_pool, out_trade_no, "order.paid") == []

    await backdate(db_pool, out_trade_no)
    found = await effects.sweep(db_pool, grace_s=60, limit=500)
    assert found["effect_paid"] >= 1
    (paid,) = await staged(db_pool, out_trade_no, "order.paid")
    assert (paid.user_id, paid.package_type, paid.generation_id) == (user_id, "premium", "gen-1")
    await effects.sweep(db_pool, grace_s=0, limit=500)
    assert len(await staged(db_pool, out_trade_no, "order.paid")) == 1
    # The late notify: nothing more.
    applier = PaymentApplier(db_pool, MERCHANT, trust_internal=True)
    assert await applier(*notify(out_trade_no)) == "duplicate"

    # The cloud function's refund callback marks the order refunded.
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET status = 'refunded' WHERE out_trade_no = %s",
            (out_trade_no,),
        )
    await effects.sweep(db_pool, grace_s=0, limit=500)
    await effects.sweep(db_pool, grace_s=0, limit=500)
    (refunded,) = await staged(db_pool, out_trade_no, "order.refunded")
    assert (refunded.user_id, refunded.amount_refund, refunded.full) == (user_id, 2990, True)
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT amount_refunded, refunded_at IS NOT NULL AS dated FROM payment_orders"
            " WHERE out_trade_no = %s",
            (out_trade_no,),
        )
        assert await cur.fetchone() == {"amount_refunded": 2990, "dated": 1}
        await cur.execute(
            "SELECT type, source FROM payment_logs WHERE out_trade_no = %s ORDER BY type",
            (out_trade_no,),
        )
        assert [tuple(r.values()) for r in await cur.fetchall()] == [
            ("duplicate_notification", "internal"),
            ("paid_elsewhere", "sweep"),
            ("refunded_elsewhere", "sweep"),
        ]


async def test_a_refund_of_a_payment_never_announced_revokes_nothing(db_pool) -> None:
    out_trade_no, _ = await paid_elsewhere(db_pool)
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET status = 'refunded' WHERE out_trade_no = %s",
            (out_trade_no,),
        )
    await effects.sweep(db_pool, grace_s=0, limit=500)
    assert await staged(db_pool, out_trade_no, "order.paid") == []
    assert await staged(db_pool, out_trade_no, "order.refunded") == []


async def test_the_sweep_never_touches_what_was_settled_before_paylane(db_pool) -> None:
    await effects.sweep(db_pool, grace_s=0, limit=500)
    for out_trade_no in (SEED_PAID, SEED_REFUNDED):
        assert await staged(db_pool, out_trade_no, "order.paid") == []
        assert await staged(db_pool, out_trade_no, "order.refunded") == []


async def test_the_sweep_is_bounded_per_pass(db_pool) -> None:
    orders = [(await paid_elsewhere(db_pool))[0] for _ in range(3)]
    for out_trade_no in orders:
        await backdate(db_pool, out_trade_no)
    # Other tests' rows may be swept too; ours are three of what is left, oldest first.
    passes = []
    while not passes or passes[-1] == 2:
        passes.append((await effects.sweep(db_pool, grace_s=60, limit=2))["effect_paid"])
    assert len(passes) >= 2 and max(passes) == 2, passes
    assert all([len(await staged(db_pool, no, "order.paid")) == 1 for no in orders])


async def test_a_notify_for_an_order_paid_before_paylane_grants_nothing(db_pool) -> None:
    """A callback WeChat Pay retried after the cutover, for an order the backend before
    paylane already granted: the cloud function notifies again; paylane does not grant."""
    applier = PaymentApplier(db_pool, MERCHANT, trust_internal=True)
    envelope, data = notify(SEED_PAID, txn="4200001234202401270000000001")
    assert await applier(envelope, data) == "duplicate"
    assert await staged(db_pool, SEED_PAID, "order.paid") == []


async def test_cutover_moves_where_paylane_starts_granting(db_pool, mysql_url) -> None:
    """``paylane cutover`` at a later moment: orders paid before it, whose notify the
    backend before paylane received, are not paylane's to grant, by notify or sweep."""
    async with transaction(db_pool) as cur:
        await cur.execute("SELECT value FROM paylane_meta WHERE name = 'effects_since'")
        before = (await cur.fetchone())["value"]
    out_trade_no, _ = await paid_elsewhere(db_pool)
    await backdate(db_pool, out_trade_no)
    try:
        cutover(mysql_url, datetime.now(UTC) + timedelta(hours=1))
        await effects.sweep(db_pool, grace_s=0, limit=500)
        applier = PaymentApplier(db_pool, MERCHANT, trust_internal=True)
        assert await applier(*notify(out_trade_no)) == "duplicate"
        assert await staged(db_pool, out_trade_no, "order.paid") == []
    finally:
        async with transaction(db_pool) as cur:
            await cur.execute(
                "UPDATE paylane_meta SET value = %s WHERE name = 'effects_since'", (before,)
            )
    await effects.sweep(db_pool, grace_s=0, limit=500)
    assert len(await staged(db_pool, out_trade_no, "order.paid")) == 1
