"""Events → client messages (no infrastructure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from paylane_common.contract import events
from paylane_common.contract.china_time import CHINA
from paylane_notifier.api import PushedMessage
from paylane_notifier.messages import ClientMessage, epoch_ms, from_event
from paylane_notifier.snapshot import parse_last_event_id
from services.notifier.tests.support import entitlement, granted_for
from tests.support.events import (
    fulfilment_settled,
    order_failed,
    order_paid,
    order_refunded,
    payment_succeeded,
)

USER = "user-1706345678901-xyz789"
KEYS = {
    "type",
    "out_trade_no",
    "status",
    "payment_status",
    "regenerate_count",
    "amount_refund",
    "generation_id",
    "reason",
    "event_id",
    "occurred_at",
}


@pytest.mark.parametrize(
    ("envelope", "expected"),
    [
        (
            # A business order's payment (package 'free'): pushed as it comes.
            order_paid(USER, "free", out_trade_no="o1", amount_total=1234).envelope,
            ("order.paid", "paid", None, None, None),
        ),
        (
            order_refunded(USER, "o1", 300, full=False).envelope,
            ("order.refunded", "paid", None, None, 300),
        ),
        (
            order_refunded(USER, "o1", 990, full=True).envelope,
            ("order.refunded", "refunded", None, None, 990),
        ),
        (
            entitlement(events.ENTITLEMENT_GRANTED, USER, "o1", "premium", 33),
            ("entitlement.granted", "paid", "premium", 33, None),
        ),
        (
            entitlement(events.ENTITLEMENT_REVOKED, USER, "o1", "free", 3),
            ("entitlement.revoked", "refunded", "free", 3, None),
        ),
        (
            entitlement(events.ENTITLEMENT_REVOKED, USER, "o1", "free", 3, revoked_for="review"),
            ("entitlement.revoked", "needs_review", "free", 3, None),
        ),
    ],
)
def test_events_become_client_messages(
    envelope: events.Envelope, expected: tuple[object, ...]
) -> None:
    routed = from_event(envelope, envelope.typed_data())
    assert routed is not None
    user_id, (message,) = routed
    assert user_id == USER
    body = json.loads(message.to_json())
    assert set(body) == KEYS
    assert (
        body["type"],
        body["status"],
        body["payment_status"],
        body["regenerate_count"],
        body["amount_refund"],
    ) == expected
    assert (body["out_trade_no"], body["event_id"]) == ("o1", envelope.event_id)
    assert body["occurred_at"].endswith("Z")
    assert message.id == str(epoch_ms(envelope.occurred_at))
    # What the OpenAPI document says a message is (docs/openapi/notifier.json).
    PushedMessage.model_validate_json(message.to_json())


@pytest.mark.parametrize("reason", ["closed", "expired", "failed"])
def test_an_order_that_ended_unpaid_is_pushed_failed_with_the_reason(reason: str) -> None:
    """The paying client hears that its order closed, expired or failed, and stops
    waiting for a payment."""
    envelope = order_failed(USER, "o1", reason).envelope  # type: ignore[arg-type]
    routed = from_event(envelope, envelope.typed_data())
    assert routed is not None
    user_id, (message,) = routed
    body = json.loads(message.to_json())
    assert user_id == USER and set(body) == KEYS
    assert (body["type"], body["status"], body["reason"]) == ("order.failed", "failed", reason)
    assert body["event_id"] == envelope.event_id
    PushedMessage.model_validate_json(message.to_json())


def test_a_grant_carrying_its_order_paid_is_pushed_as_both() -> None:
    """One delivery per payment: the ``entitlement.granted`` carries the ``order.paid`` it
    answers, and the client gets the two pushes it got from the two events."""
    paid = order_paid(USER, out_trade_no="o1", generation_id="gen-1").envelope
    granted = granted_for(paid, "premium", 33)
    routed = from_event(granted, granted.typed_data())
    assert routed is not None
    user_id, messages = routed
    # A package's order.paid alone is not pushed: it comes with its grant, once.
    assert from_event(paid, paid.typed_data()) is None
    assert user_id == USER and messages[0].event_id == paid.event_id
    assert [m.as_dict() for m in messages] == [
        {**messages[0].as_dict(), "type": "order.paid", "generation_id": "gen-1"},
        {**messages[1].as_dict(), "type": "entitlement.granted", "event_id": granted.event_id},
    ]
    assert (messages[1].payment_status, messages[1].regenerate_count) == ("premium", 33)


def test_events_for_other_services_are_not_pushed() -> None:
    assert from_event(*payment_succeeded("o1")) is None


def test_ids_are_integer_milliseconds_since_the_epoch() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert epoch_ms(moment) == 1767323045678
    assert epoch_ms(moment.replace(tzinfo=None)) == 1767323045678
    assert epoch_ms(moment.astimezone(CHINA)) == 1767323045678
    message = ClientMessage("order.state", "o1", "paid", "basic", 13, None, moment)
    assert message.id == "1767323045678"
    assert json.loads(message.to_json())["occurred_at"] == "2026-01-02T03:04:05.678901Z"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("1700000000123", 1700000000123),
        (" 42 ", 42),
        ("-1", None),
        ("abc", None),
        ("١٢", None),
        ("99999999999999999999", None),
    ],
)
def test_parse_last_event_id(value: str | None, expected: int | None) -> None:
    assert parse_last_event_id(value) == expected


@pytest.mark.parametrize("status", ["success", "failed"])
def test_a_business_orders_fulfilment_is_pushed_to_its_client(status: str) -> None:
    """The paying client of a business order hears that its goods were delivered (or not):
    the order stays ``paid`` (a refund of a failed one is an ``order.refunded`` of its own)."""
    envelope = fulfilment_settled(USER, "o1", status).envelope  # type: ignore[arg-type]
    routed = from_event(envelope, envelope.typed_data())
    assert routed is not None
    user_id, (message,) = routed
    body = json.loads(message.to_json())
    assert user_id == USER and set(body) == KEYS
    assert (body["type"], body["status"], body["out_trade_no"]) == (envelope.type, "paid", "o1")
    assert envelope.type == f"fulfilment.{'succeeded' if status == 'success' else 'failed'}"
    PushedMessage.model_validate_json(message.to_json())
