"""Rows of the shared ``users``, ``payment_orders`` and ``refunds`` tables, written as the
other writers (the cloud function, the Node backend) write them: ids in the existing
system's format, only the columns given, the table's defaults for the rest.

A value may be a time relative to the database's clock (``ago``, ``from_now``), so that
rows are stamped in the server's time zone, as ``NOW()`` stamps them.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeAlias

import aiomysql

from paylane_common.contract.catalog import DEFAULT_CATALOG
from paylane_common.contract.ids import new_row_id
from paylane_common.storage.db import transaction
from tests.support.cloud_function import new_out_trade_no

#: Where rows go: a pool (one transaction of their own) or the cursor of a transaction.
Target: TypeAlias = aiomysql.Pool | aiomysql.Cursor


@dataclass(frozen=True)
class DbTime:
    """``NOW(6)`` plus ``offset_s`` seconds, as the database computes it."""

    offset_s: float


def ago(seconds: float) -> DbTime:
    return DbTime(-seconds)


def from_now(seconds: float) -> DbTime:
    return DbTime(seconds)


async def add_users(db: Target, count: int, **columns: object) -> list[str]:
    """``count`` users with these column values; returns their new ids."""
    rows = [{"id": new_row_id("user"), **columns} for _ in range(count)]
    await _insert(db, "users", rows)
    return [str(row["id"]) for row in rows]


async def add_user(db: Target, **columns: object) -> str:
    """One user with these column values (``id`` among them, or a new one); returns its id."""
    row = {"id": new_row_id("user"), **columns}
    await _insert(db, "users", [row])
    return str(row["id"])


async def add_orders(
    db: Target,
    orders: Iterable[tuple[str, str]],
    *,
    package_type: str = "basic",
    amount: Decimal | str | None = None,
    generation_id: str = "",
    **columns: object,
) -> None:
    """One order per ``(out_trade_no, user_id)``, all with these column values.
    ``amount`` is in yuan, as the shared table has it (the catalog price by default)."""
    if amount is None:
        amount = Decimal(DEFAULT_CATALOG[package_type].price_fen).scaleb(-2)
    shared = {
        "package_type": package_type,
        "amount": amount,
        "generation_id": generation_id,
        **columns,
    }
    rows = [
        {"id": new_row_id("order"), "out_trade_no": no, "user_id": user_id, **shared}
        for no, user_id in orders
    ]
    await _insert(db, "payment_orders", rows)


async def add_order(
    db: Target,
    user_id: str,
    out_trade_no: str | None = None,
    *,
    package_type: str = "basic",
    amount: Decimal | str | None = None,
    generation_id: str = "",
    **columns: object,
) -> str:
    """One order of ``user_id`` (see ``add_orders``; ``id`` may be given); returns its
    out_trade_no (a new one in the cloud function's format unless given)."""
    out_trade_no = out_trade_no or new_out_trade_no()
    await add_orders(
        db,
        [(out_trade_no, user_id)],
        package_type=package_type,
        amount=amount,
        generation_id=generation_id,
        **columns,
    )
    return out_trade_no


async def add_refund(
    db: Target,
    out_trade_no: str,
    refund_amount: Decimal | str,
    total_amount: Decimal | str | None = None,
    *,
    out_refund_no: str | None = None,
    **columns: object,
) -> str:
    """One refund of ``out_trade_no`` with these column values (``id`` may be given);
    amounts in yuan, as the shared table has them (the whole order by default). Returns
    its out_refund_no (a new one unless given)."""
    out_refund_no = out_refund_no or f"RF{secrets.token_hex(10).upper()}"
    row = {
        "id": new_row_id("refund"),
        "out_refund_no": out_refund_no,
        "out_trade_no": out_trade_no,
        "refund_amount": refund_amount,
        "total_amount": refund_amount if total_amount is None else total_amount,
        **columns,
    }
    await _insert(db, "refunds", [row])
    return out_refund_no


async def _insert(db: Target, table: str, rows: Sequence[Mapping[str, object]]) -> None:
    if not rows:
        return
    names = list(rows[0])
    first = rows[0]
    placeholders = ", ".join(
        "NOW(6) + INTERVAL %s MICROSECOND" if isinstance(first[n], DbTime) else "%s" for n in names
    )
    sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})"
    params = [tuple(_param(row[n]) for n in names) for row in rows]
    if isinstance(db, aiomysql.Cursor):
        await db.executemany(sql, params)
        return
    async with transaction(db) as cur:
        await cur.executemany(sql, params)


def _param(value: object) -> object:
    return round(value.offset_s * 1_000_000) if isinstance(value, DbTime) else value
