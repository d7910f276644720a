"""Ingress settings: the APIv3 key and the WeChat Pay verification keys (DESIGN §2), the
cloud function's secret, the package catalog it reads prices from."""

from __future__ import annotations

from pydantic import Field

from paylane_common.merchant_api import DEFAULT_API_BASE, WechatPayKeysSettings
from paylane_common.settings import (
    ApiSecretSettings,
    ApiV3Key,
    BaseServiceSettings,
    CatalogSettings,
    HttpBaseUrl,
    NoneIfBlank,
    PrivateKeyPem,
)


class IngressSettings(
    BaseServiceSettings, WechatPayKeysSettings, CatalogSettings, ApiSecretSettings
):
    """``PACKAGE_CATALOG`` and ``PRICES_EFFECTIVE_AT`` price ``GET /api/prices/current``:
    give ingress the same ``PACKAGE_CATALOG`` as the order service."""

    http_port: int = Field(8080, ge=1, le=65535)
    wechatpay_apiv3_key: ApiV3Key
    # INTERNAL_API_SECRET (ApiSecretSettings): the cloud function's ``X-Internal-Secret``.
    #: Optional: with these (and a certs dir) platform certificates are refreshed in the
    #: background, so a new Wechatpay-Serial is accepted without a restart.
    wechatpay_mchid: str | None = None
    wechatpay_merchant_private_key: NoneIfBlank[PrivateKeyPem] = None
    wechatpay_merchant_serial_no: str | None = None
    wechatpay_api_base: HttpBaseUrl = DEFAULT_API_BASE
    #: Above this CPU use (in cores, over the last tenth of a second) ingress announces it is
    #: busy and the consumers wait meanwhile (paylane_common.pressure). 0: never by CPU.
    ingress_busy_cpu: float = Field(0.5, ge=0, le=64)
    #: … and at once when this many notifications are being answered together (a burst
    #: meeting a busy machine; at 1,000/s, 32 in flight means about 32 ms each). 0: never.
    ingress_busy_in_flight: int = Field(32, ge=0, le=100_000)

    @property
    def refreshes_certificates(self) -> bool:
        return bool(
            self.wechatpay_platform_certs_dir
            and self.wechatpay_mchid
            and self.wechatpay_merchant_private_key
            and self.wechatpay_merchant_serial_no
        )
