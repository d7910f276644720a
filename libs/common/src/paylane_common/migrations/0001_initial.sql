-- paylane initial schema: the seed tables (users, payment_orders, refunds, payment_logs)
-- plus inbox/outbox and the entitlement ledger. MySQL 8 and MariaDB 10.11 compatible.

CREATE TABLE users (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    openid VARCHAR(128) NULL,
    nickname VARCHAR(64) NULL,
    payment_status ENUM('free', 'basic', 'premium') NOT NULL DEFAULT 'free',
    regenerate_count INT NOT NULL DEFAULT 3,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    UNIQUE KEY uq_users_openid (openid)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE payment_orders (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    out_trade_no VARCHAR(32) NOT NULL,
    user_id BIGINT UNSIGNED NOT NULL,
    package_type VARCHAR(32) NOT NULL,
    trade_type ENUM('JSAPI', 'NATIVE', 'H5') NOT NULL,
    amount DECIMAL(10, 2) NOT NULL,
    amount_total INT NOT NULL,
    currency CHAR(3) NOT NULL DEFAULT 'CNY',
    status ENUM('pending', 'paid', 'closed', 'refunded', 'needs_review') NOT NULL DEFAULT 'pending',
    transaction_id VARCHAR(64) NULL,
    mchid VARCHAR(32) NULL,
    appid VARCHAR(64) NULL,
    openid VARCHAR(128) NULL,
    generation_id VARCHAR(64) NULL,
    prepay_id VARCHAR(128) NULL,
    code_url VARCHAR(512) NULL,
    h5_url VARCHAR(1024) NULL,
    idempotency_key VARCHAR(128) NULL,
    amount_refunded INT NOT NULL DEFAULT 0,
    review_reason VARCHAR(255) NULL,
    paid_at DATETIME(6) NULL,
    closed_at DATETIME(6) NULL,
    refunded_at DATETIME(6) NULL,
    expires_at DATETIME(6) NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    UNIQUE KEY uq_orders_out_trade_no (out_trade_no),
    UNIQUE KEY uq_orders_idempotency (user_id, idempotency_key),
    KEY ix_orders_user (user_id, updated_at),
    KEY ix_orders_status (status, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE refunds (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    out_refund_no VARCHAR(64) NOT NULL,
    out_trade_no VARCHAR(32) NOT NULL,
    refund_id VARCHAR(64) NULL,
    amount_refund INT NOT NULL,
    amount_total INT NOT NULL,
    reason VARCHAR(80) NULL,
    status ENUM('pending', 'success', 'closed', 'abnormal') NOT NULL DEFAULT 'pending',
    success_time DATETIME(6) NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
    UNIQUE KEY uq_refunds_out_refund_no (out_refund_no),
    KEY ix_refunds_order (out_trade_no),
    KEY ix_refunds_status (status, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE payment_logs (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    out_trade_no VARCHAR(32) NOT NULL,
    event_id VARCHAR(128) NULL,
    kind VARCHAR(32) NOT NULL,
    transaction_id VARCHAR(64) NULL,
    amount_total INT NULL,
    source VARCHAR(16) NULL,
    detail TEXT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY ix_payment_logs_order (out_trade_no, created_at),
    KEY ix_payment_logs_kind (kind, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE inbox (
    consumer VARCHAR(64) NOT NULL,
    event_id VARCHAR(128) NOT NULL,
    processed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (consumer, event_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE outbox (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    producer VARCHAR(32) NOT NULL,
    event_id VARCHAR(128) NOT NULL,
    routing_key VARCHAR(64) NOT NULL,
    payload MEDIUMTEXT NOT NULL,
    headers TEXT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    published_at DATETIME(6) NULL,
    KEY ix_outbox_pending (producer, published_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- What each order granted, so a grant happens once and a full refund revokes exactly it.
CREATE TABLE entitlement_grants (
    out_trade_no VARCHAR(32) NOT NULL PRIMARY KEY,
    user_id BIGINT UNSIGNED NOT NULL,
    package_type VARCHAR(32) NOT NULL,
    regenerate_granted INT NOT NULL,
    status_before ENUM('free', 'basic', 'premium') NOT NULL,
    status_after ENUM('free', 'basic', 'premium') NOT NULL,
    granted_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    revoked_at DATETIME(6) NULL,
    KEY ix_grants_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
