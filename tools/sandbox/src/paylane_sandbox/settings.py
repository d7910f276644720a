"""Sandbox settings, read once from the environment (the services' variables plus
``SANDBOX_*``: docs/configuration.md, tools/sandbox/README.md)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, model_validator

from paylane_common.runtime.settings import (
    FILE_VARIABLES,
    ApiV3Key,
    BaseServiceSettings,
    HttpBaseUrl,
    NoneIfBlank,
    PrivateKeyPem,
    PublicKeyPem,
)


def _certificate_serial(value: str) -> str:
    try:
        number = int(value, 16)
    except ValueError:
        raise ValueError("must be hexadecimal") from None
    if not 0 < number < 2**159:
        raise ValueError("must be a positive serial below 2**159 (X.509)")
    return value.strip().upper()


#: An X.509 serial number in hex, as WeChat Pay spells it (upper case).
CertificateSerial = Annotated[str, AfterValidator(_certificate_serial)]


def _callback_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError("must be an http(s) URL without a query string")
    return value


#: A notification URL as WeChat Pay accepts one (``http://`` allowed for local tests).
CallbackUrl = Annotated[str, AfterValidator(_callback_url)]

SignMode = Literal["public_key", "certificate", "mixed"]
RefundMode = Literal["auto", "manual"]


class SandboxSettings(BaseServiceSettings):
    file_variables: ClassVar[tuple[str, ...]] = (
        *FILE_VARIABLES,
        "SANDBOX_MERCHANT_PUBLIC_KEY",
        "SANDBOX_PLATFORM_PRIVATE_KEY",
        "SANDBOX_APP_SECRET",
    )
    http_port: int = Field(8090, ge=1, le=65535)
    #: The merchant id the sandbox serves.
    wechatpay_mchid: str = Field(min_length=1, max_length=32)
    #: The 32-byte APIv3 key notifications and certificates are encrypted with.
    wechatpay_apiv3_key: ApiV3Key
    #: An appid bound to the merchant; when set (or ``SANDBOX_APPIDS``), any other appid
    #: gets ``400 APPID_MCHID_NOT_MATCH``. Unset: any appid.
    wechatpay_appid: str | None = None
    #: The appids bound to the merchant, comma-separated (instead of ``WECHATPAY_APPID``).
    sandbox_appids: str | None = None
    #: The merchant API key's public key PEM, or its certificate, requests are verified
    #: with; or give ``WECHATPAY_MERCHANT_PRIVATE_KEY`` (one of the two is required).
    sandbox_merchant_public_key: NoneIfBlank[PublicKeyPem] = None
    #: The merchant private key itself, instead of ``SANDBOX_MERCHANT_PUBLIC_KEY``: its
    #: public key is derived from it (handy with one development env file).
    wechatpay_merchant_private_key: NoneIfBlank[PrivateKeyPem] = None
    #: The ``serial_no`` the merchant names in ``Authorization``; required unless the
    #: merchant key is given as a certificate (then its serial is used).
    wechatpay_merchant_serial_no: str | None = None
    #: WeChat Pay's signing key (PEM), announced as a public key id and as a certificate;
    #: unset: a throw-away key is made at start (a warning logged; fetch it from
    #: ``/sandbox/platform-public-key``).
    sandbox_platform_private_key: NoneIfBlank[PrivateKeyPem] = None
    #: The ``Wechatpay-Serial`` of public-key-mode signatures.
    wechatpay_public_key_id: str = Field("PUB_KEY_ID_SANDBOX", min_length=1)
    #: The hex serial of the self-signed platform certificate made at start (same key);
    #: unset: random.
    sandbox_platform_cert_serial: NoneIfBlank[CertificateSerial] = None
    #: ``public_key``, ``certificate`` or ``mixed`` (WeChat's migration: an answer is
    #: signed under the serial the request's ``Wechatpay-Serial`` names, under the
    #: certificate when it names none or an unknown one; notifications alternate): the
    #: serial answers and notifications are signed under.
    sandbox_sign_mode: SignMode = "public_key"
    #: Multiplies WeChat's notification retry schedule and the automatic refund delay
    #: (tests use 0.01; 0: no waiting).
    sandbox_time_factor: float = Field(1.0, ge=0)
    #: ``auto``: refunds become SUCCESS after ``SANDBOX_REFUND_DELAY_S`` and are notified;
    #: ``manual``: they wait for the control API.
    sandbox_refund_mode: RefundMode = "auto"
    #: The automatic refund delay, multiplied by ``SANDBOX_TIME_FACTOR``.
    sandbox_refund_delay_s: float = Field(1.0, ge=0)
    #: The merchant-level refund callback (WeChat Pay's merchant console setting): where a
    #: refund's notifications go when its request named no ``notify_url``; unset: such
    #: refunds are not notified.
    sandbox_refund_notify_url: NoneIfBlank[CallbackUrl] = None
    #: Where the Cloud Hosting containers are: the payment and refund results of orders
    #: placed through ``/_/pay/*`` are posted to this URL plus the order's
    #: ``container.path`` (ingress's URL, for ``/notify/cloudhosting``); unset: not
    #: delivered (the console shows them).
    sandbox_cloudhosting_url: NoneIfBlank[HttpBaseUrl] = None
    #: How long the merchant has to answer a notification (WeChat's 5 s).
    sandbox_notify_timeout_s: float = Field(5.0, gt=0)
    #: An ``Authorization`` timestamp this many seconds or more from now is stale: 401
    #: ``SIGN_ERROR`` (whole seconds, the rule paylane applies to WeChat's answers).
    sandbox_max_skew_s: int = Field(300, ge=1)
    #: The mini-program AppSecret jscode2session expects (any secret when unset).
    sandbox_app_secret: SecretStr | None = None
    #: The mini-program's message push URL: where ``POST /sandbox/shipping/remind`` sends
    #: the ``trade_manage_remind_shipping`` message when the call names no ``url``.
    sandbox_shipping_message_url: NoneIfBlank[CallbackUrl] = None
    #: Where the checkout demo's same-origin proxy sends ``/checkout/api/…``
    #: (demo_proxy.py).
    sandbox_order_api_url: HttpBaseUrl = "http://127.0.0.1:8081"
    #: Where the checkout demo's same-origin proxy sends ``/checkout/notifier/ws`` and
    #: ``/checkout/notifier/events`` (the notifier's ``/ws`` and ``/events``).
    sandbox_notifier_url: HttpBaseUrl = "http://127.0.0.1:8083"

    @model_validator(mode="after")
    def _merchant_key_given(self) -> SandboxSettings:
        public_pem = self.sandbox_merchant_public_key
        if public_pem is None and self.wechatpay_merchant_private_key is None:
            raise ValueError(
                "set SANDBOX_MERCHANT_PUBLIC_KEY(_FILE) or WECHATPAY_MERCHANT_PRIVATE_KEY(_FILE)"
                " to verify the merchant's requests"
            )
        is_certificate = public_pem is not None and "BEGIN CERTIFICATE" in public_pem
        if not self.wechatpay_merchant_serial_no and not is_certificate:
            raise ValueError(
                "WECHATPAY_MERCHANT_SERIAL_NO is required (unless the merchant key is given"
                " as a certificate)"
            )
        return self

    @property
    def allowed_appids(self) -> frozenset[str]:
        """Empty: any appid is accepted."""
        if self.sandbox_appids:
            return frozenset(a.strip() for a in self.sandbox_appids.split(",") if a.strip())
        return frozenset({self.wechatpay_appid}) if self.wechatpay_appid else frozenset()
