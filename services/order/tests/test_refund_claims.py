"""Refund results claimed by an unsigned callback (WeChat Cloud Hosting's container
callback: ``source: "cloudhosting"``) take nothing back until WeChat Pay stands behind
them: the refund consumer asks ``queryrefund`` and applies WeChat Pay's answer
(paylane_order.refunds), on the real database and the sandbox."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import aiomysql
import pytest
from prometheus_client import REGISTRY

from paylane_common.contract import events
from paylane_common.contract.events import Envelope, RefundEvent
from paylane_common.contract.money import yuan
from paylane_common.delivery.consumer import Reject, Retry
from paylane_common.wechatpay import WechatPayClient
from paylane_common.wechatpay.testing import order_request
from paylane_order.query_log import QueryLog
from paylane_order.refunds import PROCESSING_ATTEMPTS, UNANSWERED_ATTEMPTS, RefundApplier
from services.order.tests.support import basic_order
from tests.support.events import refund_succeeded
from tests.support.queries import fetch_one
from tests.support.sandbox import RunningSandbox
from tests.support.seeding import add_refund
from tests.support.stack import free_port
from tests.support.wechat import KIT

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(
    kit_wechat: tuple[RunningSandbox, WechatPayClient],
) -> tuple[RunningSandbox, WechatPayClient]:
    sandbox, client = kit_wechat
    # A refund stays PROCESSING at WeChat Pay until the test completes it.
    await sandbox.ok("PUT", "/sandbox/switches", {"refund_mode": "manual"})
    return sandbox, client


async def _paid_with_refund_asked(
    pool: aiomysql.Pool, sandbox: RunningSandbox, client: WechatPayClient, refund: int = 990
) -> tuple[str, str]:
    """A 9.90 order paid at WeChat Pay and here, and a refund of ``refund`` fen asked of
    WeChat Pay (PROCESSING there, pending here)."""
    no, _ = await basic_order(pool, status="paid")
    await client.place("NATIVE", order_request("native", no))
    await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    out_refund_no = await add_refund(
        pool, no, yuan(refund), "9.90", reason="asked", status="pending"
    )
    await client.create_refund(
        {
            "out_trade_no": no,
            "out_refund_no": out_refund_no,
            "amount": {"refund": refund, "total": 990, "currency": "CNY"},
        }
    )
    return no, out_refund_no


def _claim(no: str, out_refund_no: str, **fields: Any) -> Any:
    """What ingress publishes for the platform's refund callback: a claim."""
    values: dict[str, Any] = {"source": "cloudhosting", **fields}
    return refund_succeeded(
        no, out_refund_no, 990, 990, event_id=f"cloudhosting-refund-{out_refund_no}", **values
    )


def _unconfirmed_count() -> float:
    sample = REGISTRY.get_sample_value(
        "paylane_refunds_unconfirmed_total", {"source": "cloudhosting"}
    )
    return sample or 0.0


async def _state(pool: aiomysql.Pool, no: str, out_refund_no: str) -> tuple[str, str]:
    order = await fetch_one(pool, "SELECT status FROM payment_orders WHERE out_trade_no = %s", no)
    refund = await fetch_one(
        pool, "SELECT status FROM refunds WHERE out_refund_no = %s", out_refund_no
    )
    return order["status"], refund["status"] if refund else "none"


async def test_a_claimed_refund_is_applied_as_wechatpay_answers_once_it_is_done(
    db_pool: aiomysql.Pool, world: tuple[RunningSandbox, WechatPayClient]
) -> None:
    sandbox, client = world
    no, out_refund_no = await _paid_with_refund_asked(db_pool, sandbox, client)
    refunds = RefundApplier(db_pool, queries=QueryLog(db_pool, client))
    # The claim says SUCCESS; WeChat Pay says PROCESSING: asked again later, nothing moves.
    with pytest.raises(Retry) as retry:
        await refunds(*_claim(no, out_refund_no))
    assert "still processing" in retry.value.reason
    assert retry.value.max_attempts == PROCESSING_ATTEMPTS
    assert await _state(db_pool, no, out_refund_no) == ("paid", "pending")
    # WeChat Pay finishes it: applied with WeChat Pay's refund id, not the claim's.
    await sandbox.ok("POST", f"/sandbox/refunds/{out_refund_no}/complete", {"status": "SUCCESS"})
    claim = _claim(no, out_refund_no, refund_id="50FROMTHECLAIM")
    assert await refunds(*claim) == "refunded"
    assert await _state(db_pool, no, out_refund_no) == ("refunded", "success")
    row = await fetch_one(
        db_pool, "SELECT refund_id FROM refunds WHERE out_refund_no = %s", out_refund_no
    )
    assert row["refund_id"] == sandbox.state.ledger.refunds[out_refund_no].refund_id
    # The row is WeChat Pay's refund; its source, who told paylane of it.
    logged = await fetch_one(
        db_pool,
        "SELECT source, event_type FROM payment_logs"
        " WHERE out_refund_no = %s AND kind = 'refund_success'",
        out_refund_no,
    )
    assert logged == {"source": "cloudhosting", "event_type": "REFUND.SUCCESS"}
    asked = await fetch_one(
        db_pool,
        "SELECT COUNT(*) AS n FROM wechatpay_queries"
        " WHERE out_refund_no = %s AND source = 'refund_check'",
        out_refund_no,
    )
    assert asked["n"] == 2
    # A redelivery asks nothing: the inbox has it.
    assert await refunds(*claim) == "duplicate"
    # The webhook endpoints get WeChat Pay's refund (the claim itself is not forwarded),
    # which comes back here as a duplicate.
    staged = await fetch_one(
        db_pool,
        "SELECT event_id, routing_key, payload FROM outbox WHERE event_id = %s",
        f"confirmed-{claim.envelope.event_id}",
    )
    assert staged is not None
    envelope = Envelope.model_validate_json(staged["payload"])
    assert staged["routing_key"] == events.REFUND_SUCCEEDED
    assert envelope.data["source"] == "wechatpay"
    assert envelope.data["refund_id"] == row["refund_id"]
    echo = RefundEvent.model_validate(envelope.data)
    assert await refunds(envelope, echo) == "duplicate"


async def test_a_claim_is_applied_with_wechatpays_status_and_amount_not_its_own(
    db_pool: aiomysql.Pool, world: tuple[RunningSandbox, WechatPayClient]
) -> None:
    sandbox, client = world
    refunds = RefundApplier(db_pool, queries=QueryLog(db_pool, client))
    # The claim says SUCCESS; WeChat Pay closed the refund.
    no, closed = await _paid_with_refund_asked(db_pool, sandbox, client)
    await sandbox.ok("POST", f"/sandbox/refunds/{closed}/complete", {"status": "CLOSED"})
    assert await refunds(*_claim(no, closed)) == "refund_closed"
    assert await _state(db_pool, no, closed) == ("paid", "closed")
    # The claim says the whole 9.90; WeChat Pay refunded 1.00 of it.
    no, partial = await _paid_with_refund_asked(db_pool, sandbox, client, refund=100)
    await sandbox.ok("POST", f"/sandbox/refunds/{partial}/complete", {"status": "SUCCESS"})
    assert await refunds(*_claim(no, partial)) == "refunded"
    order = await fetch_one(
        db_pool, "SELECT status, amount_refunded FROM payment_orders WHERE out_trade_no = %s", no
    )
    assert order == {"status": "paid", "amount_refunded": 100}
    # An event of before RefundEvent had a source: a claim by its id all the same.
    no, unsourced = await _paid_with_refund_asked(db_pool, sandbox, client)
    old = _claim(no, unsourced)
    old = old._replace(data=old.data.model_copy(update={"source": "wechatpay"}))
    with pytest.raises(Retry, match="still processing"):
        await refunds(*old)
    assert await _state(db_pool, no, unsourced) == ("paid", "pending")


async def test_a_claim_wechatpay_could_not_be_asked_about_is_tried_again(
    db_pool: aiomysql.Pool,
) -> None:
    no, _ = await basic_order(db_pool, status="paid")
    out_refund_no = await add_refund(db_pool, no, "9.90", "9.90", reason="x", status="pending")
    async with aiohttp.ClientSession() as http:
        # Nothing listens there: the query fails as a WeChat Pay outage would.
        unreachable = KIT.merchant_client(f"http://127.0.0.1:{free_port()}", http)
        refunds = RefundApplier(db_pool, queries=QueryLog(db_pool, unreachable))
        with pytest.raises(Retry) as retry:
            await refunds(*_claim(no, out_refund_no))
    assert retry.value.max_attempts == UNANSWERED_ATTEMPTS
    assert await _state(db_pool, no, out_refund_no) == ("paid", "pending")


async def test_a_claimed_refund_wechatpay_does_not_know_takes_nothing_back(
    db_pool: aiomysql.Pool, world: tuple[RunningSandbox, WechatPayClient]
) -> None:
    sandbox, client = world
    no, asked = await _paid_with_refund_asked(db_pool, sandbox, client)
    forged = f"RFORGED{uuid.uuid4().hex[:16]}"
    refunds = RefundApplier(db_pool, queries=QueryLog(db_pool, client))
    counted = _unconfirmed_count()
    with pytest.raises(Reject, match=f"WeChat Pay knows no refund {forged}"):
        await refunds(*_claim(no, forged))
    assert _unconfirmed_count() == counted + 1
    assert await _state(db_pool, no, forged) == ("paid", "none")
    logged = await fetch_one(
        db_pool,
        "SELECT type, kind, source, event_type, detail FROM payment_logs WHERE out_refund_no = %s",
        forged,
    )
    assert logged == {
        "type": "refund_callback",
        "kind": "unconfirmed_refund",
        "source": "cloudhosting",
        "event_type": "REFUND.SUCCESS",
        "detail": f"{forged} SUCCESS: WeChat Pay knows no refund {forged}",
    }
    # Another order's refund claimed for this one: refused too, even once it is done.
    await sandbox.ok("POST", f"/sandbox/refunds/{asked}/complete", {"status": "SUCCESS"})
    other, _ = await basic_order(db_pool, status="paid")
    with pytest.raises(Reject, match=f"of order '{no}', not {other}"):
        await refunds(*_claim(other, asked))
    assert await _state(db_pool, other, asked) == ("paid", "pending")
    assert await _state(db_pool, no, asked) == ("paid", "pending")


async def test_a_claim_without_a_client_to_ask_is_refused(db_pool: aiomysql.Pool) -> None:
    no, _ = await basic_order(db_pool, status="paid")
    out_refund_no = await add_refund(db_pool, no, "9.90", "9.90", reason="x", status="pending")
    with pytest.raises(Reject, match="no WeChat Pay client"):
        await RefundApplier(db_pool)(*_claim(no, out_refund_no))
    assert await _state(db_pool, no, out_refund_no) == ("paid", "pending")
