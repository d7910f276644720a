"""Least privilege on the real RabbitMQ and MySQL: each service's broker user holds exactly
what deploy/rabbitmq/permissions.json gives it, each service's database user exactly its
grants in deploy/mysql/grants.sql, and the services run under them (issue #10).

The users are made here with rabbitmqctl and SQL, in the session's own vhost and
database, and deleted at the end of the module."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aio_pika
import aiohttp
import aiomysql
import pymysql
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import ChannelAccessRefused
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import REGISTRY

from paylane_common.broker import amqp
from paylane_common.broker.identities import ORIGINAL_USER_HEADER, Publishers, connection_user
from paylane_common.broker.publisher import Publisher, envelope_message
from paylane_common.broker.replay import ReplayError, list_dlq, replay_dlq
from paylane_common.broker.topology import (
    ENTITLEMENT_ORDERS,
    EXCHANGE,
    NOTIFIER_KEYS,
    ORDER_PAYMENTS,
    ORDER_WEBHOOKS,
    QUEUES,
    SIGNALS_EXCHANGE,
    declare_exchange,
    declare_topology,
    existing_queue,
    forward_exchange_of,
)
from paylane_common.contract import events
from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_common.contract.events import (
    NotificationRejected,
    OrderCreated,
    PaymentSucceeded,
    make_event,
)
from paylane_common.contract.tokens import TokenSigner
from paylane_common.delivery.consumer import (
    ORIGIN_HEADER,
    REASON_HEADER,
    Reject,
    Retry,
    RetryPolicy,
)
from paylane_common.delivery.retention import (
    RECORD_TABLES,
    RECORDS_LOCK_NAME,
    RetentionPruner,
)
from paylane_common.runtime.exceptions import ConfigError, PublishError
from paylane_common.runtime.outages import Dependency
from paylane_common.storage import db
from paylane_common.storage.db import transaction
from paylane_common.wechatpay import WechatPayError
from paylane_common.wechatpay.cloudhosting import CloudHostingClient, CloudHostingTarget
from paylane_common.wechatpay.testing import (
    APPID,
    MCHID,
    PAYER_OPENID,
    SUCCESS_TIME,
    new_transaction_id,
    order_request,
)
from paylane_notifier.push_log import PushLog
from paylane_notifier.snapshot import load_snapshot
from paylane_order import console_data, console_dlq, console_records, operators
from paylane_order.abnormal import AbnormalRefunds, Remedy
from paylane_order.bills import BillReconciler, Difference
from paylane_order.bindings import OptionalBindings
from paylane_order.business import BusinessTerms, business_package
from paylane_order.config import (
    MerchantConfig,
    ReconcilerConfig,
    ShippingConfig,
    StatusQueryConfig,
)
from paylane_order.fulfilment import count_overdue
from paylane_order.gate import Gate
from paylane_order.order_list import OrderFilters, OrderList, page
from paylane_order.orders import NewOrder, Orders
from paylane_order.payments import PaymentApplier
from paylane_order.query_log import QueryLog
from paylane_order.reconciler import Reconciler
from paylane_order.refund_requests import _note_reason
from paylane_order.refunds import RefundApplier
from paylane_order.rejections import RejectionRecords
from paylane_order.sessions import Sessions
from paylane_order.shipping import AccessTokens, ShippingQueue, ShippingUploader, WechatApi
from paylane_order.status_query import StatusQuery
from paylane_order.users import user_by_openid
from paylane_order.webhooks.store import WebhookStore, config_endpoint_id
from services.order.tests.support import payment_gate
from tests.support import hygiene
from tests.support.events import (
    Delivery,
    order_paid,
    payment_succeeded,
    refund_abnormal,
    refund_succeeded,
)
from tests.support.infra import Infra, unique_name
from tests.support.observed import Observed
from tests.support.polling import eventually, handed_back, ready_messages
from tests.support.queries import fetch_one, order_status
from tests.support.sandbox import running_sandbox, sandbox_settings
from tests.support.seeding import add_order, add_orders, add_user, ago, from_now
from tests.support.stack import Stack
from tests.support.wechat import KIT, FakeWechat

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PERMISSIONS = json.loads((DEPLOY / "rabbitmq" / "permissions.json").read_text())
GRANTS = (DEPLOY / "mysql" / "grants.sql").read_text()


# --- the identities ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker_users(infra: Infra, amqp_url: str) -> Iterator[dict[str, str]]:
    """{service: AMQP URL} of one user per service, permissions as committed."""
    vhost = unquote(urlsplit(amqp_url).path.removeprefix("/"))
    suffix = uuid.uuid4().hex[:8]
    users = {p["user"]: f"{p['user']}-{suffix}" for p in PERMISSIONS["permissions"]}
    urls: dict[str, str] = {}
    try:
        for entry in PERMISSIONS["permissions"]:
            user, password = users[entry["user"]], secrets.token_hex(16)
            hygiene.register(password)
            infra.broker.run(["add_user", user, password])
            regexes = [entry["configure"], entry["write"], entry["read"]]
            infra.broker.run(["set_permissions", "-p", vhost, user, *regexes])
            urls[entry["user"].removeprefix("paylane-")] = (
                f"amqp://{user}:{password}@{infra.amqp_host}:{infra.amqp_port}/"
                + quote(vhost, safe="")
            )
        for entry in PERMISSIONS["topic_permissions"]:
            topic = [entry["exchange"], entry["write"], entry["read"]]
            infra.broker.run(["set_topic_permissions", "-p", vhost, users[entry["user"]], *topic])
        yield urls
    finally:
        for user in users.values():
            try:
                infra.broker.run(["delete_user", user])
            except RuntimeError:
                pass


#: The services with a database user of their own (grants.sql's {<service>_user}).
DB_SERVICES = ("order", "entitlement", "notifier")


def grant_statements(database: str, users: dict[str, str]) -> list[str]:
    """grants.sql's statements for ``database``, ``users`` mapping service to user name."""
    text = "\n".join(line for line in GRANTS.splitlines() if not line.startswith("--"))
    text = text.replace("{database}", database)
    for service, user in users.items():
        text = text.replace(f"{{{service}_user}}", user)
    assert "{" not in text, "grants.sql names a user the tests do not make"
    return [statement.strip() for statement in text.split(";") if statement.strip()]


@pytest.fixture(scope="module")
def service_mysql_urls(infra: Infra, mysql_url: str) -> Iterator[dict[str, str]]:
    """{service: URL} of the session's (migrated) database, each under a user holding
    exactly grants.sql's grants for that service."""
    database = urlsplit(mysql_url).path.removeprefix("/")
    users = {service: unique_name(f"svc_{service[:5]}") for service in DB_SERVICES}
    password = secrets.token_hex(16)
    hygiene.register(password)
    with infra.mysql_admin() as conn, conn.cursor() as cur:
        for name in users.values():
            cur.execute(f"CREATE USER '{name}'@'%%' IDENTIFIED BY %s", (password,))
        for statement in grant_statements(database, users):
            cur.execute(statement)
    try:
        yield {
            service: f"mysql://{user}:{password}@{infra.mysql_host}:{infra.mysql_port}/{database}"
            for service, user in users.items()
        }
    finally:
        with infra.mysql_admin() as conn, conn.cursor() as cur:
            for name in users.values():
                cur.execute(f"DROP USER IF EXISTS '{name}'@'%'")


@pytest.fixture
async def topology(amqp_connection: AbstractRobustConnection) -> AsyncIterator[None]:
    """Declared by the session's own (unrestricted) user, as definitions.json would, with
    a notifier replica's queue (bound to NOTIFIER_KEYS): entitlement events are routable
    whatever else runs in the session's vhost. The consumer queues are emptied
    afterwards: what these tests publish is not for them."""
    channel = await amqp_connection.channel()
    await declare_topology(channel)
    replica = await channel.declare_queue(
        f"notifier.lp-{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True
    )
    for key in NOTIFIER_KEYS:
        await replica.bind(EXCHANGE, routing_key=key)
    yield
    await replica.delete(if_unused=False, if_empty=False)
    for spec in QUEUES:
        await (await channel.get_queue(spec.name, ensure=False)).purge()
    await channel.close()


# --- the broker ----------------------------------------------------------------------------


def _payment(
    out_trade_no: str | None = None, amount: int = 990, **fields: object
) -> Delivery[PaymentSucceeded]:
    """A payment.succeeded as ingress publishes it: a JSAPI payment to the kit's merchant."""
    wechatpay: dict[str, Any] = {
        "payer_total": amount,
        "openid": PAYER_OPENID,
        "trade_type": "JSAPI",
        "success_time": SUCCESS_TIME,
        "mchid": MCHID,
        "appid": APPID,
        **fields,
    }
    number = out_trade_no or f"LP{uuid.uuid4().hex[:20]}"
    return payment_succeeded(number, amount, new_transaction_id(), **wechatpay)


async def _refused(url: str, action) -> ChannelAccessRefused:
    """Run ``action(channel)`` as the user of ``url``: the broker must close the channel
    with 403 (aiormq raises ChannelAccessRefused for that reply code only)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        with pytest.raises(ChannelAccessRefused) as refused:
            await action(channel)
        return refused.value
    finally:
        await connection.close()


async def test_ingress_user_publishes_payment_events_but_never_order_paid(
    broker_users: dict[str, str], topology: None, amqp_connection: AbstractRobustConnection
) -> None:
    url = broker_users["ingress"]
    spy_channel = await amqp_connection.channel()
    spy = await spy_channel.declare_queue(f"test.spy.{uuid.uuid4().hex}", exclusive=True)
    await spy.bind(await declare_exchange(spy_channel), routing_key="#")

    connection = await amqp.connect(url, "test-ingress")
    try:
        # Without configure permission it cannot declare: it checks that the exchange exists.
        publisher = await Publisher.open(connection, declare=False)
        envelope, _ = _payment()
        await publisher.publish(envelope)  # confirmed
        # The cloud function's order-created call (docs/cloud-function.md): confirmed too.
        created = OrderCreated(
            out_trade_no="170634567890112345",
            user_id="user-1706345678901-xyz789",
            amount_total=2990,
            package_type="premium",
        )
        order_created = make_event(events.ORDER_CREATED, created)
        await publisher.publish(order_created)
        with pytest.raises(PublishError):
            await publisher.publish(order_paid().envelope)
        await publisher.close()
    finally:
        await connection.close()

    # The same, frame by frame: the broker closes the channel with 403 ACCESS_REFUSED.
    async def publish_order_paid(channel: aio_pika.abc.AbstractChannel) -> None:
        exchange = await channel.get_exchange(EXCHANGE, ensure=False)
        await exchange.publish(envelope_message(order_paid().envelope), routing_key="order.paid")

    refused = await _refused(url, publish_order_paid)
    assert str(refused).startswith("ACCESS_REFUSED - access to topic 'order.paid'"), refused

    # Nor around the exchange: straight into a consumer's queue, or changing the topology.
    async def into_queue(channel: aio_pika.abc.AbstractChannel) -> None:
        message = envelope_message(order_paid().envelope)
        await channel.default_exchange.publish(message, routing_key="entitlement.orders")

    async def declare(channel: aio_pika.abc.AbstractChannel) -> None:
        await declare_topology(channel)

    for action in (into_queue, declare):
        assert str(await _refused(url, action)).startswith("ACCESS_REFUSED"), action

    got = await spy.get(no_ack=True, timeout=5)
    assert got.routing_key == "payment.succeeded" and got.message_id == envelope.event_id
    got = await spy.get(no_ack=True, timeout=5)
    assert got.routing_key == "order.created" and got.message_id == order_created.event_id
    assert await spy.get(no_ack=True, fail=False) is None  # nothing else got through
    await spy_channel.close()


@pytest.mark.parametrize(
    ("service", "allowed", "refused"),
    [
        (
            "order",
            ["order.paid", "order.refunded", "payment.succeeded", *events.FULFILMENT_EVENTS],
            "entitlement.granted",
        ),
        ("entitlement", ["entitlement.granted", "entitlement.revoked"], "fulfilment.succeeded"),
        ("notifier", [], "order.paid"),
        # Its records of rejected notifications (issue 30), nothing of the order's.
        ("ingress", [events.NOTIFICATION_REJECTED], "order.failed"),
    ],
)
async def test_each_user_publishes_only_its_own_events(
    broker_users: dict[str, str], topology: None, service: str, allowed: list[str], refused: str
) -> None:
    connection = await amqp.connect(broker_users[service], f"test-{service}")
    try:
        publisher = await Publisher.open(connection, declare=False)
        for key in allowed:
            await publisher.publish(_payment().envelope, routing_key=key)
        with pytest.raises(PublishError):
            await publisher.publish(_payment().envelope, routing_key=refused)
        await publisher.close()
    finally:
        await connection.close()


async def test_notifier_user_binds_its_own_queue_to_order_and_entitlement_events_only(
    broker_users: dict[str, str], topology: None
) -> None:
    url = broker_users["notifier"]

    def bind(key: str, queue: str = "notifier.test"):
        async def action(channel: aio_pika.abc.AbstractChannel) -> None:
            exchange = await declare_exchange(channel, passive=True)
            declared = await channel.declare_queue(
                f"{queue}.{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True
            )
            await declared.bind(exchange, routing_key=key)

        return action

    connection = await aio_pika.connect(url)
    try:
        for key in ("order.paid", "entitlement.granted", "fulfilment.succeeded"):
            await bind(key)(await connection.channel())
    finally:
        await connection.close()
    # Payments are not the notifier's to see, nor may it make queues outside notifier.*.
    await _refused(url, bind("payment.succeeded"))
    await _refused(url, bind("order.paid", queue="order"))


async def test_order_user_binds_its_two_queues_to_the_events_it_handles_only(
    broker_users: dict[str, str],
    topology: None,
    db_pool: aiomysql.Pool,
    infra: Infra,
    amqp_url: str,
) -> None:
    """The order service keeps order.webhooks and order.payments bound as its endpoints
    and shipping ask (paylane_order.bindings), under its own user: it may bind those two
    to the events it handles, and nothing else."""
    vhost = unquote(urlsplit(amqp_url).path.removeprefix("/"))
    url = broker_users["order"]
    connection = await amqp.connect(url, "test-order")
    try:
        await OptionalBindings(db_pool, connection, shipping=False).reconcile()
        assert not set(ORDER_PAYMENTS.optional_keys) & infra.broker.bindings(
            vhost, ORDER_PAYMENTS.name
        )
        await OptionalBindings(db_pool, connection, shipping=True).reconcile()
        assert set(ORDER_PAYMENTS.optional_keys) <= infra.broker.bindings(
            vhost, ORDER_PAYMENTS.name
        )
    finally:
        await connection.close()

    def bind(queue: str, key: str):
        async def action(channel: aio_pika.abc.AbstractChannel) -> None:
            declared = await channel.get_queue(queue, ensure=True)
            await declared.bind(EXCHANGE, routing_key=key)

        return action

    # Not another service's queue; not a payment (WeChat Pay's word comes from ingress);
    # no key but those two queues' optional ones; no exchange into its forward exchange.
    await _refused(url, bind(ENTITLEMENT_ORDERS.name, "order.paid"))
    await _refused(url, bind(ORDER_PAYMENTS.name, "payment.succeeded"))
    await _refused(url, bind(ORDER_WEBHOOKS.name, "#"))
    await _refused(url, bind(ORDER_WEBHOOKS.name, "order.created"))

    async def into_forward(channel: aio_pika.abc.AbstractChannel) -> None:
        underlay = await channel.get_underlay_channel()
        await underlay.exchange_bind(
            ORDER_PAYMENTS.forward_exchange, EXCHANGE, routing_key=ORDER_PAYMENTS.name
        )

    await _refused(url, into_forward)


def _user_of(url: str) -> str:
    return unquote(urlsplit(url).username or "")


@pytest.mark.parametrize(
    ("service", "queue"),
    [("entitlement", ORDER_PAYMENTS.name), ("order", ENTITLEMENT_ORDERS.name)],
)
async def test_no_service_user_may_publish_through_the_default_exchange(
    broker_users: dict[str, str],
    topology: None,
    amqp_connection: AbstractRobustConnection,
    service: str,
    queue: str,
) -> None:
    """Issue 24: as entitlement's user, a payment.succeeded published to ``amq.default``
    with routing key ``order.payments`` was confirmed and applied (the order paid, the user
    premium, while WeChat said NOTPAY). No service user may write to the default exchange:
    the broker closes the channel, and nothing reaches the queue."""
    envelope, _ = _payment()

    async def into_queue(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.default_exchange.publish(envelope_message(envelope), routing_key=queue)

    refused = await _refused(broker_users[service], into_queue)
    assert str(refused).startswith("ACCESS_REFUSED - access to exchange 'amq.default'"), refused
    channel = await amqp_connection.channel()
    try:
        target = await channel.get_queue(queue, ensure=False)
        while (message := await target.get(no_ack=False, fail=False)) is not None:
            assert message.message_id != envelope.event_id
    finally:
        await channel.close()  # hands back what it looked at


async def _dead_letters(
    connection: AbstractRobustConnection, queue: str
) -> dict[str, aio_pika.abc.AbstractIncomingMessage]:
    """{message_id: message} of the DLQ, looked at and handed back."""
    channel = await connection.channel()
    found = {}
    try:
        dlq = await channel.get_queue(queue, ensure=False)
        while (message := await dlq.get(no_ack=False, fail=False)) is not None:
            found[str(message.message_id)] = message
    finally:
        await channel.close()
    return found


async def test_entitlement_takes_order_events_from_order_only_and_forwards_under_its_user(
    broker_users: dict[str, str],
    topology: None,
    amqp_connection: AbstractRobustConnection,
    publisher: Publisher,
    database: Dependency,
) -> None:
    """Under the deploy permissions (no amq.default, no configure): entitlement's consumer
    takes order.paid published by order's user, retries and dead-letters through its own
    ``entitlement.orders.forward``, and dead-letters an order.paid from any other
    identity with the reason. A replay by the administrator is taken when the original
    was order's, and the forged one stays refused: the replay keeps its publisher."""
    admin = connection_user(amqp_connection)
    publishers = Publishers(
        ingress=_user_of(broker_users["ingress"]),
        order=_user_of(broker_users["order"]),
        entitlement=_user_of(broker_users["entitlement"]),
        replay=admin,
    )
    spec = ENTITLEMENT_ORDERS
    channel = await amqp_connection.channel()
    await (await channel.get_queue(spec.dlq, ensure=False)).purge()
    ok, retried, rejected, forged = (order_paid().envelope for _ in range(4))
    seen: Counter[str] = Counter()

    async def handler(envelope: events.Envelope, data: object) -> str:
        seen[envelope.event_id] += 1
        if envelope.event_id == retried.event_id and seen[envelope.event_id] == 1:
            raise Retry("not yet", delay_s=1)
        if envelope.event_id == rejected.event_id and seen[envelope.event_id] == 1:
            raise Reject("not now")
        return "processed"

    entitlement = await amqp.connect(broker_users["entitlement"], "test-entitlement")
    order = await amqp.connect(broker_users["order"], "test-order")
    try:
        forwards = await Publisher.open(entitlement, declare=False)
        consumer = Observed(
            entitlement,
            forwards,
            spec,
            handler,
            database=database,
            retry=RetryPolicy(base_delay_s=0.01),
            declare=False,
            publishers=publishers,
        )
        await consumer.start()
        try:
            order_publisher = await Publisher.open(order, declare=False)
            for envelope in (ok, retried, rejected):
                await order_publisher.publish(envelope)
            # Another identity's order.paid (here the administrator's, not as a replay).
            await publisher.publish(forged)

            def handled() -> bool:
                return seen[ok.event_id] == 1 and seen[retried.event_id] == 2

            await eventually(handled, what="order's events, one retried")
            letters: dict[str, aio_pika.abc.AbstractIncomingMessage] = {}

            async def both_dead_lettered() -> bool:
                letters.update(await _dead_letters(amqp_connection, spec.dlq))
                return {rejected.event_id, forged.event_id} <= set(letters)

            await eventually(both_dead_lettered, what="the rejected and the forged one")
            assert seen[forged.event_id] == 0  # never reached the handler
            forged_letter, rejected_letter = letters[forged.event_id], letters[rejected.event_id]
            reason = str(forged_letter.headers[REASON_HEADER])
            assert reason.startswith(f"publisher refused: order.paid from '{admin}'"), reason
            assert forged_letter.headers[ORIGINAL_USER_HEADER] == admin
            assert forged_letter.user_id == publishers.entitlement  # forwarded by it
            assert rejected_letter.headers[REASON_HEADER] == "not now"
            assert rejected_letter.headers[ORIGINAL_USER_HEADER] == publishers.order

            # The administrator replays both: order's is taken, the forged one is not.
            async def handed_back() -> bool:  # looked at, then back in the DLQ
                underlay = await channel.get_underlay_channel()
                declared = await underlay.queue_declare(spec.dlq, passive=True)
                return declared.message_count == 2

            await eventually(handed_back, what="the dead letters ready again")
            summary = await replay_dlq(amqp_connection, spec.name)
            assert summary.moved == 2, summary
            await eventually(lambda: seen[rejected.event_id] == 2, what="the replayed one")

            async def forged_back() -> bool:
                letter = (await _dead_letters(amqp_connection, spec.dlq)).get(forged.event_id)
                return letter is not None and letter.headers.get("x-paylane-replayed") == 1

            await eventually(forged_back, what="the forged one refused again")
            assert seen[forged.event_id] == 0
            await order_publisher.close()
        finally:
            await consumer.stop()
            await forwards.close()
    finally:
        await order.close()
        await entitlement.close()
        await (await channel.get_queue(spec.dlq, ensure=False)).purge()
        await channel.close()


async def test_order_user_lists_and_replays_its_own_dlqs_for_the_console_and_no_other(
    broker_users: dict[str, str],
    topology: None,
    amqp_connection: AbstractRobustConnection,
    publisher: Publisher,
) -> None:
    """The console's dead letters (paylane_order.console_dlq) under the order service's
    committed permissions: it reads ``order.payments.dlq`` and replays a letter through
    ``order.payments.forward``, and may not read ``entitlement.orders.dlq``."""
    parked = await ready_messages(amqp_connection, ORDER_PAYMENTS.dlq)
    letter = payment_succeeded(f"LP{uuid.uuid4().hex[:20]}", 990).envelope
    headers = {REASON_HEADER: "unknown out_trade_no", ORIGIN_HEADER: ORDER_PAYMENTS.name}
    for dlq in (ORDER_PAYMENTS.dlq, ENTITLEMENT_ORDERS.dlq):
        message = envelope_message(letter, headers)
        await publisher.publish_to_queue(dlq, message, exchange=forward_exchange_of(dlq))
    order = await amqp.connect(broker_users["order"], "test-order-console")
    try:
        views = {v.name: v for v in await console_dlq.dlqs(order, {})}
        mine = views[ORDER_PAYMENTS.dlq]
        assert mine.error is None and mine.letters is not None
        assert letter.event_id in {x.message_id for x in mine.letters}
        assert views[ENTITLEMENT_ORDERS.dlq].letters is None  # not read: not ours
        await handed_back(amqp_connection, ORDER_PAYMENTS.dlq, parked + 1)
        moved = (await console_dlq.replay(order, ORDER_PAYMENTS.dlq, letter.event_id)).detail
        assert moved.endswith("1 dead letter(s) replayed from order.payments.dlq")
        with pytest.raises(ReplayError, match="ACCESS_REFUSED"):
            await list_dlq(order, ENTITLEMENT_ORDERS.dlq)
    finally:
        await order.close()
        channel = await amqp_connection.channel()
        for dlq in (ORDER_PAYMENTS.dlq, ENTITLEMENT_ORDERS.dlq):
            await (await channel.get_queue(dlq, ensure=False)).purge()
        await channel.close()


# --- the database --------------------------------------------------------------------------


#: ER_TABLEACCESS_DENIED_ERROR ("UPDATE command denied to user … for table …") and
#: ER_COLUMNACCESS_DENIED_ERROR (the same for a column the user may not write).
TABLE_DENIED, COLUMN_DENIED = 1142, 1143
MERCHANT_LP = MerchantConfig("1900000109", "wxd678efh567hg6787", "http://127.0.0.1:9/n", 1800)
#: ER_DBACCESS_DENIED_ERROR: a database-level privilege (LOCK TABLES) not held.
DB_ACCESS_DENIED = 1044


def _connect_args(url: str) -> dict[str, object]:
    dsn = urlsplit(url)
    return {
        "host": dsn.hostname,
        "port": dsn.port or 3306,
        "user": dsn.username,
        "password": unquote(dsn.password or ""),
        "db": dsn.path.removeprefix("/"),
        "autocommit": True,
    }


@contextlib.contextmanager
def _connect(url: str) -> Iterator[pymysql.cursors.Cursor]:
    dsn = urlsplit(url)
    conn = pymysql.connect(
        host=dsn.hostname,
        port=dsn.port or 3306,
        user=dsn.username,
        password=unquote(dsn.password or ""),
        database=dsn.path.removeprefix("/"),
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def _assert_denied(cur: pymysql.cursors.Cursor, code: int, *statements: str) -> None:
    for statement in statements:
        with pytest.raises(pymysql.err.OperationalError) as raised:
            cur.execute(statement)
        assert raised.value.args[0] == code, (statement, raised.value)


def _pool(url: str) -> contextlib.AbstractAsyncContextManager[aiomysql.Pool]:
    return db.create_pool(url, maxsize=2)


async def _user(db_pool: aiomysql.Pool, status: str = "free") -> str:
    return await add_user(
        db_pool,
        openid=f"o-{uuid.uuid4().hex}",
        payment_status=status,
        regenerate_count=3,
        phone="13800000000",
    )


@pytest.mark.parametrize("service", DB_SERVICES)
def test_no_service_database_user_has_ddl(service_mysql_urls: dict[str, str], service: str) -> None:
    with _connect(service_mysql_urls[service]) as cur:
        cur.execute("SELECT COUNT(*) FROM users")  # every service reads users
        _assert_denied(
            cur,
            TABLE_DENIED,
            "CREATE TABLE least_privilege_probe (id INT PRIMARY KEY)",
            "ALTER TABLE users ADD COLUMN probe INT",
            "DROP TABLE outbox",
            "CREATE INDEX probe ON users (regenerate_count)",
        )


async def test_notifier_user_reads_the_snapshot_and_writes_nothing(
    service_mysql_urls: dict[str, str], db_pool: aiomysql.Pool
) -> None:
    """The internet-facing notifier: its snapshot query works, and a compromised notifier
    can neither grant itself a plan nor forge an order, nor read refunds or the events."""
    user_id = await _user(db_pool)
    out_trade_no = f"LP{uuid.uuid4().hex[:20]}"
    await add_order(
        db_pool,
        user_id,
        out_trade_no,
        package_type="premium",
        trade_type="NATIVE",
        amount="29.90",
        status="paid",
        _openid="o-payer",
    )
    async with _pool(service_mysql_urls["notifier"]) as pool:
        messages = await load_snapshot(pool, user_id, window_s=3600, limit=10)
    assert [(m.out_trade_no, m.status, m.payment_status) for m in messages] == [
        (out_trade_no, "paid", "free")
    ]
    with _connect(service_mysql_urls["notifier"]) as cur:
        _assert_denied(
            cur,
            TABLE_DENIED,
            f"UPDATE users SET payment_status = 'premium' WHERE id = '{user_id}'",
            "INSERT INTO payment_orders (id, out_trade_no, user_id, generation_id, amount,"
            f" package_type, status) VALUES ('forged', 'LPforged', '{user_id}', '', 0.01,"
            " 'premium', 'paid')",
            f"UPDATE payment_orders SET status = 'refunded' WHERE out_trade_no = '{out_trade_no}'",
            f"DELETE FROM users WHERE id = '{user_id}'",
            "INSERT INTO outbox (producer, event_id, routing_key, payload) VALUES"
            " ('order', 'forged', 'order.paid', '{}')",
            "SELECT COUNT(*) FROM refunds",
            "SELECT COUNT(*) FROM outbox",
        )
        # Internet-facing: no user's personal details, no payer's openid.
        _assert_denied(
            cur,
            COLUMN_DENIED,
            f"SELECT phone FROM users WHERE id = '{user_id}'",
            "SELECT openid FROM users",
            "SELECT _openid FROM payment_orders",
        )
    async with transaction(db_pool) as cur:
        await cur.execute("SELECT payment_status FROM users WHERE id = %s", (user_id,))
        assert (await cur.fetchone())["payment_status"] == "free"


def test_entitlement_user_writes_plans_but_not_orders_refunds_or_the_audit_trail(
    service_mysql_urls: dict[str, str],
) -> None:
    with _connect(service_mysql_urls["entitlement"]) as cur:
        _assert_denied(
            cur,
            TABLE_DENIED,
            "SELECT COUNT(*) FROM refunds",
            "INSERT INTO refunds (id, out_refund_no, out_trade_no, refund_amount, total_amount)"
            " VALUES ('forged', 'forged', 'LPforged', 0.01, 0.01)",
            "SELECT COUNT(*) FROM payment_logs",
            "DELETE FROM payment_logs",
            "SELECT COUNT(*) FROM payment_orders",
            "UPDATE payment_orders SET status = 'paid'",
            "INSERT INTO users (id, openid) VALUES ('forged', 'forged')",
            "DELETE FROM entitlement_grants",
        )
        # Of users, only the plan and the regenerations, read by id: no personal details.
        _assert_denied(
            cur,
            COLUMN_DENIED,
            "UPDATE users SET openid = 'forged' WHERE id = ''",
            "SELECT openid FROM users",
            "SELECT phone FROM users",
            "SELECT id FROM users WHERE openid = 'o-someone'",
        )
        cur.execute("SELECT id, payment_status, regenerate_count FROM users LIMIT 1")
        # No LOCK TABLES (its locking reads need none).
        with pytest.raises(pymysql.err.OperationalError) as locked:
            cur.execute("LOCK TABLES users READ")
        assert locked.value.args[0] == DB_ACCESS_DENIED, locked.value


async def test_order_user_places_and_applies_payments_but_never_writes_a_plan(
    service_mysql_urls: dict[str, str], db_pool: aiomysql.Pool
) -> None:
    """order's real statements under its user: a user made (and found again) by openid and
    signed in, sessions issued, checked and revoked, an order placed and read,
    payment.succeeded applied (order row, audit trail, inbox, outbox), a refund made
    outside paylane recorded (refund row, the order's full refund), an ABNORMAL one and its
    remedy, an unpaid order asked about on demand and failed by the reconciler, the install
    time read."""
    openid = f"o-{uuid.uuid4().hex}"
    merchant = MerchantConfig("1900000109", "wxd678efh567hg6787", "http://127.0.0.1:9/n", 1800)
    async with _pool(service_mysql_urls["order"]) as pool:
        orders = Orders(
            pool,
            None,  # type: ignore[arg-type]
            None,
            merchant,
            max_pending=5,
            duplicate_window_s=300,
        )
        twin = NewOrder(
            user_id=None,
            acting_user=None,
            package=DEFAULT_CATALOG["basic"],
            trade_type="JSAPI",
            openid=openid,
            generation_id=None,
            client_ip=None,
            idempotency_key=None,
        )
        async with transaction(pool) as cur:
            user = await user_by_openid(cur, openid)
            # The user's row locked, a twin looked for, the pending ones counted.
            await orders._lock_user(cur, user["id"])
            assert await orders._twin(cur, user["id"], twin) is None
            await orders._check_pending(cur, user["id"])
        assert str(user["id"]).startswith("user-")
        assert await orders.sign_in(openid) == user["id"]  # found again, last_login_at set
        # WeChat Cloud Hosting's user (X-WX-OPENID): found by openid, its unionid filled in.
        assert await orders.platform_user(openid, f"u-{uuid.uuid4().hex[:12]}") == user["id"]
        # Sessions: issued and checked against the user's version, revoked (twice: the row
        # made, then bumped).
        sessions = Sessions(pool, TokenSigner(Ed25519PrivateKey.generate()), 600)
        issued = await sessions.issue(user["id"])
        assert (await sessions.check(issued.token)).version == 0
        assert [await sessions.revoke(user["id"]) for _ in range(2)] == [1, 2]
        assert await sessions.version(user["id"]) == 2
        new = NewOrder(
            user_id=user["id"],
            acting_user=None,
            package=DEFAULT_CATALOG["premium"],
            trade_type="JSAPI",
            openid=None,
            generation_id=None,
            client_ip=None,
            idempotency_key="lp-key",
        )
        async with transaction(pool) as cur:
            out_trade_no, _, _ = await orders._insert(cur, new, user)
        order = await orders.get(out_trade_no)
        assert order is not None
        # The order list and its export read the orders' columns, remark among them.
        listed, theirs = OrderList(pool), OrderFilters.model_validate({"user_id": user["id"]})
        assert [r["out_trade_no"] for r in await listed.page(theirs, None, 1)] == [out_trade_no]
        lines = b"".join([chunk async for chunk in listed.csv(theirs)]).splitlines()
        assert lines[1].startswith(out_trade_no.encode())
        assert (order["amount"], order["amount_total"], order["payment_status"]) == (
            Decimal("29.90"),
            2990,
            "free",
        )
        envelope, data = _payment(out_trade_no, 2990, mchid=None, appid=None)
        async with aiohttp.ClientSession() as http:
            # The gate verifies the kit's signed notification; it asks WeChat Pay nothing.
            nowhere = KIT.merchant_client("http://127.0.0.1:9", http)
            gate = Gate(merchant, DEFAULT_CATALOG, nowhere, KIT.apiv3_key)
            assert await PaymentApplier(pool, gate)(envelope, data) == "paid"
        refund = refund_succeeded(out_trade_no, f"LPR{uuid.uuid4().hex[:20]}", 2990, 2990)
        assert await RefundApplier(pool)(*refund) == "refunded"
        # An ABNORMAL refund (made outside paylane: inserted) and its remedy recorded.
        abnormal = refund_abnormal(out_trade_no, f"LPA{uuid.uuid4().hex[:20]}", 1, 2990)
        assert await RefundApplier(pool)(*abnormal) == "refund_abnormal"
        remedies = AbnormalRefunds(pool, None)  # type: ignore[arg-type]
        row = await remedies.get(abnormal.data.out_refund_no)
        await remedies._record(row, Remedy("MERCHANT_BANK_CARD"), "PROCESSING", accepted=True)
        assert (await remedies.get(abnormal.data.out_refund_no))["status"] == "pending"
        async with transaction(pool) as cur:
            unpaid, _, _ = await orders._insert(cur, replace(new, idempotency_key=None), user)
        # On WeChat Cloud Hosting: placed through the open interface (the sandbox's), the
        # platform's pay parameters kept with the order.
        async with (
            running_sandbox(sandbox_settings(KIT)) as platform,
            aiohttp.ClientSession() as http,
        ):
            target = CloudHostingTarget("env-lp", "ingress", "/notify/cloudhosting")
            client = CloudHostingClient(
                base_url=platform.base_url, mchid=KIT.mchid, target=target, session=http
            )
            hosted = Orders(pool, client, None, merchant)
            expires = datetime.now(UTC) + timedelta(minutes=30)
            placed = await hosted._place(unpaid, new, user["openid"], expires)
            assert json.loads(str(placed["pay_params"]))["signType"] == "MD5"
            assert hosted.pay_params(placed)["package"] == f"prepay_id={placed['prepay_id']}"
        # Asked about on demand (GET /orders/{no}): its turn taken on the row.
        status_query = StatusQuery(pool, None, None, StatusQueryConfig(after_s=0))  # type: ignore[arg-type]
        assert await status_query._claim(unpaid)
        reconciler = Reconciler(pool, None, None, ReconcilerConfig(), None)  # type: ignore[arg-type]
        await reconciler._fail_locally(
            unpaid, "expired", "expired", "NOTPAY"
        )  # order.failed staged
        # The backend's note and a refund's reason on the order row.
        assert (await orders.set_remark(unpaid, "called the user"))["remark"] == "called the user"
        async with transaction(pool) as cur:
            await _note_reason(cur, unpaid, "不想要了")
        # A bill difference recorded once: the second run reads the first one back; two
        # refunds of one order are two. The day recorded as done, found done.
        bills = BillReconciler(pool, None, reconciler)  # type: ignore[arg-type]
        bill_day = date(2024, 1, 2)
        difference = Difference("not_paid_at_wechat", unpaid, our_amount=2990, our_state="failed")
        refund_kind = replace(difference, kind="refund_not_here")
        for _ in range(2):
            await bills._record(difference, bill_day)
            for out_refund_no in ("LPB1", "LPB2"):
                await bills._record(replace(refund_kind, out_refund_no=out_refund_no), bill_day)
            await bills._mark_done(bill_day)
        assert await bills._done(bill_day)
        await bills.show_last_success()  # as a replica starting up reads it
        last = REGISTRY.get_sample_value("paylane_bills_last_success_timestamp_seconds")
        assert last is not None and abs(last - time.time()) < 60
        async with transaction(pool) as cur:
            await cur.execute("SELECT value FROM paylane_meta WHERE name = 'installed_at'")
            assert (await cur.fetchone())["value"]
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT o.status, o.paid_event_at IS NOT NULL AS paid_staged,"
            " o.refund_event_at IS NOT NULL AS refund_staged, u.payment_status,"
            " u.last_login_at IS NOT NULL AS signed_in FROM payment_orders o JOIN users u"
            " ON u.id = o.user_id WHERE o.out_trade_no = %s",
            (out_trade_no,),
        )
        assert await cur.fetchone() == {
            "status": "refunded",
            "paid_staged": 1,
            "refund_staged": 1,
            "payment_status": "free",
            "signed_in": 1,
        }
        await cur.execute(
            "SELECT COUNT(*) AS n FROM outbox WHERE producer = 'order' AND event_id <> %s"
            " AND routing_key = 'order.paid' AND payload LIKE %s",
            (envelope.event_id, f"%{out_trade_no}%"),
        )
        assert (await cur.fetchone())["n"] == 1
    assert await order_status(db_pool, unpaid) == "failed"
    closed = await fetch_one(
        db_pool,
        "SELECT l.type, l.kind, o.remark, o.refund_reason FROM payment_logs l"
        " JOIN payment_orders o ON o.out_trade_no = l.out_trade_no"
        " WHERE l.out_trade_no = %s AND l.type = 'order_close'",
        unpaid,
    )
    assert closed == {
        "type": "order_close",
        "kind": "expired",
        "remark": "called the user",
        "refund_reason": "不想要了",
    }
    async with transaction(db_pool) as cur:
        await cur.execute(
            "SELECT COUNT(*) AS n FROM payment_logs WHERE out_trade_no = %s"
            " AND type = 'bill_difference'",
            (unpaid,),
        )
        assert (await cur.fetchone())["n"] == 3
    with _connect(service_mysql_urls["order"]) as cur:
        # The plan is entitlement's: not by UPDATE, nor by making a user with one. An
        # order's price, owner and identity are fixed once placed; the audit trail is never
        # backdated; a user's personal details are not order's to read.
        _assert_denied(
            cur,
            COLUMN_DENIED,
            f"UPDATE users SET payment_status = 'premium' WHERE id = '{user['id']}'",
            "INSERT INTO users (id, openid, payment_status) VALUES ('forged', 'forged', 'premium')",
            f"UPDATE payment_orders SET amount = 0.01 WHERE out_trade_no = '{unpaid}'",
            f"UPDATE payment_orders SET user_id = 'forged' WHERE out_trade_no = '{unpaid}'",
            "INSERT INTO payment_logs (id, type, created_at)"
            " VALUES ('forged', 'paid', '2020-01-01')",
            "INSERT INTO payment_orders (id, out_trade_no, user_id, generation_id, amount,"
            " amount_total, package_type) VALUES ('forged', 'LPforged', 'x', '', 0.01, 1, 'basic')",
            f"SELECT phone FROM users WHERE id = '{user['id']}'",
            "SELECT request_data FROM payment_logs",
        )
        # The audit trail is append-only; the ledger is entitlement's (the order user
        # reads it for the console's timeline, never writes it).
        _assert_denied(
            cur,
            TABLE_DENIED,
            "UPDATE payment_logs SET detail = 'rewritten'",
            "DELETE FROM payment_logs",
            "DELETE FROM payment_orders",
            "UPDATE entitlement_grants SET revoked_at = NOW()",
            "INSERT INTO entitlement_grants (out_trade_no) VALUES ('forged')",
            "DELETE FROM paylane_meta",
        )


async def test_order_user_places_and_fulfils_business_orders(
    service_mysql_urls: dict[str, str], db_pool: aiomysql.Pool
) -> None:
    """A business order's statements under order's user: placed with its terms (found
    again by external_id), paid through the gate at its own amount, its fulfilment
    reported (the change and its event) and the overdue ones counted. Its terms are fixed
    once placed, like its price."""
    openid = f"o-{uuid.uuid4().hex}"
    merchant = MerchantConfig("1900000109", "wxd678efh567hg6787", "http://127.0.0.1:9/n", 1800)
    terms = BusinessTerms("a top-up", external_id=f"lp-{uuid.uuid4().hex}", attach="sku-1")
    async with _pool(service_mysql_urls["order"]) as pool:
        orders = Orders(pool, None, None, merchant)  # type: ignore[arg-type]
        new = NewOrder(
            user_id=None,
            acting_user=None,
            package=business_package(terms.description, 1234),
            trade_type="JSAPI",
            openid=openid,
            generation_id=None,
            client_ip=None,
            idempotency_key=None,
            business=terms,
        )
        async with transaction(pool) as cur:
            user = await user_by_openid(cur, openid)
            out_trade_no, _, _ = await orders._insert(cur, new, user)
            assert terms.external_id is not None
            found = await orders._by_external_id(cur, terms.external_id)
            assert found is not None and found["out_trade_no"] == out_trade_no
        envelope, data = _payment(out_trade_no, 1234, mchid=None, appid=None)
        async with aiohttp.ClientSession() as http:
            nowhere = KIT.merchant_client("http://127.0.0.1:9", http)
            gate = Gate(merchant, DEFAULT_CATALOG, nowhere, KIT.apiv3_key)
            assert await PaymentApplier(pool, gate)(envelope, data) == "paid"
        reported = await orders.fulfilments.report(out_trade_no, "success", "delivered")
        assert reported.changed and reported.refund is None
        assert await count_overdue(pool, 3600) >= 0
    row = await fetch_one(
        db_pool,
        "SELECT status, description, external_id, attach, fulfilment_status,"
        " fulfilment_detail, fulfilled_at IS NOT NULL AS fulfilled FROM payment_orders"
        " WHERE out_trade_no = %s",
        out_trade_no,
    )
    assert row == {
        "status": "paid",
        "description": "a top-up",
        "external_id": terms.external_id,
        "attach": "sku-1",
        "fulfilment_status": "success",
        "fulfilment_detail": "delivered",
        "fulfilled": 1,
    }
    staged = await fetch_one(
        db_pool,
        "SELECT COUNT(*) AS n FROM outbox WHERE producer = 'order'"
        " AND routing_key = 'fulfilment.succeeded' AND payload LIKE %s",
        f"%{out_trade_no}%",
    )
    assert staged["n"] == 1
    with _connect(service_mysql_urls["order"]) as cur:
        _assert_denied(
            cur,
            COLUMN_DENIED,
            f"UPDATE payment_orders SET description = 'x' WHERE out_trade_no = '{out_trade_no}'",
            f"UPDATE payment_orders SET external_id = 'x' WHERE out_trade_no = '{out_trade_no}'",
            f"UPDATE payment_orders SET attach = 'x' WHERE out_trade_no = '{out_trade_no}'",
        )


@pytest.mark.parametrize("service", ["order", "entitlement"])
async def test_consumer_users_prune_the_inbox_and_outbox(
    service_mysql_urls: dict[str, str], db_pool: aiomysql.Pool, service: str
) -> None:
    """Retention (retention.py) runs in both consumers, under their users."""
    event_id = f"old-{uuid.uuid4().hex}"
    async with transaction(db_pool) as cur:
        await cur.execute(
            "INSERT INTO inbox (consumer, event_id, processed_at)"
            " VALUES ('lp-test', %s, NOW(6) - INTERVAL 30 DAY)",
            (event_id,),
        )
        await cur.execute(
            "INSERT INTO outbox (producer, event_id, routing_key, payload, published_at)"
            " VALUES ('lp-test', %s, 'order.paid', '{}', NOW(6) - INTERVAL 30 DAY)",
            (event_id,),
        )
    async with _pool(service_mysql_urls[service]) as pool:
        pruner = RetentionPruner(pool, retention_days=7, interval_s=3600)
        pruned = await pruner.prune_once()
    assert pruned["inbox"] >= 1 and pruned["outbox"] >= 1, pruned
    async with transaction(db_pool) as cur:
        for table in ("inbox", "outbox"):
            await cur.execute(f"SELECT COUNT(*) AS n FROM {table} WHERE event_id = %s", (event_id,))
            assert (await cur.fetchone())["n"] == 0, table


async def test_order_user_runs_every_webhook_statement_and_no_other_user_reads_them(
    service_mysql_urls: dict[str, str],
) -> None:
    """The webhooks' statements (paylane_order.webhooks.store) under the order user: the
    configuration's endpoints recorded, one made, listed, an event's deliveries written,
    claimed, each kind of settling (retry, success, disable), the log read, resend,
    recover, enable, delete. The other services' users read none of it (the endpoints
    hold their secrets)."""
    url = f"https://93.184.215.14/lp-{uuid.uuid4().hex[:8]}"
    async with _pool(service_mysql_urls["order"]) as pool:
        store = WebhookStore(pool)
        await store.sync_config([url])
        endpoint, _secret = await store.create(url + "/api", ["order.paid"], "least privilege")
        assert endpoint.id in {e.id for e in await store.endpoints()}
        event_id = f"lp-{uuid.uuid4().hex}"
        assert await store.ingest(event_id, "order.paid", b"{}") >= 2
        assert endpoint.id in await store.due_endpoints()
        (claimed,) = await store.claim(endpoint.id, 5, 60)
        common: dict[str, Any] = {"latency_ms": 3, "excerpt": "no", "error": None}
        await store.record(claimed, status=500, settle="retry", retry_in_s=0, **common)
        assert await store.failing_for_s(endpoint.id) >= 0
        (claimed,) = await store.claim(endpoint.id, 5, 60)
        await store.record(claimed, status=200, settle="succeeded", **common)
        configured = config_endpoint_id(url)
        (other,) = await store.claim(configured, 5, 60)
        await store.record(other, status=410, settle="disable", reason="410 Gone", **common)
        listed = await store.deliveries(failed=True)
        assert other.id in {r["id"] for r in listed}
        assert await store.attempts(other.id)
        assert await store.resend(other.id) == "endpoint_disabled"
        assert await store.enable(configured)
        assert await store.resend(other.id) == "resent"
        assert await store.recover(datetime(2020, 1, 1)) >= 0
        assert await store.delete(endpoint.id) == "api"
        await store.sync_config([])
    for service in ("entitlement", "notifier"):
        with _connect(service_mysql_urls[service]) as cur:
            _assert_denied(
                cur,
                TABLE_DENIED,
                "SELECT secret FROM webhook_endpoints",
                "SELECT payload FROM webhook_deliveries",
            )


async def test_no_other_account_can_stop_the_reconciler(
    service_mysql_urls: dict[str, str],
    db_pool: aiomysql.Pool,
    amqp_connection: AbstractRobustConnection,
    topology: None,
) -> None:
    """Any account could take a MySQL named lock: the notifier's, holding the reconciler's
    ``GET_LOCK`` name, made every pass do nothing while a lost payment waited. The
    reconciler's lease is a row only the order service's account may update."""
    keys = FakeWechat()
    async with (
        running_sandbox(sandbox_settings(keys)) as sandbox,
        aiohttp.ClientSession() as http,
    ):
        client = keys.merchant_client(sandbox.base_url, http)
        lost = f"LP{uuid.uuid4().hex[:20]}"
        await client.place("NATIVE", order_request("native", lost))
        await sandbox.ok("POST", f"/sandbox/orders/{lost}/pay", {"notify": False})
        await add_orders(
            db_pool,
            [(lost, await _user(db_pool))],
            package_type="basic",
            trade_type="NATIVE",
            amount="9.90",
            created_at=ago(120),
            expires_at=from_now(1200),
        )
        notifier = await aiomysql.connect(**_connect_args(service_mysql_urls["notifier"]))
        publisher = await Publisher.open(amqp_connection)
        try:
            async with notifier.cursor() as cur:
                await cur.execute("SELECT GET_LOCK(CONCAT('paylane.reconciler.', DATABASE()), 0)")
                assert (await cur.fetchone())[0] == 1
                for statement in (
                    "UPDATE paylane_locks SET holder = 'notifier', expires_at = '2999-01-01'",
                    "UPDATE paylane_retention_lock SET holder = 'notifier'",
                ):
                    with pytest.raises(pymysql.err.OperationalError) as denied:
                        await cur.execute(statement)
                    assert denied.value.args[0] in (TABLE_DENIED, COLUMN_DENIED)
            started = time.time()
            async with _pool(service_mysql_urls["order"]) as pool:
                reconciler = Reconciler(
                    pool, client, publisher, ReconcilerConfig(), payment_gate(client)
                )
                found = await reconciler.run_once()
        finally:
            notifier.close()
            await publisher.close()
    assert found["paid_recovered"] == 1, found
    # The completed pass and its sweep, for the alerts (time() - the newest).
    for job in ("reconciler", "sweep"):
        name = f"paylane_{job}_last_success_timestamp_seconds"
        assert (REGISTRY.get_sample_value(name) or 0) >= started, name


def test_only_the_order_user_takes_the_reconciler_and_bills_leases(
    service_mysql_urls: dict[str, str],
) -> None:
    """The entitlement service prunes too (retention), so it takes retention's lease,
    a table of its own; the reconciler's and the bills' it cannot."""
    with _connect(service_mysql_urls["entitlement"]) as cur:
        _assert_denied(
            cur,
            TABLE_DENIED,
            "UPDATE paylane_locks SET holder = 'entitlement'",
            "SELECT holder FROM paylane_locks",
        )
        # Also the console records' lease (migration 0016), which it never runs: the
        # records' DELETE is the order user's alone (the records test below).
        cur.execute("SELECT name FROM paylane_retention_lock ORDER BY name")
        assert cur.fetchall() == (("paylane.records",), ("paylane.retention",))
        cur.execute("UPDATE paylane_retention_lock SET expires_at = expires_at")
    with _connect(service_mysql_urls["order"]) as cur:
        _assert_denied(
            cur,
            COLUMN_DENIED,
            "UPDATE paylane_locks SET name = 'forged'",
        )
        _assert_denied(
            cur,
            TABLE_DENIED,
            "INSERT INTO paylane_locks (name) VALUES ('forged')",
            "DELETE FROM paylane_locks",
        )


# --- the services, running under them ------------------------------------------------------


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    stack = Stack({"AMQP_DECLARE_TOPOLOGY": "false"}, tmp_path_factory.mktemp("lp-logs"))
    yield stack
    await stack.stop_all()


def _secret_file(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


async def test_ingress_runs_as_its_user_and_keeps_readyz_and_metrics_off_the_public_port(
    stack: Stack,
    broker_users: dict[str, str],
    topology: None,
    amqp_connection: AbstractRobustConnection,
    tmp_path: Path,
) -> None:
    wechat = FakeWechat()
    hygiene.register(wechat.apiv3_key)
    ingress = await stack.start(
        "ingress",
        {
            # From a file, as on Kubernetes: the URL carries the password.
            "AMQP_URL_FILE": _secret_file(tmp_path, "amqp_url", broker_users["ingress"]),
            # Any CPU use is "busy": it announces every quarter second (pressure.py).
            "INGRESS_BUSY_CPU": "0.000001",
            **wechat.ingress_env(),
        },
    )
    channel = await amqp_connection.channel()
    spy = await channel.declare_queue(f"test.spy.{uuid.uuid4().hex}", exclusive=True)
    await spy.bind(await declare_exchange(channel), routing_key="payment.succeeded")
    signals = await channel.declare_queue(f"test.spy.{uuid.uuid4().hex}", exclusive=True)
    await signals.bind(SIGNALS_EXCHANGE)
    async with asyncio.timeout(10), signals.iterator(no_ack=True) as heard:
        announcement = await anext(aiter(heard))
    assert json.loads(announcement.body)["busy_for_s"] > 0
    async with aiohttp.ClientSession() as http:
        for path in ("/readyz", "/metrics"):
            async with http.get(f"{ingress.url}{path}") as response:
                assert response.status == 404, path
        async with http.get(f"{ingress.url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{ingress.admin_url}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {"broker": "ok"}

        out_trade_no = f"LP{uuid.uuid4().hex[:20]}"
        headers, body = wechat.notify(wechat.transaction(out_trade_no, 990))
        async with http.post(
            f"{ingress.url}/notify/wechatpay", data=body, headers=headers
        ) as response:
            assert response.status == 204, await response.text()
        async with http.get(f"{ingress.admin_url}/metrics") as response:
            assert "paylane_ingress_notifications_received_total" in await response.text()
    async with asyncio.timeout(10), spy.iterator(no_ack=True) as arrived:
        published = await anext(aiter(arrived))
    assert published.correlation_id == out_trade_no
    await channel.close()
    await stack.stop("ingress")


async def test_a_consumer_applies_and_publishes_under_its_users(
    infra: Infra,
    amqp_url: str,
    stack: Stack,
    broker_users: dict[str, str],
    service_mysql_urls: dict[str, str],
    topology: None,
    publisher: Publisher,
    db_pool: aiomysql.Pool,
    amqp_connection: AbstractRobustConnection,
    tmp_path: Path,
) -> None:
    """entitlement under its broker user and its own database user: it starts (no DDL,
    no declarations), consumes order.paid, grants in MySQL and its outbox relay
    publishes entitlement.granted."""
    channel = await amqp_connection.channel()
    spy = await channel.declare_queue(f"test.spy.{uuid.uuid4().hex}", exclusive=True)
    await spy.bind(await declare_exchange(channel), routing_key="entitlement.granted")
    await stack.start(
        "entitlement",
        {
            "AMQP_URL_FILE": _secret_file(tmp_path, "amqp_url", broker_users["entitlement"]),
            "MYSQL_URL_FILE": _secret_file(
                tmp_path, "mysql_url", service_mysql_urls["entitlement"]
            ),
            # Takes order.paid from order's user only (the test's users carry a suffix).
            "AMQP_ORDER_USER": _user_of(broker_users["order"]),
        },
    )
    user_id = await _user(db_pool)
    envelope, data = order_paid(user_id)
    order = await amqp.connect(broker_users["order"], "test-order")
    try:
        order_publisher = await Publisher.open(order, declare=False)
        await order_publisher.publish(envelope)
        await order_publisher.close()
    finally:
        await order.close()

    async def granted() -> bool:
        async with transaction(db_pool) as cur:
            await cur.execute("SELECT payment_status FROM users WHERE id = %s", (user_id,))
            return (await cur.fetchone())["payment_status"] == "basic"

    await eventually(granted, what="the grant applied by entitlement under its users")
    # It listens for ingress's announcements on a queue it declared itself (pressure.py).
    vhost = unquote(urlsplit(amqp_url).path.removeprefix("/"))
    listing = infra.broker.run(["list_queues", "-q", "-p", vhost, "name"]).split()
    assert [name for name in listing if name.startswith("entitlement.signals.")]
    async with asyncio.timeout(20):
        async with spy.iterator(no_ack=True) as messages:
            async for message in messages:
                if message.correlation_id == data.out_trade_no:
                    break
    await channel.close()
    await stack.stop("entitlement")


async def test_topology_is_declared_by_paylane_topology_and_only_checked_by_services(
    infra: Infra,
) -> None:
    """In a vhost where nothing is declared yet, a service that may not declare stops with
    one clear error; ``paylane topology`` (an identity that may configure) declares it."""
    vhost = unique_name("paylane_lp")
    infra.broker.add_vhost(vhost, infra.amqp_user)
    try:
        url = infra.amqp_url(vhost)
        connection = await amqp.connect(url, "test-topology")
        try:
            with pytest.raises(ConfigError, match="RabbitMQ has no 'paylane'"):
                await Publisher.open(connection, declare=False)
            done = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "paylane.cli",
                "topology",
                env={**os.environ, "AMQP_URL": url, "LOG_FORMAT": "json"},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await done.communicate()
            assert done.returncode == 0, output.decode()
            publisher = await Publisher.open(connection, declare=False)
            for spec in QUEUES:
                channel = await connection.channel()
                for name in (spec.dlq, *spec.retry_queues):
                    await existing_queue(channel, name)
                await channel.close()
            await publisher.close()
        finally:
            await connection.close()
    finally:
        infra.broker.delete_vhost(vhost)


async def test_order_user_queues_and_uploads_shipping_and_shares_the_token(
    service_mysql_urls: dict[str, str], db_pool: aiomysql.Pool
) -> None:
    """Shipping declared to WeChat (shipping.py) under order's user: an order queued on
    its grant, the access token refreshed (its lease, the shared row) and invalidated,
    uploads retried, done and flagged, the state read back for GET /orders/{no}. It
    never rewrites what an upload says, nor deletes a row."""
    async with transaction(db_pool) as cur:  # rows and a token earlier tests left
        await cur.execute(
            "UPDATE paylane_shipping SET next_attempt_at = NOW(6) + INTERVAL 1 DAY"
            " WHERE state = 'pending'"
        )
        await cur.execute("DELETE FROM paylane_wechat_tokens WHERE appid = %s", (KIT.appid,))
    numbers = [f"LPS{uuid.uuid4().hex[:20]}" for _ in range(3)]
    for i, no in enumerate(numbers):
        user_id = await _user(db_pool)
        await add_order(
            db_pool,
            user_id,
            no,
            trade_type="JSAPI",
            status="paid",
            transaction_id=f"42000000{i}{uuid.uuid4().hex[:12]}",
            _openid=f"o-lp-{i}",
        )
    config = ShippingConfig(mode="virtual", appid=KIT.appid, app_secret="s", retry_base_s=60)
    async with (
        running_sandbox(sandbox_settings(KIT)) as sandbox,
        _pool(service_mysql_urls["order"]) as pool,
    ):
        api = WechatApi(sandbox.base_url, KIT.appid, "s")
        try:
            tokens = AccessTokens(pool, api)
            queue = ShippingQueue(pool, replace(config, api_base=sandbox.base_url), DEFAULT_CATALOG)
            for no in numbers:
                data = events.Entitlement(
                    user_id="u", out_trade_no=no, payment_status="basic", regenerate_count=1
                )
                envelope = make_event(events.ENTITLEMENT_GRANTED, data)
                assert await queue(envelope, data) == "shipping_queued"
            token = await tokens.token()
            await tokens.invalidate(token)
            assert await AccessTokens(pool, api).token() != token  # forced anew, shared
            for errcode in (-1, 10060002, 10060004):  # one each: retried, done, flagged
                await sandbox.ok("POST", "/sandbox/shipping/faults", {"errcode": errcode})
            uploader = ShippingUploader(pool, api, tokens, config)
            assert await uploader.run_once() == {"retry": 1, "already_done": 1, "failed": 1}
            orders = Orders(pool, None, None, MERCHANT_LP, max_pending=0, duplicate_window_s=0)  # type: ignore[arg-type]
            states = []
            for no in numbers:
                found = await orders.get(no)
                assert found is not None and found["shipping"] is not None
                states.append(found["shipping"]["state"])
            assert sorted(states) == ["failed", "pending", "uploaded"]
        finally:
            await api.close()
    with _connect(service_mysql_urls["order"]) as cur:
        _assert_denied(
            cur,
            COLUMN_DENIED,
            f"UPDATE paylane_shipping SET openid = 'forged' WHERE out_trade_no = '{numbers[0]}'",
            f"UPDATE paylane_shipping SET transaction_id = 'x' WHERE out_trade_no = '{numbers[0]}'",
        )
        _assert_denied(
            cur, TABLE_DENIED, "DELETE FROM paylane_shipping", "DELETE FROM paylane_wechat_tokens"
        )
    with _connect(service_mysql_urls["notifier"]) as cur:
        _assert_denied(cur, TABLE_DENIED, "SELECT access_token FROM paylane_wechat_tokens")


async def test_order_user_runs_the_operators_console_and_only_appends_to_its_audit_log(
    service_mysql_urls: dict[str, str], db_pool: aiomysql.Pool
) -> None:
    """The console's statements (console_data, operators) under the order service's user:
    an operator added and changed, sign-ins failed to a lockout and succeeded, a session
    found and ended, an audit row written, the operator removed, an order searched (by
    openid too), its timeline and the health page read. The audit log is never
    rewritten; the entitlement and notifier users reach none of the console's tables."""
    name = f"lp-{uuid.uuid4().hex[:8]}"
    password = "least privilege password"
    user_id = await _user(db_pool)
    out_trade_no = f"LP{uuid.uuid4().hex[:20]}"
    await add_order(db_pool, user_id, out_trade_no, amount="9.90", status="paid")
    async with _pool(service_mysql_urls["order"]) as pool:
        assert await operators.add_operator(pool, name, "support", password)
        for _ in range(2):
            assert (await operators.sign_in(pool, name, "wrong", lockout_after=2)).token is None
        assert (await operators.sign_in(pool, name, password)).refused == "locked"
        assert not await operators.add_operator(pool, name, "support", password)  # unlocks
        token = (await operators.sign_in(pool, name, password)).token
        assert token is not None
        session = await operators.session(pool, token)
        assert session is not None and session.operator.role == "support"
        async with transaction(pool) as cur:
            await operators.write_audit(cur, session.operator, "close", out_trade_no, "lp")
        await operators.sign_out(pool, token)
        assert await operators.session(pool, token) is None
        token = (await operators.sign_in(pool, name, password)).token
        assert token is not None
        assert await operators.remove_operator(pool, name) == 1  # signed out everywhere
        assert await operators.session(pool, token) is None
        openid = (await fetch_one(db_pool, "SELECT openid FROM users WHERE id = %s", user_id))[
            "openid"
        ]
        filters = console_data.ConsoleFilters(openid=openid, amount=990)
        assert [r["out_trade_no"] for r in await page(pool, filters, None, 5)] == [out_trade_no]
        order = await console_data.order_row(pool, out_trade_no)
        assert order is not None
        events = await console_data.timeline(pool, order)
        assert any(e.origin == "operator" for e in events)
        assert await console_data.refundable_fen(pool, order) == 990
        await console_data.health(pool, None)
        await console_data.recent_audit(pool)
    with _connect(service_mysql_urls["order"]) as cur:
        _assert_denied(
            cur,
            TABLE_DENIED,
            "UPDATE paylane_operator_audit SET reason = 'x'",
            "DELETE FROM paylane_operator_audit",
            "DELETE FROM paylane_operators",
        )
        _assert_denied(cur, COLUMN_DENIED, "SELECT request_data FROM payment_logs LIMIT 1")
    for service in ("entitlement", "notifier"):
        with _connect(service_mysql_urls[service]) as cur:
            _assert_denied(
                cur,
                TABLE_DENIED,
                "SELECT * FROM paylane_operators",
                "SELECT * FROM paylane_operator_sessions",
                "SELECT * FROM paylane_operator_audit",
            )


async def test_the_consoles_records_are_written_read_and_pruned_under_each_users_grants(
    service_mysql_urls: dict[str, str], db_pool: aiomysql.Pool
) -> None:
    """Issue 30's records (migrations 0016, 0017): the notifier appends its pushes and
    reads nothing of them; the order service writes rejection records and query records,
    reads all three for the timeline and prunes them under its lease of its own, which
    entitlement, pruning the inbox and outbox, may not."""
    no = f"LPR{uuid.uuid4().hex[:20]}"
    async with _pool(service_mysql_urls["notifier"]) as pool:
        push_log = PushLog(pool)
        push_log.add(no, "order.paid", "ws", 1)
        assert await push_log.flush() == 1
    with _connect(service_mysql_urls["notifier"]) as cur:
        _assert_denied(
            cur,
            TABLE_DENIED,
            "SELECT * FROM notifier_pushes",
            "DELETE FROM notifier_pushes",
            "SELECT * FROM wechatpay_queries",
            "INSERT INTO notifications_rejected (record_id) VALUES ('x')",
        )
    rejected = NotificationRejected(
        route="wechatpay",
        reason="invalid_resource",
        status=400,
        out_trade_no=no,
        received_at=datetime.now(UTC),
    )
    envelope = make_event(events.NOTIFICATION_REJECTED, rejected)
    async with _pool(service_mysql_urls["order"]) as pool:
        assert await RejectionRecords(pool)(envelope, rejected) == "recorded"
        async with aiohttp.ClientSession() as http:
            nowhere = QueryLog(pool, KIT.merchant_client("http://127.0.0.1:9", http))
            with pytest.raises(WechatPayError):
                await nowhere.order(no, "console")  # the error recorded
        origins = {origin for _, _, origin, _ in await console_records.of_order(pool, no)}
        assert origins == {"ingress", "query", "push"}
        assert await console_records.recent_rejections(pool)
    async with transaction(db_pool) as cur:
        for table, column in (
            ("notifications_rejected", "received_at"),
            ("wechatpay_queries", "asked_at"),
            ("notifier_pushes", "pushed_at"),
        ):
            await cur.execute(
                f"UPDATE {table} SET {column} = NOW(6) - INTERVAL 30 DAY WHERE out_trade_no = %s",
                (no,),
            )
    for service in ("entitlement", "order"):
        async with _pool(service_mysql_urls[service]) as pool:
            pruner = RetentionPruner(
                pool,
                retention_days=7,
                interval_s=3600,
                tables=RECORD_TABLES,
                lock_name=RECORDS_LOCK_NAME,
            )
            if service == "entitlement":
                with pytest.raises(pymysql.err.OperationalError) as raised:
                    await pruner.prune_once()
                assert raised.value.args[0] == TABLE_DENIED
                continue
            pruned = await pruner.prune_once()
    assert all(pruned[table] >= 1 for table in pruned), pruned
    async with _pool(service_mysql_urls["order"]) as pool:
        assert await console_records.of_order(pool, no) == []
