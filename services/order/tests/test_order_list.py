"""``GET /orders`` (keyset pages, newest first; the backend: anyone's, a user: their own)
and ``GET /orders/export.csv`` (the backend: every match, streamed, yuan exact). Over
HTTP, on the session's database: rows as paylane and the other writers leave them."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from paylane_common.storage.db import transaction
from paylane_order import order_list
from services.order.tests.support import OrderApi
from tests.support.seeding import add_order, add_user
from tests.support.stack_config import BACKEND

pytestmark = pytest.mark.integration

#: When the test's orders were created: 2026-03-0x, minutes apart (the seed's are older).
DAY = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def _orders(
    order_api: OrderApi, user_id: str, count: int, start: int = 0, **columns: Any
) -> list[str]:
    """``count`` orders of ``user_id``, an hour apart from ``DAY`` plus ``start`` hours,
    the first the oldest (the newest first in a list: the returned list reversed)."""
    made = []
    for i in range(start, start + count):
        created = (DAY + timedelta(hours=i)).replace(tzinfo=None)
        made.append(await add_order(order_api.pool, user_id, created_at=created, **columns))
    return made


async def _list(order_api: OrderApi, headers: dict[str, str], **query: Any) -> tuple[int, Any]:
    return await order_api.call("GET", f"/orders?{urlencode(query)}", None, headers)


async def test_a_user_pages_through_their_own_orders_newest_first(order_api: OrderApi) -> None:
    user_id, session = await order_api.user()
    mine = await _orders(order_api, user_id, 5)
    other, _ = await order_api.user()
    await _orders(order_api, other, 2)

    seen: list[str] = []
    pages, cursor = 0, None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        status, page = await _list(order_api, session, **query)
        assert status == 200, page
        seen += [o["out_trade_no"] for o in page["orders"]]
        assert {o["user_id"] for o in page["orders"]} == {user_id}
        pages, cursor = pages + 1, page["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == (mine[::-1], 3)

    status, answer = await _list(order_api, session, user_id=other)
    assert (status, answer["error"]) == (403, "forbidden")
    status, answer = await order_api.call("GET", "/orders")
    assert status == 401


async def test_the_backend_filters_by_user_status_and_time(order_api: OrderApi) -> None:
    user_id = await add_user(order_api.pool)
    pending = await _orders(order_api, user_id, 3)
    (paid,) = await _orders(order_api, user_id, 1, 3, status="paid", transaction_id="4200001")
    status, page = await _list(order_api, BACKEND, user_id=user_id)
    assert [o["out_trade_no"] for o in page["orders"]] == [paid, *pending[::-1]]
    assert page["next_cursor"] is None
    status, page = await _list(order_api, BACKEND, user_id=user_id, status="paid")
    assert [(o["out_trade_no"], o["amount"], o["amount_total"]) for o in page["orders"]] == [
        (paid, "0.01", 1)
    ]
    # 12:00 and 13:00 UTC of DAY are 20:00 and 21:00 China time: from 21:00 on, before 14:00.
    status, page = await _list(
        order_api,
        BACKEND,
        user_id=user_id,
        **{"from": "2026-03-01T21:00:00+08:00"},
        to="2026-03-01T14:00:00Z",
    )
    assert [o["out_trade_no"] for o in page["orders"]] == [pending[1]]
    # A date is its China day: all of them on 2026-03-01 China time.
    status, page = await _list(order_api, BACKEND, user_id=user_id, to="2026-03-02")
    assert (status, len(page["orders"])) == (200, 4)


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("status=lost", "status"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("from=yesterday", "from"),
        ("from=2026-03-01T12:00:00", "offset"),
        ("from=2026-03-02&to=2026-03-01", "before"),
        ("page=2", "page"),
        ("status=paid&status=failed", "more than once"),
        ("cursor=not-a-cursor", "cursor"),
    ],
)
async def test_every_parameter_is_checked(order_api: OrderApi, query: str, problem: str) -> None:
    status, answer = await order_api.call("GET", f"/orders?{query}", None, BACKEND)
    assert (status, answer["error"]) == (400, "invalid_request"), answer
    assert problem in answer["message"]


async def test_a_cursor_is_for_the_filters_it_was_made_under(order_api: OrderApi) -> None:
    user_id = await add_user(order_api.pool)
    await _orders(order_api, user_id, 3)
    _, page = await _list(order_api, BACKEND, user_id=user_id, limit=1)
    status, answer = await _list(
        order_api, BACKEND, user_id=user_id, status="paid", cursor=page["next_cursor"]
    )
    assert (status, answer["error"]) == (400, "invalid_request")
    assert "other filters" in answer["message"]


async def test_the_export_streams_every_match_with_exact_yuan(
    order_api: OrderApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(order_list, "EXPORT_PAGE", 2)  # several pages
    user_id = await add_user(order_api.pool)
    made = await _orders(order_api, user_id, 4, package_type="premium")
    async with transaction(order_api.pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET status = 'refunded', remark = %s WHERE out_trade_no = %s",
            ('=HYPERLINK("x"), 退款', made[0]),
        )
    async with order_api.client.get(f"/orders/export.csv?user_id={user_id}", headers=BACKEND) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
        assert "chunked" in r.headers.get("Transfer-Encoding", "")  # streamed, not sized
        text = await r.text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(order_list.CSV_HEADER)
    assert [row["out_trade_no"] for row in rows] == made[::-1]
    assert {row["amount"] for row in rows} == {"29.90"}
    oldest = rows[-1]
    assert (oldest["status"], oldest["amount_refunded"]) == ("refunded", "29.90")
    assert oldest["remark"] == '\'=HYPERLINK("x"), 退款'  # not a formula in a spreadsheet
    assert Decimal(oldest["amount"]) == Decimal("29.90")
    assert oldest["created_at"] == "2026-03-01T12:00:00Z"

    _, session = await order_api.user()
    status, answer = await order_api.call("GET", "/orders/export.csv", None, session)
    assert (status, answer["error"]) == (403, "forbidden")
    status, answer = await order_api.call("GET", "/orders/export.csv?cursor=x", None, BACKEND)
    assert (status, answer["error"]) == (400, "invalid_request")


async def test_a_user_never_sees_the_backends_remark_in_their_list(order_api: OrderApi) -> None:
    """``remark`` is the backend's note: ``GET /orders/{no}`` shows it to the backend only,
    and so does the list (a user's own list has it ``null``)."""
    user_id, session = await order_api.user()
    (no,) = await _orders(order_api, user_id, 1)
    async with transaction(order_api.pool) as cur:
        await cur.execute(
            "UPDATE payment_orders SET remark = %s WHERE out_trade_no = %s",
            ("chargeback risk: watch this user", no),
        )
    status, page = await _list(order_api, session)
    assert status == 200, page
    assert [(o["out_trade_no"], o["remark"]) for o in page["orders"]] == [(no, None)]
    status, page = await _list(order_api, BACKEND, user_id=user_id)
    assert [o["remark"] for o in page["orders"]] == ["chargeback risk: watch this user"]


async def test_rows_without_created_at_come_last_and_every_page_reaches_them(
    order_api: OrderApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared schema lets another writer leave ``created_at`` NULL. Such rows come
    last (by id), a page may end on one, and the export still reads them all: the
    cursor used to fail on them (a 500), the export to stop short of them."""
    user_id, _ = await order_api.user()
    dated = await _orders(order_api, user_id, 2)
    undated = await _orders(order_api, user_id, 3, start=5)
    async with transaction(order_api.pool) as cur:
        await cur.execute("SELECT @@explicit_defaults_for_timestamp AS e")
        if not (await cur.fetchone())["e"]:
            pytest.skip("this server cannot hold a NULL TIMESTAMP")
        for no in undated:
            await cur.execute(
                "UPDATE payment_orders SET created_at = NULL WHERE out_trade_no = %s", (no,)
            )
        await cur.execute(
            "SELECT out_trade_no FROM payment_orders WHERE user_id = %s AND created_at IS NULL"
            " ORDER BY id DESC",
            (user_id,),
        )
        by_id = [row["out_trade_no"] for row in await cur.fetchall()]
    assert sorted(by_id) == sorted(undated)

    seen, cursor = [], None
    while True:
        query = {"user_id": user_id, "limit": 2, **({"cursor": cursor} if cursor else {})}
        status, page = await _list(order_api, BACKEND, **query)
        assert status == 200, page
        seen += [o["out_trade_no"] for o in page["orders"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == dated[::-1] + by_id

    monkeypatch.setattr(order_list, "EXPORT_PAGE", 2)
    async with order_api.client.get(f"/orders/export.csv?user_id={user_id}", headers=BACKEND) as r:
        rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert [row["out_trade_no"] for row in rows] == seen
