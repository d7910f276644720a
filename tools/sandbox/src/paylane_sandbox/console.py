"""The sandbox's pages: the console at ``/`` (orders, refunds and notifications, live, with
the control API's buttons), the checkout demo at ``/checkout``, and the QR code of a
``code_url`` (``GET /sandbox/qr?text=``, an SVG made by segno).

The pages are static files polling the control API; the checkout page talks to the order
API and the notifier through the same-origin proxy of :mod:`paylane_sandbox.demo_proxy`
and uses the JavaScript client of ``clients/js``, served as ``/paylane-client.js``.
"""

from __future__ import annotations

import io
from pathlib import Path

import segno
from aiohttp import web

from .errors import ControlError

STATIC = Path(__file__).parent / "static"
CLIENT_JS_NAME = "paylane-client.js"
#: Where the client library lives in a checkout of the repository (the wheel carries a
#: copy in ``static/``, see tools/sandbox/pyproject.toml).
REPO_CLIENT_JS = Path(__file__).parents[4] / "clients" / "js" / CLIENT_JS_NAME
#: A ``code_url`` is short (``weixin://wxpay/bizpayurl?pr=…``); this bounds the QR's size.
QR_MAX_TEXT = 512


def client_js_path() -> Path | None:
    """The client library's file: the wheel's copy, else the repository's."""
    for path in (STATIC / CLIENT_JS_NAME, REPO_CLIENT_JS):
        if path.is_file():
            return path
    return None


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})


async def console_page(request: web.Request) -> web.FileResponse:
    return _page("console.html")


async def checkout_page(request: web.Request) -> web.FileResponse:
    return _page("checkout.html")


async def client_js(request: web.Request) -> web.FileResponse:
    path = client_js_path()
    if path is None:
        raise web.HTTPNotFound(text=f"{CLIENT_JS_NAME} is not installed with this sandbox")
    return web.FileResponse(
        path, headers={"Content-Type": "text/javascript", "Cache-Control": "no-cache"}
    )


def qr_svg(text: str) -> str:
    """``text`` as a QR code (error correction M, as WeChat's own codes), an SVG whose
    size the page sets."""
    out = io.BytesIO()
    segno.make_qr(text, error="m").save(out, kind="svg", scale=1, omitsize=True, border=2)
    return out.getvalue().decode()


async def qr(request: web.Request) -> web.Response:
    text = request.query.get("text", "")
    if not text or len(text) > QR_MAX_TEXT:
        raise ControlError(400, "BAD_REQUEST", f"text: 1 to {QR_MAX_TEXT} characters")
    return web.Response(text=qr_svg(text), content_type="image/svg+xml")


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", console_page)
    r.add_get("/checkout", checkout_page)
    r.add_get(f"/{CLIENT_JS_NAME}", client_js)
    r.add_get("/sandbox/qr", qr)
    r.add_static("/static/", STATIC)
