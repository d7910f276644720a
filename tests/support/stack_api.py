"""HTTP calls to the running stack as its clients make them: the app's backend placing an
order, anyone calling a service, the payer and WeChat Pay acting through the sandbox."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.support import hygiene, openapi
from tests.support.stack import Stack
from tests.support.stack_config import BACKEND


async def call(
    stack: Stack,
    service: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    *,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """One HTTP call to a service of the stack: (status, JSON body or None); ``raw`` is
    sent as the JSON body as it is, instead of ``body``. An answer of the order service or
    ingress must be one its OpenAPI document describes."""
    if raw is not None:
        headers = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method,
            f"{stack.services[service].url}{path}",
            json=body if raw is None else None,
            data=raw,
            headers=headers,
        ) as response:
            raw = await response.read()
            if openapi.documented(service):
                answer = (response.status, dict(response.headers), raw)
                openapi.check_response(service, method, path, *answer)
            return response.status, json.loads(raw) if raw else None


async def sandbox(
    stack: Stack, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    """Call the sandbox's control API (acting as the payer and as WeChat Pay)."""
    return await call(stack, "sandbox", method, path, body)


@dataclass
class Order:
    out_trade_no: str
    user_id: str
    amount_total: int
    package_type: str
    #: The user's session token (the order API's ``Authorization: Bearer``).
    client_token: str
    pay: dict[str, Any]
    #: A ticket for one of the notifier's streams, good for a minute.
    stream_ticket: str


async def new_order(
    stack: Stack, package_type: str = "premium", trade_type: str = "JSAPI", **extra: Any
) -> Order:
    """A new user (by openid) and an order placed through ``POST /orders`` by the backend."""
    body = {
        "package_type": package_type,
        "trade_type": trade_type,
        "openid": f"o-{uuid.uuid4().hex[:16]}",
        **extra,
    }
    hygiene.register(body["openid"])  # payer data: must never be logged
    status, data = await call(stack, "order", "POST", "/orders", body, BACKEND)
    assert status == 201, data
    return Order(
        data["out_trade_no"],
        data["user_id"],
        data["amount_total"],
        package_type,
        data["client_token"],
        data["pay"],
        data["stream_ticket"],
    )


async def stream_ticket(stack: Stack, session_token: str) -> str:
    """A fresh ticket for the notifier's streams, as a client asks for one before each
    (re)connect: ``POST /stream-tickets`` with the user's session."""
    headers = {"Authorization": f"Bearer {session_token}"}
    status, data = await call(stack, "order", "POST", "/stream-tickets", None, headers)
    assert status == 200, data
    return str(data["ticket"])
