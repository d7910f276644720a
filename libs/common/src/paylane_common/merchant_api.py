"""WeChat Pay settings shared by the services, and the API client as an app resource.

``WechatPayKeysSettings``: how WeChat Pay's signatures are verified (public-key mode,
platform-certificate mode, or both during a migration), for notifications and responses.
``MerchantApiSettings``: what calling the API needs (merchant key, serial, base URL).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings

from .settings import ApiV3Key, NoneIfBlank, PrivateKeyPem, PublicKeyPem, secret_value
from .wechatpay import (
    CertificateRefresher,
    MerchantSigner,
    NotificationVerifier,
    VerifierKeys,
    WechatPayClient,
    WechatPayError,
    load_private_key,
)

DEFAULT_API_BASE = "https://api.mch.weixin.qq.com"


class WechatPayKeysSettings(BaseSettings):
    wechatpay_public_key: NoneIfBlank[PublicKeyPem] = None
    wechatpay_public_key_id: str | None = None
    wechatpay_platform_certs_dir: Path | None = None
    notify_max_skew_s: int = Field(300, ge=1, le=3600)

    @field_validator("wechatpay_platform_certs_dir")
    @classmethod
    def _certificates_parse(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_dir():
            raise ValueError("is not a directory")
        try:
            VerifierKeys.from_sources(platform_certs_dir=value)
        except WechatPayError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_key_mode(self) -> WechatPayKeysSettings:
        public_key_mode = self.wechatpay_public_key is not None
        if public_key_mode != bool(self.wechatpay_public_key_id):
            raise ValueError(
                "WECHATPAY_PUBLIC_KEY and WECHATPAY_PUBLIC_KEY_ID must be set together"
            )
        if not public_key_mode and self.wechatpay_platform_certs_dir is None:
            raise ValueError(
                "set WECHATPAY_PUBLIC_KEY(+_ID) or WECHATPAY_PLATFORM_CERTS_DIR (or both)"
            )
        return self

    def verifier_keys(self) -> VerifierKeys:
        return VerifierKeys.from_sources(
            self.wechatpay_public_key_id,
            self.wechatpay_public_key,
            self.wechatpay_platform_certs_dir,
        )


class MerchantApiSettings(WechatPayKeysSettings):
    wechatpay_mchid: str = Field(min_length=1)
    wechatpay_merchant_private_key: PrivateKeyPem
    wechatpay_merchant_serial_no: str = Field(min_length=1)
    wechatpay_api_base: str = DEFAULT_API_BASE
    #: Only for downloading platform certificates (certificate mode).
    wechatpay_apiv3_key: NoneIfBlank[ApiV3Key] = None

    @field_validator("wechatpay_api_base")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")


WECHATPAY_CLIENT = web.AppKey("wechatpay_client", WechatPayClient)
VERIFIER_KEYS = web.AppKey("verifier_keys", VerifierKeys)
MERCHANT_SIGNER = web.AppKey("merchant_signer", MerchantSigner)
CERT_REFRESHER = web.AppKey("cert_refresher", CertificateRefresher)


def use_wechatpay_client(
    app: web.Application, settings: MerchantApiSettings, *, keys: VerifierKeys | None = None
) -> None:
    """The API client (and, in certificate mode with an APIv3 key, the background
    certificate refresh) for the app's lifetime."""
    keys = keys or settings.verifier_keys()
    signer = MerchantSigner(
        settings.wechatpay_mchid,
        settings.wechatpay_merchant_serial_no,
        load_private_key(secret_value(settings.wechatpay_merchant_private_key)),
    )
    app[VERIFIER_KEYS] = keys
    app[MERCHANT_SIGNER] = signer

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as session:
            client = WechatPayClient(
                base_url=settings.wechatpay_api_base,
                mchid=settings.wechatpay_mchid,
                signer=signer,
                verifier=NotificationVerifier(keys, max_skew_s=settings.notify_max_skew_s),
                session=session,
            )
            app[WECHATPAY_CLIENT] = client
            refresher = None
            apiv3_key = secret_value(settings.wechatpay_apiv3_key)
            if settings.wechatpay_platform_certs_dir is not None and apiv3_key:
                refresher = CertificateRefresher(client, keys, apiv3_key)
                app[CERT_REFRESHER] = refresher
                refresher.request_refresh()
                refresher.start()
            yield
            if refresher is not None:
                await refresher.stop()

    app.cleanup_ctx.append(ctx)


__all__ = [
    "CERT_REFRESHER",
    "MERCHANT_SIGNER",
    "VERIFIER_KEYS",
    "WECHATPAY_CLIENT",
    "MerchantApiSettings",
    "WechatPayKeysSettings",
    "use_wechatpay_client",
]
