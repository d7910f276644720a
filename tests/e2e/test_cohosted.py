"""``paylane serve consumers``: order, entitlement and notifier in one process take a
payment end to end as the three processes do (docs/performance.md, "Co-hosted
consumers"), each with its own settings, ports and log lines, and stop together."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.clients import wait_for_types, ws_next
from tests.support.infra import Infra
from tests.support.isolated import IsolatedStack, isolated_stack
from tests.support.queries import grants, order_status, user_state
from tests.support.stack_api import new_order
from tests.support.stack_config import COHOSTED, start_cohosted_stack

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("cohosted")]


@pytest.fixture(scope="module")
async def cohosted(
    infra: Infra, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[IsolatedStack]:
    async with isolated_stack(
        infra,
        tmp_path_factory.mktemp("cohosted-logs"),
        prefix="paylane_cohosted",
        start=start_cohosted_stack,
    ) as isolated:
        yield isolated


async def test_one_process_serves_the_three_on_their_own_ports(cohosted: IsolatedStack) -> None:
    services = [cohosted.stack.services[name] for name in COHOSTED]
    assert len({service.process.pid for service in services}) == 1
    async with aiohttp.ClientSession() as http:
        for service in services:
            async with http.get(f"{service.admin_url}/readyz") as response:
                assert response.status == 200, service.name
            async with http.get(f"{service.url}/healthz") as response:
                assert response.status == 200, service.name


async def test_a_payment_is_granted_and_pushed(cohosted: IsolatedStack) -> None:
    stack, wechat = cohosted.stack, cohosted.wechat
    order = await new_order(stack, "premium")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"{stack.services['notifier'].url}/ws?ticket={order.stream_ticket}"
        )
        assert (await ws_next(ws))["type"] == "order.state"
        headers, body = wechat.notify(wechat.transaction(order.out_trade_no, order.amount_total))
        async with http.post(
            f"{cohosted.ingress_url}/notify/wechatpay", data=body, headers=headers
        ) as response:
            assert response.status == 204
        seen = await wait_for_types(lambda: ws_next(ws), {"order.paid", "entitlement.granted"})
        await ws.close()
    granted = {m["type"]: m for m in seen}["entitlement.granted"]
    assert (granted["payment_status"], granted["regenerate_count"]) == ("premium", 103)
    assert await order_status(cohosted.pool, order.out_trade_no) == "paid"
    assert await user_state(cohosted.pool, order.user_id) == ("premium", 103)
    assert (await grants(cohosted.pool, order.out_trade_no))["n"] == 1

    # Every line says which service wrote it; each of the three handled this payment.
    lines = [
        json.loads(line)
        for line in stack.services["order"].log_path.read_text().splitlines()
        if line.startswith("{")
    ]
    about = {
        line.get("service") for line in lines if line.get("out_trade_no") == order.out_trade_no
    }
    assert set(COHOSTED) <= about, about


# Last in the module (its tests run on one worker, in order): it stops the process.
async def test_sigterm_stops_all_three(cohosted: IsolatedStack) -> None:
    stack = cohosted.stack
    process = stack.services["order"].process
    log_path = stack.services["order"].log_path
    assert await stack.stop("consumers", signal.SIGTERM, timeout=10) == 0
    for name in COHOSTED:
        del stack.services[name]
    stopped = [
        json.loads(line)
        for line in log_path.read_text().splitlines()
        if line.startswith("{") and '"stopped"' in line
    ]
    assert {line["service"] for line in stopped} == set(COHOSTED)
    assert process.returncode == 0
