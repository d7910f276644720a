"""``GET /api/prices/current`` (no authentication): the catalog's prices in yuan, as the
cloud function reads them before placing an order (SEED_SYSTEM.md §3)."""

from __future__ import annotations

from aiohttp import web

from paylane_common.prices import PriceList, dumps

PRICE_LIST = web.AppKey("price_list", PriceList)


async def current_prices(request: web.Request) -> web.Response:
    return web.Response(
        text=dumps(request.app[PRICE_LIST].answer()), content_type="application/json"
    )
