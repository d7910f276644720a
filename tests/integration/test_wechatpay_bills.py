"""The daily bills between WechatPayClient and the sandbox (a real HTTP server), and the
sandbox's bills fetched by the independent SDK wechatpayv3 acting as the merchant (its
request signing, its verification of the apply answer, its unverified download), then
read by paylane's parser."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from wechatpayv3 import WeChatPay, WeChatPayType

from paylane_common.contract.china_time import CHINA
from paylane_common.wechatpay import (
    BillFormatError,
    TradeBill,
    WechatPayClient,
    parse_trade_bill,
)
from paylane_common.wechatpay.testing import order_request
from tests.support.sandbox import (
    RunningSandbox,
    merchant_client,
    running_sandbox,
    sandbox_settings,
)
from tests.support.wechat import FakeWechat


@pytest.fixture(scope="module")
def keys() -> FakeWechat:
    return FakeWechat()


@pytest.fixture
async def sandbox(keys: FakeWechat) -> AsyncIterator[RunningSandbox]:
    async with running_sandbox(sandbox_settings(keys)) as running:
        yield running


@pytest.fixture
async def client(keys: FakeWechat, sandbox: RunningSandbox) -> AsyncIterator[WechatPayClient]:
    async with aiohttp.ClientSession() as http:
        yield merchant_client(sandbox, keys, http)


def today() -> date:
    """Bills are per China day."""
    return datetime.now(CHINA).date()


async def _paid(client: WechatPayClient, sandbox: RunningSandbox, total: int, **fields: Any) -> str:
    body = order_request("jsapi", total=total, **fields)
    await client.place("JSAPI", body)
    await sandbox.ok("POST", f"/sandbox/orders/{body['out_trade_no']}/pay", {"notify": False})
    return str(body["out_trade_no"])


async def test_client_reads_the_days_trade_and_fund_flow_bills(client, sandbox):
    await sandbox.ok("PUT", "/sandbox/switches", {"refund_mode": "manual"})
    first, second = await _paid(client, sandbox, 990), await _paid(client, sandbox, 1990)
    refund = {
        "out_trade_no": second,
        "out_refund_no": f"R{second}",
        "amount": {"refund": 500, "total": 1990, "currency": "CNY"},
    }
    await client.create_refund(refund)
    await sandbox.ok("POST", f"/sandbox/refunds/R{second}/complete", {"status": "SUCCESS"})

    bill = await client.trade_bill(today())
    assert {(r.out_trade_no, r.trade_state) for r in bill.payments} == {
        (first, "SUCCESS"),
        (second, "SUCCESS"),
    }
    assert {r.out_trade_no: r.settlement_total for r in bill.payments} == {first: 990, second: 1990}
    (refunded,) = bill.refunds
    assert (refunded.out_refund_no, refunded.refund_amount) == (f"R{second}", 500)
    assert refunded.refund_status == "SUCCESS" and refunded.refund_id
    assert (bill.summary.count, bill.summary.settlement_total, bill.summary.refund_total) == (
        3,
        2980,
        500,
    )

    flow = await client.fund_flow_bill(today())
    assert [(r.direction, r.amount) for r in flow.records] == [
        ("收入", 990),
        ("收入", 1990),
        ("支出", 500),
    ]
    assert flow.records[-1].balance == 2480


async def test_commas_in_the_description_and_attach_keep_the_columns(client, sandbox):
    """paylane's attach (the generation id, a merchant's tags) and product names may hold
    commas; WeChat Pay writes them unquoted, as they are."""
    no = await _paid(client, sandbox, 990, description="月卡, 自动续费", attach="gen-7,src=mini")
    (payment,) = (await client.trade_bill(today())).payments
    assert (payment.out_trade_no, payment.description, payment.attach) == (
        no,
        "月卡, 自动续费",
        "gen-7,src=mini",
    )
    assert (payment.settlement_total, payment.order_total) == (990, 990)


async def test_a_quiet_day_is_an_empty_bill(client, sandbox):
    bill = await client.trade_bill(today() - timedelta(days=3))
    assert bill == TradeBill.empty() and bill.no_statement


async def test_a_bill_whose_digest_does_not_match_is_refused(client, sandbox):
    await _paid(client, sandbox, 990)
    offer = await client.apply_trade_bill(today())
    token = offer.download_url.split("token=")[1]
    files = sandbox.state.bill_files
    files[token] = gzip.compress(gzip.decompress(files[token]).replace(b"9.90", b"9.80"))
    with pytest.raises(BillFormatError, match="SHA1"):
        await client.download_bill(offer)


async def test_wechatpayv3_fetches_the_sandboxs_bill_and_paylane_reads_it(keys, client, sandbox):
    no = await _paid(client, sandbox, 1234)
    day = str(today())

    def merchant() -> tuple[dict[str, Any], bytes]:
        wxpay = WeChatPay(
            wechatpay_type=WeChatPayType.JSAPI,
            mchid=keys.mchid,
            private_key=keys.merchant_private_key_pem,
            cert_serial_no=keys.merchant_serial_no,
            appid=keys.appid,
            apiv3_key=keys.apiv3_key,
            public_key=keys.platform_public_key_pem,
            public_key_id=keys.public_key_id,
        )
        wxpay._core._gate_way = sandbox.base_url  # the SDK has no option for the host
        code, answer = wxpay.trade_bill(day)  # signature of the answer verified by the SDK
        assert code == 200, answer
        offer = json.loads(answer)
        code, content = wxpay.download_bill(offer["download_url"])
        assert code == 200
        return offer, content

    offer, content = await asyncio.to_thread(merchant)
    text = gzip.decompress(content)
    assert hashlib.sha1(text).hexdigest() == offer["hash_value"]
    bill = parse_trade_bill(text.decode())
    (payment,) = bill.records
    assert (payment.out_trade_no, payment.settlement_total, payment.trade_state) == (
        no,
        1234,
        "SUCCESS",
    )
