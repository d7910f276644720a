"""The shared tables as the existing system has them, and what paylane adds to them.

The database paylane adopts already holds ``users``, ``payment_orders``, ``refunds`` and
``payment_logs`` (docs/database.md), written by a cloud function and a Node backend.
The migrations create those tables exactly so when they are missing, and otherwise only
*add*: columns, indexes and ENUM values, each checked in ``information_schema`` first, so
the same step runs on an empty database, on the adopted one and a second time, and works
on MySQL 8 (which has no ``ADD COLUMN IF NOT EXISTS``) as on MariaDB. Nothing here
renames, retypes or drops a column, or writes a row of those tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class SchemaError(RuntimeError):
    """The database holds something the migrations must not touch to go on."""


@dataclass(frozen=True)
class Column:
    table: str
    name: str
    definition: str


@dataclass(frozen=True)
class Index:
    table: str
    name: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True)
class EnumValues:
    """Values an ENUM column must accept; missing ones are appended (an instant change)."""

    table: str
    column: str
    values: tuple[str, ...]


def _one(cur: Any, sql: str, args: Sequence[object]) -> Any:
    cur.execute(sql, args)
    return cur.fetchone()


def column_info(cur: Any, table: str, column: str) -> Any:
    return _one(
        cur,
        "SELECT DATA_TYPE, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT"
        " FROM information_schema.COLUMNS"
        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = %s",
        (table, column),
    )


def refuse_integer_user_ids(cur: Any) -> None:
    """A database made by a pre-release paylane (``users.id`` an integer) is not the
    shared schema and cannot become it without retyping: say so instead of half-working."""
    info = column_info(cur, "users", "id")
    if info and info[0].lower() in {"tinyint", "smallint", "mediumint", "int", "bigint"}:
        raise SchemaError(
            "users.id is an integer here: this database was made by a pre-release paylane "
            "schema, not the shared one (string ids such as user-1706345678901-xyz789). "
            "Migrate into a new database instead; nothing was changed."
        )


def add_column(cur: Any, column: Column) -> bool:
    if column_info(cur, column.table, column.name):
        return False
    cur.execute(f"ALTER TABLE `{column.table}` ADD COLUMN `{column.name}` {column.definition}")
    return True


def _index_exists(cur: Any, index: Index) -> bool:
    cur.execute(
        "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS"
        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s"
        " ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        (index.table,),
    )
    found: dict[str, tuple[bool, list[str]]] = {}
    for name, non_unique, column in cur.fetchall():
        found.setdefault(name, (not int(non_unique), []))[1].append(column)
    if index.name in found:
        return True
    # The same columns under another name serve as well (a unique one also for a plain one).
    return any(
        cols == list(index.columns) and (unique or not index.unique)
        for unique, cols in found.values()
    )


def add_index(cur: Any, index: Index) -> bool:
    if _index_exists(cur, index):
        return False
    kind = "UNIQUE INDEX" if index.unique else "INDEX"
    columns = ", ".join(f"`{c}`" for c in index.columns)
    cur.execute(f"ALTER TABLE `{index.table}` ADD {kind} `{index.name}` ({columns})")
    return True


def _enum_values(column_type: str) -> list[str]:
    inner = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    return [v.strip().strip("'").replace("''", "'") for v in inner.split(",")]


def extend_enum(cur: Any, enum: EnumValues) -> bool:
    info = column_info(cur, enum.table, enum.column)
    if info is None:
        raise SchemaError(f"{enum.table}.{enum.column} is missing")
    _, column_type, nullable, default = info
    present = _enum_values(column_type)
    missing = [v for v in enum.values if v not in present]
    if not missing:
        return False
    values = ", ".join("'" + v.replace("'", "''") + "'" for v in (*present, *missing))
    definition = f"ENUM({values})" + ("" if nullable == "YES" else " NOT NULL")
    if default is not None and default.upper() == "NULL":  # MariaDB: no default, unquoted
        default = None
    if default is not None:
        # information_schema quotes string defaults on MariaDB, not on MySQL.
        default = default.strip("'")
        definition += f" DEFAULT '{default}'"
    elif nullable == "YES":
        definition += " DEFAULT NULL"
    cur.execute(f"ALTER TABLE `{enum.table}` MODIFY COLUMN `{enum.column}` {definition}")
    return True


def ensure(
    cur: Any,
    columns: Sequence[Column] = (),
    indexes: Sequence[Index] = (),
    enums: Sequence[EnumValues] = (),
) -> list[str]:
    """Add whatever of these is missing; return what was added (for the log)."""
    added: list[str] = []
    for enum in enums:
        if extend_enum(cur, enum):
            added.append(f"{enum.table}.{enum.column} += {enum.values}")
    for column in columns:
        if add_column(cur, column):
            added.append(f"{column.table}.{column.name}")
    for index in indexes:
        if add_index(cur, index):
            added.append(f"{index.table}:{index.name}")
    return added


# paylane's additions to the shared tables (migration 0002_paylane_additions).
def _fen(yuan: str) -> str:
    return f"INT AS (CAST(ROUND(`{yuan}` * 100) AS SIGNED)) VIRTUAL"


ORDERS = "payment_orders"
COLUMNS = [
    Column(ORDERS, "amount_total", _fen("amount")),
    Column(ORDERS, "currency", "CHAR(3) NOT NULL DEFAULT 'CNY'"),
    Column(ORDERS, "mchid", "VARCHAR(32) NULL"),
    Column(ORDERS, "appid", "VARCHAR(64) NULL"),
    Column(ORDERS, "prepay_id", "VARCHAR(128) NULL"),
    Column(ORDERS, "code_url", "VARCHAR(512) NULL"),
    Column(ORDERS, "h5_url", "VARCHAR(1024) NULL"),
    Column(ORDERS, "idempotency_key", "VARCHAR(128) NULL"),
    Column(ORDERS, "amount_refunded", "INT NOT NULL DEFAULT 0"),
    Column(ORDERS, "review_reason", "VARCHAR(255) NULL"),
    Column(ORDERS, "closed_at", "DATETIME(6) NULL"),
    Column(ORDERS, "refunded_at", "DATETIME(6) NULL"),
    Column(ORDERS, "expires_at", "DATETIME(6) NULL"),
    Column(ORDERS, "reconciled_at", "DATETIME(6) NULL"),
    # When paylane staged this order's order.paid / full order.refunded: NULL on an order
    # another writer settled, which the effects sweep (reconciler.py) then picks up.
    Column(ORDERS, "paid_event_at", "DATETIME(6) NULL"),
    Column(ORDERS, "refund_event_at", "DATETIME(6) NULL"),
    Column("refunds", "amount_refund", _fen("refund_amount")),
    Column("refunds", "amount_total", _fen("total_amount")),
    Column("refunds", "reconciled_at", "DATETIME(6) NULL"),
    Column("payment_logs", "event_id", "VARCHAR(128) NULL"),
    Column("payment_logs", "transaction_id", "VARCHAR(100) NULL"),
    Column("payment_logs", "source", "VARCHAR(16) NULL"),
    Column("payment_logs", "detail", "TEXT NULL"),
]

INDEXES = [
    Index(ORDERS, "uq_orders_idempotency", ("user_id", "idempotency_key"), unique=True),
    Index(ORDERS, "ix_orders_user", ("user_id", "updated_at")),
    Index(ORDERS, "ix_orders_status", ("status", "created_at")),
    Index(ORDERS, "ix_orders_reconcile", ("status", "reconciled_at", "created_at")),
    Index(ORDERS, "ix_orders_paid_effect", ("status", "paid_event_at", "created_at")),
    Index(
        ORDERS,
        "ix_orders_refund_effect",
        ("status", "refund_event_at", "paid_event_at", "created_at"),
    ),
    Index("refunds", "ix_refunds_order", ("out_trade_no",)),
    Index("refunds", "ix_refunds_status", ("status", "created_at")),
    Index("refunds", "ix_refunds_reconcile", ("status", "reconciled_at", "created_at")),
    Index("payment_logs", "ix_payment_logs_order", ("out_trade_no", "created_at")),
    Index("payment_logs", "ix_payment_logs_type", ("type", "created_at")),
]

ENUMS = [EnumValues(ORDERS, "status", ("needs_review",))]

# What migration 0002 adds (a later migration brings a list of its own).
ADDITIONS = (COLUMNS, INDEXES, ENUMS)

# What migration 0004_refund_remedies adds: an ABNORMAL refund's remedy (the order
# service's abnormal.py). When WeChat Pay reported it ABNORMAL, kept once remedied; the
# last remedy asked for (USER_BANK_CARD | MERCHANT_BANK_CARD), when, and WeChat Pay's
# answer (the status it moved the refund to, or its error code and message).
REFUND_REMEDY_COLUMNS = [
    Column("refunds", "abnormal_at", "DATETIME(6) NULL"),
    Column("refunds", "remedy", "VARCHAR(32) NULL"),
    Column("refunds", "remedy_at", "DATETIME(6) NULL"),
    Column("refunds", "remedy_result", "VARCHAR(255) NULL"),
]
REFUND_REMEDIES: tuple[list[Column], list[Index], list[EnumValues]] = (
    REFUND_REMEDY_COLUMNS,
    [],
    [],
)

# What migration 0008_order_queries adds: when the order API last asked WeChat Pay about a
# pending order on its client's behalf (``GET /orders/{no}``; the order service's
# status_query.py). A conditional UPDATE of it lets one request in every interval ask,
# across replicas; the reconciler's ``reconciled_at`` and its schedule stay its own.
ORDER_QUERIES: tuple[list[Column], list[Index], list[EnumValues]] = (
    [Column(ORDERS, "queried_at", "DATETIME(6) NULL")],
    [],
    [],
)

# What migration 0013_order_list_indexes adds: the order list's and the export's keyset
# order (``GET /orders``, newest first by ``(created_at, id)``: order_list.py), for every
# order and for one user's, so that a page reads its rows from an index instead of
# sorting the table.
ORDER_LIST_INDEXES: tuple[list[Column], list[Index], list[EnumValues]] = (
    [],
    [
        Index(ORDERS, "ix_orders_created", ("created_at", "id")),
        Index(ORDERS, "ix_orders_user_created", ("user_id", "created_at", "id")),
    ],
    [],
)

# What migration 0009_payment_log_kind adds: paylane's finer kind of a ``payment_logs``
# row (``paid``, ``duplicate_notification``, ``expired`` …), beside ``type``, which
# speaks the existing system's words (``order_create``, ``payment_callback``,
# ``refund_create``, ``refund_callback``: paylane_order.audit). NULL on the other
# writers' rows, which keep working unchanged.
PAYMENT_LOG_KIND: tuple[list[Column], list[Index], list[EnumValues]] = (
    [Column("payment_logs", "kind", "VARCHAR(50) NULL")],
    [Index("payment_logs", "ix_payment_logs_kind", ("kind", "created_at"))],
    [],
)

# What migration 0010_business_orders adds: business orders (the backend's ``POST /orders``
# with an amount and a description instead of a package: package_type 'free', no plan
# change) and their fulfilment (the backend's ``POST /orders/{no}/fulfilment``; the order
# service's fulfilment.py). ``description`` is what WeChat Pay shows the payer (127 bytes
# at most) and marks a business order: paylane writes it on no other. ``external_id``: the
# backend's own id of the order, unique (NULLs apart), which makes its POST idempotent;
# ``attach``: handed to WeChat Pay as is. ``fulfilment_status`` pending → success|failed,
# with the backend's ``fulfilment_detail`` and when it became final (``fulfilled_at``).
BUSINESS_ORDER_COLUMNS = [
    Column(ORDERS, "description", "VARCHAR(127) NULL"),
    Column(ORDERS, "external_id", "VARCHAR(64) NULL"),
    Column(ORDERS, "attach", "VARCHAR(128) NULL"),
    Column(ORDERS, "fulfilment_status", "ENUM('pending', 'success', 'failed') NULL"),
    Column(ORDERS, "fulfilment_detail", "VARCHAR(255) NULL"),
    Column(ORDERS, "fulfilled_at", "DATETIME(6) NULL"),
]
BUSINESS_ORDERS: tuple[list[Column], list[Index], list[EnumValues]] = (
    BUSINESS_ORDER_COLUMNS,
    [
        Index(ORDERS, "uq_orders_external_id", ("external_id",), unique=True),
        Index(ORDERS, "ix_orders_fulfilment", ("fulfilment_status", "status", "paid_at")),
    ],
    [],
)

# What migration 0015_cloudhosting_pay_params adds: the pay parameters WeChat Cloud
# Hosting's open interface signed for a JSAPI order (its ``payment`` object, JSON), kept as
# they are: paylane holds no key to sign them again (docs/cloudhosting.md). NULL on every
# order placed directly, and on the other writers' rows.
CLOUDHOSTING_PAY_PARAMS: tuple[list[Column], list[Index], list[EnumValues]] = (
    [Column(ORDERS, "pay_params", "VARCHAR(1024) NULL")],
    [],
    [],
)
