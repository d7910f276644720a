"""paylane beside the cloud function (docs/adoption.md), end to end: the cloud function
places the order, receives WeChat Pay's callback, marks the order ``paid`` (or
``refunded``) itself, and calls the internal notify once, fire and forget. paylane
grants, unlocks and pushes exactly once, whether the notify comes (once or six times) or
never (the effects sweep of ``paylane reconcile --once``).

The test plays the cloud function: it places the order at the sandbox WeChat Pay,
writes the shared tables with SQL as the cloud function does, and has the payer pay with
WeChat's callback going nowhere (the cloud function's own URL).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import aiomysql
import pytest

from paylane_common.storage.db import transaction
from tests.support.clients import SSEClient
from tests.support.cloud_function import cloud_ids, place_at_wechatpay
from tests.support.polling import eventually
from tests.support.queries import fetch_one, grants, user_state
from tests.support.seeding import add_order, add_refund, add_user, ago
from tests.support.stack import Stack
from tests.support.stack_api import call, sandbox, stream_ticket
from tests.support.stack_config import BACKEND, INTERNAL, order_env
from tests.support.wechat import FakeWechat

pytestmark = pytest.mark.e2e

PREMIUM_FEN, PREMIUM_GRANT = 2990, 100


async def cloud_function_order(
    stack: Stack, pool: aiomysql.Pool, wechat: FakeWechat
) -> dict[str, str]:
    """The cloud function's order, placed at WeChat Pay and paid, its callback received by
    the cloud function (not paylane), which wrote its user and its row as ``paid`` with
    the transaction: yuan, none of paylane's columns. paylane has heard nothing.

    (The row is written once, as paid: had it sat ``pending`` for a second, paylane's own
    reconciler could have found the payment first, which is another test's business.)"""
    ids = cloud_ids()
    ids["generationId"] = f"gen-{uuid.uuid4().hex[:12]}"
    await place_at_wechatpay(stack, wechat, ids, PREMIUM_FEN, "premium")
    status, paid = await sandbox(
        stack, "POST", f"/sandbox/orders/{ids['outTradeNo']}/pay", {"notify": False}
    )
    assert status == 200, paid
    ids["transactionId"] = paid["transaction_id"]
    async with transaction(pool) as cur:
        await add_user(cur, id=ids["userId"], openid=ids["openid"])
        await add_order(
            cur,
            ids["userId"],
            ids["outTradeNo"],
            id=f"order-{ids['outTradeNo'][:13]}-cf{uuid.uuid4().hex[:4]}",
            generation_id=ids["generationId"],
            amount="29.90",
            package_type="premium",
            trade_type="JSAPI",
            status="paid",
            transaction_id=ids["transactionId"],
            paid_at=ago(0),
            _openid=ids["openid"],
        )
    return ids


async def client_stream(stack: Stack, http: aiohttp.ClientSession, user_id: str) -> SSEClient:
    """The paying client's SSE stream, with a ticket of the session the backend got for
    the user."""
    status, token = await call(stack, "order", "POST", "/auth/token", {"user_id": user_id}, BACKEND)
    assert status == 200, token
    ticket = await stream_ticket(stack, token["token"])
    return SSEClient(http, f"{stack.services['notifier'].url}/events?ticket={ticket}")


async def notify(stack: Stack, ids: dict[str, str]) -> None:
    """The cloud function's call, in its own shape: camelCase, no amount."""
    body = {
        "outTradeNo": ids["outTradeNo"],
        "transactionId": ids["transactionId"],
        "status": "paid",
        "packageType": "premium",
        "generationId": ids["generationId"],
        "openid": ids["openid"],
    }
    status, answer = await call(
        stack, "ingress", "POST", "/api/payment/internal/notify", body, INTERNAL
    )
    assert status == 200, answer
    assert answer["success"] is True and answer["message"]


async def until_grants(pool: aiomysql.Pool, out_trade_no: str, expected: dict[str, int]) -> None:
    async def reached() -> bool:
        return await grants(pool, out_trade_no) == expected

    await eventually(reached, what=f"{out_trade_no}: grants {expected}", timeout=20)


async def log_count(pool: aiomysql.Pool, out_trade_no: str, kind: str) -> int:
    row = await fetch_one(
        pool,
        "SELECT COUNT(*) AS n FROM payment_logs WHERE out_trade_no = %s AND kind = %s",
        out_trade_no,
        kind,
    )
    return int(row["n"])


async def drain(client: SSEClient, quiet_s: float = 1.5) -> list[dict[str, Any]]:
    """Every message the stream delivers until it has been quiet for ``quiet_s``."""
    seen = []
    while True:
        try:
            seen.append(await client.next(timeout=quiet_s))
        except TimeoutError:
            return seen


async def reconcile_once(stack: Stack, **env: str) -> dict[str, int]:
    """``paylane reconcile --once`` as an operator runs it, with the order service's
    settings; the effects sweep told to look at orders untouched for 0 s."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "paylane.cli",
        "reconcile",
        "--once",
        env={
            **os.environ,
            **stack.base_env,
            **order_env(stack.services["sandbox"].url),
            "SWEEP_GRACE_S": "0",
            **env,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    line = out.decode().strip().splitlines()[-1]  # "kind=n, kind=n" or "nothing to reconcile"
    return {k: int(v) for k, v in (p.split("=") for p in line.split(", ") if "=" in p)}


async def test_notify_for_an_order_already_paid_grants_unlocks_and_pushes_once(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    ids = await cloud_function_order(stack, db_pool, wechat)
    async with aiohttp.ClientSession() as http:
        async with await client_stream(stack, http, ids["userId"]) as client:
            snapshot = await drain(client)  # the on-connect state: the order, as it is
            await notify(stack, ids)

            async def granted() -> bool:
                return (await grants(db_pool, ids["outTradeNo"]))["n"] == 1

            await eventually(granted, what="the plan granted", timeout=20)
            assert await user_state(db_pool, ids["userId"]) == ("premium", 3 + PREMIUM_GRANT)
            pushed = await drain(client)
            paid = [m for m in pushed if m["type"] == "order.paid"]
            assert len(paid) == 1, pushed
            assert paid[0]["out_trade_no"] == ids["outTradeNo"]
            assert paid[0]["generation_id"] == ids["generationId"]  # the client unlocks it
            assert [m["type"] for m in pushed].count("entitlement.granted") == 1, pushed

            # The cloud function calls again (five more times): nothing more happens.
            for _ in range(5):
                await notify(stack, ids)

            # (They carry one event id, so the inbox absorbs them without a trace. A later
            # order's notify, once granted, shows they have been consumed.)
            sentinel = await cloud_function_order(stack, db_pool, wechat)
            await notify(stack, sentinel)

            async def sentinel_granted() -> bool:
                return (await grants(db_pool, sentinel["outTradeNo"]))["n"] == 1

            await eventually(sentinel_granted, what="a later order granted", timeout=20)
            assert await drain(client) == []
    assert snapshot and all(m["status"] == "paid" for m in snapshot if "status" in m)
    assert await grants(db_pool, ids["outTradeNo"]) == {"n": 1, "revoked": 0}
    assert await user_state(db_pool, ids["userId"]) == ("premium", 3 + PREMIUM_GRANT)
    assert await log_count(db_pool, ids["outTradeNo"], "paid_elsewhere") == 1
    row = await fetch_one(
        db_pool,
        "SELECT status, transaction_id, amount, paid_event_at IS NOT NULL AS announced"
        " FROM payment_orders WHERE out_trade_no = %s",
        ids["outTradeNo"],
    )
    # The cloud function's row: as it wrote it, plus paylane's mark that it announced it.
    assert row == {
        "status": "paid",
        "transaction_id": ids["transactionId"],
        "amount": Decimal("29.90"),
        "announced": 1,
    }


async def test_the_sweep_grants_a_payment_whose_notify_never_came_then_revokes_its_refund(
    stack: Stack, db_pool: aiomysql.Pool, wechat: FakeWechat
) -> None:
    ids = await cloud_function_order(stack, db_pool, wechat)
    # The cloud function's notify was lost: only the sweep can find the order.
    # (Orders other tests left paid by SQL may be announced by the same pass.)
    assert (await reconcile_once(stack)).get("effect_paid", 0) >= 1
    # The order.paid it staged goes out through the order service's outbox relay.
    await until_grants(db_pool, ids["outTradeNo"], {"n": 1, "revoked": 0})
    assert await user_state(db_pool, ids["userId"]) == ("premium", 3 + PREMIUM_GRANT)
    # Once: a second pass finds nothing of it, and a late notify changes nothing.
    assert "effect_paid" not in await reconcile_once(stack)
    await notify(stack, ids)

    async def late_notify_handled() -> bool:  # its event id is new to the consumer
        return await log_count(db_pool, ids["outTradeNo"], "duplicate_notification") == 1

    await eventually(late_notify_handled, what="the late notify recorded", timeout=20)
    assert await grants(db_pool, ids["outTradeNo"]) == {"n": 1, "revoked": 0}

    # The cloud function's refund callback: the refund row, and the order `refunded`.
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    async with transaction(db_pool) as cur:
        await add_refund(
            cur,
            ids["outTradeNo"],
            "29.90",
            id=f"refund-{ids['outTradeNo'][:13]}-cf{uuid.uuid4().hex[:4]}",
            out_refund_no=f"RF{ids['outTradeNo']}",
            refund_id=f"5000{ids['outTradeNo']}",
            transaction_id=ids["transactionId"],
            status="success",
            reason="不想要了",
            refunded_at=now,
        )
        await cur.execute(
            "UPDATE payment_orders SET status = 'refunded', refund_reason = '不想要了'"
            " WHERE out_trade_no = %s",
            (ids["outTradeNo"],),
        )
    async with aiohttp.ClientSession() as http:
        async with await client_stream(stack, http, ids["userId"]) as client:
            await drain(client)
            assert (await reconcile_once(stack)).get("effect_refunded", 0) >= 1
            await until_grants(db_pool, ids["outTradeNo"], {"n": 1, "revoked": 1})
            pushed = await drain(client)
    assert [m["type"] for m in pushed].count("order.refunded") == 1, pushed
    assert await user_state(db_pool, ids["userId"]) == ("free", 3)
    assert "effect_refunded" not in await reconcile_once(stack)
    assert await grants(db_pool, ids["outTradeNo"]) == {"n": 1, "revoked": 1}


async def test_the_sweep_never_grants_what_was_settled_before_paylane(
    stack: Stack, db_pool: aiomysql.Pool
) -> None:
    """The seed's paid and refunded orders of 2024 (tests/support/seed_db.py) were the old
    backend's to grant: the sweep leaves them alone."""
    await reconcile_once(stack)
    for out_trade_no in ("170634568000254321", "170634568000398765"):
        row = await fetch_one(
            db_pool,
            "SELECT paid_event_at, refund_event_at FROM payment_orders WHERE out_trade_no = %s",
            out_trade_no,
        )
        assert row == {"paid_event_at": None, "refund_event_at": None}
        assert await grants(db_pool, out_trade_no) == {"n": 0, "revoked": 0}
    assert await user_state(db_pool, "user-1706345679999-abc123") == ("premium", 103)
