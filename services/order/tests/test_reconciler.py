"""The reconciler's passes against the sandbox (in process) and the real database:
abandoned orders cannot starve it, refunds that never reached WeChat Pay are closed, and
orders other writers made (no expires_at, WeChat Pay may not know them) are settled."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker.publisher import Publisher
from paylane_common.storage.db import transaction
from paylane_common.wechatpay import WechatPayClient
from paylane_common.wechatpay.testing import APPID, MCHID, order_request
from paylane_order.config import MerchantConfig, ReconcilerConfig
from paylane_order.errors import InvalidRequest
from paylane_order.orders import Orders
from paylane_order.reconciler import OrderToSettle, Reconciler, RefundToSettle
from services.order.tests.support import payment_gate
from tests.support.sandbox import RunningSandbox, running_sandbox, sandbox_settings
from tests.support.seeding import add_orders, add_refund, add_user, ago, from_now
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.integration

AFTER_S = 60
KEYS = FakeWechat()


@pytest.fixture
async def wechat() -> AsyncIterator[tuple[RunningSandbox, WechatPayClient]]:
    async with running_sandbox(sandbox_settings(KEYS)) as sandbox, aiohttp.ClientSession() as http:
        yield (
            sandbox,
            KEYS.merchant_client(sandbox.base_url, http),
        )


@pytest.fixture
async def publisher(amqp_connection: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    publisher = await Publisher.open(amqp_connection)
    yield publisher
    await publisher.close()


async def _pending(
    pool: aiomysql.Pool,
    user_id: str,
    numbers: list[str],
    age_s: float,
    status: str = "pending",
    expires: bool = True,
) -> None:
    """Order rows created ``age_s`` ago, expiring in 20 minutes; ``expires=False``: as
    another writer (the cloud function) leaves them, without ``expires_at``."""
    await add_orders(
        pool,
        [(no, user_id) for no in numbers],
        package_type="basic",
        trade_type="NATIVE",
        amount="9.90",
        status=status,
        created_at=ago(age_s),
        expires_at=from_now(20 * 60) if expires else None,
    )


def _number() -> str:
    return f"RA{secrets.token_hex(10).upper()}"


async def test_a_lost_notification_is_found_in_the_next_pass_however_many_are_abandoned(
    db_pool: aiomysql.Pool,
    wechat: tuple[RunningSandbox, WechatPayClient],
    publisher: Publisher,
) -> None:
    sandbox, client = wechat
    reconciler = Reconciler(
        db_pool,
        client,
        publisher,
        ReconcilerConfig(after_s=AFTER_S, batch_size=100),
        payment_gate(client),
    )
    user_id = await add_user(db_pool)
    # A few thousand orders nobody will pay, older than any other, and one the reconciler
    # asks about while it is still unpaid (its buyer pays a minute later).
    abandoned = [_number() for _ in range(2500)]
    await _pending(db_pool, user_id, abandoned, age_s=600)
    asked = _number()
    await client.place("NATIVE", order_request("native", asked))
    await _pending(db_pool, user_id, [asked], age_s=AFTER_S + 1)
    first = await reconciler.run_once()  # the service runs these all along
    assert first["still_pending"] == 1  # asked: NOTPAY (the abandoned were never placed)
    assert first["not_placed_yet"] >= len(abandoned)  # every one asked about once

    # Both paid at WeChat Pay with their notifications lost: the one already asked about,
    # now due its second look, and one whose RECONCILE_AFTER_S has just passed.
    fresh = _number()
    await client.place("NATIVE", order_request("native", fresh))
    await _pending(db_pool, user_id, [fresh], age_s=AFTER_S + 1)
    await _later(db_pool, asked, 240)
    for no in (asked, fresh):
        await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {"notify": False})

    found = await reconciler.run_once()
    assert found["paid_recovered"] == 2
    # The abandoned were answered a pass ago: asked again when they expire, not now.
    assert found["not_placed_yet"] == 0


async def _later(pool: aiomysql.Pool, out_trade_no: str, seconds: float) -> None:
    """``seconds`` pass for the order: its times move back by that much (time driven
    through the row, not waited for)."""
    async with transaction(pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET created_at = created_at - INTERVAL %s MICROSECOND,"
            " reconciled_at = reconciled_at - INTERVAL %s MICROSECOND,"
            " expires_at = expires_at - INTERVAL %s MICROSECOND WHERE out_trade_no = %s",
            (*[int(seconds * 1e6)] * 3, out_trade_no),
        )


async def test_an_order_nobody_pays_is_asked_about_after_a_minute_five_minutes_and_expiry(
    db_pool: aiomysql.Pool, publisher: Publisher
) -> None:
    """Not every pass (about 58 queries per abandoned order when each asked): once
    ``after_s`` old, once ``second_look_s`` old, once expired (then closed). Each WeChat
    Pay query is counted as it leaves over HTTP."""
    queried: list[str] = []

    async def count(
        _session: object, _ctx: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        if params.method == "GET" and "/v3/pay/transactions/out-trade-no/" in params.url.path:
            queried.append(params.url.path.rsplit("/", 1)[-1])

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(count)
    async with (
        running_sandbox(sandbox_settings(KEYS)) as sandbox,
        aiohttp.ClientSession(trace_configs=[trace]) as http,
    ):
        client = KEYS.merchant_client(sandbox.base_url, http)
        config = ReconcilerConfig(after_s=AFTER_S, second_look_s=300)
        reconciler = Reconciler(db_pool, client, publisher, config, payment_gate(client))
        no = _number()
        await client.place("NATIVE", order_request("native", no))
        await _pending(db_pool, await add_user(db_pool), [no], age_s=AFTER_S + 1)

        async def passes(n: int) -> int:
            """Queries about the order in ``n`` passes."""
            before = queried.count(no)
            for _ in range(n):
                await reconciler.run_once()
            return queried.count(no) - before

        assert await passes(3) == 1  # a minute old: asked once
        await _later(db_pool, no, 240)
        assert await passes(3) == 1  # five minutes old: once more
        await _later(db_pool, no, 900)
        assert await passes(3) == 0  # nothing more until it expires (at 20 minutes)
        await _later(db_pool, no, 120)
        assert await passes(3) == 1  # expired: asked, closed, and no longer pending
        assert (await sandbox.ok("GET", f"/sandbox/orders/{no}"))["trade_state"] == "CLOSED"
        assert (await _status(db_pool, no))["status"] == "failed"


async def _refund_row(pool: aiomysql.Pool, out_trade_no: str, age_s: float) -> str:
    """A refund whose request never reached WeChat Pay (the caller saw a 503)."""
    return await add_refund(pool, out_trade_no, "9.90", reason="x", created_at=ago(age_s))


async def _refund_status(pool: aiomysql.Pool, out_refund_no: str) -> str:
    async with transaction(pool) as cur:
        await cur.execute("SELECT status FROM refunds WHERE out_refund_no = %s", (out_refund_no,))
        return str((await cur.fetchone())["status"])


async def test_a_refund_that_never_reached_wechatpay_is_closed_after_the_grace(
    db_pool: aiomysql.Pool,
    wechat: tuple[RunningSandbox, WechatPayClient],
    publisher: Publisher,
) -> None:
    sandbox, client = wechat
    reconciler = Reconciler(
        db_pool,
        client,
        publisher,
        ReconcilerConfig(after_s=AFTER_S, refund_grace_s=600),
        payment_gate(client),
    )
    orders = Orders(
        db_pool,
        client,
        KEYS.merchant_signer(),
        MerchantConfig(MCHID, APPID, "http://127.0.0.1:9/notify/wechatpay", 1800),
    )
    user_id = await add_user(db_pool)
    paid, young = _number(), _number()
    for no in (paid, young):
        await client.place("NATIVE", order_request("native", no))
        await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    await _pending(db_pool, user_id, [paid, young], age_s=3600, status="paid")
    stale = await _refund_row(db_pool, paid, age_s=601)
    recent = await _refund_row(db_pool, young, age_s=AFTER_S + 1)  # may still be on its way
    with pytest.raises(InvalidRequest):  # the unsent refund reserves the whole order
        await orders.refunds.request(paid, None, "again")

    found = await reconciler.run_once()
    assert (found["refund_closed_never_sent"], found["refund_not_at_wechatpay_yet"]) == (1, 1)
    assert await _refund_status(db_pool, stale) == "closed"
    assert await _refund_status(db_pool, recent) == "pending"
    answer = await orders.refunds.request(paid, None, "again")  # no longer reserved
    assert (answer["amount"], answer["status"]) == (990, "pending")


async def _status(pool: aiomysql.Pool, out_trade_no: str) -> dict[str, object]:
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT status, closed_at IS NOT NULL AS dated FROM payment_orders"
            " WHERE out_trade_no = %s",
            (out_trade_no,),
        )
        row: dict[str, object] = await cur.fetchone()
    return row


#: The seed's pending order (tests/support/seed_db.py): placed by the cloud function in
#: January 2024, never paid, unknown to the sandbox's WeChat Pay.
SEED_PENDING = "170634568000112345"


async def test_orders_other_writers_left_pending_expire_after_the_ttl_and_stop_being_asked(
    db_pool: aiomysql.Pool,
    wechat: tuple[RunningSandbox, WechatPayClient],
    publisher: Publisher,
) -> None:
    """No expires_at (the cloud function does not write it): such an order expires
    ``order_ttl_s`` after its creation. One WeChat Pay does not know (ORDER_NOT_EXIST) is
    failed once expired, and then out of the pending set: the next pass does not ask."""
    sandbox, client = wechat
    reconciler = Reconciler(
        db_pool,
        client,
        publisher,
        ReconcilerConfig(after_s=AFTER_S, order_ttl_s=1800),
        payment_gate(client),
    )
    user_id = await add_user(db_pool)
    old, young = _number(), _number()  # never placed at WeChat Pay
    await _pending(db_pool, user_id, [old], age_s=1801, expires=False)
    await _pending(db_pool, user_id, [young], age_s=AFTER_S + 1, expires=False)
    unpaid = _number()  # placed, NOTPAY, past the TTL: closed at WeChat Pay too
    await client.place("NATIVE", order_request("native", unpaid))
    await _pending(db_pool, user_id, [unpaid], age_s=1900, expires=False)
    paid = _number()  # the cloud function's order, paid with its notification lost
    await client.place("NATIVE", order_request("native", paid))
    await sandbox.ok("POST", f"/sandbox/orders/{paid}/pay", {"notify": False})
    await _pending(db_pool, user_id, [paid], age_s=AFTER_S + 1, expires=False)

    found = await reconciler.run_once()
    assert found["closed_never_placed"] >= 1  # old (and the seed's, in a fresh session)
    assert found["not_placed_yet"] >= 1  # young
    assert found["closed_expired"] >= 1  # unpaid
    assert found["paid_recovered"] >= 1  # paid
    assert await _status(db_pool, old) == {"status": "failed", "dated": 1}
    assert await _status(db_pool, young) == {"status": "pending", "dated": 0}
    assert await _status(db_pool, unpaid) == {"status": "failed", "dated": 1}
    assert (await sandbox.ok("GET", f"/sandbox/orders/{unpaid}"))["trade_state"] == "CLOSED"
    assert await _status(db_pool, SEED_PENDING) == {"status": "failed", "dated": 1}

    # Failed orders are no longer pending: the next pass asks only about what still is.
    asked: list[str] = []
    query = client.query_by_out_trade_no

    async def spy(out_trade_no: str):
        asked.append(out_trade_no)
        return await query(out_trade_no)

    client.query_by_out_trade_no = spy  # type: ignore[method-assign]
    await _later(db_pool, young, 240)  # due its second look
    await reconciler.run_once()
    assert young in asked
    assert not {old, unpaid, SEED_PENDING} & set(asked)


async def test_an_order_or_refund_of_unknown_age_is_left_to_wechatpays_answer(
    db_pool: aiomysql.Pool,
    wechat: tuple[RunningSandbox, WechatPayClient],
    publisher: Publisher,
) -> None:
    """A row another writer left without ``created_at`` (and without ``expires_at``): no
    pass reads it, but the bill reconciliation may hand it over. Its age unknown, it is
    neither taken for expired nor closed as never sent, whatever WeChat Pay does not know;
    it used to fail the whole run (None + a timedelta)."""
    _, client = wechat
    reconciler = Reconciler(
        db_pool,
        client,
        publisher,
        ReconcilerConfig(after_s=AFTER_S, refund_grace_s=600),
        payment_gate(client),
    )
    user_id = await add_user(db_pool)
    order = _number()  # unknown to WeChat Pay: ORDER_NOT_EXIST
    await _pending(db_pool, user_id, [order], age_s=3600, expires=False)
    refund = await add_refund(db_pool, order, "9.90")  # unknown too: RESOURCE_NOT_EXISTS
    # As the bill reconciliation reads them, created_at NULL.
    unknown_age: OrderToSettle = {"out_trade_no": order, "expires_at": None, "created_at": None}
    assert await reconciler.settle_order(unknown_age) == "not_placed_yet"  # asked again later
    unsent: RefundToSettle = {
        "out_refund_no": refund,
        "out_trade_no": order,
        "amount_refund": 990,
        "refund_id": None,
        "created_at": None,
    }
    assert await reconciler.settle_refund(unsent) == "refund_not_at_wechatpay_yet"
    assert await _refund_status(db_pool, refund) == "pending"
