"""Notifications: what arrives at the merchant, WeChat's retry schedule (time-factored),
and the switches that simulate missed, duplicated, concurrent, delayed and reordered
callbacks, plus SIGNTEST probes."""

from __future__ import annotations

import asyncio
from typing import Any

from paylane_common.wechatpay.testing import APPID, MCHID, PAYER_OPENID
from paylane_sandbox.notifications import RETRY_SCHEDULE_S

PUBLIC_KEY_ID = "PUB_KEY_ID_0114232134912410000000000000001"
CERT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
TIME_FACTOR = 0.01


async def place_and_pay(sandbox, receiver, pay: dict[str, Any] | None = None, **order: Any):
    body, answer = await sandbox.place("jsapi", notify_url=receiver.url, **order)
    assert answer.status == 200, answer.body
    no = body["out_trade_no"]
    paid = await sandbox.control("POST", f"/sandbox/orders/{no}/pay", pay or {})
    assert paid.status == 200, paid.body
    return no, paid.json


def test_the_retry_schedule_is_wechats():
    assert len(RETRY_SCHEDULE_S) == 15
    assert RETRY_SCHEDULE_S[:4] == (15, 15, 30, 180)
    assert sum(RETRY_SCHEDULE_S) == 24 * 3600 + 4 * 60  # "~24 h 4 m"


async def test_payment_notification_verifies_and_decrypts(sandbox, receiver):
    no, paid = await place_and_pay(sandbox, receiver, attach="cart=7")
    got = await receiver.next()
    assert got.verified is True and got.answered == 204
    assert got.headers["Wechatpay-Serial"] == PUBLIC_KEY_ID
    body = got.json
    assert body["id"].startswith("EV-") and body["event_type"] == "TRANSACTION.SUCCESS"
    assert body["resource_type"] == "encrypt-resource"
    assert body["resource"]["original_type"] == "transaction"
    assert body["resource"]["associated_data"] == "transaction"
    resource = got.resource
    assert resource is not None
    assert resource["appid"] == APPID and resource["mchid"] == MCHID
    assert resource["out_trade_no"] == no
    assert resource["transaction_id"] == paid["transaction_id"]
    assert resource["trade_state"] == "SUCCESS" and resource["trade_type"] == "JSAPI"
    assert resource["attach"] == "cart=7"
    assert resource["payer"] == {"openid": PAYER_OPENID}
    assert resource["amount"] == {
        "total": 990,
        "payer_total": 990,
        "currency": "CNY",
        "payer_currency": "CNY",
    }
    [record] = await sandbox.wait_notifications(
        lambda rs: rs and rs[0]["finished"], out_trade_no=no
    )
    assert record["id"] == body["id"] and record["delivered"] is True
    assert [a["status"] for a in record["attempts"]] == [204]


async def test_amount_mismatch_and_openid_are_what_the_payer_did(sandbox, receiver):
    await place_and_pay(sandbox, receiver, {"amount": 1, "openid": "o-other"})
    resource = (await receiver.next()).resource
    assert resource is not None
    assert resource["amount"]["total"] == 1 and resource["amount"]["payer_total"] == 1
    assert resource["payer"]["openid"] == "o-other"


async def test_certificate_mode_notifications(sandbox, receiver):
    await sandbox.switches(sign_mode="certificate")
    await place_and_pay(sandbox, receiver)
    got = await receiver.next()
    assert got.verified and got.headers["Wechatpay-Serial"] == CERT_SERIAL


async def test_failed_deliveries_are_retried_on_the_time_factored_schedule(sandbox, receiver):
    receiver.script = [500, 500]
    no, _ = await place_and_pay(sandbox, receiver)
    first, second, third = await receiver.take(3)
    assert [r.answered for r in (first, second, third)] == [500, 500, 204]
    assert first.json["id"] == second.json["id"] == third.json["id"]
    assert first.body == third.body  # same notification, freshly signed each time
    assert first.headers["Wechatpay-Nonce"] != third.headers["Wechatpay-Nonce"]
    step = 15 * TIME_FACTOR
    assert second.at - first.at >= step * 0.9
    assert third.at - second.at >= step * 0.9

    [record] = await sandbox.wait_notifications(
        lambda rs: rs and rs[0]["delivered"], out_trade_no=no
    )
    assert [a["status"] for a in record["attempts"]] == [500, 500, 204]
    assert {a["copy"] for a in record["attempts"]} == {0}


async def test_unreachable_merchant_is_recorded_and_retried(sandbox):
    body, _ = await sandbox.place("native", notify_url="http://127.0.0.1:9/notify")
    no = body["out_trade_no"]
    assert (await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {})).status == 200
    [record] = await sandbox.wait_notifications(
        lambda rs: rs and len(rs[0]["attempts"]) >= 2, out_trade_no=no
    )
    assert record["delivered"] is False and not record["finished"]
    assert all("error" in a for a in record["attempts"])


async def test_drop_next_swallows_notifications(sandbox, receiver):
    switches = await sandbox.switches(drop_next=1)
    assert switches["drop_next"] == 1
    dropped_no, _ = await place_and_pay(sandbox, receiver)
    kept_no, _ = await place_and_pay(sandbox, receiver)
    got = await receiver.next()
    assert got.resource is not None and got.resource["out_trade_no"] == kept_no
    [record] = await sandbox.notifications(out_trade_no=dropped_no)
    assert record["dropped"] is True and record["attempts"] == []
    assert (await sandbox.control("GET", "/sandbox/switches")).json["drop_next"] == 0
    assert receiver.queue.empty()


async def test_duplicate_sends_extra_copies_with_the_same_id(sandbox, receiver):
    await sandbox.switches(duplicate=2, duplicate_gap_s=0.02)
    no, _ = await place_and_pay(sandbox, receiver)
    copies = await receiver.take(3)
    assert len({c.json["id"] for c in copies}) == 1
    [record] = await sandbox.wait_notifications(
        lambda rs: rs and len(rs[0]["attempts"]) == 3 and "status" in rs[0]["attempts"][-1],
        out_trade_no=no,
    )
    assert sorted(a["copy"] for a in record["attempts"]) == [0, 1, 2]


async def test_concurrent_duplicate_arrives_twice_at_once(sandbox, receiver):
    await sandbox.switches(concurrent_duplicate=True)
    await place_and_pay(sandbox, receiver)
    one, two = await receiver.take(2)
    assert one.json["id"] == two.json["id"]
    assert abs(one.at - two.at) < 0.5


async def test_delay_before_first_delivery(sandbox, receiver):
    await sandbox.switches(delay_s=0.1)
    start = asyncio.get_running_loop().time()
    await place_and_pay(sandbox, receiver)
    got = await receiver.next()
    assert got.at - start >= 0.1


async def test_reorder_releases_the_newer_first(sandbox, receiver):
    await sandbox.switches(reorder=True)
    older, _ = await place_and_pay(sandbox, receiver)
    [held] = await sandbox.notifications(out_trade_no=older)
    assert held["held"] is True and held["attempts"] == []
    newer, _ = await place_and_pay(sandbox, receiver)
    first, second = await receiver.take(2)
    assert first.resource is not None and second.resource is not None
    assert [first.resource["out_trade_no"], second.resource["out_trade_no"]] == [newer, older]


async def test_flush_releases_a_single_held_notification(sandbox, receiver):
    await sandbox.switches(reorder=True)
    no, _ = await place_and_pay(sandbox, receiver)
    assert receiver.queue.empty()
    flushed = await sandbox.control("POST", "/sandbox/notifications/flush")
    assert flushed.json == {"released": 1}
    got = await receiver.next()
    assert got.resource is not None and got.resource["out_trade_no"] == no


async def test_signtest_probe_is_sent_once_and_reports_the_answer(sandbox, receiver):
    body, _ = await sandbox.place("jsapi", notify_url=receiver.url)
    answer = await sandbox.control(
        "POST", "/sandbox/notifications/signtest", {"out_trade_no": body["out_trade_no"]}
    )
    assert answer.status == 200, answer.body
    assert answer.json["status"] == 401 and answer.json["url"] == receiver.url
    got = await receiver.next()
    assert got.verified is False
    assert got.headers["Wechatpay-Signature"].startswith("WECHATPAY/SIGNTEST/")
    [record] = await sandbox.notifications(out_trade_no=body["out_trade_no"])
    assert record["probe"] is True and len(record["attempts"]) == 1

    by_url = await sandbox.control("POST", "/sandbox/notifications/signtest", {"url": receiver.url})
    assert by_url.json["status"] == 401
    nowhere = await sandbox.control("POST", "/sandbox/notifications/signtest", {})
    assert nowhere.status == 400 and nowhere.json["error"] == "BAD_REQUEST"


async def test_refund_success_is_notified_automatically(sandbox, receiver):
    no, paid = await place_and_pay(sandbox, receiver)
    await receiver.next()  # the payment
    refund = {
        "out_trade_no": no,
        "out_refund_no": f"R{no}",
        "notify_url": receiver.refund_url(),
        "amount": {"refund": 500, "total": 990, "currency": "CNY"},
    }
    created = await sandbox.api("POST", "/v3/refund/domestic/refunds", refund)
    assert created.status == 200 and created.json["status"] == "PROCESSING"
    got = await receiver.next()
    assert got.path == "/notify/refunds" and got.verified
    assert got.json["event_type"] == "REFUND.SUCCESS"
    assert got.json["resource"]["original_type"] == "refund"
    resource = got.resource
    assert resource is not None
    assert resource["refund_status"] == "SUCCESS" and resource["success_time"]
    assert resource["mchid"] == MCHID and resource["out_trade_no"] == no
    assert resource["transaction_id"] == paid["transaction_id"]
    assert resource["out_refund_no"] == f"R{no}"
    assert resource["refund_id"] == created.json["refund_id"]
    assert resource["user_received_account"]
    assert resource["amount"] == {
        "total": 990,
        "refund": 500,
        "payer_total": 990,
        "payer_refund": 500,
    }
    queried = await sandbox.api("GET", f"/v3/refund/domestic/refunds/R{no}")
    assert queried.json["status"] == "SUCCESS"


async def test_refund_without_notify_url_goes_to_the_merchant_refund_callback(
    start_sandbox, receiver
):
    sandbox = await start_sandbox(
        sandbox_refund_mode="manual", sandbox_refund_notify_url=receiver.refund_url()
    )
    no, _ = await place_and_pay(sandbox, receiver)
    await receiver.next()
    refund = {"out_trade_no": no, "out_refund_no": f"R{no}"}
    refund["amount"] = {"refund": 990, "total": 990, "currency": "CNY"}
    assert (await sandbox.api("POST", "/v3/refund/domestic/refunds", refund)).status == 200
    assert receiver.queue.empty()
    done = await sandbox.control("POST", f"/sandbox/refunds/R{no}/complete", {"status": "ABNORMAL"})
    assert done.status == 200 and done.json["status"] == "ABNORMAL"
    got = await receiver.next()
    assert got.path == "/notify/refunds"  # not the order's /notify/wechatpay
    assert got.json["event_type"] == "REFUND.ABNORMAL"
    assert got.resource is not None and got.resource["refund_status"] == "ABNORMAL"
    assert "success_time" not in got.resource
    again = await sandbox.control("POST", f"/sandbox/refunds/R{no}/complete", {"status": "CLOSED"})
    assert again.status == 200
    assert (await receiver.next()).json["event_type"] == "REFUND.CLOSED"
    finished = await sandbox.control(
        "POST", f"/sandbox/refunds/R{no}/complete", {"status": "SUCCESS"}
    )
    assert finished.status == 409 and finished.json["error"] == "REFUND_FINISHED"


async def test_refund_own_notify_url_wins_over_the_merchant_refund_callback(
    start_sandbox, receiver
):
    sandbox = await start_sandbox(sandbox_refund_notify_url="http://127.0.0.1:9/nowhere")
    no, _ = await place_and_pay(sandbox, receiver)
    await receiver.next()
    refund = {"out_trade_no": no, "out_refund_no": f"R{no}", "notify_url": receiver.refund_url()}
    refund["amount"] = {"refund": 990, "total": 990, "currency": "CNY"}
    assert (await sandbox.api("POST", "/v3/refund/domestic/refunds", refund)).status == 200
    got = await receiver.next()
    assert (got.path, got.json["event_type"]) == ("/notify/refunds", "REFUND.SUCCESS")


async def test_refund_with_no_callback_anywhere_is_not_sent_to_the_orders_url(
    start_sandbox, receiver
):
    sandbox = await start_sandbox(sandbox_refund_mode="manual")
    no, _ = await place_and_pay(sandbox, receiver)
    await receiver.next()
    refund = {"out_trade_no": no, "out_refund_no": f"R{no}"}
    refund["amount"] = {"refund": 990, "total": 990, "currency": "CNY"}
    assert (await sandbox.api("POST", "/v3/refund/domestic/refunds", refund)).status == 200
    done = await sandbox.control("POST", f"/sandbox/refunds/R{no}/complete", {"status": "SUCCESS"})
    assert done.status == 200 and done.json["status"] == "SUCCESS"
    assert await sandbox.notifications(out_refund_no=f"R{no}") == []
    assert receiver.queue.empty()
