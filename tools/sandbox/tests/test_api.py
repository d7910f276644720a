"""The WeChat Pay endpoints: shapes, validation, merchant signatures, signed answers,
certificates, and the query / close / refund rules."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from paylane_common.wechatpay import (
    MerchantSigner,
    NotificationHeaders,
    decrypt_resource,
    load_certificate,
)
from paylane_common.wechatpay.testing import MCHID, PAYER_OPENID, new_private_key, order_request
from paylane_sandbox.auth import MerchantAuthenticator
from paylane_sandbox.errors import ApiError

PUBLIC_KEY_ID = "PUB_KEY_ID_0114232134912410000000000000001"
CERT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
MERCHANT_SERIAL = "3775B6A45ACD588826D15E583A95F5DD11112222"


def query_path(out_trade_no: str) -> str:
    return f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={MCHID}"


# --- placing orders ---------------------------------------------------------------------


async def test_place_jsapi_native_h5_app_answer_like_wechat(sandbox):
    _, jsapi = await sandbox.place("jsapi")
    assert jsapi.status == 200
    assert set(jsapi.json) == {"prepay_id"} and jsapi.json["prepay_id"].startswith("wx")

    _, native = await sandbox.place("native")
    assert native.status == 200
    assert native.json["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")

    _, h5 = await sandbox.place("h5")
    assert h5.status == 200
    assert h5.json["h5_url"].startswith(
        "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id=wx"
    )

    _, app = await sandbox.place("app")
    assert app.status == 200 and app.json["prepay_id"].startswith("wx")
    assert jsapi.headers["Request-ID"]


async def test_placing_again_is_idempotent_but_a_different_body_is_out_trade_no_used(sandbox):
    body, first = await sandbox.place("jsapi")
    again = await sandbox.api("POST", "/v3/pay/transactions/jsapi", body)
    assert again.status == 200 and again.json == first.json

    changed = {**body, "amount": {"total": 1, "currency": "CNY"}}
    used = await sandbox.api("POST", "/v3/pay/transactions/jsapi", changed)
    assert used.status == 403 and used.json["code"] == "OUT_TRADE_NO_USED"
    other_kind = await sandbox.api("POST", "/v3/pay/transactions/native", body)
    assert other_kind.status == 403 and other_kind.json["code"] == "OUT_TRADE_NO_USED"


@pytest.mark.parametrize(
    ("kind", "change", "field"),
    [
        ("jsapi", {"appid": None}, "/appid"),
        ("jsapi", {"description": ""}, "/description"),
        ("jsapi", {"out_trade_no": "short"}, "/out_trade_no"),
        ("jsapi", {"out_trade_no": "bad#chars#here"}, "/out_trade_no"),
        ("jsapi", {"out_trade_no": "x" * 33}, "/out_trade_no"),
        ("jsapi", {"notify_url": "http://merchant.example/notify?x=1"}, "/notify_url"),
        ("jsapi", {"notify_url": "ftp://merchant.example/notify"}, "/notify_url"),
        ("jsapi", {"amount": {"total": 0}}, "/amount/total"),
        ("jsapi", {"amount": {"total": "990"}}, "/amount/total"),
        ("jsapi", {"amount": None}, "/amount"),
        ("jsapi", {"payer": None}, "/payer"),
        ("jsapi", {"payer": {}}, "/payer/openid"),
        ("jsapi", {"time_expire": "tomorrow"}, "/time_expire"),
        ("h5", {"scene_info": None}, "/scene_info"),
        ("h5", {"scene_info": {"h5_info": {"type": "Wap"}}}, "/scene_info/payer_client_ip"),
        ("h5", {"scene_info": {"payer_client_ip": "203.0.113.9"}}, "/scene_info/h5_info"),
        ("jsapi", {"mchid": "1230000109"}, "/mchid"),
    ],
)
async def test_invalid_orders_are_param_error_naming_the_field(
    sandbox, body_for, kind, change, field
):
    body = body_for(kind, **change)
    answer = await sandbox.api("POST", f"/v3/pay/transactions/{kind}", body)
    assert answer.status == 400, answer.body
    assert answer.json["code"] == "PARAM_ERROR"
    assert field in answer.json["message"]
    assert answer.json["detail"]["field"] == field


def _in(seconds: float, offset_hours: int = 8) -> str:
    """``time_expire`` ``seconds`` from now, as paylane's order service writes it."""
    zone = timezone(timedelta(hours=offset_hours))
    return (datetime.now(zone) + timedelta(seconds=seconds)).isoformat(timespec="seconds")


@pytest.mark.parametrize(
    "time_expire",
    [
        "2018-06-08T10:34:56+08:00",  # WeChat Pay's own example, long past
        "tomorrow",
        "2099-06-08T10:34:56Z",  # RFC 3339, but not WeChat Pay's shape
        "2099-06-08T10:34:56.123+08:00",
        "2099-06-08 10:34:56+08:00",
        "2099-06-08T10:34:56",
        "2099-06-08T10:34:56+0800",
        "20990608T103456+08:00",
        "2099-13-08T10:34:56+08:00",
    ],
)
async def test_time_expire_not_wechat_pays_shape_or_past_is_param_error(
    sandbox, body_for, time_expire
):
    answer = await sandbox.api(
        "POST", "/v3/pay/transactions/native", body_for("native", time_expire=time_expire)
    )
    assert answer.status == 400, answer.body
    assert answer.json["code"] == "PARAM_ERROR"
    assert answer.json["detail"] == {
        "location": "body",
        "field": "/time_expire",
        "issue": answer.json["detail"]["issue"],
        "value": time_expire,
    }
    assert "/time_expire" in answer.json["message"]


async def test_time_expire_in_the_future_with_any_offset_is_accepted(sandbox, body_for):
    for time_expire in (_in(1800), _in(7200, offset_hours=0), _in(600, offset_hours=-5)):
        body = body_for("app", time_expire=time_expire)
        answer = await sandbox.api("POST", "/v3/pay/transactions/app", body)
        assert answer.status == 200, (time_expire, answer.body)
    past = await sandbox.api(
        "POST", "/v3/pay/transactions/app", body_for("app", time_expire=_in(-1))
    )
    assert past.status == 400 and "now" in past.json["detail"]["issue"]


async def test_http_notify_url_is_accepted_and_unknown_appid_does_not_match(sandbox):
    _, ok = await sandbox.place("native", notify_url="http://localhost:8080/notify/wechatpay")
    assert ok.status == 200
    _, other = await sandbox.place("native", appid="wx0000000000000000")
    assert other.status == 400 and other.json["code"] == "APPID_MCHID_NOT_MATCH"


async def test_a_body_that_is_not_json_is_param_error(sandbox):
    auth = sandbox.signer.authorization("POST", "/v3/pay/transactions/jsapi", b"{nope")
    async with sandbox.client.post(
        "/v3/pay/transactions/jsapi", data=b"{nope", headers={"Authorization": auth}
    ) as response:
        assert response.status == 400
        assert (await response.json())["code"] == "PARAM_ERROR"


# --- the merchant's signature ---------------------------------------------------------------


async def _expect_sign_error(sandbox, **kwargs: Any) -> None:
    answer = await sandbox.api("GET", query_path("T000000001"), **kwargs)
    assert answer.status == 401, answer.body
    assert answer.json["code"] == "SIGN_ERROR" and answer.json["message"]


async def test_missing_or_malformed_authorization_is_sign_error(sandbox):
    await _expect_sign_error(sandbox, authorization="")
    await _expect_sign_error(sandbox, authorization='WECHATPAY2-SHA256-RSA2048 mchid="1"')
    await _expect_sign_error(sandbox, authorization="Bearer abc")


async def test_wrong_key_serial_mchid_or_stale_timestamp_is_sign_error(sandbox, merchant_key):
    path = query_path("T000000001")
    other_key = new_private_key()
    await _expect_sign_error(sandbox, signer=MerchantSigner(MCHID, MERCHANT_SERIAL, other_key))
    await _expect_sign_error(sandbox, signer=MerchantSigner(MCHID, "ABCDEF", merchant_key))
    await _expect_sign_error(
        sandbox, signer=MerchantSigner("1230000109", MERCHANT_SERIAL, merchant_key)
    )
    stale = sandbox.signer.authorization("GET", path, timestamp=int(time.time()) - 301)
    await _expect_sign_error(sandbox, authorization=stale)
    # Signed for another path (or query string): the signature does not cover this request.
    other_path = sandbox.signer.authorization("GET", query_path("T000000002"))
    await _expect_sign_error(sandbox, authorization=other_path)


@pytest.mark.parametrize("now", [1_700_000_000.0, 1_700_000_000.9])
@pytest.mark.parametrize(
    ("age_s", "accepted"), [(299, True), (300, False), (-299, True), (-300, False)]
)
def test_a_request_300_s_off_is_stale_as_wechat_counts(
    merchant_key, now: float, age_s: int, accepted: bool
) -> None:
    """The rule paylane applies to WeChat's answers: whole seconds, and exactly 300 s off
    (either way) is already stale."""
    authenticator = MerchantAuthenticator(
        MCHID, MERCHANT_SERIAL, merchant_key.public_key(), clock=lambda: now
    )
    path = query_path("T000000001")
    signer = MerchantSigner(MCHID, MERCHANT_SERIAL, merchant_key)
    header = signer.authorization("GET", path, timestamp=int(now) - age_s)
    if accepted:
        authenticator.check("GET", path, header, b"")
    else:
        with pytest.raises(ApiError, match="timestamp expired") as caught:
            authenticator.check("GET", path, header, b"")
        assert (caught.value.status, caught.value.code) == (401, "SIGN_ERROR")


async def test_a_tampered_body_is_sign_error(sandbox, body_for):
    body = body_for("native")
    auth = sandbox.signer.authorization("POST", "/v3/pay/transactions/native", str(body))
    answer = await sandbox.api("POST", "/v3/pay/transactions/native", body, authorization=auth)
    assert answer.status == 401 and answer.json["code"] == "SIGN_ERROR"


# --- WeChat Pay's signature on every answer -----------------------------------------------------


async def test_answers_are_signed_with_the_public_key_by_default(sandbox):
    _, answer = await sandbox.place("native")  # the harness verifies every answer
    assert answer.headers["Wechatpay-Serial"] == PUBLIC_KEY_ID
    assert answer.headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    error = await sandbox.api("GET", query_path("T404404404"))
    assert error.status == 404 and error.headers["Wechatpay-Serial"] == PUBLIC_KEY_ID


async def test_certificate_sign_mode(sandbox):
    await sandbox.switches(sign_mode="certificate")
    _, answer = await sandbox.place("native")
    assert answer.headers["Wechatpay-Serial"] == CERT_SERIAL


@pytest.mark.parametrize(
    ("mode", "requested", "signed_under"),
    [
        ("mixed", PUBLIC_KEY_ID, PUBLIC_KEY_ID),
        ("mixed", CERT_SERIAL, CERT_SERIAL),
        ("mixed", None, CERT_SERIAL),  # WeChat's default during the migration
        ("mixed", "PUB_KEY_ID_0000000000000000000000000000", CERT_SERIAL),  # not WeChat's
        ("public_key", CERT_SERIAL, PUBLIC_KEY_ID),
        ("public_key", None, PUBLIC_KEY_ID),
        ("certificate", PUBLIC_KEY_ID, CERT_SERIAL),
        ("certificate", None, CERT_SERIAL),
    ],
)
async def test_answers_are_signed_under_the_serial_the_request_names_only_while_migrating(
    sandbox, mode, requested, signed_under
):
    await sandbox.switches(sign_mode=mode)
    for _ in range(2):  # the same every time: no alternation for API answers
        body = order_request("native")
        answer = await sandbox.api("POST", "/v3/pay/transactions/native", body, serial=requested)
        assert answer.status == 200
        assert answer.headers["Wechatpay-Serial"] == signed_under
    error = await sandbox.api("GET", query_path("T404404404"), serial=requested)
    assert error.status == 404 and error.headers["Wechatpay-Serial"] == signed_under


async def test_certificate_mode_from_settings(start_sandbox):
    harness = await start_sandbox(sandbox_sign_mode="certificate")
    _, answer = await harness.place("app")
    assert answer.headers["Wechatpay-Serial"] == CERT_SERIAL


async def test_certificates_decrypt_to_the_signing_certificate(sandbox, apiv3_key, platform_key):
    await sandbox.switches(sign_mode="certificate")
    answer = await sandbox.api("GET", "/v3/certificates")
    assert answer.status == 200
    [entry] = answer.json["data"]
    assert entry["serial_no"] == CERT_SERIAL == answer.headers["Wechatpay-Serial"]
    assert entry["effective_time"].endswith("+08:00") and entry["expire_time"]
    encrypted = entry["encrypt_certificate"]
    assert encrypted["algorithm"] == "AEAD_AES_256_GCM"
    assert encrypted["associated_data"] == "certificate"
    pem = decrypt_resource(
        apiv3_key, encrypted["nonce"], encrypted["associated_data"], encrypted["ciphertext"]
    )
    serial, public_key, _ = load_certificate(pem)
    assert serial == CERT_SERIAL
    assert public_key.public_numbers() == platform_key.public_key().public_numbers()

    plain = await sandbox.control("GET", "/sandbox/platform-certificate")
    assert plain.status == 200 and plain.body == pem


async def test_a_random_certificate_serial_when_none_is_configured(start_sandbox, apiv3_key):
    harness = await start_sandbox(sandbox_platform_cert_serial=None, sandbox_sign_mode="mixed")
    answer = await harness.api("GET", "/v3/certificates", verify=False)
    [entry] = answer.json["data"]
    encrypted = entry["encrypt_certificate"]
    pem = decrypt_resource(apiv3_key, encrypted["nonce"], "certificate", encrypted["ciphertext"])
    assert load_certificate(pem)[0] == entry["serial_no"] != CERT_SERIAL
    info = (await harness.control("GET", "/sandbox/info")).json
    assert info["certificate_serial"] == entry["serial_no"]
    assert NotificationHeaders.from_mapping(answer.headers).serial in (
        PUBLIC_KEY_ID,
        entry["serial_no"],
    )


# --- query, close ---------------------------------------------------------------------------


async def test_query_before_and_after_payment(sandbox):
    body, _ = await sandbox.place("jsapi", attach="cart=7")
    no = body["out_trade_no"]
    unpaid = await sandbox.api("GET", query_path(no))
    assert unpaid.status == 200
    assert unpaid.json["trade_state"] == "NOTPAY"
    assert unpaid.json["attach"] == "cart=7"
    assert "transaction_id" not in unpaid.json and "payer_total" not in unpaid.json["amount"]

    paid = await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    assert paid.status == 200 and paid.json["trade_state"] == "SUCCESS"
    transaction_id = paid.json["transaction_id"]

    tx = (await sandbox.api("GET", query_path(no))).json
    assert tx["trade_state"] == "SUCCESS" and tx["trade_state_desc"] == "支付成功"
    assert tx["transaction_id"] == transaction_id
    assert tx["amount"] == {
        "total": 990,
        "payer_total": 990,
        "currency": "CNY",
        "payer_currency": "CNY",
    }
    assert tx["payer"] == {"openid": PAYER_OPENID} and tx["trade_type"] == "JSAPI"
    assert tx["mchid"] == MCHID and tx["success_time"].endswith("+08:00")

    by_id = await sandbox.api("GET", f"/v3/pay/transactions/id/{transaction_id}?mchid={MCHID}")
    assert by_id.status == 200 and by_id.json == tx


async def test_query_errors(sandbox):
    missing = await sandbox.api("GET", query_path("T404404404"))
    assert missing.status == 404 and missing.json["code"] == "ORDER_NOT_EXIST"
    by_id = await sandbox.api("GET", f"/v3/pay/transactions/id/4200000000?mchid={MCHID}")
    assert by_id.status == 404 and by_id.json["code"] == "ORDER_NOT_EXIST"
    no_mchid = await sandbox.api("GET", "/v3/pay/transactions/out-trade-no/T404404404")
    assert no_mchid.status == 400 and no_mchid.json["code"] == "PARAM_ERROR"
    unknown = await sandbox.api("GET", "/v3/nothing/here")
    assert unknown.status == 404 and unknown.json["code"] == "NOT_FOUND"


async def test_close_then_pay_needs_force(sandbox):
    body, _ = await sandbox.place("native")
    no = body["out_trade_no"]
    close_path = f"/v3/pay/transactions/out-trade-no/{no}/close"
    closed = await sandbox.api("POST", close_path, {"mchid": MCHID})
    assert closed.status == 204 and closed.body == b""
    assert (await sandbox.api("GET", query_path(no))).json["trade_state"] == "CLOSED"
    assert (await sandbox.api("POST", close_path, {"mchid": MCHID})).status == 204

    again = await sandbox.api("POST", "/v3/pay/transactions/native", body)
    assert again.status == 400 and again.json["code"] == "ORDER_CLOSED"

    refused = await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {})
    assert refused.status == 409 and refused.json["error"] == "ORDER_CLOSED"
    late = await sandbox.control(
        "POST", f"/sandbox/orders/{no}/pay", {"force": True, "notify": False}
    )
    assert late.status == 200 and late.json["trade_state"] == "SUCCESS"

    paid_close = await sandbox.api("POST", close_path, {"mchid": MCHID})
    assert paid_close.status == 403 and paid_close.json["code"] == "TRADE_ERROR"


async def test_close_errors(sandbox):
    path = "/v3/pay/transactions/out-trade-no/T404404404/close"
    assert (await sandbox.api("POST", path, {"mchid": MCHID})).json["code"] == "ORDER_NOT_EXIST"
    no_mchid = await sandbox.api("POST", path, {})
    assert no_mchid.status == 400 and no_mchid.json["code"] == "PARAM_ERROR"


# --- refunds ---------------------------------------------------------------------------------


def refund_body(
    out_trade_no: str, refund: int = 990, total: int = 990, **extra: Any
) -> dict[str, Any]:
    return {
        "out_trade_no": out_trade_no,
        "out_refund_no": f"R{out_trade_no}{refund}",
        "reason": "customer asked",
        "amount": {"refund": refund, "total": total, "currency": "CNY"},
        **extra,
    }


async def _paid_order(sandbox) -> str:
    body, _ = await sandbox.place("jsapi")
    no = body["out_trade_no"]
    answer = await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    assert answer.status == 200
    return str(no)


async def test_refund_shape_idempotency_and_query(start_sandbox):
    sandbox = await start_sandbox(sandbox_refund_mode="manual")
    no = await _paid_order(sandbox)
    body = refund_body(no, refund=300)
    created = await sandbox.api("POST", "/v3/refund/domestic/refunds", body)
    assert created.status == 200, created.body
    refund = created.json
    assert refund["status"] == "PROCESSING" and refund["channel"] == "ORIGINAL"
    assert refund["out_trade_no"] == no and refund["transaction_id"].startswith("4200")
    assert refund["amount"]["refund"] == 300 and refund["amount"]["payer_refund"] == 300
    assert refund["amount"]["total"] == 990 and refund["amount"]["payer_total"] == 990
    assert refund["user_received_account"] and refund["create_time"].endswith("+08:00")
    assert "success_time" not in refund

    again = await sandbox.api("POST", "/v3/refund/domestic/refunds", body)
    assert again.status == 200 and again.json["refund_id"] == refund["refund_id"]
    changed = {**body, "amount": {"refund": 200, "total": 990, "currency": "CNY"}}
    conflict = await sandbox.api("POST", "/v3/refund/domestic/refunds", changed)
    assert conflict.status == 400 and conflict.json["code"] == "INVALID_REQUEST"

    queried = await sandbox.api("GET", f"/v3/refund/domestic/refunds/{body['out_refund_no']}")
    assert queried.status == 200 and queried.json["refund_id"] == refund["refund_id"]
    tx = (await sandbox.api("GET", query_path(no))).json
    assert tx["trade_state"] == "REFUND"

    done = await sandbox.control(
        "POST", f"/sandbox/refunds/{body['out_refund_no']}/complete", {"status": "SUCCESS"}
    )
    assert done.status == 200 and done.json["status"] == "SUCCESS"
    queried = await sandbox.api("GET", f"/v3/refund/domestic/refunds/{body['out_refund_no']}")
    assert queried.json["status"] == "SUCCESS" and queried.json["success_time"]


async def test_refund_errors(start_sandbox):
    sandbox = await start_sandbox(sandbox_refund_mode="manual")
    path = "/v3/refund/domestic/refunds"
    body, _ = await sandbox.place("native")
    unpaid = await sandbox.api("POST", path, refund_body(body["out_trade_no"]))
    assert unpaid.status == 404 and unpaid.json["code"] == "RESOURCE_NOT_EXISTS"
    unknown = await sandbox.api("POST", path, refund_body("T404404404"))
    assert unknown.status == 404 and unknown.json["code"] == "RESOURCE_NOT_EXISTS"

    no = await _paid_order(sandbox)
    wrong_total = await sandbox.api("POST", path, refund_body(no, refund=100, total=1000))
    assert wrong_total.status == 400 and wrong_total.json["code"] == "PARAM_ERROR"
    assert "/amount/total" in wrong_total.json["message"]
    assert (await sandbox.api("POST", path, refund_body(no, refund=600))).status == 200
    too_much = await sandbox.api("POST", path, refund_body(no, refund=400))
    assert too_much.status == 400 and too_much.json["code"] == "INVALID_REQUEST"
    assert "390" in too_much.json["message"]
    no_currency = refund_body(no, refund=10)
    del no_currency["amount"]["currency"]
    assert (await sandbox.api("POST", path, no_currency)).json["code"] == "PARAM_ERROR"

    missing = await sandbox.api("GET", f"{path}/R404")
    assert missing.status == 404 and missing.json["code"] == "RESOURCE_NOT_EXISTS"


async def test_closed_refund_gives_its_amount_back(start_sandbox):
    sandbox = await start_sandbox(sandbox_refund_mode="manual")
    no = await _paid_order(sandbox)
    path = "/v3/refund/domestic/refunds"
    first = refund_body(no, refund=990)
    assert (await sandbox.api("POST", path, first)).status == 200
    closed = await sandbox.control(
        "POST", f"/sandbox/refunds/{first['out_refund_no']}/complete", {"status": "CLOSED"}
    )
    assert closed.json["status"] == "CLOSED"
    second = refund_body(no, refund=990, out_refund_no=f"R2{no}")
    assert (await sandbox.api("POST", path, second)).status == 200
