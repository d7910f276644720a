"""Who may publish what (identities.py): the rule itself; the broker's side of it (the
validated user_id, the permissions) is in tests/integration/test_least_privilege.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage

from paylane_common.broker.identities import (
    ORIGINAL_USER_HEADER,
    IdentityCheck,
    Publishers,
    forwarded_headers,
)
from paylane_common.broker.replay import describe_dead_letter, dlq_copy
from paylane_common.contract import events
from paylane_common.delivery.consumer import ORIGIN_HEADER, REASON_HEADER

PUBLISHERS = Publishers()
ORDER = IdentityCheck(PUBLISHERS, own="paylane-order")
ENTITLEMENT = IdentityCheck(PUBLISHERS, own="paylane-entitlement")
NOTIFIER = IdentityCheck(PUBLISHERS, own="paylane-notifier")


def message(user_id: str | None, **headers: Any) -> AbstractIncomingMessage:
    """What the check reads of a delivery: its user_id and headers."""
    return cast(AbstractIncomingMessage, SimpleNamespace(user_id=user_id, headers=headers))


def accepted(check: IdentityCheck, event_type: str, delivery: AbstractIncomingMessage) -> bool:
    return check.refusal(event_type, check.publisher(delivery)) is None


@pytest.mark.parametrize(
    ("check", "event_type", "publisher", "ok"),
    [
        (ORDER, events.PAYMENT_SUCCEEDED, "paylane-ingress", True),
        (ORDER, events.PAYMENT_SUCCEEDED, "paylane-order", True),  # the reconciler
        (ORDER, events.REFUND_ABNORMAL, "paylane-ingress", True),
        (ORDER, events.ORDER_CREATED, "paylane-ingress", True),
        (ORDER, events.PAYMENT_SUCCEEDED, "paylane-entitlement", False),  # issue 24
        (ORDER, events.PAYMENT_SUCCEEDED, "paylane-notifier", False),
        (ORDER, events.PAYMENT_SUCCEEDED, "paylane", False),  # the admin, not replaying
        (ENTITLEMENT, events.ORDER_PAID, "paylane-order", True),
        (ENTITLEMENT, events.ORDER_REFUNDED, "paylane-order", True),
        (ENTITLEMENT, events.ORDER_PAID, "paylane-ingress", False),
        (NOTIFIER, events.ENTITLEMENT_GRANTED, "paylane-entitlement", True),
        (NOTIFIER, events.ENTITLEMENT_GRANTED, "paylane-order", False),
        (NOTIFIER, events.ORDER_REFUNDED, "paylane-order", True),
        (NOTIFIER, events.ORDER_REFUNDED, "paylane-entitlement", False),
        (NOTIFIER, "made.up", "paylane-order", False),
    ],
)
def test_each_event_type_only_from_its_publisher(
    check: IdentityCheck, event_type: str, publisher: str, ok: bool
) -> None:
    assert accepted(check, event_type, message(publisher)) is ok


def test_no_user_id_is_refused_with_a_reason() -> None:
    reason = ORDER.refusal(events.PAYMENT_SUCCEEDED, ORDER.publisher(message(None)))
    assert reason == "publisher refused: payment.succeeded carries no user_id"
    reason = ENTITLEMENT.refusal(events.ORDER_PAID, "paylane-ingress")
    assert reason == (
        "publisher refused: order.paid from 'paylane-ingress', accepted from paylane-order"
    )


def test_the_original_publisher_is_believed_from_a_forwarder_only() -> None:
    claims_order = {ORIGINAL_USER_HEADER: "paylane-order"}
    # Its own retries and dead letters, and the replayer's copies: the original counts.
    assert ENTITLEMENT.publisher(message("paylane-entitlement", **claims_order)) == (
        "paylane-order"
    )
    assert ENTITLEMENT.publisher(message("paylane", **claims_order)) == "paylane-order"
    assert accepted(ENTITLEMENT, events.ORDER_PAID, message("paylane", **claims_order))
    # Anyone else claiming to forward order's event is taken for what it is.
    forged = message("paylane-ingress", **claims_order)
    assert ENTITLEMENT.publisher(forged) == "paylane-ingress"
    assert not accepted(ENTITLEMENT, events.ORDER_PAID, forged)
    # A replay of something that was refused stays refused.
    replayed = message("paylane", **{ORIGINAL_USER_HEADER: "paylane-ingress"})
    assert not accepted(ENTITLEMENT, events.ORDER_PAID, replayed)
    # A replay naming no original is the replayer's own.
    assert not accepted(ENTITLEMENT, events.ORDER_PAID, message("paylane"))


def test_development_everyone_is_guest() -> None:
    """Every process connects as guest: every event is from the consumer's own user."""
    for event_type in (events.PAYMENT_SUCCEEDED, events.ORDER_PAID, events.ENTITLEMENT_GRANTED):
        assert accepted(IdentityCheck(PUBLISHERS, own="guest"), event_type, message("guest"))


def test_a_forward_names_its_publisher_and_nothing_else_does() -> None:
    headers = {ORIGINAL_USER_HEADER: "claimed", "x-other": 1}
    assert forwarded_headers(headers, "paylane-ingress") == {
        ORIGINAL_USER_HEADER: "paylane-ingress",
        "x-other": 1,
    }
    assert forwarded_headers(headers, None) == {"x-other": 1}


@pytest.mark.parametrize("replayer", ["paylane-order", PUBLISHERS.replay])
def test_a_dead_letter_refused_for_no_publisher_stays_refused_once_replayed(
    replayer: str,
) -> None:
    """Refused for carrying no user_id, it was dead-lettered by the consumer (so under
    the consumer's own user, with no original publisher). Replayed, by the console under
    the order service's identity or by ``paylane replay dlq``, it must not pass for that
    identity's own event."""
    dead = SimpleNamespace(  # what dlq_copy and describe_dead_letter read of a delivery
        body=b"{}",
        headers={
            REASON_HEADER: "publisher refused: refund.succeeded carries no user_id",
            ORIGIN_HEADER: "order.payments",
        },
        content_type="application/json",
        content_encoding=None,
        priority=None,
        correlation_id="T1",
        reply_to=None,
        message_id="e1",
        timestamp=None,
        type=events.REFUND_SUCCEEDED,
        app_id=None,
        user_id="paylane-order",
    )
    letter = cast(AbstractIncomingMessage, dead)
    copy = dlq_copy(letter, describe_dead_letter(letter, "order.payments"))
    replayed = message(replayer, **(copy.headers or {}))
    assert not accepted(ORDER, events.REFUND_SUCCEEDED, replayed)
