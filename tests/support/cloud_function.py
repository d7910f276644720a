"""The existing cloud function (docs/adoption.md, docs/cloud-function.md), played by the
end-to-end tests: the ids it makes and the order it places at WeChat Pay before writing
its row."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import aiohttp

from paylane_common.wechatpay.testing import order_request
from tests.support import hygiene
from tests.support.stack import Stack
from tests.support.wechat import FakeWechat


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def new_out_trade_no() -> str:
    """The cloud function's format: ``{ms timestamp}{5 digits}``."""
    return f"{now_ms()}{uuid.uuid4().int % 100_000:05d}"


def cloud_ids() -> dict[str, str]:
    """What the cloud function makes: ``{ms}{5 digits}``, ``user-{ms}-{random}``."""
    tail = uuid.uuid4().hex
    openid = f"o-cf-{tail[:16]}"
    hygiene.register(openid)  # payer data: must never be logged
    return {
        "outTradeNo": new_out_trade_no(),
        "userId": f"user-{now_ms()}-{tail[16:22]}",
        "openid": openid,
    }


async def place_at_wechatpay(
    stack: Stack, wechat: FakeWechat, ids: dict[str, str], amount: int, package: str
) -> None:
    """As the cloud function does before writing its row: a JSAPI order, signed with the
    merchant key, notifications to paylane's ingress."""
    path = "/v3/pay/transactions/jsapi"
    order = order_request(
        "jsapi",
        ids["outTradeNo"],
        amount,
        appid=wechat.appid,
        mchid=wechat.mchid,
        openid=ids["openid"],
        notify_url=f"{stack.services['ingress'].url}/notify/wechatpay",
        description=f"paylane {package}",
    )
    body = json.dumps(order).encode()
    signer = wechat.merchant_signer()
    headers = {
        "Authorization": signer.authorization("POST", path, body),
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{stack.services['sandbox'].url}{path}", data=body, headers=headers
        ) as response:
            answer = await response.json(content_type=None)
            assert response.status == 200, answer
            assert answer["prepay_id"]
