"""``GET /api/prices/current`` (no authentication): the catalog's prices in yuan, as the
cloud function reads them before placing an order (docs/cloud-function.md)."""

from __future__ import annotations

from aiohttp import web

from paylane_common.contract.prices import answer_text

from .config import INGRESS_CONFIG


async def current_prices(request: web.Request) -> web.Response:
    answer = request.app[INGRESS_CONFIG].price_list.reply()
    return web.Response(text=answer_text(answer), content_type="application/json")
