"""A database as the team adopting paylane has it before paylane: the four shared tables
of docs/database.md, "The shared tables" (this DDL is written from that description,
independently of paylane's migrations), rows shaped as the cloud function and the Node
backend write them, and an application table paylane never touches.

The test session builds its database from this, then runs ``paylane migrate`` twice, so
every suite runs on the adopted schema; ``test_adoption.py`` checks that the rows below and
the unrelated table came through unchanged.
"""

from __future__ import annotations

from typing import Any

import pymysql

SEED_DDL = [
    """
    CREATE TABLE users (
      id VARCHAR(36) PRIMARY KEY,
      openid VARCHAR(100) UNIQUE,
      unionid VARCHAR(100),
      nickname VARCHAR(100),
      avatar_url TEXT,
      phone VARCHAR(20),
      payment_status ENUM('free','basic','premium') DEFAULT 'free',
      regenerate_count INT DEFAULT 3,
      last_login_at TIMESTAMP NULL,
      created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
      updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
      INDEX idx_payment_status (payment_status)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE payment_orders (
      id VARCHAR(36) PRIMARY KEY,
      user_id VARCHAR(36) NOT NULL,
      generation_id VARCHAR(36) NOT NULL,
      out_trade_no VARCHAR(100) UNIQUE NOT NULL,
      transaction_id VARCHAR(100),
      amount DECIMAL(10,2) NOT NULL,
      package_type ENUM('free','basic','premium') NOT NULL,
      payment_method VARCHAR(50) DEFAULT 'wechat',
      trade_type VARCHAR(20) DEFAULT 'JSAPI',
      status ENUM('pending','paid','failed','refunded') DEFAULT 'pending',
      paid_at TIMESTAMP NULL,
      refund_reason TEXT,
      remark TEXT,
      _openid VARCHAR(100),
      created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
      updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
      FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE,
      INDEX idx_user_id (user_id),
      INDEX idx_out_trade_no (out_trade_no),
      INDEX idx_transaction_id (transaction_id),
      INDEX idx_status (status),
      INDEX idx_trade_type (trade_type)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE refunds (
      id VARCHAR(36) PRIMARY KEY,
      out_refund_no VARCHAR(100) UNIQUE NOT NULL,
      refund_id VARCHAR(100),
      out_trade_no VARCHAR(100) NOT NULL,
      transaction_id VARCHAR(100),
      refund_amount DECIMAL(10,2) NOT NULL,
      total_amount DECIMAL(10,2) NOT NULL,
      status ENUM('pending','success','closed','abnormal') DEFAULT 'pending',
      reason TEXT,
      refunded_at TIMESTAMP NULL,
      created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
      updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE payment_logs (
      id VARCHAR(36) PRIMARY KEY,
      type VARCHAR(50) NOT NULL,
      out_trade_no VARCHAR(100),
      out_refund_no VARCHAR(100),
      event_type VARCHAR(50),
      amount_total INT,
      request_data JSON,
      response_data JSON,
      created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    # Not paylane's: the application's own table, which must come through untouched.
    """
    CREATE TABLE generations (
      id VARCHAR(36) PRIMARY KEY,
      user_id VARCHAR(36) NOT NULL,
      prompt TEXT,
      status VARCHAR(20) DEFAULT 'locked',
      created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
      FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
]

# Users, orders, refunds and logs from before paylane, written the way the cloud function
# does: string ids, yuan amounts, no fen column. Dated 2024, long before any test runs.
SEED_ROWS: list[tuple[str, tuple[Any, ...]]] = (
    [
        (
            "INSERT INTO users (id, openid, nickname, payment_status, regenerate_count,"
            " last_login_at, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            row,
        )
        for row in [
            (
                "user-1706345678901-xyz789",
                "oSeedFree0001",
                "小明",
                "free",
                3,
                "2024-01-27 08:00:00",
                "2024-01-27 08:00:00",
                "2024-01-27 08:00:00",
            ),
            (
                "user-1706345679999-abc123",
                "oSeedPremium01",
                "Ada",
                "premium",
                103,
                "2024-01-28 09:00:00",
                "2024-01-27 09:00:00",
                "2024-01-28 09:00:00",
            ),
        ]
    ]
    + [
        (
            "INSERT INTO payment_orders (id, user_id, generation_id, out_trade_no, transaction_id,"
            " amount, package_type, trade_type, status, paid_at, refund_reason, _openid,"
            " created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            row,
        )
        for row in [
            (
                "order-1706345680001-pend01",
                "user-1706345678901-xyz789",
                "gen-0001",
                "170634568000112345",
                None,
                "0.01",
                "basic",
                "JSAPI",
                "pending",
                None,
                None,
                "oSeedFree0001",
                "2024-01-27 08:01:00",
                "2024-01-27 08:01:00",
            ),
            (
                "order-1706345680002-paid01",
                "user-1706345679999-abc123",
                "gen-0002",
                "170634568000254321",
                "4200001234202401270000000001",
                "29.90",
                "premium",
                "JSAPI",
                "paid",
                "2024-01-27 09:02:00",
                None,
                "oSeedPremium01",
                "2024-01-27 09:01:00",
                "2024-01-27 09:02:00",
            ),
            (
                "order-1706345680003-refd01",
                "user-1706345679999-abc123",
                "gen-0003",
                "170634568000398765",
                "4200001234202401270000000002",
                "29.90",
                "premium",
                "NATIVE",
                "refunded",
                "2024-01-27 10:02:00",
                "不想要了",
                "oSeedPremium01",
                "2024-01-27 10:01:00",
                "2024-01-27 11:00:00",
            ),
            (
                "order-1706345680004-fail01",
                "user-1706345678901-xyz789",
                "gen-0004",
                "170634568000411111",
                None,
                "0.01",
                "basic",
                "H5",
                "failed",
                None,
                None,
                "oSeedFree0001",
                "2024-01-27 12:01:00",
                "2024-01-27 12:31:00",
            ),
        ]
    ]
    + [
        (
            "INSERT INTO refunds (id, out_refund_no, refund_id, out_trade_no, transaction_id,"
            " refund_amount, total_amount, status, reason, refunded_at, created_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                "refund-1706345690001-rf0001",
                "RF170634569000123456",
                "50000000382024012700001",
                "170634568000398765",
                "4200001234202401270000000002",
                "29.90",
                "29.90",
                "success",
                "不想要了",
                "2024-01-27 11:00:00",
                "2024-01-27 10:59:00",
                "2024-01-27 11:00:00",
            ),
        ),
    ]
    + [
        (
            "INSERT INTO payment_logs (id, type, out_trade_no, out_refund_no, event_type,"
            " amount_total, request_data, response_data, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            row,
        )
        for row in [
            (
                "5f1c7a2e-0d1b-4c55-9a57-1b2f9e0c0001",
                "order_create",
                "170634568000254321",
                None,
                None,
                2990,
                '{"description": "premium"}',
                '{"prepay_id": "wx27090100000001"}',
                "2024-01-27 09:01:00",
            ),
            (
                "5f1c7a2e-0d1b-4c55-9a57-1b2f9e0c0002",
                "payment_callback",
                "170634568000254321",
                None,
                "TRANSACTION.SUCCESS",
                2990,
                '{"id": "EV-0001"}',
                '{"code": "SUCCESS"}',
                "2024-01-27 09:02:00",
            ),
            (
                "5f1c7a2e-0d1b-4c55-9a57-1b2f9e0c0003",
                "refund_callback",
                "170634568000398765",
                "RF170634569000123456",
                "REFUND.SUCCESS",
                2990,
                '{"id": "EV-0002"}',
                None,
                "2024-01-27 11:00:00",
            ),
        ]
    ]
    + [
        (
            "INSERT INTO generations (id, user_id, prompt, status, created_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            row,
        )
        for row in [
            ("gen-0001", "user-1706345678901-xyz789", "新年贺卡", "locked", "2024-01-27 08:00:30"),
            (
                "gen-0002",
                "user-1706345679999-abc123",
                "生日快乐",
                "unlocked",
                "2024-01-27 09:00:30",
            ),
        ]
    ]
)

SEED_TABLES = ("users", "payment_orders", "refunds", "payment_logs", "generations")


def create_seed_database(conn: pymysql.Connection, name: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        cur.execute(f"USE `{name}`")
        cur.execute("SET time_zone = '+00:00'")
        for ddl in SEED_DDL:
            cur.execute(ddl)
        for sql, args in SEED_ROWS:
            cur.execute(sql, args)
    conn.commit()


def layout(conn: pymysql.Connection, name: str) -> dict[str, list[str]]:
    """The columns of each seed table, in order, as information_schema tells them."""
    result: dict[str, list[str]] = {}
    with conn.cursor() as cur:
        for table in SEED_TABLES:
            cur.execute(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS"
                " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
                (name, table),
            )
            result[table] = [row[0] for row in cur.fetchall()]
    return result


def snapshot(
    conn: pymysql.Connection, name: str, columns: dict[str, list[str]]
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the seed tables in the given columns (those the seed schema has:
    paylane's added ones are new), ordered by id."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    with conn.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
        for table, names in columns.items():
            listed = ", ".join(f"`{c}`" for c in names)
            cur.execute(f"SELECT {listed} FROM `{name}`.`{table}` ORDER BY id")
            result[table] = list(cur.fetchall())
    return result


def column_types(conn: pymysql.Connection, name: str, table: str) -> dict[str, tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA"
            " FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
            (name, table),
        )
        return {row[0]: tuple(row[1:]) for row in cur.fetchall()}
