"""The WeChat Pay test kit makes what the library accepts, and nothing it should refuse."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from paylane_common.wechatpay import (
    DecryptionError,
    NotificationHeaders,
    NotificationVerifier,
    VerificationError,
    VerifierKeys,
    decrypt_notification,
    load_private_key,
    load_public_key,
    parse_authorization,
    parse_notification,
    read_certificate,
    verify_rsa,
)
from paylane_common.wechatpay import testing as kit

NOW = 1_763_780_000


@pytest.fixture(scope="module")
def wechat() -> kit.FakeWechatPay:
    return kit.FakeWechatPay()


def verify(keys: VerifierKeys, headers: dict[str, str], body: bytes, now: float = NOW) -> None:
    NotificationVerifier(keys, clock=lambda: now).verify(
        NotificationHeaders.from_mapping(headers), body
    )


def test_notification_verifies_and_decrypts_to_the_resource(wechat: kit.FakeWechatPay) -> None:
    resource = wechat.transaction("T0001", 990)
    headers, body = wechat.notify(resource, timestamp=NOW)
    verify(wechat.verifier_keys(), headers, body)
    parsed = parse_notification(body)
    assert parsed["event_type"] == "TRANSACTION.SUCCESS"
    assert parsed["resource"]["associated_data"] == "transaction"
    assert decrypt_notification(parsed, wechat.apiv3_key) == resource
    assert headers["Wechatpay-Serial"] == wechat.public_key_id


def test_refund_notification_is_encrypted_as_a_refund(wechat: kit.FakeWechatPay) -> None:
    resource = wechat.refund("T0001", refund=500, total=990, refund_status="CLOSED")
    headers, body = wechat.notify(resource, event_type="REFUND.CLOSED", timestamp=NOW)
    verify(wechat.verifier_keys(), headers, body)
    parsed = parse_notification(body)
    assert (parsed["summary"], parsed["resource"]["original_type"]) == ("退款关闭", "refund")
    decrypted = decrypt_notification(parsed, wechat.apiv3_key)
    assert decrypted["amount"] == {
        "total": 990,
        "refund": 500,
        "payer_total": 990,
        "payer_refund": 500,
    }
    assert decrypted["refund_status"] == "CLOSED" and decrypted["mchid"] == wechat.mchid


def test_tampered_notification_does_not_verify(wechat: kit.FakeWechatPay) -> None:
    headers, body = wechat.notify(wechat.transaction(), timestamp=NOW)
    tampered = body.replace(b'"TRANSACTION.SUCCESS"', b'"TRANSACTION.SUCCESS "')
    assert tampered != body
    with pytest.raises(VerificationError) as info:
        verify(wechat.verifier_keys(), headers, tampered)
    assert info.value.reason == "bad_signature"


def test_another_merchants_keys_refuse_the_notification(wechat: kit.FakeWechatPay) -> None:
    other = kit.FakeWechatPay(public_key_id=wechat.public_key_id)
    headers, body = other.notify(other.transaction(), timestamp=NOW)
    with pytest.raises(VerificationError):
        verify(wechat.verifier_keys(), headers, body)
    with pytest.raises(DecryptionError):
        decrypt_notification(parse_notification(body), wechat.apiv3_key)


def test_merchant_resources_take_another_merchant_when_told(wechat: kit.FakeWechatPay) -> None:
    assert wechat.transaction()["mchid"] == wechat.mchid
    foreign = wechat.transaction(appid="wx-foreign", mchid="1999999999")
    assert (foreign["appid"], foreign["mchid"]) == ("wx-foreign", "1999999999")
    assert wechat.refund(mchid="1999999999")["mchid"] == "1999999999"


def test_resources_take_overrides_and_drop_none() -> None:
    resource = kit.transaction_resource(
        "T0002", 100, "4200000001", openid="o-x", attach=None, trade_state="REFUND"
    )
    assert "attach" not in resource
    assert resource["payer"] == {"openid": "o-x"}
    assert resource["trade_state_desc"] == kit.TRADE_STATE_DESC["REFUND"]
    assert (resource["transaction_id"], resource["amount"]["payer_total"]) == ("4200000001", 100)
    assert "success_time" not in kit.refund_resource(success_time=None)
    a, b = kit.transaction_resource(), kit.transaction_resource()
    assert a["out_trade_no"] != b["out_trade_no"]
    assert a["transaction_id"] != b["transaction_id"]


def test_order_requests_carry_what_each_trade_type_needs() -> None:
    jsapi = kit.order_request("JSAPI", "T0003", 2990)
    assert (jsapi["out_trade_no"], jsapi["amount"]) == ("T0003", {"total": 2990, "currency": "CNY"})
    assert jsapi["payer"] == {"openid": kit.PAYER_OPENID} and "scene_info" not in jsapi
    assert kit.order_request("h5")["scene_info"]["h5_info"] == {"type": "Wap"}
    native = kit.order_request("native", attach="cart=7", notify_url="https://m/n")
    assert "payer" not in native and "scene_info" not in native
    assert "payer" not in kit.order_request("jsapi", payer=None)
    assert (native["attach"], native["notify_url"]) == ("cart=7", "https://m/n")
    assert kit.order_request()["out_trade_no"] != kit.order_request()["out_trade_no"]


def test_self_signed_certificate_loads_as_a_platform_certificate(tmp_path: Path) -> None:
    key = kit.new_private_key()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    cert = kit.self_signed_certificate(
        key, serial="5157F09EFDC096DE15EBE81A47057A7232F1B8E1", not_before=start
    )
    (tmp_path / "platform.pem").write_text(kit.certificate_pem(cert))
    info = read_certificate((tmp_path / "platform.pem").read_bytes())
    assert info.serial == "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
    assert (info.not_before, info.not_after) == (start, start + kit.CERTIFICATE_LIFETIME)
    keys = VerifierKeys.from_sources(platform_certs_dir=tmp_path)
    headers, body = kit.signed_notification(
        kit.transaction_resource(),
        apiv3_key=kit.new_apiv3_key(),
        signing_key=key,
        serial=info.serial,
        timestamp=NOW,
    )
    verify(keys, headers, body)
    assert kit.self_signed_certificate(key, serial=0x0ABC).serial_number == 0x0ABC


def test_default_certificate_is_valid_now() -> None:
    info = read_certificate(kit.certificate_pem(kit.self_signed_certificate(kit.new_private_key())))
    now = datetime.now(UTC)
    assert info.not_before < now < info.not_after
    assert info.not_before > now - timedelta(days=2)


def test_pems_load_with_the_library() -> None:
    wechat = kit.FakeWechatPay()
    platform = load_private_key(wechat.platform_private_key_pem)
    assert (
        platform.public_key().public_numbers() == wechat.platform_key.public_key().public_numbers()
    )
    public = load_public_key(wechat.platform_public_key_pem)
    assert public.public_numbers() == wechat.platform_key.public_key().public_numbers()
    assert load_private_key(wechat.merchant_private_key_pem).key_size == 2048
    assert kit.public_key_pem(public) == wechat.platform_public_key_pem


def test_merchant_signer_signs_with_the_merchant_key(wechat: kit.FakeWechatPay) -> None:
    header = wechat.merchant_signer().authorization(
        "GET", "/v3/certificates", timestamp=NOW, nonce="N"
    )
    attributes = parse_authorization(header)
    assert (attributes["mchid"], attributes["serial_no"]) == (
        wechat.mchid,
        wechat.merchant_serial_no,
    )
    message = f"GET\n/v3/certificates\n{NOW}\nN\n\n".encode()
    assert verify_rsa(wechat.merchant_key.public_key(), message, attributes["signature"])


def test_identifiers_have_wechat_shapes() -> None:
    assert len(kit.new_apiv3_key().encode()) == 32
    assert kit.new_public_key_id().startswith("PUB_KEY_ID_")
    assert len(kit.new_serial_no()) == 40 and int(kit.new_serial_no(), 16) >= 0
    assert len(kit.new_transaction_id()) == 28 and kit.new_transaction_id().isdigit()
    assert len(kit.new_refund_id()) == 29 and kit.new_refund_id().isdigit()


def test_importable_without_test_dependencies() -> None:
    """The sandbox and ``paylane dev`` import the kit outside a test run."""
    code = (
        "import sys; import paylane_common.wechatpay.testing; "
        "bad = {'pytest', 'hypothesis'} & set(sys.modules); print(json.dumps(sorted(bad)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], check=True, capture_output=True, text=True
    )
    assert json.loads(out.stdout) == []
