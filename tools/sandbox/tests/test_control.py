"""The control API (faults, expire, switches, reset, errors) and the settings."""

from __future__ import annotations

import asyncio

import pytest

from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.settings import load_settings
from paylane_common.wechatpay import MerchantSigner
from paylane_common.wechatpay.testing import (
    MCHID,
    certificate_pem,
    private_key_pem,
    public_key_pem,
    self_signed_certificate,
)
from paylane_sandbox.settings import SandboxSettings

MERCHANT_SERIAL = "3775B6A45ACD588826D15E583A95F5DD11112222"


# --- faults ---------------------------------------------------------------------------------


async def test_faults_fail_the_next_matching_calls_then_stop(sandbox):
    spec = {"path_prefix": "/v3/pay/transactions", "method": "post", "count": 2, "status": 500}
    added = await sandbox.control("POST", "/sandbox/faults", spec)
    assert added.status == 201 and added.json["code"] == "SYSTEM_ERROR"
    assert added.json["method"] == "POST" and added.json["remaining"] == 2

    # A GET on the same prefix does not match the POST-only fault.
    query = await sandbox.api("GET", f"/v3/pay/transactions/out-trade-no/T404404404?mchid={MCHID}")
    assert query.status == 404

    body, first = await sandbox.place("native")
    assert first.status == 500 and first.json["code"] == "SYSTEM_ERROR"  # signed, verified
    second = await sandbox.api("POST", "/v3/pay/transactions/native", body)
    assert second.status == 500
    assert (await sandbox.control("GET", "/sandbox/faults")).json == {"faults": []}
    third = await sandbox.api("POST", "/v3/pay/transactions/native", body)
    assert third.status == 200 and "code_url" in third.json


async def test_rate_limit_and_business_faults_and_clearing(sandbox):
    await sandbox.control("POST", "/sandbox/faults", {"status": 429, "code": "FREQUENCY_LIMITED"})
    _, limited = await sandbox.place("native")
    assert limited.status == 429 and limited.json["code"] == "FREQUENCY_LIMITED"

    spec = {"path_prefix": "/v3/refund", "status": 403, "code": "NOT_ENOUGH", "count": 5}
    await sandbox.control("POST", "/sandbox/faults", spec)
    refund: dict[str, object] = {"out_trade_no": "T404404404", "out_refund_no": "R1"}
    refund["amount"] = {"refund": 1, "total": 1, "currency": "CNY"}
    answer = await sandbox.api("POST", "/v3/refund/domestic/refunds", refund)
    assert answer.status == 403 and answer.json == {"code": "NOT_ENOUGH", "message": "余额不足"}
    assert (await sandbox.control("DELETE", "/sandbox/faults")).status == 204
    assert (await sandbox.control("GET", "/sandbox/faults")).json == {"faults": []}


async def test_a_delay_only_fault_is_a_slow_api(sandbox):
    await sandbox.control("POST", "/sandbox/faults", {"delay_s": 0.1})
    loop = asyncio.get_running_loop()
    start = loop.time()
    _, answer = await sandbox.place("native")
    assert answer.status == 200 and loop.time() - start >= 0.1


async def test_invalid_fault_specs_are_bad_request(sandbox):
    for spec in ({}, {"status": 200}, {"status": 500, "count": 0}, {"status": 500, "x": 1}):
        answer = await sandbox.control("POST", "/sandbox/faults", spec)
        assert answer.status == 400 and answer.json["error"] == "BAD_REQUEST", spec


# --- orders, switches, reset -----------------------------------------------------------------


async def test_fail_is_payerror_without_a_notification_then_paying_needs_force(sandbox):
    body, _ = await sandbox.place("native")
    no = body["out_trade_no"]
    failed = await sandbox.control("POST", f"/sandbox/orders/{no}/fail")
    assert failed.status == 200 and failed.json["trade_state"] == "PAYERROR"
    queried = (
        await sandbox.api("GET", f"/v3/pay/transactions/out-trade-no/{no}?mchid={MCHID}")
    ).json
    assert queried["trade_state"] == "PAYERROR" and queried["trade_state_desc"]
    assert "transaction_id" not in queried
    assert await sandbox.notifications(out_trade_no=no) == []  # WeChat notifies successes only

    refused = await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {})
    assert refused.status == 409 and refused.json["error"] == "PAYMENT_FAILED"
    paid = await sandbox.control(
        "POST", f"/sandbox/orders/{no}/pay", {"force": True, "notify": False}
    )
    assert paid.status == 200 and paid.json["trade_state"] == "SUCCESS"
    too_late = await sandbox.control("POST", f"/sandbox/orders/{no}/fail")
    assert too_late.status == 409 and too_late.json["error"] == "ALREADY_PAID"
    unknown = await sandbox.control("POST", "/sandbox/orders/T404404404/fail")
    assert unknown.status == 404


async def test_a_failed_order_can_be_closed_and_a_closed_one_not_failed(sandbox):
    body, _ = await sandbox.place("native")
    no = body["out_trade_no"]
    await sandbox.control("POST", f"/sandbox/orders/{no}/fail")
    close_path = f"/v3/pay/transactions/out-trade-no/{no}/close"
    assert (await sandbox.api("POST", close_path, {"mchid": MCHID})).status == 204
    refused = await sandbox.control("POST", f"/sandbox/orders/{no}/fail")
    assert refused.status == 409 and refused.json["error"] == "ORDER_CLOSED"


async def test_refunds_are_listed_oldest_first(sandbox):
    assert (await sandbox.control("GET", "/sandbox/refunds")).json == {"refunds": []}
    await sandbox.switches(refund_mode="manual")
    body, _ = await sandbox.place("native")
    no, total = body["out_trade_no"], body["amount"]["total"]
    await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    for out_refund_no in ("RLIST1", "RLIST2"):
        refund = {"out_trade_no": no, "out_refund_no": out_refund_no}
        refund["amount"] = {"refund": 1, "total": total, "currency": "CNY"}
        assert (await sandbox.api("POST", "/v3/refund/domestic/refunds", refund)).status == 200
    listed = (await sandbox.control("GET", "/sandbox/refunds")).json["refunds"]
    assert [r["out_refund_no"] for r in listed] == ["RLIST1", "RLIST2"]
    assert listed[0] == (await sandbox.control("GET", "/sandbox/refunds/RLIST1")).json


async def test_expire_keeps_notpay_and_paying_then_needs_force(sandbox):
    body, _ = await sandbox.place("native")
    no = body["out_trade_no"]
    expired = await sandbox.control("POST", f"/sandbox/orders/{no}/expire")
    assert expired.status == 200 and expired.json["expired"] is True
    assert expired.json["trade_state"] == "NOTPAY"
    path = f"/v3/pay/transactions/out-trade-no/{no}?mchid={MCHID}"
    assert (await sandbox.api("GET", path)).json["trade_state"] == "NOTPAY"
    refused = await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {})
    assert refused.status == 409 and refused.json["error"] == "ORDER_EXPIRED"
    paid = await sandbox.control(
        "POST", f"/sandbox/orders/{no}/pay", {"force": True, "notify": False}
    )
    assert paid.status == 200

    twice = await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    assert twice.status == 409 and twice.json["error"] == "ALREADY_PAID"
    again = await sandbox.control(
        "POST", f"/sandbox/orders/{no}/pay", {"force": True, "notify": False}
    )
    assert again.status == 200 and again.json["transaction_id"] != paid.json["transaction_id"]
    state = (await sandbox.control("GET", f"/sandbox/orders/{no}")).json
    assert len(state["transaction_ids"]) == 2 and state["trade_state"] == "SUCCESS"


async def test_control_errors_are_json(sandbox):
    missing = await sandbox.control("POST", "/sandbox/orders/T404/pay", {})
    assert missing.status == 404 and missing.json["error"] == "NOT_FOUND"
    assert (await sandbox.control("GET", "/sandbox/refunds/R404")).json["error"] == "NOT_FOUND"
    bad = await sandbox.control("PUT", "/sandbox/switches", {"sign_mode": "rot13"})
    assert bad.status == 400 and bad.json["error"] == "BAD_REQUEST"
    unknown = await sandbox.control("PUT", "/sandbox/switches", {"nope": 1})
    assert unknown.status == 400 and "nope" in unknown.json["message"]
    no_route = await sandbox.control("GET", "/sandbox/nothing")
    assert no_route.status == 404 and no_route.json["error"] == "NOT_FOUND"
    body, _ = await sandbox.place("native")
    bad_amount = await sandbox.control(
        "POST", f"/sandbox/orders/{body['out_trade_no']}/pay", {"amount": 0}
    )
    assert bad_amount.status == 400


async def test_switches_partial_update_and_reset(sandbox):
    before = (await sandbox.control("GET", "/sandbox/switches")).json
    assert before["sign_mode"] == "public_key" and before["refund_mode"] == "auto"
    after = await sandbox.switches(duplicate=1)
    assert after == {**before, "duplicate": 1}
    body, _ = await sandbox.place("native")
    await sandbox.control("POST", "/sandbox/faults", {"status": 500})
    assert (await sandbox.control("POST", "/sandbox/reset")).status == 204
    assert (await sandbox.control("GET", "/sandbox/switches")).json == before
    assert (await sandbox.control("GET", "/sandbox/faults")).json == {"faults": []}
    gone = await sandbox.control("GET", f"/sandbox/orders/{body['out_trade_no']}")
    assert gone.status == 404
    assert (await sandbox.control("GET", "/sandbox/orders")).json == {"orders": []}


async def test_health_and_info(sandbox):
    assert (await sandbox.control("GET", "/healthz")).status == 200
    assert (await sandbox.control("GET", "/readyz")).status == 200
    info = (await sandbox.control("GET", "/sandbox/info")).json
    assert info["mchid"] == MCHID and info["merchant_serial_no"] == MERCHANT_SERIAL
    pem = (await sandbox.control("GET", "/sandbox/platform-public-key")).body
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")


# --- settings ------------------------------------------------------------------------------


async def test_merchant_public_key_instead_of_private(start_sandbox, merchant_key):
    harness = await start_sandbox(
        wechatpay_merchant_private_key=None,
        sandbox_merchant_public_key=public_key_pem(merchant_key),
    )
    _, answer = await harness.place("native")
    assert answer.status == 200


async def test_merchant_certificate_brings_its_serial(start_sandbox, merchant_key):
    cert = self_signed_certificate(merchant_key, serial="ABCDEF0123")
    pem = certificate_pem(cert)
    harness = await start_sandbox(
        wechatpay_merchant_private_key=None,
        wechatpay_merchant_serial_no=None,
        sandbox_merchant_public_key=pem,
    )
    harness.signer = MerchantSigner(MCHID, "ABCDEF0123", merchant_key)
    _, answer = await harness.place("native")
    assert answer.status == 200


def test_settings_read_pem_files(tmp_path, monkeypatch, merchant_key, platform_key, apiv3_key):
    merchant = tmp_path / "merchant_public.pem"
    merchant.write_text(public_key_pem(merchant_key))
    platform = tmp_path / "platform.pem"
    platform.write_text(private_key_pem(platform_key))
    monkeypatch.setenv("WECHATPAY_MCHID", MCHID)
    monkeypatch.setenv("WECHATPAY_APIV3_KEY", apiv3_key)
    monkeypatch.setenv("WECHATPAY_MERCHANT_SERIAL_NO", MERCHANT_SERIAL)
    monkeypatch.setenv("SANDBOX_MERCHANT_PUBLIC_KEY_FILE", str(merchant))
    monkeypatch.setenv("SANDBOX_PLATFORM_PRIVATE_KEY_FILE", str(platform))
    monkeypatch.setenv("SANDBOX_TIME_FACTOR", "0.5")
    settings = load_settings(SandboxSettings)
    assert settings.http_port == 8090
    assert settings.sandbox_merchant_public_key is not None
    assert settings.sandbox_platform_private_key is not None
    assert settings.sandbox_time_factor == 0.5 and settings.sandbox_sign_mode == "public_key"


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"wechatpay_mchid": None}, "WECHATPAY_MCHID"),
        ({"wechatpay_apiv3_key": "short"}, "WECHATPAY_APIV3_KEY"),
        ({"wechatpay_merchant_private_key": None}, "SANDBOX_MERCHANT_PUBLIC_KEY"),
        ({"wechatpay_merchant_serial_no": None}, "WECHATPAY_MERCHANT_SERIAL_NO"),
        ({"sandbox_sign_mode": "both"}, "SANDBOX_SIGN_MODE"),
        ({"sandbox_platform_cert_serial": "xyz"}, "SANDBOX_PLATFORM_CERT_SERIAL"),
        ({"sandbox_time_factor": -1}, "SANDBOX_TIME_FACTOR"),
    ],
)
def test_bad_settings_name_the_variable(make_settings, overrides, names):
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    missing = [k for k, v in overrides.items() if v is None]
    with pytest.raises(ConfigError, match=names):
        make_settings(**kwargs, _drop=missing)
