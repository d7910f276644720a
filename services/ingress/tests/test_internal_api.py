"""The cloud function's calls on ingress (docs/cloud-function.md), against a real RabbitMQ:
``POST /api/payment/internal/notify``, ``POST /api/payment/internal/order-created`` and
``GET /api/prices/current``."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from paylane_common.broker.topology import ORDER_PAYMENTS
from paylane_common.contract import events
from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_common.contract.prices import PriceList, dumps, iso_utc
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.service import PUBLISHER
from paylane_common.runtime.settings import load_settings
from paylane_ingress.internal import DB_ERROR_LOG_CHARS, loggable_db_error, order_id_for
from paylane_ingress.main import build_app
from paylane_ingress.settings import IngressSettings
from services.ingress.tests.support import NOW
from tests.support import hygiene

NOTIFY = "/api/payment/internal/notify"
ORDER_CREATED = "/api/payment/internal/order-created"
PRICES = "/api/prices/current"
integration = pytest.mark.integration


def envelope_of(message: AbstractIncomingMessage) -> dict[str, Any]:
    return json.loads(message.body)


async def expect_unauthorized(response: ClientResponse) -> None:
    """Exactly what the existing backend answers (docs/cloud-function.md)."""
    assert response.status == 401
    assert await response.json() == {"error": "Unauthorized"}


async def expect_refusal(response: ClientResponse, status: int, error: str, *hidden: str) -> str:
    """``{"success": false, "error": CODE, "message": …}`` echoing none of ``hidden``."""
    text = await response.text()
    assert response.status == status, text
    body = json.loads(text)
    assert body["success"] is False
    assert body["error"] == error
    assert isinstance(body["message"], str) and body["message"]
    for value in hidden:
        assert value not in text
    return str(body["message"])


def seed_out_trade_no() -> str:
    """The cloud function's: the time in ms, then 5 random digits."""
    return f"{int(datetime.now(UTC).timestamp() * 1000)}{uuid.uuid4().int % 100_000:05d}"


# --- POST /api/payment/internal/notify -------------------------------------------------------


def notify_body(**changes: Any) -> dict[str, Any]:
    """The cloud function's body: no amount."""
    body = {
        "outTradeNo": "P20251122ABC",
        "transactionId": "4200000985202511229999",
        "status": "paid",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@integration
@pytest.mark.parametrize("secret", [None, "", "wrong", "internal-"])
async def test_internal_notify_without_the_secret_is_401_unauthorized(client, spy, secret):
    headers = {} if secret is None else {"X-Internal-Secret": secret}
    await expect_unauthorized(await client.post(NOTIFY, json=notify_body(), headers=headers))
    assert await spy.drain() == []


@integration
@pytest.mark.parametrize("route", [NOTIFY, ORDER_CREATED])
@pytest.mark.parametrize("order", ["secret_first", "secret_last", "secret_twice"])
async def test_a_duplicated_secret_is_400(client, spy, wechat_keys, route, order):
    secret = wechat_keys.internal_secret
    values = {
        "secret_first": [secret, "wrong"],
        "secret_last": ["wrong", secret],
        "secret_twice": [secret, secret],
    }[order]
    headers = CIMultiDict(("X-Internal-Secret", value) for value in values)
    response = await client.post(route, json=notify_body(), headers=headers)
    assert "X-Internal-Secret" in await expect_refusal(response, 400, "DUPLICATE_HEADER", secret)
    assert await spy.drain() == []


@integration
@pytest.mark.parametrize(
    "body",
    [
        notify_body(status="refunded"),
        notify_body(outTradeNo="bad no!"),
        notify_body(outTradeNo="abc"),
        notify_body(transactionId=""),
        notify_body(amountTotal=-1),
        notify_body(generationId="g" * 37),
        # WeChat Pay's attach, and so the bill's columns: a comma broke a day's bill.
        notify_body(generationId="gen-1,2"),
        notify_body(generationId="gen 1"),
        {"outTradeNo": "P20251122ABC", "status": "paid"},
    ],
)
async def test_internal_notify_invalid_body_is_400(client, spy, wechat_keys, body):
    headers = {"X-Internal-Secret": wechat_keys.internal_secret}
    response = await client.post(NOTIFY, json=body, headers=headers)
    await expect_refusal(response, 400, "INVALID_REQUEST")
    assert await spy.drain() == []


@integration
async def test_internal_notify_takes_the_seed_body_and_passes_the_generation(
    client, spy, wechat_keys
):
    tx = "42000" + uuid.uuid4().hex[:20]
    out_trade_no = seed_out_trade_no()
    openid = "o-notify-" + uuid.uuid4().hex[:12]
    hygiene.register(openid)
    body = {
        "outTradeNo": out_trade_no,
        "transactionId": tx,
        "status": "paid",
        "packageType": "premium",
        "generationId": "gen-1706345678901-abc123",
        "openid": openid,
    }
    headers = {"X-Internal-Secret": wechat_keys.internal_secret}
    answers = []
    for _ in range(2):  # idempotent: a retry is the same event
        response = await client.post(NOTIFY, json=body, headers=headers)
        assert response.status == 200, await response.text()
        answers.append(await response.json())
    for answer in answers:
        assert answer["success"] is True
        assert isinstance(answer["message"], str) and answer["message"]
        assert (answer["code"], answer["event_id"]) == ("SUCCESS", f"internal-{tx}")
    messages = await spy.drain()
    assert [(m.message_id, m.type) for m in messages] == [
        (f"internal-{tx}", events.PAYMENT_SUCCEEDED)
    ] * 2
    data = envelope_of(messages[0])["data"]
    assert data["source"] == "internal"
    assert data["generation_id"] == "gen-1706345678901-abc123"
    assert (data["out_trade_no"], data["transaction_id"]) == (out_trade_no, tx)
    assert (data["amount_total"], data["openid"]) == (None, openid)


@integration
@pytest.mark.parametrize("amount", [2990, None])
async def test_internal_notify_with_or_without_amount(client, spy, wechat_keys, amount):
    tx = "42000" + uuid.uuid4().hex[:20]
    body = notify_body(transactionId=tx, amountTotal=amount, generationId="")
    headers = {"X-Internal-Secret": wechat_keys.internal_secret}
    response = await client.post(NOTIFY, json=body, headers=headers)
    assert response.status == 200, await response.text()
    [message] = await spy.drain()
    assert message.correlation_id == "P20251122ABC"
    data = envelope_of(message)["data"]
    assert (data["amount_total"], data["generation_id"]) == (amount, None)


@integration
async def test_internal_notify_unconfirmed_publish_is_503(start_ingress, spy, wechat_keys):
    client = await start_ingress()
    await client.app[PUBLISHER].close()
    headers = {"X-Internal-Secret": wechat_keys.internal_secret}
    response = await client.post(NOTIFY, json=notify_body(), headers=headers)
    await expect_refusal(response, 503, "UNAVAILABLE")
    assert await spy.drain() == []


# --- POST /api/payment/internal/order-created ------------------------------------------------


def created_body(**changes: Any) -> dict[str, Any]:
    """The cloud function's body after its insert failed (docs/cloud-function.md)."""
    body: dict[str, Any] = {
        "orderId": "order-1706345678901-abc123",
        "outTradeNo": seed_out_trade_no(),
        "userId": "user-1706345678901-xyz789",
        "openid": "o-created-" + uuid.uuid4().hex[:12],
        "amount": 2990,
        "packageType": "premium",
        "tradeType": "JSAPI",
        "status": "pending",
        "reason": "db_insert_failed",
        "dbError": "ER_LOCK_WAIT_TIMEOUT: Lock wait timeout exceeded",
    }
    hygiene.register(body["openid"])
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


@pytest.fixture
def secret(wechat_keys) -> dict[str, str]:
    return {"X-Internal-Secret": wechat_keys.internal_secret}


@integration
@pytest.mark.parametrize("given", [None, "", "wrong", "internal-"])
async def test_order_created_without_the_secret_is_401_unauthorized(client, spy, given):
    headers = {} if given is None else {"X-Internal-Secret": given}
    await expect_unauthorized(
        await client.post(ORDER_CREATED, json=created_body(), headers=headers)
    )
    assert await spy.drain() == []


@integration
async def test_order_created_publishes_the_order_then_answers(client, spy, secret):
    body = created_body()
    response = await client.post(ORDER_CREATED, json=body, headers=secret)
    assert response.status == 200, await response.text()
    answer = await response.json()
    assert answer == {"success": True, "message": answer["message"], "orderId": body["orderId"]}
    assert isinstance(answer["message"], str) and answer["message"]

    [message] = await spy.drain()
    event_id = f"order-created:{body['outTradeNo']}"
    assert (message.message_id, message.type, message.routing_key) == (
        event_id,
        events.ORDER_CREATED,
        events.ORDER_CREATED,
    )
    assert message.correlation_id == body["outTradeNo"]
    assert message.delivery_mode == 2  # persistent
    envelope = envelope_of(message)
    assert (envelope["event_id"], envelope["type"]) == (event_id, events.ORDER_CREATED)
    assert envelope["data"] == {
        "out_trade_no": body["outTradeNo"],
        "order_id": body["orderId"],
        "user_id": body["userId"],
        "openid": body["openid"],
        "amount_total": 2990,
        "package_type": "premium",
        "trade_type": "JSAPI",
        "reason": "db_insert_failed",
    }
    # What the data model of the order service reads back.
    typed = events.Envelope.model_validate(envelope).typed_data()
    assert isinstance(typed, events.OrderCreated)


@integration
async def test_order_created_is_in_the_order_queue_when_answered(
    client, spy, secret, amqp_connection: AbstractRobustConnection
):
    """Published with confirms before the 200: the broker holds it, routed to the queue the
    order service consumes, by the time the caller reads the answer."""
    body = created_body()
    response = await client.post(ORDER_CREATED, json=body, headers=secret)
    assert response.status == 200
    channel = await amqp_connection.channel()
    try:
        queue = await channel.get_queue(ORDER_PAYMENTS.name, ensure=False)
        found = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            found.append(message.message_id)
        assert f"order-created:{body['outTradeNo']}" in found
    finally:
        await channel.close()
    await spy.drain()


@integration
async def test_order_created_without_order_id_names_the_id_paylane_will_use(client, spy, secret):
    """The cloud function's out_trade_no carries its time: the id derived from it is the
    same on every retry (the retries are one event, deduplicated by its id)."""
    body = created_body(orderId=None)
    ids = []
    for _ in range(2):
        response = await client.post(ORDER_CREATED, json=body, headers=secret)
        assert response.status == 200, await response.text()
        ids.append((await response.json())["orderId"])
    assert ids[0] == ids[1]
    assert re.fullmatch(rf"order-{body['outTradeNo'][:13]}-[a-z0-9]{{8}}", ids[0])
    messages = await spy.drain()
    assert [m.message_id for m in messages] == [f"order-created:{body['outTradeNo']}"] * 2
    assert {envelope_of(m)["data"]["order_id"] for m in messages} == {ids[0]}


@integration
async def test_order_created_with_another_out_trade_no_gets_a_fresh_row_id(client, spy, secret):
    body = created_body(orderId="", outTradeNo="P" + uuid.uuid4().hex[:20].upper())
    response = await client.post(ORDER_CREATED, json=body, headers=secret)
    assert response.status == 200, await response.text()
    order_id = (await response.json())["orderId"]
    assert re.fullmatch(r"order-\d{13}-[a-z0-9]{8}", order_id)
    [message] = await spy.drain()
    assert envelope_of(message)["data"]["order_id"] == order_id


@integration
async def test_order_created_is_lenient_on_what_only_explains_the_call(client, spy, secret):
    """An unknown reason, no status, no tradeType, no dbError: the order is not lost."""
    body = created_body(reason="db_something_new", status=None, tradeType=None, dbError=None)
    response = await client.post(ORDER_CREATED, json=body, headers=secret)
    assert response.status == 200, await response.text()
    [message] = await spy.drain()
    data = envelope_of(message)["data"]
    assert (data["trade_type"], data["reason"]) == ("JSAPI", "db_something_new")
    # No openid either (a NATIVE order's payer may be unknown).
    body = created_body(openid=None, tradeType="NATIVE", reason=None)
    response = await client.post(ORDER_CREATED, json=body, headers=secret)
    assert response.status == 200, await response.text()
    [message] = await spy.drain()
    data = envelope_of(message)["data"]
    assert (data["openid"], data["trade_type"], data["reason"]) == (None, "NATIVE", None)


@integration
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"amount": 29.9}, "amount"),  # yuan where fen is due
        ({"amount": "2990"}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": -1}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": 2**31}, "amount"),
        ({"amount": None}, "amount"),
        ({"packageType": "free"}, "packageType"),
        ({"packageType": "gold"}, "packageType"),
        ({"packageType": None}, "packageType"),
        ({"tradeType": "WEB"}, "tradeType"),
        ({"status": "paid"}, "status"),
        ({"outTradeNo": None}, "outTradeNo"),
        ({"outTradeNo": "bad no!"}, "outTradeNo"),
        ({"outTradeNo": "1" * 33}, "outTradeNo"),
        ({"userId": None}, "userId"),
        ({"userId": "u" * 37}, "userId"),
        ({"userId": "user 1"}, "userId"),
        ({"orderId": "o" * 37}, "orderId"),
        ({"openid": "o" * 101}, "openid"),
        ({"reason": "r" * 65}, "reason"),
    ],
)
async def test_order_created_invalid_body_is_400_naming_the_field(
    client, spy, secret, changes, field
):
    body = created_body(**changes)
    response = await client.post(ORDER_CREATED, json=body, headers=secret)
    hidden = [body["openid"]] if "openid" in body else []
    message = await expect_refusal(response, 400, "INVALID_REQUEST", *hidden)
    assert field in message
    assert await spy.drain() == []


@integration
@pytest.mark.parametrize(
    ("raw", "error"),
    [(b"{not json", "INVALID_JSON"), (b"", "INVALID_JSON"), (b"[]", "INVALID_REQUEST")],
)
async def test_order_created_unreadable_body_is_400(client, spy, secret, raw, error):
    response = await client.post(
        ORDER_CREATED, data=raw, headers={**secret, "Content-Type": "application/json"}
    )
    await expect_refusal(response, 400, error)
    assert await spy.drain() == []


@integration
@pytest.mark.parametrize(("route", "key"), [(ORDER_CREATED, "amount"), (NOTIFY, "outTradeNo")])
async def test_a_key_given_twice_is_400_naming_it(client, spy, secret, route, key):
    """A JSON parser keeps the last of two equal keys, another reader perhaps the first:
    a body two readers would understand differently is refused, not guessed at."""
    body = created_body() if route == ORDER_CREATED else notify_body()
    text = json.dumps(body)
    raw = text[:-1] + f", {json.dumps(key)}: {json.dumps(body[key])}}}"
    response = await client.post(
        route, data=raw.encode(), headers={**secret, "Content-Type": "application/json"}
    )
    message = await expect_refusal(response, 400, "INVALID_REQUEST")
    assert key in message and "more than once" in message
    assert await spy.drain() == []


@integration
async def test_order_created_unconfirmed_publish_is_503_and_not_acknowledged(
    start_ingress, spy, secret
):
    client = await start_ingress()
    await client.app[PUBLISHER].close()
    response = await client.post(ORDER_CREATED, json=created_body(), headers=secret)
    await expect_refusal(response, 503, "UNAVAILABLE")
    assert await spy.drain() == []


@integration
async def test_order_created_logs_the_db_error_short_and_without_credentials(client, spy, secret):
    password = "cf-db-pw-" + uuid.uuid4().hex
    hygiene.register(password)
    db_error = f"connect ECONNREFUSED mysql://cloudfn:{password}@10.0.0.5:3306/app " + "x" * 500
    body = created_body(dbError=db_error)
    response = await client.post(ORDER_CREATED, json=body, headers=secret)
    assert response.status == 200
    await spy.drain()
    # The session's log file: what the JSON renderer really wrote.
    lines = [
        json.loads(line)
        for line in hygiene.SESSION_LOG.read_text(errors="replace").splitlines()
        if line.startswith("{") and body["outTradeNo"] in line
    ]
    [line] = [entry for entry in lines if entry["event"] == "order_created_published"]
    assert line["reason"] == "db_insert_failed"
    assert line["db_error"].startswith("connect ECONNREFUSED mysql://***@10.0.0.5")
    assert len(line["db_error"]) <= DB_ERROR_LOG_CHARS
    for entry in lines:
        assert password not in json.dumps(entry)
        assert body["openid"] not in json.dumps(entry)


def test_loggable_db_error() -> None:
    assert loggable_db_error(None) is None
    assert loggable_db_error("") is None
    assert loggable_db_error("Access denied (using password: YES)") == (
        "Access denied (using password: ***"
    )
    assert loggable_db_error({"code": "ER_DUP_ENTRY", "errno": 1062}) == (
        '{"code": "ER_DUP_ENTRY", "errno": 1062}'
    )
    assert loggable_db_error("line one\nline two") == "line one line two"
    assert loggable_db_error("test passed: 3 rows") == "test passed: 3 rows"


@pytest.mark.parametrize(
    ("db_error", "secret"),
    [
        ({"user": "cf", "pass": "hunter2-pw"}, "hunter2-pw"),
        ({"config": {"password": "two words"}}, "two words"),
        ({"headers": {"Authorization": "Basic Y2Y6aHVudGVy"}}, "Y2Y6aHVudGVy"),
        ('{"pass": "hunter2-pw"}', "hunter2-pw"),
        ('{"password": "two words"}', "words"),
        ("pass=hunter2-pw host=db", "hunter2-pw"),
        ("Authorization: Bearer eyJhbGciOi.x.y failed", "eyJhbGciOi"),
        ('{"authorization": "Basic Y2Y6aHVudGVy"}', "Y2Y6aHVudGVy"),
    ],
)
def test_loggable_db_error_blanks_pass_password_and_authorization(
    db_error: Any, secret: str
) -> None:
    """The cloud function's ``dbError`` is whatever its driver said, its config included."""
    logged = loggable_db_error(db_error)
    assert logged is not None and secret not in logged and "***" in logged
    long = loggable_db_error("y" * 1000)
    assert long is not None and len(long) == DB_ERROR_LOG_CHARS and long.endswith("…")


def test_order_id_for_the_cloud_functions_out_trade_no_is_stable() -> None:
    first = order_id_for("170634567890112345")
    assert first == order_id_for("170634567890112345")
    assert first != order_id_for("170634567890112346")
    assert re.fullmatch(r"order-1706345678901-[a-z0-9]{8}", first)
    assert len(first) <= 36
    other = order_id_for("P20251122ABCDEFGH")
    assert re.fullmatch(r"order-\d{13}-[a-z0-9]{8}", other)
    assert other != order_id_for("P20251122ABCDEFGH")  # fresh each time


# --- GET /api/prices/current -----------------------------------------------------------------


@integration
async def test_prices_are_the_seed_shape_in_yuan_without_auth(client):
    response = await client.get(PRICES)
    assert response.status == 200
    assert response.content_type == "application/json"
    text = await response.text()
    # Yuan as JSON numbers, two decimals, straight from the catalog's Decimals.
    assert '"packages": {"basic": 0.01, "premium": 29.90}' in text
    body = json.loads(text)
    assert body["success"] is True
    assert set(body["data"]) == {"packages", "effectiveAt", "updatedAt"}
    assert body["data"]["packages"] == {"basic": 0.01, "premium": 29.9}
    exact = json.loads(text, parse_float=Decimal)["data"]["packages"]
    assert exact == {"basic": Decimal("0.01"), "premium": Decimal("29.90")}
    for key in ("effectiveAt", "updatedAt"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["data"][key])
        datetime.fromisoformat(body["data"][key])


@integration
async def test_prices_follow_the_catalog_and_prices_effective_at(ingress_settings):
    catalog = {
        "basic": {"price_fen": 1999, "payment_status": "basic", "regenerate_grant": 5},
        "premium": {"price_fen": 10000, "payment_status": "premium", "regenerate_grant": 50},
    }
    settings = IngressSettings(
        **{
            **ingress_settings.model_dump(),
            "package_catalog": json.dumps(catalog),
            "prices_effective_at": "2025-01-01T08:00:00+08:00",
        }
    )
    async with TestClient(TestServer(build_app(settings, clock=lambda: NOW))) as client:
        text = await (await client.get(PRICES)).text()
    assert text == (
        '{"success": true, "data": {"packages": {"basic": 19.99, "premium": 100.00},'
        ' "effectiveAt": "2025-01-01T00:00:00.000Z", "updatedAt": "2025-01-01T00:00:00.000Z"}}'
    )


@integration
async def test_prices_effective_at_defaults_to_when_the_catalog_was_loaded(ingress_settings):
    before = datetime.now(UTC).replace(microsecond=0)
    app = build_app(ingress_settings, clock=lambda: NOW)
    after = datetime.now(UTC)
    async with TestClient(TestServer(app)) as client:
        data = (await (await client.get(PRICES)).json())["data"]
    effective = datetime.fromisoformat(data["effectiveAt"])
    assert before <= effective <= after
    assert data["updatedAt"] == data["effectiveAt"]


def test_prices_effective_at_is_read_from_the_environment(env):
    env.setenv("PRICES_EFFECTIVE_AT", "2025-03-01T12:30:00Z")
    settings = load_settings(IngressSettings)
    assert settings.prices_effective_at == datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    env.setenv("PRICES_EFFECTIVE_AT", "next tuesday")
    with pytest.raises(ConfigError, match="PRICES_EFFECTIVE_AT"):
        load_settings(IngressSettings)
    env.setenv("PRICES_EFFECTIVE_AT", "2025-03-01T12:30:00")
    effective_at = load_settings(IngressSettings).prices_effective_at
    assert effective_at is not None
    assert iso_utc(effective_at) == (
        "2025-03-01T12:30:00.000Z"  # no zone: UTC
    )


def test_price_list_and_dumps_never_go_through_a_float() -> None:
    answer = PriceList.of(DEFAULT_CATALOG, datetime(2025, 1, 1, tzinfo=UTC)).answer()
    assert answer["data"]["packages"] == {"basic": Decimal("0.01"), "premium": Decimal("29.90")}
    text = dumps({**answer, "note": "@dec@29.90@dec@", "tiny": Decimal("0.10")})
    assert '"packages": {"basic": 0.01, "premium": 29.90}' in text
    assert '"tiny": 0.10' in text
    assert '"note": "@dec@29.90@dec@"' in text
    assert json.loads(text)["data"]["effectiveAt"] == "2025-01-01T00:00:00.000Z"
    with pytest.raises(ValueError):
        dumps({"x": Decimal("NaN")})
