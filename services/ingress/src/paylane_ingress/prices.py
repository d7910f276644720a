"""``GET /api/prices/current`` (no authentication): the catalog's prices in yuan, as the
cloud function reads them before placing an order (docs/cloud-function.md)."""

from __future__ import annotations

from aiohttp import web

from paylane_common.prices import dumps

from .config import INGRESS_CONFIG


async def current_prices(request: web.Request) -> web.Response:
    return web.Response(
        text=dumps(request.app[INGRESS_CONFIG].price_list.answer()), content_type="application/json"
    )
