"""RabbitMQ topology (docs/events.md): exchange ``paylane``, quorum queues with per-delay retry
queues and a DLQ, and the stream ``paylane.log`` as the replay source of what came from
outside (:data:`LOG_KEYS`).

The stream holds only the events paylane was told (WeChat Pay's notifications, the cloud
function's calls): nothing else has them. The events paylane derives (``order.*``,
``entitlement.*``) are written to the producer's outbox in MySQL in the transaction of
their effect and kept there ``RETENTION_DAYS`` once published, so ``paylane replay
outbox`` replays them from there; a second copy in the stream would cost the broker a
write per event for nothing. Brokers declared before had the stream bound ``#``:
:func:`declare_topology` removes that binding.

By default every process declares the whole topology at start (declaration is
idempotent), so a message published before its consumer first ran is still queued for
it. Declaring needs the broker's *configure* permission on every name, which a service
holding least privilege does not have: with ``AMQP_DECLARE_TOPOLOGY=false`` it only
checks (passively) that what it uses exists, and the topology comes from
``deploy/rabbitmq/definitions.json`` or ``paylane topology`` run by the admin identity.

Every queue and the stream ask for :data:`REPLICAS` replicas when they are created, which
a cluster gives (docs/operations.md, "A RabbitMQ cluster").

Nothing is published through the default exchange ``amq.default``: a user who may write
to it may put any message into any queue, around the topic permissions of ``paylane``.
A consumer puts its retries, dead letters and put-backs into its own queues through its
queue's direct exchange ``<queue>.forward`` (:attr:`QueueSpec.forward_exchange`), bound to
the queue, its retry queues and its DLQ by their names; only that service's broker user
(and the administrator) may write to it (deploy/rabbitmq/permissions.json).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from pamqp.common import Arguments

from paylane_common.contract import events
from paylane_common.runtime.exceptions import ConfigError

EXCHANGE = "paylane"
#: Fanout exchange of advice between the services, never events: ingress announces "busy"
#: there and the consumers yield meanwhile (pressure.py). Transient messages, no queue of
#: its own: each consumer process binds an exclusive one.
SIGNALS_EXCHANGE = "paylane.signals"
#: Delays of the retry queues ``<queue>.retry.<delay>``. A retry waits in the shortest one
#: not shorter than asked (the longest when none is); they match the consumers' backoff.
RETRY_DELAYS_S: tuple[float, ...] = (1, 2, 4, 8, 16, 30)
#: ``<queue>.forward``: a consumer queue's own exchange (:attr:`QueueSpec.forward_exchange`).
FORWARD_SUFFIX = ".forward"
LOG_STREAM = "paylane.log"
LOG_STREAM_MAX_AGE = "7D"
DLQ_DELIVERY_LIMIT = 1_000_000
#: Replicas of every queue and of the stream, on as many nodes, chosen when it is created:
#: a quorum queue (and the stream) stays available while a majority of them is up, so three
#: survive the loss of any one node. A cluster of fewer nodes gives one a node (a single
#: broker: one); more replicas later: ``rabbitmq-queues grow``.
REPLICAS = 3
QUORUM_REPLICATION = "x-quorum-initial-group-size"
STREAM_REPLICATION = "x-initial-cluster-size"

T = TypeVar("T")
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class QueueSpec:
    """A consumer's durable quorum queue ``<service>.<purpose>``."""

    name: str
    #: Bound by whoever declares the topology (every process, definitions.json).
    routing_keys: tuple[str, ...]
    #: Deliveries before the broker dead-letters (crash loops, poison messages).
    delivery_limit: int = 10
    #: One parking queue per delay: a queue-level TTL expires messages in arrival order,
    #: so every message of a queue waits the same and none holds up a shorter one.
    retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S
    #: For records that may be lost rather than pile up (:data:`ORDER_REJECTIONS`): the
    #: queue and its DLQ keep at most this many messages, dropping the oldest (RabbitMQ's
    #: ``drop-head``, whose dead-lettering is at-most-once). None: events, never dropped; a
    #: full queue refuses the publish (``reject-publish``), which the publisher sees.
    max_length: int | None = None
    #: Routing keys sent to the queue's service only while it needs them: declared by no one,
    #: bound and unbound by that service itself (paylane_order.bindings). Each binding is
    #: a quorum delivery per event, the largest share of a payment's cost in RabbitMQ.
    optional_keys: tuple[str, ...] = ()

    @property
    def event_types(self) -> tuple[str, ...]:
        """Every type the queue's consumer handles: its bound keys and its optional ones
        (what a replay may send it)."""
        return (*self.routing_keys, *self.optional_keys)

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    @property
    def forward_exchange(self) -> str:
        """The direct exchange to this queue, its retry queues and its DLQ, each bound
        with its own name as the routing key: what the consumer publishes its retries,
        dead letters and put-backs to (never ``amq.default``)."""
        return f"{self.name}{FORWARD_SUFFIX}"

    @property
    def forward_targets(self) -> tuple[str, ...]:
        """The queues bound to :attr:`forward_exchange` (routing key = queue name)."""
        return (self.name, *self.retry_queues, self.dlq)

    def retry_queue_for(self, delay_s: float) -> str:
        """The parking queue a retry after ``delay_s`` waits in: expired messages
        dead-letter back to ``name``."""
        delays = sorted(self.retry_delays_s)
        chosen = next((d for d in delays if d >= delay_s), delays[-1])
        return f"{self.name}.retry.{_delay_label(chosen)}"

    @property
    def retry_queues(self) -> tuple[str, ...]:
        return tuple(self.retry_queue_for(delay) for delay in self.retry_delays_s)

    def arguments(self) -> Arguments:
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            QUORUM_REPLICATION: REPLICAS,
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.dlq,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        if self.max_length is not None:
            # At-least-once dead-lettering requires reject-publish: at-most-once here.
            del arguments["x-dead-letter-strategy"]
            arguments |= {"x-overflow": "drop-head", "x-max-length": self.max_length}
        return arguments

    def dlq_arguments(self) -> Arguments:
        # Explicit and huge: from RabbitMQ 4.0 quorum queues default to a delivery limit
        # of 20 and our DLQs have no dead-letter target, so peeking (dlq list, dry runs)
        # would otherwise silently drop dead letters.
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            QUORUM_REPLICATION: REPLICAS,
            "x-delivery-limit": DLQ_DELIVERY_LIMIT,
        }
        if self.max_length is not None:
            arguments |= {"x-overflow": "drop-head", "x-max-length": self.max_length}
        return arguments

    def retry_arguments(self, delay_s: float) -> Arguments:
        return {
            "x-queue-type": "quorum",
            QUORUM_REPLICATION: REPLICAS,
            "x-message-ttl": round(delay_s * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }


def log_stream_arguments() -> Arguments:
    """The stream ``paylane.log``: replicated, events kept 7 days."""
    return {
        "x-queue-type": "stream",
        STREAM_REPLICATION: REPLICAS,
        "x-max-age": LOG_STREAM_MAX_AGE,
    }


def _delay_label(delay_s: float) -> str:
    """``1`` → ``1s``, ``0.25`` → ``250ms``: part of a queue name."""
    ms = round(delay_s * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


ORDER_PAYMENTS = QueueSpec(
    "order.payments",
    (
        events.PAYMENT_SUCCEEDED,
        events.ORDER_CREATED,
        events.REFUND_SUCCEEDED,
        events.REFUND_CLOSED,
        events.REFUND_ABNORMAL,
    ),
    # Shipping declared to WeChat once an order's effect is done (docs/shipping.md): the
    # plan granted, or the backend's fulfilment confirmed. Bound only with SHIPPING_UPLOAD
    # on: every payment's grant would otherwise come here for nothing.
    optional_keys=(events.ENTITLEMENT_GRANTED, events.FULFILMENT_SUCCEEDED),
)
ENTITLEMENT_ORDERS = QueueSpec(
    "entitlement.orders", (events.ORDER_PAID, events.ORDER_REFUNDED, events.ORDER_REVOKED)
)
#: The events the order service sends to the backend as webhooks (paylane_order.webhooks):
#: one delivery row per subscribed endpoint is written before the message is acked. Only
#: the types some enabled endpoint subscribes to are bound, by the order service: none
#: while there is no endpoint, so a team without webhooks pays nothing for them.
ORDER_WEBHOOKS = QueueSpec(
    "order.webhooks",
    (),
    optional_keys=(
        events.ORDER_PAID,
        events.ORDER_REFUNDED,
        events.ORDER_FAILED,
        events.REFUND_SUCCEEDED,
        events.REFUND_ABNORMAL,
        events.ENTITLEMENT_GRANTED,
        events.ENTITLEMENT_REVOKED,
        "fulfilment.succeeded",
        "fulfilment.failed",
    ),
)
#: Routing keys every notifier replica binds its own exclusive queue to: one delivery per
#: payment (``entitlement.granted`` carries the ``order.paid`` it answers, see
#: ``paylane_notifier.messages``); refunds also need ``order.refunded``, as a partial one
#: changes no entitlement, and an order that ends unpaid ``order.failed``; a business
#: order's client hears its fulfilment (``fulfilment.*``).
NOTIFIER_KEYS = (
    # A business order's payment (package 'free': no grant follows, so its order.paid is
    # the one push of it; a package's comes with its grant).
    events.ORDER_PAID,
    events.ENTITLEMENT_GRANTED,
    events.ENTITLEMENT_REVOKED,
    events.ORDER_REFUNDED,
    events.ORDER_FAILED,
    *events.FULFILMENT_EVENTS,
)

#: The notifications ingress rejected, as records (``notification.rejected``), which the
#: order service writes to ``notifications_rejected`` for the console. Bounded: a flood of
#: forged notifications while the order service is away drops the oldest records, never
#: fills the broker.
ORDER_REJECTIONS = QueueSpec("order.rejections", (events.NOTIFICATION_REJECTED,), max_length=10_000)

QUEUES: tuple[QueueSpec, ...] = (
    ORDER_PAYMENTS,
    ENTITLEMENT_ORDERS,
    ORDER_WEBHOOKS,
    ORDER_REJECTIONS,
)
#: The routing keys ``paylane.log`` is bound to: the events that came from outside.
LOG_KEYS: tuple[str, ...] = events.EXTERNAL_EVENTS
#: The stream's binding before it was narrowed to :data:`LOG_KEYS`; removed on declaration.
LEGACY_LOG_KEY = "#"


def forward_exchange_of(queue: str) -> str:
    """The forward exchange leading to ``queue`` (a topology queue, its retry queues or
    its DLQ); ``""``, the default exchange, for a queue outside the topology."""
    for spec in QUEUES:
        if queue in spec.forward_targets:
            return spec.forward_exchange
    return ""


async def declare_exchange(channel: AbstractChannel, *, passive: bool = False) -> AbstractExchange:
    """The exchange ``paylane``; ``passive``: only check that it exists (no permission
    needed)."""
    if passive:
        return await _existing(channel.declare_exchange(EXCHANGE, passive=True), EXCHANGE)
    return await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare_signals_exchange(
    channel: AbstractChannel, *, passive: bool = False
) -> AbstractExchange:
    """The exchange ``paylane.signals`` (pressure.py); ``passive`` as for the events'."""
    if passive:
        declaration = channel.declare_exchange(SIGNALS_EXCHANGE, passive=True)
        return await _existing(declaration, SIGNALS_EXCHANGE)
    return await channel.declare_exchange(
        SIGNALS_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def existing_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
    """A queue that must already exist (passive declaration: no permission needed)."""
    return await _existing(channel.declare_queue(name, passive=True), name)


async def _existing(declaration: Awaitable[T], name: str) -> T:
    try:
        return await declaration
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise ConfigError(
            f"RabbitMQ has no {name!r}: with AMQP_DECLARE_TOPOLOGY=false the topology must "
            "be declared beforehand (deploy/rabbitmq/definitions.json or `paylane topology`)"
        ) from None


async def declare_queue(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    """Declare ``spec`` with its DLQ and retry queues, bound to the exchange, and its
    forward exchange bound to all three. Adds exchanges and bindings only: a broker
    declared before keeps its queues and their arguments as they are."""
    exchange = await declare_exchange(channel)
    forward = await channel.declare_exchange(
        spec.forward_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    dlq = await _declare(channel, spec.dlq, spec.dlq_arguments())
    await dlq.bind(forward, routing_key=spec.dlq)
    for delay in spec.retry_delays_s:
        name = spec.retry_queue_for(delay)
        retry = await _declare(channel, name, spec.retry_arguments(delay))
        await retry.bind(forward, routing_key=name)
    queue = await _declare(channel, spec.name, spec.arguments())
    for key in spec.routing_keys:
        await queue.bind(exchange, routing_key=key)
    await queue.bind(forward, routing_key=spec.name)
    return queue


async def existing_forward_exchange(channel: AbstractChannel, spec: QueueSpec) -> AbstractExchange:
    """``spec``'s forward exchange, which must already exist (passive)."""
    name = spec.forward_exchange
    return await _existing(channel.declare_exchange(name, passive=True), name)


async def declare_topology(channel: AbstractChannel) -> AbstractExchange:
    """Declare the exchanges, the log stream and every consumer queue."""
    exchange = await declare_exchange(channel)
    await declare_signals_exchange(channel)
    stream = await _declare(channel, LOG_STREAM, log_stream_arguments())
    for key in LOG_KEYS:
        await stream.bind(exchange, routing_key=key)
    # Unbinding what is not bound is a no-op for RabbitMQ: safe on every start.
    await stream.unbind(exchange, routing_key=LEGACY_LOG_KEY)
    for spec in QUEUES:
        await declare_queue(channel, spec)
    return exchange


async def _declare(channel: AbstractChannel, name: str, arguments: Arguments) -> AbstractQueue:
    """A durable queue with ``arguments``; one created before paylane asked for replicas
    keeps the replicas it has, and is declared without asking."""
    if await _replication_refused(channel, name, arguments):
        arguments = {
            k: v
            for k, v in (arguments or {}).items()
            if k not in (QUORUM_REPLICATION, STREAM_REPLICATION)
        }
    return await channel.declare_queue(name, durable=True, arguments=arguments)


async def _replication_refused(channel: AbstractChannel, name: str, arguments: Arguments) -> bool:
    """Whether the broker holds ``name`` with other replication arguments: it compares them
    on redeclaration (``PRECONDITION_FAILED``, checked on RabbitMQ 3.10), and fixes them
    when the queue is created. Asked on a channel of its own, which the refusal closes."""
    underlay = await channel.get_underlay_channel()
    probe = await underlay.connection.channel(publisher_confirms=False)
    try:
        await probe.queue_declare(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        refused = next(
            (key for key in (QUORUM_REPLICATION, STREAM_REPLICATION) if f"'{key}'" in str(exc)),
            None,
        )
        if refused is None:
            raise  # another argument differs: the declaration itself says which
        log.warning("queue_replication_unchanged", queue=name, argument=refused, asked=REPLICAS)
        return True
    finally:
        if not probe.is_closed:
            await probe.close()
    return False


def definitions(vhost: str = "/") -> dict[str, list[dict[str, Any]]]:
    """The topology as RabbitMQ's definitions (``rabbitmqctl import_definitions``, or
    ``load_definitions`` at boot): what deploy/rabbitmq/definitions.json holds, generated
    from the declarations above by ``make topology`` (a test keeps the file current).
    Users and permissions are the operator's, never here."""

    def exchange(name: str, kind: str) -> dict[str, Any]:
        return {"name": name, "vhost": vhost, "type": kind, "durable": True,
                "auto_delete": False, "internal": False, "arguments": {}}  # fmt: skip

    def queue(name: str, arguments: Arguments) -> dict[str, Any]:
        return {"name": name, "vhost": vhost, "durable": True, "auto_delete": False,
                "arguments": dict(arguments or {})}  # fmt: skip

    def binding(source: str, destination: str, key: str) -> dict[str, Any]:
        return {"source": source, "vhost": vhost, "destination": destination,
                "destination_type": "queue", "routing_key": key, "arguments": {}}  # fmt: skip

    queues = [queue(LOG_STREAM, log_stream_arguments())]
    for spec in QUEUES:
        queues.append(queue(spec.dlq, spec.dlq_arguments()))
        queues += [
            queue(spec.retry_queue_for(d), spec.retry_arguments(d)) for d in spec.retry_delays_s
        ]
        queues.append(queue(spec.name, spec.arguments()))
    bindings = [binding(EXCHANGE, LOG_STREAM, key) for key in LOG_KEYS]
    bindings += [binding(EXCHANGE, spec.name, key) for spec in QUEUES for key in spec.routing_keys]
    bindings += [
        binding(spec.forward_exchange, target, target)
        for spec in QUEUES
        for target in spec.forward_targets
    ]
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": [
            exchange(EXCHANGE, "topic"),
            exchange(SIGNALS_EXCHANGE, "fanout"),
            *(exchange(spec.forward_exchange, "direct") for spec in QUEUES),
        ],
        "queues": queues,
        "bindings": bindings,
    }


def definitions_json() -> str:
    """:func:`definitions` as deploy/rabbitmq/definitions.json is written."""
    return json.dumps(definitions(), indent=2) + "\n"


if __name__ == "__main__":  # `make topology`
    sys.stdout.write(definitions_json())
