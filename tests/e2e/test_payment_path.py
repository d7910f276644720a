"""The payment-success path end to end: all four services as processes, real RabbitMQ
and MySQL (issue: the payment-success path)."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.support.clients import SSEClient, wait_for_types, ws_next
from tests.support.dead_letters import dead_letter
from tests.support.infra import Infra
from tests.support.metrics import metric
from tests.support.polling import eventually
from tests.support.queries import fetch_one, grants, order_status, user_state
from tests.support.stack import Stack, wait_ready
from tests.support.stack_api import new_order, stream_ticket
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.e2e


async def post_notification(
    http: aiohttp.ClientSession, stack: Stack, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    async with http.post(
        f"{stack.services['ingress'].url}/notify/wechatpay", data=body, headers=headers
    ) as response:
        return response.status, await response.read()


async def test_paid_notification_reaches_db_and_both_clients(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    order = await new_order(stack, "premium")
    ticket = order.stream_ticket
    notifier = stack.services["notifier"].url
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{notifier}/ws?ticket={ticket}")
        async with SSEClient(http, f"{notifier}/events?ticket={ticket}") as sse:
            # The snapshot (pending order) proves both clients are subscribed.
            assert (await ws_next(ws))["type"] == "order.state"
            assert (await sse.next())["type"] == "order.state"

            resource = wechat.transaction(order.out_trade_no, order.amount_total)
            headers, notification = wechat.notify(resource)
            status, body = await post_notification(http, stack, headers, notification)
            assert (status, body) == (204, b"")

            wanted = {"order.paid", "entitlement.granted"}
            ws_seen = await wait_for_types(lambda: ws_next(ws), wanted)
            sse_seen = await wait_for_types(sse.next, wanted)
        await ws.close()

    for seen in (ws_seen, sse_seen):
        by_type = {m["type"]: m for m in seen}
        assert by_type["order.paid"]["out_trade_no"] == order.out_trade_no
        assert by_type["order.paid"]["status"] == "paid"
        assert by_type["entitlement.granted"]["payment_status"] == "premium"
        assert by_type["entitlement.granted"]["regenerate_count"] == 3 + 100

    row = await fetch_one(
        db_pool,
        "SELECT status, transaction_id, paid_at FROM payment_orders WHERE out_trade_no = %s",
        order.out_trade_no,
    )
    assert row["status"] == "paid"
    assert row["transaction_id"] == resource["transaction_id"]
    assert row["paid_at"] is not None
    assert await user_state(db_pool, order.user_id) == ("premium", 103)

    # One payment can be followed through every service's JSON logs: the notification id
    # is the trace id, carried in AMQP headers, next to the out_trade_no.
    trace_id = json.loads(notification)["id"]
    for name in ("ingress", "order", "entitlement", "notifier"):
        lines = [
            json.loads(line)
            for line in stack.services[name].log_path.read_text().splitlines()
            if line.startswith("{")
        ]
        traced = [
            line
            for line in lines
            if line.get("trace_id") == trace_id and line.get("out_trade_no") == order.out_trade_no
        ]
        assert traced, f"{name} logged nothing for trace {trace_id}"


async def test_duplicate_notifications_grant_once(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    order = await new_order(stack, "basic")
    resource = wechat.transaction(order.out_trade_no, order.amount_total)
    headers, body = wechat.notify(resource)
    order_url = stack.services["order"].admin_url  # /metrics: on the admin port only
    async with aiohttp.ClientSession() as http:
        before = await metric(order_url, "paylane_consumer_messages_total", queue="order.payments")
        burst = await asyncio.gather(
            *(post_notification(http, stack, headers, body) for _ in range(10))
        )
        assert [s for s, _ in burst] == [204] * 10
        for _ in range(5):  # WeChat's later retries of the same notification
            assert (await post_notification(http, stack, headers, body))[0] == 204
        # And the same payment under another notification id (a second network path).
        other = wechat.notify(resource)
        assert (await post_notification(http, stack, *other))[0] == 204

        async def all_consumed() -> bool:
            done = await metric(
                order_url, "paylane_consumer_messages_total", queue="order.payments"
            )
            return done - before >= 16

        await eventually(all_consumed, what="16 deliveries consumed by the order service")

    async def granted() -> bool:
        return (await grants(db_pool, order.out_trade_no))["n"] == 1

    await eventually(granted, what="the grant")
    # Everything has been consumed by now; the ledger and the user show a single grant.
    assert await user_state(db_pool, order.user_id) == ("basic", 3 + 20)
    logs = await fetch_one(
        db_pool,
        "SELECT SUM(kind = 'paid') AS paid, SUM(kind = 'duplicate_notification') AS dup"
        " FROM payment_logs WHERE out_trade_no = %s",
        order.out_trade_no,
    )
    assert (logs["paid"], logs["dup"]) == (1, 1)
    paid_events = await fetch_one(
        db_pool,
        "SELECT COUNT(*) AS n FROM outbox WHERE routing_key = 'order.paid' AND payload LIKE %s",
        f"%{order.out_trade_no}%",
    )
    assert paid_events["n"] == 1


async def test_amount_mismatch_needs_review_and_grants_nothing(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    order = await new_order(stack, "premium")
    resource = wechat.transaction(order.out_trade_no, 1)  # paid one fen for a 29.90 order
    async with aiohttp.ClientSession() as http:
        assert (await post_notification(http, stack, *wechat.notify(resource)))[0] == 204

    async def flagged() -> bool:
        return await order_status(db_pool, order.out_trade_no) == "needs_review"

    await eventually(flagged, what="needs_review")
    row = await fetch_one(
        db_pool,
        "SELECT review_reason FROM payment_orders WHERE out_trade_no = %s",
        order.out_trade_no,
    )
    assert "amount 1 differs" in str(row["review_reason"])
    nothing = await fetch_one(
        db_pool,
        "SELECT (SELECT COUNT(*) FROM outbox WHERE payload LIKE %s) AS events,"
        " (SELECT COUNT(*) FROM entitlement_grants WHERE out_trade_no = %s) AS grants",
        f"%{order.out_trade_no}%",
        order.out_trade_no,
    )
    assert nothing == {"events": 0, "grants": 0}
    assert await user_state(db_pool, order.user_id) == ("free", 3)


async def test_unknown_order_is_dead_lettered_with_reason(
    stack: Stack, amqp_connection, wechat: FakeWechat
) -> None:
    out_trade_no = "NOSUCHORDER" + re.sub(r"\D", "", str(id(stack)))[:10]
    resource = wechat.transaction(out_trade_no, 990)
    async with aiohttp.ClientSession() as http:
        assert (await post_notification(http, stack, *wechat.notify(resource)))[0] == 204

    found = await dead_letter(amqp_connection, "order.payments", out_trade_no)
    reason = str(found.headers["x-paylane-reason"])
    assert f"unknown out_trade_no {out_trade_no}" in reason
    assert "after 4 attempts" in reason


@pytest.mark.broker_outage
async def test_broker_outage_answers_503_then_completes(
    stack: Stack,
    db_pool: aiomysql.Pool,
    wechat: FakeWechat,
    infra: Infra,
    amqp_connection: AbstractRobustConnection,
) -> None:
    order = await new_order(stack, "premium")
    resource = wechat.transaction(order.out_trade_no, order.amount_total)
    headers, body = wechat.notify(resource)
    async with aiohttp.ClientSession() as http:
        await asyncio.to_thread(infra.broker.stop)
        try:
            status, answer = await post_notification(http, stack, headers, body)
            assert status == 503
            assert (await _json(answer))["code"] == "FAIL"
            async with http.get(f"{stack.services['order'].admin_url}/readyz") as response:
                readiness = await response.json()
                assert response.status == 503
                assert readiness["checks"]["broker"].startswith("down")
                assert readiness["checks"]["mysql"] == "ok"
        finally:
            await asyncio.to_thread(infra.broker.start)
            await asyncio.wait_for(amqp_connection.ready(), 60)  # for the tests that follow
        # Nothing was acknowledged, so nothing was granted (the reconciler may have closed
        # the order meanwhile; the retried payment is honoured all the same).
        row = await fetch_one(
            db_pool,
            "SELECT o.status, (SELECT COUNT(*) FROM entitlement_grants g"
            " WHERE g.out_trade_no = o.out_trade_no) AS grants"
            " FROM payment_orders o WHERE o.out_trade_no = %s",
            order.out_trade_no,
        )
        assert row["status"] in ("pending", "failed")
        assert row["grants"] == 0

        for service in stack.services.values():
            await wait_ready(service)
        ticket = await stream_ticket(stack, order.client_token)
        ws = await http.ws_connect(f"{stack.services['notifier'].url}/ws?ticket={ticket}")
        assert (await ws_next(ws))["type"] == "order.state"
        # WeChat retries the very same notification; now it goes through.
        assert (await post_notification(http, stack, headers, body))[0] == 204
        await wait_for_types(lambda: ws_next(ws), {"order.paid", "entitlement.granted"})
        await ws.close()
    assert await user_state(db_pool, order.user_id) == ("premium", 103)


async def _json(body: bytes) -> dict[str, object]:
    import json

    data: dict[str, object] = json.loads(body)
    return data


@pytest.mark.parametrize("name", ["ingress", "order", "entitlement", "notifier", "sandbox"])
async def test_sigterm_exits_cleanly_within_ten_seconds(stack: Stack, name: str) -> None:
    """A second replica of each service, stopped with SIGTERM: exit code 0 within 10 s
    (stop() kills it and reports -9 past that)."""
    replica = f"{name}-replica"
    await stack.start(name, alias=replica)
    assert await stack.stop(replica, timeout=10) == 0
