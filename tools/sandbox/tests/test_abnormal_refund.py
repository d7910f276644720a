"""``apply-abnormal-refund``: an ABNORMAL refund sent to a bank card instead. The bank
fields are encrypted here by the independent SDK wechatpayv3 (and, once, sent by its whole
client), so that the sandbox's decryption is checked against an implementation that is not
paylane's."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import padding
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import rsa_encrypt

from paylane_common.wechatpay.testing import (
    APPID,
    MCHID,
    new_private_key,
    private_key_pem,
    public_key_pem,
)

PUBLIC_KEY_ID = "PUB_KEY_ID_0114232134912410000000000000001"
CERT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
MERCHANT_SERIAL = "3775B6A45ACD588826D15E583A95F5DD11112222"
ACCOUNT = "6214830000000000"
NAME = "张三"


async def abnormal_refund(sandbox, receiver) -> dict[str, Any]:
    """A paid order and its refund, which WeChat Pay reports ABNORMAL; in manual mode."""
    await sandbox.switches(refund_mode="manual")
    body, placed = await sandbox.place("native", notify_url=receiver.url)
    assert placed.status == 200, placed.body
    no = body["out_trade_no"]
    paid = await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    assert paid.status == 200, paid.body
    total = body["amount"]["total"]
    refund = {
        "out_trade_no": no,
        "out_refund_no": f"R{no}",
        "notify_url": receiver.refund_url(),
        "amount": {"refund": total, "total": total, "currency": "CNY"},
    }
    created = await sandbox.api("POST", "/v3/refund/domestic/refunds", refund)
    assert created.status == 200, created.body
    done = await sandbox.control("POST", f"/sandbox/refunds/R{no}/complete", {"status": "ABNORMAL"})
    assert done.status == 200, done.body
    assert (await receiver.next()).json["event_type"] == "REFUND.ABNORMAL"
    result: dict[str, Any] = created.json
    return result


def path(refund: dict[str, Any]) -> str:
    return f"/v3/refund/domestic/refunds/{refund['refund_id']}/apply-abnormal-refund"


def to_card(refund: dict[str, Any], key: Any, **changes: Any) -> dict[str, Any]:
    body = {
        "out_refund_no": refund["out_refund_no"],
        "type": "USER_BANK_CARD",
        "bank_type": "ICBC_DEBIT",
        "bank_account": rsa_encrypt(ACCOUNT, key),
        "real_name": rsa_encrypt(NAME, key),
    }
    body.update(changes)
    return body


@pytest.mark.parametrize("serial", [PUBLIC_KEY_ID, CERT_SERIAL, CERT_SERIAL.lower()])
async def test_to_the_users_card_decrypts_and_completes_with_refund_success(
    sandbox, receiver, platform_key, serial
):
    refund = await abnormal_refund(sandbox, receiver)
    await sandbox.switches(refund_mode="auto")
    body = to_card(refund, platform_key.public_key())
    answer = await sandbox.api("POST", path(refund), body, headers={"Wechatpay-Serial": serial})
    assert answer.status == 200, answer.body
    assert answer.json["status"] == "PROCESSING"
    assert answer.json["refund_id"] == refund["refund_id"]
    assert answer.json["channel"] == "OTHER_BANKCARD"
    assert answer.json["user_received_account"] == "ICBC_DEBIT0000"
    got = await receiver.next()
    assert got.path == "/notify/refunds" and got.json["event_type"] == "REFUND.SUCCESS"
    assert got.resource is not None and got.resource["refund_status"] == "SUCCESS"
    state = await sandbox.control("GET", f"/sandbox/refunds/{refund['out_refund_no']}")
    assert state.json["status"] == "SUCCESS"
    assert state.json["abnormal_refund"] == {
        "type": "USER_BANK_CARD",
        "bank_type": "ICBC_DEBIT",
        "bank_account": ACCOUNT,
        "real_name": NAME,
    }


async def test_to_the_merchants_account_needs_no_bank_fields(sandbox, receiver, platform_key):
    refund = await abnormal_refund(sandbox, receiver)
    body = {"out_refund_no": refund["out_refund_no"], "type": "MERCHANT_BANK_CARD"}
    answer = await sandbox.api("POST", path(refund), body)
    assert (answer.status, answer.json["status"]) == (200, "PROCESSING")
    # The same request again is the same refund; another remedy now is refused.
    again = await sandbox.api("POST", path(refund), body)
    assert (again.status, again.json["status"]) == (200, "PROCESSING")
    card = to_card(refund, platform_key.public_key())
    other = await sandbox.api("POST", path(refund), card, headers={"Wechatpay-Serial": CERT_SERIAL})
    assert (other.status, other.json["code"]) == (400, "INVALID_REQUEST")
    done = await sandbox.control(
        "POST", f"/sandbox/refunds/{refund['out_refund_no']}/complete", {"status": "SUCCESS"}
    )
    assert done.status == 200 and done.json["user_received_account"] == "商户银行账户"


async def test_the_serial_header_must_name_the_platform_key(sandbox, receiver, platform_key):
    refund = await abnormal_refund(sandbox, receiver)
    body = to_card(refund, platform_key.public_key())
    missing = await sandbox.api("POST", path(refund), body)
    assert (missing.status, missing.json["code"]) == (400, "PARAM_ERROR")
    assert "Wechatpay-Serial" in missing.json["message"]
    unknown = await sandbox.api(
        "POST", path(refund), body, headers={"Wechatpay-Serial": "PUB_KEY_ID_SOMEONE_ELSE"}
    )
    assert (unknown.status, unknown.json["code"]) == (400, "PARAM_ERROR")


async def test_fields_not_under_the_platform_key_do_not_decrypt(sandbox, receiver, platform_key):
    refund = await abnormal_refund(sandbox, receiver)
    header = {"Wechatpay-Serial": PUBLIC_KEY_ID}
    foreign = to_card(refund, new_private_key().public_key())
    answer = await sandbox.api("POST", path(refund), foreign, headers=header)
    assert (answer.status, answer.json["code"]) == (400, "PARAM_ERROR")
    assert answer.json["detail"]["field"] == "/bank_account"
    pkcs1 = base64.b64encode(
        platform_key.public_key().encrypt(NAME.encode(), padding.PKCS1v15())
    ).decode()
    answer = await sandbox.api(
        "POST",
        path(refund),
        to_card(refund, platform_key.public_key(), real_name=pkcs1),
        headers=header,
    )
    assert (answer.status, answer.json["detail"]["field"]) == (400, "/real_name")
    state = await sandbox.control("GET", f"/sandbox/refunds/{refund['out_refund_no']}")
    assert state.json["status"] == "ABNORMAL" and state.json["abnormal_refund"] is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "ORIGINAL"}, "/type"),
        ({"real_name": None}, "/real_name"),
        ({"bank_type": None}, "/bank_type"),
        ({"out_refund_no": None}, "/out_refund_no"),
    ],
)
async def test_bad_bodies_are_param_errors(sandbox, receiver, platform_key, change, field):
    refund = await abnormal_refund(sandbox, receiver)
    body = {k: v for k, v in to_card(refund, platform_key.public_key(), **change).items() if v}
    answer = await sandbox.api(
        "POST", path(refund), body, headers={"Wechatpay-Serial": PUBLIC_KEY_ID}
    )
    assert (answer.status, answer.json["code"], answer.json["detail"]["field"]) == (
        400,
        "PARAM_ERROR",
        field,
    )


async def test_unknown_or_mismatched_or_not_abnormal_refunds(sandbox, receiver):
    refund = await abnormal_refund(sandbox, receiver)
    body = {"out_refund_no": refund["out_refund_no"], "type": "MERCHANT_BANK_CARD"}
    unknown = await sandbox.api("POST", path({"refund_id": "50000000000000000000000000001"}), body)
    assert (unknown.status, unknown.json["code"]) == (404, "RESOURCE_NOT_EXISTS")
    other = await sandbox.api("POST", path(refund), {**body, "out_refund_no": "R-OTHER"})
    assert (other.status, other.json["detail"]["field"]) == (400, "/out_refund_no")
    await sandbox.control(
        "POST", f"/sandbox/refunds/{refund['out_refund_no']}/complete", {"status": "CLOSED"}
    )
    closed = await sandbox.api("POST", path(refund), body)
    assert (closed.status, closed.json["code"]) == (400, "INVALID_REQUEST")


async def test_wechatpayv3s_client_applies_it(sandbox, receiver, merchant_key, platform_key):
    """The independent SDK as the merchant: it encrypts, names the key and signs."""
    refund = await abnormal_refund(sandbox, receiver)
    wxpay = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=MCHID,
        private_key=private_key_pem(merchant_key),
        cert_serial_no=MERCHANT_SERIAL,
        appid=APPID,
        apiv3_key=sandbox.apiv3_key,
        public_key=public_key_pem(platform_key),
        public_key_id=PUBLIC_KEY_ID,
    )
    wxpay._core._gate_way = str(sandbox.client.make_url("")).rstrip("/")
    code, text = await asyncio.to_thread(
        wxpay.abnormal_refund,
        refund["refund_id"],
        refund["out_refund_no"],
        "USER_BANK_CARD",
        bank_type="ICBC_DEBIT",
        bank_account=ACCOUNT,
        real_name=NAME,
    )
    assert code == 200, text
    state = await sandbox.control("GET", f"/sandbox/refunds/{refund['out_refund_no']}")
    assert state.json["abnormal_refund"]["bank_account"] == ACCOUNT
    assert state.json["abnormal_refund"]["real_name"] == NAME
