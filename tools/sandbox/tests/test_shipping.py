"""WeChat's shipping service (发货信息管理) and ``stable_token`` as the sandbox plays them:
tokens, the upload's checks and errcodes, get_order's ``order_state``, injected errcodes
and the shipping reminder."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from paylane_common.wechatpay.testing import APPID, MCHID, PAYER_OPENID


async def _post(sandbox: Any, path: str, body: Any, token: str | None = None) -> dict[str, Any]:
    params = {"access_token": token} if token is not None else None
    async with sandbox.client.post(path, json=body, params=params) as response:
        assert response.status == 200  # WeChat answers errors with 200 and an errcode
        answer: dict[str, Any] = await response.json()
        return answer


async def _token(sandbox: Any, force: bool = False) -> dict[str, Any]:
    body = {"grant_type": "client_credential", "appid": APPID, "secret": "s"}
    return await _post(sandbox, "/cgi-bin/stable_token", {**body, "force_refresh": force})


async def _paid(sandbox: Any) -> tuple[str, str]:
    """A JSAPI order placed and paid by the kit's payer: (out_trade_no, transaction_id)."""
    body, placed = await sandbox.place("jsapi")
    assert placed.status == 200
    no = body["out_trade_no"]
    paid = await sandbox.control("POST", f"/sandbox/orders/{no}/pay", {"notify": False})
    return no, paid.json["transaction_id"]


def _upload(transaction_id: str, **changes: Any) -> dict[str, Any]:
    body = {
        "order_key": {"order_number_type": 2, "transaction_id": transaction_id},
        "logistics_type": 3,
        "delivery_mode": 1,
        "shipping_list": [{"item_desc": "paylane premium"}],
        "upload_time": "2026-12-07T09:29:21+08:00",
        "payer": {"openid": PAYER_OPENID},
    }
    body.update(changes)
    return body


async def test_a_token_is_reused_until_forced_and_checked_on_each_call(sandbox):
    first = await _token(sandbox)
    assert first["access_token"] and first["expires_in"] == 7200
    again = await _token(sandbox)
    assert again["access_token"] == first["access_token"]  # stable: the same one
    forced = await _token(sandbox, force=True)
    assert forced["access_token"] != first["access_token"]
    _, txn = await _paid(sandbox)
    old = await _post(sandbox, "/wxa/sec/order/upload_shipping_info", _upload(txn), "x")
    assert old["errcode"] == 40001
    replaced = first["access_token"]
    stale = await _post(sandbox, "/wxa/sec/order/upload_shipping_info", _upload(txn), replaced)
    assert stale["errcode"] == 40001  # the forced refresh replaced it
    shown = (await sandbox.control("GET", "/sandbox/shipping")).json
    assert (shown["stable_token_calls"], shown["tokens_issued"]) == (3, 2)
    bad_grant = await _post(sandbox, "/cgi-bin/stable_token", {"grant_type": "x"})
    assert bad_grant["errcode"] == 40002
    no_secret = {"grant_type": "client_credential", "appid": APPID}
    assert (await _post(sandbox, "/cgi-bin/stable_token", no_secret))["errcode"] == 41004
    revoked = await sandbox.control("POST", "/sandbox/shipping/tokens/revoke")
    assert revoked.json == {"revoked": 1}
    gone = await _post(
        sandbox, "/wxa/sec/order/upload_shipping_info", _upload(txn), forced["access_token"]
    )
    assert gone["errcode"] == 40001


async def test_the_app_secret_is_checked_when_configured(start_sandbox):
    sandbox = await start_sandbox(sandbox_app_secret="right")
    assert (await _token(sandbox))["errcode"] == 40125
    body = {"grant_type": "client_credential", "appid": "wx-other", "secret": "right"}
    assert (await _post(sandbox, "/cgi-bin/stable_token", body))["errcode"] == 40013


async def test_an_upload_ships_the_order_once_and_allows_one_reupload(sandbox):
    token = (await _token(sandbox))["access_token"]
    no, txn = await _paid(sandbox)
    path = "/wxa/sec/order/upload_shipping_info"
    before = await _post(sandbox, "/wxa/sec/order/get_order", {"transaction_id": txn}, token)
    assert (before["errcode"], before["order"]["order_state"]) == (0, 1)
    assert before["order"]["merchant_trade_no"] == no
    assert await _post(sandbox, path, _upload(txn), token) == {"errcode": 0, "errmsg": "ok"}
    after = await _post(sandbox, "/wxa/sec/order/get_order", {"transaction_id": txn}, token)
    assert after["order"]["order_state"] == 2
    assert after["order"]["shipping"]["shipping_list"] == [{"item_desc": "paylane premium"}]
    assert (await _post(sandbox, path, _upload(txn), token))["errcode"] == 0  # the re-upload
    assert (await _post(sandbox, path, _upload(txn), token))["errcode"] == 10060003
    shown = (await sandbox.control("GET", "/sandbox/shipping")).json
    assert [u["transaction_id"] for u in shown["uploads"]] == [txn, txn]
    assert [c["answer"]["errcode"] for c in shown["calls"]] == [0, 0, 10060003]
    # By merchant and out_trade_no too.
    by_no = {"merchant_id": MCHID, "merchant_trade_no": no}
    found = await _post(sandbox, "/wxa/sec/order/get_order", by_no, token)
    assert (found["errcode"], found["order"]["order_state"]) == (0, 2)


async def test_upload_checks_in_wechats_errcodes(sandbox):
    token = (await _token(sandbox))["access_token"]
    _, txn = await _paid(sandbox)
    path = "/wxa/sec/order/upload_shipping_info"
    cases = [
        (_upload("4200999"), 10060001),  # a transaction never paid here
        (_upload(txn, order_key={"order_number_type": 3}), 268485194),
        (_upload(txn, order_key={"order_number_type": 2}), 268485195),
        (_upload(txn, order_key={"order_number_type": 1, "out_trade_no": "x"}), 268485196),
        (_upload(txn, logistics_type=9), 10060005),
        (_upload(txn, delivery_mode=3), 268485224),
        (_upload(txn, shipping_list=[{"item_desc": "a"}, {"item_desc": "b"}]), 268485228),
        (_upload(txn, shipping_list=[{"item_desc": ""}]), 10060008),
        (_upload(txn, shipping_list=[{"item_desc": "x" * 121}]), 10060009),
        (_upload(txn, upload_time="2026-12-07 09:29:21"), 268485216),
        (_upload(txn, upload_time="2026-12-07T09:29:21"), 268485216),  # no offset
        (_upload(txn, payer={"openid": "o-someone-else"}), 10060031),
        (_upload(txn, payer={}), 10060014),
    ]
    for body, errcode in cases:
        assert (await _post(sandbox, path, body, token))["errcode"] == errcode, body
    get = await _post(sandbox, "/wxa/sec/order/get_order", {"transaction_id": txn}, token)
    assert get["order"]["order_state"] == 1  # nothing shipped


async def test_injected_errcodes_answer_the_next_calls_then_wechat_again(sandbox):
    token = (await _token(sandbox))["access_token"]
    _, txn = await _paid(sandbox)
    path = "/wxa/sec/order/upload_shipping_info"
    armed = await sandbox.control("POST", "/sandbox/shipping/faults", {"errcode": -1, "count": 2})
    assert armed.status == 201
    assert [(await _post(sandbox, path, _upload(txn), token))["errcode"] for _ in range(3)] == [
        -1,
        -1,
        0,
    ]
    await sandbox.control(
        "POST", "/sandbox/shipping/faults", {"api": "stable_token", "errcode": 45009}
    )
    assert (await _token(sandbox))["errcode"] == 45009
    bad = await sandbox.control("POST", "/sandbox/shipping/faults", {"api": "nope", "errcode": 1})
    assert bad.status == 400
    await sandbox.control("POST", "/sandbox/reset")
    assert (await sandbox.control("GET", "/sandbox/shipping")).json["calls"] == []


async def test_the_shipping_reminder_is_sent_to_the_message_url(sandbox):
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def push(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(text="success")

    app = web.Application()
    app.router.add_post("/wx/messages", push)
    server = TestServer(app)
    await server.start_server()
    try:
        no, txn = await _paid(sandbox)
        url = str(server.make_url("/wx/messages"))
        sent = await sandbox.control(
            "POST", "/sandbox/shipping/remind", {"transaction_id": txn, "url": url}
        )
        assert sent.status == 200 and sent.json["status"] == 200
        message = await asyncio.wait_for(received.get(), 5)
        assert message["Event"] == "trade_manage_remind_shipping"
        assert (message["MsgType"], message["transaction_id"]) == ("event", txn)
        assert (message["merchant_trade_no"], message["FromUserName"]) == (no, PAYER_OPENID)
        nowhere = await sandbox.control("POST", "/sandbox/shipping/remind", {"transaction_id": txn})
        assert nowhere.status == 400  # no url, none configured
        unknown = await sandbox.control(
            "POST", "/sandbox/shipping/remind", {"transaction_id": "4200404", "url": url}
        )
        assert unknown.status == 404
    finally:
        await server.close()
