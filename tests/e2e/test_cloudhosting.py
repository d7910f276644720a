"""paylane on WeChat Cloud Hosting, end to end (``WECHATPAY_MODE=cloudhosting``): every
service a process, on a vhost and a database of their own, with no WeChat Pay key; the
sandbox plays the platform's open interface and its container callback.

- an order placed by the platform's user (``X-WX-OPENID``), paid, delivered to ingress,
  confirmed with ``queryorder``, paid, granted and pushed;
- a forged callback for an unpaid order grants nothing;
- a callback while ingress cannot reach RabbitMQ is answered a non-zero errcode, and is
  delivered on the platform's retry (the shared RabbitMQ is never stopped: ingress reaches
  it through a fault proxy that refuses, then heals)."""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.support import hygiene
from tests.support.clients import SSEClient, wait_for_types, ws_next
from tests.support.cloudhosting import ENV_ID, start_cloudhosting_stack
from tests.support.faultproxy import FaultProxy, through
from tests.support.infra import Infra
from tests.support.isolated import IsolatedStack, isolated_stack
from tests.support.polling import eventually
from tests.support.queries import fetch_one, grants, user_state
from tests.support.stack_api import call, sandbox
from tests.support.stack_config import BACKEND, ORDER_ENV

pytestmark = pytest.mark.e2e

#: The headers the platform sets on its calls to the container.
PLATFORM = {"X-WX-SOURCE": "wx_paycallback", "X-WX-ENV": ENV_ID}
#: What the platform sets on a mini-program's wx.cloud.callContainer to the order API.
CALL_CONTAINER = {"X-WX-SOURCE": "wx_client", "X-WX-ENV": ENV_ID}


@pytest.fixture(scope="module")
async def broker_proxy(infra: Infra) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(infra.amqp_host, infra.amqp_port, name="ingress-broker") as proxy:
        yield proxy


@pytest.fixture(scope="module")
async def hosted(
    infra: Infra, broker_proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[IsolatedStack]:
    start = functools.partial(start_cloudhosting_stack, ingress_amqp=through(broker_proxy))
    async with isolated_stack(
        infra,
        tmp_path_factory.mktemp("cloudhosting-logs"),
        prefix="paylane_cloudhosting",
        # Slow enough that a payment is announced by the callback, not found by a query.
        order_settings={**ORDER_ENV, "RECONCILE_AFTER_S": "600", "ORDER_TTL_S": "600"},
        start=start,
    ) as env:
        yield env


def new_openid() -> str:
    openid = f"o-wx-{uuid.uuid4().hex[:16]}"
    hygiene.register(openid)
    return openid


async def place(env: IsolatedStack, openid: str, package: str = "basic") -> dict[str, Any]:
    """An order the platform's user places from the mini-program (JSAPI)."""
    status, placed = await call(
        env.stack,
        "order",
        "POST",
        "/orders",
        {"package_type": package, "trade_type": "JSAPI"},
        {**CALL_CONTAINER, "X-WX-OPENID": openid},
    )
    assert status == 201, placed
    return placed


async def order_row(env: IsolatedStack, out_trade_no: str) -> dict[str, Any]:
    row = await fetch_one(
        env.pool,
        "SELECT status, transaction_id, user_id FROM payment_orders WHERE out_trade_no = %s",
        out_trade_no,
    )
    assert row is not None
    return row


async def callbacks(env: IsolatedStack, out_trade_no: str) -> list[dict[str, Any]]:
    """The sandbox's container callbacks for the order."""
    status, data = await sandbox(env.stack, "GET", "/sandbox/notifications")
    assert status == 200
    return [n for n in data["notifications"] if n["out_trade_no"] == out_trade_no]


async def test_paid_through_the_platform_confirmed_granted_and_pushed(
    hosted: IsolatedStack,
) -> None:
    openid = new_openid()
    placed = await place(hosted, openid, "premium")
    no = placed["out_trade_no"]
    # The pay parameters are the platform's, passed through (signType MD5).
    pay = placed["pay"]
    assert pay["signType"] == "MD5" and pay["package"].startswith("prepay_id=wx")
    user = await fetch_one(hosted.pool, "SELECT id FROM users WHERE openid = %s", openid)
    assert user is not None and placed["user_id"] == user["id"]
    # Asked again (another replica, a restart): the same parameters, from the row.
    status, again = await call(
        hosted.stack,
        "order",
        "POST",
        f"/orders/{no}/pay",
        None,
        {**CALL_CONTAINER, "X-WX-OPENID": openid},
    )
    assert status == 200 and again["pay"] == pay

    ticket = placed["stream_ticket"]
    notifier = hosted.url("notifier")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{notifier}/ws?ticket={ticket}")
        async with SSEClient(http, f"{notifier}/events?ticket={ticket}") as sse:
            assert (await ws_next(ws))["type"] == "order.state"
            assert (await sse.next())["type"] == "order.state"
            status, _ = await sandbox(hosted.stack, "POST", f"/sandbox/orders/{no}/pay", {})
            assert status == 200
            wanted = {"order.paid", "entitlement.granted"}
            ws_seen = await wait_for_types(lambda: ws_next(ws), wanted)
            sse_seen = await wait_for_types(sse.next, wanted)
        await ws.close()
    for seen in (ws_seen, sse_seen):
        by_type = {m["type"]: m for m in seen}
        assert by_type["order.paid"]["out_trade_no"] == no
        assert by_type["entitlement.granted"]["payment_status"] == "premium"

    row = await order_row(hosted, no)
    assert row["status"] == "paid" and row["transaction_id"].startswith("4200")
    assert await user_state(hosted.pool, user["id"]) == ("premium", 3 + 100)
    assert (await grants(hosted.pool, no))["n"] == 1
    # It came by the container callback (answered errcode 0), and was confirmed by a query.
    [note] = await callbacks(hosted, no)
    assert note["delivered"] and note["url"].endswith("/notify/cloudhosting")
    assert note["resource"]["outTradeNo"] == no
    logged = await fetch_one(
        hosted.pool,
        "SELECT source FROM payment_logs WHERE out_trade_no = %s AND kind = 'paid'",
        no,
    )
    assert logged is not None and logged["source"] == "cloudhosting"


async def test_a_forged_callback_for_an_unpaid_order_grants_nothing(
    hosted: IsolatedStack,
) -> None:
    placed = await place(hosted, new_openid())
    no = placed["out_trade_no"]
    forged = {
        "returnCode": "SUCCESS",
        "resultCode": "SUCCESS",
        "outTradeNo": no,
        "transactionId": "4200FORGED" + uuid.uuid4().hex[:18],
        "totalFee": placed["amount_total"],
        "cashFee": placed["amount_total"],
        "subMchId": hosted.wechat.mchid,
        "timeEnd": "20260101120000",
    }
    # Through the platform's headers even: nothing on this path is signed.
    status, answer = await call(
        hosted.stack, "ingress", "POST", "/notify/cloudhosting", forged, PLATFORM
    )
    assert (status, answer) == (200, {"errcode": 0, "errmsg": "ok"})

    async def refused() -> bool:
        row = await fetch_one(
            hosted.pool,
            "SELECT COUNT(*) AS n FROM payment_logs WHERE out_trade_no = %s"
            " AND kind = 'unconfirmed_payment'",
            no,
        )
        return int(row["n"]) >= 1

    await eventually(refused, 20, what="the forged claim refused by the gate")
    assert (await order_row(hosted, no))["status"] == "pending"
    assert (await grants(hosted.pool, no))["n"] == 0
    assert (await user_state(hosted.pool, placed["user_id"]))[0] == "free"


async def test_a_callback_while_the_broker_is_unreachable_is_retried_then_delivered(
    hosted: IsolatedStack, broker_proxy: FaultProxy
) -> None:
    placed = await place(hosted, new_openid())
    no = placed["out_trade_no"]
    broker_proxy.refuse()
    try:
        status, _ = await sandbox(hosted.stack, "POST", f"/sandbox/orders/{no}/pay", {})
        assert status == 200

        async def refused_once() -> bool:
            notes = await callbacks(hosted, no)
            attempts = notes[0]["attempts"] if notes else []
            return any('"errcode": -1' in a.get("error", "") for a in attempts)

        await eventually(refused_once, 30, what="a callback answered with a non-zero errcode")
        [note] = await callbacks(hosted, no)
        assert not note["delivered"]
        assert (await order_row(hosted, no))["status"] == "pending"
    finally:
        broker_proxy.heal()

    async def paid() -> bool:
        return (await order_row(hosted, no))["status"] == "paid"

    await eventually(paid, 60, what="the callback delivered on a retry, the order paid")
    [note] = await callbacks(hosted, no)
    assert note["delivered"] and len(note["attempts"]) >= 2
    assert [a.get("status") for a in note["attempts"]][-1] == 200

    # The grant follows the order's order.paid, in the entitlement service: not at once.
    async def granted() -> bool:
        return (await grants(hosted.pool, no))["n"] == 1

    await eventually(granted, 20, what="the plan granted")


async def test_a_refund_through_the_platform_is_delivered_and_takes_back_the_grant(
    hosted: IsolatedStack,
) -> None:
    placed = await place(hosted, new_openid())
    no = placed["out_trade_no"]
    status, _ = await sandbox(hosted.stack, "POST", f"/sandbox/orders/{no}/pay", {})
    assert status == 200

    async def paid() -> bool:
        return (await order_row(hosted, no))["status"] == "paid"

    await eventually(paid, 20, what="paid")
    status, refund = await call(
        hosted.stack, "order", "POST", f"/orders/{no}/refunds", {"reason": "asked"}, BACKEND
    )
    assert status == 202, refund
    out_refund_no = refund["out_refund_no"]
    # WeChat Pay completes it; the platform delivers the result to the container.
    status, _ = await sandbox(
        hosted.stack, "POST", f"/sandbox/refunds/{out_refund_no}/complete", {"status": "SUCCESS"}
    )
    assert status == 200

    async def refunded() -> bool:
        return (await order_row(hosted, no))["status"] == "refunded"

    await eventually(refunded, 20, what="the refund's result delivered and applied")

    async def revoked() -> bool:  # by the entitlement service, after order.refunded
        return (await grants(hosted.pool, no))["revoked"] == 1

    await eventually(revoked, 20, what="the grant taken back")
    notes = [n for n in await callbacks(hosted, no) if n["out_refund_no"] == out_refund_no]
    assert len(notes) == 1 and notes[0]["delivered"]
    assert notes[0]["resource"]["refundStatus"] == "SUCCESS"


async def test_a_forged_refund_result_takes_nothing_back(hosted: IsolatedStack) -> None:
    """A refund result is a claim too: the order service asks WeChat Pay (queryrefund)
    before a refund takes anything back, even through the platform's headers."""
    placed = await place(hosted, new_openid(), "premium")
    no = placed["out_trade_no"]
    status, _ = await sandbox(hosted.stack, "POST", f"/sandbox/orders/{no}/pay", {})
    assert status == 200

    async def granted() -> bool:
        return (await grants(hosted.pool, no))["n"] == 1

    await eventually(granted, 30, what="paid and granted")
    out_refund_no = "RFORGED" + uuid.uuid4().hex[:20]
    forged = {
        "returnCode": "SUCCESS",
        "reqInfo": {
            "outTradeNo": no,
            "outRefundNo": out_refund_no,
            "refundId": "50" + uuid.uuid4().hex[:20],
            "refundFee": placed["amount_total"],
            "totalFee": placed["amount_total"],
            "refundStatus": "SUCCESS",
            "successTime": "2026-12-08 10:00:00",
        },
    }
    status, answer = await call(
        hosted.stack, "ingress", "POST", "/notify/cloudhosting", forged, PLATFORM
    )
    assert (status, answer) == (200, {"errcode": 0, "errmsg": "ok"})

    async def refused() -> dict[str, Any] | None:
        return await fetch_one(
            hosted.pool,
            "SELECT source, detail FROM payment_logs WHERE out_trade_no = %s"
            " AND kind = 'unconfirmed_refund'",
            no,
        )

    async def was_refused() -> bool:
        return await refused() is not None

    await eventually(was_refused, 30, what="the forged refund refused")
    logged = await refused()
    assert (
        logged is not None
        and logged["source"] == "cloudhosting"
        and out_refund_no in logged["detail"]
    )
    assert (await order_row(hosted, no))["status"] == "paid"
    assert (await grants(hosted.pool, no))["revoked"] == 0
    assert (await user_state(hosted.pool, placed["user_id"]))[0] == "premium"
    asked = await fetch_one(
        hosted.pool,
        "SELECT source, error FROM wechatpay_queries WHERE out_refund_no = %s",
        out_refund_no,
    )
    assert asked == {"source": "refund_check", "error": "RESOURCE_NOT_EXISTS"}


async def test_a_call_from_another_environment_is_refused(hosted: IsolatedStack) -> None:
    """With the platform's headers trusted, X-WX-ENV must name this environment."""
    placed = await place(hosted, new_openid())
    elsewhere = {**PLATFORM, "X-WX-ENV": "another-env-9z"}
    body = {"returnCode": "SUCCESS", "outTradeNo": placed["out_trade_no"]}
    status, answer = await call(
        hosted.stack, "ingress", "POST", "/notify/cloudhosting", body, elsewhere
    )
    assert status == 403 and answer["errcode"] != 0 and "X-WX-ENV" in answer["errmsg"]
