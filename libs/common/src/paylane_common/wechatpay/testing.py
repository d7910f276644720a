"""Playing WeChat Pay's side: throw-away keys, platform certificates, resources and signed
notifications, for tests, the sandbox, the bench and ``paylane dev``; and the merchant's
place-order request that the sandbox answers.

What a merchant never has in production is here: WeChat Pay's own private key (of its
*public key* or of a *platform certificate*), and with it notifications exactly as WeChat
Pay sends them — the decrypted ``resource`` of ``TRANSACTION.SUCCESS`` / ``REFUND.*``,
encrypted with the APIv3 key, the body signed under ``Wechatpay-Serial``. The kit builds
them with this package's own primitives (:func:`build_notification`, :class:`MerchantSigner`,
:class:`VerifierKeys`), so what it makes is what the library checks; it needs no dependency
the library does not already have, so the sandbox and the CLI import it outside a test run.

No production code path imports it: services verify what WeChat Pay signs, they never sign
as WeChat Pay. And it makes inputs, not expected results: a test that checks the library
against independent vectors must not take the expected value from the kit.
"""

from __future__ import annotations

import secrets
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.x509.oid import NameOID

from paylane_common.wechatpay.keys import VerifierKeys
from paylane_common.wechatpay.merchant import MerchantSigner
from paylane_common.wechatpay.notification import build_notification

#: The merchant id and app id of WeChat Pay's documentation examples.
MCHID = "1900000109"
APPID = "wxd678efh567hg6787"
PAYER_OPENID = "o-test-openid"
#: A fixed payment time, so that resources are reproducible; pass ``success_time`` for another.
SUCCESS_TIME = "2026-11-22T10:53:20+08:00"
USER_RECEIVED_ACCOUNT = "支付用户零钱"
#: Where WeChat Pay is told to send the notifications of :func:`order_request`: a port
#: nothing listens on, for tests that do not receive them.
NOTIFY_URL = "http://127.0.0.1:9/notify/wechatpay"
#: Platform certificates WeChat Pay issues are valid for five years.
CERTIFICATE_LIFETIME = timedelta(days=5 * 365)

TRADE_STATE_DESC = {
    "NOTPAY": "订单未支付",
    "SUCCESS": "支付成功",
    "CLOSED": "订单已关闭",
    "REFUND": "订单发生过退款",
    "PAYERROR": "支付失败，请重新下单支付",
}
#: The notification ``summary`` of each event type.
SUMMARIES = {
    "TRANSACTION.SUCCESS": "支付成功",
    "REFUND.SUCCESS": "退款成功",
    "REFUND.ABNORMAL": "退款异常",
    "REFUND.CLOSED": "退款关闭",
}

_ALPHANUMERIC = string.ascii_letters + string.digits

# --- keys and identifiers ---------------------------------------------------------------


def new_private_key() -> RSAPrivateKey:
    """A 2048-bit RSA key, the size WeChat Pay uses on both sides."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(key: RSAPrivateKey) -> str:
    """Unencrypted PKCS#8 PEM, as the merchant's ``apiclient_key.pem``."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def public_key_pem(key: RSAPrivateKey | RSAPublicKey) -> str:
    """The ``PUBLIC KEY`` PEM of a key (of the public half of a private key)."""
    public = key.public_key() if isinstance(key, RSAPrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def new_apiv3_key() -> str:
    """32 letters and digits, used as raw bytes (as the merchant platform generates it)."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(32))


def new_public_key_id() -> str:
    """An id of WeChat Pay's public key, ``PUB_KEY_ID_…``."""
    return "PUB_KEY_ID_0114" + secrets.token_hex(10).upper()


def new_serial_no() -> str:
    """A certificate serial number as WeChat Pay writes it: 40 upper-case hex digits."""
    return secrets.token_hex(20).upper()


def new_transaction_id() -> str:
    return f"4200{uuid.uuid4().int % 10**24:024d}"


def new_refund_id() -> str:
    return f"5000{uuid.uuid4().int % 10**25:025d}"


def new_event_id() -> str:
    return f"EV-{uuid.uuid4().hex[:24].upper()}"


# --- certificates -----------------------------------------------------------------------


def self_signed_certificate(
    key: RSAPrivateKey,
    *,
    serial: int | str | None = None,
    not_before: datetime | None = None,
    lifetime: timedelta = CERTIFICATE_LIFETIME,
    label: str = "paylane test",
) -> x509.Certificate:
    """A certificate of ``key`` shaped like a WeChat Pay platform certificate (Tenpay.com).

    ``serial`` as a number or as ``Wechatpay-Serial`` writes it (hex), random when None;
    valid from ``not_before`` (a day ago when None) for ``lifetime``.
    """

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tenpay.com"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} ({label})"),
            ]
        )

    if isinstance(serial, str):
        serial = int(serial, 16)
    start = datetime.now(UTC) - timedelta(days=1) if not_before is None else not_before
    return (
        x509.CertificateBuilder()
        .subject_name(name("Tenpay.com sign"))
        .issuer_name(name("Tenpay.com Root CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(start)
        .not_valid_after(start + lifetime)
        .sign(key, hashes.SHA256())
    )


def certificate_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


# --- the merchant's requests -----------------------------------------------------------


def order_request(
    trade_type: str = "jsapi",
    out_trade_no: str | None = None,
    total: int = 990,
    *,
    appid: str = APPID,
    mchid: str = MCHID,
    openid: str = PAYER_OPENID,
    notify_url: str = NOTIFY_URL,
    **fields: Any,
) -> dict[str, Any]:
    """The body of a merchant's ``POST /v3/pay/transactions/{trade_type}`` (jsapi, native,
    h5 or app, in either case): with the payer's ``openid`` for JSAPI, a payer's scene for
    H5. A new ``out_trade_no`` unless given; ``fields`` override or add top-level fields
    (None drops one)."""
    kind = trade_type.lower()
    body: dict[str, Any] = {
        "appid": appid,
        "mchid": mchid,
        "description": "premium package",
        "out_trade_no": out_trade_no or f"T{secrets.token_hex(8).upper()}",
        "notify_url": notify_url,
        "amount": {"total": total, "currency": "CNY"},
    }
    if kind == "jsapi":
        body["payer"] = {"openid": openid}
    if kind == "h5":
        body["scene_info"] = {"payer_client_ip": "203.0.113.9", "h5_info": {"type": "Wap"}}
    return _merge(body, fields)


# --- resources and notifications --------------------------------------------------------


def _merge(resource: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Apply overrides: a value replaces the field, None removes it."""
    resource.update(fields)
    return {k: v for k, v in resource.items() if v is not None}


def transaction_resource(
    out_trade_no: str | None = None,
    total: int = 2990,
    transaction_id: str | None = None,
    *,
    appid: str = APPID,
    mchid: str = MCHID,
    openid: str = PAYER_OPENID,
    trade_type: str = "JSAPI",
    trade_state: str = "SUCCESS",
    success_time: str = SUCCESS_TIME,
    **fields: Any,
) -> dict[str, Any]:
    """The decrypted resource of ``TRANSACTION.SUCCESS`` (also a paid order's query answer).

    New ids where none are given; ``fields`` override or add top-level fields (None drops
    one, e.g. ``attach=None``)."""
    resource: dict[str, Any] = {
        "appid": appid,
        "mchid": mchid,
        "out_trade_no": out_trade_no or f"P{uuid.uuid4().hex[:20].upper()}",
        "transaction_id": transaction_id or new_transaction_id(),
        "trade_type": trade_type,
        "trade_state": trade_state,
        "trade_state_desc": TRADE_STATE_DESC.get(trade_state, ""),
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": success_time,
        "payer": {"openid": openid},
        "amount": {
            "total": total,
            "payer_total": total,
            "currency": "CNY",
            "payer_currency": "CNY",
        },
    }
    return _merge(resource, fields)


def refund_resource(
    out_trade_no: str | None = None,
    refund: int = 1000,
    total: int = 2990,
    *,
    mchid: str = MCHID,
    transaction_id: str | None = None,
    out_refund_no: str | None = None,
    refund_id: str | None = None,
    refund_status: str = "SUCCESS",
    success_time: str | None = SUCCESS_TIME,
    **fields: Any,
) -> dict[str, Any]:
    """The decrypted resource of ``REFUND.SUCCESS`` / ``REFUND.ABNORMAL`` / ``REFUND.CLOSED``.

    New ids where none are given; ``fields`` as for :func:`transaction_resource`."""
    resource: dict[str, Any] = {
        "mchid": mchid,
        "out_trade_no": out_trade_no or f"P{uuid.uuid4().hex[:20].upper()}",
        "transaction_id": transaction_id or new_transaction_id(),
        "out_refund_no": out_refund_no or f"R{uuid.uuid4().hex[:20].upper()}",
        "refund_id": refund_id or new_refund_id(),
        "refund_status": refund_status,
        "success_time": success_time,
        "user_received_account": USER_RECEIVED_ACCOUNT,
        "amount": {"total": total, "refund": refund, "payer_total": total, "payer_refund": refund},
    }
    return _merge(resource, fields)


def signed_notification(
    resource: dict[str, Any],
    *,
    apiv3_key: str,
    signing_key: RSAPrivateKey,
    serial: str,
    event_type: str = "TRANSACTION.SUCCESS",
    event_id: str | None = None,
    timestamp: int | None = None,
    original_type: str | None = None,
) -> tuple[dict[str, str], bytes]:
    """``(headers, body)`` of the notification WeChat Pay would POST for ``resource``.

    ``original_type`` (also the AEAD associated data) follows the event type unless given;
    the time is now unless ``timestamp`` is given.
    """
    if original_type is None:
        original_type = "refund" if event_type.startswith("REFUND.") else "transaction"
    return build_notification(
        event_id=event_id or new_event_id(),
        event_type=event_type,
        resource_plaintext=resource,
        original_type=original_type,
        apiv3_key=apiv3_key,
        signing_key=signing_key,
        serial=serial,
        timestamp=timestamp,
        summary=SUMMARIES.get(event_type, SUMMARIES["TRANSACTION.SUCCESS"]),
    )


# --- one merchant at WeChat Pay ---------------------------------------------------------


@dataclass(frozen=True)
class FakeWechatPay:
    """One merchant's account at WeChat Pay, with both sides' secrets made up: WeChat Pay's
    platform key (in public key mode, serial ``public_key_id``) and the merchant's API key."""

    mchid: str = MCHID
    appid: str = APPID
    apiv3_key: str = field(default_factory=new_apiv3_key)
    public_key_id: str = field(default_factory=new_public_key_id)
    platform_key: RSAPrivateKey = field(default_factory=new_private_key)
    merchant_key: RSAPrivateKey = field(default_factory=new_private_key)
    merchant_serial_no: str = field(default_factory=new_serial_no)

    @property
    def platform_private_key_pem(self) -> str:
        return private_key_pem(self.platform_key)

    @property
    def platform_public_key_pem(self) -> str:
        return public_key_pem(self.platform_key)

    @property
    def merchant_private_key_pem(self) -> str:
        return private_key_pem(self.merchant_key)

    def verifier_keys(self) -> VerifierKeys:
        """What a merchant in public key mode knows of WeChat Pay."""
        return VerifierKeys(self.public_key_id, self.platform_key.public_key())

    def merchant_signer(self) -> MerchantSigner:
        """Signs the merchant's requests to WeChat Pay."""
        return MerchantSigner(self.mchid, self.merchant_serial_no, self.merchant_key)

    def transaction(
        self,
        out_trade_no: str | None = None,
        total: int = 2990,
        transaction_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """:func:`transaction_resource` of this merchant and app (unless ``fields`` say
        otherwise)."""
        fields = {"appid": self.appid, "mchid": self.mchid, **fields}
        return transaction_resource(out_trade_no, total, transaction_id, **fields)

    def refund(self, out_trade_no: str | None = None, **fields: Any) -> dict[str, Any]:
        """:func:`refund_resource` of this merchant (unless ``fields`` say otherwise)."""
        return refund_resource(out_trade_no, **{"mchid": self.mchid, **fields})

    def notify(
        self,
        resource: dict[str, Any],
        *,
        event_type: str = "TRANSACTION.SUCCESS",
        event_id: str | None = None,
        timestamp: int | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """The notification of ``resource`` signed with the platform key (nothing is sent)."""
        return signed_notification(
            resource,
            apiv3_key=self.apiv3_key,
            signing_key=self.platform_key,
            serial=self.public_key_id,
            event_type=event_type,
            event_id=event_id,
            timestamp=timestamp,
        )
