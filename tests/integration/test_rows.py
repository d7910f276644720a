"""``paylane_common.storage.rows`` against the database: every column of the shared tables with
the type a ``DictCursor`` gives it, and each query's row type of the order and
entitlement services (declared beside its query) with exactly those types. A
``TypedDict`` is a promise to the type checker only: this is where it is held to the
tables the migrations make."""

from __future__ import annotations

import types
import typing
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import aiomysql
import pytest

from paylane_common.storage import db, rows
from paylane_entitlement import grants
from paylane_order import (
    abnormal,
    bills,
    business,
    fulfilment,
    gate,
    order_created,
    orders,
    payments,
    reconciler,
    refund_requests,
    refunds,
    review,
    sweep,
    users,
)

pytestmark = pytest.mark.integration

_ORDER_MODULES = (
    abnormal,
    bills,
    business,
    fulfilment,
    gate,
    order_created,
    orders,
    payments,
    reconciler,
    refund_requests,
    refunds,
    review,
    sweep,
    users,
)

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


#: Each query's row type and the tables its columns come from (the first that has one);
#: ``coalesced``: columns read as ``COALESCE(column, default)``, never NULL.
QUERY_ROWS: list[tuple[type[Any], tuple[str, ...], tuple[str, ...]]] = [
    (users.UserRef, ("users",), ()),
    (order_created._UserId, ("users",), ()),
    (orders.OrderWithUser, ("payment_orders", "users"), ()),
    (orders.OrderRefund, ("refunds",), ()),
    (refund_requests._PaidOrder, ("payment_orders",), ()),
    (refund_requests._Requested, ("refunds",), ()),
    (review.OrderOwner, ("payment_orders",), ()),
    (review._UnderReview, ("payment_orders",), ()),
    (sweep.OrderEffect, ("payment_orders",), ()),
    (sweep._Settled, ("payment_orders",), ()),
    (sweep._PaidElsewhere, ("payment_orders",), ()),
    (sweep._Logged, ("payment_orders",), ()),
    (gate.PricedOrder, ("payment_orders",), ()),
    (business.Marked, ("payment_orders",), ()),
    (fulfilment.FulfilledOrder, ("payment_orders",), ()),
    (payments.PayableOrder, ("payment_orders",), ()),
    (payments._RefundOf, ("refunds",), ()),
    (refunds._RefundedOrder, ("payment_orders",), ()),
    (refunds._RefundState, ("refunds",), ()),
    (reconciler.OrderToSettle, ("payment_orders",), ()),
    (reconciler._PendingOrder, ("payment_orders",), ()),
    (reconciler.RefundToSettle, ("refunds",), ()),
    (reconciler._PendingRefund, ("refunds",), ()),
    (reconciler._Keyed, ("payment_orders",), ()),
    (reconciler._Keyed, ("refunds",), ()),
    (bills._Order, ("payment_orders",), ()),
    (bills._Refund, ("refunds",), ()),
    (abnormal.AbnormalRefundRow, ("refunds",), ()),
    (order_created._ExistingOrder, ("payment_orders",), ()),
    (grants.UserState, ("users",), ("payment_status", "regenerate_count")),
    (grants._UserStateOf, ("users",), ("payment_status", "regenerate_count")),
]
#: TypedDicts of those packages that are not rows of a shared table.
NOT_ROWS = {orders.OrderDetail, refund_requests.RefundRequest, grants._Grant, grants._Granted}


@pytest.mark.parametrize(
    ("shape", "tables", "coalesced"),
    QUERY_ROWS,
    ids=[f"{s.__module__.rsplit('.', 1)[-1]}.{s.__name__}" for s, _, _ in QUERY_ROWS],
)
def test_a_query_row_gives_each_column_its_one_type(
    shape: type[Any], tables: tuple[str, ...], coalesced: tuple[str, ...]
) -> None:
    full = [get_type_hints(FULL_ROWS[table]) for table in tables]
    for name, hint in get_type_hints(shape).items():
        column = next((hints[name] for hints in full if name in hints), None)
        assert column is not None, f"{shape.__name__}.{name} is no column of {tables}"
        expected = _members(column) - {None} if name in coalesced else _members(column)
        assert _members(hint) == expected, f"{shape.__name__}.{name}"


def test_every_row_type_of_the_services_is_checked_above() -> None:
    declared = {
        value
        for module in (*_ORDER_MODULES, grants)
        for value in vars(module).values()
        if typing.is_typeddict(value) and value.__module__ == module.__name__
    }
    assert declared - NOT_ROWS == {shape for shape, _, _ in QUERY_ROWS}
