"""Orders another writer settled (sweep.py), on the real database: the cloud function
marks an order ``paid`` or ``refunded`` itself; paylane announces the effect exactly once,
from the notify or from the sweep, only as WeChat Pay confirms it and for the price of
the package, and never for what was settled before the cutover."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomysql
import pytest

from paylane_common.contract.events import parse_event
from paylane_common.delivery.consumer import Reject
from paylane_common.storage.db import transaction
from paylane_common.storage.migrate import CutoverRefused, cutover
from paylane_common.wechatpay.testing import order_request
from paylane_order import sweep
from paylane_order.payments import PaymentApplier
from services.order.tests.support import payment
from tests.support.queries import fetch_one, order_status
from tests.support.seeding import add_order, add_user, ago

pytestmark = pytest.mark.integration

#: Paid and refunded by the system before paylane, in 2024 (tests/support/seed_db.py).
SEED_PAID, SEED_REFUNDED = "170634568000254321", "170634568000398765"


async def paid_elsewhere(
    pool: aiomysql.Pool,
    wechat,
    *,
    txn: str | None = "wechat",
    generation_id: str = "gen-1",
    paid_fen: int | None = 2990,
    amount: str = "29.90",
) -> tuple[str, str, str | None]:
    """A premium order the cloud function placed at WeChat Pay, its buyer paid
    (``paid_fen``; None: never paid) and the cloud function marked paid itself, with
    WeChat Pay's transaction id (``txn="wechat"``), another, or none. Returns
    (out_trade_no, user_id, WeChat Pay's transaction id)."""
    sandbox, client = wechat
    out_trade_no = f"{uuid.uuid4().int % 10**18:018d}"
    wechat_txn = None
    if paid_fen is not None:
        await client.place("NATIVE", order_request("native", out_trade_no, paid_fen))
        await sandbox.ok("POST", f"/sandbox/orders/{out_trade_no}/pay", {"notify": False})
        wechat_txn = (await client.query_by_out_trade_no(out_trade_no))["transaction_id"]
    async with transaction(pool) as cur:
        user_id = await add_user(cur)
        await add_order(
            cur,
            user_id,
            out_trade_no,
            generation_id=generation_id,
            amount=amount,
            package_type="premium",
            status="paid",
            transaction_id=wechat_txn if txn == "wechat" else txn,
            paid_at=ago(0),
        )
    return out_trade_no, user_id, wechat_txn


def notify(out_trade_no: str, txn: str | None, **kw: object):
    """The cloud function's internal notify (no amount: WeChat Pay says how much)."""
    return payment(out_trade_no, None, txn or "-", source="internal", **kw)


async def staged(pool: aiomysql.Pool, out_trade_no: str, routing_key: str) -> list[Any]:
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


async def review_reason(pool: aiomysql.Pool, out_trade_no: str) -> str:
    row = await fetch_one(
        pool,
        "SELECT status, review_reason FROM payment_orders WHERE out_trade_no = %s",
        out_trade_no,
    )
    assert row["status"] == "needs_review", row
    return row["review_reason"]


async def test_a_notify_for_an_order_already_paid_announces_it_once(
    db_pool, gate, kit_wechat
) -> None:
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, user_id, txn = await paid_elsewhere(db_pool, kit_wechat, generation_id="")
    envelope, data = notify(out_trade_no, txn, generation_id="gen-from-notify")
    assert await applier(envelope, data) == "paid"
    for _ in range(5):  # the same notify again, each a new event
        assert await applier(*notify(out_trade_no, txn)) == "duplicate"
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
            "transaction_id": txn,
            "generation_id": "gen-from-notify",
            "marked": 1,
        }
    # And the sweep, later, finds nothing left to do for it.
    await backdate(db_pool, out_trade_no)
    await sweep.sweep(db_pool, gate, grace_s=60, limit=500)
    assert len(await staged(db_pool, out_trade_no, "order.paid")) == 1


async def test_paid_elsewhere_without_a_transaction_id_takes_wechat_pays(
    db_pool, gate, kit_wechat
) -> None:
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _, txn = await paid_elsewhere(db_pool, kit_wechat, txn=None)
    assert await applier(*notify(out_trade_no, txn)) == "paid"
    assert len(await staged(db_pool, out_trade_no, "order.paid")) == 1
    row = await fetch_one(
        db_pool, "SELECT transaction_id FROM payment_orders WHERE out_trade_no = %s", out_trade_no
    )
    assert row["transaction_id"] == txn


async def test_paid_elsewhere_but_not_what_wechatpay_says_needs_review(
    db_pool, gate, kit_wechat
) -> None:
    """Marked paid for 29.90, but WeChat Pay took one fen."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _, txn = await paid_elsewhere(db_pool, kit_wechat, paid_fen=1)
    assert await applier(*notify(out_trade_no, txn)) == "needs_review"
    assert await staged(db_pool, out_trade_no, "order.paid") == []
    assert (await review_reason(db_pool, out_trade_no)).startswith("amount 1 differs")


async def test_a_notify_wechat_pay_does_not_confirm_flags_the_row_it_came_with(
    db_pool, gate, kit_wechat
) -> None:
    """The cloud function (or anyone with a database account) marked an order paid that
    WeChat Pay never saw paid, and notified: refused, and the row goes to review."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _, _ = await paid_elsewhere(
        db_pool, kit_wechat, txn="4200FORGED000009", paid_fen=None
    )
    with pytest.raises(Reject, match="ORDER_NOT_EXIST"):
        await applier(*notify(out_trade_no, "4200FORGED000009"))
    assert await staged(db_pool, out_trade_no, "order.paid") == []
    assert "WeChat Pay does not confirm" in await review_reason(db_pool, out_trade_no)


async def test_another_transaction_for_an_order_paid_elsewhere_is_a_duplicate_payment(
    db_pool, gate, kit_wechat
) -> None:
    """The row names a transaction; WeChat Pay's signed notification another: the second
    is recorded for refund, nothing is granted."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _, _ = await paid_elsewhere(db_pool, kit_wechat, txn="4200010", paid_fen=None)
    assert await applier(*payment(out_trade_no, 2990, "4200011")) == "duplicate_payment"
    assert await staged(db_pool, out_trade_no, "order.paid") == []


async def test_the_sweep_announces_a_payment_then_its_refund_once_each(
    db_pool, gate, kit_wechat
) -> None:
    out_trade_no, user_id, txn = await paid_elsewhere(db_pool, kit_wechat)
    # Within the grace the notify may still be on its way: left alone.
    await sweep.sweep(db_pool, gate, grace_s=60, limit=500)
    assert await staged(db_pool, out_trade_no, "order.paid") == []

    await backdate(db_pool, out_trade_no)
    found = await sweep.sweep(db_pool, gate, grace_s=60, limit=500)
    assert found["effect_paid"] >= 1
    (paid,) = await staged(db_pool, out_trade_no, "order.paid")
    assert (paid.user_id, paid.package_type, paid.generation_id) == (user_id, "premium", "gen-1")
    await sweep.sweep(db_pool, gate, grace_s=0, limit=500)
    assert len(await staged(db_pool, out_trade_no, "order.paid")) == 1
    # The late notify: nothing more.
    applier = PaymentApplier(db_pool, gate)
    assert await applier(*notify(out_trade_no, txn)) == "duplicate"

    # The cloud function's refund callback marks the order refunded.
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET status = 'refunded' WHERE out_trade_no = %s",
            (out_trade_no,),
        )
    await sweep.sweep(db_pool, gate, grace_s=0, limit=500)
    await sweep.sweep(db_pool, gate, grace_s=0, limit=500)
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
            "SELECT type, kind, source FROM payment_logs WHERE out_trade_no = %s ORDER BY kind",
            (out_trade_no,),
        )
        assert [tuple(r.values()) for r in await cur.fetchall()] == [
            ("payment_callback", "duplicate_notification", "internal"),
            ("payment_callback", "paid_elsewhere", "sweep"),
            ("refund_callback", "refunded_elsewhere", "sweep"),
        ]


@pytest.mark.parametrize(
    ("paid_fen", "reason"),
    [
        # The reproduction: a row another writer put in payment_orders, premium for
        # 0.01 with a made-up transaction; WeChat Pay knows no payment of it.
        (None, "marked paid, but WeChat Pay does not confirm the payment: ORDER_NOT_EXIST"),
        # A genuine one-fen payment, for a premium order marked 0.01: not premium's price.
        (1, "amount 1 is not a price of 'premium' (prices then: 2990)"),
    ],
)
async def test_the_sweep_grants_nothing_wechat_pay_does_not_stand_behind(
    db_pool, gate, kit_wechat, paid_fen, reason
) -> None:
    out_trade_no, _, _ = await paid_elsewhere(
        db_pool,
        kit_wechat,
        txn="4200FORGED000001" if paid_fen is None else "wechat",
        paid_fen=paid_fen,
        amount="0.01",
    )
    await backdate(db_pool, out_trade_no)
    found = await sweep.sweep(db_pool, gate, grace_s=60, limit=500)
    assert found["effect_needs_review"] >= 1
    assert await staged(db_pool, out_trade_no, "order.paid") == []
    assert await review_reason(db_pool, out_trade_no) == reason
    log = await fetch_one(
        db_pool,
        "SELECT detail FROM payment_logs WHERE out_trade_no = %s AND kind = 'needs_review'",
        out_trade_no,
    )
    assert log["detail"] == reason


async def test_a_refund_of_a_payment_never_announced_revokes_nothing(
    db_pool, gate, kit_wechat
) -> None:
    out_trade_no, _, _ = await paid_elsewhere(db_pool, kit_wechat)
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET status = 'refunded' WHERE out_trade_no = %s",
            (out_trade_no,),
        )
    await sweep.sweep(db_pool, gate, grace_s=0, limit=500)
    assert await staged(db_pool, out_trade_no, "order.paid") == []
    assert await staged(db_pool, out_trade_no, "order.refunded") == []


async def test_the_sweep_never_touches_what_was_settled_before_paylane(db_pool, gate) -> None:
    await sweep.sweep(db_pool, gate, grace_s=0, limit=500)
    for out_trade_no in (SEED_PAID, SEED_REFUNDED):
        assert await staged(db_pool, out_trade_no, "order.paid") == []
        assert await staged(db_pool, out_trade_no, "order.refunded") == []
        assert await order_status(db_pool, out_trade_no) in ("paid", "refunded")


async def test_the_sweep_is_bounded_per_pass(db_pool, gate, kit_wechat) -> None:
    orders = [(await paid_elsewhere(db_pool, kit_wechat))[0] for _ in range(3)]
    for out_trade_no in orders:
        await backdate(db_pool, out_trade_no)
    # Other tests' rows may be swept too; ours are three of what is left, oldest first.
    passes: list[int] = []
    while not passes or passes[-1] == 2:
        found = await sweep.sweep(db_pool, gate, grace_s=60, limit=2)
        passes.append(found["effect_paid"] + found["effect_needs_review"])
    assert len(passes) >= 2 and max(passes) == 2, passes
    assert all([len(await staged(db_pool, no, "order.paid")) == 1 for no in orders])


async def test_a_notify_for_an_order_paid_before_paylane_grants_nothing(db_pool, gate) -> None:
    """A callback WeChat Pay retried after the cutover, for an order the backend before
    paylane already granted: the cloud function notifies again; paylane does not grant.
    (WeChat Pay confirms it: the seed's payment, signed.)"""
    applier = PaymentApplier(db_pool, gate)
    envelope, data = payment(SEED_PAID, 2990, "4200001234202401270000000001")
    assert await applier(envelope, data) == "before_cutover"
    assert await staged(db_pool, SEED_PAID, "order.paid") == []


async def _effects_since(pool: aiomysql.Pool) -> str | None:
    row = await fetch_one(pool, "SELECT value FROM paylane_meta WHERE name = 'effects_since'")
    return row["value"] if row else None


async def _restore_effects_since(pool: aiomysql.Pool, value: str | None) -> None:
    async with transaction(pool) as cur:
        await cur.execute("DELETE FROM paylane_meta WHERE name = 'effects_since'")
        if value is not None:
            await cur.execute(
                "INSERT INTO paylane_meta (name, value) VALUES ('effects_since', %s)", (value,)
            )


async def test_cutover_moves_where_paylane_starts_granting(
    db_pool, mysql_url, gate, kit_wechat
) -> None:
    """``paylane cutover`` at a later moment: orders paid before it, whose notify the
    backend before paylane received, are not paylane's to grant, by notify or sweep."""
    before = await _effects_since(db_pool)
    out_trade_no, _, txn = await paid_elsewhere(db_pool, kit_wechat)
    await backdate(db_pool, out_trade_no)
    try:
        cutover(mysql_url, datetime.now(UTC) + timedelta(hours=1), force=True)
        await sweep.sweep(db_pool, gate, grace_s=0, limit=500)
        applier = PaymentApplier(db_pool, gate)
        assert await applier(*notify(out_trade_no, txn)) == "before_cutover"
        assert await staged(db_pool, out_trade_no, "order.paid") == []
    finally:
        await _restore_effects_since(db_pool, before)
    await sweep.sweep(db_pool, gate, grace_s=0, limit=500)
    assert len(await staged(db_pool, out_trade_no, "order.paid")) == 1


async def test_before_the_cutover_nothing_settled_elsewhere_is_granted(
    db_pool, mysql_url, gate, kit_wechat
) -> None:
    """The issue's reproduction: ``paylane migrate`` used to set ``effects_since``, so the
    sweep granted, before ``paylane cutover``, an order the old backend had granted
    already (+100 → 103 → 203). Until the first cutover, neither the sweep nor a notify
    announces what another writer settled; then a cutover before that order refuses,
    naming it, once paylane has announced it."""
    before = await _effects_since(db_pool)
    out_trade_no, _, txn = await paid_elsewhere(db_pool, kit_wechat)
    await backdate(db_pool, out_trade_no)
    try:
        await _restore_effects_since(db_pool, None)  # as `paylane migrate` leaves it
        assert await sweep.sweep(db_pool, gate, grace_s=0, limit=500) == {}
        applier = PaymentApplier(db_pool, gate)
        assert await applier(*notify(out_trade_no, txn)) == "before_cutover"
        assert await staged(db_pool, out_trade_no, "order.paid") == []
    finally:
        await _restore_effects_since(db_pool, before)
    await sweep.sweep(db_pool, gate, grace_s=0, limit=500)
    assert len(await staged(db_pool, out_trade_no, "order.paid")) == 1
    # Moving the cutover past an order paylane already announced cannot take its grant
    # back: refused, with the order named; --force sets it all the same.
    later = datetime.now(UTC) + timedelta(minutes=5)
    with pytest.raises(CutoverRefused) as refused:
        cutover(mysql_url, later)
    assert out_trade_no in [no for no, _ in refused.value.orders]
    assert await _effects_since(db_pool) == before
    try:
        cutover(mysql_url, later, force=True)
        assert await _effects_since(db_pool) != before
        # Back to the earlier moment: the sweep would grant what the old backend settled
        # in between. Refused, unless forced.
        with pytest.raises(CutoverRefused, match="earlier than the cutover in force"):
            cutover(mysql_url, datetime.now(UTC))
        assert cutover(mysql_url, if_unset=True) is None  # `make run`: one was made
    finally:
        await _restore_effects_since(db_pool, before)


async def test_a_claim_of_the_wrong_transaction_flags_nothing(db_pool, gate, kit_wechat) -> None:
    """A notify naming another transaction than the one WeChat Pay says paid the order:
    the claim is refused, the row another writer marked paid is left alone, and the
    genuine notify then announces it."""
    applier = PaymentApplier(db_pool, gate)
    out_trade_no, _, txn = await paid_elsewhere(db_pool, kit_wechat)
    with pytest.raises(Reject, match=f"paid by {txn}"):
        await applier(*notify(out_trade_no, "4200WRONG0000001"))
    assert await order_status(db_pool, out_trade_no) == "paid"
    assert await applier(*notify(out_trade_no, txn)) == "paid"


async def test_the_sweep_sends_a_row_of_another_transaction_to_review(
    db_pool, gate, kit_wechat
) -> None:
    out_trade_no, _, txn = await paid_elsewhere(db_pool, kit_wechat, txn="4200010")
    await backdate(db_pool, out_trade_no)
    await sweep.sweep(db_pool, gate, grace_s=60, limit=500)
    assert await staged(db_pool, out_trade_no, "order.paid") == []
    assert await review_reason(db_pool, out_trade_no) == (
        f"marked paid by transaction 4200010, WeChat Pay says {txn}"
    )
