"""``paylane_common.rows`` against the database: every column of the shared tables with
the type a ``DictCursor`` gives it, and each query's row type (declared beside its query)
with exactly those types. A ``TypedDict`` is a promise to the type checker only: this is
where it is held to the tables the migrations make."""

from __future__ import annotations

import types
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import aiomysql
import pytest

from paylane_common import db, rows

pytestmark = pytest.mark.integration

FULL_ROWS: dict[str, type[Any]] = {
    "users": rows.UserRow,
    "payment_orders": rows.OrderRow,
    "refunds": rows.RefundRow,
}

_PYTHON_TYPE = {
    "varchar": str,
    "char": str,
    "text": str,
    "decimal": Decimal,
    "int": int,
    "timestamp": datetime,
    "datetime": datetime,
}


def _members(hint: Any) -> set[Any]:
    """A hint's alternatives: ``str | None`` → {str, None}; a Literal's values as one."""
    if get_origin(hint) in (Union, types.UnionType):
        return set().union(*(_members(arg) for arg in get_args(hint)))
    if hint is type(None):
        return {None}
    return {hint}


def _enum_values(column_type: str) -> set[str]:
    """``enum('free','basic')`` → {"free", "basic"}."""
    inner = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    return {v.strip().strip("'") for v in inner.split(",")}


def _literal_values(hint: Any) -> set[str]:
    return {v for m in _members(hint) if get_origin(m) is Literal for v in get_args(m)}


async def _columns(pool: aiomysql.Pool, table: str) -> dict[str, dict[str, Any]]:
    async with db.transaction(pool) as cur:
        await cur.execute(
            "SELECT COLUMN_NAME AS name, DATA_TYPE AS data_type, COLUMN_TYPE AS column_type,"
            " IS_NULLABLE AS nullable, GENERATION_EXPRESSION AS generated"
            " FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (table,),
        )
        return {c["name"]: c for c in await cur.fetchall()}


@pytest.mark.parametrize("table", list(FULL_ROWS))
async def test_a_full_row_is_every_column_with_its_type(db_pool: aiomysql.Pool, table: str) -> None:
    columns = await _columns(db_pool, table)
    hints = get_type_hints(FULL_ROWS[table])
    assert set(hints) == set(columns)
    for name, column in columns.items():
        members = _members(hints[name])
        generated = bool(column["generated"])  # fen, from a NOT NULL yuan column
        nullable = column["nullable"] == "YES" and not generated
        assert (None in members) == nullable, name
        if column["data_type"] == "enum":
            assert _literal_values(hints[name]) == _enum_values(column["column_type"]), name
        else:
            assert members - {None} == {_PYTHON_TYPE[column["data_type"]]}, name


@pytest.mark.parametrize("table", list(FULL_ROWS))
async def test_rows_as_the_cursor_gives_them_have_those_types(
    db_pool: aiomysql.Pool, table: str
) -> None:
    """The adopted database's rows (the other writers', and the earlier tests') read with
    ``SELECT *``: each value is of its column's type."""
    hints = get_type_hints(FULL_ROWS[table])
    async with db.transaction(db_pool) as cur:
        await cur.execute(f"SELECT * FROM {table} ORDER BY created_at DESC LIMIT 200")
        found = await rows.fetch_all(cur, FULL_ROWS[table])
    assert found
    for row in found:
        for name, value in row.items():
            members = _members(hints[name])
            if value is None:
                assert None in members, name
            elif isinstance(value, str) and _literal_values(hints[name]):
                assert value in _literal_values(hints[name]), name
            else:
                assert type(value) in members, (name, type(value))
