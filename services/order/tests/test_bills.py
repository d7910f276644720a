"""``paylane reconcile bills``: a China day's trade bill from the sandbox against the real
database, with the reconciler's events on the real broker. The day is one long past,
chosen at random, so that no other test's orders fall into it."""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiomysql
import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection

from paylane_common.events import parse_event
from paylane_common.topology import declare_exchange
from paylane_common.wechatpay import WechatPayClient
from paylane_common.wechatpay.testing import order_request
from paylane_order.bills import (
    CHINA,
    BillReconciler,
    DailyBills,
    china_day_window,
    previous_china_day,
)
from paylane_order.settings import OrderSettings
from paylane_order.standalone import open_reconciler, reconcile_bills
from services.order.tests.support import order_settings
from tests.support.queries import fetch_one, order_status
from tests.support.sandbox import (
    RunningSandbox,
    merchant_client,
    running_sandbox,
    sandbox_settings,
)
from tests.support.seeding import add_order, add_refund, add_user
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.integration

KEYS = FakeWechat()
ROOT = Path(__file__).resolve().parents[3]


def _no(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(8).upper()}"


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(sandbox_settings(KEYS)) as running:
        yield running


@pytest.fixture
async def client(sandbox: RunningSandbox) -> AsyncIterator[WechatPayClient]:
    async with aiohttp.ClientSession() as http:
        yield merchant_client(sandbox, KEYS, http)


@pytest.fixture
async def spy(amqp_connection: AbstractRobustConnection) -> AsyncIterator[AbstractQueue]:
    """Every payment.succeeded and refund.* published meanwhile."""
    channel = await amqp_connection.channel()
    queue = await channel.declare_queue(f"spy.{uuid.uuid4().hex}", exclusive=True)
    exchange = await declare_exchange(channel)
    for key in ("payment.succeeded", "refund.*"):
        await queue.bind(exchange, routing_key=key)
    yield queue
    await channel.close()


async def _published(queue: AbstractQueue) -> list[tuple[str, Any]]:
    found = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        envelope, data = parse_event(message.body)
        found.append((envelope.event_id, data))
    return found


def _settings(sandbox: RunningSandbox, amqp_url: str, mysql_url: str) -> OrderSettings:
    return order_settings(KEYS, sandbox.base_url, amqp_url, mysql_url)


async def test_reconcile_bills_settles_flags_and_reports_once(
    amqp_url: str,
    mysql_url: str,
    db_pool: aiomysql.Pool,
    sandbox: RunningSandbox,
    client: WechatPayClient,
    spy: AbstractQueue,
) -> None:
    day = date(2001, 1, 1) + timedelta(days=random.randrange(3000))
    start, _ = china_day_window(day)  # naive UTC, as the database holds times
    at = start + timedelta(hours=10)  # 18:00 China time
    ledger = sandbox.state.ledger
    await sandbox.ok("PUT", "/sandbox/switches", {"refund_mode": "manual"})
    user = await add_user(db_pool)

    async def paid_at_wechat(no: str) -> str:
        await client.place("NATIVE", order_request("native", no))
        paid = await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
        ledger.orders[no].success_time = at.replace(tzinfo=UTC).timestamp()
        return str(paid["transaction_id"])

    async def row(no: str, status: str, amount: str = "9.90", txn: str | None = None) -> None:
        paid_at = at if status == "paid" else None
        await add_order(
            db_pool, user, no, amount=amount, status=status, paid_at=paid_at, transaction_id=txn
        )

    alike, lost, costly, ghost = _no("BA"), _no("BL"), _no("BC"), _no("BG")
    await row(alike, "paid", txn=await paid_at_wechat(alike))
    await paid_at_wechat(lost)
    await row(lost, "pending")  # its notification never came
    await row(costly, "paid", amount="19.90", txn=await paid_at_wechat(costly))
    await row(ghost, "paid", txn="4200000000000000000000000001")  # never at WeChat Pay
    stranger = await paid_at_wechat(_no("BS"))  # an order paylane never had
    # A refund of `alike` that WeChat Pay finished and paylane still thinks pending, and
    # one made at WeChat Pay (the merchant platform) that paylane never saw.
    finished, unseen = f"R{alike}", f"RX{alike}"
    for out_refund_no, amount in ((finished, 300), (unseen, 200)):
        body = {
            "out_trade_no": alike,
            "out_refund_no": out_refund_no,
            "amount": {"refund": amount, "total": 990, "currency": "CNY"},
        }
        await client.create_refund(body)
        ledger.refunds[out_refund_no].created_at = at.replace(tzinfo=UTC).timestamp()
    await sandbox.ok("POST", f"/sandbox/refunds/{finished}/complete", {"status": "SUCCESS"})
    # It finished that day, before WeChat Pay made the day's bill.
    ledger.refunds[finished].changes = [(at.replace(tzinfo=UTC).timestamp(), "SUCCESS")]
    refund_id = ledger.refunds[finished].refund_id
    await add_refund(
        db_pool, alike, "3.00", "9.90", out_refund_no=finished, refund_id=refund_id, created_at=at
    )

    settings = _settings(sandbox, amqp_url, mysql_url)
    report = await reconcile_bills(settings, day)

    kinds = {(d.kind, d.out_refund_no or d.out_trade_no): d.action for d in report.differences}
    assert kinds == {
        ("paid_not_here", lost): "settled",
        ("amount_differs", costly): "needs_review",
        ("not_paid_at_wechat", ghost): "needs_review",
        ("paid_unknown_order", ledger.order_by_transaction(stranger).out_trade_no): "alert",
        ("refund_state_differs", finished): "settled",
        ("refund_not_here", unseen): "alert",
    }
    assert (report.bill_payments, report.bill_paid_total) == (4, 4 * 990)
    assert (report.bill_refunds, report.bill_refund_total) == (2, 500)
    assert (report.our_payments, report.our_paid_total) == (3, 990 + 1990 + 990)
    assert (report.our_refunds, report.our_refund_total) == (1, 300)
    assert await order_status(db_pool, costly) == "needs_review"
    assert await order_status(db_pool, ghost) == "needs_review"
    review = await fetch_one(
        db_pool, "SELECT review_reason FROM payment_orders WHERE out_trade_no = %s", costly
    )
    assert f"bill {day}" in review["review_reason"]
    table = report.table()
    assert "paid_not_here" in table and "6 difference(s)" in table
    assert report.to_json()["day"] == day.isoformat()

    first = await _published(spy)
    recovered = [(e, d) for e, d in first if getattr(d, "out_trade_no", None) == lost]
    assert [e for e, _ in recovered] == [f"reconcile-{recovered[0][1].transaction_id}"]
    refunded = [e for e, d in first if getattr(d, "out_refund_no", None) == finished]
    assert refunded == [f"reconcile-refund-{finished}-SUCCESS"]

    # Again (nothing applied the events meanwhile): the same events, by the same ids, so
    # the consumer applies each once; the reviews are not repeated.
    again = await reconcile_bills(settings, day)
    assert {(d.kind, d.action) for d in again.differences} == {
        ("paid_not_here", "settled"),
        ("paid_unknown_order", "alert"),
        ("refund_state_differs", "settled"),
        ("refund_not_here", "alert"),
    }
    second = await _published(spy)
    assert sorted(e for e, _ in second) == sorted([recovered[0][0], *refunded])
    logged = await fetch_one(
        db_pool,
        "SELECT COUNT(*) AS n FROM payment_logs WHERE type = 'bill_difference'"
        " AND out_trade_no = %s AND detail LIKE %s",
        alike,
        f"{day} refund_not_here:%",
    )
    assert logged["n"] == 1


async def test_a_day_without_business_has_nothing_to_say(
    amqp_url: str, mysql_url: str, sandbox: RunningSandbox
) -> None:
    day = date(2000, 1, 1) - timedelta(days=random.randrange(3000))
    report = await reconcile_bills(_settings(sandbox, amqp_url, mysql_url), day)
    assert report.differences == [] and report.bill_payments == 0
    assert report.table().endswith("no differences")


async def test_the_daily_run_reconciles_the_previous_china_day_at_its_hour(
    amqp_url: str, mysql_url: str, sandbox: RunningSandbox
) -> None:
    """DailyBills with a clock just before 10:00 China time on the day after ``day``."""
    day = date(2001, 1, 1) - timedelta(days=random.randrange(3000))
    at = datetime(day.year, day.month, day.day, tzinfo=CHINA) + timedelta(days=1, hours=10)
    async with AsyncExitStack() as stack:
        pool, reconciler = await open_reconciler(stack, _settings(sandbox, amqp_url, mysql_url))
        bills = BillReconciler(pool, reconciler.client, reconciler)
        daily = DailyBills(bills, hour=10, clock=lambda: at - timedelta(milliseconds=50))
        daily.start()
        try:
            await asyncio.wait_for(daily.ran.wait(), 10)
        finally:
            await daily.stop()
    assert daily.last_report is not None and daily.last_report.day == day


async def test_the_command_prints_the_report_as_json(
    amqp_url: str, mysql_url: str, sandbox: RunningSandbox, client: WechatPayClient
) -> None:
    """``paylane reconcile bills --date D --json`` as a process, against the sandbox."""
    no = _no("BJ")
    await client.place("NATIVE", order_request("native", no))
    await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    day = date(2001, 1, 1) - timedelta(days=random.randrange(3000))
    start, _ = china_day_window(day)
    paid_at = start + timedelta(hours=1)
    sandbox.state.ledger.orders[no].success_time = paid_at.replace(tzinfo=UTC).timestamp()
    env = {
        **os.environ,
        "LOG_FORMAT": "json",
        "AMQP_URL": amqp_url,
        "MYSQL_URL": mysql_url,
        "WECHATPAY_MCHID": KEYS.mchid,
        "WECHATPAY_APPID": KEYS.appid,
        "WECHATPAY_API_BASE": sandbox.base_url,
        "WECHATPAY_NOTIFY_URL": "http://127.0.0.1:9/notify/wechatpay",
        "WECHATPAY_MERCHANT_PRIVATE_KEY": KEYS.merchant_private_key_pem,
        "WECHATPAY_MERCHANT_SERIAL_NO": KEYS.merchant_serial_no,
        "WECHATPAY_PUBLIC_KEY": KEYS.platform_public_key_pem,
        "WECHATPAY_PUBLIC_KEY_ID": KEYS.public_key_id,
        "CLIENT_TOKEN_SECRET": "c" * 32,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paylane.cli",
        "reconcile",
        "bills",
        "--date",
        day.isoformat(),
        "--json",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()[-2000:]
    report = json.loads(out)
    assert report["day"] == day.isoformat() and report["bill_payments"] == 1
    assert [(d["kind"], d["out_trade_no"]) for d in report["differences"]] == [
        ("paid_unknown_order", no)
    ]


def test_the_daily_run_is_for_the_previous_china_day_at_its_hour() -> None:
    # 23:30 UTC is 07:30 the next day in China.
    now = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    assert previous_china_day(now) == date(2026, 11, 24)
    daily = DailyBills(bills=None, hour=10)  # type: ignore[arg-type]
    assert daily.seconds_until_next(now) == 2.5 * 3600
    later = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)  # 10:00 China: tomorrow's turn
    assert daily.seconds_until_next(later) == 24 * 3600
    assert datetime(2026, 11, 25, 10, tzinfo=CHINA).astimezone(UTC) == later
