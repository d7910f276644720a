"""The audit trail's one redaction rule (paylane_order.audit): payer data and secrets never
reach ``payment_logs.request_data`` / ``response_data``, whatever a writer hands it."""

from __future__ import annotations

import json
from typing import Any

from paylane_common.contract.events import RefundEvent
from paylane_common.wechatpay.testing import PAYER_OPENID, order_request
from paylane_order import audit
from tests.support.events import signed_payment
from tests.support.wechat import KIT

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
CLIENT_IP = "203.0.113.7"
ACCOUNT = "6222021234567890123"
NAME = "张三"
PAY_SIGN = "c2lnbmF0dXJlLW9mLXRoZS1wYXktcGFyYW1z"


def _logged(entry: audit.Entry) -> str:
    """``request_data`` and ``response_data`` as the row carries them."""
    row = entry.row()
    request, response = row[7], row[8]
    return f"{request} {response}"


def _secrets() -> list[str]:
    return [
        OPENID,
        PAYER_OPENID,
        CLIENT_IP,
        ACCOUNT,
        NAME,
        PAY_SIGN,
        KIT.apiv3_key,
        KIT.merchant_private_key_pem,
        KIT.platform_public_key_pem,
        "-----BEGIN",
    ]


def test_payer_data_keys_signatures_and_ciphertext_are_redacted_at_any_depth() -> None:
    headers, body = KIT.notify({"out_trade_no": "T1", "payer": {"openid": OPENID}})
    notification = json.loads(body)
    assert notification["resource"]["ciphertext"]
    everything: dict[str, Any] = {
        "notification": notification,
        "headers": headers,
        "place": order_request("jsapi", "T1", 990, openid=OPENID),
        "scene_info": {"payer_client_ip": CLIENT_IP, "h5_info": {"type": "Wap"}},
        "pay": {"appId": KIT.appid, "package": "prepay_id=wx1", "paySign": PAY_SIGN},
        "refund_answer": {"refund_id": "50000", "user_received_account": ACCOUNT},
        "remedy": [{"bank_account": ACCOUNT, "real_name": NAME}],
        "settings": {
            "apiv3_key": KIT.apiv3_key,
            "private_key": KIT.merchant_private_key_pem,
            "public": KIT.platform_public_key_pem,
            "X-Internal-Secret": "s3cret",
            "Authorization": "Bearer abc.def",
        },
        "sub_openid": OPENID,
        "ip": CLIENT_IP,
    }
    text = json.dumps(audit.redact(everything), ensure_ascii=False)
    leaked = [s for s in [*_secrets(), "s3cret", "abc.def"] if s in text]
    assert leaked == []
    assert notification["resource"]["ciphertext"] not in text
    assert "Wechatpay-Signature" in text  # the key stays; its value is gone
    redacted = audit.redact(everything)
    # What is not payer data or a secret comes through as it was: money, ids, types.
    assert redacted["place"]["amount"] == {"total": 990, "currency": "CNY"}
    assert redacted["place"]["payer"] == audit.REDACTED
    assert redacted["pay"]["package"] == "prepay_id=wx1"
    assert redacted["refund_answer"]["refund_id"] == "50000"
    assert redacted["notification"]["event_type"] == "TRANSACTION.SUCCESS"


def test_a_payment_row_speaks_the_existing_words_without_the_payer() -> None:
    paid = signed_payment("T2", 2990, "4200000001", openid=OPENID)
    assert paid.notification is not None and paid.openid == OPENID
    entry = audit.payment_callback("paid", paid, event_id="EV-1", order_status="paid")
    assert (entry.type, entry.kind, entry.event_type, entry.amount_total) == (
        "payment_callback",
        "paid",
        "TRANSACTION.SUCCESS",
        2990,
    )
    assert (entry.source, entry.transaction_id, entry.event_id) == (
        "wechatpay",
        "4200000001",
        "EV-1",
    )
    logged = _logged(entry)
    assert [s for s in _secrets() if s in logged] == []
    assert paid.notification.body not in logged
    request = json.loads(entry.row()[7])
    notification = json.loads(paid.notification.body)
    assert request["notification"]["id"] == notification["id"]
    assert "resource" not in request["notification"]
    assert request["transaction"]["amount"]["total"] == 2990
    assert json.loads(entry.row()[8]) == {"order_status": "paid"}


def test_every_type_redacts_what_it_is_handed() -> None:
    tainted = {"payer": {"openid": OPENID}, "payer_client_ip": CLIENT_IP, "sign": PAY_SIGN}
    refund = RefundEvent(
        out_trade_no="T3",
        out_refund_no="R3",
        amount_refund=100,
        amount_total=990,
        status="SUCCESS",
    )
    entries = [
        audit.order_create("placed", "T3", 990, request=tainted, response=tainted, source="api"),
        audit.refund_create("refund_requested", "T3", "R3", 100, request=tainted, response=tainted),
        audit.refund_event("refund_success", refund, event_id="reconcile-refund-R3-SUCCESS"),
        audit.order_close("closed", "T3", 990, source="api", request=tainted, response=tainted),
        audit.refund_remedy(
            "remedy_accepted", "T3", "R3", 100, request=tainted, response=tainted, detail="x"
        ),
    ]
    assert [(e.type, e.event_type) for e in entries] == [
        ("order_create", None),
        ("refund_create", None),
        ("refund_callback", "REFUND.SUCCESS"),
        ("order_close", None),
        ("refund_remedy", None),
    ]
    assert entries[2].source == "reconcile"
    for entry in entries:
        logged = _logged(entry)
        assert [s for s in _secrets() if s in logged] == [], entry.type


def test_a_row_holds_the_compact_json_it_always_held_whatever_the_values() -> None:
    """request_data is written by orjson now: the same text json.dumps(ensure_ascii=False,
    compact) wrote, for the values writers hand it, and a 64-bit overflow still written."""
    from decimal import Decimal

    request = {
        "description": "会员 月卡",
        "amount": {"total": 990, "currency": "CNY", "rate": 0.5},
        "flags": [True, False, None],
        "price": Decimal("9.90"),
        7: "a key that is not a string",
        "huge": 2**70,
        "pem": ["-----BEGIN PRIVATE KEY-----x"],
    }
    row = audit.Entry(type=audit.ORDER_CREATE, kind="placed", out_trade_no="T1", request=request)
    written = row.row()[7]
    expected = json.dumps(audit.redact(request), ensure_ascii=False, separators=(",", ":"))
    assert written == expected
    assert json.loads(written)["huge"] == 2**70
    assert json.loads(written)["pem"] == [audit.REDACTED]
    assert "会员 月卡" in written and "\\u" not in written
