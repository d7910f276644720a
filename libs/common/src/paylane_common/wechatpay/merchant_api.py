"""WeChat Pay settings shared by the services, and the API client they open with them.

``WechatPayKeysSettings``: how WeChat Pay's signatures are verified (public-key mode,
platform-certificate mode, or both during a migration), for notifications and responses.
``MerchantApiSettings``: what calling the API needs (merchant key, serial, base URL).
``wechatpay_api``: the client (and the certificate refresh) as an async context manager;
``use_wechatpay_client``: the same for an aiohttp app's lifetime.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
from aiohttp import web
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings

from paylane_common.runtime.exceptions import ConfigError
from paylane_common.runtime.settings import (
    ApiV3Key,
    HttpBaseUrl,
    NoneIfBlank,
    PrivateKeyPem,
    PublicKeyPem,
    secret_value,
)
from paylane_common.wechatpay import (
    CertificateRefresher,
    MerchantSigner,
    NotificationVerifier,
    VerifierKeys,
    WechatPayClient,
    WechatPayError,
    load_private_key,
)
from paylane_common.wechatpay.cloudhosting import (
    DEFAULT_CLOUDHOSTING_API_BASE,
    CloudHostingClient,
    CloudHostingTarget,
)

DEFAULT_API_BASE = "https://api.mch.weixin.qq.com"
#: How paylane reaches WeChat Pay: ``direct`` (APIv3, the merchant's own keys) or
#: ``cloudhosting`` (WeChat Cloud Hosting's open interface: no key, docs/cloudhosting.md).
WechatPayMode = Literal["direct", "cloudhosting"]
CLOUDHOSTING: WechatPayMode = "cloudhosting"
#: Marks a setting required in ``direct`` mode only (``paylane config check`` reads it).
DIRECT_ONLY: JsonDict = {"required_unless_mode": CLOUDHOSTING}


def required_unless_cloudhosting(value: Any, info: ValidationInfo) -> Any:
    """A field validator (``validate_default``): unset is "required" (as a missing
    field, reported with the others) unless ``WECHATPAY_MODE=cloudhosting``."""
    if value is None and info.data.get("wechatpay_mode", "direct") != CLOUDHOSTING:
        raise PydanticCustomError("missing", "Field required")
    return value


class WechatPayKeysSettings(BaseSettings):
    #: ``direct``: WeChat Pay's APIv3 with the merchant's own keys. ``cloudhosting``: on
    #: WeChat Cloud Hosting, through the platform's open interface (``/_/pay/*`` at
    #: ``CLOUDHOSTING_API_BASE``), which signs for the merchant: no merchant key, serial,
    #: APIv3 key or WeChat Pay public key is needed, and payment results arrive at
    #: ingress's ``POST /notify/cloudhosting`` (docs/cloudhosting.md).
    wechatpay_mode: WechatPayMode = "direct"
    #: Cloud Hosting only: believe the platform's ``X-WX-*`` headers. Ingress's
    #: ``/notify/cloudhosting`` then requires ``X-WX-SOURCE`` and ``X-WX-ENV`` (the latter
    #: equal to ``CLOUDHOSTING_ENV_ID`` when ingress is given it), and the order API takes
    #: ``X-WX-OPENID`` (``X-WX-UNIONID``) as the signed-in user. Set it only when the
    #: listeners are reachable through the platform alone: anyone who can reach them
    #: directly can write those headers.
    cloudhosting_trust_headers: bool = False
    #: WeChat Pay public key mode: the public key (PEM) WeChat Pay signs with, set together
    #: with ``WECHATPAY_PUBLIC_KEY_ID``. This mode, platform certificates, or both at once
    #: (a migration: docs/operations.md, "From platform certificates to the WeChat Pay
    #: public key").
    wechatpay_public_key: NoneIfBlank[PublicKeyPem] = None
    #: The id of ``WECHATPAY_PUBLIC_KEY`` (``PUB_KEY_ID_…``): a ``Wechatpay-Serial`` equal
    #: to it is verified with that key.
    wechatpay_public_key_id: str | None = None
    #: Platform certificate mode: a directory of WeChat Pay platform certificates (PEM
    #: files), each serial verified with its own; may be set beside the public key mode.
    wechatpay_platform_certs_dir: Path | None = None
    #: A ``Wechatpay-Timestamp`` this many seconds or more away from now is stale (whole
    #: seconds, as wechatpay-go counts): a notification is refused with 401, an API answer
    #: is unverified.
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
        if (
            not public_key_mode
            and self.wechatpay_platform_certs_dir is None
            and self.wechatpay_mode != CLOUDHOSTING
        ):
            raise ValueError(
                "set WECHATPAY_PUBLIC_KEY(+_ID) or WECHATPAY_PLATFORM_CERTS_DIR (or both)"
            )
        return self

    def verifier_keys(self) -> VerifierKeys:
        return VerifierKeys.from_sources(
            self.wechatpay_public_key_id or None,
            self.wechatpay_public_key,
            self.wechatpay_platform_certs_dir,
        )


class MerchantApiSettings(WechatPayKeysSettings):
    #: The merchant id (``mchid``): orders are placed under it and payments for another
    #: merchant go to ``needs_review``.
    wechatpay_mchid: str = Field(min_length=1)
    #: The merchant API private key (RSA, unencrypted PKCS#8 or PKCS#1 PEM) requests to
    #: WeChat Pay are signed with. Required in ``direct`` mode; not needed with
    #: ``WECHATPAY_MODE=cloudhosting`` (the platform signs).
    wechatpay_merchant_private_key: NoneIfBlank[PrivateKeyPem] = Field(
        None, validate_default=True, json_schema_extra=DIRECT_ONLY
    )
    #: The serial number of the merchant API certificate, named in each request's
    #: ``Authorization``. Required in ``direct`` mode; not needed in ``cloudhosting``.
    wechatpay_merchant_serial_no: NoneIfBlank[str] = Field(
        None, validate_default=True, json_schema_extra=DIRECT_ONLY
    )
    #: WeChat Pay's API host; the sandbox's URL locally (``http://`` is allowed for it).
    wechatpay_api_base: HttpBaseUrl = DEFAULT_API_BASE
    #: The 32-byte APIv3 key (AEAD_AES_256_GCM): notifications and platform certificates
    #: are encrypted with it. Required by the order service, which verifies and decrypts
    #: the notification itself before an order may be paid (the payment gate).
    wechatpay_apiv3_key: NoneIfBlank[ApiV3Key] = None
    #: ``cloudhosting`` mode: where the open interface is (``/_/pay/*``); the sandbox's URL
    #: locally. The container calls it over plain HTTP inside the platform.
    cloudhosting_api_base: HttpBaseUrl = DEFAULT_CLOUDHOSTING_API_BASE
    #: ``cloudhosting`` mode: the Cloud Hosting environment id (``env_id``, the ``X-WX-ENV``
    #: of the platform's calls) that receives payment and refund results.
    cloudhosting_env_id: NoneIfBlank[str] = None
    #: ``cloudhosting`` mode: the Cloud Hosting service that runs ingress, where the
    #: platform delivers payment and refund results (``container.service``).
    cloudhosting_service: NoneIfBlank[str] = None
    #: ``cloudhosting`` mode: the path on that service results are delivered to
    #: (``container.path``): ingress's ``/notify/cloudhosting``.
    cloudhosting_callback_path: str = Field("/notify/cloudhosting", pattern=r"^/\S*$")

    _merchant_key_in_direct_mode = field_validator(
        "wechatpay_merchant_private_key", "wechatpay_merchant_serial_no"
    )(required_unless_cloudhosting)

    @model_validator(mode="after")
    def _mode_needs(self) -> MerchantApiSettings:
        if self.wechatpay_mode != CLOUDHOSTING:
            return self
        missing = [
            name
            for name, value in (
                ("CLOUDHOSTING_ENV_ID", self.cloudhosting_env_id),
                ("CLOUDHOSTING_SERVICE", self.cloudhosting_service),
            )
            if not value
        ]
        if missing:
            raise ValueError(
                f"WECHATPAY_MODE=cloudhosting needs {' and '.join(missing)}: where the"
                " platform delivers payment results (no merchant key is needed)"
            )
        return self

    def cloudhosting_target(self) -> CloudHostingTarget:
        """Where the platform delivers results (``cloudhosting`` mode)."""
        return CloudHostingTarget(
            self.cloudhosting_env_id or "",
            self.cloudhosting_service or "",
            self.cloudhosting_callback_path,
        )


class MerchantApiConfig(Protocol):
    """The settings the API client is built from: :class:`MerchantApiSettings`, or a
    service's own whose merchant fields are optional (ingress, which calls the API only to
    refresh platform certificates, and only when they are all set)."""

    @property
    def wechatpay_mchid(self) -> str | None: ...
    @property
    def wechatpay_merchant_serial_no(self) -> str | None: ...
    @property
    def wechatpay_merchant_private_key(self) -> SecretStr | None: ...
    @property
    def wechatpay_api_base(self) -> str: ...
    @property
    def wechatpay_apiv3_key(self) -> SecretStr | None: ...
    @property
    def wechatpay_platform_certs_dir(self) -> Path | None: ...
    @property
    def notify_max_skew_s(self) -> int: ...
    def verifier_keys(self) -> VerifierKeys: ...


@dataclass(frozen=True)
class WechatPayApi:
    """An open API client and the parts it was built from."""

    client: WechatPayClient
    #: None in ``cloudhosting`` mode: the platform signs, and hands out the pay parameters.
    signer: MerchantSigner | None
    #: The keys responses are verified with (and the refresher adds certificates to).
    keys: VerifierKeys
    #: In certificate mode with an APIv3 key: downloads the platform certificates every
    #: 6 h, and soon after ``request_refresh()``.
    refresher: CertificateRefresher | None = None


@asynccontextmanager
async def wechatpay_api(
    settings: MerchantApiConfig, *, verifier: NotificationVerifier | None = None
) -> AsyncIterator[WechatPayApi]:
    """The API client on its own HTTP session and, in certificate mode with an APIv3 key,
    the background certificate refresh; both end on leaving.

    ``verifier`` checks the responses, and the refresher keeps its keys current: pass the
    one notifications are verified with to have it learn new serials too. By default, one
    over ``settings.verifier_keys()``.

    With ``WECHATPAY_MODE=cloudhosting`` (a :class:`MerchantApiSettings`), the client is a
    :class:`CloudHostingClient` on the platform's open interface, with no signer.
    """
    if isinstance(settings, MerchantApiSettings) and settings.wechatpay_mode == CLOUDHOSTING:
        async with aiohttp.ClientSession() as session:
            hosted = CloudHostingClient(
                base_url=settings.cloudhosting_api_base,
                mchid=settings.wechatpay_mchid,
                target=settings.cloudhosting_target(),
                session=session,
            )
            yield WechatPayApi(hosted, None, hosted.verifier.keys)
        return
    mchid = settings.wechatpay_mchid
    serial_no = settings.wechatpay_merchant_serial_no
    private_key = secret_value(settings.wechatpay_merchant_private_key)
    if not (mchid and serial_no and private_key):
        raise ConfigError(
            "calling the WeChat Pay API needs WECHATPAY_MCHID, WECHATPAY_MERCHANT_SERIAL_NO"
            " and WECHATPAY_MERCHANT_PRIVATE_KEY"
        )
    signer = MerchantSigner(mchid, serial_no, load_private_key(private_key))
    if verifier is None:
        verifier = NotificationVerifier(
            settings.verifier_keys(), max_skew_s=settings.notify_max_skew_s
        )
    apiv3_key = secret_value(settings.wechatpay_apiv3_key)
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        client = WechatPayClient(
            base_url=settings.wechatpay_api_base,
            mchid=mchid,
            signer=signer,
            verifier=verifier,
            session=session,
        )
        refresher = None
        if settings.wechatpay_platform_certs_dir is not None and apiv3_key:
            refresher = CertificateRefresher(client, verifier.keys, apiv3_key)
            refresher.start()
            stack.push_async_callback(refresher.stop)
        yield WechatPayApi(client, signer, verifier.keys, refresher)


WECHATPAY_CLIENT = web.AppKey("wechatpay_client", WechatPayClient)
MERCHANT_SIGNER = web.AppKey("merchant_signer", MerchantSigner)
CERT_REFRESHER = web.AppKey("cert_refresher", CertificateRefresher)


def use_wechatpay_client(app: web.Application, settings: MerchantApiSettings) -> None:
    """:func:`wechatpay_api` for the app's lifetime, its parts under the app keys above;
    the platform certificates (if refreshed) are downloaded once at start."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with wechatpay_api(settings) as api:
            app[WECHATPAY_CLIENT] = api.client
            if api.signer is not None:
                app[MERCHANT_SIGNER] = api.signer
            if api.refresher is not None:
                app[CERT_REFRESHER] = api.refresher
                api.refresher.request_refresh()
            yield

    app.cleanup_ctx.append(ctx)


__all__ = [
    "CERT_REFRESHER",
    "CLOUDHOSTING",
    "MERCHANT_SIGNER",
    "WECHATPAY_CLIENT",
    "MerchantApiConfig",
    "MerchantApiSettings",
    "WechatPayApi",
    "WechatPayKeysSettings",
    "WechatPayMode",
    "use_wechatpay_client",
    "wechatpay_api",
]
