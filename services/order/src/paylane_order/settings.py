"""Order service settings (docs/configuration.md, "Order service")."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from paylane_common.runtime.settings import (
    ApiSecretSettings,
    BaseServiceSettings,
    CatalogSettings,
    ConsumerSettings,
    HttpBaseUrl,
    NoneIfBlank,
    TokenSigningKey,
    TokenVerifyingKeys,
)
from paylane_common.wechatpay.merchant_api import (
    CLOUDHOSTING,
    DIRECT_ONLY,
    MerchantApiSettings,
    required_unless_cloudhosting,
)

from .client_address import TrustedProxySettings
from .webhooks.settings import WebhookSettings

#: A prepay_id (JSAPI, APP) is valid for two hours after WeChat Pay issued it.
PREPAY_ID_TTL_S = 7200


class OrderSettings(
    BaseServiceSettings,
    ConsumerSettings,
    CatalogSettings,
    MerchantApiSettings,
    TrustedProxySettings,
    ApiSecretSettings,
    WebhookSettings,
):
    http_port: int = Field(8081, ge=1, le=65535)
    admin_port: int = Field(9081, ge=1, le=65535)
    #: The app id orders are placed under (the mini-program's or the web's); a payment for
    #: another merchant or app is flagged for review, never granted.
    wechatpay_appid: str = Field(min_length=1)
    #: The mobile app's appid (open platform), bound to the same merchant, for
    #: ``trade_type: APP``: WeChat Pay takes APP orders only under an app's appid, not the
    #: mini-program's; they are placed and checked under it. Unset: APP answers 400
    #: ``trade_type_unavailable``.
    wechatpay_app_appid: NoneIfBlank[str] = None
    #: Public URL of ingress's notify endpoint, sent when placing orders and refunds.
    #: ``https://`` (WeChat Pay calls no other); ``http://`` only for a sandbox: a loopback
    #: host (``127.0.0.0/8``, ``::1``, ``localhost``), or any host when
    #: ``WECHATPAY_API_BASE`` is itself ``http://`` (the compose stack's sandbox); no query
    #: string. Anything else stops the order service at start. Required in ``direct`` mode;
    #: not used with ``WECHATPAY_MODE=cloudhosting`` (results go to
    #: ``CLOUDHOSTING_SERVICE``'s ``CLOUDHOSTING_CALLBACK_PATH``).
    wechatpay_notify_url: NoneIfBlank[str] = Field(
        None, validate_default=True, json_schema_extra=DIRECT_ONLY
    )
    # BACKEND_API_SECRET (ApiSecretSettings): the app backend's secret (``X-Internal-Secret``
    # on the order API): orders for any user, reads, close, refunds. INTERNAL_API_SECRET
    # (the cloud function's, held by ingress) opens nothing here; read only to refuse one
    # equal to BACKEND_API_SECRET.
    #: The Ed25519 private key (PKCS#8 PEM, ``openssl genpkey -algorithm ed25519``) end
    #: users' tokens are signed with: sessions, ``client_token`` and the notifier's stream
    #: tickets (docs/security.md). Only this service holds it.
    client_token_private_key: TokenSigningKey
    #: More Ed25519 public keys tokens are accepted from (``PUBLIC KEY`` PEM blocks one
    #: after the other): the previous key while a rotation's old tokens are still alive. The
    #: private key's own public half is derived from it, so this is needed only while
    #: rotating.
    client_token_public_key: NoneIfBlank[TokenVerifyingKeys] = None
    #: Lifetime of the session tokens handed to end users (logins and ``client_token``s);
    #: a stream on the notifier ends when the session its ticket came from expires.
    client_token_ttl_s: int = Field(7200, ge=60, le=7 * 86400)
    #: The mini-program's AppSecret, for WeChat's ``jscode2session``
    #: (``POST /auth/miniprogram``); unset: login answers 503.
    wechat_app_secret: SecretStr | None = None
    #: WeChat's open-platform API host (``/sns/jscode2session``, which is sent the
    #: AppSecret): ``https://``, except for a local sandbox (:func:`local_sandbox`): a
    #: loopback host (``127.0.0.0/8``, ``::1``, ``localhost``), or the very host and port of
    #: a plain-``http://`` ``WECHATPAY_API_BASE`` (the compose stack's one sandbox).
    wechat_api_base: HttpBaseUrl = "https://api.weixin.qq.com"
    #: Sign-ins (``POST /auth/miniprogram``) a client address may make a minute, each
    #: replica in memory (N replicas allow up to N times as many; rate_limits.py); past it
    #: 429 ``too_many_requests`` with ``Retry-After``, WeChat not asked. The address is the
    #: peer, or ``X-Forwarded-For`` through ``TRUSTED_PROXIES``. 0: no limit.
    login_rate_per_min: int = Field(30, ge=0, le=100_000)
    #: Orders (``POST /orders``) one user may place a minute (the token's user, or the
    #: ``user_id``, else the ``openid``, the backend names), each replica; past it 429
    #: ``too_many_requests`` with ``Retry-After``. 0: no limit.
    order_rate_per_min: int = Field(10, ge=0, le=100_000)
    #: Unpaid orders a user may have pending at once (not yet expired); one more is a
    #: 409 ``too_many_pending_orders`` (naming the cap) until one is paid, closed or
    #: expires. 0: no cap.
    max_pending_orders: int = Field(5, ge=0, le=10_000)
    #: A second ``POST /orders`` of a user for the same package, trade type and
    #: generation, while their order of that kind is pending and younger than this, is
    #: answered with that order (200, fresh pay parameters) instead of a new one (a
    #: double tap); one with an ``Idempotency-Key`` not seen before is a new order. 0: off.
    duplicate_order_window_s: int = Field(300, ge=0, le=7200)
    #: How long a placed order stays payable (its ``time_expire``); unpaid, it is then
    #: closed (status ``failed``). An order another writer made without ``expires_at``
    #: expires this long after ``created_at``. At most 7200 (``PREPAY_ID_TTL_S``): a
    #: ``prepay_id`` is valid for two hours, and the pay parameters handed out again (an
    #: ``Idempotency-Key`` retry) name the one the order was placed with.
    order_ttl_s: int = Field(1800, ge=1)
    #: ``GET /orders/{no}`` of an order still pending this long asks WeChat Pay about it
    #: and settles a payment it confirms (docs/order-api.md, "Asking WeChat Pay on
    #: demand"); -1: never asks.
    order_query_after_s: float = Field(5.0, ge=-1)
    #: An order is asked about on demand at most once per this many seconds, across
    #: replicas (``payment_orders.queried_at``); the GETs in between answer the row.
    order_query_interval_s: float = Field(10.0, ge=0)
    #: How long a GET waits for WeChat Pay's answer (its retries included) before it
    #: answers the row as it is.
    order_query_timeout_s: float = Field(3.0, gt=0, le=30)
    #: A paid business order whose fulfilment the backend has not reported
    #: (``POST /orders/{no}/fulfilment``) this long after its payment is overdue: counted
    #: by ``paylane_fulfilment_overdue_orders`` each reconciler pass, alerted on
    #: (docs/operations.md, "Unfulfilled business orders").
    fulfilment_deadline_s: float = Field(3600.0, gt=0)
    #: The reconciler asks WeChat Pay about orders and refunds still pending after this
    #: long (docs/order-api.md, "The reconciler").
    reconcile_after_s: float = Field(60.0, ge=0)
    #: How often the reconciler runs in the order service, one replica at a time (0: not
    #: in-process; ``paylane reconcile`` runs it).
    reconcile_interval_s: float = Field(30.0, ge=0)
    #: A pending order is asked about once ``RECONCILE_AFTER_S`` old, again once this old,
    #: then when it expires; not every pass (most pending orders nobody opened). Refunds
    #: are asked about every pass.
    reconcile_second_look_s: float = Field(300.0, ge=0)
    #: WeChat Pay queries a reconciler pass has in flight at most.
    reconcile_concurrency: int = Field(16, ge=1)
    #: A pending refund WeChat Pay does not know (``RESOURCE_NOT_EXISTS``: its request
    #: never got there) is closed once this old; keep it longer than a refund request, its
    #: retries and the caller's retries take.
    reconcile_refund_grace_s: float = Field(600.0, ge=0)
    #: The daily bill reconciliation (bills.py) runs at this hour (0 to 23), China time, for
    #: the previous China day (WeChat Pay has a day's bills from about 10:00); -1: not
    #: in-process (``paylane reconcile bills`` runs it).
    bills_reconcile_hour: int = Field(10, ge=-1, le=23)
    #: Shipping declared to WeChat (docs/shipping.md): ``virtual`` uploads the shipping of
    #: every JSAPI (mini-program) payment once its effect is done (the plan granted, or the
    #: backend's fulfilment confirmed), as virtual goods; ``off`` uploads nothing. Turn it
    #: on when the mini-program is under WeChat's trade management (发货信息管理): its
    #: payments stay frozen until their shipping is declared. Needs ``WECHAT_APP_SECRET``
    #: (the access token) and calls ``WECHAT_API_BASE``.
    shipping_upload: Literal["off", "virtual"] = "off"
    #: An upload WeChat answers busy, not found yet or a system error is retried with
    #: backoff for this long after the order was queued; then the order is flagged
    #: (shipping state ``failed``).
    shipping_retry_for_s: float = Field(86400.0, gt=0)
    #: The first retry of an upload waits this long; each next one twice as long, at
    #: most an hour.
    shipping_retry_base_s: float = Field(15.0, gt=0)
    #: How often the uploader looks for uploads due (one replica at a time); it is also
    #: woken when an order is queued.
    shipping_interval_s: float = Field(10.0, gt=0)
    #: The effects sweep (sweep.py; docs/adoption.md, "The sweep"): an order another
    #: writer settled is announced once untouched this long (the cloud function's notify
    #: on its way wins).
    sweep_grace_s: float = Field(60.0, ge=0)
    #: The orders of each kind (paid, refunded) the effects sweep takes a pass, at most.
    sweep_limit: int = Field(500, ge=1)

    @model_validator(mode="after")
    def _apiv3_key_required(self) -> OrderSettings:
        if self.wechatpay_mode == CLOUDHOSTING:
            # Nothing is signed or encrypted on this path: the payment gate confirms every
            # payment with a query (docs/cloudhosting.md).
            return self
        if self.wechatpay_apiv3_key is None:
            raise ValueError(
                "WECHATPAY_APIV3_KEY is required: the order service checks and decrypts"
                " WeChat Pay's notifications itself before an order is paid (the payment gate)"
            )
        return self

    @model_validator(mode="after")
    def _shipping_needs_the_app_secret(self) -> OrderSettings:
        if self.shipping_upload != "off" and self.wechat_app_secret is None:
            raise ValueError(
                "SHIPPING_UPLOAD=virtual needs WECHAT_APP_SECRET: the shipping upload is"
                " authorised by an access token (stable_token) of the mini-program"
            )
        return self

    @field_validator("order_ttl_s")
    @classmethod
    def _within_prepay_id_lifetime(cls, value: int) -> int:
        if value > PREPAY_ID_TTL_S:
            raise ValueError(
                f"must be at most {PREPAY_ID_TTL_S} (2 hours): WeChat Pay's prepay_id expires"
                " two hours after the order is placed, and the pay parameters of an order"
                " older than that could not be paid"
            )
        return value

    @model_validator(mode="after")
    def _login_over_https(self) -> OrderSettings:
        base = self.wechat_api_base
        if not base.startswith("https://") and not local_sandbox(base, self.wechatpay_api_base):
            raise ValueError(
                "WECHAT_API_BASE must be https:// (jscode2session is sent WECHAT_APP_SECRET);"
                " http:// is for a local sandbox only: a loopback host (127.0.0.1, ::1,"
                " localhost), or the plain-http WECHATPAY_API_BASE's own host and port (the"
                " sandbox that plays both, as the compose stack's http://sandbox:8090)"
            )
        return self

    @field_validator("wechatpay_notify_url")
    @classmethod
    def _notify_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            # Required (as a missing field) unless WECHATPAY_MODE=cloudhosting.
            return required_unless_cloudhosting(value, info)  # type: ignore[no-any-return]
        if not value.startswith(("https://", "http://")) or "?" in value:
            raise ValueError("must be an http(s) URL without a query string")
        api_base = str(info.data.get("wechatpay_api_base", ""))
        if not notify_url_reachable(value, api_base):
            raise ValueError(
                "must be https:// (WeChat Pay calls only HTTPS notify URLs); http:// is for"
                " a sandbox: a loopback host (127.0.0.1, ::1, localhost) or a sandbox"
                " WECHATPAY_API_BASE (http://)"
            )
        return value


def notify_url_reachable(notify_url: str, api_base: str) -> bool:
    """Whether WeChat Pay (or the sandbox playing it) calls ``notify_url``: WeChat Pay
    only HTTPS ones. A sandbox takes plain HTTP: one on this machine (a loopback host), or
    the one ``api_base`` names when that is plain HTTP, which WeChat Pay's API never is
    (the compose stack's ``http://sandbox:8090`` notifying ``http://ingress:8080``)."""
    parts = urlsplit(notify_url)
    if parts.scheme == "https":
        return True
    return _loopback(parts.hostname or "") or api_base.startswith("http://")


def local_sandbox(url: str, wechatpay_api_base: str) -> bool:
    """Whether a plain-http ``url`` is a local sandbox: its host is a loopback one
    (127.0.0.0/8, ::1, ``localhost``: ``paylane dev``, ``make run``, the tests), or it is
    the very host and port of a plain-http ``WECHATPAY_API_BASE``, which WeChat Pay's API
    never is (the compose stack's one sandbox playing WeChat Pay and WeChat both)."""
    parts = urlsplit(url)
    if _loopback(parts.hostname or ""):
        return True
    pay = urlsplit(wechatpay_api_base)
    return pay.scheme == "http" and (pay.hostname, pay.port) == (parts.hostname, parts.port)


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
