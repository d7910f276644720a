"""Cloud development (云开发): the two payment callbacks a cloud function receives, forwarded
to ingress's internal notify by clients/cloud-function/paylane-notify.js (run here under
Node, as the cloud function runs it), against the whole stack:

- the v2 ``cloud.cloudPay`` callback (camelCase), answered ``{errcode: 0}`` once paylane
  has it;
- the V3 cloud template's event (the v3 envelope, ``resource`` decrypted), returned once
  paylane has it, thrown otherwise.

Either way the order service confirms the payment with WeChat Pay before granting."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from tests.support.polling import eventually
from tests.support.queries import fetch_one, grants, order_status
from tests.support.stack import Stack
from tests.support.stack_api import Order, new_order, sandbox
from tests.support.stack_config import INTERNAL_SECRET
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.e2e

FORWARDER = Path(__file__).parents[2] / "clients" / "cloud-function" / "paylane-notify.js"
RUN = """
const f = require(process.argv[1])
const event = JSON.parse(process.argv[2])
f[process.argv[3]](event)
  .then((r) => console.log(JSON.stringify({ returned: r })))
  .catch((e) => console.log(JSON.stringify({ thrown: e.message })))
"""


async def cloud_function(
    stack: Stack, handler: str, event: dict[str, Any], secret: str = INTERNAL_SECRET
) -> dict[str, Any]:
    """The cloud function ``handler`` of the forwarder, called with ``event``."""
    env = {
        **os.environ,
        "PAYLANE_INGRESS_URL": stack.services["ingress"].url,
        "INTERNAL_API_SECRET": secret,
    }
    process = await asyncio.create_subprocess_exec(
        "node", "-e", RUN, str(FORWARDER), json.dumps(event), handler,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def paid_at_wechatpay(stack: Stack, order: Order) -> str:
    """The payer pays; WeChat Pay tells the cloud function, not paylane."""
    status, paid = await sandbox(
        stack, "POST", f"/sandbox/orders/{order.out_trade_no}/pay", {"notify": False}
    )
    assert status == 200, paid
    return str(paid["transaction_id"])


async def settled_from_the_forward(pool: aiomysql.Pool, out_trade_no: str) -> None:
    """Paid, granted once, and the internal notify's claim was applied (confirmed by the
    gate's query: ``source`` internal on the payment's log row)."""

    async def done() -> bool:
        row = await fetch_one(
            pool,
            "SELECT COUNT(*) AS n FROM payment_logs WHERE out_trade_no = %s"
            " AND source = 'internal'",
            out_trade_no,
        )
        paid = await order_status(pool, out_trade_no) == "paid"
        return paid and int(row["n"]) >= 1 and (await grants(pool, out_trade_no))["n"] == 1

    await eventually(done, 20, what=f"{out_trade_no} paid from the forwarded callback")


def cloud_pay_event(order: Order, transaction_id: str, **changes: Any) -> dict[str, Any]:
    """What ``cloud.cloudPay``'s callback function receives (camelCase v2 fields)."""
    event = {
        "returnCode": "SUCCESS",
        "resultCode": "SUCCESS",
        "appid": "wxd2565e6a04246fd1",
        "mchId": "1800780001",
        "subMchId": "1712734762",
        "outTradeNo": order.out_trade_no,
        "transactionId": transaction_id,
        "totalFee": order.amount_total,
        "cashFee": order.amount_total,
        "tradeType": "JSAPI",
        "subOpenid": "o-cloud-payer",
        "timeEnd": "20260101120000",
        "nonceStr": "f6444fd22de27b16",
    }
    event.update(changes)
    return event


async def test_the_cloud_pay_callback_forwarded_settles_the_order(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    order = await new_order(stack, "basic")
    transaction_id = await paid_at_wechatpay(stack, order)
    result = await cloud_function(stack, "cloudPayCallback", cloud_pay_event(order, transaction_id))
    assert result == {"returned": {"errcode": 0, "errmsg": "ok"}}
    await settled_from_the_forward(db_pool, order.out_trade_no)


async def test_the_v3_templates_event_forwarded_settles_the_order(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    order = await new_order(stack, "basic")
    transaction_id = await paid_at_wechatpay(stack, order)
    event = {
        "id": "EV-018352C4-3A63-57D7-A2BB-5D5B9CB85A2F",
        "create_time": "2026-01-01T12:00:00+08:00",
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": wechat.transaction(order.out_trade_no, order.amount_total)
        | {"transaction_id": transaction_id},
    }
    result = await cloud_function(stack, "v3TemplateCallback", event)
    assert result == {"returned": event}
    await settled_from_the_forward(db_pool, order.out_trade_no)


async def test_what_paylane_did_not_take_is_a_failure_the_platform_retries(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    order = await new_order(stack, "basic")
    event = cloud_pay_event(order, "4200000000000000000000000001")
    refused = await cloud_function(stack, "cloudPayCallback", event, secret="wrong" * 8)
    assert refused["returned"]["errcode"] != 0
    template = {
        "event_type": "TRANSACTION.SUCCESS",
        "resource": wechat.transaction(order.out_trade_no, order.amount_total),
    }
    thrown = await cloud_function(stack, "v3TemplateCallback", template, secret="wrong" * 8)
    assert "retry" in thrown["thrown"]
    # A result that is no payment is acknowledged and not forwarded.
    failed = cloud_pay_event(order, "4200000000000000000000000002", resultCode="FAIL")
    assert (await cloud_function(stack, "cloudPayCallback", failed))["returned"]["errcode"] == 0
    # Unpaid (pending, or failed once its short test lifetime is over), nothing granted.
    assert await order_status(db_pool, order.out_trade_no) != "paid"
    assert (await grants(db_pool, order.out_trade_no))["n"] == 0
