"""Plays WeChat Pay in tests: a platform key pair made per session, notifications signed
and encrypted exactly like WeChat's (via paylane_common.wechatpay.build_notification)."""

from __future__ import annotations

import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from paylane_common.wechatpay import build_notification

MCHID = "1900000109"
APPID = "wxd678efh567hg6787"


def _private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _random_key() -> str:
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))


@dataclass
class FakeWechat:
    mchid: str = MCHID
    appid: str = APPID
    apiv3_key: str = field(default_factory=_random_key)
    public_key_id: str = field(default_factory=lambda: f"PUB_KEY_ID_{uuid.uuid4().hex.upper()}")
    private_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    #: The merchant's API key pair (requests to WeChat Pay are signed with it).
    merchant_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    merchant_serial_no: str = field(default_factory=lambda: uuid.uuid4().hex.upper()[:40])

    @property
    def platform_private_key_pem(self) -> str:
        return _private_pem(self.private_key)

    @property
    def merchant_private_key_pem(self) -> str:
        return _private_pem(self.merchant_key)

    def sandbox_env(self) -> dict[str, str]:
        """What ``paylane serve sandbox`` needs to play this WeChat Pay."""
        return {
            "WECHATPAY_MCHID": self.mchid,
            "WECHATPAY_APIV3_KEY": self.apiv3_key,
            "WECHATPAY_PUBLIC_KEY_ID": self.public_key_id,
            "WECHATPAY_MERCHANT_SERIAL_NO": self.merchant_serial_no,
            "WECHATPAY_MERCHANT_PRIVATE_KEY": self.merchant_private_key_pem,
            "SANDBOX_PLATFORM_PRIVATE_KEY": self.platform_private_key_pem,
        }

    def merchant_env(self, api_base: str, notify_url: str) -> dict[str, str]:
        """What the order service needs to call this WeChat Pay."""
        return {
            "WECHATPAY_API_BASE": api_base,
            "WECHATPAY_NOTIFY_URL": notify_url,
            "WECHATPAY_MERCHANT_PRIVATE_KEY": self.merchant_private_key_pem,
            "WECHATPAY_MERCHANT_SERIAL_NO": self.merchant_serial_no,
        }

    @property
    def public_key_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def ingress_env(self) -> dict[str, str]:
        return {
            "WECHATPAY_APIV3_KEY": self.apiv3_key,
            "WECHATPAY_PUBLIC_KEY": self.public_key_pem,
            "WECHATPAY_PUBLIC_KEY_ID": self.public_key_id,
            "WECHATPAY_MCHID": self.mchid,
            "WECHATPAY_APPID": self.appid,
        }

    def transaction(
        self,
        out_trade_no: str,
        amount_total: int,
        transaction_id: str | None = None,
        *,
        openid: str = "o-test-openid",
        **overrides: Any,
    ) -> dict[str, Any]:
        resource = {
            "appid": self.appid,
            "mchid": self.mchid,
            "out_trade_no": out_trade_no,
            "transaction_id": transaction_id or f"42{uuid.uuid4().int % 10**26:026d}",
            "trade_type": "JSAPI",
            "trade_state": "SUCCESS",
            "trade_state_desc": "支付成功",
            "bank_type": "OTHERS",
            "attach": "",
            "success_time": "2026-11-22T10:53:20+08:00",
            "payer": {"openid": openid},
            "amount": {
                "total": amount_total,
                "payer_total": amount_total,
                "currency": "CNY",
                "payer_currency": "CNY",
            },
        }
        resource.update(overrides)
        return resource

    def notify(
        self,
        resource: dict[str, Any],
        *,
        event_type: str = "TRANSACTION.SUCCESS",
        event_id: str | None = None,
        timestamp: int | None = None,
    ) -> tuple[dict[str, str], bytes]:
        return build_notification(
            event_id=event_id or f"EV-{uuid.uuid4().hex[:20]}",
            event_type=event_type,
            resource_plaintext=resource,
            original_type="transaction" if event_type.startswith("TRANSACTION") else "refund",
            apiv3_key=self.apiv3_key,
            signing_key=self.private_key,
            serial=self.public_key_id,
            timestamp=timestamp or int(time.time()),
        )
