"""An ABNORMAL refund and its remedy on the real database, against the in-process sandbox
(which decrypts the bank fields with its platform key); the order API's route over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import aiomysql
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from paylane_common.contract.money import yuan
from paylane_common.web.auth import INTERNAL_SECRET_HEADER
from paylane_common.wechatpay import WechatPayClient
from paylane_common.wechatpay.testing import order_request
from paylane_order import api
from paylane_order.abnormal import AbnormalRefundRow, AbnormalRefunds, Remedy
from paylane_order.config import ORDER_CONFIG, OrderConfig
from paylane_order.errors import (
    Conflict,
    InvalidRequest,
    NotFound,
    UpstreamRejected,
    error_middleware,
)
from paylane_order.refunds import RefundApplier
from paylane_order.sessions import Sessions
from services.order.tests.support import basic_order, order_settings
from tests.support.events import refund_abnormal, refund_succeeded
from tests.support.queries import fetch_one
from tests.support.sandbox import RunningSandbox, running_sandbox, sandbox_settings
from tests.support.seeding import add_refund
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.integration

ACCOUNT = "6214830000000000"
NAME = "张三"
TO_CARD = Remedy("USER_BANK_CARD", "ICBC_DEBIT", ACCOUNT, NAME)
BACKEND_SECRET = "b" * 32


@dataclass
class World:
    keys: FakeWechat
    sandbox: RunningSandbox
    client: WechatPayClient
    refunds: AbnormalRefunds
    pool: aiomysql.Pool

    async def abnormal_refund(self, *, at_wechat: str = "ABNORMAL") -> AbnormalRefundRow:
        """A paid order at WeChat Pay (the sandbox) and here, its refund at both, the
        refund reported ``at_wechat`` and, here, recorded ABNORMAL through the consumer."""
        out_trade_no, _ = await basic_order(self.pool, amount=990, status="paid")
        body = order_request("native", out_trade_no=out_trade_no)
        await self.client.place("NATIVE", body)
        await self.sandbox.ok("POST", f"/sandbox/orders/{out_trade_no}/pay", {"notify": False})
        out_refund_no = await add_refund(self.pool, out_trade_no, yuan(990), reason="x")
        amount = {"refund": 990, "total": 990, "currency": "CNY"}
        refund = await self.client.create_refund(
            {"out_trade_no": out_trade_no, "out_refund_no": out_refund_no, "amount": amount}
        )
        if at_wechat != "PROCESSING":
            await self.sandbox.ok(
                "POST", f"/sandbox/refunds/{out_refund_no}/complete", {"status": at_wechat}
            )
        reported = refund_abnormal(
            out_trade_no, out_refund_no, 990, 990, refund_id=refund["refund_id"]
        )
        assert await RefundApplier(self.pool)(*reported) == "refund_abnormal"
        return await self.refunds.get(out_refund_no)


@pytest.fixture
async def world(db_pool: aiomysql.Pool) -> AsyncIterator[World]:
    keys = FakeWechat()
    async with (
        running_sandbox(sandbox_settings(keys)) as sandbox,
        aiohttp.ClientSession() as http,
    ):
        client = keys.merchant_client(sandbox.base_url, http)
        yield World(keys, sandbox, client, AbnormalRefunds(db_pool, client), db_pool)


@asynccontextmanager
async def order_api(
    world: World, amqp_url: str, mysql_url: str
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """The order API's routes and error mapping over HTTP, remedying through ``world``."""
    app = web.Application(middlewares=[error_middleware])
    settings = order_settings(
        world.keys, world.sandbox.base_url, amqp_url, mysql_url, backend_api_secret=BACKEND_SECRET
    )
    config = app[ORDER_CONFIG] = OrderConfig.from_settings(settings)
    app[api.ABNORMAL_REFUNDS] = world.refunds
    app[api.SESSIONS] = Sessions(world.pool, config.tokens, config.token_ttl_s)
    api.add_routes(app)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_abnormal_is_recorded_and_kept_once_the_refund_succeeds(world: World) -> None:
    counted = REGISTRY.get_sample_value("paylane_refunds_abnormal_total") or 0.0
    refund = await world.abnormal_refund()
    # What PaylaneRefundAbnormal counts, once per refund.
    assert REGISTRY.get_sample_value("paylane_refunds_abnormal_total") == counted + 1
    assert refund["status"] == "abnormal" and refund["abnormal_at"] is not None
    assert refund["remedy"] is None
    assert refund["out_refund_no"] in [r["out_refund_no"] for r in await world.refunds.list()]

    succeeded = refund_succeeded(
        refund["out_trade_no"], refund["out_refund_no"], 990, 990, refund_id=refund["refund_id"]
    )
    assert await RefundApplier(world.pool)(*succeeded) == "refunded"
    after = await world.refunds.get(refund["out_refund_no"])
    assert (after["status"], after["abnormal_at"]) == ("success", refund["abnormal_at"])


async def test_to_a_card_the_row_records_the_outcome_and_no_bank_data(world: World) -> None:
    refund = await world.abnormal_refund()
    no = refund["out_refund_no"]
    row = await world.refunds.apply(no, TO_CARD)
    assert (row["status"], row["remedy"], row["remedy_result"]) == (
        "pending",
        "USER_BANK_CARD",
        "PROCESSING",
    )
    assert row["remedy_at"] is not None and row["abnormal_at"] == refund["abnormal_at"]
    assert no not in [r["out_refund_no"] for r in await world.refunds.list()]
    at_wechat = await world.sandbox.ok("GET", f"/sandbox/refunds/{no}")
    assert (at_wechat["status"], at_wechat["abnormal_refund"]["bank_account"]) == (
        "PROCESSING",
        ACCOUNT,
    )
    assert at_wechat["abnormal_refund"]["real_name"] == NAME
    logged = await fetch_one(
        world.pool,
        "SELECT kind, detail, request_data, response_data FROM payment_logs"
        " WHERE out_refund_no = %s AND type = 'refund_remedy'",
        no,
    )
    assert (logged["kind"], logged["detail"]) == (
        "remedy_accepted",
        f"{no} USER_BANK_CARD: PROCESSING",
    )
    assert json.loads(logged["request_data"])["type"] == "USER_BANK_CARD"
    assert json.loads(logged["response_data"]) == {"result": "PROCESSING"}
    assert not any(ACCOUNT in str(v) or NAME in str(v) for v in logged.values())
    stored = await fetch_one(world.pool, "SELECT * FROM refunds WHERE out_refund_no = %s", no)
    assert not any(ACCOUNT in str(v) or NAME in str(v) for v in stored.values())

    with pytest.raises(Conflict, match="is pending, not abnormal"):
        await world.refunds.apply(no, TO_CARD)
    # WeChat Pay pays it out: REFUND.SUCCESS settles the row as any refund.
    await world.sandbox.ok("POST", f"/sandbox/refunds/{no}/complete", {"status": "SUCCESS"})
    succeeded = refund_succeeded(refund["out_trade_no"], no, 990, 990, refund_id=row["refund_id"])
    assert await RefundApplier(world.pool)(*succeeded) == "refunded"
    assert (await world.refunds.get(no))["status"] == "success"


async def test_to_the_merchants_account(world: World) -> None:
    refund = await world.abnormal_refund()
    row = await world.refunds.apply(refund["out_refund_no"], Remedy("MERCHANT_BANK_CARD"))
    assert (row["status"], row["remedy"]) == ("pending", "MERCHANT_BANK_CARD")


async def test_refused_by_wechatpay_is_recorded_and_stays_abnormal(world: World) -> None:
    # WeChat Pay still has it PROCESSING: the remedy is refused.
    refund = await world.abnormal_refund(at_wechat="PROCESSING")
    with pytest.raises(UpstreamRejected, match="INVALID_REQUEST"):
        await world.refunds.apply(refund["out_refund_no"], TO_CARD)
    row = await world.refunds.get(refund["out_refund_no"])
    assert (row["status"], row["remedy"]) == ("abnormal", "USER_BANK_CARD")
    assert (row["remedy_result"] or "").startswith("INVALID_REQUEST: ")


async def test_unknown_refund_and_bad_remedies(world: World) -> None:
    with pytest.raises(NotFound):
        await world.refunds.apply("R-NOT-HERE", TO_CARD)
    with pytest.raises(InvalidRequest, match="needs bank_type"):
        Remedy("USER_BANK_CARD", "ICBC_DEBIT", ACCOUNT)
    with pytest.raises(InvalidRequest, match="takes no bank fields"):
        Remedy("MERCHANT_BANK_CARD", bank_account=ACCOUNT)
    assert ACCOUNT not in repr(TO_CARD) and NAME not in repr(TO_CARD)


async def test_an_abnormal_from_before_the_remedy_does_not_undo_it(world: World) -> None:
    refund = await world.abnormal_refund()
    no, out_trade_no = refund["out_refund_no"], refund["out_trade_no"]
    # The reconciler saw it ABNORMAL just before the remedy; its event is consumed after.
    stale = refund_abnormal(out_trade_no, no, 990, 990, refund_id=refund["refund_id"])
    await world.refunds.apply(no, TO_CARD)
    assert await RefundApplier(world.pool)(*stale) == "refund_abnormal_stale"
    assert (await world.refunds.get(no))["status"] == "pending"

    # The card refused it too: WeChat Pay reports it ABNORMAL again, after the remedy.
    again = refund_abnormal(out_trade_no, no, 990, 990, refund_id=refund["refund_id"])
    assert await RefundApplier(world.pool)(*again) == "refund_abnormal"
    row = await world.refunds.get(no)
    assert (row["status"], row["abnormal_at"]) == ("abnormal", refund["abnormal_at"])


async def test_an_unverifiable_answer_is_the_apis_502_with_wechats_request_id(
    world: World, amqp_url: str, mysql_url: str
) -> None:
    """As every route of the order API: the remedy's outcome is unknown, not WeChat Pay
    unreachable; the row says so and stays abnormal (the same remedy may be applied again)."""
    refund = await world.abnormal_refund()
    no = refund["out_refund_no"]
    # Signed under the platform certificate, which this merchant (public key only) lacks.
    await world.sandbox.ok("PUT", "/sandbox/switches", {"sign_mode": "certificate"})
    body = {"type": "USER_BANK_CARD", "bank_type": "ICBC_DEBIT"}
    body |= {"bank_account": ACCOUNT, "real_name": NAME}
    async with order_api(world, amqp_url, mysql_url) as http:
        response = await http.post(
            f"/refunds/{no}/apply-abnormal-refund",
            json=body,
            headers={INTERNAL_SECRET_HEADER: BACKEND_SECRET},
        )
        answer = await response.json()
    assert (response.status, answer["error"]) == (502, "wechatpay_unverified"), answer
    assert "unknown_serial" in answer["message"]
    assert len(answer["wechatpay_request_id"]) == 32  # what WeChat support asks for
    row = await world.refunds.get(no)
    assert (row["status"], row["remedy"]) == ("abnormal", "USER_BANK_CARD")
    assert (row["remedy_result"] or "").startswith("UNKNOWN: ")
