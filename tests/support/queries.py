"""Reading what the stack wrote to the database: a row, an order's status, a user's plan,
an order's grants."""

from __future__ import annotations

from typing import Any

import aiomysql

from paylane_common.storage.db import transaction


async def fetch_one(pool: aiomysql.Pool, sql: str, *args: object) -> dict[str, Any]:
    """The first row of ``sql`` (None when there is none)."""
    async with transaction(pool) as cur:
        await cur.execute(sql, args)
        row: dict[str, Any] = await cur.fetchone()
        return row


async def order_status(pool: aiomysql.Pool, out_trade_no: str) -> str:
    """The order's ``status`` in ``payment_orders``."""
    row = await fetch_one(
        pool, "SELECT status FROM payment_orders WHERE out_trade_no = %s", out_trade_no
    )
    return str(row["status"])


async def user_state(pool: aiomysql.Pool, user_id: str) -> tuple[str | None, int | None]:
    """The user's plan and regenerations left, as stored (None for NULL: another writer
    may leave them so)."""
    row = await fetch_one(
        pool, "SELECT payment_status, regenerate_count FROM users WHERE id = %s", user_id
    )
    return row["payment_status"], row["regenerate_count"]


async def grants(pool: aiomysql.Pool, out_trade_no: str) -> dict[str, Any]:
    """The order's ledger rows: ``{"n": rows, "revoked": of them revoked}``."""
    return await fetch_one(
        pool,
        "SELECT COUNT(*) AS n, COUNT(revoked_at) AS revoked FROM entitlement_grants"
        " WHERE out_trade_no = %s",
        out_trade_no,
    )
