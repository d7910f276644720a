"""``POST /api/payment/callback``, the existing cloud function's default notify URL
(``${API_BASE_URL}/api/payment/callback``): served as ``POST /notify/wechatpay``, by the
same handler, with the same verification, answers and events (docs/ingress.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from paylane_ingress.api import CALLBACK_ALIAS, INGRESS_API
from services.ingress.tests.test_notify import (
    NOTIFY,
    envelope_of,
    expect_fail,
    flip_one_byte,
    rejected,
)

integration = pytest.mark.integration


def _as_received_elsewhere(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope without what differs between two receptions of one notification."""
    data = dict(envelope["data"])
    data["notification"] = {k: v for k, v in data["notification"].items() if k != "received_at"}
    return {**{k: v for k, v in envelope.items() if k != "occurred_at"}, "data": data}


@integration
async def test_a_notification_to_the_alias_is_verified_acked_and_published_as_the_original(
    client, notification, spy
):
    sent = notification("TRANSACTION.SUCCESS")
    via_alias = await client.post(CALLBACK_ALIAS, data=sent.body, headers=sent.headers)
    assert via_alias.status == 204, await via_alias.text()
    assert await via_alias.read() == b""
    via_notify = await client.post(NOTIFY, data=sent.body, headers=sent.headers)
    assert via_notify.status == 204

    first, second = await spy.drain()
    for message in (first, second):
        assert message.message_id == sent.event_id
        assert message.routing_key == message.type == "payment.succeeded"
        assert message.correlation_id == sent.resource["out_trade_no"]
        assert message.delivery_mode == 2
    assert _as_received_elsewhere(envelope_of(first)) == _as_received_elsewhere(envelope_of(second))
    assert envelope_of(first)["data"]["notification"]["body"].encode() == sent.body


@integration
async def test_a_refund_notification_to_the_alias_is_published(client, notification, spy):
    sent = notification("REFUND.SUCCESS")
    response = await client.post(CALLBACK_ALIAS, data=sent.body, headers=sent.headers)
    assert response.status == 204, await response.text()
    [message] = await spy.drain()
    assert message.message_id == sent.event_id
    assert message.type == "refund.succeeded"


@integration
@pytest.mark.parametrize(
    ("status", "reason", "make"),
    [
        (401, "bad_signature", lambda s, n: s.changed(flip_one_byte(s.body))),
        (401, "unknown_serial", lambda s, n: n(serial="PUB_KEY_ID_0000000000000000DEADBEEF")),
        (401, "stale_timestamp", lambda s, n: n(skew=-300)),
        (400, "missing_header", lambda s, n: s.changed(drop="Wechatpay-Signature")),
        (415, "not_json", lambda s, n: s.changed(Content_Type="text/plain")),
    ],
    ids=["tampered_body", "unknown_serial", "stale", "missing_signature", "not_json"],
)
async def test_the_alias_refuses_exactly_as_the_original(
    client, notification, spy, status, reason, make
):
    sent = make(notification(), notification)
    before = rejected(reason)
    answers = []
    for path in (CALLBACK_ALIAS, NOTIFY):
        response = await client.post(path, data=sent.body, headers=sent.headers)
        answers.append((response.status, await expect_fail(response, status)))
    assert answers[0] == answers[1]
    assert rejected(reason) == before + 2
    assert await spy.drain() == []


def test_the_document_describes_the_alias_as_the_original():
    paths = INGRESS_API.document()["paths"]
    original, alias = paths[NOTIFY]["post"], paths[CALLBACK_ALIAS]["post"]
    assert alias["operationId"] != original["operationId"]
    for key in ("responses", "parameters", "requestBody"):
        assert json.dumps(alias[key], sort_keys=True) == json.dumps(original[key], sort_keys=True)
    assert "security" not in alias or alias["security"] == original.get("security")
