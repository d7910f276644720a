"""What the order service's parts read: one frozen :class:`OrderConfig` under
``ORDER_CONFIG``, built once in ``build_app`` from the settings (secrets unwrapped there).
The merchant and the reconciler's configuration are value objects of their own, handed
to the parts that need only them; ``paylane reconcile`` builds the reconciler's the same
way."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from paylane_common.contract.catalog import Package
from paylane_common.contract.prices import PriceList
from paylane_common.contract.tokens import TokenSigner
from paylane_common.runtime.settings import default_of, secret_value
from paylane_common.wechatpay.cloudhosting import CLOUDHOSTING_TRADE_TYPES

from .client_address import Network
from .settings import OrderSettings
from .webhooks.dispatcher import WebhookConfig


@dataclass(frozen=True)
class MerchantConfig:
    """The merchant and app orders are placed for; a payment for another one is flagged
    for review, never granted."""

    mchid: str
    appid: str
    #: Ingress's public notify URL, sent with every order and refund placed ("" in
    #: ``cloudhosting`` mode: the platform delivers to the container).
    notify_url: str
    #: How long a placed order stays payable (its ``time_expire``).
    order_ttl_s: int
    #: The mobile app's appid, for APP orders; None: APP is not offered.
    app_appid: str | None = None
    #: The trade types offered, when not all: WeChat Cloud Hosting's open interface
    #: places JSAPI and NATIVE only.
    trade_types: frozenset[str] | None = None

    def offers(self, trade_type: str) -> bool:
        return self.trade_types is None or trade_type in self.trade_types

    def appid_for(self, trade_type: str) -> str | None:
        """The appid an order of this trade type is placed under (None: not offered)."""
        return self.app_appid if trade_type == "APP" else self.appid


@dataclass(frozen=True)
class ReconcilerConfig:
    """How the reconciler works (reconciler.py); the defaults are the settings' (each
    written once, on its :class:`OrderSettings` Field)."""

    #: Orders and refunds still pending after this long are asked about …
    after_s: float = default_of(OrderSettings, "reconcile_after_s")
    #: … every this many seconds, when it runs on its own schedule. A pending order is
    #: asked about once ``after_s`` old, again once ``second_look_s`` old, then when it
    #: expires (reconciler.py).
    interval_s: float = default_of(OrderSettings, "reconcile_interval_s")
    second_look_s: float = default_of(OrderSettings, "reconcile_second_look_s")
    #: Pending rows read a page (not a setting).
    batch_size: int = 100
    #: WeChat Pay queries in flight at most.
    concurrency: int = default_of(OrderSettings, "reconcile_concurrency")
    #: A refund WeChat Pay does not know is closed once this old.
    refund_grace_s: float = default_of(OrderSettings, "reconcile_refund_grace_s")
    #: When an order another writer made (no ``expires_at``) expires.
    order_ttl_s: float = default_of(OrderSettings, "order_ttl_s")
    #: The effects sweep: orders another writer settled, announced once untouched this
    #: long, at most ``sweep_limit`` of each kind a pass.
    sweep_grace_s: float = default_of(OrderSettings, "sweep_grace_s")
    sweep_limit: int = default_of(OrderSettings, "sweep_limit")
    #: The daily bill reconciliation's hour (China time); -1: not run in the service.
    bills_hour: int = default_of(OrderSettings, "bills_reconcile_hour")
    #: Paid business orders unfulfilled this long after payment are overdue.
    fulfilment_deadline_s: float = default_of(OrderSettings, "fulfilment_deadline_s")

    @classmethod
    def from_settings(cls, settings: OrderSettings) -> ReconcilerConfig:
        return cls(
            after_s=settings.reconcile_after_s,
            interval_s=settings.reconcile_interval_s,
            second_look_s=settings.reconcile_second_look_s,
            concurrency=settings.reconcile_concurrency,
            refund_grace_s=settings.reconcile_refund_grace_s,
            order_ttl_s=settings.order_ttl_s,
            sweep_grace_s=settings.sweep_grace_s,
            sweep_limit=settings.sweep_limit,
            bills_hour=settings.bills_reconcile_hour,
            fulfilment_deadline_s=settings.fulfilment_deadline_s,
        )


@dataclass(frozen=True)
class StatusQueryConfig:
    """``GET /orders/{no}`` asking WeChat Pay about a pending order (status_query.py)."""

    #: Asked once pending this long; negative: never.
    after_s: float = default_of(OrderSettings, "order_query_after_s")
    #: At most once per this many seconds an order, across replicas.
    interval_s: float = default_of(OrderSettings, "order_query_interval_s")
    #: The most a GET waits for the answer.
    timeout_s: float = default_of(OrderSettings, "order_query_timeout_s")

    @classmethod
    def from_settings(cls, settings: OrderSettings) -> StatusQueryConfig:
        return cls(
            after_s=settings.order_query_after_s,
            interval_s=settings.order_query_interval_s,
            timeout_s=settings.order_query_timeout_s,
        )


@dataclass(frozen=True)
class ShippingConfig:
    """Shipping declared to WeChat (shipping.py, docs/shipping.md)."""

    #: ``off`` or ``virtual`` (``SHIPPING_UPLOAD``).
    mode: str = default_of(OrderSettings, "shipping_upload")
    #: WeChat's API host (``WECHAT_API_BASE``), the mini-program and its AppSecret.
    api_base: str = default_of(OrderSettings, "wechat_api_base")
    appid: str = ""
    app_secret: str = ""
    #: Retries for this long after the order was queued, the first after ``retry_base_s``.
    retry_for_s: float = default_of(OrderSettings, "shipping_retry_for_s")
    retry_base_s: float = default_of(OrderSettings, "shipping_retry_base_s")
    #: The uploader's pace when nothing wakes it.
    interval_s: float = default_of(OrderSettings, "shipping_interval_s")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @classmethod
    def from_settings(cls, settings: OrderSettings) -> ShippingConfig:
        return cls(
            mode=settings.shipping_upload,
            api_base=settings.wechat_api_base,
            appid=settings.wechatpay_appid,
            app_secret=secret_value(settings.wechat_app_secret),
            retry_for_s=settings.shipping_retry_for_s,
            retry_base_s=settings.shipping_retry_base_s,
            interval_s=settings.shipping_interval_s,
        )


@dataclass(frozen=True)
class OrderConfig:
    """What the order API's handlers, the consumer's appliers and the reconciler read."""

    catalog: Mapping[str, Package]
    #: ``X-Internal-Secret`` of the app backend (``BACKEND_API_SECRET``); "" opens nothing.
    backend_secret: str
    #: Signs the end users' tokens (``CLIENT_TOKEN_PRIVATE_KEY``) and checks them (its
    #: public key and ``CLIENT_TOKEN_PUBLIC_KEY``'s).
    tokens: TokenSigner
    token_ttl_s: int
    #: ``GET /prices/current``'s ``success``/``data`` (docs/cloud-function.md).
    price_list: PriceList
    #: The proxies whose ``X-Forwarded-For`` is believed (``TRUSTED_PROXIES``).
    trusted_proxies: tuple[Network, ...]
    #: Mini-program sign-in: WeChat's API host and the AppSecret ("" answers 503).
    wechat_api_base: str
    wechat_app_secret: str
    #: Decrypts the WeChat Pay notifications payments carry (the payment gate).
    apiv3_key: str
    merchant: MerchantConfig
    reconciler: ReconcilerConfig
    status_query: StatusQueryConfig = StatusQueryConfig()
    shipping: ShippingConfig = ShippingConfig()
    #: Per replica: sign-ins a client address, orders a user may make a minute (0: no
    #: limit); unpaid pending orders a user may have at once (0: no cap).
    login_rate_per_min: int = default_of(OrderSettings, "login_rate_per_min")
    order_rate_per_min: int = default_of(OrderSettings, "order_rate_per_min")
    max_pending_orders: int = default_of(OrderSettings, "max_pending_orders")
    #: A repeated ``POST /orders`` within this many seconds answers the pending order.
    duplicate_order_window_s: int = default_of(OrderSettings, "duplicate_order_window_s")
    #: Webhooks to the backend (``WEBHOOK_*``, webhooks/).
    webhooks: WebhookConfig = field(default_factory=WebhookConfig)
    #: ``WECHATPAY_MODE=cloudhosting``: WeChat Pay through Cloud Hosting's open interface.
    cloudhosting: bool = False
    #: ``CLOUDHOSTING_TRUST_HEADERS``: ``X-WX-OPENID`` is the signed-in user.
    trust_platform_headers: bool = False

    @classmethod
    def from_settings(cls, settings: OrderSettings) -> OrderConfig:
        return cls(
            catalog=settings.catalog,
            backend_secret=secret_value(settings.backend_api_secret),
            tokens=TokenSigner.from_pem(
                secret_value(settings.client_token_private_key), settings.client_token_public_key
            ),
            token_ttl_s=settings.client_token_ttl_s,
            price_list=PriceList.of(settings.catalog, settings.prices_effective_at),
            trusted_proxies=settings.trusted_proxies,
            wechat_api_base=settings.wechat_api_base,
            wechat_app_secret=secret_value(settings.wechat_app_secret),
            apiv3_key=secret_value(settings.wechatpay_apiv3_key),
            merchant=MerchantConfig(
                mchid=settings.wechatpay_mchid,
                appid=settings.wechatpay_appid,
                app_appid=settings.wechatpay_app_appid,
                notify_url=settings.wechatpay_notify_url or "",
                order_ttl_s=settings.order_ttl_s,
                trade_types=frozenset(CLOUDHOSTING_TRADE_TYPES)
                if settings.wechatpay_mode == "cloudhosting"
                else None,
            ),
            reconciler=ReconcilerConfig.from_settings(settings),
            status_query=StatusQueryConfig.from_settings(settings),
            shipping=ShippingConfig.from_settings(settings),
            login_rate_per_min=settings.login_rate_per_min,
            order_rate_per_min=settings.order_rate_per_min,
            max_pending_orders=settings.max_pending_orders,
            duplicate_order_window_s=settings.duplicate_order_window_s,
            webhooks=WebhookConfig.from_settings(settings),
            cloudhosting=settings.wechatpay_mode == "cloudhosting",
            trust_platform_headers=settings.cloudhosting_trust_headers,
        )


ORDER_CONFIG = web.AppKey("order_config", OrderConfig)
