"""The order service's optional bindings (docs/events.md, "Bindings the order service
keeps"): the events it is sent only while a feature of it needs them.

Each binding of the exchange ``paylane`` to a quorum queue is a replicated delivery per
event, and deliveries are most of a payment's cost in RabbitMQ (docs/performance.md).
Two sets of the order service's serve features a team may not use:

* ``order.webhooks`` is bound to the event types some enabled webhook endpoint subscribes
  to, and to nothing while there is none;
* ``order.payments`` gets ``entitlement.granted`` and ``fulfilment.succeeded`` (after
  which an order's shipping is declared) only with ``SHIPPING_UPLOAD`` on.

:meth:`OptionalBindings.reconcile` takes the lease ``paylane.bindings`` (migration
0018), reads what is wanted, binds it and unbinds every other optional key (both are
idempotent in RabbitMQ, so the broker's bindings need not be read). Every change of the
endpoints reconciles after it committed, under the lease: whichever replica reconciles
last has read every change before it, so the bindings end as the endpoints' latest state
asks. A new endpoint is answered only once its types are bound (an event published before
that was published before the endpoint existed). What changes elsewhere (an endpoint the
dispatcher disabled or ``paylane webhooks enable`` enabled, a broker reconnected to, a
definitions import) :class:`BindingsKeeper` catches up with within seconds.

The order service's broker user may bind those two queues, and only with the keys of
events it handles (deploy/rabbitmq/permissions.json): a broker refusing it is a
configuration error, said at start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import aio_pika
import aiomysql
import aiormq
import structlog
from aio_pika.abc import AbstractRobustConnection

from paylane_common.broker.amqp import close_quietly
from paylane_common.broker.topology import EXCHANGE, ORDER_PAYMENTS, ORDER_WEBHOOKS
from paylane_common.runtime.background import BackgroundLoop
from paylane_common.runtime.exceptions import ConfigError
from paylane_common.storage.leases import Lease

from .webhooks.store import WebhookStore

log = structlog.get_logger(__name__)

#: How long a change waits for another replica's reconciliation to end.
WAIT_S = 10.0
#: How often :class:`BindingsKeeper` compares the endpoints with what it bound last.
KEEP_INTERVAL_S = 5.0
#: How often it reconciles whatever it compared (a definitions import, an operator).
FULL_INTERVAL_S = 60.0
#: The broker's share of one reconciliation at most.
APPLY_TIMEOUT_S = 10.0


class BindingsUnavailable(RuntimeError):
    """The bindings could not be changed now (the lease held elsewhere, the broker away)."""


class OptionalBindings:
    LOCK = "paylane.bindings"

    def __init__(
        self, pool: aiomysql.Pool, connection: AbstractRobustConnection, *, shipping: bool
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._shipping = shipping
        self._bound: dict[str, tuple[str, ...]] | None = None  # as last reconciled
        self._generation = 0  # one more at every reconnection
        # A broker reconnected to may be another (rebuilt, a new node): bound again soon.
        connection.reconnect_callbacks.add(self._forget)

    def _forget(self, *_: object) -> None:
        self._bound = None
        self._generation += 1

    async def wanted(self) -> dict[str, tuple[str, ...]]:
        """The optional keys wanted per queue now."""
        return {
            ORDER_WEBHOOKS.name: await self._subscribed(),
            ORDER_PAYMENTS.name: ORDER_PAYMENTS.optional_keys if self._shipping else (),
        }

    @property
    def bound(self) -> Mapping[str, tuple[str, ...]] | None:
        """The optional keys bound per queue by this replica's last reconciliation."""
        return self._bound

    async def reconcile(self, wait_s: float = WAIT_S) -> dict[str, tuple[str, ...]]:
        """Bind what is wanted now, unbind the rest; the keys bound per queue. Raises
        :class:`BindingsUnavailable`, or ``ConfigError`` when the broker refuses."""
        try:
            async with Lease(self._pool, self.LOCK).held(wait_s) as held:
                if not held:
                    raise BindingsUnavailable("another replica is changing the bindings")
                generation, before = self._generation, self._bound
                # Unknown until done: a pass failing halfway leaves the broker unlike both.
                self._bound = None
                wanted = await self.wanted()
                await self._apply(wanted)
        except aiormq.exceptions.ChannelAccessRefused as exc:
            raise ConfigError(
                "the order service's RabbitMQ user may not bind order.webhooks and"
                " order.payments to the exchange 'paylane': load"
                f" deploy/rabbitmq/permissions.json again (CHANGELOG): {exc}"
            ) from None
        except (
            aiormq.exceptions.AMQPError,
            aio_pika.exceptions.ChannelInvalidStateError,
            ConnectionError,
            TimeoutError,
        ) as exc:
            raise BindingsUnavailable(f"RabbitMQ: {exc!r}") from exc
        if wanted != before:
            log.info("bindings_changed", **{q: list(keys) for q, keys in wanted.items()})
        if generation == self._generation:  # else reconnected meanwhile: bind again
            self._bound = wanted
        return wanted

    async def _subscribed(self) -> tuple[str, ...]:
        """The webhook types some enabled endpoint subscribes to, in the queue's order."""
        types = await WebhookStore(self._pool).subscribed_types()
        return tuple(k for k in ORDER_WEBHOOKS.optional_keys if k in types)

    async def _apply(self, wanted: Mapping[str, tuple[str, ...]]) -> None:
        """On a plain channel of its own (a robust one would remember the bindings and
        put them back after a reconnection, whatever was wanted since), within
        :data:`APPLY_TIMEOUT_S`: a broker away fails the change, it does not hold the
        lease for the length of the outage."""
        specs = {ORDER_WEBHOOKS.name: ORDER_WEBHOOKS, ORDER_PAYMENTS.name: ORDER_PAYMENTS}
        async with asyncio.timeout(APPLY_TIMEOUT_S):
            await self._connection.ready()
            transport = self._connection.transport
            if transport is None:
                raise ConnectionError("not connected")
            try:
                channel = await transport.connection.channel(publisher_confirms=False)
            except RuntimeError as exc:  # the connection closed a moment ago
                raise ConnectionError(str(exc)) from exc
            try:
                for name, keys in wanted.items():
                    await channel.queue_declare(name, passive=True)  # it exists
                    for key in specs[name].optional_keys:
                        if key in keys:
                            await channel.queue_bind(name, EXCHANGE, routing_key=key)
                        else:  # unbinding what is not bound is a no-op for RabbitMQ
                            await channel.queue_unbind(name, EXCHANGE, routing_key=key)
            except asyncio.CancelledError as exc:
                # A connection lost mid-call fails its calls with CancelledError; only a
                # task being cancelled (a stop, the timeout) has cancelling() > 0.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                raise ConnectionError("the broker connection was lost") from exc
            finally:
                if not channel.is_closed:
                    await close_quietly(channel, "bindings channel")


class BindingsKeeper(BackgroundLoop):
    """Every ``interval_s``, reconciles when the endpoints ask for other keys than this
    replica bound last (an endpoint the dispatcher disabled, one enabled again with
    ``paylane webhooks enable``, one made by a replica of an earlier version), after a
    reconnection, and every ``full_s`` in any case (what a definitions import or an
    operator changed on the broker)."""

    task_name = "bindings"

    def __init__(
        self, bindings: OptionalBindings, interval_s: float, full_s: float = FULL_INTERVAL_S
    ) -> None:
        self._bindings = bindings
        self._interval_s = interval_s
        self._full_s = full_s

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                due = time.monotonic() - last >= self._full_s
                if not due and await self._bindings.wanted() == self._bindings.bound:
                    continue
                await self._bindings.reconcile()
                last = time.monotonic()
            except (BindingsUnavailable, ConfigError) as exc:
                log.warning("bindings_pass_failed", error=str(exc))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # stopped
                log.warning("bindings_pass_failed", error="cancelled by a lost connection")
            except Exception as exc:
                log.warning("bindings_pass_failed", error=repr(exc))
