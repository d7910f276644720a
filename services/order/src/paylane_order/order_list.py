"""Listing orders (``GET /orders``) and exporting them (``GET /orders/export.csv``): the
filters, the keyset pages and their opaque cursor, the CSV.

Newest first, by ``(created_at, id)``: a page is the rows before the last one of the page
before, so a page costs the same however deep, and orders placed meanwhile never shift
a page (they are newer than the first). The cursor is that last row's key and a
fingerprint of the filters it was made under, base64url JSON: opaque to the caller, and
refused (400) under other filters. Not signed: a user's list is restricted to their own
orders server-side whatever the cursor says.

``from`` and ``to`` (``created_at >= from``, ``< to``) are ISO 8601 with an offset, or a
date, taken as that day's start in China time (UTC+8), WeChat Pay's and the bills' day.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any, TypeVar

import aiomysql
from multidict import MultiMapping
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from paylane_common.contract.china_time import CHINA
from paylane_common.contract.events import validation_summary
from paylane_common.contract.money import yuan_text
from paylane_common.storage.db import transaction
from paylane_common.storage.rows import OrderStatus

from .errors import InvalidRequest

#: ``limit`` of ``GET /orders``: by default, at most.
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
#: Rows the export reads a page (each page one short transaction).
EXPORT_PAGE = 500

#: The columns a list row and a CSV line are made of.
COLUMNS = (
    "id, out_trade_no, user_id, package_type, trade_type, amount_total, amount_refunded,"
    " status, transaction_id, generation_id, remark, created_at, paid_at, closed_at,"
    " refunded_at, expires_at"
)
CSV_HEADER = (
    "out_trade_no",
    "user_id",
    "package_type",
    "trade_type",
    "status",
    "amount",
    "amount_refunded",
    "transaction_id",
    "generation_id",
    "remark",
    "created_at",
    "paid_at",
    "closed_at",
    "refunded_at",
)


def _moment(value: str) -> datetime:
    """A query's ``from`` / ``to`` as naive UTC (the columns' time zone)."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=CHINA).astimezone(UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO 8601 date or date-time") from None
    if moment.tzinfo is None:
        raise ValueError("a date-time needs its offset (Z, +08:00, …)")
    return moment.astimezone(UTC)


class OrderFilters(BaseModel):
    """The filters both routes take; every other query parameter is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: Annotated[StrictStr, Field(min_length=1, max_length=36)] | None = None
    status: OrderStatus | None = None
    since: datetime | None = Field(default=None, alias="from")
    until: datetime | None = Field(default=None, alias="to")

    @field_validator("since", "until", mode="before")
    @classmethod
    def _moment(cls, value: Any) -> Any:
        return _moment(value).replace(tzinfo=None) if isinstance(value, str) else value

    def fingerprint(self) -> str:
        """The filters' digest (not a page's size or cursor): a cursor is for these."""
        filters = self.model_dump(mode="json", exclude=set(PAGE_FIELDS))
        text = json.dumps(filters, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def conditions(self) -> tuple[list[str], list[Any]]:
        """The WHERE conditions (ANDed) and their arguments; a subclass (the operators'
        console's search) adds its own."""
        where, args = [], []
        for column, op, value in (
            ("user_id", "=", self.user_id),
            ("status", "=", self.status),
            ("created_at", ">=", self.since),
            ("created_at", "<", self.until),
        ):
            if value is not None:
                where.append(f"{column} {op} %s")
                args.append(value)
        return where, args


#: A page's fields of a query: not filters.
PAGE_FIELDS = frozenset({"cursor", "limit"})


class ListQuery(OrderFilters):
    """``GET /orders``'s query: the filters, a page's ``limit`` and the ``cursor``."""

    cursor: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)


Q = TypeVar("Q", bound=OrderFilters)


def parse_query(model: type[Q], query: MultiMapping[str]) -> Q:
    """The query string validated with ``model``; 400 naming what is wrong (a parameter
    given twice too: which one counts would be a guess)."""
    twice = sorted({k for k in query if len(query.getall(k)) > 1})
    if twice:
        raise InvalidRequest(f"given more than once: {', '.join(twice)}")
    try:
        parsed = model.model_validate(dict(query))
    except ValidationError as exc:
        raise InvalidRequest(validation_summary(exc)) from None
    if parsed.since and parsed.until and parsed.since >= parsed.until:
        raise InvalidRequest("from must be before to")
    return parsed


@dataclass(frozen=True)
class Key:
    """Where a page ends: its last row's ``(created_at, id)``. The shared schema lets
    another writer leave ``created_at`` NULL: such rows come last (MySQL sorts NULL
    lowest), ordered by id."""

    created_at: datetime | None
    id: str

    def cursor(self, filters: OrderFilters) -> str:
        moment = self.created_at.isoformat() if self.created_at is not None else None
        text = json.dumps([moment, self.id, filters.fingerprint()])
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def of_cursor(cls, cursor: str, filters: OrderFilters) -> Key:
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            created_at, row_id, fingerprint = json.loads(raw)
            moment = None if created_at is None else datetime.fromisoformat(created_at)
            key = cls(moment, str(row_id))
        except (ValueError, TypeError):
            raise InvalidRequest("cursor is not one this API made") from None
        if fingerprint != filters.fingerprint():
            raise InvalidRequest("cursor was made for other filters: start again without it")
        return key


class OrderList:
    """The order list's pages and the export, read from ``payment_orders``."""

    def __init__(self, pool: aiomysql.Pool) -> None:
        self._pool = pool

    async def page(
        self, filters: OrderFilters, after: Key | None, limit: int
    ) -> list[dict[str, Any]]:
        return await page(self._pool, filters, after, limit)

    def csv(self, filters: OrderFilters) -> AsyncIterator[bytes]:
        return csv_chunks(self._pool, filters)


async def page(
    pool: aiomysql.Pool, filters: OrderFilters, after: Key | None, limit: int
) -> list[dict[str, Any]]:
    """Up to ``limit`` orders matching ``filters``, newest first, older than ``after``."""
    where, args = filters.conditions()
    if after is not None:
        if after.created_at is None:
            where.append("(created_at IS NULL AND id < %s)")
            args.append(after.id)
        else:
            where.append("(created_at < %s OR (created_at = %s AND id < %s) OR created_at IS NULL)")
            args += [after.created_at, after.created_at, after.id]
    sql = f"SELECT {COLUMNS} FROM payment_orders"
    if where:
        sql += " WHERE " + " AND ".join(where)
    async with transaction(pool) as cur:
        await cur.execute(f"{sql} ORDER BY created_at DESC, id DESC LIMIT %s", (*args, limit))
        rows: list[dict[str, Any]] = list(await cur.fetchall())
    for row in rows:
        row["amount_refunded"] = refunded_fen(row)
    return rows


def refunded_fen(order: Mapping[str, Any]) -> int | None:
    """What came back of an order, in fen. Another writer (the cloud function) marks an
    order ``refunded`` on a full refund and leaves paylane's ``amount_refunded`` at 0:
    all of it came back."""
    if order["status"] == "refunded" and not order.get("amount_refunded"):
        total: int | None = order["amount_total"]
        return total
    refunded: int | None = order.get("amount_refunded")
    return refunded


async def csv_chunks(pool: aiomysql.Pool, filters: OrderFilters) -> AsyncIterator[bytes]:
    """The export, a header line then a chunk per page of :data:`EXPORT_PAGE` rows: yuan
    as exact strings (``29.90``), times ISO 8601 UTC, text that a spreadsheet would take
    for a formula (``=``, ``+``, ``-``, ``@`` first) quoted with a leading ``'``."""
    yield _csv_lines([CSV_HEADER])
    after: Key | None = None
    while True:
        rows = await page(pool, filters, after, EXPORT_PAGE)
        if rows:
            yield _csv_lines([_csv_row(row) for row in rows])
        if len(rows) < EXPORT_PAGE:
            return
        after = Key(rows[-1]["created_at"], rows[-1]["id"])


def _csv_lines(rows: list[tuple[str, ...]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


def _csv_row(row: Mapping[str, Any]) -> tuple[str, ...]:
    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, datetime):
            return value.isoformat() + "Z"
        value = str(value)
        return f"'{value}" if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value

    refunded = row["amount_refunded"]
    return (
        text(row["out_trade_no"]),
        text(row["user_id"]),
        text(row["package_type"]),
        text(row["trade_type"]),
        text(row["status"]),
        yuan_text(row["amount_total"]),
        yuan_text(refunded) if refunded is not None else "",
        text(row["transaction_id"]),
        text(row["generation_id"]),
        text(row["remark"]),
        text(row["created_at"]),
        text(row["paid_at"]),
        text(row["closed_at"]),
        text(row["refunded_at"]),
    )
