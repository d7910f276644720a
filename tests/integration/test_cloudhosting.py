"""paylane's Cloud Hosting client (``WECHATPAY_MODE=cloudhosting``) against the sandbox's
open interface (``/_/pay/*``): the v3 shapes the order service reads, the platform's
errors and business failures as paylane's error codes, the JSAPI ``payment`` passed
through, and the container callback delivered until the container answers errcode 0."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from paylane_common.wechatpay import WechatPayApiError, WechatPayError
from paylane_common.wechatpay.cloudhosting import CloudHostingClient, CloudHostingTarget
from tests.support.polling import eventually
from tests.support.sandbox import RunningSandbox, running_sandbox, sandbox_settings
from tests.support.wechat import FakeWechat

TARGET = CloudHostingTarget("prod-env-1a2b", "paylane-ingress", "/notify/cloudhosting")
PAYER = "o-cloud-payer-openid"


@pytest.fixture(scope="module")
def keys() -> FakeWechat:
    return FakeWechat()


class Container:
    """A container the platform delivers results to: answers each with the next of
    ``answers`` (the last one repeats), keeps what it got."""

    def __init__(self, answers: list[dict[str, Any]]):
        self.answers = answers
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.json()))
        answer = self.answers[min(len(self.received), len(self.answers)) - 1]
        return web.json_response(answer)


@pytest.fixture
async def container() -> AsyncIterator[tuple[Container, str]]:
    box = Container([{"errcode": 0, "errmsg": "ok"}])
    app = web.Application()
    app.router.add_post("/notify/cloudhosting", box.handle)
    async with TestServer(app) as server:
        yield box, str(server.make_url("")).rstrip("/")


@pytest.fixture
async def sandbox(
    keys: FakeWechat, container: tuple[Container, str]
) -> AsyncIterator[RunningSandbox]:
    settings = sandbox_settings(keys, sandbox_cloudhosting_url=container[1])
    async with running_sandbox(settings) as running:
        yield running


@pytest.fixture
async def client(keys: FakeWechat, sandbox: RunningSandbox) -> AsyncIterator[CloudHostingClient]:
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield CloudHostingClient(
            base_url=sandbox.base_url,
            mchid=keys.mchid,
            target=TARGET,
            session=session,
            backoff_initial_s=0.01,
            backoff_max_s=0.02,
        )


def order(no: str, trade_type: str = "JSAPI", total: int = 990) -> dict[str, Any]:
    """The v3 body the order service builds (orders.py), whatever the mode."""
    body: dict[str, Any] = {
        "appid": "wx-ignored-by-the-platform",
        "mchid": "ignored",
        "description": "basic",
        "out_trade_no": no,
        "time_expire": "2099-01-01T12:00:00+08:00",
        "notify_url": "",
        "amount": {"total": total, "currency": "CNY"},
        "attach": "gen-1",
    }
    if trade_type == "JSAPI":
        body["payer"] = {"openid": PAYER}
    return body


def new_no() -> str:
    return "CH" + uuid.uuid4().hex[:20]


async def test_jsapi_order_is_placed_with_the_platforms_payment_and_queried_as_v3(
    client: CloudHostingClient, sandbox: RunningSandbox, keys: FakeWechat
) -> None:
    no = new_no()
    placed = await client.place("JSAPI", order(no))
    assert placed["prepay_id"].startswith("wx")
    payment = placed["payment"]
    assert payment["package"] == f"prepay_id={placed['prepay_id']}"
    assert payment["signType"] == "MD5"
    assert set(payment) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}
    # Placed under the sub-merchant, with the callback target and the v2 fields.
    kept = sandbox.state.ledger.order(no)
    assert kept.cloud == {"env_id": TARGET.env_id, "service": TARGET.service, "path": TARGET.path}
    assert kept.request["amount"]["total"] == 990 and kept.payer_openid == PAYER

    unpaid = await client.query_by_out_trade_no(no)
    assert unpaid["trade_state"] == "NOTPAY" and unpaid["mchid"] == keys.mchid

    await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {})
    paid = await client.query_by_out_trade_no(no)
    assert paid["trade_state"] == "SUCCESS"
    assert paid["amount"] == {"total": 990, "payer_total": 990, "currency": "CNY"}
    assert paid["payer"] == {"openid": PAYER}
    assert paid["mchid"] == keys.mchid
    assert paid["success_time"].endswith("+08:00")
    assert paid["attach"] == "gen-1"
    again = await client.query_by_transaction_id(paid["transaction_id"])
    assert again["out_trade_no"] == no


async def test_native_order_answers_a_code_url(client: CloudHostingClient) -> None:
    placed = await client.place("NATIVE", order(new_no(), "NATIVE"))
    assert placed["code_url"].startswith("weixin://") and "payment" not in placed


async def test_h5_and_app_are_not_placed_through_the_platform(client: CloudHostingClient) -> None:
    with pytest.raises(WechatPayApiError) as refused:
        await client.place("H5", order(new_no(), "H5"))
    assert refused.value.code == "NOT_AVAILABLE_IN_CLOUDHOSTING" and not refused.value.retryable


async def test_business_failures_become_paylanes_codes_with_err_code_des(
    client: CloudHostingClient, sandbox: RunningSandbox
) -> None:
    body = order(new_no())
    del body["payer"]  # JSAPI without openid: errcode 0, result_code FAIL
    with pytest.raises(WechatPayApiError) as failed:
        await client.place("JSAPI", body)
    assert failed.value.code == "PARAM_ERROR"
    assert "openid" in failed.value.message and not failed.value.retryable

    with pytest.raises(WechatPayApiError) as unknown:
        await client.query_by_out_trade_no(new_no())
    assert unknown.value.code == "ORDER_NOT_EXIST"

    no = new_no()
    await client.place("JSAPI", order(no))
    await client.close(no)
    assert (await client.query_by_out_trade_no(no))["trade_state"] == "CLOSED"
    with pytest.raises(WechatPayApiError) as closed:
        await client.place("JSAPI", order(no))
    assert closed.value.code == "ORDER_CLOSED"

    paid = new_no()
    await client.place("JSAPI", order(paid))
    await sandbox.ok("POST", f"/sandbox/orders/{paid}/pay", {})
    with pytest.raises(WechatPayApiError) as not_closed:
        await client.close(paid)
    assert not_closed.value.code == "ORDER_PAID"


async def test_an_unbound_merchant_is_return_code_fail(
    keys: FakeWechat, sandbox: RunningSandbox
) -> None:
    async with aiohttp.ClientSession() as session:
        stranger = CloudHostingClient(
            base_url=sandbox.base_url, mchid="1999999999", target=TARGET, session=session
        )
        with pytest.raises(WechatPayApiError) as refused:
            await stranger.query_by_out_trade_no(new_no())
    assert refused.value.code == "RETURN_FAIL" and refused.value.message == "受理关系不存在"


async def test_the_platform_wants_json_else_errcode_45105(
    keys: FakeWechat, sandbox: RunningSandbox
) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{sandbox.base_url}/_/pay/QueryOrder"
        async with session.post(
            url, data=b"out_trade_no=x", headers={"Content-Type": "text/plain"}
        ) as response:
            answer = await response.json()
    assert answer == {"errcode": 45105, "errmsg": "invalid content type"}


async def test_refund_and_its_query(
    client: CloudHostingClient, sandbox: RunningSandbox, container: tuple[Container, str]
) -> None:
    no, out_refund_no = new_no(), new_no()
    await client.place("JSAPI", order(no))
    await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {})
    refund = await client.create_refund(
        {
            "out_trade_no": no,
            "out_refund_no": out_refund_no,
            "reason": "asked",
            "notify_url": "",
            "amount": {"refund": 990, "total": 990, "currency": "CNY"},
        }
    )
    assert refund["status"] == "PROCESSING" and refund["refund_id"]
    assert (await client.query_refund(out_refund_no))["status"] == "PROCESSING"
    await sandbox.ok("POST", f"/sandbox/refunds/{out_refund_no}/complete", {"status": "SUCCESS"})
    done = await client.query_refund(out_refund_no)
    assert done["status"] == "SUCCESS" and done["amount"]["refund"] == 990
    assert done["out_trade_no"] == no and done["success_time"].endswith("+08:00")
    with pytest.raises(WechatPayApiError) as unknown:
        await client.query_refund(new_no())
    assert unknown.value.code == "RESOURCE_NOT_EXISTS"

    box, _ = container

    def refund_delivered() -> bool:
        return any(body.get("outRefundNo") == out_refund_no for _, body in box.received)

    await eventually(refund_delivered, 10, what="the refund's result delivered")
    body = next(b for _, b in box.received if b.get("outRefundNo") == out_refund_no)
    assert body["refundStatus"] == "SUCCESS" and body["refundFee"] == 990


async def test_a_paid_order_is_delivered_to_the_container_until_it_answers_errcode_0(
    client: CloudHostingClient, sandbox: RunningSandbox, container: tuple[Container, str]
) -> None:
    box, _ = container
    # Refused twice (a non-zero errcode, then not JSON), then taken.
    box.answers = [{"errcode": -1, "errmsg": "busy"}, {"nope": 1}, {"errcode": 0, "errmsg": "ok"}]
    no = new_no()
    await client.place("JSAPI", order(no))
    await sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {})

    def delivered() -> bool:
        notes = sandbox.state.notification_sender.records
        return any(n.out_trade_no == no and n.delivered for n in notes)

    await eventually(delivered, 30, what="the container callback delivered")
    assert len(box.received) == 3
    headers, body = box.received[-1]
    assert headers["X-WX-ENV"] == TARGET.env_id and headers["X-WX-SOURCE"]
    assert body["outTradeNo"] == no and body["subMchId"] == sandbox.state.mchid
    assert body["resultCode"] == "SUCCESS" and body["totalFee"] == 990
    assert body["subOpenid"] == PAYER and len(body["timeEnd"]) == 14
    assert all(b == body for _, b in box.received)  # the same result every time


@pytest.mark.parametrize(
    "respdata",
    [
        # No trade_state: it used to default to SUCCESS, a payment WeChat Pay never stated.
        {"out_trade_no": "CH-asked", "transaction_id": "4200000000000001", "total_fee": 990},
        # The state of another order than the one asked about.
        {
            "out_trade_no": "CH-another",
            "transaction_id": "4200000000000002",
            "trade_state": "SUCCESS",
            "total_fee": 990,
        },
    ],
)
async def test_a_query_answer_that_does_not_state_the_orders_payment_is_no_payment(
    keys: FakeWechat, respdata: dict[str, Any]
) -> None:
    """In this mode the query is WeChat Pay's only word for a payment (the gate's
    evidence): a platform answer missing ``trade_state``, or about another order, is an
    error, never a transaction in state SUCCESS."""

    async def queryorder(_request: web.Request) -> web.Response:
        answer = {"return_code": "SUCCESS", "result_code": "SUCCESS", **respdata}
        return web.json_response({"errcode": 0, "errmsg": "ok", "respdata": answer})

    app = web.Application()
    app.router.add_post("/_/pay/queryorder", queryorder)
    async with TestServer(app) as platform, aiohttp.ClientSession() as session:
        client = CloudHostingClient(
            base_url=str(platform.make_url("")).rstrip("/"),
            mchid=keys.mchid,
            target=TARGET,
            session=session,
            backoff_initial_s=0.01,
            backoff_max_s=0.02,
        )
        with pytest.raises(WechatPayError, match="not taken"):
            await client.query_by_out_trade_no("CH-asked")
