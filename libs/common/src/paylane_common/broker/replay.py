"""Replay for recovery (docs/commands.md, docs/operations.md): dead letters back to their
queue, retained events from the stream ``paylane.log`` (what came from outside) or from
the services' outboxes (the events paylane derived, kept ``RETENTION_DAYS`` once
published) to consumer queues.

Both directions rely on the consumers being idempotent (inbox + per-order ledgers): a
replay may deliver a message twice, it must never lose one. Hence the order of every step:

* **DLQ → queue**: ``basic.get`` a dead letter (manual ack), publish its copy to the origin
  queue *with a publisher confirm*, and only then ack the dead letter. A crash or Ctrl-C
  before that ack leaves the dead letter unacked, so the broker puts it back in the DLQ: the
  worst case is one message replayed twice. A copy that cannot be published is nacked
  back (requeued) at the end of the run, so one bad message is not fetched over and over.
* **stream → queue**: the stream keeps everything (time-based retention) and a stream ack
  only grants credit, so reading never consumes; copies go straight to the target
  queue(s), never back through the ``paylane`` exchange, which would append them to the
  stream again and wake every consumer of the routing key.
* **outbox → queue**: the same, from the ``outbox`` rows in MySQL (read only: a row is
  never changed, so a replay can be run again), in the order they were staged.

The three are one path, :func:`_replay`; what differs is the source, an async generator of
:class:`_Taken` messages (``_dlq_copies``, ``_stream_copies``, the outbox's rows): how it
reads, what it selects (the window and type filters of :func:`_route`), how it builds a
copy (:func:`replay_headers`), and how it settles a message once its copies are sent
(``settle``: ack or return a dead letter, ack a stream delivery, nothing for a row). The
rest is written once: a dry run publishes nothing, a real run publishes each copy with a
confirm and settles the message only after, the summary counts and lists the same way.

A copy goes to a topology queue through the queue's forward exchange (topology.py), never
through ``amq.default``. It is published under the replaying identity (its own
``user_id``, which RabbitMQ checks: ``AMQP_REPLAY_USER`` in production) and names the
publisher of the original in ``x-paylane-original-user`` (identities.py): the
dead letter's (recorded by the consumer that dead-lettered it, else its ``user_id``), the
stream message's ``user_id``, or the identity of the outbox's producer. The consumer
believes that header from the replaying identity only, and holds the original publisher
to the event type as it would have on the first delivery.

Nothing here prints: callers get a :class:`ReplaySummary` and, while it runs, a progress
callback with the live summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aio_pika
import aiomysql
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from paylane_common.broker.amqp import copy_message, without_broker_headers
from paylane_common.broker.identities import (
    ORIGINAL_USER_HEADER,
    UNKNOWN_PUBLISHER,
    Publishers,
    forwarded_headers,
)
from paylane_common.broker.publisher import Publisher
from paylane_common.broker.topology import LOG_STREAM, QUEUES, forward_exchange_of
from paylane_common.contract.events import Envelope
from paylane_common.delivery.consumer import (
    ATTEMPT_HEADER,
    FAILED_AT_HEADER,
    ORIGIN_HEADER,
    REASON_HEADER,
)
from paylane_common.runtime.exceptions import PaylaneError, PublishError
from paylane_common.storage.db import placeholders, transaction

#: How many times a message was replayed (DLQ → queue); 1 on its first replay.
REPLAYED_HEADER = "x-paylane-replayed"
#: Where a replayed copy came from (``paylane.log``, or ``outbox`` for ``replay_outbox``).
REPLAYED_FROM_HEADER = "x-paylane-replayed-from"
#: Why the message had been dead-lettered before this replay (the DLQ markers are removed
#: so that a later dead-lettering by the broker is not shown with a stale reason).
REPLAYED_REASON_HEADER = "x-paylane-replayed-reason"
DLQ_SUFFIX = ".dlq"
OUTBOX = "outbox"

#: The stream is read from this far before ``since``: publishers', the broker's and the
#: operator's clocks differ a little, and events before ``since`` are filtered out anyway.
STREAM_OFFSET_MARGIN = timedelta(seconds=60)

Outcome = Literal["moved", "skipped", "failed"]


class ReplayError(PaylaneError):
    """A replay cannot start or cannot go on (no such queue, broker gone, bad window)."""


@dataclass
class Tally:
    moved: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass(frozen=True)
class ReplayItem:
    """One message a dry run would move, or a real run failed to move."""

    message_id: str | None
    type: str | None
    correlation_id: str | None
    group: str
    target: str
    timestamp: datetime | None = None


@dataclass
class ReplaySummary:
    """What a replay did, by ``(group, target)``: group is the dead-letter reason for a DLQ
    replay and the event type for a log replay. In a dry run, ``moved`` means "would move"."""

    source: str
    dry_run: bool = False
    #: Messages the run set out to handle (DLQ snapshot, capped by the limit); ``None``
    #: when unknown in advance (the stream).
    total: int | None = None
    #: Messages taken from the source so far (a log event sent to two queues counts once).
    seen: int = 0
    groups: dict[tuple[str, str], Tally] = field(default_factory=dict)
    #: Distinct failure messages and how often each happened.
    errors: Counter[str] = field(default_factory=Counter)
    #: Dry run: the messages that would move; else those that failed (first ``max_items``).
    items: list[ReplayItem] = field(default_factory=list)
    max_items: int = 1000

    @property
    def moved(self) -> int:
        return sum(t.moved for t in self.groups.values())

    @property
    def skipped(self) -> int:
        return sum(t.skipped for t in self.groups.values())

    @property
    def failed(self) -> int:
        return sum(t.failed for t in self.groups.values())

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def count(self, group: str, target: str, outcome: Outcome, n: int = 1) -> None:
        tally = self.groups.setdefault((group, target), Tally())
        setattr(tally, outcome, getattr(tally, outcome) + n)

    def keep(self, item: ReplayItem) -> None:
        if len(self.items) < self.max_items:
            self.items.append(item)


ProgressCallback = Callable[[ReplaySummary], None]


@dataclass(frozen=True)
class DeadLetter:
    """Why one message is in a DLQ, from the consumer's ``x-paylane-*`` headers when it
    dead-lettered the message itself, else from the broker's ``x-death`` history."""

    message_id: str | None
    type: str | None
    #: ``out_trade_no`` for payment events.
    correlation_id: str | None
    reason: str
    #: The queue the message failed in, where a replay sends it back.
    origin: str
    failed_at: datetime | None
    #: Deliveries (broker dead-lettering) or handler attempts (consumer dead-lettering)
    #: before the message was given up on; ``None`` when the headers cannot tell.
    delivery_count: int | None
    #: How many times it was dead-lettered for that reason (``x-death`` count; 1 when the
    #: consumer did it).
    dead_lettered: int
    #: Earlier replays of this message.
    replayed: int
    #: Times this message was delivered from the DLQ itself and returned (peeks, aborted
    #: replays): quorum queues count those, and with a delivery limit on the DLQ (the
    #: default from RabbitMQ 4.0) too many would drop the message.
    dlq_delivery_count: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "type": self.type,
            "correlation_id": self.correlation_id,
            "reason": self.reason,
            "origin": self.origin,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "delivery_count": self.delivery_count,
            "dead_lettered": self.dead_lettered,
            "replayed": self.replayed,
            "dlq_delivery_count": self.dlq_delivery_count,
        }


# --- parsing -------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])(?:\s+ago)?\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: datetime) -> datetime:
    """``2026-11-22T10:00:00Z`` (ISO 8601; naive means UTC), ``now``, or an age: ``90s``,
    ``30m``, ``2h``, ``1d``, ``1w`` before ``now``. Returns an aware UTC datetime."""
    value = text.strip()
    now = _utc(now)
    if value.lower() == "now":
        return now
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2).lower()
        return now - timedelta(**{_UNITS[unit]: amount})
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO 8601 time (2026-11-22T10:00:00Z) "
            "nor an age like 30m, 2h, 1d"
        ) from None
    return _utc(parsed)


def dlq_names(queue: str) -> tuple[str, str]:
    """``(dlq, origin)`` for a consumer queue or its DLQ (``order.payments[.dlq]``)."""
    if queue.endswith(DLQ_SUFFIX):
        return queue, queue.removesuffix(DLQ_SUFFIX)
    return queue + DLQ_SUFFIX, queue


def describe_dead_letter(
    message: AbstractIncomingMessage,
    default_origin: str,
    delivery_limits: Mapping[str, int] | None = None,
) -> DeadLetter:
    """Read a dead letter's headers (see :class:`DeadLetter`).

    ``delivery_limits`` (queue → ``x-delivery-limit``; the topology's by default) turns a
    ``delivery_limit`` death into a delivery count: the broker records only that the
    limit was passed, and the DLQ's own ``x-delivery-count`` counts DLQ deliveries.
    """
    headers = message.headers or {}
    limits = _default_limits() if delivery_limits is None else delivery_limits
    deaths = _x_death(headers)
    death = deaths[0] if deaths else {}  # most recent first
    dead_lettered = _int(death.get("count")) or 0
    consumer_reason = _text(headers.get(REASON_HEADER))
    origin = _text(headers.get(ORIGIN_HEADER)) or _text(death.get("queue")) or default_origin
    delivery_count: int | None
    if consumer_reason is not None:
        reason = consumer_reason
        failed_at = _parse_time(headers.get(FAILED_AT_HEADER))
        delivery_count = (_int(headers.get(ATTEMPT_HEADER)) or 0) + 1
        dead_lettered = 1  # its x-death, if any, is the retry queue's expiry history
    else:
        reason = _text(death.get("reason")) or "unknown"
        failed_at = _parse_time(death.get("time"))
        if reason == "delivery_limit":
            limit = limits.get(origin)
            delivery_count = limit + 1 if limit is not None else None
        else:
            delivery_count = dead_lettered or None
    return DeadLetter(
        message_id=message.message_id,
        type=message.type,
        correlation_id=message.correlation_id,
        reason=reason,
        origin=origin,
        failed_at=failed_at,
        delivery_count=delivery_count,
        dead_lettered=dead_lettered,
        replayed=_int(headers.get(REPLAYED_HEADER)) or 0,
        dlq_delivery_count=_int(headers.get("x-delivery-count")) or 0,
    )


# --- one path for every source -------------------------------------------------------------

#: Publishes one copy to ``target`` through ``exchange`` (the target's forward exchange);
#: raises :class:`PublishError` unless the broker confirmed it.
Send = Callable[[Publisher, str, str], Awaitable[None]]
#: Lets go of a delivery taken from the source once its copies are all confirmed (``True``)
#: or not: a dead letter is acked or returned, a stream delivery acked (credit).
Settle = Callable[[AbstractIncomingMessage, bool], Awaitable[None]]


@dataclass(frozen=True)
class _Taken:
    """One message a source hands to :func:`_replay`: the group the summary counts it
    under, and where its copies go (``targets``, each sent with ``send``) or why none
    goes (``skipped``, the tally's target column)."""

    group: str
    targets: Sequence[str] = ()
    send: Send | None = None
    skipped: str | None = None
    #: Counted in ``ReplaySummary.seen``: not what the stream holds outside the window.
    counted: bool = True
    message_id: str | None = None
    type: str | None = None
    correlation_id: str | None = None
    timestamp: datetime | None = None
    #: What to settle once the copies are sent (none for an outbox row).
    delivery: AbstractIncomingMessage | None = None

    def item(self, target: str) -> ReplayItem:
        return ReplayItem(
            self.message_id, self.type, self.correlation_id, self.group, target, self.timestamp
        )


async def _replay(
    connection: AbstractConnection,
    source: str,
    taken: AsyncGenerator[_Taken, None],
    settle: Settle | None,
    *,
    total: int | None = None,
    dry_run: bool,
    progress: ProgressCallback | None,
    timeout: float,
) -> ReplaySummary:
    """The one path of every replay: take a message from ``source``, send its copies with
    confirms (none in a dry run), ``settle`` it, count, report, and on to the next."""
    summary = ReplaySummary(source=source, dry_run=dry_run, total=total)
    _notify(progress, summary)
    async with (
        _replay_publisher(connection, dry_run, timeout) as publisher,
        contextlib.aclosing(taken) as messages,
    ):
        async for message in messages:
            failures = await _send_copies(message, publisher, summary)
            # Only now, its copies confirmed, is the message let go of (a dead letter
            # acked): a crash before this point replays it again, never loses it.
            if settle is not None and message.delivery is not None:
                await settle(message.delivery, not failures)
            _notify(progress, summary)
            _raise_if_cancelled()
    return summary


async def _send_copies(
    taken: _Taken, publisher: Publisher | None, summary: ReplaySummary
) -> dict[str, str]:
    """Send ``taken``'s copies (dry run: none) and count them; the failures by target."""
    if taken.counted:
        summary.seen += 1
    if taken.skipped is not None:
        summary.count(taken.group, taken.skipped, "skipped")
    failures: dict[str, str] = {}
    for target in taken.targets:
        if publisher is None or taken.send is None:
            summary.count(taken.group, target, "moved")
            summary.keep(taken.item(target))
            continue
        try:
            await taken.send(publisher, target, forward_exchange_of(target))
        except PublishError as exc:
            failures[target] = f"{target}: {exc}"
            summary.count(taken.group, target, "failed")
            summary.errors[failures[target]] += 1
            summary.keep(taken.item(target))
        else:
            summary.count(taken.group, target, "moved")
    return failures


def _sending(copy: aio_pika.Message) -> Send:
    async def send(publisher: Publisher, target: str, exchange: str) -> None:
        await publisher.publish_to_queue(target, copy, exchange=exchange)

    return send


def _refusing(reason: str) -> Send:
    """A copy that is not sent: it fails as one the broker refused, with ``reason``."""

    async def send(publisher: Publisher, target: str, exchange: str) -> None:
        raise PublishError(reason)

    return send


def replay_headers(
    headers: Mapping[str, Any], marks: Mapping[str, Any], original: Any
) -> dict[str, Any]:
    """What every replayed copy carries: the headers of what it copies (less its source's
    bookkeeping), the replay's ``x-paylane-replayed*`` marks, and its original publisher
    in ``x-paylane-original-user`` (removed when unknown)."""
    return forwarded_headers({**headers, **marks}, _text(original))


def _route(
    event_type: str, wanted: frozenset[str] | None, to: str | None, held: str | None = None
) -> tuple[Sequence[str], str | None]:
    """Where a window replay sends an event: ``(targets, None)``, or ``((), why not)``
    when it is not selected, ``held`` (a reason of the source's) or has no consumer."""
    if wanted is not None and event_type not in wanted:
        return (), "(not selected)"
    if held is not None:
        return (), held
    targets = [to] if to is not None else _consumers(frozenset({event_type}))
    return (targets, None) if targets else ((), "(no consumer queue)")


def _consumers(types: frozenset[str] | None) -> list[str]:
    """The topology's queues bound to any of ``types`` (to any type for ``None``)."""
    return [q.name for q in QUEUES if types is None or types & set(q.event_types)]


# --- DLQ -----------------------------------------------------------------------------------


async def list_dlq(
    connection: AbstractConnection,
    queue: str,
    *,
    limit: int | None = None,
    delivery_limits: Mapping[str, int] | None = None,
    timeout: float = 5.0,
) -> list[DeadLetter]:
    """What is in the DLQ of ``queue`` and why, without consuming anything.

    AMQP has no "peek": the dead letters are fetched without ack and all handed back by
    closing the channel at the end. Never more than the messages present at the start.
    """
    dlq, origin, wanted = await _dlq(connection, queue, limit, timeout)
    async with _reading_channel(connection) as channel:
        letters = _dead_letters(channel, dlq, origin, wanted, delivery_limits, timeout)
        async with contextlib.aclosing(letters):
            return [letter async for _, letter in letters]


async def replay_dlq(
    connection: AbstractConnection,
    queue: str,
    *,
    limit: int | None = None,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    delivery_limits: Mapping[str, int] | None = None,
    timeout: float = 5.0,
    select: Callable[[DeadLetter], bool] | None = None,
) -> ReplaySummary:
    """Move the dead letters of ``queue`` (a consumer queue or its ``.dlq``) back to the
    queue each one failed in, confirmed, ack after confirm (see the module docstring).
    With ``select``, only the dead letters it selects move (the console's replay of one,
    chosen in the same pass that moves it): the others are fetched unacked and handed
    back with the channel, uncounted.

    The copy keeps body and properties; the broker's and the DLQ's bookkeeping headers go,
    ``x-paylane-attempt`` restarts at 0 (the consumer's retry budget starts over: the cause
    is presumed fixed) and ``x-paylane-replayed`` counts replays. At most the number of
    dead letters present at the start is handled, so messages that fail again during the
    run are not looped over. ``dry_run`` fetches them all without ack and hands them back.
    """
    dlq, origin, planned = await _dlq(connection, queue, limit, timeout)
    returned: list[AbstractIncomingMessage] = []  # to nack (requeue) at the end

    async def settle(message: AbstractIncomingMessage, confirmed: bool) -> None:
        if confirmed:
            await _settle(message.ack(), timeout)
        else:  # held until the end, so that it is not fetched over and over
            returned.append(message)

    async with _reading_channel(connection) as channel:
        letters = _dead_letters(channel, dlq, origin, planned, delivery_limits, timeout)
        summary = await _replay(
            connection,
            dlq,
            _dlq_copies(letters, dlq, select),
            None if dry_run else settle,  # a dry run's go back with the channel
            total=planned,
            dry_run=dry_run,
            progress=progress,
            timeout=timeout,
        )
        for message in returned:
            await _settle(message.nack(requeue=True), timeout)
    # Closing the channel hands back whatever is still unacked: a dry run's messages, or
    # the one in flight when the run was cancelled (it is redelivered, never lost).
    return summary


async def _dlq(
    connection: AbstractConnection, queue: str, limit: int | None, timeout: float
) -> tuple[str, str, int]:
    """``(dlq, origin, how many to fetch)``: the dead letters present now, up to ``limit``."""
    dlq, origin = dlq_names(queue)
    total = await _ready_count(connection, dlq, timeout)
    if total is None:
        raise ReplayError(f"queue {dlq!r} does not exist")
    return dlq, origin, total if limit is None else min(total, max(limit, 0))


async def _dead_letters(
    channel: AbstractChannel,
    dlq: str,
    origin: str,
    wanted: int,
    delivery_limits: Mapping[str, int] | None,
    timeout: float,
) -> AsyncGenerator[tuple[AbstractIncomingMessage, DeadLetter], None]:
    """Up to ``wanted`` dead letters, fetched unacked, each with why it is there."""
    source = await channel.get_queue(dlq, ensure=False)
    for _ in range(wanted):
        message = await _get(source, timeout)
        if message is None:
            break
        _raise_if_cancelled()
        yield message, describe_dead_letter(message, origin, delivery_limits)


async def _dlq_copies(
    letters: AsyncGenerator[tuple[AbstractIncomingMessage, DeadLetter], None],
    dlq: str,
    select: Callable[[DeadLetter], bool] | None = None,
) -> AsyncGenerator[_Taken, None]:
    async with contextlib.aclosing(letters):
        async for message, letter in letters:
            if select is not None and not select(letter):
                # Not settled: it stays unacked, and goes back with the reading channel.
                yield _Taken(letter.reason, counted=False)
                continue
            send = (
                _refusing("origin is the DLQ itself")
                if letter.origin == dlq
                else _sending(dlq_copy(message, letter))
            )
            yield _Taken(
                letter.reason,
                [letter.origin],
                send,
                message_id=message.message_id,
                type=message.type,
                correlation_id=message.correlation_id,
                delivery=message,
            )


def dlq_copy(message: AbstractIncomingMessage, info: DeadLetter) -> aio_pika.Message:
    """The message to send back to ``info.origin``."""
    headers = without_broker_headers(message.headers)
    for name in (REASON_HEADER, ORIGIN_HEADER, FAILED_AT_HEADER):
        headers.pop(name, None)
    # The consumer recorded the publisher when it dead-lettered the message (none: it had
    # none, and its user_id is the consumer's); a dead letter of the broker's (delivery
    # limit) still has its publisher's user_id.
    original = headers.get(ORIGINAL_USER_HEADER)
    if original is None and REASON_HEADER not in (message.headers or {}):
        original = message.user_id
    if original is None:
        # Refused for having no publisher: the copy keeps having none that is accepted.
        # Without a header its user_id (the replayer's: the order service's own, from the
        # console) would be taken for its publisher.
        original = UNKNOWN_PUBLISHER
    marks = {
        ATTEMPT_HEADER: 0,
        REPLAYED_HEADER: info.replayed + 1,
        REPLAYED_REASON_HEADER: info.reason[:500],
    }
    return copy_message(message, replay_headers(headers, marks, original))


# --- stream --------------------------------------------------------------------------------


async def replay_log(
    connection: AbstractConnection,
    *,
    since: datetime,
    until: datetime | None = None,
    types: Iterable[str] | None = None,
    to: str | None = None,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    idle_timeout: float = 2.0,
    clock_skew: timedelta = timedelta(seconds=2),
    prefetch: int = 256,
    timeout: float = 5.0,
) -> ReplaySummary:
    """Re-publish the events of ``paylane.log`` published in ``[since, until]`` (``until``
    defaults to the moment the replay starts) to ``to``, or else to every consumer queue of
    the topology bound to the event's type. ``types`` selects routing keys; when ``to`` is
    a service queue of the topology it defaults to that queue's routing keys.

    Selection uses the AMQP ``timestamp`` of each message, which has whole-second
    resolution: the window is widened to whole seconds, never narrowed (an extra replay is
    absorbed by the consumer, a missed event is not). The scan stops at the first message
    more than ``clock_skew`` past ``until`` (messages in that slack are not replayed), or
    after ``idle_timeout`` seconds without a message (caught up with the stream). A message
    stamped more than ``clock_skew`` in the future (a publisher's clock running ahead) is
    skipped and reported, and does not end the scan.
    """
    since, end, wanted = await _window(connection, since, until, types, to, timeout)
    if await _ready_count(connection, LOG_STREAM, timeout) is None:
        raise ReplayError(f"queue {LOG_STREAM!r} does not exist")

    async def settle(message: AbstractIncomingMessage, confirmed: bool) -> None:
        await _settle(message.ack(), timeout)  # a stream ack only grants credit

    async with _reading_channel(connection) as channel:  # closing it ends the consumer
        # A stream is consumed only with a prefetch and manual acks.
        await channel.set_qos(prefetch_count=prefetch)
        stream = await channel.get_queue(LOG_STREAM, ensure=False)
        received: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        window_start = since.replace(microsecond=0)
        offset = window_start - STREAM_OFFSET_MARGIN
        await stream.consume(received.put, arguments={"x-stream-offset": offset})
        messages = _stream_copies(received, window_start, end, wanted, to, idle_timeout, clock_skew)
        return await _replay(
            connection,
            LOG_STREAM,
            messages,
            settle,
            dry_run=dry_run,
            progress=progress,
            timeout=timeout,
        )


async def _stream_copies(
    received: asyncio.Queue[AbstractIncomingMessage],
    window_start: datetime,
    end: datetime,
    wanted: frozenset[str] | None,
    to: str | None,
    idle_timeout: float,
    clock_skew: timedelta,
) -> AsyncGenerator[_Taken, None]:
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                message = await received.get()
        except TimeoutError:
            return  # caught up
        stamp = _utc(message.timestamp) if message.timestamp is not None else None
        event_type = message.type or "(no type)"
        if stamp is None:  # cannot be placed in the window: say so, move nothing
            yield _Taken(event_type, skipped="(no timestamp)", counted=False, delivery=message)
        elif stamp > datetime.now(UTC) + clock_skew:
            # From a clock running ahead: it cannot be placed in the window, and it must
            # not end the scan early either.
            future = "(timestamp in the future)"
            yield _Taken(event_type, skipped=future, counted=False, delivery=message)
        elif stamp > end + clock_skew:
            return
        elif window_start <= stamp <= end:
            targets, skipped = _route(event_type, wanted, to)
            yield _Taken(
                event_type,
                targets,
                _sending(log_copy(message)),
                skipped,
                message_id=message.message_id,
                type=message.type,
                correlation_id=message.correlation_id,
                timestamp=stamp,
                delivery=message,
            )
        else:  # before the window: read, not replayed
            yield _Taken(event_type, counted=False, delivery=message)


def log_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The message to send to a target queue: same body, properties and headers, and
    its publisher (its ``user_id``: the stream holds what the publishers sent)."""
    headers = without_broker_headers(message.headers)
    marks = {REPLAYED_FROM_HEADER: LOG_STREAM}
    return copy_message(message, replay_headers(headers, marks, message.user_id))


# --- outbox --------------------------------------------------------------------------------


async def replay_outbox(
    connection: AbstractConnection,
    pool: aiomysql.Pool,
    *,
    since: datetime,
    until: datetime | None = None,
    producers: Iterable[str] | None = None,
    types: Iterable[str] | None = None,
    to: str | None = None,
    dry_run: bool = False,
    progress: ProgressCallback | None = None,
    batch_size: int = 500,
    timeout: float = 5.0,
    publishers: Publishers | None = None,
) -> ReplaySummary:
    """Re-publish the events the services staged in ``[since, until]`` (``outbox.created_at``;
    ``until`` defaults to the moment the replay starts) and their relays published, to
    ``to`` or else to every consumer queue of the topology bound to the event's type. The
    derived events (``order.*``, ``entitlement.*``) are not in ``paylane.log``: this is
    where they are replayed from. ``producers`` (``order``, ``entitlement``) and ``types``
    select rows; when ``to`` is a service queue, ``types`` defaults to its routing keys, as
    for :func:`replay_log`. A row not yet published is skipped: its relay sends it. Each
    copy names its producer's broker user (``publishers``) as its original publisher.
    """
    identities = publishers or Publishers()
    since, end, wanted = await _window(connection, since, until, types, to, timeout)

    async def copies() -> AsyncGenerator[_Taken, None]:
        after_id = 0
        while rows := await _outbox_rows(pool, since, end, producers, after_id, batch_size):
            for row in rows:
                after_id = row["id"]
                yield _outbox_copy(row, wanted, to, identities)

    return await _replay(
        connection, OUTBOX, copies(), None, dry_run=dry_run, progress=progress, timeout=timeout
    )


async def _outbox_rows(
    pool: aiomysql.Pool,
    since: datetime,
    end: datetime,
    producers: Iterable[str] | None,
    after_id: int,
    limit: int,
) -> list[dict[str, Any]]:
    """The next rows of the window, in the order they were staged (by id)."""
    chosen = sorted(set(producers or ()))
    where = f" AND producer IN ({placeholders(len(chosen))})" if chosen else ""
    naive = (since.replace(tzinfo=None), end.replace(tzinfo=None))  # the columns hold UTC
    # A transaction of its own (db.acquire answers a cancellation even against a stalled
    # server), ended at once: the read view of this non-autocommit connection with it.
    async with transaction(pool) as cur:
        await cur.execute(
            "SELECT id, producer, event_id, routing_key, payload, headers, created_at,"
            " published_at FROM outbox WHERE created_at BETWEEN %s AND %s AND id > %s"
            f"{where} ORDER BY id LIMIT %s",
            (*naive, after_id, *chosen, limit),
        )
        rows: list[dict[str, Any]] = list(await cur.fetchall())
    return rows


def _outbox_copy(
    row: dict[str, Any], wanted: frozenset[str] | None, to: str | None, publishers: Publishers
) -> _Taken:
    event_type = row["routing_key"]
    held = "(not yet published)" if row["published_at"] is None else None  # its relay's
    targets, skipped = _route(event_type, wanted, to, held)
    if skipped is not None:
        return _Taken(event_type, skipped=skipped)
    envelope = Envelope.model_validate_json(row["payload"])
    stored = json.loads(row["headers"]) if row["headers"] else {}
    marks = {REPLAYED_FROM_HEADER: OUTBOX}
    headers = replay_headers(stored, marks, publishers.of_producer(row["producer"]))

    async def send(publisher: Publisher, target: str, exchange: str) -> None:
        await publisher.publish_event_to_queue(target, envelope, headers, exchange=exchange)

    return _Taken(
        event_type,
        targets,
        send,
        message_id=envelope.event_id,
        type=event_type,
        correlation_id=envelope.correlation_id,
        timestamp=row["created_at"].replace(tzinfo=UTC),
    )


# --- helpers -------------------------------------------------------------------------------


async def _ready_count(connection: AbstractConnection, queue: str, timeout: float) -> int | None:
    """Ready messages in ``queue`` as the broker counts them now, ``None`` if it does not
    exist. A passive declare of a missing queue closes its channel, hence a channel of its
    own; and the underlying channel, as aio-pika's robust channel may answer from a cache.
    """
    async with _reading_channel(connection) as channel:
        try:
            async with asyncio.timeout(timeout):
                underlay = await channel.get_underlay_channel()
                declared = await underlay.queue_declare(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None
        except TimeoutError:
            raise ReplayError(f"broker did not answer within {timeout:g}s") from None
    return declared.message_count or 0


@contextlib.asynccontextmanager
async def _reading_channel(connection: AbstractConnection) -> AsyncIterator[AbstractChannel]:
    """A channel of its own, without confirms; closing it hands back every delivery still
    unacked (and ends its consumers)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        yield channel
    finally:
        await _close(channel)


async def _get(queue: AbstractQueue, timeout: float) -> AbstractIncomingMessage | None:
    try:
        async with asyncio.timeout(timeout):  # not get(timeout=): see _raise_if_cancelled
            message = await queue.get(no_ack=False, fail=False, timeout=None)
    except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError) as exc:
        raise ReplayError(f"broker unavailable: {type(exc).__name__}: {exc}") from None
    return message


async def _settle(operation: Awaitable[None], timeout: float) -> None:
    """An ack or nack; failing means the channel is gone, and with it our deliveries (the
    broker hands them back): stop rather than go on with a channel that holds nothing."""
    try:
        async with asyncio.timeout(timeout):
            await operation
    except (TimeoutError, aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
        raise ReplayError(f"broker unavailable: {type(exc).__name__}: {exc}") from None


@contextlib.asynccontextmanager
async def _replay_publisher(
    connection: AbstractConnection, dry_run: bool, timeout: float
) -> AsyncIterator[Publisher | None]:
    """A publisher on a confirm channel of its own, closed after; none for a dry run.
    Its messages carry the connection's user as ``user_id`` (the replaying identity)."""
    if dry_run:
        yield None
        return
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        yield Publisher(channel, channel.default_exchange, timeout, connection=connection)
    finally:
        await _close(channel)


async def _close(channel: AbstractChannel) -> None:
    if not channel.is_closed:
        with contextlib.suppress(Exception):
            await channel.close()


def _raise_if_cancelled() -> None:
    """Stop if this task was cancelled (Ctrl-C, a caller's timeout) even though the
    awaited call returned: on Python 3.11 ``asyncio.wait_for``, which aiormq uses for its
    RPC deadlines, can return a result and drop the cancellation when both happen at once,
    and a replay that ignored Ctrl-C would go on moving messages."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _notify(progress: ProgressCallback | None, summary: ReplaySummary) -> None:
    if progress is not None:
        progress(summary)


def _default_limits() -> dict[str, int]:
    return {spec.name: spec.delivery_limit for spec in QUEUES}


def _x_death(headers: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    deaths = headers.get("x-death")
    if not isinstance(deaths, list | tuple):
        return []
    return [d for d in deaths if isinstance(d, Mapping)]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return _utc(value)
    text = _text(value)
    if not text:
        return None
    try:
        return _utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def _window(
    connection: AbstractConnection,
    since: datetime,
    until: datetime | None,
    types: Iterable[str] | None,
    to: str | None,
    timeout: float,
) -> tuple[datetime, datetime, frozenset[str] | None]:
    """A window replay's bounds (``until`` defaults to now) and the types it replays; the
    queues it would send to are checked to exist: what :func:`replay_log` and
    :func:`replay_outbox` share."""
    since = _utc(since)
    end = _utc(until) if until is not None else datetime.now(UTC)
    if end < since:
        raise ReplayError(f"until {end.isoformat()} is before since {since.isoformat()}")
    wanted = frozenset(types) if types else None
    if wanted is None and to is not None:
        # A service queue gets only the types it is bound to: anything else would be
        # rejected by its consumer and end up in its DLQ.
        spec = next((q for q in QUEUES if q.name == to), None)
        wanted = frozenset(spec.event_types) if spec is not None else None
    if to == LOG_STREAM:
        raise ReplayError(f"{LOG_STREAM} is a replay source, not a target")
    for name in [to] if to is not None else _consumers(wanted):
        if await _ready_count(connection, name, timeout) is None:
            raise ReplayError(f"queue {name!r} does not exist")
    return since, end, wanted
