"""``paylane demo``: one payment through the running stack, printed as a timeline.

Signs a mini-program user in (the sandbox plays WeChat's ``jscode2session``), places an
order as that user (order service), listens on the notifier as the paying client would,
pays the order in the sandbox (acting as the payer), and prints each step as it happens:
order created, notification sent and answered, order paid, entitlement granted, pushed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
from typing import Any

import aiohttp


class Timeline:
    def __init__(self) -> None:
        self._start = time.perf_counter()

    def say(self, what: str) -> None:
        print(f"{(time.perf_counter() - self._start) * 1000:8.1f} ms  {what}", flush=True)


async def _json(response: aiohttp.ClientResponse) -> Any:
    return await response.json(content_type=None)


async def run(args: argparse.Namespace) -> int:
    timeline = Timeline()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        # wx.login() in the mini-program: the sandbox decides which openid the code names.
        codes = f"{args.sandbox_url}/sandbox/miniprogram/codes"
        async with http.post(codes, json={"openid": f"o-demo-{secrets.token_hex(6)}"}) as response:
            code = (await _json(response))["code"]
        login = f"{args.order_url}/auth/miniprogram"
        async with http.post(login, json={"code": code}) as response:
            session = await _json(response)
            if response.status != 200:
                print(f"POST /auth/miniprogram -> {response.status} {session}")
                return 1
        timeline.say(f"user signed in  user {session['user_id']}")
        body = {"package_type": args.package, "trade_type": "NATIVE"}
        headers = {"Authorization": f"Bearer {session['token']}"}
        async with http.post(f"{args.order_url}/orders", json=body, headers=headers) as response:
            order = await _json(response)
            if response.status != 201:
                print(f"POST /orders -> {response.status} {order}")
                return 1
        no = order["out_trade_no"]
        timeline.say(
            f"order created   {no}  {order['amount_total']} fen  user {order['user_id']}"
            f"  code_url {order['pay'].get('code_url')}"
        )
        # The order's stream ticket (a minute's worth), never the session itself.
        ws = await http.ws_connect(f"{args.notifier_url}/ws?ticket={order['stream_ticket']}")
        first = json.loads((await ws.receive(timeout=10)).data)
        timeline.say(f"client connected, current state: {first['type']} {first['status']}")

        async with http.post(f"{args.sandbox_url}/sandbox/orders/{no}/pay", json={}) as response:
            paid = await _json(response)
        timeline.say(f"payer paid      transaction {paid.get('transaction_id')}")

        wanted = {"order.paid", "entitlement.granted"}
        printed: set[tuple[str, int]] = set()
        # A stack that never pays (ingress down, a consumer stuck) ends the demo, not hangs it.
        deadline = time.monotonic() + args.wait
        while wanted:
            if time.monotonic() > deadline:
                print(f"no {' and no '.join(sorted(wanted))} push within {args.wait:.0f} s")
                await ws.close()
                return 1
            async with http.get(
                f"{args.sandbox_url}/sandbox/notifications", params={"out_trade_no": no}
            ) as response:
                notes = (await _json(response)).get("notifications", [])
            for note in notes:
                for index, attempt in enumerate(note.get("attempts", [])):
                    answer = attempt.get("status") or attempt.get("error")
                    if answer and (note["id"], index) not in printed:
                        printed.add((note["id"], index))
                        timeline.say(f"notify sent     {note['event_type']} -> {answer}")
            try:
                message = await ws.receive(timeout=0.02)
            except TimeoutError:
                continue
            push = json.loads(message.data)
            if push["type"] in wanted:
                wanted.discard(push["type"])
                detail = (
                    f"status {push['status']}"
                    if push["type"] == "order.paid"
                    else f"payment_status {push['payment_status']},"
                    f" regenerate_count {push['regenerate_count']}"
                )
                timeline.say(f"pushed          {push['type']}: {detail}")
        await ws.close()

        headers = {"Authorization": f"Bearer {order['client_token']}"}
        async with http.get(f"{args.order_url}/orders/{no}", headers=headers) as response:
            view = await _json(response)
        timeline.say(
            f"GET /orders     status {view['status']}, user {view['payment_status']}"
            f" with {view['regenerate_count']} regenerations"
        )
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser("demo", help="pay one order through the running stack")
    demo.add_argument("--package", default="premium")
    demo.add_argument("--order-url", default="http://127.0.0.1:8081")
    demo.add_argument("--notifier-url", default="http://127.0.0.1:8083")
    demo.add_argument("--sandbox-url", default="http://127.0.0.1:8090")
    demo.add_argument(
        "--wait", type=float, default=60.0, help="seconds to wait for the pushes (default 60)"
    )
    demo.set_defaults(func=lambda args: asyncio.run(run(args)))
