"""What the order service's parts read, built once in ``build_app`` from the settings
(secrets unwrapped there): the merchant, for placing orders and checking payments, and
the HTTP API's configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from paylane_common.catalog import Package
from paylane_common.prices import PriceList

from .client_address import Network


@dataclass(frozen=True)
class MerchantConfig:
    """The merchant and app orders are placed for; a payment for another one is flagged
    for review, never granted."""

    mchid: str
    appid: str
    #: Ingress's public notify URL, sent with every order and refund placed.
    notify_url: str
    #: How long a placed order stays payable (its ``time_expire``).
    order_ttl_s: int


@dataclass(frozen=True)
class ApiConfig:
    """What the order API's handlers read."""

    catalog: Mapping[str, Package]
    #: ``X-Internal-Secret`` of the app backend (``BACKEND_API_SECRET``); "" opens nothing.
    backend_secret: str
    #: Signs and checks the end users' tokens (``CLIENT_TOKEN_SECRET``).
    token_secret: str
    token_ttl_s: int
    #: ``GET /prices/current``'s ``success``/``data`` (SEED_SYSTEM.md §3).
    price_list: PriceList
    #: The proxies whose ``X-Forwarded-For`` is believed (``TRUSTED_PROXIES``).
    trusted_proxies: tuple[Network, ...]


API_CONFIG = web.AppKey("api_config", ApiConfig)
