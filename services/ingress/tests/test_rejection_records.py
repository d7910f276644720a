"""Every notification ingress rejects is recorded for the operators' console: published as
``notification.rejected`` in the background (rejections.py), consumed by the order
service into ``notifications_rejected`` (paylane_order.rejections), shown in the order's
timeline when it names one and on the health page. On the real broker and database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from paylane_common.broker.publisher import Publisher
from paylane_common.broker.topology import ORDER_REJECTIONS
from paylane_common.contract.events import NotificationRejected
from paylane_common.delivery.consumer import Consumer
from paylane_common.runtime.outages import Dependency
from paylane_common.storage.db import transaction
from paylane_ingress.rejections import RejectionRecorder
from paylane_order import console_data
from paylane_order.rejections import RejectionRecords
from services.ingress.tests.conftest import Notify, Signed, WechatKeys
from services.ingress.tests.test_notify import NOTIFY, OTHER_APIV3_KEY, flip_one_byte
from tests.support.polling import eventually

pytestmark = pytest.mark.integration

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def order_consumer(
    amqp_connection: AbstractRobustConnection, db_pool: aiomysql.Pool, database: Dependency
) -> AsyncIterator[None]:
    """The order service's consumer of ``order.rejections``, as it runs in the service."""
    publisher = await Publisher.open(amqp_connection)
    consumer = Consumer(
        amqp_connection, publisher, ORDER_REJECTIONS, RejectionRecords(db_pool), database=database
    )
    await consumer.start()
    yield
    await consumer.stop()
    await publisher.close()


async def _rejected(
    client: Client, pool: aiomysql.Pool, sent: Signed, status: int, event_id: str
) -> dict[str, Any]:
    """Send ``sent``, expect ``status``: the row of the rejected notification ``event_id``,
    once written."""
    response = await client.post(NOTIFY, data=sent.body, headers=sent.headers)
    assert response.status == status
    return await _row(pool, "event_id", event_id)


async def _row(pool: aiomysql.Pool, column: str, value: str) -> dict[str, Any]:
    """The row of ``notifications_rejected`` whose ``column`` is ``value``, once written."""
    row: dict[str, Any] | None = None

    async def written() -> bool:
        nonlocal row
        async with transaction(pool) as cur:
            await cur.execute(
                "SELECT route, reason, status, event_id, event_type, out_trade_no,"
                " transaction_id, serial, received_at FROM notifications_rejected"
                f" WHERE {column} = %s",
                (value,),
            )
            row = await cur.fetchone()
        return row is not None

    await eventually(written, what=f"the rejection of {column} {value} recorded")
    assert row is not None
    return row


async def _on_the_health_page(pool: aiomysql.Pool, event_id: str) -> bool:
    health = await console_data.health(pool, None)
    return event_id in {r["event_id"] for r in health.rejections}


async def test_a_notification_with_a_bad_signature_is_recorded_and_on_the_health_page(
    client: Client,
    notification: Notify,
    wechat_keys: WechatKeys,
    order_consumer: None,
    db_pool: aiomysql.Pool,
) -> None:
    sent = notification()
    forged = sent.changed(flip_one_byte(sent.body))
    row = await _rejected(client, db_pool, forged, 401, sent.event_id)
    # The id and type as the (unsigned) body said them, the serial; nothing decrypted.
    assert {k: v for k, v in row.items() if k != "received_at"} == {
        "route": "wechatpay",
        "reason": "bad_signature",
        "status": 401,
        "event_id": sent.event_id,
        "event_type": "TRANSACTION.SUCCESS",
        "out_trade_no": None,
        "transaction_id": None,
        "serial": wechat_keys.public_key_id,
    }
    assert await _on_the_health_page(db_pool, sent.event_id)


async def test_an_undecryptable_notification_of_a_known_order_is_recorded(
    client: Client,
    notification: Notify,
    transaction_resource: Callable[..., dict[str, Any]],
    order_consumer: None,
    db_pool: aiomysql.Pool,
) -> None:
    """Signed by WeChat Pay, encrypted with another APIv3 key (a rotated key): the order it
    names cannot be read, so it is on the health page, not in the order's timeline."""
    no = f"RR{uuid.uuid4().hex[:20]}"
    sent = notification(resource=transaction_resource(no), apiv3_key=OTHER_APIV3_KEY)
    row = await _rejected(client, db_pool, sent, 400, sent.event_id)
    assert (row["reason"], row["status"], row["out_trade_no"]) == ("decrypt_failed", 400, None)
    assert await _on_the_health_page(db_pool, sent.event_id)


async def test_a_decrypted_but_invalid_notification_is_in_its_orders_timeline(
    client: Client,
    notification: Notify,
    transaction_resource: Callable[..., dict[str, Any]],
    order_consumer: None,
    db_pool: aiomysql.Pool,
) -> None:
    """Verified and decrypted, its resource unusable (no amount): the record names the
    order and the transaction, never the payer."""
    no = f"RR{uuid.uuid4().hex[:20]}"
    resource = {k: v for k, v in transaction_resource(no).items() if k != "amount"}
    sent = notification(resource=resource)
    row = await _rejected(client, db_pool, sent, 400, sent.event_id)
    assert (row["reason"], row["out_trade_no"]) == ("invalid_resource", no)
    assert row["transaction_id"] == sent.resource["transaction_id"]
    openid = sent.resource["payer"]["openid"]
    assert openid not in {str(v) for v in row.values()}
    timeline = await console_data.timeline(db_pool, {"out_trade_no": no, "status": "pending"})
    (line,) = [e for e in timeline if e.origin == "ingress"]
    assert line.what == "notification rejected: invalid_resource"
    assert f"event_id={sent.event_id}" in line.detail and "answered=400" in line.detail


def _unrecorded(why: str) -> float:
    sample = "paylane_ingress_rejections_unrecorded_total"
    return REGISTRY.get_sample_value(sample, {"why": why}) or 0.0


async def test_records_are_capped_per_second_and_the_rest_counted(
    amqp_connection: AbstractRobustConnection,
) -> None:
    publisher = await Publisher.open(amqp_connection)
    now = [1000.0]
    recorder = RejectionRecorder(2, clock=lambda: now[0])
    recorder.publisher = publisher
    record = NotificationRejected(
        route="wechatpay",
        reason="bad_signature",
        status=401,
        received_at=datetime(2026, 12, 1, tzinfo=UTC),
    )
    before = _unrecorded("rate")
    for _ in range(3):
        recorder.record(record)
    assert _unrecorded("rate") == before + 1  # the third in that second
    now[0] += 1
    recorder.record(record)  # a new second
    assert _unrecorded("rate") == before + 1
    await recorder.drain()
    await publisher.close()


async def test_a_malformed_cloudhosting_result_is_recorded_under_the_order_it_names(
    client: Client, order_consumer: None, db_pool: aiomysql.Pool
) -> None:
    """``/notify/cloudhosting`` is unsigned: the order it names is recorded as said."""
    no = f"RR{uuid.uuid4().hex[:20]}"
    body = {"outTradeNo": no, "transactionId": "4200000000", "totalFee": True, "openid": "o-1"}
    response = await client.post("/notify/cloudhosting", json=body)
    assert response.status == 400
    row = await _row(db_pool, "out_trade_no", no)
    assert (row["route"], row["reason"], row["status"]) == (
        "cloudhosting",
        "cloudhosting_invalid",
        400,
    )
    assert row["transaction_id"] == "4200000000" and "o-1" not in row.values()
