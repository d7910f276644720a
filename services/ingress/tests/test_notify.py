"""Ingress against a real RabbitMQ: docs/ingress.md (the notify contract) and
docs/events.md (what is published)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from paylane_common.broker.topology import LOG_STREAM
from paylane_common.contract import events
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.service import ADMIN_LISTENER, PUBLISHER
from paylane_common.runtime.settings import load_settings
from paylane_common.wechatpay import SIGNTEST_PREFIX, certificate_serial
from paylane_common.wechatpay.testing import (
    certificate_pem,
    new_private_key,
    self_signed_certificate,
)
from paylane_ingress.main import build_app
from paylane_ingress.settings import IngressSettings
from services.ingress.tests.support import NOW

NOTIFY = "/notify/wechatpay"
integration = pytest.mark.integration


async def expect_fail(response: ClientResponse, status: int, *secrets: str) -> str:
    """A rejection: ``status`` with a ``{"code":"FAIL","message":...}`` body echoing nothing."""
    text = await response.text()
    assert response.status == status, text
    assert response.content_type == "application/json"
    body = json.loads(text)
    assert body["code"] == "FAIL"
    assert isinstance(body["message"], str) and body["message"]
    for secret in secrets:
        assert secret not in text
    return body["message"]


def envelope_of(message: AbstractIncomingMessage) -> dict[str, Any]:
    return json.loads(message.body)


# --- accepted notifications ------------------------------------------------------------------


@integration
async def test_transaction_success_is_published_then_acknowledged(client, notification, spy):
    sent = notification("TRANSACTION.SUCCESS")
    response = await client.post(NOTIFY, data=sent.body, headers=sent.headers)
    assert response.status == 204
    assert await response.read() == b""

    [message] = await spy.drain()
    assert message.message_id == sent.event_id
    assert message.type == events.PAYMENT_SUCCEEDED
    assert message.routing_key == events.PAYMENT_SUCCEEDED
    assert message.correlation_id == sent.resource["out_trade_no"]
    assert message.content_type == "application/json"
    assert message.delivery_mode == 2  # persistent
    envelope = envelope_of(message)
    assert envelope["event_id"] == sent.event_id
    assert envelope["type"] == events.PAYMENT_SUCCEEDED
    assert envelope["schema_version"] == 1
    resource = sent.resource
    assert envelope["data"] == {
        "out_trade_no": resource["out_trade_no"],
        "transaction_id": resource["transaction_id"],
        "amount_total": resource["amount"]["total"],
        "payer_total": resource["amount"]["payer_total"],
        "currency": "CNY",
        "openid": resource["payer"]["openid"],
        "trade_type": "JSAPI",
        "success_time": resource["success_time"],
        "mchid": resource["mchid"],
        "appid": resource["appid"],
        "source": "wechatpay",
        "generation_id": None,
        "notification": envelope["data"]["notification"],
    }
    # The notification as received, for the order service to verify itself: the raw body
    # and the Wechatpay-* headers exactly as sent, and when it arrived.
    received = envelope["data"]["notification"]
    assert received["body"].encode() == sent.body
    signed = {k: v for k, v in sent.headers.items() if k.lower().startswith("wechatpay-")}
    assert received["headers"] == signed
    assert abs(received["received_at"] - time.time()) < 60


@integration
async def test_published_event_is_retained_in_the_log_stream(
    client, notification, spy, amqp_connection: AbstractRobustConnection
):
    sent = notification("TRANSACTION.SUCCESS")
    assert (await client.post(NOTIFY, data=sent.body, headers=sent.headers)).status == 204
    channel = await amqp_connection.channel()
    await channel.set_qos(prefetch_count=100)
    stream = await channel.get_queue(LOG_STREAM)
    found = None
    async with asyncio.timeout(5), stream.iterator(arguments={"x-stream-offset": "first"}) as it:
        async for message in it:
            await message.ack()
            if message.message_id == sent.event_id:
                found = message
                break
    await channel.close()
    assert found is not None and found.type == events.PAYMENT_SUCCEEDED
    assert envelope_of(found)["data"]["out_trade_no"] == sent.resource["out_trade_no"]


@integration
@pytest.mark.parametrize("serial_of", ["public_key", "certificate"])
@pytest.mark.parametrize("skew", [0, -299, 299])  # 300 s is stale, as the official SDKs count
async def test_both_key_modes_are_accepted_at_once(
    client, notification, spy, wechat_keys, serial_of, skew
):
    if serial_of == "public_key":
        key, serial = wechat_keys.platform_key, wechat_keys.public_key_id
    else:
        key, serial = wechat_keys.cert_key, wechat_keys.cert_serial
    sent = notification(signing_key=key, serial=serial, skew=skew)
    response = await client.post(NOTIFY, data=sent.body, headers=sent.headers)
    assert response.status == 204, await response.text()
    assert [m.message_id for m in await spy.drain()] == [sent.event_id]


@integration
@pytest.mark.parametrize(
    ("start_days", "lifetime_days"), [(-30, 29), (1, 365)], ids=["expired", "not_yet_valid"]
)
async def test_certificate_outside_its_validity_is_401_like_an_unknown_serial(
    ingress_settings, notification, spy, tmp_path, start_days, lifetime_days
):
    key = new_private_key()
    start = datetime.fromtimestamp(NOW, UTC) + timedelta(days=start_days)
    cert = self_signed_certificate(key, not_before=start, lifetime=timedelta(days=lifetime_days))
    (tmp_path / "platform.pem").write_text(certificate_pem(cert))
    settings = ingress_settings.model_copy(update={"wechatpay_platform_certs_dir": tmp_path})
    async with TestClient(TestServer(build_app(settings, clock=lambda: NOW))) as client:
        sent = notification(signing_key=key, serial=certificate_serial(cert))
        response = await client.post(NOTIFY, data=sent.body, headers=sent.headers)
        await expect_fail(response, 401)
    assert await spy.drain() == []


@integration
async def test_refund_success_is_published(client, notification, spy):
    sent = notification("REFUND.SUCCESS")
    assert (await client.post(NOTIFY, data=sent.body, headers=sent.headers)).status == 204
    [message] = await spy.drain()
    assert (message.message_id, message.type) == (sent.event_id, events.REFUND_SUCCEEDED)
    assert message.correlation_id == sent.resource["out_trade_no"]
    data = envelope_of(message)["data"]
    assert data["out_refund_no"] == sent.resource["out_refund_no"]
    assert (data["amount_refund"], data["amount_total"], data["status"]) == (1000, 2990, "SUCCESS")


@integration
@pytest.mark.parametrize(
    ("event_type", "changes"),
    [
        ("SECURITY_ECHO.SUCCESS", {}),
        ("MCHTRANSFER.BILL.FINISHED", {}),
        ("TRANSACTION.SUCCESS", {"trade_state": "REFUND"}),
    ],
)
async def test_ignored_types_are_acknowledged_not_published(
    client, notification, spy, transaction_resource, event_type, changes
):
    sent = notification(event_type, transaction_resource(**changes))
    response = await client.post(NOTIFY, data=sent.body, headers=sent.headers)
    assert response.status == 204
    assert await spy.drain() == []


@integration
async def test_duplicates_are_all_published_with_one_event_id(client, notification, spy):
    sent = notification()
    responses = await asyncio.gather(
        *(client.post(NOTIFY, data=sent.body, headers=sent.headers) for _ in range(10))
    )
    assert [r.status for r in responses] == [204] * 10
    published = await spy.drain()
    assert [m.message_id for m in published] == [sent.event_id] * 10


@integration
async def test_body_arriving_in_two_segments_is_read_whole(client, notification, spy):
    sent = notification()
    head = [f"POST {NOTIFY} HTTP/1.1", f"Host: {client.host}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in sent.headers.items()]
    head += [f"Content-Length: {len(sent.body)}", "", ""]
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write("\r\n".join(head).encode() + sent.body[:100])
    await writer.drain()
    try:  # a correct server waits for the rest of the body; a truncating one answers now
        async with asyncio.timeout(0.3):
            status_line = await reader.readline()
    except TimeoutError:
        writer.write(sent.body[100:])
        await writer.drain()
        async with asyncio.timeout(5):
            status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.split()[1] == b"204", status_line
    assert len(await spy.drain()) == 1


# --- rejected notifications ------------------------------------------------------------------

OTHER_APIV3_KEY = "another-32-byte-apiv3-key-000000"
HEADERS = ("Wechatpay-Signature", "Wechatpay-Timestamp", "Wechatpay-Nonce", "Wechatpay-Serial")


def rejected(reason: str) -> float:
    sample = "paylane_ingress_notifications_rejected_total"
    return REGISTRY.get_sample_value(sample, {"reason": reason}) or 0.0


def flip_one_byte(body: bytes) -> bytes:
    at = body.index(b'"summary"') + 2
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]


REJECTIONS = [
    (
        413,
        "too_large",
        lambda s, n, k: s.changed(s.body[:-1] + b',"pad":"' + b"x" * 65536 + b'"}'),
    ),
    (415, "not_json", lambda s, n, k: s.changed(Content_Type="text/plain")),
    *[(400, "missing_header", lambda s, n, k, h=h: s.changed(drop=h)) for h in HEADERS],
    (
        400,
        "bad_signature_type",
        lambda s, n, k: s.changed(Wechatpay_Signature_Type="WECHATPAY2-SHA1-RSA1024"),
    ),
    (400, "bad_timestamp", lambda s, n, k: s.changed(Wechatpay_Timestamp="1763780000.5")),
    (
        400,
        "malformed_body",
        lambda s, n, k: s.resigned(k.platform_key, b'{"id": "EV-1", "event_type": '),
    ),
    (400, "malformed_body", lambda s, n, k: s.resigned(k.platform_key, b'["not", "an", "object"]')),
    (401, "stale_timestamp", lambda s, n, k: n(skew=-300)),
    (401, "stale_timestamp", lambda s, n, k: n(skew=300)),
    (401, "bad_signature", lambda s, n, k: s.changed(flip_one_byte(s.body))),
    (401, "unknown_serial", lambda s, n, k: n(serial="PUB_KEY_ID_0000000000000000DEADBEEF")),
    (401, "bad_signature", lambda s, n, k: n(signing_key=k.cert_key, serial=k.public_key_id)),
    (
        None,
        "signtest_probe",
        lambda s, n, k: s.changed(Wechatpay_Signature=SIGNTEST_PREFIX + "c2lnbg=="),
    ),
    (400, "decrypt_failed", lambda s, n, k: n(apiv3_key=OTHER_APIV3_KEY)),
    (
        400,
        "invalid_resource",
        lambda s, n, k: n(resource={f: v for f, v in s.resource.items() if f != "amount"}),
    ),
    pytest.param(
        400, "invalid_resource", lambda s, n, k: n(resource={**s.resource, "payer": "oUpF8u"})
    ),
]
REJECTION_IDS = [
    *["too_large", "not_json"],
    *[f"missing_{h}" for h in HEADERS],
    *["bad_signature_type", "bad_timestamp", "signed_malformed_json", "signed_json_array"],
    *["stale_past", "stale_future", "tampered_body_byte", "unknown_serial", "key_confusion"],
    *["signtest_probe", "undecryptable", "resource_lacks_amount", "resource_payer_not_object"],
]


@integration
@pytest.mark.parametrize(("status", "reason", "make"), REJECTIONS, ids=REJECTION_IDS)
async def test_rejections_answer_fail_and_publish_nothing(
    client, notification, spy, wechat_keys, status, reason, make
):
    sent = make(notification(), notification, wechat_keys)
    before = rejected(reason)
    response = await client.post(NOTIFY, data=sent.body, headers=sent.headers)
    assert rejected(reason) == before + 1
    if status is None:  # SIGNTEST probes: any 4xx
        assert 400 <= response.status < 500
    payer = sent.resource["payer"]
    secrets = [wechat_keys.apiv3_key, OTHER_APIV3_KEY, sent.resource["transaction_id"]]
    secrets += [
        sent.resource["out_trade_no"],
        payer["openid"] if isinstance(payer, dict) else payer,
    ]
    await expect_fail(response, status or response.status, *secrets)
    assert await spy.drain() == []


DUPLICATED = [*HEADERS, "Wechatpay-Signature-Type"]


@integration
@pytest.mark.parametrize("header", DUPLICATED)
@pytest.mark.parametrize("genuine", ["first", "last", "both"])
async def test_duplicate_wechatpay_headers_are_400(client, notification, spy, header, genuine):
    """Two values of one header: neither wins (a proxy and the app could each pick another)."""
    sent = notification()
    genuine_value = sent.headers.get(header, "WECHATPAY2-SHA256-RSA2048")
    values = {
        "first": [genuine_value, "forged"],
        "last": ["forged", genuine_value],
        "both": [genuine_value, genuine_value],
    }[genuine]
    headers = CIMultiDict((k, v) for k, v in sent.headers.items() if k != header)
    for value in values:  # same spelling: aiohttp's client merges names case-sensitively
        headers.add(header, value)
    before = rejected("duplicate_header")
    response = await client.post(NOTIFY, data=sent.body, headers=headers)
    message = await expect_fail(response, 400, "forged", genuine_value)
    assert header in message
    assert rejected("duplicate_header") == before + 1
    assert await spy.drain() == []


@integration
async def test_unconfirmed_publish_is_503_fail(start_ingress, notification, spy):
    client = await start_ingress()
    await client.app[PUBLISHER].close()
    sent = notification()
    await expect_fail(await client.post(NOTIFY, data=sent.body, headers=sent.headers), 503)
    assert await spy.drain() == []


# --- health, metrics, settings ---------------------------------------------------------------


@integration
async def test_health_ready_and_metrics_on_the_admin_listener_only(client, notification, spy):
    """The public listener faces the internet: /healthz only; /readyz (which names the
    broker) and /metrics are for the cluster, on ADMIN_PORT."""
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 404
    assert (await client.get("/metrics")).status == 404
    listener = client.app[ADMIN_LISTENER]
    assert listener.port == 9080  # the default
    async with TestClient(TestServer(listener.app)) as admin:
        assert (await admin.get("/healthz")).status == 200
        ready = await admin.get("/readyz")
        assert ready.status == 200
        assert (await ready.json())["checks"] == {"broker": "ok"}
        sent = notification()
        assert (await client.post(NOTIFY, data=sent.body, headers=sent.headers)).status == 204
        await spy.drain()
        text = await (await admin.get("/metrics")).text()
        assert 'paylane_ingress_notifications_received_total{route="wechatpay"}' in text
        # Nothing of the public API on the admin listener either.
        assert (await admin.post(NOTIFY, data=sent.body, headers=sent.headers)).status == 404


APIV3_KEY = "0123456789abcdefABCDEF0123456789"  # what the env fixture sets


def test_settings_load_from_the_environment(env, wechat_keys):
    settings = load_settings(IngressSettings)
    assert settings.wechatpay_apiv3_key is not None
    assert settings.wechatpay_apiv3_key.get_secret_value() == APIV3_KEY
    assert settings.wechatpay_public_key_id == wechat_keys.public_key_id
    assert settings.notify_max_skew_s == 300
    env.setenv("WECHATPAY_PLATFORM_CERTS_DIR", str(wechat_keys.certs_dir))
    assert load_settings(IngressSettings).wechatpay_platform_certs_dir == wechat_keys.certs_dir


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"WECHATPAY_APIV3_KEY": None}, "WECHATPAY_APIV3_KEY is required"),
        ({"WECHATPAY_APIV3_KEY": APIV3_KEY[:31]}, "WECHATPAY_APIV3_KEY .*32 bytes"),
        ({"WECHATPAY_APIV3_KEY": APIV3_KEY + "x"}, "WECHATPAY_APIV3_KEY .*32 bytes"),
        (
            {"WECHATPAY_PUBLIC_KEY": None, "WECHATPAY_PUBLIC_KEY_ID": None},
            "WECHATPAY_PLATFORM_CERTS_DIR",
        ),
        ({"WECHATPAY_PUBLIC_KEY_ID": None}, "WECHATPAY_PUBLIC_KEY_ID"),
        ({"WECHATPAY_PLATFORM_CERTS_DIR": "/nonexistent/certs"}, "WECHATPAY_PLATFORM_CERTS_DIR"),
        ({"HTTP_PORT": "9080"}, "ADMIN_PORT must differ from HTTP_PORT"),
        ({"ADMIN_PORT": "0"}, "ADMIN_PORT"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_variable(env, change, named):
    for name, value in change.items():
        if value is None:
            env.delenv(name)
        else:
            env.setenv(name, value)
    with pytest.raises(ConfigError, match=named) as raised:
        load_settings(IngressSettings)
    assert APIV3_KEY[:16] not in str(raised.value)


def test_unparseable_public_key_is_a_config_error(env):
    env.setenv(
        "WECHATPAY_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----"
    )
    with pytest.raises(ConfigError, match="WECHATPAY_PUBLIC_KEY"):
        load_settings(IngressSettings)
