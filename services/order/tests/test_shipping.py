"""Shipping declared to WeChat (docs/shipping.md): a JSAPI order whose effect is done is
queued once and uploaded once, with WeChat's errcodes handled; the access token shared by
the replicas. On the session's MariaDB and the kit's sandbox (which plays WeChat's
shipping service too)."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import replace
from typing import Any

import aiomysql
import pytest
from prometheus_client import REGISTRY

from paylane_common.contract import events
from paylane_common.contract.events import Entitlement, make_event
from paylane_common.storage.db import transaction
from paylane_order.config import ShippingConfig
from paylane_order.main import OrderEvents
from paylane_order.order_created import OrderCreatedApplier
from paylane_order.payments import PaymentApplier
from paylane_order.refunds import RefundApplier
from paylane_order.shipping import AccessTokens, ShippingQueue, ShippingUploader, WechatApi
from services.order.tests.support import CATALOG, OrderApi
from tests.support.batches import batch_item
from tests.support.events import fulfilment_settled
from tests.support.polling import eventually
from tests.support.seeding import add_order, add_user
from tests.support.stack_config import APP_SECRET
from tests.support.wechat import KIT

pytestmark = pytest.mark.integration


def shipping_config(order_api: OrderApi, **changes: Any) -> ShippingConfig:
    config = ShippingConfig(
        mode="virtual",
        api_base=order_api.sandbox.base_url,
        appid=KIT.appid,
        app_secret=APP_SECRET,
        retry_base_s=0.05,
    )
    return replace(config, **changes)


class Shipping:
    """The order consumer's handler (with its shipping queue) and an uploader, as one
    replica of the order service has them."""

    def __init__(self, order_api: OrderApi, **changes: Any) -> None:
        self.pool = order_api.pool
        self.config = shipping_config(order_api, **changes)
        self.api = WechatApi(self.config.api_base, self.config.appid, self.config.app_secret)
        self.tokens = AccessTokens(self.pool, self.api)
        self.uploader = ShippingUploader(self.pool, self.api, self.tokens, self.config)
        queue = ShippingQueue(self.pool, self.config, CATALOG)
        self.handler = OrderEvents(
            PaymentApplier(self.pool, None),  # type: ignore[arg-type]
            RefundApplier(self.pool),
            OrderCreatedApplier(self.pool),
            queue,
        )

    async def granted(self, order: dict[str, Any], event_id: str | None = None) -> str:
        data = Entitlement(
            user_id=order["user_id"],
            out_trade_no=order["out_trade_no"],
            payment_status="basic",
            regenerate_count=5,
        )
        envelope = make_event(events.ENTITLEMENT_GRANTED, data, event_id)
        return await self.handler(envelope, envelope.typed_data())

    async def fulfilled(self, out_trade_no: str, user_id: str) -> str:
        envelope = fulfilment_settled(user_id, out_trade_no).envelope
        return await self.handler(envelope, envelope.typed_data())

    async def close(self) -> None:
        await self.api.close()


@pytest.fixture
async def shipping(order_api: OrderApi) -> Any:
    """``shipping(**config changes)``: a replica's shipping parts. The uploads earlier
    tests left pending (the database is the session's) are put off a day: an uploader
    takes every row due, and would spend this test's injected errcodes on them. A token
    another test's sandbox issued is forgotten (this sandbox would refuse it)."""
    async with transaction(order_api.pool) as cur:
        await cur.execute(
            "UPDATE paylane_shipping SET next_attempt_at = NOW(6) + INTERVAL 1 DAY"
            " WHERE state = 'pending'"
        )
        await cur.execute("DELETE FROM paylane_wechat_tokens WHERE appid = %s", (KIT.appid,))
    made: list[Shipping] = []

    def make(**changes: Any) -> Shipping:
        made.append(Shipping(order_api, **changes))
        return made[-1]

    yield make
    for one in made:
        await one.close()


async def paid_order(order_api: OrderApi, trade_type: str = "JSAPI") -> dict[str, Any]:
    """An order placed through the API at the sandbox, paid there by its user, and paid
    in the database: {out_trade_no, user_id, transaction_id, openid}."""
    user_id, session = await order_api.user()
    body = {"package_type": "basic", "trade_type": trade_type}
    if trade_type == "H5":
        body["client_ip"] = "203.0.113.7"
    status, placed = await order_api.call("POST", "/orders", body, session)
    assert status == 201, placed
    no = placed["out_trade_no"]
    paid = await order_api.sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    async with transaction(order_api.pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET status = 'paid', transaction_id = %s, paid_at = NOW(6)"
            " WHERE out_trade_no = %s",
            (paid["transaction_id"], no),
        )
        await cur.execute("SELECT _openid FROM payment_orders WHERE out_trade_no = %s", (no,))
        openid = (await cur.fetchone())["_openid"]
    return {
        "out_trade_no": no,
        "user_id": user_id,
        "transaction_id": paid["transaction_id"],
        "openid": openid,
    }


async def shipping_rows(pool: aiomysql.Pool, out_trade_no: str) -> list[dict[str, Any]]:
    async with transaction(pool) as cur:
        await cur.execute("SELECT * FROM paylane_shipping WHERE out_trade_no = %s", (out_trade_no,))
        return list(await cur.fetchall())


async def shipping_row(pool: aiomysql.Pool, out_trade_no: str) -> dict[str, Any]:
    [row] = await shipping_rows(pool, out_trade_no)
    return row


def uploads_of(order_api: OrderApi, transaction_id: str) -> list[dict[str, Any]]:
    shipment = order_api.sandbox.state.shipping.shipments.get(transaction_id)
    return list(shipment.uploads) if shipment else []


def upload_calls(order_api: OrderApi, transaction_id: str) -> list[dict[str, Any]]:
    return [
        call
        for call in order_api.sandbox.state.shipping.calls
        if call["body"].get("order_key", {}).get("transaction_id") == transaction_id
    ]


async def fault(order_api: OrderApi, errcode: int, count: int = 1) -> None:
    await order_api.sandbox.ok(
        "POST", "/sandbox/shipping/faults", {"errcode": errcode, "count": count}
    )


def counted(outcome: str) -> float:
    sample = REGISTRY.get_sample_value("paylane_shipping_uploads_total", {"outcome": outcome})
    return sample or 0.0


async def test_a_granted_jsapi_order_is_uploaded_once_with_its_fields(order_api, shipping):
    one = shipping()
    order = await paid_order(order_api)
    no, txn = order["out_trade_no"], order["transaction_id"]
    assert await one.granted(order, event_id="granted-1") == "shipping_queued"
    assert await one.granted(order, event_id="granted-1") == "duplicate"  # redelivered
    assert await one.granted(order) == "shipping_queued_before"  # a replay, another id
    assert await one.fulfilled(no, order["user_id"]) == "shipping_queued_before"
    assert (await shipping_row(order_api.pool, no))["state"] == "pending"

    assert await one.uploader.run_once() == {"uploaded": 1}
    assert await one.uploader.run_once() == {}  # nothing due any more
    [upload] = uploads_of(order_api, txn)
    assert upload["order_key"] == {"order_number_type": 2, "transaction_id": txn}
    assert (upload["logistics_type"], upload["delivery_mode"]) == (3, 1)
    assert upload["shipping_list"] == [{"item_desc": CATALOG["basic"].description}]
    assert upload["payer"] == {"openid": order["openid"]}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00", upload["upload_time"])
    got = await order_api.sandbox.ok("GET", "/sandbox/shipping")
    assert [c["answer"]["errcode"] for c in upload_calls(order_api, txn)] == [0]
    assert got["stable_token_calls"] >= 1

    row = await shipping_row(order_api.pool, no)
    assert (row["state"], row["attempts"], row["last_errcode"]) == ("uploaded", 1, None)
    status, view = await order_api.backend("GET", f"/orders/{no}")
    assert status == 200
    shown = view["shipping"]
    assert (shown["state"], shown["attempts"], shown["next_attempt_at"]) == ("uploaded", 1, None)
    assert shown["uploaded_at"] and shown["failed_reason"] is None


@pytest.mark.parametrize("trade_type", ["NATIVE", "H5"])
async def test_orders_not_paid_in_the_mini_program_are_never_uploaded(
    order_api, shipping, trade_type
):
    one = shipping()
    order = await paid_order(order_api, trade_type)
    assert await one.granted(order) == "shipping_not_jsapi"
    assert await one.fulfilled(order["out_trade_no"], order["user_id"]) == "shipping_not_jsapi"
    assert await shipping_rows(order_api.pool, order["out_trade_no"]) == []
    status, view = await order_api.backend("GET", f"/orders/{order['out_trade_no']}")
    assert (status, view["shipping"]) == (200, None)


async def test_nothing_is_queued_when_shipping_upload_is_off(order_api, shipping):
    off = shipping(mode="off")
    order = await paid_order(order_api)
    assert await off.granted(order) == "shipping_off"
    assert await shipping_rows(order_api.pool, order["out_trade_no"]) == []


async def test_with_shipping_off_a_batchs_grants_are_settled_with_it(order_api, shipping):
    """Every payment's entitlement.granted reaches the order consumer: with shipping off
    it is settled in the batch (acked with it), not left to the one-by-one path; with
    shipping on it is left there, where its row is queued."""
    order = await paid_order(order_api)
    data = Entitlement(
        user_id=order["user_id"],
        out_trade_no=order["out_trade_no"],
        payment_status="basic",
        regenerate_count=5,
    )
    envelope = make_event(events.ENTITLEMENT_GRANTED, data)
    item = batch_item(envelope, envelope.typed_data())
    for one, wanted in ((shipping(mode="off"), ["shipping_off"]), (shipping(), [None])):
        async with transaction(order_api.pool) as cur:
            assert await one.handler.apply_batch(cur, [item]) == wanted
    assert await shipping_rows(order_api.pool, order["out_trade_no"]) == []


async def test_a_business_order_waits_for_its_fulfilment(order_api, shipping):
    """A business order (package 'free') changes no plan: its shipping is declared when
    the backend confirms its effect, not on a grant."""
    one = shipping()
    openid = "o-business-payer"
    user_id = await add_user(order_api.pool, openid=openid)
    no = f"B{uuid.uuid4().hex[:24]}"
    await add_order(
        order_api.pool,
        user_id,
        no,
        package_type="free",
        amount="12.34",
        trade_type="JSAPI",
        status="paid",
        transaction_id="4200000000000000000000000001",
    )
    order = {"out_trade_no": no, "user_id": user_id}
    assert await one.granted(order) == "shipping_awaits_fulfilment"
    assert await one.fulfilled(no, user_id) == "shipping_queued"
    row = await shipping_row(order_api.pool, no)
    assert (row["transaction_id"], row["openid"]) == ("4200000000000000000000000001", openid)
    assert await one.fulfilled("T-never-placed", user_id) == "shipping_no_order"


async def test_a_busy_answer_is_retried_until_wechat_takes_it(order_api, shipping):
    one = shipping()
    order = await paid_order(order_api)
    no, txn = order["out_trade_no"], order["transaction_id"]
    await fault(order_api, -1)
    await fault(order_api, 10060001)  # not found yet: right after the payment
    await one.granted(order)
    retried = counted("retry")
    assert await one.uploader.run_once() == {"retry": 1}
    row = await shipping_row(order_api.pool, no)
    assert (row["state"], row["attempts"], row["last_errcode"]) == ("pending", 1, -1)
    _, view = await order_api.backend("GET", f"/orders/{no}")
    assert view["shipping"]["state"] == "pending" and view["shipping"]["next_attempt_at"]

    async def uploaded() -> bool:
        await one.uploader.run_once()
        return (await shipping_row(order_api.pool, no))["state"] == "uploaded"

    await eventually(uploaded, what="the upload after the retries")
    assert [c["answer"]["errcode"] for c in upload_calls(order_api, txn)] == [-1, 10060001, 0]
    assert len(uploads_of(order_api, txn)) == 1
    assert counted("retry") == retried + 2
    assert (await shipping_row(order_api.pool, no))["attempts"] == 3


async def test_retries_survive_a_restart(order_api, shipping):
    """The retry is a row: another replica (or this one restarted) takes it up."""
    order = await paid_order(order_api)
    await fault(order_api, -1)
    first = shipping()
    await first.granted(order)
    assert await first.uploader.run_once() == {"retry": 1}
    await first.close()
    second = shipping()

    async def uploaded() -> bool:
        await second.uploader.run_once()
        return (await shipping_row(order_api.pool, order["out_trade_no"]))["state"] == "uploaded"

    await eventually(uploaded, what="the upload by another replica")


@pytest.mark.parametrize("errcode", [10060002, 10060003, 10060023])
async def test_already_done_answers_count_as_uploaded(order_api, shipping, errcode):
    one = shipping()
    order = await paid_order(order_api)
    await fault(order_api, errcode)
    await one.granted(order)
    assert await one.uploader.run_once() == {"already_done": 1}
    row = await shipping_row(order_api.pool, order["out_trade_no"])
    assert (row["state"], row["last_errcode"], row["failed_reason"]) == ("uploaded", errcode, None)
    assert await one.uploader.run_once() == {}  # never asked again


@pytest.mark.parametrize("errcode", [10060004, 10060031, 268485216])
async def test_any_other_errcode_flags_the_order(order_api, shipping, errcode):
    one = shipping()
    order = await paid_order(order_api)
    await fault(order_api, errcode)
    await one.granted(order)
    failed = counted("failed")
    assert await one.uploader.run_once() == {"failed": 1}
    assert counted("failed") == failed + 1
    row = await shipping_row(order_api.pool, order["out_trade_no"])
    assert (row["state"], row["last_errcode"]) == ("failed", errcode)
    assert str(errcode) in row["failed_reason"]
    assert await one.uploader.run_once() == {}  # flagged: left to an operator
    _, view = await order_api.backend("GET", f"/orders/{order['out_trade_no']}")
    assert (
        view["shipping"]["state"] == "failed" and str(errcode) in view["shipping"]["failed_reason"]
    )


async def test_retries_end_in_failed_after_the_retry_window(order_api, shipping):
    one = shipping(retry_for_s=0.01)
    order = await paid_order(order_api)
    await fault(order_api, 10060012)
    await one.granted(order)
    assert await one.uploader.run_once() == {"failed": 1}
    row = await shipping_row(order_api.pool, order["out_trade_no"])
    assert row["state"] == "failed" and row["failed_reason"].startswith("still not accepted")


async def _stable_token_calls(order_api: OrderApi) -> int:
    return int((await order_api.sandbox.ok("GET", "/sandbox/shipping"))["stable_token_calls"])


async def test_the_token_is_shared_and_refreshed_once_by_two_replicas(order_api, shipping):
    a, b = shipping(), shipping()  # two replicas: each its own cache, one database
    before = await _stable_token_calls(order_api)
    first = await asyncio.gather(a.tokens.token(), b.tokens.token())
    assert first[0] == first[1]
    assert await _stable_token_calls(order_api) == before + 1
    # Cached: nobody asks WeChat again while it is fresh.
    assert await asyncio.gather(a.tokens.token(), b.tokens.token()) == first
    assert await shipping().tokens.token() == first[0]  # a third replica reads the row
    assert await _stable_token_calls(order_api) == before + 1
    # Due for its refresh (five minutes before it expires): two new replicas at once.
    async with transaction(order_api.pool) as cur:
        await cur.execute(
            "UPDATE paylane_wechat_tokens SET refresh_after = NOW(6) WHERE appid = %s",
            (KIT.appid,),
        )
    c, d = shipping(), shipping()
    await asyncio.gather(c.tokens.token(), d.tokens.token())
    assert await _stable_token_calls(order_api) == before + 2


async def test_a_refused_token_is_replaced_and_the_upload_retried(order_api, shipping):
    one = shipping()
    order = await paid_order(order_api)
    old = await one.tokens.token()
    await order_api.sandbox.ok("POST", "/sandbox/shipping/tokens/revoke")  # 40001 from now
    await one.granted(order)
    assert await one.uploader.run_once() == {"retry": 1}
    assert (await shipping_row(order_api.pool, order["out_trade_no"]))["last_errcode"] == 40001

    async def uploaded() -> bool:
        await one.uploader.run_once()
        return (await shipping_row(order_api.pool, order["out_trade_no"]))["state"] == "uploaded"

    await eventually(uploaded, what="the upload with a new token")
    assert await one.tokens.token() != old


async def test_a_token_one_replica_saw_refused_is_forced_anew_by_another(order_api, shipping):
    """A plain stable_token call answers the token WeChat holds; after a refusal the
    refresh must force a new one, whichever replica makes it."""
    a, b = shipping(), shipping()
    token = await a.tokens.token()
    await a.tokens.invalidate(token)
    issued = (await order_api.sandbox.ok("GET", "/sandbox/shipping"))["tokens_issued"]
    assert await b.tokens.token() != token
    assert (await order_api.sandbox.ok("GET", "/sandbox/shipping"))["tokens_issued"] == issued + 1
