"""Webhooks to the backend (Standard Webhooks 1.0) on the real RabbitMQ and MariaDB: events
published to ``paylane`` reach a real receiver (an aiohttp server) whose signatures are
checked with the ``standardwebhooks`` package, not paylane's code; retries, ``Retry-After``,
410, disabling, SSRF refusals, rotation, the endpoints API and the ``paylane webhooks``
commands (docs/webhooks.md)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY
from standardwebhooks import Webhook, WebhookVerificationError

from paylane_common.broker import amqp
from paylane_common.broker.publisher import Publisher
from paylane_common.broker.topology import ORDER_PAYMENTS, ORDER_WEBHOOKS
from paylane_common.contract import events
from paylane_common.contract.events import Envelope, make_event
from paylane_common.delivery.batching import BatchConsumer
from paylane_common.delivery.consumer import RetryPolicy
from paylane_common.runtime.outages import Dependency
from paylane_common.storage import db
from paylane_common.storage.leases import Lease
from paylane_order.bindings import BindingsKeeper, BindingsUnavailable, OptionalBindings
from paylane_order.webhooks import signing, ssrf
from paylane_order.webhooks.dispatcher import WebhookConfig, WebhookDispatcher, WebhookIngest
from paylane_order.webhooks.routes import WEBHOOK_STORE
from paylane_order.webhooks.store import WebhookStore, config_endpoint_id
from paylane_order.webhooks.types import WEBHOOK_EVENTS
from services.order.tests.support import OrderApi
from tests.support import hygiene
from tests.support.batches import batch_item
from tests.support.infra import Infra
from tests.support.polling import eventually, within

pytestmark = pytest.mark.integration

SECRET_NEW = signing.new_secret()
SECRET_OLD = signing.new_secret()
hygiene.register(SECRET_NEW, SECRET_OLD)
#: Short steps: the tests wait for outcomes, never for a time.
FAST = WebhookConfig(schedule_s=(0.05,) * 8, jitter=0.0, timeout_s=5.0, poll_s=0.05)


@dataclass
class Receiver:
    """A backend's webhook endpoint: answers what ``answers`` says (then 200), and keeps
    what it was sent."""

    url: str = ""
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)

    def accepted(self) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b, status in self.received if 200 <= status < 300]

    def verified(self, secret: str) -> list[Any]:
        """The bodies of the accepted requests, each verified with ``secret`` by the
        standardwebhooks package (raises WebhookVerificationError otherwise)."""
        return [Webhook(secret).verify(body, headers) for headers, body in self.accepted()]


@asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
        receiver.received.append((dict(request.headers), body, status))
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "no")

    app = web.Application()
    app.router.add_post("/hooks", hook)
    async with TestServer(app, host="127.0.0.1") as server:
        receiver.url = str(server.make_url("/hooks"))
        yield receiver


@dataclass
class Webhooks:
    store: WebhookStore
    dispatcher: WebhookDispatcher
    publisher: Publisher
    published: int = 0

    async def publish(self, event: str | Envelope = events.ORDER_PAID) -> Envelope:
        envelope = _event(event) if isinstance(event, str) else event
        await self.publisher.publish(envelope)
        self.published += 1
        return envelope


def _event(event_type: str, event_id: str | None = None) -> Envelope:
    if event_type == events.ORDER_PAID:
        data: Any = events.OrderPaid(
            out_trade_no="WH" + (event_id or "x")[-10:],
            user_id="user-webhooks",
            package_type="basic",
            amount_total=1,
            paid_at="2026-12-01T00:00:00Z",
        )
    else:
        data = events.OrderFailed(
            out_trade_no="WHF", user_id="user-webhooks", package_type="basic", reason="closed"
        )
    return make_event(event_type, data, event_id)


async def _empty(pool: aiomysql.Pool) -> None:
    async with db.transaction(pool) as cur:
        for table in ("webhook_attempts", "webhook_deliveries", "webhook_endpoints"):
            await cur.execute(f"DELETE FROM {table}")


@pytest.fixture
async def clean(db_pool: aiomysql.Pool) -> AsyncIterator[WebhookStore]:
    """Empty webhook tables, and empty again after: the session's other tests (the order
    service run whole) must find no endpoint of these."""
    await _empty(db_pool)
    yield WebhookStore(db_pool)
    await _empty(db_pool)


@asynccontextmanager
async def running(
    store: WebhookStore,
    connection: AbstractRobustConnection,
    database: Dependency,
    config: WebhookConfig,
) -> AsyncIterator[Webhooks]:
    """The order service's webhook parts, as it wires them (webhooks/wiring.py)."""
    publisher = await Publisher.open(connection)  # declares the topology
    bindings = OptionalBindings(store.pool, connection, shipping=False)
    store.on_change = bindings.reconcile
    await store.sync_config(config.urls)  # order.webhooks bound to the endpoints' types
    channel = await connection.channel()  # what the session's other tests left: not ours
    await (await channel.declare_queue(ORDER_WEBHOOKS.name, passive=True)).purge()
    await channel.close()
    dispatcher = WebhookDispatcher(store, config)
    consumer = BatchConsumer(  # as consumer_of makes it for this batch handler
        connection,
        publisher,
        ORDER_WEBHOOKS,
        WebhookIngest(store, dispatcher.wake),
        database=database,
        retry=RetryPolicy(attempts=3),
    )
    await consumer.start()
    dispatcher.start()
    before = _consumed_all()
    hooks = Webhooks(store, dispatcher, publisher)
    try:
        yield hooks
        # Nothing left for the next test's consumer: every event published was settled.
        await eventually(
            lambda: _consumed_all() - before >= hooks.published, what="all events consumed"
        )
    finally:
        await consumer.stop()
        await dispatcher.stop()
        await publisher.close()


def _fast(receiver: Receiver, *secrets: str, **kw: Any) -> WebhookConfig:
    return WebhookConfig(
        urls=(receiver.url,),
        secrets=secrets or (SECRET_NEW,),
        allow_private=True,
        schedule_s=kw.pop("schedule_s", FAST.schedule_s),
        jitter=0.0,
        timeout_s=5.0,
        poll_s=0.05,
        **kw,
    )


async def _deliveries(store: WebhookStore) -> list[dict[str, Any]]:
    return await store.deliveries(limit=100)


async def _endpoint(store: WebhookStore, endpoint_id: str) -> Any:
    async with db.transaction(store.pool) as cur:
        await cur.execute("SELECT * FROM webhook_endpoints WHERE id = %s", (endpoint_id,))
        return await cur.fetchone()


async def test_a_backend_verifies_the_envelope_with_standardwebhooks_under_both_secrets(
    clean: WebhookStore, amqp_connection: AbstractRobustConnection, database: Dependency
) -> None:
    """Rotation: signed with each of two secrets; a receiver holding either verifies. The
    body is the envelope, webhook-id its event id."""
    async with receiving() as receiver:
        config = _fast(receiver, SECRET_NEW, SECRET_OLD)
        async with running(clean, amqp_connection, database, config) as hooks:
            sent = await hooks.publish()
            await eventually(lambda: len(receiver.accepted()) == 1, what="the webhook")
    headers, body = receiver.accepted()[0]
    assert headers["webhook-id"] == sent.event_id
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET_NEW, SECRET_OLD):
        (payload,) = receiver.verified(secret)
        assert payload == json.loads(sent.to_json())
    with pytest.raises(WebhookVerificationError):
        receiver.verified(signing.new_secret())
    assert json.loads(body)["type"] == "order.paid"


async def test_an_endpoint_down_for_a_while_gets_the_event_once_it_is_back(
    clean: WebhookStore, amqp_connection: AbstractRobustConnection, database: Dependency
) -> None:
    """Down (503, then a dropped answer: 500) for three attempts, then up: the event
    arrives once, under the same webhook-id every time, though the broker delivered it
    twice."""
    async with receiving() as receiver:
        receiver.answers = [(503, {}), (500, {}), (502, {})]
        async with running(clean, amqp_connection, database, _fast(receiver)) as hooks:
            sent = await hooks.publish()
            await hooks.publish(sent)  # a duplicate: the same event id
            await eventually(lambda: len(receiver.accepted()) == 1, what="the webhook")
            await eventually(lambda: _attempts_settled(clean), what="every attempt recorded")
    ids = {headers["webhook-id"] for headers, _, _ in receiver.received}
    assert ids == {sent.event_id}
    assert [status for _, _, status in receiver.received] == [503, 500, 502, 200]
    (row,) = await _deliveries(clean)
    assert (row["status"], row["attempts"], row["last_status"]) == ("succeeded", 4, 200)
    endpoint = await _endpoint(clean, config_endpoint_id(receiver.url))
    assert endpoint["failing_since"] is None  # forgotten on success


async def _attempts_settled(store: WebhookStore) -> bool:
    rows = await store.deliveries(limit=100)
    return bool(rows) and all(r["status"] != "pending" for r in rows)


async def test_retry_after_is_honoured_instead_of_the_schedule(
    clean: WebhookStore, amqp_connection: AbstractRobustConnection, database: Dependency
) -> None:
    """The schedule's next step is an hour; the endpoint asks for 0 s: it is sent again
    now, which only Retry-After can have made."""
    async with receiving() as receiver:
        receiver.answers = [(429, {"Retry-After": "0"})]
        config = _fast(receiver, schedule_s=(3600.0, 3600.0))
        async with running(clean, amqp_connection, database, config) as hooks:
            await hooks.publish()
            await eventually(lambda: len(receiver.accepted()) == 1, what="the resend")
    assert [status for _, _, status in receiver.received] == [429, 200]


async def test_a_410_disables_the_endpoint_and_later_events_skip_it(
    clean: WebhookStore, amqp_connection: AbstractRobustConnection, database: Dependency
) -> None:
    gone = REGISTRY.get_sample_value("paylane_webhook_endpoints_disabled_total", {"reason": "gone"})
    async with receiving() as receiver:
        receiver.answers = [(410, {})]
        async with running(clean, amqp_connection, database, _fast(receiver)) as hooks:
            await hooks.publish()
            endpoint_id = config_endpoint_id(receiver.url)

            async def disabled() -> bool:
                return (await _endpoint(clean, endpoint_id))["status"] == "disabled"

            await eventually(disabled, what="the endpoint disabled")
            skipped = _consumed("no_new_webhook")
            later = await hooks.publish()
            other = await hooks.publish(events.ORDER_FAILED)
            await eventually(
                lambda: _consumed("no_new_webhook") == skipped + 2, what="both consumed"
            )
    assert len(receiver.received) == 1
    (row,) = await _deliveries(clean)
    assert row["status"] == "failed" and row["event_id"] not in (later.event_id, other.event_id)
    assert (await _endpoint(clean, endpoint_id))["disabled_reason"] == "410 Gone"
    after = REGISTRY.get_sample_value(
        "paylane_webhook_endpoints_disabled_total", {"reason": "gone"}
    )
    assert after == (gone or 0) + 1


def _consumed_all() -> float:
    return sum(
        _consumed(outcome) for outcome in ("webhooks_recorded", "no_new_webhook", "dead_lettered")
    )


def _consumed(outcome: str) -> float:
    """Messages the webhook consumer settled with ``outcome`` so far (this process)."""
    labels = {"queue": ORDER_WEBHOOKS.name, "outcome": outcome}
    return REGISTRY.get_sample_value("paylane_consumer_messages_total", labels) or 0.0


async def test_an_endpoint_failing_past_the_disable_delay_is_disabled(
    clean: WebhookStore, amqp_connection: AbstractRobustConnection, database: Dependency
) -> None:
    """WEBHOOK_DISABLE_AFTER_S 0: the first failure starts the clock, the next one finds
    it run out."""
    failing = REGISTRY.get_sample_value(
        "paylane_webhook_endpoints_disabled_total", {"reason": "failing"}
    )
    async with receiving() as receiver:
        receiver.answers = [(500, {})] * 10
        config = _fast(receiver, disable_after_s=0.0)
        async with running(clean, amqp_connection, database, config) as hooks:
            await hooks.publish()
            endpoint_id = config_endpoint_id(receiver.url)

            async def disabled() -> bool:
                return (await _endpoint(clean, endpoint_id))["status"] == "disabled"

            await eventually(disabled, what="the endpoint disabled")
    assert len(receiver.received) == 2
    (row,) = await _deliveries(clean)
    assert row["status"] == "failed"
    assert (await _endpoint(clean, endpoint_id))["disabled_reason"].startswith("failing since")
    after = REGISTRY.get_sample_value(
        "paylane_webhook_endpoints_disabled_total", {"reason": "failing"}
    )
    assert after == (failing or 0) + 1


async def test_an_api_endpoint_gets_only_its_events_signed_with_its_own_secret(
    clean: WebhookStore, amqp_connection: AbstractRobustConnection, database: Dependency
) -> None:
    async with receiving() as receiver:
        endpoint, secret = await clean.create(receiver.url, ["order.failed"], "mine")
        hygiene.register(secret)
        config = WebhookConfig(allow_private=True, schedule_s=(0.05,), poll_s=0.05)
        async with running(clean, amqp_connection, database, config) as hooks:
            before = _consumed_all()
            await hooks.publish(events.ORDER_PAID)  # not subscribed: not even delivered
            hooks.published -= 1
            failed = await hooks.publish(events.ORDER_FAILED)
            await eventually(lambda: len(receiver.accepted()) == 1, what="order.failed")
            # order.webhooks is bound to order.failed alone (paylane_order.bindings).
            await eventually(lambda: _consumed_all() - before >= 1, what="order.failed consumed")
            assert _consumed_all() - before == 1
    (payload,) = receiver.verified(secret)
    assert payload["event_id"] == failed.event_id
    assert [r["endpoint_id"] for r in await _deliveries(clean)] == [endpoint.id]


async def test_a_private_target_is_refused_at_send_time(
    clean: WebhookStore, amqp_connection: AbstractRobustConnection, database: Dependency
) -> None:
    """``https://localhost:…`` passes the form check; its address is refused when the
    send resolves it (what a rebinding name would meet): the receiver hears nothing."""
    async with receiving() as receiver:
        url = receiver.url.replace("http://127.0.0.1", "https://localhost")
        config = WebhookConfig(urls=(url,), secrets=(SECRET_NEW,), schedule_s=(0.05,), poll_s=0.05)
        async with running(clean, amqp_connection, database, config) as hooks:
            await hooks.publish()
            await eventually(lambda: _attempts_settled(clean), what="the attempt")
    assert receiver.received == []
    (row,) = await _deliveries(clean)
    assert row["status"] == "failed"
    attempts = await clean.attempts(row["id"])
    assert attempts[0]["error"].startswith("refused: localhost resolves to")


async def test_the_resolver_refuses_names_of_private_addresses() -> None:
    resolver = ssrf.PublicOnlyResolver()
    try:
        with pytest.raises(ssrf.TargetRefused):
            await resolver.resolve("localhost", 443)
    finally:
        await resolver.close()
    for url in ("https://10.1.2.3/x", "https://[::1]/x", "https://169.254.169.254/x",
                "https://[::ffff:127.0.0.1]/x", "http://example.com/x"):  # fmt: skip
        with pytest.raises(ssrf.TargetRefused):
            ssrf.check_url(url, allow_private=False)
    ssrf.check_url("https://93.184.215.14/hooks", allow_private=False)
    ssrf.check_url("http://127.0.0.1:8000/hooks", allow_private=True)


async def test_endpoints_api_refuses_bad_input_naming_the_field(
    clean: WebhookStore, order_api: OrderApi
) -> None:
    refused = {
        "http://93.184.215.14/hooks": "url",
        "https://127.0.0.1/hooks": "url",
        "https://localhost/hooks": "url",
        "https://10.0.0.8/hooks": "url",
    }
    for url, named in refused.items():
        status, answer = await order_api.backend("POST", "/webhooks/endpoints", {"url": url})
        assert status == 400, (url, answer)
        assert answer["message"].startswith(f"{named}: "), answer
    status, answer = await order_api.backend(
        "POST",
        "/webhooks/endpoints",
        {"url": "https://93.184.215.14/hooks", "events": ["order.paid", "order.shipped"]},
    )
    assert status == 400 and answer["message"].startswith("events"), answer
    assert "order.shipped" in answer["message"]


async def test_endpoints_api_makes_lists_and_deletes(
    clean: WebhookStore, order_api: OrderApi
) -> None:
    status, made = await order_api.backend(
        "POST",
        "/webhooks/endpoints",
        {"url": "https://93.184.215.14/hooks", "events": ["fulfilment.*", "order.paid"]},
    )
    assert status == 201, made
    hygiene.register(made["secret"])
    assert made["events"] == ["order.paid", "fulfilment.succeeded", "fulfilment.failed"]
    assert made["secret"].startswith("whsec_") and made["status"] == "enabled"
    status, listed = await order_api.backend("GET", "/webhooks/endpoints")
    assert status == 200
    assert [e["id"] for e in listed["endpoints"]] == [made["id"]]
    assert "secret" not in listed["endpoints"][0]
    status, _ = await order_api.call("GET", "/webhooks/endpoints")
    assert status == 401
    _, headers = await order_api.user()
    status, _ = await order_api.call("GET", "/webhooks/endpoints", headers=headers)
    assert status == 403
    status, _ = await order_api.backend("DELETE", f"/webhooks/endpoints/{made['id']}")
    assert status == 204
    status, _ = await order_api.backend("DELETE", f"/webhooks/endpoints/{made['id']}")
    assert status == 404
    await clean.sync_config(["https://93.184.215.14/configured"])
    configured = config_endpoint_id("https://93.184.215.14/configured")
    status, answer = await order_api.backend("DELETE", f"/webhooks/endpoints/{configured}")
    assert (status, answer["error"]) == (409, "configured_endpoint")


async def test_cli_lists_resends_and_recovers_failed_deliveries(
    clean: WebhookStore,
    amqp_connection: AbstractRobustConnection,
    database: Dependency,
    mysql_url: str,
) -> None:
    """Two events fail their (one-step) schedule; ``deliveries --failed`` lists them;
    ``resend`` sends one again, ``recover --since`` the other."""

    async def paylane(*args: str) -> tuple[int, str]:
        """``paylane webhooks …`` as an operator runs it: a process of its own."""
        env = {**os.environ, "MYSQL_URL": mysql_url, "COLUMNS": "300"}  # the table unfolded
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "paylane.cli", "webhooks", *args, env=env,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await process.communicate()
        return process.returncode or 0, out.decode()

    async with receiving() as receiver:
        receiver.answers = [(500, {})] * 4  # each tried twice: once, then one step
        config = _fast(receiver, schedule_s=(0.05,))
        async with running(clean, amqp_connection, database, config) as hooks:
            first = await hooks.publish()
            await eventually(lambda: _attempts_settled(clean), what="the first failure")
            second = await hooks.publish()

            async def both_failed() -> bool:
                rows = await _deliveries(clean)
                return len(rows) == 2 and all(r["status"] == "failed" for r in rows)

            await eventually(both_failed, what="both failed")
            code, listed = await paylane("deliveries", "--failed")
            assert code == 0, listed
            assert first.event_id in listed and second.event_id in listed
            by_event = {r["event_id"]: r["id"] for r in await _deliveries(clean)}
            assert (await paylane("resend", str(by_event[first.event_id])))[0] == 0
            await eventually(lambda: len(receiver.accepted()) == 1, what="the resend")
            code, said = await paylane("recover", "--since", "2020-01-01")
            assert code == 0 and "1 failed deliveries" in said, said
            await eventually(lambda: len(receiver.accepted()) == 2, what="the recovery")
    assert {h["webhook-id"] for h, _ in receiver.accepted()} == {first.event_id, second.event_id}
    assert (await paylane("resend", "999999999"))[0] == 1


async def test_a_batch_of_events_gets_one_delivery_per_subscription_and_a_replay_none(
    clean: WebhookStore,
) -> None:
    """The consumer's batch path (WebhookIngest.apply_batch): every event of the batch
    to every endpoint subscribed to its type, in one transaction; the same batch again
    (a redelivery) adds nothing; with no endpoint, nothing is written."""
    ingest = WebhookIngest(clean)
    batch = [_event(events.ORDER_PAID, f"evt_{n}") for n in range(3)]
    batch.append(_event(events.ORDER_FAILED, "evt_failed"))
    items = [batch_item(e, e.typed_data()) for e in batch]
    async with db.transaction(clean.pool) as cur:
        assert await ingest.apply_batch(cur, items) == ["no_new_webhook"] * 4
    assert await _deliveries(clean) == []

    everything, _ = await clean.create("https://a.example/h", WEBHOOK_EVENTS, "all")
    paid_only, _ = await clean.create("https://b.example/h", [events.ORDER_PAID], "paid")
    for wanted in ("webhooks_recorded", "no_new_webhook"):
        async with db.transaction(clean.pool) as cur:
            assert await ingest.apply_batch(cur, items) == [wanted] * 4
    rows = {(d["event_id"], d["endpoint_id"]) for d in await _deliveries(clean)}
    assert rows == {(e.event_id, everything.id) for e in batch} | {
        (e.event_id, paid_only.id) for e in batch[:3]
    }


async def test_a_refund_nobody_signed_reaches_no_endpoint_as_it_was_claimed(
    clean: WebhookStore,
) -> None:
    """A refund result from Cloud Hosting's unsigned callback (a claim) is not forwarded,
    by either path; the refund consumer's confirmed event (WeChat Pay's answer) is."""
    everything, _ = await clean.create("https://a.example/h", WEBHOOK_EVENTS, "all")
    ingest = WebhookIngest(clean)

    def refund(event_id: str, source: events.RefundSource) -> Envelope:
        data = events.RefundEvent(
            out_trade_no="T1",
            out_refund_no="R1",
            amount_refund=990,
            amount_total=990,
            status="SUCCESS",
            source=source,
        )
        return make_event(events.REFUND_SUCCEEDED, data, event_id)

    claim = refund("cloudhosting-refund-R1-SUCCESS", "cloudhosting")
    unsourced = refund("cloudhosting-refund-R2-SUCCESS", "wechatpay")  # an older ingress's
    confirmed = refund("confirmed-cloudhosting-refund-R1-SUCCESS", "wechatpay")
    for forged in (claim, unsourced):
        assert await ingest(forged, forged.typed_data()) == "claim_not_forwarded"
    items = [batch_item(e, e.typed_data()) for e in (claim, confirmed, unsourced)]
    async with db.transaction(clean.pool) as cur:
        assert await ingest.apply_batch(cur, items) == [
            "claim_not_forwarded",
            "webhooks_recorded",
            "claim_not_forwarded",
        ]
    rows = {(d["event_id"], d["endpoint_id"]) for d in await _deliveries(clean)}
    assert rows == {(confirmed.event_id, everything.id)}


# --- the order service's optional bindings (paylane_order.bindings) ---------------------


def _bound(infra: Infra, amqp_url: str, queue: str) -> set[str]:
    """The keys ``queue`` is bound to on the exchange ``paylane`` (its forward exchange's
    binding, by its own name, left out)."""
    vhost = unquote(urlsplit(amqp_url).path[1:])
    return infra.broker.bindings(vhost, queue) - {queue}


async def test_order_webhooks_is_bound_to_what_the_endpoints_subscribe_to_and_no_more(
    clean: WebhookStore, amqp_connection: AbstractRobustConnection, infra: Infra, amqp_url: str
) -> None:
    """A broker declared before (order.webhooks bound to every type) loses the bindings
    no endpoint asks for; an endpoint is answered once its types are bound, a second one
    widens them, a disabled one counts for nothing, deleting the last leaves none."""
    await (await Publisher.open(amqp_connection)).close()  # declares the topology
    channel = await amqp_connection.channel()
    queue = await channel.get_queue(ORDER_WEBHOOKS.name, ensure=True)
    for key in WEBHOOK_EVENTS:  # what the definitions of earlier versions bound
        await queue.bind("paylane", routing_key=key)
    await channel.close()
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == set(WEBHOOK_EVENTS)
    bindings = OptionalBindings(clean.pool, amqp_connection, shipping=False)
    clean.on_change = bindings.reconcile

    await clean.sync_config(())  # as the service starts: no endpoint
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == set()
    paid, _ = await clean.create("https://a.example/h", ["order.paid", "fulfilment.succeeded"], "")
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == {"order.paid", "fulfilment.succeeded"}
    failed, _ = await clean.create("https://b.example/h", ["order.failed"], "")
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == {
        "order.paid",
        "fulfilment.succeeded",
        "order.failed",
    }
    async with db.transaction(clean.pool) as cur:  # as the dispatcher disables one
        await cur.execute(
            "UPDATE webhook_endpoints SET status = 'disabled' WHERE id = %s", (failed.id,)
        )
    await bindings.reconcile()  # the keeper's pass
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == {"order.paid", "fulfilment.succeeded"}
    assert await clean.enable(failed.id)
    assert "order.failed" in _bound(infra, amqp_url, ORDER_WEBHOOKS.name)
    assert await clean.delete(paid.id) == "api"
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == {"order.failed"}
    assert await clean.delete(failed.id) == "api"
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == set()
    await clean.sync_config(("https://c.example/h",))  # WEBHOOK_URLS: every type
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == set(WEBHOOK_EVENTS)
    await clean.sync_config(())
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == set()


async def test_order_payments_gets_grants_and_fulfilments_only_while_shipping_is_declared(
    db_pool: aiomysql.Pool, amqp_connection: AbstractRobustConnection, infra: Infra, amqp_url: str
) -> None:
    await (await Publisher.open(amqp_connection)).close()
    shipped = set(ORDER_PAYMENTS.optional_keys)
    assert shipped == {events.ENTITLEMENT_GRANTED, events.FULFILMENT_SUCCEEDED}
    try:
        await OptionalBindings(db_pool, amqp_connection, shipping=True).reconcile()
        bound = _bound(infra, amqp_url, ORDER_PAYMENTS.name)
        assert bound == set(ORDER_PAYMENTS.routing_keys) | shipped
        await OptionalBindings(db_pool, amqp_connection, shipping=False).reconcile()
        assert _bound(infra, amqp_url, ORDER_PAYMENTS.name) == set(ORDER_PAYMENTS.routing_keys)
    finally:  # the session's other tests (the stack's order service) find it as it was
        await OptionalBindings(db_pool, amqp_connection, shipping=True).reconcile()


async def test_an_endpoint_whose_events_cannot_be_bound_is_not_made(
    clean: WebhookStore, amqp_connection: AbstractRobustConnection, infra: Infra, amqp_url: str
) -> None:
    """Another replica holding the lease past the wait: the creation fails, the endpoint
    is not listed, nothing is bound for it."""
    await (await Publisher.open(amqp_connection)).close()
    bindings = OptionalBindings(clean.pool, amqp_connection, shipping=False)
    clean.on_change = lambda: bindings.reconcile(wait_s=0.2)
    await clean.sync_config(())
    async with Lease(clean.pool, OptionalBindings.LOCK).held() as held:
        assert held
        with pytest.raises(BindingsUnavailable, match="another replica"):
            await clean.create("https://a.example/h", ["order.paid"], "")
    assert await clean.endpoints() == []
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == set()


async def test_the_api_answers_503_and_makes_nothing_when_the_events_cannot_be_bound(
    clean: WebhookStore, order_api: OrderApi
) -> None:
    store = order_api.client.app[WEBHOOK_STORE]

    async def refused() -> None:
        raise BindingsUnavailable("RabbitMQ: ConnectionError('gone')")

    store.on_change = refused
    try:
        status, answer = await order_api.backend(
            "POST", "/webhooks/endpoints", {"url": "https://93.184.215.14/hooks"}
        )
    finally:
        store.on_change = None
    assert status == 503, answer
    assert answer["error"] == "broker_unavailable" and "nothing was made" in answer["message"]
    assert "secret" not in answer
    status, listed = await order_api.backend("GET", "/webhooks/endpoints")
    assert (status, listed["endpoints"]) == (200, [])


async def test_the_keeper_binds_what_changed_elsewhere_and_again_after_a_reconnection(
    clean: WebhookStore, amqp_connection: AbstractRobustConnection, infra: Infra, amqp_url: str
) -> None:
    """An endpoint enabled by ``paylane webhooks enable`` (a store with no broker: no
    on_change) is bound by the keeper's next comparison; a reconnection makes it bind
    again what the broker may have lost."""
    await (await Publisher.open(amqp_connection)).close()
    own = await amqp.connect(amqp_url, "test-bindings")  # its reconnection callbacks alone
    bindings = OptionalBindings(clean.pool, own, shipping=False)
    await bindings.reconcile()
    assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == set()
    keeper = BindingsKeeper(bindings, interval_s=0.1)
    keeper.start()
    try:
        elsewhere = WebhookStore(clean.pool)  # as the CLI has it
        await elsewhere.create("https://a.example/h", ["order.refunded"], "")
        await eventually(
            lambda: _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == {"order.refunded"},
            what="order.refunded bound by the keeper",
        )
        channel = await amqp_connection.channel()  # the broker loses it
        queue = await channel.get_queue(ORDER_WEBHOOKS.name, ensure=True)
        await queue.unbind("paylane", routing_key="order.refunded")
        await channel.close()
        assert _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == set()
        await own.reconnect_callbacks()  # as after a reconnection
        await eventually(
            lambda: _bound(infra, amqp_url, ORDER_WEBHOOKS.name) == {"order.refunded"},
            what="order.refunded bound again",
        )
    finally:  # once, on CI, the test outlived its 120 s after the keeper had bound again
        await within(keeper.stop(), 30, "the keeper's stop")
        await within(own.close(), 30, "closing its connection")


async def test_the_keeper_outlives_a_pass_cancelled_by_a_lost_connection() -> None:
    """aiormq fails the calls of a connection it lost with CancelledError: a pass failing
    so is logged, and the keeper goes on (only its own stop ends it)."""

    class Flaky:
        bound = None
        passes = 0

        async def wanted(self) -> dict[str, tuple[str, ...]]:
            return {}

        async def reconcile(self) -> None:
            self.passes += 1
            if self.passes == 1:
                raise asyncio.CancelledError  # as a lost connection's pending call

    flaky = Flaky()
    keeper = BindingsKeeper(flaky, interval_s=0.01)  # type: ignore[arg-type]
    keeper.start()
    try:
        await eventually(lambda: flaky.passes >= 3, what="passes after the cancelled one")
    finally:
        await keeper.stop()
