"""Who published an event: RabbitMQ's validated ``user_id``, checked against who may.

Every publisher sets the AMQP property ``user_id`` to the user name of its connection
(:func:`connection_user`); RabbitMQ refuses a message whose ``user_id`` is not the
connection's user (no paylane user has the ``impersonator`` tag), so it cannot be forged.
Each consumer takes an event type only from the identity that publishes it
(:meth:`Publishers.expected`): ``payment.*``, ``refund.*`` and ``order.created`` from
ingress (and order, whose reconciler publishes payments and refunds it found itself),
``order.*`` and ``fulfilment.*`` from order, ``entitlement.*`` from entitlement, and
``notification.rejected`` (a record) from ingress. Anything else is dead-lettered with
the reason (consumer.py).

A message may come back to its queue published by someone else than its publisher:

* the consumer's own retries, put-backs and dead letters (published by its own user
  through its queue's forward exchange, topology.py);
* a replay (``paylane replay``, run by the administrator's identity,
  ``AMQP_REPLAY_USER``).

Those *forwarders* carry the publisher the message first had in
:data:`ORIGINAL_USER_HEADER`, and the consumer checks that one instead. The header is
believed only from a forwarder: from anyone else the ``user_id`` is the publisher.

A service's own identity is always accepted on its own queue: its forwards come back with
it, and no other user may write to its queue (deploy/rabbitmq/permissions.json). That is
also the development rule: where every process connects as ``guest``, every event is
published by the consumer's own identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from paylane_common.contract import events

#: The publisher a forwarded message first had (its validated ``user_id`` then).
ORIGINAL_USER_HEADER = "x-paylane-original-user"
#: The original publisher of a forwarded copy whose publisher was never known (a message
#: refused for carrying no ``user_id``): no consumer accepts it, so that a replay made
#: under a service's own identity cannot pass such a message off as that service's.
UNKNOWN_PUBLISHER = "(unknown)"
#: RabbitMQ's user when a URL names none.
DEFAULT_USER = "guest"


def connection_user(connection: AbstractConnection) -> str:
    """The user name ``connection`` logged in with: the ``user_id`` RabbitMQ accepts."""
    url = getattr(connection, "url", None)  # aio-pika's Connection; not on the ABC
    return (url.user if url is not None else None) or DEFAULT_USER


@dataclass(frozen=True)
class Publishers:
    """The broker users that publish each event type (settings ``AMQP_INGRESS_USER``,
    ``AMQP_ORDER_USER``, ``AMQP_ENTITLEMENT_USER``, ``AMQP_REPLAY_USER``); the defaults
    are deploy/rabbitmq's."""

    ingress: str = "paylane-ingress"
    order: str = "paylane-order"
    entitlement: str = "paylane-entitlement"
    #: Replays: published by this identity, with the original publisher in the header.
    replay: str = "paylane"

    def expected(self, event_type: str) -> frozenset[str]:
        """Who may publish ``event_type`` (empty: nobody)."""
        if event_type in (events.ORDER_CREATED, events.NOTIFICATION_REJECTED):
            return frozenset({self.ingress})
        if event_type.startswith(("payment.", "refund.")):
            return frozenset({self.ingress, self.order})  # the reconciler's findings
        if event_type.startswith(("order.", "fulfilment.")):
            return frozenset({self.order})
        if event_type.startswith("entitlement."):
            return frozenset({self.entitlement})
        return frozenset()

    def of_producer(self, producer: str) -> str | None:
        """The identity of an outbox producer (``order``, ``entitlement``)."""
        return {"order": self.order, "entitlement": self.entitlement}.get(producer)


@dataclass(frozen=True)
class IdentityCheck:
    """What one consumer accepts: ``own`` is its connection's user."""

    publishers: Publishers
    own: str

    def publisher(self, message: AbstractIncomingMessage) -> str | None:
        """The identity that published ``message``: its ``user_id``, or the original
        publisher a forwarder (this consumer's own user, the replayer) recorded."""
        user = message.user_id
        if user in (self.own, self.publishers.replay):
            original = _text((message.headers or {}).get(ORIGINAL_USER_HEADER))
            if original:
                return original
        return user

    def refusal(self, event_type: str, publisher: str | None) -> str | None:
        """Why an event of ``event_type`` from ``publisher`` is refused; None: accepted."""
        if publisher is None:
            return f"publisher refused: {event_type} carries no user_id"
        if publisher == self.own or publisher in self.publishers.expected(event_type):
            return None
        allowed = ", ".join(sorted(self.publishers.expected(event_type))) or "nobody"
        return f"publisher refused: {event_type} from {publisher!r}, accepted from {allowed}"


def forwarded_headers(headers: Mapping[str, Any], publisher: str | None) -> dict[str, Any]:
    """``headers`` with :data:`ORIGINAL_USER_HEADER` set to ``publisher`` (removed when
    unknown): what a forward of the message carries."""
    forwarded = {k: v for k, v in headers.items() if k != ORIGINAL_USER_HEADER}
    if publisher:
        forwarded[ORIGINAL_USER_HEADER] = publisher
    return forwarded


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None
