"""The operators' console (paylane_order.console) on the real database, served in this
process: sign-in and its lockout, CSRF, roles, the search, an order's timeline, and the
actions' validation and audit rows. The browser test (tests/frontend) runs it on the
stack's admin port with a real refund."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import aiomysql
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from paylane_common.broker.publisher import Publisher, envelope_message
from paylane_common.broker.replay import REPLAYED_HEADER, list_dlq
from paylane_common.broker.topology import ORDER_PAYMENTS, forward_exchange_of
from paylane_common.contract.events import (
    NOTIFICATION_REJECTED,
    NotificationRejected,
    make_event,
)
from paylane_common.delivery.consumer import (
    ATTEMPT_HEADER,
    FAILED_AT_HEADER,
    ORIGIN_HEADER,
    REASON_HEADER,
)
from paylane_common.storage.db import transaction
from paylane_common.wechatpay.testing import new_transaction_id, order_request
from paylane_order import console, operators
from paylane_order.config import ReconcilerConfig, StatusQueryConfig
from paylane_order.gate import Gate
from paylane_order.operators import (
    add_operator,
    hash_password,
    password_matches,
    remove_operator,
)
from paylane_order.payments import PaymentApplier
from paylane_order.query_log import QueryLog
from paylane_order.reconciler import Reconciler
from paylane_order.rejections import RejectionRecords
from paylane_order.review_grant import ReviewGrant
from paylane_order.status_query import StatusQuery
from paylane_order.webhooks.store import WebhookStore
from services.order.tests.support import OrderApi, basic_order
from tests.support.events import payment_succeeded
from tests.support.polling import handed_back, ready_messages
from tests.support.queries import fetch_one, order_status
from tests.support.seeding import add_order, add_refund

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')

Client = TestClient[web.Request, web.Application]


async def fetch_all(pool: aiomysql.Pool, sql: str, *args: object) -> list[dict[str, Any]]:
    async with transaction(pool) as cur:
        await cur.execute(sql, args)
        return list(await cur.fetchall())


def _console(
    order_api: OrderApi, gate: Gate, connection: AbstractRobustConnection | None = None
) -> web.Application:
    """The console mounted at /console, as on the admin listener, with a short lockout;
    its queries to WeChat Pay recorded, as the service's are."""
    pool = order_api.pool
    at_once = StatusQueryConfig(after_s=0, interval_s=0)
    gate = replace(gate, queries=QueryLog(pool, gate.client))
    payments = PaymentApplier(pool, gate)
    query = StatusQuery(pool, gate, payments, at_once, "console")
    grant = ReviewGrant(gate, payments)
    backend = console.ConsoleBackend(pool, order_api.orders, query, grant, connection)
    root = web.Application()
    root.add_subapp(
        console.PREFIX,
        console.console_app(lambda: backend, console.ConsoleOptions(lockout_after=3)),
    )
    return root


@pytest.fixture
async def served(order_api: OrderApi, gate: Gate) -> AsyncIterator[Client]:
    async with TestClient(TestServer(_console(order_api, gate))) as client:
        yield client


async def _operator(pool: aiomysql.Pool, role: str) -> str:
    name = f"{role}-{uuid.uuid4().hex[:8]}"
    assert await add_operator(pool, name, role, PASSWORD)
    return name


async def _sign_in(client: Client, name: str, password: str = PASSWORD) -> tuple[int, str]:
    async with client.get("/console/sign-in") as response:
        token = CSRF.findall(await response.text())[0]
    form = {"csrf": token, "name": name, "password": password}
    async with client.post("/console/sign-in", data=form, allow_redirects=False) as response:
        return response.status, await response.text()


async def _page(client: Client, path: str) -> tuple[int, str]:
    async with client.get(path, allow_redirects=False) as response:
        return response.status, await response.text()


async def _act(
    client: Client, no: str, action: str, csrf: str | None = "from-page", **form: str
) -> tuple[int, str]:
    if csrf == "from-page":
        _, page = await _page(client, f"/console/orders/{no}")
        csrf = CSRF.findall(page)[0]
    data = {**form, **({"csrf": csrf} if csrf is not None else {})}
    async with client.post(f"/console/orders/{no}/{action}", data=data) as response:
        return response.status, await response.text()


def test_passwords_are_salted_scrypt_hashes() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second and first.startswith("scrypt$") and PASSWORD not in first
    assert password_matches(PASSWORD, first)
    assert not password_matches(PASSWORD + "x", first)


async def test_pages_need_a_session(served: Client) -> None:
    status, _ = await _page(served, "/console/orders")
    assert status == 303
    async with served.post("/console/orders/T1/refund", data={"reason": "x"}) as response:
        assert response.status == 401


async def test_a_sign_in_sets_an_http_only_strict_cookie(
    served: Client, order_api: OrderApi
) -> None:
    name = await _operator(order_api.pool, "viewer")
    async with served.get("/console/sign-in") as response:
        token = CSRF.findall(await response.text())[0]
    form = {"csrf": token, "name": name, "password": PASSWORD}
    async with served.post("/console/sign-in", data=form, allow_redirects=False) as response:
        assert response.status == 303
        cookie = response.headers.getall("Set-Cookie")
    session = next(c for c in cookie if c.startswith(f"{console.SESSION_COOKIE}="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Path=/console/" in session
    status, page = await _page(served, "/console/orders")
    assert status == 200 and f"{name} (viewer)" in page
    stored = await fetch_one(
        order_api.pool,
        "SELECT COUNT(*) AS n FROM paylane_operator_sessions s JOIN paylane_operators o"
        " ON o.id = s.operator_id WHERE o.name = %s",
        name,
    )
    assert stored["n"] == 1


async def test_a_sign_in_without_the_forms_csrf_token_is_refused(
    served: Client, order_api: OrderApi
) -> None:
    name = await _operator(order_api.pool, "admin")
    await _page(served, "/console/sign-in")  # the cookie, but not the form's token
    form = {"csrf": "guessed", "name": name, "password": PASSWORD}
    async with served.post("/console/sign-in", data=form, allow_redirects=False) as response:
        assert response.status == 403


async def test_repeated_failures_lock_the_account_even_for_the_right_password(
    served: Client, order_api: OrderApi
) -> None:
    name = await _operator(order_api.pool, "support")
    assert (await _sign_in(served, name, "wrong one"))[0] == 401
    assert (await _sign_in(served, name, "wrong two"))[0] == 401
    status, page = await _sign_in(served, name, "wrong three")  # the third: locked
    assert status == 429 and "locked" in page
    status, _ = await _sign_in(served, name)
    assert status == 429
    row = await fetch_one(
        order_api.pool,
        "SELECT locked_until > UTC_TIMESTAMP(6) AS locked FROM paylane_operators WHERE name = %s",
        name,
    )
    assert row["locked"] == 1
    audit = await fetch_one(
        order_api.pool,
        "SELECT action, outcome FROM paylane_operator_audit WHERE operator = %s",
        name,
    )
    assert audit == {"action": "sign_in_locked", "outcome": "refused"}
    # A new password (operators add again) lifts the lock.
    assert not await add_operator(order_api.pool, name, "support", PASSWORD)
    assert (await _sign_in(served, name))[0] == 303


async def test_a_new_password_signs_the_operator_out_and_removal_keeps_them_out(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    name = await _operator(pool, "support")
    await _sign_in(served, name)
    assert (await _page(served, "/console/orders"))[0] == 200
    # A reset password (or a changed role) ends the open sessions: sign in again.
    assert not await add_operator(pool, name, "viewer", PASSWORD + " new")
    assert (await _page(served, "/console/orders"))[0] == 303
    assert (await _sign_in(served, name, PASSWORD + " new"))[0] == 303
    status, page = await _page(served, "/console/orders")
    assert status == 200 and f"{name} (viewer)" in page
    # Removed: signed out at once, and no password signs them in, the old one included.
    assert await remove_operator(pool, name) == 1
    assert (await _page(served, "/console/orders"))[0] == 303
    # As an unknown name: refused, never locked (the lockout is after 3 here).
    for password in (PASSWORD + " new", PASSWORD, operators.REMOVED, "x" * 12):
        assert (await _sign_in(served, name, password))[0] == 401
    locked = await fetch_one(
        pool,
        "SELECT COUNT(*) AS n FROM paylane_operator_audit"
        " WHERE operator = %s AND action = 'sign_in_locked'",
        name,
    )
    assert locked["n"] == 0
    assert await remove_operator(pool, f"nobody-{uuid.uuid4().hex[:6]}") is None
    # Added again, they sign in with the new password.
    assert not await add_operator(pool, name, "support", PASSWORD)
    assert (await _sign_in(served, name))[0] == 303


async def test_a_sign_in_outrun_by_a_removal_makes_no_session(
    order_api: OrderApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator removed while their (right) password was being hashed: the sign-in
    makes no session, where it would otherwise outlive the removal by 8 hours."""
    pool = order_api.pool
    name = await _operator(pool, "support")
    loop = asyncio.get_running_loop()
    checking = operators.password_matches

    def removed_meanwhile(password: str, stored: str) -> bool:
        matched = checking(password, stored)  # in sign_in's worker thread
        asyncio.run_coroutine_threadsafe(remove_operator(pool, name), loop).result(10)
        return matched

    monkeypatch.setattr(operators, "password_matches", removed_meanwhile)
    signed = await operators.sign_in(pool, name, PASSWORD)
    assert (signed.token, signed.refused) == (None, "bad_credentials")
    sessions = await fetch_one(
        pool,
        "SELECT COUNT(*) AS n FROM paylane_operator_sessions s"
        " JOIN paylane_operators o ON o.id = s.operator_id WHERE o.name = %s",
        name,
    )
    assert sessions["n"] == 0


async def test_an_unknown_name_is_refused_like_a_wrong_password(served: Client) -> None:
    status, page = await _sign_in(served, f"nobody-{uuid.uuid4().hex[:6]}")
    assert status == 401 and "Wrong name or password" in page


async def test_search_finds_an_order_by_each_of_its_numbers(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "viewer"))
    no, user_id = await basic_order(pool, amount=2990, status="paid")
    txn = f"42{uuid.uuid4().int % 10**26:026d}"
    openid = f"o-{uuid.uuid4().hex[:16]}"
    async with transaction(pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET transaction_id = %s, _openid = %s, external_id = %s"
            " WHERE out_trade_no = %s",
            (txn, openid, f"ext-{no}", no),
        )
    for query in (
        f"out_trade_no={no}",
        f"transaction_id={txn}",
        f"openid={openid}",
        f"user_id={user_id}",
        f"external_id=ext-{no}",
        f"user_id={user_id}&amount=29.90&status=paid&from=2000-01-01&to=2999-01-01",
    ):
        status, page = await _page(served, f"/console/orders?{query}&transaction_id=")
        assert status == 200, page
        assert f'data-order="{no}"' in page, query
    _, page = await _page(served, f"/console/orders?user_id={user_id}&amount=9.90")
    assert f'data-order="{no}"' not in page
    async with served.get(f"/console/orders/export.csv?out_trade_no={no}") as response:
        lines = (await response.text()).splitlines()
    assert lines[0].startswith("out_trade_no,user_id") and lines[1].startswith(f"{no},{user_id}")


async def test_a_bad_search_says_what_is_wrong(served: Client, order_api: OrderApi) -> None:
    await _sign_in(served, await _operator(order_api.pool, "viewer"))
    for query, says in (
        ("amount=12.345", "amount"),
        ("status=lost", "status"),
        ("from=2024-02-01&to=2024-01-01", "from must be before to"),
        ("cursor=nonsense", "cursor"),
    ):
        status, page = await _page(served, f"/console/orders?{query}")
        assert status == 400 and says in page, query


async def test_keyset_pages_reach_every_order_once(served: Client, order_api: OrderApi) -> None:
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "viewer"))
    first, user_id = await basic_order(pool, status="paid")
    others = [f"{first}n{i}" for i in range(4)]
    for no in others:
        await add_order(pool, user_id, no, amount="9.90", package_type="basic", trade_type="NATIVE")
    seen: list[str] = []
    path: str | None = f"/console/orders?user_id={user_id}&limit=2"
    while path:
        _, page = await _page(served, path)
        seen += re.findall(r'<tr data-order="([^"]+)"', page)
        more = re.search(r'id="next" href="([^"]+)"', page)
        path = more.group(1).replace("&amp;", "&") if more else None
    assert sorted(seen) == sorted([first, *others])


async def test_the_timeline_shows_what_paylane_recorded_in_time_order(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "viewer"))
    no, user_id = await basic_order(pool, status="paid")
    async with transaction(pool) as cur:
        await cur.execute(
            "INSERT INTO payment_logs (id, type, kind, out_trade_no, event_type, source,"
            " event_id, detail, created_at) VALUES"
            " (%s, 'callback', 'notification_unverified', %s, NULL, 'notify', NULL,"
            " 'bad signature', UTC_TIMESTAMP(6) - INTERVAL 3 MINUTE),"
            " (%s, 'callback', 'paid', %s, 'TRANSACTION.SUCCESS', 'notify', %s, NULL,"
            " UTC_TIMESTAMP(6) - INTERVAL 2 MINUTE)",
            (f"log-{uuid.uuid4().hex[:20]}", no, f"log-{uuid.uuid4().hex[:20]}", no, f"ev-{no}"),
        )
        await cur.execute(
            "INSERT INTO inbox (consumer, event_id, processed_at)"
            " VALUES ('order', %s, UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE)",
            (f"ev-{no}",),
        )
        await cur.execute(
            "INSERT INTO entitlement_grants (out_trade_no, user_id, package_type,"
            " regenerate_granted, status_before, status_after, granted_at)"
            " VALUES (%s, %s, 'basic', 10, 'free', 'basic', UTC_TIMESTAMP(6))",
            (no, user_id),
        )
    status, page = await _page(served, f"/console/orders/{no}")
    assert status == 200
    timeline = page[page.index('id="timeline"') :]
    whats = re.findall(r'<td class="what">([^<]+)</td>', timeline)
    assert whats.index("notification_unverified") < whats.index("paid")
    assert whats.index("paid") < whats.index("applied by order") < whats.index("granted")
    assert "bad signature" in timeline and "free → basic" in timeline
    # A viewer sees no actions and may not take one.
    assert 'id="read-only"' in page and 'id="refund"' not in page
    status, _ = await _act(served, no, "refund", reason="a viewer tries")
    assert status == 403
    assert not await fetch_all(
        pool, "SELECT 1 FROM paylane_operator_audit WHERE out_trade_no = %s", no
    )


async def test_an_action_without_the_sessions_csrf_token_is_refused(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "support"))
    no, _ = await basic_order(pool, status="paid")
    for token in (None, "not-the-token"):
        status, _ = await _act(served, no, "refund", csrf=token, reason="customer asked")
        assert status == 403
    assert not await fetch_all(pool, "SELECT 1 FROM refunds WHERE out_trade_no = %s", no)


async def test_a_refund_above_what_is_refundable_is_refused_naming_the_amount(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    name = await _operator(pool, "support")
    await _sign_in(served, name)
    no, _ = await basic_order(pool, amount=990, status="paid")
    await add_refund(pool, no, "3.00", "9.90", reason="earlier", status="success")
    status, page = await _act(served, no, "refund", amount="7.00", reason="customer asked")
    assert status == 400
    assert "7.00 yuan is more than the 6.90 yuan still refundable" in page
    for amount, says in (("abc", "amount"), ("0", "more than 0"), ("1.001", "amount")):
        status, page = await _act(served, no, "refund", amount=amount, reason="customer asked")
        assert status == 400 and says in page
    status, page = await _act(served, no, "refund", amount="1.00", reason="x")
    assert status == 400 and "A reason is needed" in page
    rows = await fetch_all(
        pool,
        "SELECT operator, action, reason, state_before, state_after, outcome, detail"
        " FROM paylane_operator_audit WHERE out_trade_no = %s ORDER BY id",
        no,
    )
    assert len(rows) == 4  # each refused action is recorded; no reason: nothing to record
    assert rows[0] == {
        "operator": name,
        "action": "refund",
        "reason": "customer asked",
        "state_before": "paid",
        "state_after": "paid",
        "outcome": "refused",
        "detail": "7.00 yuan is more than the 6.90 yuan still refundable",
    }
    assert len(await fetch_all(pool, "SELECT 1 FROM refunds WHERE out_trade_no = %s", no)) == 1


async def test_closing_a_pending_order_is_audited_with_its_states(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    name = await _operator(pool, "admin")
    await _sign_in(served, name)
    no, _ = await basic_order(pool, status="pending")
    status, page = await _act(served, no, "close", reason="customer gave up")
    assert status == 200, page
    row = await fetch_one(
        pool,
        "SELECT action, state_before, state_after, outcome FROM paylane_operator_audit"
        " WHERE out_trade_no = %s",
        no,
    )
    assert row == {
        "action": "close",
        "state_before": "pending",
        "state_after": "failed",
        "outcome": "done",
    }
    _, audit = await _page(served, "/console/audit")
    assert "customer gave up" in audit
    # Closed, it offers no close any more, and a forged close is refused as WeChat Pay's
    # rule says (only a pending order).
    status, page = await _act(served, no, "query", reason="check again")
    assert status == 400 and "only a pending order" in page


async def test_paylane_operators_add_reads_the_password_from_stdin_and_remove_removes(
    mysql_url: str, db_pool: aiomysql.Pool
) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "MYSQL_URL": mysql_url, "LOG_FORMAT": "json"}

    async def run(*args: str, stdin: bytes) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "paylane.cli",
            "operators",
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate(stdin)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, _, err = await run("add", name, "--role", "support", stdin=b"short\n")
    assert code == 2 and "password" in err
    code, out, _ = await run("add", name, "--role", "support", stdin=f"{PASSWORD}\n".encode())
    assert code == 0 and f"{name}: added, role support" in out
    row = await fetch_one(
        db_pool, "SELECT role, password_hash FROM paylane_operators WHERE name = %s", name
    )
    assert row["role"] == "support" and password_matches(PASSWORD, row["password_hash"])
    code, out, _ = await run("add", name, "--role", "viewer", stdin=f"{PASSWORD}!\n".encode())
    assert code == 0 and "changed, role viewer" in out
    code, out, _ = await run("remove", name, stdin=b"")
    assert code == 0 and f"{name}: removed, 0 open session(s) ended" in out
    row = await fetch_one(
        db_pool, "SELECT password_hash FROM paylane_operators WHERE name = %s", name
    )
    assert row["password_hash"] == operators.REMOVED
    code, _, err = await run("remove", f"nobody-{uuid.uuid4().hex[:6]}", stdin=b"")
    assert code == 1 and "no operator" in err


async def _paid_at_wechat(order_api: OrderApi, no: str) -> None:
    """``no`` (9.90) placed and paid at WeChat Pay (the kit's sandbox), no notification."""
    await order_api.orders._client.place("NATIVE", order_request("native", no))
    await order_api.sandbox.ok("POST", f"/sandbox/orders/{no}/pay", {"notify": False})


async def test_a_needs_review_order_is_resolved_by_a_refund(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "support"))
    no, _ = await basic_order(pool, amount=990, status="paid")
    await _paid_at_wechat(order_api, no)
    async with transaction(pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET status = 'needs_review', review_reason = 'amount'"
            " WHERE out_trade_no = %s",
            (no,),
        )
    _, page = await _page(served, f"/console/orders/{no}")
    assert "Resolve by refund" in page
    status, page = await _act(served, no, "refund", reason="paid twice by mistake")
    assert status == 200, page
    assert "of 9.90 yuan requested" in page
    refund = await fetch_one(
        pool, "SELECT amount_refund, status FROM refunds WHERE out_trade_no = %s", no
    )
    assert refund == {"amount_refund": 990, "status": "pending"}
    audit = await fetch_one(
        pool,
        "SELECT state_before, outcome FROM paylane_operator_audit WHERE out_trade_no = %s",
        no,
    )
    assert audit == {"state_before": "needs_review", "outcome": "done"}


async def _under_review(pool: aiomysql.Pool) -> str:
    """A 9.90 basic order in ``needs_review`` that was never announced paid."""
    no, _ = await basic_order(pool, amount=990, status="needs_review")
    async with transaction(pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET review_reason = 'amount 990 is not a price of basic'"
            " WHERE out_trade_no = %s",
            (no,),
        )
    return no


async def _order_paid_events(pool: aiomysql.Pool, no: str) -> int:
    row = await fetch_one(
        pool,
        "SELECT COUNT(*) AS n FROM outbox WHERE routing_key = 'order.paid' AND payload LIKE %s",
        f'%"out_trade_no":"{no}"%',
    )
    return int(row["n"])


async def _audit_rows(pool: aiomysql.Pool, no: str) -> list[dict[str, Any]]:
    return await fetch_all(
        pool,
        "SELECT operator, action, state_before, state_after, outcome, detail"
        " FROM paylane_operator_audit WHERE out_trade_no = %s ORDER BY id",
        no,
    )


async def test_a_needs_review_order_is_granted_on_wechatpays_success(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    name = await _operator(pool, "support")
    await _sign_in(served, name)
    no = await _under_review(pool)
    await _paid_at_wechat(order_api, no)
    _, page = await _page(served, f"/console/orders/{no}")
    assert 'id="grant"' in page
    status, page = await _act(served, no, "grant", reason="price change, customer paid")
    assert status == 200, page
    assert "WeChat Pay says 9.90 yuan was paid" in page and "order&#x27;s 9.90 yuan" in page
    order = await fetch_one(
        pool,
        "SELECT status, transaction_id, paid_event_at IS NOT NULL AS announced"
        " FROM payment_orders WHERE out_trade_no = %s",
        no,
    )
    assert order["status"] == "paid" and order["announced"] == 1 and order["transaction_id"]
    # The one way every payment goes: one order.paid staged, a payment_logs row that
    # names the operator, the operator's audit row.
    assert await _order_paid_events(pool, no) == 1
    logged = await fetch_one(
        pool,
        "SELECT kind, source, transaction_id, detail FROM payment_logs"
        " WHERE out_trade_no = %s AND type = 'payment_callback'",
        no,
    )
    assert logged == {
        "kind": "paid",
        "source": "query",
        "transaction_id": order["transaction_id"],
        "detail": f"granted by operator {name}: price change, customer paid",
    }
    [audit] = await _audit_rows(pool, no)
    assert audit["action"] == "grant" and audit["outcome"] == "done"
    assert (audit["state_before"], audit["state_after"]) == ("needs_review", "paid")
    # Granted once: a second grant is refused and stages nothing.
    status, page = await _act(served, no, "grant", reason="clicked twice")
    assert status == 409 and "only a needs_review order is granted" in page
    assert await _order_paid_events(pool, no) == 1


async def test_a_grant_wechatpay_does_not_stand_behind_is_refused_and_audited(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "admin"))
    unpaid = await _under_review(pool)
    await order_api.orders._client.place("NATIVE", order_request("native", unpaid))
    status, page = await _act(served, unpaid, "grant", reason="customer says they paid")
    assert status == 409 and "trade_state NOTPAY: nothing is granted" in page
    short = await _under_review(pool)
    await order_api.orders._client.place("NATIVE", order_request("native", short))
    path = f"/sandbox/orders/{short}/pay"
    await order_api.sandbox.ok("POST", path, {"notify": False, "amount": 500})
    status, page = await _act(served, short, "grant", reason="customer says they paid")
    says = "WeChat Pay says 5.00 yuan was paid, less than the order&#x27;s 9.90 yuan"
    assert status == 409 and says in page
    for no, detail in (
        (unpaid, "WeChat Pay does not confirm the payment: trade_state NOTPAY"),
        (short, "WeChat Pay says 5.00 yuan was paid, less than the order's 9.90 yuan"),
    ):
        [audit] = await _audit_rows(pool, no)
        assert audit["outcome"] == "refused" and audit["detail"].startswith(detail)
        assert (audit["state_before"], audit["state_after"]) == ("needs_review", "needs_review")
        assert await _order_paid_events(pool, no) == 0
        # The transaction rolled back: no inbox row, no payment_logs row.
        assert not await fetch_all(pool, "SELECT 1 FROM payment_logs WHERE out_trade_no = %s", no)


async def test_a_viewer_may_not_grant(served: Client, order_api: OrderApi) -> None:
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "viewer"))
    no = await _under_review(pool)
    _, page = await _page(served, f"/console/orders/{no}")
    assert 'id="grant"' not in page
    status, _ = await _act(served, no, "grant", reason="a viewer tries")
    assert status == 403
    assert not await _audit_rows(pool, no)
    assert await order_status(pool, no) == "needs_review"


async def test_asking_wechatpay_applies_a_payment_it_reports(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "support"))
    no, _ = await basic_order(pool, amount=990, status="pending")
    await _paid_at_wechat(order_api, no)
    status, page = await _act(served, no, "query", reason="customer says they paid")
    assert status == 200, page
    assert "reports it paid" in page
    audit = await fetch_one(
        pool,
        "SELECT state_before, state_after FROM paylane_operator_audit WHERE out_trade_no = %s",
        no,
    )
    assert audit == {"state_before": "pending", "state_after": "paid"}
    timeline = page[page.index('id="timeline"') :]
    assert "source=query" in timeline  # the payment_logs row of the query's payment


async def test_the_health_page_shows_todays_bill_differences_and_reviews(
    served: Client, order_api: OrderApi
) -> None:
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "viewer"))
    no, _ = await basic_order(pool, status="needs_review")
    async with transaction(pool) as cur:
        await cur.execute(
            "INSERT INTO payment_logs (id, type, kind, out_trade_no, detail)"
            " VALUES (%s, 'bill_difference', 'bill_difference', %s, 'not_in_bill')",
            (f"log-{uuid.uuid4().hex[:20]}", no),
        )
        await cur.execute("SELECT COUNT(*) AS n FROM payment_orders WHERE status = 'needs_review'")
        reviews = (await cur.fetchone())["n"]
    status, page = await _page(served, "/console/health")
    assert status == 200
    assert f'href="/console/orders/{no}"' in page and "not_in_bill" in page
    assert f'<p id="needs-review">{reviews}</p>' in page
    # No broker connection here: each queue is shown, its depth unknown.
    assert '<tr data-queue="order.payments.dlq"><td>order.payments.dlq</td><td>?</td>' in page


@pytest.fixture
async def endpoint(db_pool: aiomysql.Pool) -> AsyncIterator[str]:
    """A webhook endpoint of this test's, failing; gone after (with its deliveries)."""
    created, _ = await WebhookStore(db_pool).create(
        "https://backend.invalid/hooks", ["order.paid"], "console test"
    )
    async with transaction(db_pool) as cur:
        await cur.execute(
            "UPDATE webhook_endpoints SET failing_since = UTC_TIMESTAMP(6) WHERE id = %s",
            (created.id,),
        )
    yield created.id
    async with transaction(db_pool) as cur:
        await cur.execute(
            "DELETE a FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id"
            " WHERE d.endpoint_id = %s",
            (created.id,),
        )
        await cur.execute("DELETE FROM webhook_deliveries WHERE endpoint_id = %s", (created.id,))
        await cur.execute("DELETE FROM webhook_endpoints WHERE id = %s", (created.id,))


async def _failed_delivery(pool: aiomysql.Pool, endpoint_id: str, no: str) -> int:
    payload = json.dumps({"type": "order.paid", "data": {"out_trade_no": no}})
    async with transaction(pool) as cur:
        await cur.execute(
            "INSERT INTO webhook_deliveries (event_id, event_type, endpoint_id, payload, status,"
            " attempts, step, next_attempt_at, last_status, created_at, updated_at)"
            " VALUES (%s, 'order.paid', %s, %s, 'failed', 1, 5, UTC_TIMESTAMP(6), 500,"
            " UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
            (f"ev-{uuid.uuid4().hex}", endpoint_id, payload),
        )
        delivery_id = int(cur.lastrowid)
        await cur.execute(
            "INSERT INTO webhook_attempts (delivery_id, attempted_at, status, latency_ms)"
            " VALUES (%s, UTC_TIMESTAMP(6), 500, 12)",
            (delivery_id,),
        )
    return delivery_id


async def test_a_webhook_delivery_of_the_order_is_shown_and_resent(
    served: Client, order_api: OrderApi, endpoint: str
) -> None:
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "support"))
    no, _ = await basic_order(pool, status="paid")
    other, _ = await basic_order(pool, status="paid")
    delivery = await _failed_delivery(pool, endpoint, no)
    elsewhere = await _failed_delivery(pool, endpoint, other)
    _, page = await _page(served, f"/console/orders/{no}")
    assert f'<tr data-delivery="{delivery}">' in page and f'id="resend-{delivery}"' in page
    assert f'data-delivery="{elsewhere}"' not in page
    timeline = page[page.index('id="timeline"') :]
    assert "webhook order.paid queued" in timeline and "webhook attempt: 500" in timeline
    status, page = await _act(
        served, no, "resend-webhook", delivery_id=str(elsewhere), reason="backend was down"
    )
    assert status == 400 and "is not a delivery of this order" in page
    status, page = await _act(
        served, no, "resend-webhook", delivery_id=str(delivery), reason="backend was down"
    )
    assert status == 200, page
    assert f"delivery {delivery} (order.paid) to https://backend.invalid/hooks resent" in page
    row = await fetch_one(
        pool, "SELECT status, step FROM webhook_deliveries WHERE id = %s", delivery
    )
    assert row == {"status": "pending", "step": 0}
    _, health = await _page(served, "/console/health")
    assert f'<tr data-endpoint="{endpoint}">' in health


# --- dead letters -----------------------------------------------------------------------


@pytest.fixture
async def broker_served(
    order_api: OrderApi, gate: Gate, amqp_connection: AbstractRobustConnection
) -> AsyncIterator[tuple[Client, Publisher]]:
    """The console with the order service's broker connection (the session's vhost, the
    topology declared), and a publisher that parks dead letters as the consumer does."""
    root = _console(order_api, gate, amqp_connection)
    publisher = await Publisher.open(amqp_connection)
    async with TestClient(TestServer(root)) as client:
        yield client, publisher
    await publisher.close()


async def _dead_letter(publisher: Publisher, no: str) -> str:
    """A payment of ``no`` in ``order.payments.dlq``, as the consumer parks one; its id."""
    envelope = payment_succeeded(no, 990, new_transaction_id()).envelope
    headers = {
        REASON_HEADER: f"unknown out_trade_no {no}",
        ORIGIN_HEADER: ORDER_PAYMENTS.name,
        ATTEMPT_HEADER: 3,
        FAILED_AT_HEADER: datetime.now(UTC).isoformat(),
    }
    await publisher.publish_to_queue(
        ORDER_PAYMENTS.dlq,
        envelope_message(envelope, headers),
        exchange=forward_exchange_of(ORDER_PAYMENTS.dlq),
    )
    return envelope.event_id


async def _taken_from(connection: AbstractRobustConnection, queue: str, message_id: str) -> Any:
    """The message ``message_id`` from ``queue`` (acked), or None; the others go back."""
    channel = await connection.channel()
    try:
        source = await channel.get_queue(queue, ensure=False)
        while (message := await source.get(no_ack=False, fail=False)) is not None:
            if message.message_id == message_id:
                await message.ack()
                return message
        return None
    finally:
        await channel.close()


async def _in_dlq(connection: AbstractRobustConnection, message_id: str) -> bool:
    letters = await list_dlq(connection, ORDER_PAYMENTS.dlq)
    return any(letter.message_id == message_id for letter in letters)


async def test_an_order_page_and_the_dlq_page_answer_while_the_broker_is_away(
    order_api: OrderApi, gate: Gate, amqp_url: str
) -> None:
    """Every order page reads the order's dead letters, and every action answers with
    that page: a broker connection that is down must leave them answering, the DLQ
    unread and said so, and a replay refused (and audited), never a 500."""
    connection = await aio_pika.connect_robust(amqp_url)
    await connection.close()
    pool = order_api.pool
    async with TestClient(TestServer(_console(order_api, gate, connection))) as served:
        name = await _operator(pool, "admin")
        await _sign_in(served, name)
        no, _ = await basic_order(pool, status="pending")
        status, page = await _page(served, f"/console/orders/{no}")
        assert status == 200, page
        status, page = await _page(served, "/console/dlq")
        assert status == 200 and "could not be read" in page
        data = {"csrf": CSRF.findall(page)[0], "reason": "cause fixed", "all": "1"}
        async with served.post(f"/console/dlq/{ORDER_PAYMENTS.dlq}/replay", data=data) as answer:
            assert answer.status == 400
            assert "the broker failed the replay" in await answer.text()
    audit = await fetch_one(
        pool, "SELECT action, outcome FROM paylane_operator_audit WHERE operator = %s", name
    )
    assert (audit["action"], audit["outcome"]) == ("replay_dlq", "refused")


async def test_an_orders_dead_letter_is_shown_and_replayed_into_its_queue(
    broker_served: tuple[Client, Publisher],
    order_api: OrderApi,
    amqp_connection: AbstractRobustConnection,
) -> None:
    served, publisher = broker_served
    pool = order_api.pool
    name = await _operator(pool, "support")
    await _sign_in(served, name)
    no, _ = await basic_order(pool, status="pending")
    parked = await ready_messages(amqp_connection, ORDER_PAYMENTS.dlq)
    letter = await _dead_letter(publisher, no)
    other = await _dead_letter(publisher, f"{no}x")
    _, page = await _page(served, f"/console/orders/{no}")
    section = page[page.index('id="dead-letters"') :]
    assert f'data-letter="{letter}"' in section and f'data-letter="{other}"' not in section
    assert f"unknown out_trade_no {no}" in section and "payment.succeeded" in section
    _, health = await _page(served, "/console/health")
    assert 'href="/console/dlq"' in health
    _, dlqs = await _page(served, "/console/dlq")
    assert f'data-letter="{letter}"' in dlqs and f'data-letter="{other}"' in dlqs
    assert 'data-dlq="entitlement.orders.dlq"' in dlqs and "paylane replay dlq" in dlqs
    csrf = CSRF.findall(dlqs)[0]

    async def replay(message_id: str) -> tuple[int, str]:
        # The pages looked at the DLQ: its letters are back once the broker says so.
        await handed_back(amqp_connection, ORDER_PAYMENTS.dlq, parked + 2)
        form = {"queue": ORDER_PAYMENTS.dlq, "message_id": message_id}
        data = {**form, "csrf": csrf, "reason": "order row is there now"}
        path = f"/console/orders/{no}/replay-dead-letter"
        async with served.post(path, data=data) as response:
            return response.status, await response.text()

    # Another order's dead letter is not replayed from this order's page.
    status, page = await replay(other)
    assert status == 400 and f"no dead letter {other} about {no}" in page
    status, page = await replay(letter)
    assert status == 200, page
    assert f"dead letter {letter}: 1 dead letter(s) replayed from order.payments.dlq" in page
    replayed = await _taken_from(amqp_connection, ORDER_PAYMENTS.name, letter)
    assert replayed is not None and replayed.headers[REPLAYED_HEADER] == 1
    assert replayed.headers[ATTEMPT_HEADER] == 0 and REASON_HEADER not in replayed.headers
    assert not await _in_dlq(amqp_connection, letter)
    assert await _in_dlq(amqp_connection, other)  # the one not chosen stays
    rows = await _audit_rows(pool, no)
    assert [(r["action"], r["outcome"]) for r in rows] == [
        ("replay_dead_letter", "refused"),
        ("replay_dead_letter", "done"),
    ]
    assert rows[1]["operator"] == name and rows[1]["state_before"] == "pending"


async def test_replaying_dead_letters_takes_a_role_and_all_of_a_dlq_takes_an_admin(
    broker_served: tuple[Client, Publisher],
    order_api: OrderApi,
    amqp_connection: AbstractRobustConnection,
) -> None:
    served, publisher = broker_served
    pool = order_api.pool
    no, _ = await basic_order(pool, status="pending")
    letter = await _dead_letter(publisher, no)
    parked = await ready_messages(amqp_connection, ORDER_PAYMENTS.dlq)
    path = f"/console/dlq/{ORDER_PAYMENTS.dlq}/replay"

    async def replay(**form: str) -> tuple[int, str]:
        _, page = await _page(served, "/console/audit")  # a page that reads no DLQ
        await handed_back(amqp_connection, ORDER_PAYMENTS.dlq, parked)
        data = {**form, "csrf": CSRF.findall(page)[0], "reason": "cause fixed"}
        async with served.post(path, data=data) as response:
            return response.status, await response.text()

    await _sign_in(served, await _operator(pool, "viewer"))
    _, page = await _page(served, "/console/dlq")
    assert f'data-letter="{letter}"' in page and f'action="{path}"' not in page
    assert (await replay(message_id=letter))[0] == 403
    _, page = await _page(served, "/console/audit")
    form = {"queue": ORDER_PAYMENTS.dlq, "message_id": letter, "reason": "a viewer"}
    data = {**form, "csrf": CSRF.findall(page)[0]}
    async with served.post(f"/console/orders/{no}/replay-dead-letter", data=data) as response:
        assert response.status == 403
    await _sign_in(served, await _operator(pool, "support"))
    status, page = await replay(all="1")
    assert status == 403 and "admin only" in page
    assert await _in_dlq(amqp_connection, letter)
    assert not await fetch_all(
        pool,
        "SELECT 1 FROM paylane_operator_audit WHERE action LIKE 'replay%%' AND out_trade_no = %s",
        no,
    )
    admin = await _operator(pool, "admin")
    await _sign_in(served, admin)
    # A letter's form that names none (a letter without an id) is not "all": refused.
    status, page = await replay(message_id="")
    assert status == 400 and "Choose a dead letter" in page
    assert await _in_dlq(amqp_connection, letter)
    status, page = await replay(all="1")
    assert status == 200, page
    assert "dead letter(s) replayed from order.payments.dlq" in page
    assert not await _in_dlq(amqp_connection, letter)
    assert await _taken_from(amqp_connection, ORDER_PAYMENTS.name, letter) is not None
    audit = await fetch_one(
        pool,
        "SELECT action, out_trade_no, state_before, state_after, outcome"
        " FROM paylane_operator_audit WHERE operator = %s",
        admin,
    )
    assert audit["action"] == "replay_dlq" and audit["outcome"] == "done"
    assert audit["out_trade_no"] is None and audit["state_after"] == "dlq 0"
    assert audit["state_before"].startswith("dlq ") and audit["state_before"] != "dlq 0"


# --- the records kept for the timeline (issue 30: migrations 0016, 0017) --------------------


def _timeline(page: str) -> str:
    return page[page.index('id="timeline"') :]


async def test_every_query_to_wechatpay_is_in_the_timeline_with_who_asked(
    served: Client, order_api: OrderApi, gate: Gate
) -> None:
    """The reconciler's query of the order and of its refund, a client's on-demand query
    and an operator's re-query: each a row of wechatpay_queries, with WeChat Pay's answer
    or its error code."""
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "support"))
    no, _ = await basic_order(pool, amount=990, status="pending")
    await order_api.orders._client.place("NATIVE", order_request("native", no))  # NOTPAY
    out_refund_no = await add_refund(pool, no, "9.90", status="pending")
    # Not in a pass (other tests' rows): the order and the refund as a pass settles them.
    reconciler = Reconciler(pool, gate.client, None, ReconcilerConfig(), gate)  # type: ignore[arg-type]
    now = datetime.now(UTC).replace(tzinfo=None)
    order = {"out_trade_no": no, "expires_at": now + timedelta(minutes=10), "created_at": now}
    assert await reconciler.settle_order(order) == "still_pending"  # type: ignore[arg-type]
    refund = {
        "out_refund_no": out_refund_no,
        "out_trade_no": no,
        "amount_refund": 990,
        "refund_id": None,
        "created_at": now,
    }
    assert await reconciler.settle_refund(refund) == "refund_not_at_wechatpay_yet"  # type: ignore[arg-type]
    recording = replace(gate, queries=QueryLog(pool, gate.client))
    on_demand = StatusQuery(
        pool, recording, PaymentApplier(pool, recording), StatusQueryConfig(after_s=0)
    )
    row = await order_api.orders.get(no)
    assert row is not None and not await on_demand.settle(row)
    status, page = await _act(served, no, "query", reason="customer says they paid")
    assert status == 200 and "reports no payment" in page

    asked = await fetch_all(
        pool,
        "SELECT kind, out_refund_no, source, answer, error FROM wechatpay_queries"
        " WHERE out_trade_no = %s ORDER BY id",
        no,
    )
    assert asked == [
        {"kind": "order", "out_refund_no": None, "source": "reconciler", "answer": "NOTPAY",
         "error": None},
        {"kind": "refund", "out_refund_no": out_refund_no, "source": "reconciler",
         "answer": None, "error": "RESOURCE_NOT_EXISTS"},
        {"kind": "order", "out_refund_no": None, "source": "on_demand", "answer": "NOTPAY",
         "error": None},
        {"kind": "order", "out_refund_no": None, "source": "console", "answer": "NOTPAY",
         "error": None},
    ]  # fmt: skip
    timeline = _timeline(page)
    lines = re.findall(r'<td class="what">([^<]+)</td>', timeline)
    assert lines.count("WeChat Pay order query: NOTPAY") == 3
    assert "WeChat Pay refund query: error RESOURCE_NOT_EXISTS" in lines
    for source in ("reconciler", "on_demand", "console"):
        assert f"source={source}" in timeline


def _rejected(no: str | None, reason: str, status: int) -> NotificationRejected:
    return NotificationRejected(
        route="wechatpay",
        reason=reason,
        status=status,
        event_id=f"EV-{uuid.uuid4().hex[:12]}",
        event_type="TRANSACTION.SUCCESS",
        out_trade_no=no,
        serial="PUB_KEY_ID_0114232134912410000000000000",
        received_at=datetime.now(UTC),
    )


async def test_rejected_notifications_are_in_the_timeline_and_on_the_health_page(
    served: Client, order_api: OrderApi
) -> None:
    """The order service's side of ``notification.rejected`` (ingress's side:
    services/ingress/tests/test_rejection_records.py): a record naming the order is in its
    timeline, one naming none only on the health page; a redelivery writes nothing."""
    pool = order_api.pool
    await _sign_in(served, await _operator(pool, "viewer"))
    no, _ = await basic_order(pool, status="paid")
    records = RejectionRecords(pool)
    named = make_event(NOTIFICATION_REJECTED, _rejected(no, "invalid_resource", 400))
    unnamed = make_event(NOTIFICATION_REJECTED, _rejected(None, "bad_signature", 401))
    assert await records(named, named.typed_data()) == "recorded"
    assert await records(named, named.typed_data()) == "duplicate"
    assert await records(unnamed, unnamed.typed_data()) == "recorded"

    _, page = await _page(served, f"/console/orders/{no}")
    timeline = _timeline(page)
    assert "notification rejected: invalid_resource" in timeline
    assert "answered=400" in timeline and "bad_signature" not in timeline
    _, health = await _page(served, "/console/health")
    rejections = health[health.index('id="rejections"') :]
    assert unnamed.data["event_id"] in rejections and "bad_signature" in rejections
    assert f'href="/console/orders/{no}"' in rejections
