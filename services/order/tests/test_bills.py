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
from prometheus_client import REGISTRY

from paylane_common.broker.topology import declare_exchange
from paylane_common.contract.china_time import CHINA
from paylane_common.contract.events import parse_event
from paylane_common.storage.db import transaction
from paylane_common.wechatpay import WechatPayClient
from paylane_common.wechatpay.testing import order_request
from paylane_order.bills import (
    BillReconciler,
    DailyBills,
    china_day_window,
    previous_china_day,
)
from paylane_order.reconcile_cli import open_reconciler, reconcile_bills
from paylane_order.settings import OrderSettings
from services.order.tests.support import order_settings
from tests.support.queries import fetch_one, order_status
from tests.support.sandbox import (
    RunningSandbox,
    merchant_client,
    running_sandbox,
    sandbox_settings,
)
from tests.support.seeding import add_order, add_refund, add_user
from tests.support.stack_config import TOKEN_PRIVATE_KEY
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


_DAYS_TAKEN: set[date] = set()


def _quiet_day() -> date:
    """A China day long past that no other test has (its orders would be another test's
    differences): the other tests here take theirs from other years."""
    while (day := date(2010, 1, 1) + timedelta(days=random.randrange(3000))) in _DAYS_TAKEN:
        pass
    _DAYS_TAKEN.add(day)
    return day


def _ts(moment: datetime) -> float:
    """A naive UTC time (as the database holds them) as the sandbox's timestamp."""
    return moment.replace(tzinfo=UTC).timestamp()


async def _paid_at_wechat(
    sandbox: RunningSandbox,
    client: WechatPayClient,
    no: str,
    when: datetime,
    amount: int | None = None,
) -> str:
    """``no`` placed and paid at WeChat Pay at ``when`` (naive UTC); its transaction id."""
    await client.place("NATIVE", order_request("native", no))
    body: dict[str, Any] = {"notify": False, "amount": amount}
    paid = await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", body)
    sandbox.state.ledger.orders[no].success_time = _ts(when)
    return str(paid["transaction_id"])


async def _refunded_at_wechat(
    sandbox: RunningSandbox, client: WechatPayClient, no: str, out_refund_no: str, when: datetime
) -> str:
    """A refund of 1.00 of ``no`` (9.90) made at ``when`` and finished at once; its id."""
    body = {
        "out_trade_no": no,
        "out_refund_no": out_refund_no,
        "amount": {"refund": 100, "total": 990, "currency": "CNY"},
    }
    await client.create_refund(body)
    await sandbox.ok("POST", f"/sandbox/refunds/{out_refund_no}/complete", {"status": "SUCCESS"})
    refund = sandbox.state.ledger.refunds[out_refund_no]
    refund.created_at = _ts(when)
    refund.changes = [(_ts(when), "SUCCESS")]
    return refund.refund_id


def _differences(kind: str) -> float:
    return REGISTRY.get_sample_value("paylane_bill_differences_total", {"kind": kind}) or 0.0


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
    # ... and announced (granted) all the same, as before the payment gate (issue 24).
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET paid_event_at = NOW(6) WHERE out_trade_no = %s", (ghost,)
        )
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
    # The ghost's grant is taken back: an order.revoked staged with the review.
    revoked = await fetch_one(
        db_pool,
        "SELECT COUNT(*) AS n FROM outbox WHERE routing_key = 'order.revoked' AND payload LIKE %s",
        f"%{ghost}%",
    )
    assert revoked["n"] == 1
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


async def test_payments_and_refunds_missing_from_the_bill_are_asked_about_before_review(
    amqp_url: str,
    mysql_url: str,
    db_pool: aiomysql.Pool,
    sandbox: RunningSandbox,
    client: WechatPayClient,
) -> None:
    """Paid here that day, not in the day's bill: only WeChat Pay's answer moves an order.
    Near midnight its success_time is the next China day (no difference); not paid there,
    or paid at another amount: review; no answer: an alert, the order left alone."""
    day = _quiet_day()
    start, end = china_day_window(day)
    at, last_second = start + timedelta(hours=10), end - timedelta(seconds=1)
    next_day = end + timedelta(seconds=1)  # 00:00:01 China time, the day after
    await sandbox.ok("PUT", "/sandbox/switches", {"refund_mode": "manual"})
    user = await add_user(db_pool)
    alike, late, unpaid, cheaper, unreachable = (_no(p) for p in ("MA", "ML", "MU", "MC", "MX"))

    async def paid_here(no: str, paid_at: datetime, txn: str | None) -> None:
        await add_order(
            db_pool, user, no, amount="9.90", status="paid", paid_at=paid_at, transaction_id=txn
        )

    await paid_here(alike, at, await _paid_at_wechat(sandbox, client, alike, at))
    await paid_here(late, last_second, await _paid_at_wechat(sandbox, client, late, next_day))
    await client.place("NATIVE", order_request("native", unpaid))  # NOTPAY at WeChat Pay
    await paid_here(unpaid, at, "4200000000000000000000000002")
    await paid_here(cheaper, at, await _paid_at_wechat(sandbox, client, cheaper, next_day, 1))
    await paid_here(unreachable, at, await _paid_at_wechat(sandbox, client, unreachable, next_day))
    await sandbox.add_fault(
        path_prefix=f"/v3/pay/transactions/out-trade-no/{unreachable}", status=500, count=50
    )
    # A refund made here in the day's last second, at WeChat Pay in the next day's first.
    late_refund = f"R{late}"
    refund_id = await _refunded_at_wechat(sandbox, client, late, late_refund, next_day)
    await add_refund(
        db_pool,
        late,
        "1.00",
        "9.90",
        out_refund_no=late_refund,
        refund_id=refund_id,
        status="success",
        created_at=last_second,
    )

    settings = _settings(sandbox, amqp_url, mysql_url)
    report = await reconcile_bills(settings, day)

    found = {(d.kind, d.out_trade_no): (d.action, d.wechat_state) for d in report.differences}
    assert found == {
        ("not_paid_at_wechat", unpaid): ("needs_review", "NOTPAY"),
        ("amount_differs", cheaper): ("needs_review", "SUCCESS"),
        ("not_in_bill_unconfirmed", unreachable): ("alert", "SYSTEM_ERROR"),
    }
    statuses = {no: await order_status(db_pool, no) for no in (late, unpaid, cheaper, unreachable)}
    assert statuses == {
        late: "paid",
        unpaid: "needs_review",
        cheaper: "needs_review",
        unreachable: "paid",
    }
    review = await fetch_one(
        db_pool, "SELECT review_reason FROM payment_orders WHERE out_trade_no = %s", unpaid
    )
    assert review["review_reason"] == f"bill {day}: not paid at WeChat Pay (NOTPAY)"
    # Unanswered: the day is not done, the daily run tries it again.
    assert report.unconfirmed
    done = await fetch_one(
        db_pool, "SELECT value FROM paylane_meta WHERE name = %s", f"bills_reconciled:{day}"
    )
    assert done is None
    # Again: those in review are a person's now; the unanswered one is alerted again,
    # recorded once.
    again = await reconcile_bills(settings, day)
    assert [(d.kind, d.action) for d in again.differences] == [("not_in_bill_unconfirmed", "alert")]
    logged = await fetch_one(
        db_pool,
        "SELECT COUNT(*) AS n FROM payment_logs WHERE type = 'bill_difference'"
        " AND out_trade_no = %s",
        unreachable,
    )
    assert logged["n"] == 1


async def test_a_day_wechat_pay_has_no_bill_of_is_said_loudly_and_moves_nothing(
    amqp_url: str,
    mysql_url: str,
    db_pool: aiomysql.Pool,
    sandbox: RunningSandbox,
    client: WechatPayClient,
) -> None:
    """NO_STATEMENT_EXIST while paylane has a payment that day (WeChat Pay's is a second
    past midnight): the report and an alert say the bill is missing; the order, asked
    about, stays paid."""
    day = _quiet_day()
    _, end = china_day_window(day)
    no = _no("MN")
    txn = await _paid_at_wechat(sandbox, client, no, end + timedelta(seconds=1))
    user = await add_user(db_pool)
    paid_at = end - timedelta(seconds=1)
    await add_order(
        db_pool, user, no, amount="9.90", status="paid", paid_at=paid_at, transaction_id=txn
    )
    missing = _differences("bill_missing")

    report = await reconcile_bills(_settings(sandbox, amqp_url, mysql_url), day)

    assert await order_status(db_pool, no) == "paid" and report.differences == []
    assert report.no_statement and report.bill_missing
    assert (report.our_payments, report.bill_payments) == (1, 0)
    assert "BILL MISSING" in report.table() and report.to_json()["no_statement"] is True
    assert _differences("bill_missing") == missing + 1


async def test_an_unreadable_line_of_the_bill_is_a_difference_and_the_day_goes_on(
    amqp_url: str,
    mysql_url: str,
    db_pool: aiomysql.Pool,
    sandbox: RunningSandbox,
    client: WechatPayClient,
) -> None:
    """An order placed with ``,`` and a backtick in its ``attach`` (by another writer, or
    before generation ids were checked) has a field too many in the bill's line. That once
    failed the whole day (``record 5 has 28 fields, not 27``); now the line is reported and
    the others are reconciled: a payment lost here is still found and settled."""
    day = _quiet_day()
    start, _ = china_day_window(day)
    at = start + timedelta(hours=10)
    user = await add_user(db_pool)
    odd, lost = _no("BU"), _no("BL")
    await client.place("NATIVE", order_request("native", odd, attach="gen-1,`x"))
    paid = await sandbox.ok("POST", f"/sandbox/orders/{odd}/pay", {"notify": False})
    sandbox.state.ledger.orders[odd].success_time = _ts(at)
    txn = str(paid["transaction_id"])
    await add_order(
        db_pool, user, odd, amount="9.90", status="paid", paid_at=at, transaction_id=txn
    )
    await _paid_at_wechat(sandbox, client, lost, at)
    await add_order(db_pool, user, lost, amount="9.90", status="pending")
    unreadable = _differences("bill_record_unreadable")

    report = await reconcile_bills(_settings(sandbox, amqp_url, mysql_url), day)

    kinds = {(d.kind, d.out_trade_no): d.action for d in report.differences}
    assert kinds == {("bill_record_unreadable", odd): "alert", ("paid_not_here", lost): "settled"}
    assert (report.bill_payments, report.our_payments) == (1, 1)
    # Ours behind the unreadable line was asked about at WeChat Pay: paid alike, unmoved.
    assert await order_status(db_pool, odd) == "paid"
    assert _differences("bill_record_unreadable") == unreadable + 1
    logged = await fetch_one(
        db_pool,
        "SELECT detail FROM payment_logs WHERE type = 'bill_difference' AND out_trade_no = %s",
        odd,
    )
    assert logged["detail"].startswith(f"{day} bill_record_unreadable:")


async def test_two_refunds_of_one_order_are_two_differences_each_recorded_once(
    amqp_url: str,
    mysql_url: str,
    db_pool: aiomysql.Pool,
    sandbox: RunningSandbox,
    client: WechatPayClient,
) -> None:
    """Two refunds made at WeChat Pay (the merchant platform) that paylane never saw: two
    ``refund_not_here`` lines in the report and two ``payment_logs`` rows, however often
    the day runs."""
    day = _quiet_day()
    start, _ = china_day_window(day)
    at = start + timedelta(hours=9)
    await sandbox.ok("PUT", "/sandbox/switches", {"refund_mode": "manual"})
    no = _no("MR")
    txn = await _paid_at_wechat(sandbox, client, no, at)
    user = await add_user(db_pool)
    await add_order(db_pool, user, no, amount="9.90", status="paid", paid_at=at, transaction_id=txn)
    first, second = f"R1{no}", f"R2{no}"
    for out_refund_no in (first, second):
        await _refunded_at_wechat(sandbox, client, no, out_refund_no, at + timedelta(hours=1))

    settings = _settings(sandbox, amqp_url, mysql_url)
    for _ in range(2):
        report = await reconcile_bills(settings, day)
        assert sorted((d.kind, d.out_refund_no, d.action) for d in report.differences) == [
            ("refund_not_here", first, "alert"),
            ("refund_not_here", second, "alert"),
        ]
        assert first in report.table() and second in report.table()
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT out_refund_no FROM payment_logs WHERE type = 'bill_difference'"
            " AND out_trade_no = %s ORDER BY out_refund_no",
            (no,),
        )
        assert [r["out_refund_no"] for r in await cur.fetchall()] == [first, second]


async def test_a_day_is_reconciled_once_however_many_replicas_wake_for_it(
    amqp_url: str,
    mysql_url: str,
    db_pool: aiomysql.Pool,
    sandbox: RunningSandbox,
    client: WechatPayClient,
) -> None:
    """Two replicas' daily runs for one day, the second waking after the first finished
    (their clocks differ): one report, one alert and count a difference; the command
    still runs the day again when an operator asks."""
    day = _quiet_day()
    start, _ = china_day_window(day)
    stranger = _no("MS")  # paid at WeChat Pay, unknown here: an alert on every run
    await _paid_at_wechat(sandbox, client, stranger, start + timedelta(hours=9))
    before = _differences("paid_unknown_order")
    at = datetime(day.year, day.month, day.day, tzinfo=CHINA) + timedelta(days=1, hours=10)
    settings = _settings(sandbox, amqp_url, mysql_url)
    reports = []
    for _ in range(2):  # each its own pool, client and reconciler, as a replica has
        async with AsyncExitStack() as stack:
            pool, reconciler = await open_reconciler(stack, settings)
            bills = BillReconciler(pool, reconciler.client, reconciler)
            daily = DailyBills(bills, hour=10, clock=lambda: at - timedelta(milliseconds=50))
            daily.start()
            try:
                await asyncio.wait_for(daily.ran.wait(), 30)
            finally:
                await daily.stop()
            reports.append(daily.last_report)
    assert reports[0] is not None and reports[1] is None
    assert [d.out_trade_no for d in reports[0].differences] == [stranger]
    assert _differences("paid_unknown_order") == before + 1
    done = await fetch_one(
        db_pool, "SELECT value FROM paylane_meta WHERE name = %s", f"bills_reconciled:{day}"
    )
    assert done is not None

    again = await reconcile_bills(settings, day)  # an operator's explicit rerun
    assert [d.out_trade_no for d in again.differences] == [stranger]
    assert _differences("paid_unknown_order") == before + 2


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
        "WECHATPAY_APIV3_KEY": KEYS.apiv3_key,
        "CLIENT_TOKEN_PRIVATE_KEY": TOKEN_PRIVATE_KEY,
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
