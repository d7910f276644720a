"""The sandbox as one object: keys, state, switches, faults and notifications, and the
operations that touch several of them (a payment notifies, a refund completes later)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from paylane_common.runtime.settings import secret_value
from paylane_common.wechatpay import DecryptionError, decrypt_field, load_private_key
from paylane_common.wechatpay.testing import SUMMARIES, new_private_key

from . import cloud_hosting, resources
from .auth import MerchantAuthenticator, merchant_key
from .background import Background
from .errors import ApiError, param_error
from .faults import FaultInjector
from .ledger import AbnormalRefund, Ledger, Order, Refund
from .miniprogram import LoginCodes
from .notifications import Notification, NotificationSender
from .settings import SandboxSettings
from .shipping import ShippingService
from .signer import PlatformSigner, platform_certificate
from .switches import SwitchBoard
from .validation import ENCRYPTED_ABNORMAL_REFUND_FIELDS

log = structlog.get_logger(__name__)


def platform_private_key(settings: SandboxSettings) -> RSAPrivateKey:
    pem = secret_value(settings.sandbox_platform_private_key)
    if pem:
        return load_private_key(pem)
    log.warning(
        "platform_key_generated",
        hint="SANDBOX_PLATFORM_PRIVATE_KEY is unset: a throw-away key was made; fetch it"
        " from GET /sandbox/platform-public-key or /sandbox/platform-certificate",
    )
    return new_private_key()


class Sandbox:
    def __init__(
        self, settings: SandboxSettings, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.mchid = settings.wechatpay_mchid
        self.apiv3_key = secret_value(settings.wechatpay_apiv3_key)
        self.switches = SwitchBoard(settings)
        key = platform_private_key(settings)
        certificate = platform_certificate(key, settings.sandbox_platform_cert_serial, clock())
        self.signer = PlatformSigner(
            key, settings.wechatpay_public_key_id, certificate, self.switches.sign_mode, clock
        )
        serial, public_key = merchant_key(settings)
        self.authenticator = MerchantAuthenticator(
            self.mchid, serial, public_key, settings.sandbox_max_skew_s, clock
        )
        self.faults = FaultInjector()
        self.ledger = Ledger(self.mchid, settings.allowed_appids)
        self.notification_sender = NotificationSender(
            self.signer,
            self.switches,
            self.apiv3_key,
            time_factor=settings.sandbox_time_factor,
            timeout_s=settings.sandbox_notify_timeout_s,
            clock=clock,
        )
        self.login_codes = LoginCodes(clock)
        #: The mini-program shipping service and its access tokens (shipping.py).
        self.shipping = ShippingService(clock)
        #: Bill files applied for, by their download token (bills.py).
        self.bill_files: dict[str, bytes] = {}
        self._timers = Background()

    async def start(self) -> None:
        await self.notification_sender.start()

    async def close(self) -> None:
        await self._timers.close()
        await self.notification_sender.close()

    def reset(self) -> None:
        """Forget every order, refund and notification; switches and faults to defaults."""
        self._timers.cancel_all()
        self.notification_sender.reset()
        self.ledger.reset()
        self.switches.reset()
        self.faults.clear()
        self.login_codes.reset()
        self.shipping.reset()
        self.bill_files.clear()

    # --- payments -------------------------------------------------------------------------

    def pay(
        self,
        out_trade_no: str,
        *,
        amount: int | None = None,
        openid: str | None = None,
        force: bool = False,
        notify: bool = True,
    ) -> tuple[Order, Notification | None]:
        order = self.ledger.pay(out_trade_no, amount, openid, force, self.clock())
        return order, (self.notify_transaction(order) if notify else None)

    def notify_transaction(self, order: Order) -> Notification | None:
        if order.cloud is not None:
            fields = cloud_hosting.payment_callback(order, self.mchid)
            return self._to_container(
                order.cloud, "TRANSACTION.SUCCESS", "支付成功", fields, order.out_trade_no
            )
        return self.notification_sender.submit(
            "TRANSACTION.SUCCESS",
            "transaction",
            "支付成功",
            resources.transaction(order, self.mchid),
            order.notify_url,
            out_trade_no=order.out_trade_no,
        )

    def _to_container(
        self,
        target: dict[str, Any],
        event_type: str,
        summary: str,
        fields: dict[str, Any],
        out_trade_no: str,
        out_refund_no: str | None = None,
    ) -> Notification | None:
        """A result of the open interface, delivered as Cloud Hosting delivers it."""
        base = self.settings.sandbox_cloudhosting_url
        if base is None:
            log.warning(
                "container_callback_not_sent",
                out_trade_no=out_trade_no,
                hint="SANDBOX_CLOUDHOSTING_URL is unset",
            )
            return None
        headers = {
            "X-WX-SOURCE": cloud_hosting.CALLBACK_SOURCE,
            "X-WX-ENV": str(target["env_id"]),
            "X-WX-SERVICE": str(target["service"]),
        }
        return self.notification_sender.submit_container(
            event_type,
            summary,
            fields,
            base.rstrip("/") + str(target["path"]),
            headers,
            out_trade_no=out_trade_no,
            out_refund_no=out_refund_no,
        )

    # --- refunds --------------------------------------------------------------------------

    def create_refund(self, body: dict[str, Any]) -> Refund:
        refund, created = self.ledger.create_refund(body, self.clock())
        if created:
            self._complete_later(refund)
        return refund

    def _complete_later(self, refund: Refund) -> None:
        """In ``auto`` refund mode, PROCESSING becomes SUCCESS (and is notified) after the
        refund delay; in ``manual`` mode it waits for the control API."""
        if self.switches.current.refund_mode == "auto":
            delay = self.settings.sandbox_refund_delay_s * self.settings.sandbox_time_factor
            self._timers.spawn(
                self._auto_complete(refund.out_refund_no, delay), f"refund {refund.refund_id}"
            )

    def apply_abnormal_refund(
        self, refund_id: str, body: dict[str, Any], wechatpay_serial: str | None
    ) -> Refund:
        """An ABNORMAL refund sent to a bank card: the encrypted fields must be under the
        platform key the ``Wechatpay-Serial`` header names, and decrypt; the refund is then
        PROCESSING again and completes like a new one."""
        refund = self.ledger.refund_by_id(refund_id, body["out_refund_no"])
        fields: dict[str, str | None] = {name: None for name in ENCRYPTED_ABNORMAL_REFUND_FIELDS}
        if body["type"] == "USER_BANK_CARD":
            self._check_encryption_serial(wechatpay_serial)
            for name in fields:
                try:
                    fields[name] = decrypt_field(self.signer.private_key, body[name])
                except DecryptionError:
                    raise param_error(
                        f"/{name}", "解密失败，请使用微信支付公钥或平台证书加密 (does not decrypt)"
                    ) from None
        remedy = AbnormalRefund(body["type"], body.get("bank_type"), **fields)
        if self.ledger.apply_abnormal_refund(refund, remedy, self.clock()):
            log.info(
                "abnormal_refund_applied", out_refund_no=refund.out_refund_no, type=remedy.type
            )
            self._complete_later(refund)
        return refund

    def _check_encryption_serial(self, serial: str | None) -> None:
        if not serial:
            raise ApiError(
                400, "PARAM_ERROR", "请求头缺少Wechatpay-Serial (the encrypted fields' key)"
            )
        known = {self.signer.public_key_id, self.signer.certificate_serial.lstrip("0")}
        if serial.strip().upper().lstrip("0") not in {k.upper() for k in known}:
            raise ApiError(
                400, "PARAM_ERROR", "Wechatpay-Serial 不是微信支付公钥ID或有效的平台证书序列号"
            )

    async def _auto_complete(self, out_refund_no: str, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        refund = self.ledger.refunds.get(out_refund_no)
        if refund is not None and refund.status == "PROCESSING":
            self.complete_refund(out_refund_no, "SUCCESS")

    def complete_refund(self, out_refund_no: str, status: str) -> Refund:
        refund = self.ledger.complete_refund(out_refund_no, status, self.clock())
        self.notify_refund(refund)
        return refund

    def refund_notify_url(self, refund: Refund) -> str | None:
        """Where WeChat Pay sends a refund's notifications: the refund request's own
        ``notify_url``, else the merchant-level refund callback; never the order's."""
        return refund.notify_url or self.settings.sandbox_refund_notify_url

    def notify_refund(self, refund: Refund) -> Notification | None:
        if refund.cloud is not None:
            fields = cloud_hosting.refund_callback(refund)
            return self._to_container(
                refund.cloud,
                f"REFUND.{refund.status}",
                SUMMARIES[f"REFUND.{refund.status}"],
                fields,
                refund.out_trade_no,
                refund.out_refund_no,
            )
        url = self.refund_notify_url(refund)
        if url is None:
            log.warning(
                "refund_not_notified",
                out_refund_no=refund.out_refund_no,
                hint="the refund named no notify_url and SANDBOX_REFUND_NOTIFY_URL is unset",
            )
            return None
        return self.notification_sender.submit(
            f"REFUND.{refund.status}",
            "refund",
            SUMMARIES[f"REFUND.{refund.status}"],
            resources.refund_notification(refund, self.mchid),
            url,
            out_trade_no=refund.out_trade_no,
            out_refund_no=refund.out_refund_no,
        )
