"""``paylane migrate`` on the database the adopting team already has (docs/adoption.md,
docs/database.md): it only adds, leaves every row and every other table as it was, and
makes the same schema as on an empty database."""

from __future__ import annotations

import pymysql
import pytest

from paylane_common.storage.migrate import migrate
from paylane_common.storage.schema import (
    ADDITIONS,
    BUSINESS_ORDERS,
    CLOUDHOSTING_PAY_PARAMS,
    ORDER_LIST_INDEXES,
    ORDER_QUERIES,
    PAYMENT_LOG_KIND,
    REFUND_REMEDIES,
    SchemaError,
    ensure,
)
from tests.support.infra import Infra, unique_name
from tests.support.seed_db import SEED_DDL, column_types

pytestmark = pytest.mark.integration

SHARED = ("users", "payment_orders", "refunds", "payment_logs")


def _indexes(
    conn: pymysql.Connection, database: str, table: str
) -> set[tuple[bool, tuple[str, ...]]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS"
            " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (database, table),
        )
        found: dict[str, tuple[bool, list[str]]] = {}
        for name, non_unique, column in cur.fetchall():
            found.setdefault(name, (not non_unique, []))[1].append(column)
    return {(unique, tuple(columns)) for unique, columns in found.values()}


def test_every_existing_row_and_other_table_is_unchanged(adopted_database) -> None:
    assert adopted_database.after == adopted_database.before
    assert adopted_database.before["payment_orders"], "the fixture holds orders"
    assert adopted_database.before["generations"], "and an application table with data"


def test_the_second_migrate_has_nothing_to_do(adopted_database, infra: Infra) -> None:
    first, second = adopted_database.migrated
    assert first and second == []
    # Even with its history lost, the additions find everything in place.
    with infra.mysql_admin() as conn, conn.cursor() as cur:
        cur.execute(f"USE `{adopted_database.name}`")
        assert ensure(cur, *ADDITIONS) == []
        assert ensure(cur, *REFUND_REMEDIES) == []
        assert ensure(cur, *ORDER_QUERIES) == []
        assert ensure(cur, *ORDER_LIST_INDEXES) == []
        assert ensure(cur, *PAYMENT_LOG_KIND) == []
        assert ensure(cur, *BUSINESS_ORDERS) == []
        assert ensure(cur, *CLOUDHOSTING_PAY_PARAMS) == []


def test_no_shared_column_is_renamed_retyped_or_dropped(adopted_database, infra: Infra) -> None:
    reference = unique_name("paylane_seed_ref")
    with infra.mysql_admin() as conn:
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{reference}` CHARACTER SET utf8mb4")
                cur.execute(f"USE `{reference}`")
                for ddl in SEED_DDL:
                    cur.execute(ddl)
            for table in SHARED:
                seed = column_types(conn, reference, table)
                adopted = column_types(conn, adopted_database.name, table)
                for column, (kind, *rest) in seed.items():
                    new_kind, *new_rest = adopted[column]
                    assert new_rest == rest, (table, column)
                    if kind.startswith("enum("):  # values may be appended, none changed
                        assert new_kind == kind or new_kind.startswith(kind[:-1] + ","), column
                    else:
                        assert new_kind == kind, (table, column)
        finally:
            with conn.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{reference}`")


def test_an_empty_database_gets_the_same_schema(adopted_database, infra: Infra) -> None:
    empty = unique_name("paylane_empty")
    try:
        migrate(infra.mysql_url(empty))
        with infra.mysql_admin() as conn:
            for table in SHARED:
                assert column_types(conn, empty, table) == column_types(
                    conn, adopted_database.name, table
                ), table
                assert _indexes(conn, empty, table) == _indexes(
                    conn, adopted_database.name, table
                ), table
    finally:
        with infra.mysql_admin() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{empty}`")


def test_fen_is_derived_from_yuan_for_rows_other_writers_made(adopted_database, infra) -> None:
    with infra.mysql_admin() as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT out_trade_no, amount, amount_total FROM `{adopted_database.name}`"
            ".payment_orders WHERE id LIKE 'order-17063456800%%' ORDER BY id"
        )
        orders = cur.fetchall()
        cur.execute(
            f"SELECT refund_amount, amount_refund, total_amount, amount_total"
            f" FROM `{adopted_database.name}`.refunds WHERE id = 'refund-1706345690001-rf0001'"
        )
        refund = cur.fetchone()
    assert [(str(a), f) for _, a, f in orders] == [
        ("0.01", 1),
        ("29.90", 2990),
        ("29.90", 2990),
        ("0.01", 1),
    ]
    assert [str(refund[0]), refund[1], str(refund[2]), refund[3]] == ["29.90", 2990, "29.90", 2990]


def test_the_other_writers_keep_logging_as_they_did(adopted_database, infra: Infra) -> None:
    """paylane's ``payment_logs.kind`` is theirs to ignore: the cloud function's insert,
    naming its columns, still works, and its rows (old and new) have no kind."""
    with infra.mysql_admin() as conn, conn.cursor() as cur:
        cur.execute(f"USE `{adopted_database.name}`")
        cur.execute(
            "INSERT INTO payment_logs (id, type, out_trade_no, event_type, amount_total,"
            " request_data, response_data) VALUES ('cf-log-after-migrate', 'payment_callback',"
            " '170634568000254321', 'TRANSACTION.SUCCESS', 2990, '{\"id\": \"EV-9\"}',"
            ' \'{"code": "SUCCESS"}\')'
        )
        try:
            cur.execute(
                "SELECT type, COUNT(*), SUM(kind IS NOT NULL) FROM payment_logs"
                " WHERE id LIKE '5f1c7a2e-%' OR id = 'cf-log-after-migrate'"  # the seed's
                " GROUP BY type ORDER BY type"
            )
            assert [(t, int(n), int(k)) for t, n, k in cur.fetchall()] == [
                ("order_create", 1, 0),
                ("payment_callback", 2, 0),
                ("refund_callback", 1, 0),
            ]
        finally:
            cur.execute("DELETE FROM payment_logs WHERE id = 'cf-log-after-migrate'")


def test_the_other_writers_orders_are_no_business_orders(adopted_database, infra: Infra) -> None:
    """The business columns (migration 0010) are NULL on every order the other writers
    made, before and after: none is a business order, none has a fulfilment to wait for
    (the overdue gauge counts none of them)."""
    with infra.mysql_admin() as conn, conn.cursor() as cur:
        cur.execute(f"USE `{adopted_database.name}`")
        cur.execute(
            "SELECT COUNT(*), SUM(description IS NOT NULL OR external_id IS NOT NULL"
            " OR attach IS NOT NULL OR fulfilment_status IS NOT NULL"
            " OR fulfilment_detail IS NOT NULL OR fulfilled_at IS NOT NULL)"
            " FROM payment_orders WHERE id LIKE 'order-17063456800%%'"
        )
        orders, business = cur.fetchone()
    assert orders and int(business) == 0


def test_a_pre_release_paylane_database_is_refused_untouched(infra: Infra) -> None:
    name = unique_name("paylane_old")
    try:
        with infra.mysql_admin() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
            cur.execute(
                f"CREATE TABLE `{name}`.users (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,"
                " openid VARCHAR(128))"
            )
        with pytest.raises(SchemaError, match="integer"):
            migrate(infra.mysql_url(name))
        with infra.mysql_admin() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s"
                " AND TABLE_NAME NOT LIKE '%%yoyo%%'",  # yoyo's own bookkeeping
                (name,),
            )
            assert [row[0] for row in cur.fetchall()] == ["users"]
    finally:
        with infra.mysql_admin() as conn, conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
