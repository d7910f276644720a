"""Ingress settings: the APIv3 key and the WeChat Pay verification keys, the cloud
function's secret, the package catalog it reads prices from (docs/configuration.md)."""

from __future__ import annotations

from pydantic import Field, model_validator

from paylane_common.runtime.settings import (
    ApiSecretSettings,
    ApiV3Key,
    BaseServiceSettings,
    CatalogSettings,
    HttpBaseUrl,
    NoneIfBlank,
    PrivateKeyPem,
)
from paylane_common.wechatpay.merchant_api import (
    CLOUDHOSTING,
    DEFAULT_API_BASE,
    WechatPayKeysSettings,
)


class IngressSettings(
    BaseServiceSettings, WechatPayKeysSettings, CatalogSettings, ApiSecretSettings
):
    """``PACKAGE_CATALOG`` and ``PRICES_EFFECTIVE_AT`` price ``GET /api/prices/current``:
    give ingress the same ``PACKAGE_CATALOG`` as the order service."""

    http_port: int = Field(8080, ge=1, le=65535)
    #: The 32-byte APIv3 key notifications are decrypted with (AEAD_AES_256_GCM).
    #: Required in ``direct`` mode; with ``WECHATPAY_MODE=cloudhosting`` results arrive
    #: unencrypted on ``/notify/cloudhosting`` and none is needed.
    wechatpay_apiv3_key: NoneIfBlank[ApiV3Key] = None
    # INTERNAL_API_SECRET (ApiSecretSettings): the cloud function's ``X-Internal-Secret``.
    #: Optional for ingress: with ``WECHATPAY_MCHID``, the merchant key and serial (and a
    #: certs dir) platform certificates are refreshed in the background, so a new
    #: ``Wechatpay-Serial`` is accepted without a restart.
    wechatpay_mchid: str | None = None
    #: Optional for ingress: the merchant API key that downloads platform certificates
    #: (with ``WECHATPAY_MCHID``, ``WECHATPAY_MERCHANT_SERIAL_NO`` and a certs dir).
    wechatpay_merchant_private_key: NoneIfBlank[PrivateKeyPem] = None
    #: Optional for ingress: the merchant API certificate serial, for the certificate
    #: refresh.
    wechatpay_merchant_serial_no: str | None = None
    #: WeChat Pay's API host, asked only for platform certificates.
    wechatpay_api_base: HttpBaseUrl = DEFAULT_API_BASE
    #: Above this CPU use (in cores, over the last tenth of a second) ingress announces it is
    #: busy and the consumers wait meanwhile (paylane_common.broker.pressure). 0: never by CPU.
    ingress_busy_cpu: float = Field(0.5, ge=0, le=64)
    #: … and at once when this many notifications are being answered together (a burst
    #: meeting a busy machine; at 1,000/s, 32 in flight means about 32 ms each). 0: never.
    ingress_busy_in_flight: int = Field(32, ge=0, le=100_000)
    #: At most this many rejected notifications a second (per process) are recorded for
    #: the operators' console (``notification.rejected``, published in the background);
    #: the rest are counted in ``paylane_ingress_rejections_unrecorded_total``. 0: none.
    ingress_rejections_per_s: int = Field(20, ge=0, le=10_000)
    #: ``cloudhosting`` mode with ``CLOUDHOSTING_TRUST_HEADERS``: the environment whose
    #: platform calls ``/notify/cloudhosting`` (its ``X-WX-ENV``); unset, any is taken.
    cloudhosting_env_id: NoneIfBlank[str] = None

    @model_validator(mode="after")
    def _apiv3_key_required(self) -> IngressSettings:
        if self.wechatpay_apiv3_key is None and self.wechatpay_mode != CLOUDHOSTING:
            raise ValueError(
                "WECHATPAY_APIV3_KEY is required: WeChat Pay's notifications are decrypted"
                " with it (WECHATPAY_MODE=cloudhosting needs none)"
            )
        return self

    @property
    def refreshes_certificates(self) -> bool:
        return bool(
            self.wechatpay_platform_certs_dir
            and self.wechatpay_mchid
            and self.wechatpay_merchant_private_key
            and self.wechatpay_merchant_serial_no
        )
