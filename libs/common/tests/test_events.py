"""Event envelope and data models validate on both ends."""

from __future__ import annotations

import json

import pytest

from paylane_common import events
from paylane_common.events import OrderPaid, PaymentSucceeded, make_event, parse_event
from paylane_common.exceptions import EventValidationError
from paylane_common.publisher import envelope_message


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


def test_wrong_data_model_is_refused_when_publishing() -> None:
    paid = OrderPaid(out_trade_no="T", user_id=1, package_type="b", amount_total=1, paid_at="x")
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
