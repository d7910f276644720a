"""``POST /notify/cloudhosting`` (WeChat Cloud Hosting's container callback), against a real
RabbitMQ: camelCase (and snake_case, and a nested ``reqInfo``) in, ``payment.succeeded`` /
refund events with ``source: "cloudhosting"`` out, ``{"errcode":0}`` only once the broker
confirmed; with ``CLOUDHOSTING_TRUST_HEADERS`` the platform's headers are required."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from paylane_common.contract import events
from paylane_common.runtime.service import PUBLISHER
from paylane_common.runtime.settings import load_settings
from paylane_ingress.main import build_app
from paylane_ingress.settings import IngressSettings
from services.ingress.tests.support import NOW

ROUTE = "/notify/cloudhosting"
pytestmark = pytest.mark.integration


def callback(**changes: Any) -> dict[str, Any]:
    """A payment result as the platform delivers it (WeChat's published sample's shape)."""
    body: dict[str, Any] = {
        "returnCode": "SUCCESS",
        "appid": "wxd2565e6a04246fd1",
        "mchId": "1800780001",
        "subAppid": "wxd2565e6a04246fd1",
        "subMchId": "1712734762",
        "nonceStr": "f6444fd22de27b16",
        "resultCode": "SUCCESS",
        "openid": "oPoo341Im-roYxAd3WD3D_6J-4bA",
        "isSubscribe": "N",
        "subOpenid": "oZWaC4xeOVCUkip5njeEeXi1TEsk",
        "subIsSubscribe": "N",
        "tradeType": "JSAPI",
        "bankType": "OTHERS",
        "totalFee": 990,
        "feeType": "CNY",
        "cashFee": 990,
        "transactionId": "4200" + uuid.uuid4().hex[:24],
        "outTradeNo": "CH" + uuid.uuid4().hex[:20],
        "timeEnd": "20220321132007",
    }
    body.update(changes)
    return body


def hosted_settings(amqp_url: str, **overrides: Any) -> IngressSettings:
    """Ingress in cloudhosting mode: no APIv3 key, no WeChat Pay key."""
    return load_settings(
        IngressSettings,
        amqp_url=amqp_url,
        wechatpay_mode="cloudhosting",
        **overrides,
    )


@pytest.fixture
async def hosted(amqp_url: str) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(build_app(hosted_settings(amqp_url), clock=lambda: NOW))) as c:
        yield c


@pytest.fixture
async def trusting(amqp_url: str) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    settings = hosted_settings(amqp_url, cloudhosting_trust_headers=True)
    async with TestClient(TestServer(build_app(settings, clock=lambda: NOW))) as c:
        yield c


def test_direct_mode_still_needs_the_apiv3_key(amqp_url: str) -> None:
    from paylane_common.runtime.exceptions import ConfigError
    from paylane_common.wechatpay.testing import FakeWechatPay

    keys = FakeWechatPay()
    with pytest.raises(ConfigError, match="WECHATPAY_APIV3_KEY"):
        load_settings(
            IngressSettings,
            amqp_url=amqp_url,
            wechatpay_public_key=keys.platform_public_key_pem,
            wechatpay_public_key_id=keys.public_key_id,
        )


async def test_a_payment_is_published_as_a_claim_then_errcode_0(hosted, spy) -> None:
    body = callback()
    async with hosted.post(ROUTE, json=body) as response:
        assert response.status == 200
        assert await response.json() == {"errcode": 0, "errmsg": "ok"}
    [message] = await spy.drain()
    envelope = json.loads(message.body)
    assert envelope["type"] == events.PAYMENT_SUCCEEDED
    assert envelope["event_id"] == f"cloudhosting-{body['transactionId']}"
    data = envelope["data"]
    assert data["source"] == "cloudhosting" and data["notification"] is None
    assert (data["out_trade_no"], data["transaction_id"]) == (
        body["outTradeNo"],
        body["transactionId"],
    )
    assert data["amount_total"] == 990 and data["payer_total"] == 990
    # The merchant is the sub-merchant, the payer the sub-openid; Beijing time.
    assert data["mchid"] == "1712734762" and data["openid"] == "oZWaC4xeOVCUkip5njeEeXi1TEsk"
    assert data["success_time"] == "2022-03-21T13:20:07+08:00"


async def test_snake_case_is_read_too(hosted, spy) -> None:
    camel = callback()
    snake = {
        "return_code": "SUCCESS",
        "result_code": "SUCCESS",
        "out_trade_no": camel["outTradeNo"],
        "transaction_id": camel["transactionId"],
        "total_fee": "990",
        "sub_mch_id": "1712734762",
        "openid": "o-payer",
        "time_end": "20220321132007",
    }
    async with hosted.post(ROUTE, json=snake) as response:
        assert (await response.json())["errcode"] == 0
    [message] = await spy.drain()
    data = json.loads(message.body)["data"]
    assert data["out_trade_no"] == camel["outTradeNo"] and data["amount_total"] == 990
    assert data["openid"] == "o-payer"


PLATFORM = {"X-WX-SOURCE": "wx_paycallback", "X-WX-ENV": "prod-env-1a2b"}


@pytest.mark.parametrize("nested", ["object", "text"])
async def test_a_refund_result_flat_or_in_req_info(trusting, hosted, spy, nested: str) -> None:
    info = {
        "outTradeNo": "CH" + uuid.uuid4().hex[:20],
        "outRefundNo": "R" + uuid.uuid4().hex[:20],
        "refundId": "50" + uuid.uuid4().hex[:20],
        "refundFee": 990,
        "totalFee": 990,
        "refundStatus": "SUCCESS",
        "successTime": "2022-03-21 13:30:07",
    }
    body = {"returnCode": "SUCCESS", "reqInfo": info if nested == "object" else json.dumps(info)}
    # A claim either way, with the platform's headers or without: the order service asks
    # WeChat Pay (queryrefund) before it applies one.
    for client, headers in ((hosted, {}), (trusting, PLATFORM)):
        async with client.post(ROUTE, json=body, headers=headers) as response:
            assert (await response.json())["errcode"] == 0
        [message] = await spy.drain()
        envelope = json.loads(message.body)
        assert envelope["type"] == events.REFUND_SUCCEEDED
        data = envelope["data"]
        assert (data["out_refund_no"], data["amount_refund"], data["status"]) == (
            info["outRefundNo"],
            990,
            "SUCCESS",
        )
        assert data["success_time"] == "2022-03-21T13:30:07+08:00"
        assert data["source"] == "cloudhosting"


async def test_a_failed_result_is_acknowledged_not_published(hosted, spy) -> None:
    async with hosted.post(ROUTE, json=callback(resultCode="FAIL")) as response:
        assert (await response.json())["errcode"] == 0
    assert await spy.drain() == []


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[]", json.dumps({"outTradeNo": "CH1234567"}).encode()],
    ids=["not-json", "not-an-object", "no-transaction"],
)
async def test_a_malformed_result_is_a_non_zero_errcode(hosted, spy, raw: bytes) -> None:
    headers = {"Content-Type": "application/json"}
    async with hosted.post(ROUTE, data=raw, headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["errcode"] != 0
    assert await spy.drain() == []


async def test_an_unconfirmed_publish_is_a_non_zero_errcode(amqp_url: str, spy) -> None:
    app = build_app(hosted_settings(amqp_url), clock=lambda: NOW)
    async with TestClient(TestServer(app)) as client:
        await client.app[PUBLISHER].close()
        async with client.post(ROUTE, json=callback()) as response:
            assert response.status == 503
            assert (await response.json())["errcode"] == -1
    assert await spy.drain() == []


async def test_trusted_headers_are_required_when_trusted(trusting, hosted, spy) -> None:
    async with trusting.post(ROUTE, json=callback()) as response:
        assert response.status == 403 and (await response.json())["errcode"] != 0
    async with trusting.post(ROUTE, json=callback(), headers={"X-WX-SOURCE": "x"}) as response:
        assert response.status == 403
    assert await spy.drain() == []
    platform = {"X-WX-SOURCE": "wx_paycallback", "X-WX-ENV": "prod-env-1a2b"}
    async with trusting.post(ROUTE, json=callback(), headers=platform) as response:
        assert (await response.json())["errcode"] == 0
    # Without the setting, the headers are not asked for.
    async with hosted.post(ROUTE, json=callback()) as response:
        assert (await response.json())["errcode"] == 0
    assert len(await spy.drain()) == 2


async def test_with_an_environment_set_only_its_calls_are_taken(amqp_url: str, spy) -> None:
    settings = hosted_settings(
        amqp_url, cloudhosting_trust_headers=True, cloudhosting_env_id="prod-env-1a2b"
    )
    async with TestClient(TestServer(build_app(settings, clock=lambda: NOW))) as client:
        elsewhere = {"X-WX-SOURCE": "wx_paycallback", "X-WX-ENV": "test-env-9z"}
        async with client.post(ROUTE, json=callback(), headers=elsewhere) as response:
            assert response.status == 403
            answer = await response.json()
            assert answer["errcode"] != 0 and "X-WX-ENV 'test-env-9z'" in answer["errmsg"]
        assert await spy.drain() == []
        async with client.post(ROUTE, json=callback(), headers=PLATFORM) as response:
            assert (await response.json())["errcode"] == 0
        assert len(await spy.drain()) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"refundStatus": [None]},
        {"totalFee": 9.9},
        {"totalFee": True},
        {"reqInfo": 3},
        {"outTradeNo": None},
    ],
    ids=["list", "float", "bool", "req-info-number", "null"],
)
async def test_a_field_of_another_type_is_malformed(hosted, spy, changes) -> None:
    async with hosted.post(ROUTE, json=callback(**changes)) as response:
        assert response.status == 400 and (await response.json())["errcode"] != 0
    assert await spy.drain() == []
