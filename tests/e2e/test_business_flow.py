"""Sell anything, deliver anything, end to end (issue 28's whole path, on the running
stack): the backend places a business order of 1234 fen, the payer pays it at the
sandbox, the backend hears ``order.paid`` as a signed webhook (verified with the
``standardwebhooks`` package), reports its fulfilment ``success``, hears
``fulfilment.succeeded``, and the order's shipping is declared to WeChat exactly once.
No plan changes on the way (docs/order-api.md, docs/webhooks.md, docs/shipping.md)."""

from __future__ import annotations

import uuid
from typing import Any

import aiomysql
import pytest
from standardwebhooks import Webhook

from tests.support import hygiene
from tests.support.polling import eventually
from tests.support.queries import user_state
from tests.support.stack import Stack
from tests.support.stack_api import call, sandbox
from tests.support.stack_config import BACKEND
from tests.support.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.e2e


async def test_a_business_order_is_paid_announced_fulfilled_and_shipped_once(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    async with webhook_receiver("/backend/paylane") as backend:
        received = backend.received
        status, endpoint = await call(
            stack,
            "order",
            "POST",
            "/webhooks/endpoints",
            {
                "url": backend.url,
                "events": ["order.paid", "fulfilment.*"],
            },
            BACKEND,
        )
        assert status == 201, endpoint
        hygiene.register(endpoint["secret"])
        verify = Webhook(endpoint["secret"])

        def events_of(out_trade_no: str) -> dict[str, dict[str, Any]]:
            verified = [verify.verify(body, headers) for headers, body in received]
            return {e["type"]: e for e in verified if e["data"]["out_trade_no"] == out_trade_no}

        try:
            openid = f"o-{uuid.uuid4().hex[:16]}"
            hygiene.register(openid)
            body = {
                "openid": openid,
                "amount_fen": 1234,
                "description": "话费充值 12.34 元",
                "trade_type": "JSAPI",
                "external_id": f"topup-{uuid.uuid4().hex[:12]}",
            }
            status, order = await call(stack, "order", "POST", "/orders", body, BACKEND)
            assert status == 201, order
            no = order["out_trade_no"]
            assert order["amount_total"] == 1234

            status, paid = await sandbox(stack, "POST", f"/sandbox/orders/{no}/pay")
            assert status == 200, paid
            transaction_id = str(paid["transaction_id"])
            await eventually(
                lambda: "order.paid" in events_of(no), timeout=30, what="the order.paid webhook"
            )
            announced = events_of(no)["order.paid"]
            assert announced["data"]["amount_total"] == 1234

            status, fulfilled = await call(
                stack, "order", "POST", f"/orders/{no}/fulfilment", {"status": "success"}, BACKEND
            )
            assert status == 200, fulfilled
            await eventually(
                lambda: "fulfilment.succeeded" in events_of(no),
                timeout=30,
                what="the fulfilment.succeeded webhook",
            )

            async def shipped() -> bool:
                status, view = await call(stack, "order", "GET", f"/orders/{no}", None, BACKEND)
                assert status == 200, view
                return view["shipping"] is not None and view["shipping"]["state"] == "uploaded"

            try:
                await eventually(shipped, timeout=30, what=f"{no}'s shipping declared")
            except TimeoutError as exc:  # which stage stuck: the row, its retries, the lease
                _, view = await call(stack, "order", "GET", f"/orders/{no}", None, BACKEND)
                said = stack.services["order"].log_path.read_text(errors="replace")
                lines = [x for x in said.splitlines() if no in x or "shipping" in x or "token" in x]
                raise AssertionError(
                    f"{exc}; shipping {view.get('shipping')}; order's log:\n"
                    + "\n".join(lines[-30:])
                ) from exc
        finally:
            status, _ = await call(
                stack, "order", "DELETE", f"/webhooks/endpoints/{endpoint['id']}", None, BACKEND
            )
            assert status == 204

    _, shown = await sandbox(stack, "GET", "/sandbox/shipping")
    uploads = [u["body"] for u in shown["uploads"] if u["transaction_id"] == transaction_id]
    assert len(uploads) == 1, uploads  # exactly once
    [upload] = uploads
    assert upload["order_key"] == {"order_number_type": 2, "transaction_id": transaction_id}
    assert upload["shipping_list"][0]["item_desc"] == "话费充值 12.34 元"
    # Each webhook once per event, the same id on every attempt.
    ids = [h["webhook-id"] for h, b in received if no in b.decode()]
    assert sorted(set(ids)) == sorted(e["event_id"] for e in events_of(no).values())
    # A business order changes no plan.
    status, view = await call(stack, "order", "GET", f"/orders/{no}", None, BACKEND)
    assert (view["status"], view["fulfilment_status"]) == ("paid", "success")
    assert (await user_state(db_pool, order["user_id"]))[0] == "free"
