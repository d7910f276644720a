"""Event envelope and data models validate on both ends."""

from __future__ import annotations

import json
import re

import pytest

from paylane_common.broker.publisher import envelope_message, envelope_properties
from paylane_common.contract import events
from paylane_common.contract.events import OrderPaid, PaymentSucceeded, make_event, parse_event
from paylane_common.contract.ids import new_row_id
from paylane_common.runtime.exceptions import EventValidationError

USER = "user-1706345678901-xyz789"


def _payment() -> PaymentSucceeded:
    return PaymentSucceeded(out_trade_no="T123456", transaction_id="42", amount_total=990)


def test_roundtrip_and_amqp_properties() -> None:
    envelope = make_event(events.PAYMENT_SUCCEEDED, _payment(), "EV-1")
    parsed, data = parse_event(envelope.to_json())
    assert parsed.event_id == "EV-1"
    assert data == _payment()
    message = envelope_message(envelope)
    assert message.message_id == "EV-1"
    assert message.type == "payment.succeeded"
    assert message.correlation_id == "T123456"
    assert message.content_type == "application/json"
    assert message.delivery_mode.value == 2
    # What Publisher.publish sends: the same properties, built without an aio_pika.Message.
    properties = envelope_properties(envelope, {"x-test": "yes"})
    assert properties.message_type == message.type
    assert properties.delivery_mode == message.delivery_mode.value
    assert (properties.message_id, properties.correlation_id) == ("EV-1", "T123456")
    assert (properties.content_type, properties.content_encoding) == ("application/json", "utf-8")
    assert properties.headers == {"x-test": "yes"}


def test_wrong_data_model_is_refused_when_publishing() -> None:
    paid = OrderPaid(out_trade_no="T", user_id=USER, package_type="b", amount_total=1, paid_at="x")
    with pytest.raises(EventValidationError):
        make_event(events.PAYMENT_SUCCEEDED, paid)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "invalid envelope"),
        (b"[]", "invalid envelope"),
        (
            json.dumps(
                {
                    "event_id": "e",
                    "type": "payment.succeeded",
                    "occurred_at": "2026-01-01T00:00:00Z",
                    "data": {},
                }
            ).encode(),
            "invalid payment.succeeded data",
        ),
        (
            json.dumps(
                {
                    "event_id": "e",
                    "type": "nope.nope",
                    "occurred_at": "2026-01-01T00:00:00Z",
                    "data": {},
                }
            ).encode(),
            "unknown event type",
        ),
        (
            json.dumps(
                {
                    "event_id": "e",
                    "type": "order.paid",
                    "schema_version": 9,
                    "occurred_at": "2026-01-01T00:00:00Z",
                    "data": {},
                }
            ).encode(),
            "unsupported schema_version",
        ),
    ],
)
def test_invalid_messages_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(EventValidationError, match=reason):
        parse_event(body)


def _order_paid_body(user_id: object) -> bytes:
    return json.dumps(
        {
            "event_id": "e",
            "type": "order.paid",
            "occurred_at": "2026-01-01T00:00:00Z",
            "data": {
                "out_trade_no": "T",
                "user_id": user_id,
                "package_type": "basic",
                "amount_total": 1,
                "paid_at": "x",
            },
        }
    ).encode()


def test_user_ids_are_the_shared_tables_strings() -> None:
    _, data = parse_event(_order_paid_body(USER))
    assert data.user_id == USER
    # An integer id (the pre-release schema) or one longer than users.id is refused.
    for bad in (7, "", "u" * 37):
        with pytest.raises(EventValidationError, match=r"invalid order\.paid data"):
            parse_event(_order_paid_body(bad))


def test_new_row_ids_have_the_existing_systems_format() -> None:
    assert new_row_id("user", now_ms=1706345678901).startswith("user-1706345678901-")
    ids = {new_row_id(kind) for kind in ("user", "order", "refund", "log") for _ in range(50)}
    assert len(ids) == 200
    assert all(len(row_id) <= 36 for row_id in ids)
    assert all(re.fullmatch(r"(user|order|refund|log)-\d{13}-[a-z0-9]{8}", i) for i in ids)
    # Every character of the alphabet turns up, in every position (1,600 draws of 36).
    for position in range(8):
        assert len({row_id[-8 + position] for row_id in ids}) >= 30, position
    with pytest.raises(ValueError, match="36"):
        new_row_id("generation-too-long-a-kind")
