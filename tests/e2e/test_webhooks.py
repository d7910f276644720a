"""Webhooks end to end: the backend makes an endpoint on the running order service, a
payment goes through the stack, and the backend's receiver gets ``order.paid`` and
``entitlement.granted``, verified with the ``standardwebhooks`` package (docs/webhooks.md)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from standardwebhooks import Webhook

from tests.support import hygiene
from tests.support.polling import eventually
from tests.support.stack import Stack
from tests.support.stack_api import call, new_order
from tests.support.stack_config import BACKEND
from tests.support.webhook_receiver import webhook_receiver
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.e2e


async def test_a_payment_reaches_the_backend_as_signed_webhooks(
    stack: Stack, wechat: FakeWechat
) -> None:
    async with webhook_receiver("/paylane") as backend:
        received = backend.received
        status, endpoint = await call(
            stack,
            "order",
            "POST",
            "/webhooks/endpoints",
            {"url": backend.url, "events": ["order.paid", "entitlement.*"]},
            BACKEND,
        )
        assert status == 201, endpoint
        hygiene.register(endpoint["secret"])
        try:
            order = await new_order(stack, "basic")
            headers, body = wechat.notify(
                wechat.transaction(order.out_trade_no, order.amount_total)
            )
            async with aiohttp.ClientSession() as http:
                url = f"{stack.services['ingress'].url}/notify/wechatpay"
                async with http.post(url, data=body, headers=headers) as response:
                    assert response.status == 204

            def for_order() -> dict[str, Any]:
                hook = Webhook(endpoint["secret"])
                verified = [hook.verify(body, headers) for headers, body in received]
                return {
                    e["type"]: e
                    for e in verified
                    if e["data"]["out_trade_no"] == order.out_trade_no
                }

            await eventually(
                lambda: set(for_order()) == {"order.paid", "entitlement.granted"},
                what="both webhooks",
            )
        finally:
            status, _ = await call(
                stack, "order", "DELETE", f"/webhooks/endpoints/{endpoint['id']}", None, BACKEND
            )
            assert status == 204
    events = for_order()
    assert events["order.paid"]["data"]["amount_total"] == order.amount_total
    assert events["entitlement.granted"]["data"]["payment_status"] == "basic"
    ids = [h["webhook-id"] for h, b in received if order.out_trade_no in b.decode()]
    assert sorted(ids) == sorted(e["event_id"] for e in events.values())
    assert all(json.loads(b)["schema_version"] == 1 for _, b in received)
