"""Order service settings (DESIGN §2)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from paylane_common.merchant_api import MerchantApiSettings
from paylane_common.settings import (
    BaseServiceSettings,
    CatalogSettings,
    ConsumerSettings,
    TokenSecret,
)

from .client_address import TrustedProxySettings


class OrderSettings(
    BaseServiceSettings,
    ConsumerSettings,
    CatalogSettings,
    MerchantApiSettings,
    TrustedProxySettings,
):
    http_port: int = Field(8081, ge=1, le=65535)
    #: A payment for another merchant or app is flagged for review, never granted.
    wechatpay_appid: str = Field(min_length=1)
    #: Public URL of ingress's notify endpoint, sent when placing orders and refunds.
    wechatpay_notify_url: str
    internal_api_secret: SecretStr | None = None
    client_token_secret: TokenSecret
    order_ttl_s: int = Field(1800, ge=1)
    #: The reconciler looks at orders and refunds still pending after this long …
    reconcile_after_s: float = Field(60.0, ge=0)
    #: … every this many seconds (0 disables the in-process schedule).
    reconcile_interval_s: float = Field(30.0, ge=0)

    @field_validator("wechatpay_notify_url")
    @classmethod
    def _notify_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")) or "?" in value:
            raise ValueError("must be an http(s) URL without a query string")
        return value
