"""What ingress's handlers read: one frozen object, built once in ``build_app`` from the
settings, secrets unwrapped there."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from paylane_common.broker.pressure import LoadAnnouncer
from paylane_common.contract.prices import PriceList
from paylane_common.wechatpay import NotificationVerifier


@dataclass(frozen=True)
class IngressConfig:
    #: Checks WeChat Pay's signature on ``POST /notify/wechatpay``.
    verifier: NotificationVerifier
    #: Decrypts the notification's resource.
    apiv3_key: bytes
    #: The ``X-Internal-Secret`` of the internal routes (``INTERNAL_API_SECRET``); "" when
    #: unset, which opens nothing.
    internal_secret: str
    #: ``GET /api/prices/current``'s answer.
    price_list: PriceList
    #: ``CLOUDHOSTING_TRUST_HEADERS``: ``/notify/cloudhosting`` requires the platform's
    #: ``X-WX-SOURCE`` and ``X-WX-ENV``.
    trust_platform_headers: bool = False
    #: ``CLOUDHOSTING_ENV_ID``: with the headers trusted, the ``X-WX-ENV`` they must name;
    #: "" when unset (any environment).
    cloudhosting_env_id: str = ""


INGRESS_CONFIG = web.AppKey("ingress_config", IngressConfig)
#: Told of every notification being answered (paylane_common.broker.pressure).
LOAD_ANNOUNCER = web.AppKey("load_announcer", LoadAnnouncer)
