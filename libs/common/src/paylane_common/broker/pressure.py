"""Ingress first, in the consumers too: while ingress is busy, the consumers yield.

On one small server the consumers, RabbitMQ and MySQL share the cores with ingress. A lower
CPU priority for the consumers (``nice``, CPU shares) is not enough: what the consumers ask
of RabbitMQ (deliveries, acks, the outbox relay's publishes) and of MySQL (their
transactions) runs in those servers at the default priority and crowds out ingress's
publishes and confirms, i.e. WeChat Pay's acknowledgements (docs/performance.md, "Ingress
first"). So during a burst the consumers stop asking:

- Ingress (:class:`LoadAnnouncer`) measures its own CPU use over the last :data:`WINDOW_S`,
  every :data:`INTERVAL_S`. When it is above ``INGRESS_BUSY_CPU`` (a fraction of one core),
  or at once when ``INGRESS_BUSY_IN_FLIGHT`` verified notifications are being answered
  together, it publishes a transient message to the fanout exchange ``paylane.signals``:
  "busy for :data:`HOLD_S`", repeated every :data:`REPEAT_S` while it stays busy.
- Every consumer process (:class:`IngressYield`) binds an exclusive queue of its own to that
  exchange. While an announcement holds, :meth:`IngressYield.turn` waits before each batch:
  the deliveries already prefetched wait unacked, the broker sends no more, and the burst
  waits in the queues. The announcements stop with the burst and the consumers drain it.
- Capped: after yielding ``CONSUMER_YIELD_MAX_S`` in a row a consumer works for a quarter of
  that, announcements or not, so a load above what the machine sustains end to end still
  moves the queues. ``CONSUMER_YIELD_MAX_S=0`` never yields (consumers on machines of their
  own); ``INGRESS_BUSY_CPU=0`` and ``INGRESS_BUSY_IN_FLIGHT=0`` never announce.

Nothing durable depends on it: a lost announcement costs a little latency, a consumer that
never hears one does not yield, and a yielding consumer holds only what it has not applied
(unacked: redelivered if it dies). The signals use a broker connection of their own
(:func:`signals_connection`), so they can never hold up the events' connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Callable

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)

from paylane_common.broker import amqp
from paylane_common.broker.amqp import close_quietly
from paylane_common.broker.topology import declare_signals_exchange
from paylane_common.runtime import metrics
from paylane_common.runtime.exceptions import ConfigError

log = structlog.get_logger(__name__)

#: How often ingress measures its CPU use; it judges the last :data:`WINDOW_S`, so a burst
#: is announced within about a tenth of a second of its start (what the consumers do before
#: that shows in the acknowledgements' tail for a second or more).
INTERVAL_S = 0.05
WINDOW_S = 0.1
#: How long one announcement holds: a few repeats, so a lost message changes nothing …
HOLD_S = 1.0
#: … repeated this often while ingress stays busy.
REPEAT_S = 0.25
#: The longest hold a consumer accepts from a message (a malformed or hostile one).
MAX_HOLD_S = 5.0
#: What makes the signals unusable: the exchange missing (``AMQP_DECLARE_TOPOLOGY=false``
#: and definitions from before it) or a broker user without the permissions. The services
#: run regardless, without yielding; the warning says what to do.
_UNUSABLE = (ConfigError, aiormq.exceptions.ChannelAccessRefused)
_HINT = (
    "declare paylane.signals (paylane topology, deploy/rabbitmq/definitions.json) and give"
    " the broker users deploy/rabbitmq/permissions.json"
)
#: After yielding ``max_s`` in a row, a consumer works this share of ``max_s``.
WORK_SHARE = 0.25


async def signals_connection(url: str, name: str) -> AbstractRobustConnection | None:
    """A broker connection of the signals' own, so that nothing of theirs can hold up the
    service's events: a reconnection restores every channel of a connection or none, and
    a consumer's exclusive queue can be refused ("locked") for as long as the broker still
    holds the connection that had it. None when the broker cannot be reached now (the
    service then runs without signals)."""
    try:
        return await amqp.connect(url, f"{name}-signals")
    except Exception as exc:
        log.warning("signals_not_connected", error=str(exc) or type(exc).__name__)
        return None


class LoadAnnouncer:
    """Ingress's side: announces "busy" while its own CPU use is above ``busy_cpu``, or as
    soon as ``busy_in_flight`` notifications are being answered at once (:meth:`entered`):
    the first sign of a burst, before a CPU window has filled."""

    def __init__(
        self,
        busy_cpu: float,
        *,
        busy_in_flight: int = 0,
        declare: bool = True,
        interval_s: float = INTERVAL_S,
        window_s: float = WINDOW_S,
        hold_s: float = HOLD_S,
        repeat_s: float = REPEAT_S,
        cpu: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.busy_cpu = busy_cpu
        self.busy_in_flight = busy_in_flight
        #: Notifications being answered now (:meth:`entered` / :meth:`left`).
        self.in_flight = 0
        self._declare = declare
        self._announced = float("-inf")
        self._announcing: set[asyncio.Task[None]] = set()
        self._interval_s = interval_s
        self._window_s = max(window_s, interval_s)
        self._hold_s = hold_s
        self._repeat_s = repeat_s
        self._cpu = cpu
        self._clock = clock
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, connection: AbstractConnection | None) -> None:
        """Announce through ``connection`` (none: never; see :func:`signals_connection`)."""
        if connection is None or (self.busy_cpu <= 0 and self.busy_in_flight <= 0):
            return
        # No confirms: an announcement is advice, and a lost one is repeated next interval.
        self._channel = await connection.channel(publisher_confirms=False)
        try:
            self._exchange = await declare_signals_exchange(
                self._channel, passive=not self._declare
            )
        except _UNUSABLE as exc:
            await self._without_signals(exc)
            return
        if self.busy_cpu > 0:
            self._task = asyncio.create_task(self._run(), name="ingress-load-announcer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for task in self._announcing:
            task.cancel()
        await asyncio.gather(*self._announcing, return_exceptions=True)
        self._exchange = None
        if self._channel is not None:
            await close_quietly(self._channel, "signals channel")
            self._channel = None

    async def _without_signals(self, exc: Exception) -> None:
        log.warning("ingress_not_announcing", error=str(exc), hint=_HINT)
        if self._channel is not None:
            await close_quietly(self._channel, "signals channel")
            self._channel = None

    def entered(self) -> None:
        """A notification arrived: announce at once when too many are being answered."""
        self.in_flight += 1
        if 0 < self.busy_in_flight <= self.in_flight and self._exchange is not None:
            now = self._clock()
            if now - self._announced >= self._repeat_s:
                self._announced = now
                task = asyncio.create_task(self.announce(in_flight=self.in_flight))
                self._announcing.add(task)
                task.add_done_callback(self._announcing.discard)

    def left(self) -> None:
        self.in_flight -= 1

    async def _run(self) -> None:
        samples = deque([(self._clock(), self._cpu())])
        while True:
            await asyncio.sleep(self._interval_s)
            now, cpu = self._clock(), self._cpu()
            samples.append((now, cpu))
            while len(samples) > 2 and now - samples[1][0] >= self._window_s:
                samples.popleft()  # keep one sample at or beyond the window's start
            then, cpu_then = samples[0]
            share = (cpu - cpu_then) / max(now - then, 1e-6)
            metrics.INGRESS_CPU_SHARE.set(round(share, 3))
            if share >= self.busy_cpu and now - self._announced >= self._repeat_s:
                self._announced = now
                await self.announce(cpu=share)

    async def announce(self, *, cpu: float | None = None, in_flight: int | None = None) -> None:
        """One "busy" announcement, saying why (never raises: the broker may be away)."""
        if self._exchange is None:
            return
        why = {"cpu": round(cpu, 3)} if cpu is not None else {"in_flight": in_flight}
        body = json.dumps({"busy_for_s": self._hold_s, **why}).encode()
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
            expiration=self._hold_s,
        )
        try:
            # Bounded: a broker that blocks publishers (a memory alarm) must not pile them up.
            async with asyncio.timeout(self._hold_s):
                await self._exchange.publish(message, routing_key="")
        except Exception as exc:
            log.debug("busy_announcement_failed", error=repr(exc))
            return
        metrics.INGRESS_BUSY_ANNOUNCEMENTS.inc()


class IngressYield:
    """A consumer process's side: :meth:`turn` waits while ingress says it is busy."""

    def __init__(
        self,
        connection: AbstractConnection | None,
        service: str,
        max_s: float,
        *,
        declare: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._connection = connection
        self.queue_name = f"{service}.signals.{uuid.uuid4().hex[:12]}"
        self.max_s = max_s
        self._declare = declare
        self._clock = clock
        self._busy_until = 0.0
        self._yielding_since: float | None = None
        self._working_until = 0.0
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._released = asyncio.Event()  # stop(): nobody waits any more
        self.yielded_s = 0.0

    @property
    def busy(self) -> bool:
        """Whether an announcement of ingress holds now."""
        return self._clock() < self._busy_until

    @property
    def yielding(self) -> bool:
        """Whether the consumer is waiting in :meth:`turn`."""
        return self._yielding_since is not None

    async def start(self) -> None:
        """Listen through its connection (none: never yields; see :func:`signals_connection`)."""
        if self._connection is None or self.max_s <= 0:
            return
        self._channel = await self._connection.channel(publisher_confirms=False)
        try:
            exchange = await declare_signals_exchange(self._channel, passive=not self._declare)
            # Its own, gone with the process; old announcements expire unread.
            self._queue = await self._channel.declare_queue(
                self.queue_name,
                exclusive=True,
                auto_delete=True,
                arguments={"x-message-ttl": round(HOLD_S * 1000), "x-max-length": 8},
            )
            await self._queue.bind(exchange)
            await self._queue.consume(self._on_signal, no_ack=True)
        except _UNUSABLE as exc:
            # Advice only: the consumer runs, it just never yields.
            log.warning("consumer_not_yielding", error=str(exc), hint=_HINT)
            await close_quietly(self._channel, "signals channel")
            self._channel = None

    def release(self) -> None:
        """From now on :meth:`turn` returns at once (the consumer is stopping)."""
        self._released.set()

    async def stop(self) -> None:
        self.release()
        if self._channel is not None:
            await close_quietly(self._channel, "signals channel")
            self._channel = None

    async def _on_signal(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.hear(message.body)

    def hear(self, body: bytes) -> None:
        """One announcement: busy for as long as it says (bounded)."""
        try:
            hold = float(json.loads(body)["busy_for_s"])
        except (ValueError, KeyError, TypeError):
            log.warning("signal_unreadable", body=body[:200])
            return
        hold = min(max(hold, 0.0), MAX_HOLD_S)
        self._busy_until = max(self._busy_until, self._clock() + hold)

    async def turn(self) -> None:
        """Returns at once unless ingress is busy; then when it is not, or when this
        consumer has yielded ``max_s`` in a row (it then works a while regardless)."""
        while True:
            now = self._clock()
            if now >= self._busy_until or now < self._working_until or self._released.is_set():
                self._end(now)
                return
            if self._yielding_since is None:
                self._yielding_since = now
                metrics.CONSUMER_YIELDING.set(1)
                log.info("consumer_yielding_to_ingress")
            elif now - self._yielding_since >= self.max_s:
                self._working_until = now + self.max_s * WORK_SHARE
                log.warning("consumer_yield_capped", yielded_s=round(now - self._yielding_since))
                self._end(now)
                return
            until = min(self._busy_until, self._yielding_since + self.max_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), max(until - now, 0.01))

    def _end(self, now: float) -> None:
        if self._yielding_since is None:
            return
        yielded = now - self._yielding_since
        self._yielding_since = None
        self.yielded_s += yielded
        metrics.CONSUMER_YIELDING.set(0)
        metrics.CONSUMER_YIELD_SECONDS.inc(yielded)
        log.info("consumer_yield_ended", yielded_s=round(yielded, 2))
