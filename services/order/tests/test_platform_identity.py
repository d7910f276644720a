"""WeChat Cloud Hosting's identity: with ``CLOUDHOSTING_TRUST_HEADERS=true`` the order API
takes the platform's ``X-WX-OPENID`` (and ``X-WX-UNIONID``) as the signed-in user, created
as the cloud function creates one; without it the header proves nothing (401)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiomysql
import pytest

from paylane_common.wechatpay import WechatPayClient
from services.order.tests.support import OrderApi, serving_order_api
from tests.support import hygiene
from tests.support.queries import fetch_one
from tests.support.sandbox import RunningSandbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def trusting_api(
    db_pool: aiomysql.Pool,
    mysql_url: str,
    kit_wechat: tuple[RunningSandbox, WechatPayClient],
) -> AsyncIterator[OrderApi]:
    sandbox, client = kit_wechat
    async with serving_order_api(
        db_pool, mysql_url, sandbox, client, cloudhosting_trust_headers=True
    ) as served:
        yield served


#: What the platform sets on every call it forwards.
FORWARDED = {"X-WX-SOURCE": "callContainer", "X-WX-ENV": "prod-env-1a2b"}


def new_openid() -> str:
    openid = f"o-wx-{uuid.uuid4().hex[:16]}"
    hygiene.register(openid)
    return openid


async def test_the_platforms_openid_is_the_signed_in_user(trusting_api: OrderApi) -> None:
    openid, unionid = new_openid(), f"u-{uuid.uuid4().hex[:12]}"
    platform = {**FORWARDED, "X-WX-OPENID": openid, "X-WX-UNIONID": unionid}
    status, placed = await trusting_api.call(
        "POST", "/orders", {"package_type": "basic", "trade_type": "NATIVE"}, platform
    )
    assert status == 201, placed
    user = await fetch_one(
        trusting_api.pool, "SELECT id, openid, unionid FROM users WHERE openid = %s", openid
    )
    assert user is not None and user["id"].startswith("user-")  # as the cloud function
    assert user["unionid"] == unionid
    assert placed["user_id"] == user["id"]
    no = placed["out_trade_no"]
    status, page = await trusting_api.call("GET", "/orders", headers=platform)
    assert status == 200 and [o["out_trade_no"] for o in page["orders"]] == [no]
    # The same user on the next call, not a second one.
    status, again = await trusting_api.call(
        "POST", "/orders", {"package_type": "basic", "trade_type": "NATIVE"}, platform
    )
    assert status in (200, 201) and again["user_id"] == user["id"]
    # Another openid is another user: the orders are not theirs.
    other = {**FORWARDED, "X-WX-OPENID": new_openid()}
    status, page = await trusting_api.call("GET", "/orders", headers=other)
    assert status == 200 and page["orders"] == []
    # A user may not name another user.
    status, _ = await trusting_api.call(
        "POST",
        "/orders",
        {"package_type": "basic", "trade_type": "NATIVE", "user_id": user["id"]},
        other,
    )
    assert status == 403


async def test_without_the_setting_the_header_proves_nothing(order_api: OrderApi) -> None:
    openid = new_openid()
    status, _ = await order_api.call(
        "POST",
        "/orders",
        {"package_type": "basic", "trade_type": "NATIVE"},
        {**FORWARDED, "X-WX-OPENID": openid},
    )
    assert status == 401
    assert await fetch_one(order_api.pool, "SELECT id FROM users WHERE openid = %s", openid) is None


async def test_a_token_or_the_backend_secret_still_wins(trusting_api: OrderApi) -> None:
    user_id, session = await trusting_api.user()
    headers = {**session, **FORWARDED, "X-WX-OPENID": new_openid()}
    status, placed = await trusting_api.call(
        "POST", "/orders", {"package_type": "basic", "trade_type": "NATIVE"}, headers
    )
    assert status == 201 and placed["user_id"] == user_id


async def test_an_openid_header_without_the_platforms_own_headers_proves_nothing(
    trusting_api: OrderApi,
) -> None:
    """``X-WX-OPENID`` alone (a client setting it itself, on a route that does not go
    through ``callContainer``) is no sign-in: the platform sets ``X-WX-SOURCE`` and
    ``X-WX-ENV`` on every call it forwards."""
    openid = new_openid()
    for headers in ({"X-WX-OPENID": openid}, {"X-WX-OPENID": openid, "X-WX-SOURCE": "x"}):
        status, _ = await trusting_api.call(
            "POST", "/orders", {"package_type": "basic", "trade_type": "NATIVE"}, headers
        )
        assert status == 401
    assert (
        await fetch_one(trusting_api.pool, "SELECT id FROM users WHERE openid = %s", openid) is None
    )
