"""Replay (docs/commands.md) against real RabbitMQ + MySQL: dead letters back to their queue, events
from the stream ``paylane.log`` or from the outbox to one queue; nothing lost when
interrupted, nothing applied twice when replayed.

Every test uses queues and routing keys of its own: the service queues of the session's
vhost (``order.payments``, ``entitlement.orders``) may be consumed by other suites' services.
The stream is bound only to the events from outside (``topology.LOG_KEYS``), so a log test
binds it to its own routing key too (:func:`log_key`); an outbox test stages rows under a
producer of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from paylane_common.broker.publisher import Publisher, envelope_message
from paylane_common.broker.replay import (
    REPLAYED_FROM_HEADER,
    REPLAYED_HEADER,
    REPLAYED_REASON_HEADER,
    ReplayError,
    ReplaySummary,
    list_dlq,
    parse_when,
    replay_dlq,
    replay_log,
    replay_outbox,
)
from paylane_common.broker.topology import (
    LEGACY_LOG_KEY,
    LOG_KEYS,
    LOG_STREAM,
    QueueSpec,
    declare_exchange,
    declare_queue,
    declare_topology,
)
from paylane_common.contract import events
from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_common.contract.events import Envelope, make_event
from paylane_common.delivery import outbox
from paylane_common.delivery.consumer import (
    ATTEMPT_HEADER,
    FAILED_AT_HEADER,
    ORIGIN_HEADER,
    REASON_HEADER,
    Reject,
    Retry,
)
from paylane_common.storage.db import placeholders, transaction
from paylane_entitlement.grants import EntitlementApplier
from tests.support.events import order_paid, payment_succeeded
from tests.support.observed import Observed
from tests.support.polling import eventually
from tests.support.seeding import add_user

#: The consumer queues bound to order.paid: entitlement's and the backend's webhooks'.
PAID_QUEUES = {"entitlement.orders", "order.webhooks"}

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def totals(output: str) -> tuple[int, int, int]:
    """moved, skipped, failed from the summary table's ``total`` row."""
    found = re.search(r"^\W*total\W+(\d+)\W+(\d+)\W+(\d+)", output, re.M)
    assert found, output
    moved, skipped, failed = (int(n) for n in found.groups())
    return moved, skipped, failed


def payment() -> Envelope:
    """A payment.succeeded of an order whose number starts with R (listings check it)."""
    return payment_succeeded(f"R{uuid.uuid4().hex[:20]}").envelope


@pytest.fixture
async def make_spec(channel) -> AsyncIterator[Callable[..., Awaitable[QueueSpec]]]:
    """Declares unique consumer queues (+ .dlq, .retry.*), deleted afterwards."""
    made: list[QueueSpec] = []

    async def make(delivery_limit: int = 10, routing_keys: tuple[str, ...] = ()) -> QueueSpec:
        spec = QueueSpec(f"test.replay.{uuid.uuid4().hex}", routing_keys, delivery_limit)
        await declare_queue(channel, spec)
        made.append(spec)
        return spec

    yield make
    for spec in made:
        for name in (spec.name, spec.dlq, *spec.retry_queues):
            await channel.queue_delete(name)


@pytest.fixture
async def log_key(channel) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """New routing keys the stream is bound to (as to an event from outside), unbound
    afterwards."""
    exchange = await declare_exchange(channel)
    stream = await channel.get_queue(LOG_STREAM, ensure=False)
    made: list[str] = []

    async def make() -> str:
        key = f"test.replay.{uuid.uuid4().hex}"
        await stream.bind(exchange, routing_key=key)
        made.append(key)
        return key

    yield make
    for key in made:
        await stream.unbind(exchange, routing_key=key)


async def ready_count(channel: AbstractChannel, queue: str) -> int:
    """Ready messages as the broker counts them now (not aio-pika's cached declare)."""
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(queue, passive=True)
    assert declared.message_count is not None
    return declared.message_count


async def wait_count(channel: AbstractChannel, queue: str, expected: int) -> None:
    """Bounded polling: broker-side dead-lettering gives nothing to await."""

    async def reached() -> bool:
        return await ready_count(channel, queue) == expected

    await eventually(reached, 10, what=f"{expected} ready in {queue}", interval=0.02)


async def drain(channel: AbstractChannel, queue: str) -> list[AbstractIncomingMessage]:
    """Take (ack) every message in ``queue`` now."""
    source = await channel.get_queue(queue, ensure=False)
    taken = []
    while (message := await source.get(no_ack=False, fail=False)) is not None:
        await message.ack()
        taken.append(message)
    return taken


async def start(amqp_connection, publisher, spec, handler, database) -> Observed:
    consumer = Observed(amqp_connection, publisher, spec, handler, database=database)
    await consumer.start()
    return consumer


async def crash_loop(amqp_connection, channel: AbstractChannel, spec: QueueSpec) -> int:
    """A consumer that dies before acking, again and again (a poison message killing its
    process): fetch, close the channel unacked, until the broker dead-letters it."""
    deliveries = 0
    async with asyncio.timeout(10):
        while await ready_count(channel, spec.dlq) == 0:
            crashing = await amqp_connection.channel()
            message = await (await crashing.get_queue(spec.name, ensure=False)).get(fail=False)
            await crashing.close()
            if message is not None:
                deliveries += 1
            else:  # being returned or dead-lettered right now
                await asyncio.sleep(0.02)
    return deliveries


async def make_dead_letters(amqp_connection, publisher, channel, spec, database) -> dict[str, str]:
    """One dead letter of each kind in ``spec.dlq``: ``poison`` (the broker's delivery
    limit), ``rejected`` (the handler's Reject) and ``exhausted`` (Retry until the budget
    is spent): ``{kind: message_id}``."""
    poison = payment()
    await publisher.publish_to_queue(spec.name, envelope_message(poison))
    assert await crash_loop(amqp_connection, channel, spec) == spec.delivery_limit + 1

    rejected, exhausted = payment(), payment()

    async def broken(envelope: Envelope, data: Any) -> str:
        if envelope.event_id == rejected.event_id:
            raise Reject("bad package")
        raise Retry("not yet", max_attempts=2, delay_s=0.05)

    consumer = await start(amqp_connection, publisher, spec, broken, database)
    for envelope in (rejected, exhausted):
        await publisher.publish_to_queue(spec.name, envelope_message(envelope))
    await consumer.wait_settled(3)  # rejected; exhausted: retried, then dead-lettered
    await consumer.stop()
    await wait_count(channel, spec.dlq, 3)
    return {
        "poison": poison.event_id,
        "rejected": rejected.event_id,
        "exhausted": exhausted.event_id,
    }


async def fill_dlq(publisher: Publisher, spec: QueueSpec, count: int, reason: str) -> list[str]:
    """``count`` dead letters as the consumer writes them."""
    ids = []
    for _ in range(count):
        envelope = payment()
        headers = {REASON_HEADER: reason, ORIGIN_HEADER: spec.name, ATTEMPT_HEADER: 3}
        headers[FAILED_AT_HEADER] = datetime.now(UTC).isoformat()
        await publisher.publish_to_queue(spec.dlq, envelope_message(envelope, headers))
        ids.append(envelope.event_id)
    return ids


# --- time windows ----------------------------------------------------------------------------


def test_parse_when_accepts_iso_and_ages():
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_when("2026-11-22T10:00:00Z", now) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_when("2026-11-22T10:00:00", now) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_when("2026-11-22T18:00:00+08:00", now) == datetime(2026, 11, 22, 10, tzinfo=UTC)
    assert parse_when("30m", now) == now - timedelta(minutes=30)
    assert parse_when("2h", now) == now - timedelta(hours=2)
    assert parse_when("1d ago", now) == now - timedelta(days=1)
    assert parse_when("now", now) == now
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_when("yesterday", now)


# --- the DLQ ---------------------------------------------------------------------------------


async def test_dead_letters_are_listed_with_why_and_nothing_is_consumed(
    amqp_connection, publisher, channel, make_spec, database
):
    spec = await make_spec(delivery_limit=2)
    ids = await make_dead_letters(amqp_connection, publisher, channel, spec, database)

    letters = await list_dlq(amqp_connection, spec.name, delivery_limits={spec.name: 2})
    by_id = {d.message_id: d for d in letters}
    assert set(by_id) == set(ids.values())
    poison, rejected = by_id[ids["poison"]], by_id[ids["rejected"]]
    exhausted = by_id[ids["exhausted"]]
    assert (poison.reason, poison.delivery_count, poison.dead_lettered) == ("delivery_limit", 3, 1)
    assert (rejected.reason, rejected.delivery_count) == ("bad package", 1)
    assert (exhausted.reason, exhausted.delivery_count) == ("not yet (after 2 attempts)", 2)
    for letter in letters:
        assert letter.origin == spec.name
        assert letter.type == events.PAYMENT_SUCCEEDED
        assert letter.correlation_id is not None and letter.correlation_id.startswith("R")
        assert letter.failed_at is not None
        assert abs(datetime.now(UTC) - letter.failed_at) < timedelta(minutes=1)
    # Handed back by closing the channel: the broker requeues them a moment later.
    await wait_count(channel, spec.dlq, 3)

    # Listing by the DLQ's own name, with a limit, and a dry-run replay consume nothing.
    assert len(await list_dlq(amqp_connection, spec.dlq, limit=1)) == 1
    await wait_count(channel, spec.dlq, 3)
    dry = await replay_dlq(amqp_connection, spec.dlq, dry_run=True)
    assert (dry.dry_run, dry.moved, dry.failed) == (True, 3, 0)
    assert {reason: t.moved for (reason, _), t in dry.groups.items()} == {
        "delivery_limit": 1,
        "bad package": 1,
        "not yet (after 2 attempts)": 1,
    }
    assert {target for _, target in dry.groups} == {spec.name}
    assert {item.message_id for item in dry.items} == set(ids.values())
    await wait_count(channel, spec.dlq, 3)
    assert await ready_count(channel, spec.name) == 0


async def test_replay_after_the_fix_processes_each_dead_letter_once(
    amqp_connection, publisher, channel, make_spec, database
):
    spec = await make_spec(delivery_limit=2)
    ids = await make_dead_letters(amqp_connection, publisher, channel, spec, database)

    calls: defaultdict[str, int] = defaultdict(int)
    outcomes: Counter[str] = Counter()
    headers: dict[str, dict[str, Any]] = {}

    async def fixed(envelope: Envelope, data: Any) -> str:
        # Still flaky once per message: only a reset retry budget lets the message that
        # had spent its budget (attempt 1 of 2) through.
        calls[envelope.event_id] += 1
        if calls[envelope.event_id] == 1:
            raise Retry("flaky", max_attempts=2, delay_s=0.05)
        outcomes[envelope.event_id] += 1
        return "processed"

    class Recording(Observed):
        async def process(self, message: AbstractIncomingMessage) -> None:
            headers.setdefault(message.message_id or "", dict(message.headers or {}))
            await super().process(message)

    consumer = Recording(amqp_connection, publisher, spec, fixed, database=database)
    await consumer.start()
    progress: list[int] = []
    try:
        summary = await replay_dlq(
            amqp_connection, spec.name, progress=lambda s: progress.append(s.seen)
        )
        await consumer.wait_settled(6)  # each: retried once, then processed
    finally:
        await consumer.stop()

    assert (summary.moved, summary.skipped, summary.failed, summary.total) == (3, 0, 0, 3)
    assert summary.ok and progress[0] == 0 and progress[-1] == 3
    assert outcomes == {message_id: 1 for message_id in ids.values()}
    for name in (spec.dlq, spec.name, *spec.retry_queues):
        assert await ready_count(channel, name) == 0
    replayed = headers[ids["rejected"]]
    assert replayed[ATTEMPT_HEADER] == 0 and replayed[REPLAYED_HEADER] == 1
    assert replayed[REPLAYED_REASON_HEADER] == "bad package"
    assert REASON_HEADER not in replayed and ORIGIN_HEADER not in replayed
    assert "x-death" not in headers[ids["poison"]]


async def test_a_replay_killed_half_way_and_run_again_loses_nothing(
    amqp_connection, publisher, channel, make_spec
):
    spec = await make_spec()
    ids = await fill_dlq(publisher, spec, 200, "database went away")
    halfway = asyncio.Event()

    def progress(summary: ReplaySummary) -> None:
        if summary.moved >= 50:
            halfway.set()

    run = asyncio.create_task(replay_dlq(amqp_connection, spec.dlq, progress=progress))
    async with asyncio.timeout(10):
        await halfway.wait()
    run.cancel()  # the operator's Ctrl-C, at whatever step the replay is in
    with pytest.raises(asyncio.CancelledError):
        await run
    # The message in flight when it stopped is in both queues at worst, never in neither
    # (closing the channel hands it back to the DLQ; the broker does that asynchronously).
    moved = left = 0

    async def all_back() -> bool:
        nonlocal moved, left
        moved = await ready_count(channel, spec.name)
        left = await ready_count(channel, spec.dlq)
        return moved + left >= 200

    await eventually(all_back, 10, what="every message back in a queue", interval=0.02)
    assert 50 <= moved < 200 and moved + left <= 201

    summary = await replay_dlq(amqp_connection, spec.dlq)
    assert summary.ok and summary.moved == left
    assert await ready_count(channel, spec.dlq) == 0
    replayed = await drain(channel, spec.name)
    assert len({m.message_id for m in replayed}) == 200
    assert {m.message_id for m in replayed} == set(ids)
    assert len(replayed) - 200 <= 1
    assert all(m.headers[ATTEMPT_HEADER] == 0 for m in replayed)


async def test_limit_and_a_missing_target_leave_dead_letters_in_place(
    amqp_connection, publisher, channel, make_spec
):
    spec = await make_spec()
    await fill_dlq(publisher, spec, 5, "boom")
    summary = await replay_dlq(amqp_connection, spec.name, limit=2)
    assert (summary.total, summary.moved) == (2, 2)
    assert await ready_count(channel, spec.name) == 2
    assert await ready_count(channel, spec.dlq) == 3

    # Their origin queue is gone: every one fails, each once, and stays in the DLQ.
    await channel.queue_delete(spec.name)
    summary = await replay_dlq(amqp_connection, spec.name)
    assert (summary.moved, summary.failed, summary.ok) == (0, 3, False)
    assert summary.errors == {f"{spec.name}: message for {spec.name!r} was unroutable": 3}
    await wait_count(channel, spec.dlq, 3)

    with pytest.raises(ReplayError, match="does not exist"):
        await replay_dlq(amqp_connection, f"no.such.queue.{uuid.uuid4().hex}")


# --- the stream ------------------------------------------------------------------------------


async def create_user(db_pool) -> str:
    """A row of the shared ``users`` table with the seed's defaults (free, 3)."""
    return await add_user(db_pool, nickname="replay-test")


async def users_state(db_pool, user_ids: list[str]) -> dict[str, tuple[str, int]]:
    async with transaction(db_pool) as cur:
        marks = placeholders(len(user_ids))
        await cur.execute(
            f"SELECT id, payment_status, regenerate_count FROM users WHERE id IN ({marks})",
            user_ids,
        )
        return {r["id"]: (r["payment_status"], r["regenerate_count"]) for r in await cur.fetchall()}


async def publish_at(channel: AbstractChannel, envelope: Envelope, key: str, at: datetime) -> None:
    """Publish to the exchange as if at ``at`` (the AMQP timestamp the window reads)."""
    message = envelope_message(envelope)
    message.timestamp = at
    exchange = await declare_exchange(channel)
    await exchange.publish(message, routing_key=key, mandatory=True)


async def test_log_replay_redrives_a_window_and_nothing_is_granted_twice(
    amqp_connection, publisher, channel, db_pool, make_spec, database, log_key
):
    key, elsewhere = await log_key(), await log_key()
    # Bound to a routing key of its own (its events still carry type order.paid): the
    # session's entitlement.orders may be consumed by another suite's entitlement service.
    spec = await make_spec(routing_keys=(key,))
    outcomes: defaultdict[str, list[str]] = defaultdict(list)
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)

    async def handler(envelope: Envelope, data: Any) -> str:
        outcome = await applier(envelope, data)
        outcomes[envelope.event_id].append(outcome)
        return outcome

    users = [await create_user(db_pool) for _ in range(3)]
    since = datetime.now(UTC)
    # Outside the window or of another type: in the stream only (no queue is bound).
    early = order_paid(users[0], "premium").envelope
    await publish_at(channel, early, elsewhere, since - timedelta(seconds=30))
    paid = [order_paid(user, "premium").envelope for user in users]
    for envelope in paid:
        await publisher.publish(envelope, routing_key=key)
    other = make_event(
        events.ENTITLEMENT_GRANTED,
        events.Entitlement(
            user_id=users[0], out_trade_no="R1", payment_status="premium", regenerate_count=1
        ),
    )
    await publisher.publish(other, routing_key=elsewhere)
    until = datetime.now(UTC)

    consumer = await start(amqp_connection, publisher, spec, handler, database)
    try:
        await consumer.wait_settled(3)
        granted = await users_state(db_pool, users)
        grant = DEFAULT_CATALOG["premium"].regenerate_grant
        assert granted == {user: ("premium", 3 + grant) for user in users}

        # A dry run without --to names the service queue bound to the type; moves nothing.
        dry = await replay_log(
            amqp_connection,
            since=since,
            until=until,
            types=[events.ORDER_PAID],
            dry_run=True,
            idle_timeout=1.0,
        )
        mine = {e.event_id for e in paid}
        assert {i.message_id for i in dry.items} >= mine
        # Every consumer queue order.paid is bound to: the grant's and the webhooks'.
        assert {i.target for i in dry.items if i.message_id in mine} == PAID_QUEUES
        assert early.event_id not in {i.message_id for i in dry.items}
        # --to a service queue without --type: only the types that queue is bound to.
        dry = await replay_log(
            amqp_connection,
            since=since,
            until=until,
            to="entitlement.orders",
            dry_run=True,
            idle_timeout=1.0,
        )
        assert {i.message_id for i in dry.items} >= mine
        assert {i.type for i in dry.items} <= {events.ORDER_PAID, events.ORDER_REFUNDED}
        assert dry.groups[(events.ENTITLEMENT_GRANTED, "(not selected)")].skipped >= 1

        summary = await replay_log(
            amqp_connection,
            since=since,
            until=until,
            types=[events.ORDER_PAID],
            to=spec.name,
            idle_timeout=1.0,
        )
        await consumer.wait_settled(summary.moved)
    finally:
        await consumer.stop()

    assert summary.ok and summary.moved >= 3
    assert summary.groups[(events.ENTITLEMENT_GRANTED, "(not selected)")].skipped >= 1
    assert {event_id: outcomes[event_id] for event_id in mine} == {
        event_id: ["granted", "duplicate"] for event_id in mine
    }
    assert early.event_id not in outcomes
    assert await users_state(db_pool, users) == granted
    async with transaction(db_pool) as cur:
        marks = placeholders(len(users))
        await cur.execute(
            "SELECT out_trade_no, COUNT(*) AS n FROM entitlement_grants"
            f" WHERE user_id IN ({marks}) GROUP BY out_trade_no",
            users,
        )
        rows = {r["out_trade_no"]: r["n"] for r in await cur.fetchall()}
    assert rows == {e.data["out_trade_no"]: 1 for e in paid}
    for name in (spec.name, spec.dlq, *spec.retry_queues):
        assert await ready_count(channel, name) == 0


async def test_log_replay_copies_keep_the_message_and_stop_past_the_window(
    amqp_connection, publisher, channel, log_key
):
    key = await log_key()
    target = await channel.declare_queue(exclusive=True)
    since = datetime.now(UTC)
    # From a publisher whose clock runs an hour ahead: reported, neither replayed nor an
    # end of the scan.
    ahead = payment()
    await publish_at(channel, ahead, key, since + timedelta(hours=1))
    sent = [payment() for _ in range(3)]
    for envelope in sent:
        await publisher.publish(envelope, routing_key=key, headers={"x-test": key})
    until = datetime.now(UTC)
    # AMQP timestamps are whole seconds: the next event is past the window only once the
    # clock has left until's second (nothing to await but the clock).
    next_second = until.replace(microsecond=0) + timedelta(seconds=1)
    async with asyncio.timeout(2):
        while True:
            left = (next_second - datetime.now(UTC)).total_seconds()
            if left <= 0:
                break
            await asyncio.sleep(left)
    late = payment()
    await publisher.publish(late, routing_key=key)

    summary = await replay_log(
        amqp_connection,
        since=since,
        until=until,
        types=[events.PAYMENT_SUCCEEDED],
        to=target.name,
        clock_skew=timedelta(0),
        idle_timeout=30,  # the scan must end at the late event, not by going idle
    )
    assert summary.ok and summary.moved >= 3
    assert summary.groups[(events.PAYMENT_SUCCEEDED, "(timestamp in the future)")].skipped >= 1
    copies = {m.message_id: m for m in await drain(channel, target.name)}
    assert ahead.event_id not in copies and late.event_id not in copies
    for envelope in sent:
        copy = copies[envelope.event_id]
        assert copy.body == envelope.to_json()
        assert (copy.type, copy.correlation_id) == (envelope.type, envelope.correlation_id)
        assert copy.content_type == "application/json" and copy.timestamp is not None
        assert copy.headers[REPLAYED_FROM_HEADER] == LOG_STREAM
        assert copy.headers["x-test"] == key and "x-stream-offset" not in copy.headers

    with pytest.raises(ReplayError, match="does not exist"):
        await replay_log(amqp_connection, since=since, to=f"no.such.{uuid.uuid4().hex}")
    with pytest.raises(ReplayError, match="before"):
        await replay_log(amqp_connection, since=until, until=since - timedelta(seconds=1))


async def test_the_stream_is_bound_to_what_came_from_outside_and_old_bindings_go(
    channel, infra, amqp_url
):
    """Declaring the topology on a broker from before (stream bound ``#``) leaves the stream
    bound to the events from outside only: derived events are kept in the outbox."""
    vhost = unquote(urlsplit(amqp_url).path[1:])
    exchange = await declare_exchange(channel)
    stream = await channel.get_queue(LOG_STREAM, ensure=False)
    await stream.bind(exchange, routing_key=LEGACY_LOG_KEY)
    assert LEGACY_LOG_KEY in infra.broker.bindings(vhost, LOG_STREAM)
    await declare_topology(channel)
    bound = {k for k in infra.broker.bindings(vhost, LOG_STREAM) if not k.startswith("test.")}
    assert bound == set(LOG_KEYS) == set(events.EXTERNAL_EVENTS)
    assert not {events.ORDER_PAID, events.ENTITLEMENT_GRANTED} & bound


# --- outbox ----------------------------------------------------------------------------------


async def stage_published(
    db_pool, producer: str, envelopes: list[Envelope], *, published: bool = True
) -> None:
    """Rows as a service stages them and (``published``) its relay marks them."""
    async with transaction(db_pool) as cur:
        for envelope in envelopes:
            await outbox.add(cur, producer, envelope, {"x-test": producer})
        if published:
            await cur.execute(
                "UPDATE outbox SET published_at = NOW(6) WHERE producer = %s", (producer,)
            )


async def test_outbox_replay_redrives_derived_events_once_each(
    amqp_connection, publisher, channel, db_pool, make_spec, database
):
    """``order.paid`` is not in the stream: replayed from the outbox, within the window and
    of the producer asked for, each is granted once and a second replay is absorbed."""
    producer = f"t{uuid.uuid4().hex[:12]}"
    spec = await make_spec(routing_keys=(f"test.replay.{uuid.uuid4().hex}",))
    outcomes: defaultdict[str, list[str]] = defaultdict(list)
    applier = EntitlementApplier(db_pool, DEFAULT_CATALOG)

    async def handler(envelope: Envelope, data: Any) -> str:
        outcome = await applier(envelope, data)
        outcomes[envelope.event_id].append(outcome)
        return outcome

    users = [await create_user(db_pool) for _ in range(3)]
    since = datetime.now(UTC)
    paid = [order_paid(user, "premium").envelope for user in users]
    await stage_published(db_pool, producer, paid)
    pending = order_paid(users[0], "basic").envelope
    await stage_published(db_pool, producer + "p", [pending], published=False)
    until = datetime.now(UTC)
    mine = {e.event_id for e in paid}

    dry = await replay_outbox(
        amqp_connection, db_pool, since=since, until=until, producers=[producer], dry_run=True
    )
    assert {i.message_id for i in dry.items} == mine
    assert {i.target for i in dry.items} == PAID_QUEUES
    skipped = await replay_outbox(
        amqp_connection,
        db_pool,
        since=since,
        until=until,
        producers=[producer + "p"],
        to=spec.name,
    )
    assert skipped.groups[(events.ORDER_PAID, "(not yet published)")].skipped == 1
    assert skipped.moved == 0

    consumer = await start(amqp_connection, publisher, spec, handler, database)
    try:
        first = await replay_outbox(
            amqp_connection,
            db_pool,
            since=since,
            until=until,
            producers=[producer],
            types=[events.ORDER_PAID],
            to=spec.name,
        )
        await consumer.wait_settled(3)
        again = await replay_outbox(
            amqp_connection,
            db_pool,
            since=since,
            until=until,
            producers=[producer],
            to=spec.name,
        )
        await consumer.wait_settled(3)
    finally:
        await consumer.stop()
    assert first.ok and (first.moved, again.moved) == (3, 3)
    assert dict(outcomes) == {event_id: ["granted", "duplicate"] for event_id in mine}
    grant = DEFAULT_CATALOG["premium"].regenerate_grant
    assert await users_state(db_pool, users) == {u: ("premium", 3 + grant) for u in users}
    assert pending.event_id not in outcomes
    for name in (spec.name, spec.dlq, *spec.retry_queues):
        assert await ready_count(channel, name) == 0


async def test_outbox_replay_copies_carry_the_event_and_its_trace(
    amqp_connection, channel, db_pool
):
    producer = f"t{uuid.uuid4().hex[:12]}"
    target = await channel.declare_queue(exclusive=True)
    before = datetime.now(UTC)
    early = order_paid(f"user-{uuid.uuid4().hex[:8]}").envelope
    await stage_published(db_pool, producer, [early])
    since = datetime.now(UTC)
    sent = [order_paid(f"user-{uuid.uuid4().hex[:8]}").envelope for _ in range(2)]
    await stage_published(db_pool, producer, sent)
    summary = await replay_outbox(
        amqp_connection, db_pool, since=since, producers=[producer], to=target.name
    )
    assert summary.ok and summary.moved == 2 and summary.seen == 2
    copies = {m.message_id: m for m in await drain(channel, target.name)}
    assert set(copies) == {e.event_id for e in sent}
    for envelope in sent:
        copy = copies[envelope.event_id]
        assert copy.body == envelope.to_json()
        assert (copy.type, copy.correlation_id) == (envelope.type, envelope.correlation_id)
        assert copy.headers[REPLAYED_FROM_HEADER] == "outbox"
        assert copy.headers["x-test"] == producer
    with pytest.raises(ReplayError, match="does not exist"):
        await replay_outbox(
            amqp_connection, db_pool, since=before, to=f"no.such.{uuid.uuid4().hex}"
        )
    with pytest.raises(ReplayError, match="before"):
        await replay_outbox(amqp_connection, db_pool, since=since, until=before)


# --- the command -----------------------------------------------------------------------------


async def paylane(
    amqp_url: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    env = {**os.environ, "AMQP_URL": amqp_url, "LOG_FORMAT": "json", **(env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paylane.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_lists_dry_runs_and_replays(amqp_url, publisher, channel, make_spec):
    spec = await make_spec()
    ids = await fill_dlq(publisher, spec, 3, "bad package")

    code, out, err = await paylane(amqp_url, "dlq", "list", spec.name, "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert (listing["count"], listing["by_reason"]) == (3, {"bad package": 3})
    assert {d["message_id"] for d in listing["dead_letters"]} == set(ids)
    assert {d["origin"] for d in listing["dead_letters"]} == {spec.name}

    code, out, err = await paylane(amqp_url, "replay", "dlq", spec.dlq, "--dry-run")
    assert code == 0, err
    assert "dry run" in out and "bad package" in out
    assert totals(out) == (3, 0, 0)
    assert await ready_count(channel, spec.dlq) == 3 and await ready_count(channel, spec.name) == 0

    code, out, err = await paylane(amqp_url, "replay", "dlq", spec.name)
    assert code == 0, err
    assert totals(out) == (3, 0, 0)
    assert await ready_count(channel, spec.dlq) == 0 and await ready_count(channel, spec.name) == 3

    code, _, err = await paylane(amqp_url, "replay", "log", "--since", "1m", "--to", "no.such")
    assert code == 1 and "'no.such' does not exist" in err
    code, _, err = await paylane(amqp_url, "replay", "log", "--since", "yesterday")
    assert code == 2 and "ISO 8601" in err


async def test_cli_replays_the_outbox(amqp_url, mysql_url, channel, db_pool):
    """``paylane replay outbox``: a dry run lists, a run publishes with confirms."""
    target = await channel.declare_queue(f"test.replay.{uuid.uuid4().hex}", auto_delete=True)
    paid = order_paid(f"user-{uuid.uuid4().hex[:8]}").envelope
    # The window starts just before this row (other suites' services write the same
    # producer's rows into this database); wide enough a terminal that no id is folded.
    since = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    await stage_published(db_pool, "order", [paid])
    env = {"MYSQL_URL": mysql_url, "COLUMNS": "300"}
    args = ("replay", "outbox", "--since", since, "--producer", "order", "--type", "order.paid")
    code, out, err = await paylane(amqp_url, *args, "--to", target.name, "--dry-run", env=env)
    assert code == 0, err
    assert "outbox: dry run" in out and paid.event_id in out
    assert await ready_count(channel, target.name) == 0
    code, out, err = await paylane(amqp_url, *args, "--to", target.name, env=env)
    assert code == 0, err
    copies = {m.message_id for m in await drain(channel, target.name)}
    assert paid.event_id in copies and totals(out)[0] == len(copies)
    code, _, err = await paylane(amqp_url, *args, "--type", "payment.succeeded", env=env)
    assert code == 2 and "invalid choice" in err  # from outside: replayed from the log
