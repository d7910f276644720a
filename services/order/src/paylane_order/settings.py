"""Order service settings (DESIGN §2)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from paylane_common.settings import BaseServiceSettings, CatalogSettings, TokenSecret


class OrderSettings(BaseServiceSettings, CatalogSettings):
    http_port: int = Field(8081, ge=1, le=65535)
    #: A payment for another merchant or app is flagged for review, never granted.
    wechatpay_mchid: str = Field(min_length=1)
    wechatpay_appid: str = Field(min_length=1)
    internal_api_secret: SecretStr | None = None
    client_token_secret: TokenSecret | None = None
    order_ttl_s: int = Field(1800, ge=60)
