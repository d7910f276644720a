"""The four shared tables, created exactly as the existing system has them
(docs/database.md, "The shared tables") when they are missing; left as they are when they exist."""

from typing import Any

from yoyo import step

from paylane_common.storage.schema import refuse_integer_user_ids

__depends__: set[str] = set()

SHARED_TABLES = [
    """
    CREATE TABLE IF NOT EXISTS users (
        id VARCHAR(36) PRIMARY KEY,
        openid VARCHAR(100) UNIQUE,
        unionid VARCHAR(100),
        nickname VARCHAR(100),
        avatar_url TEXT,
        phone VARCHAR(20),
        payment_status ENUM('free', 'basic', 'premium') DEFAULT 'free',
        regenerate_count INT DEFAULT 3,
        last_login_at TIMESTAMP NULL,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
        INDEX idx_payment_status (payment_status)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE IF NOT EXISTS payment_orders (
        id VARCHAR(36) PRIMARY KEY,
        user_id VARCHAR(36) NOT NULL,
        generation_id VARCHAR(36) NOT NULL,
        out_trade_no VARCHAR(100) UNIQUE NOT NULL,
        transaction_id VARCHAR(100),
        amount DECIMAL(10, 2) NOT NULL,
        package_type ENUM('free', 'basic', 'premium') NOT NULL,
        payment_method VARCHAR(50) DEFAULT 'wechat',
        trade_type VARCHAR(20) DEFAULT 'JSAPI',
        status ENUM('pending', 'paid', 'failed', 'refunded') DEFAULT 'pending',
        paid_at TIMESTAMP NULL,
        refund_reason TEXT,
        remark TEXT,
        _openid VARCHAR(100),
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
        INDEX idx_user_id (user_id),
        INDEX idx_out_trade_no (out_trade_no),
        INDEX idx_transaction_id (transaction_id),
        INDEX idx_status (status),
        INDEX idx_trade_type (trade_type),
        FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE IF NOT EXISTS refunds (
        id VARCHAR(36) PRIMARY KEY,
        out_refund_no VARCHAR(100) UNIQUE NOT NULL,
        refund_id VARCHAR(100),
        out_trade_no VARCHAR(100) NOT NULL,
        transaction_id VARCHAR(100),
        refund_amount DECIMAL(10, 2) NOT NULL,
        total_amount DECIMAL(10, 2) NOT NULL,
        status ENUM('pending', 'success', 'closed', 'abnormal') DEFAULT 'pending',
        reason TEXT,
        refunded_at TIMESTAMP NULL,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """,
    """
    CREATE TABLE IF NOT EXISTS payment_logs (
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
]


def create_shared_tables(conn: Any) -> None:
    cur = conn.cursor()
    refuse_integer_user_ids(cur)
    for ddl in SHARED_TABLES:
        cur.execute(ddl)


steps = [step(create_shared_tables)]
