-- depends: 0009_payment_log_kind
-- Shipping declared to WeChat (发货信息管理, docs/shipping.md): paylane's own tables, so the
-- shared payment_orders gains no column.
--
-- paylane_shipping: one row per order whose shipping paylane declares (a JSAPI order once
-- its effect is done), written by the order service's consumer in the transaction of its
-- inbox claim, then uploaded by its uploader loop. The row holds what is uploaded
-- (transaction id, payer, item) and where the upload stands, so retries (up to a day, by
-- next_attempt_at) survive restarts and are shared by the replicas.
CREATE TABLE IF NOT EXISTS paylane_shipping (
    out_trade_no VARCHAR(32) NOT NULL PRIMARY KEY,
    transaction_id VARCHAR(64) NOT NULL,
    openid VARCHAR(128) NOT NULL,
    item_desc VARCHAR(120) NOT NULL,
    logistics_type TINYINT UNSIGNED NOT NULL DEFAULT 3,
    state ENUM('pending', 'uploaded', 'failed') NOT NULL DEFAULT 'pending',
    attempts INT UNSIGNED NOT NULL DEFAULT 0,
    queued_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    next_attempt_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    uploaded_at DATETIME(6) NULL,
    last_errcode INT NULL,
    last_errmsg VARCHAR(255) NULL,
    failed_reason VARCHAR(255) NULL,
    KEY ix_shipping_due (state, next_attempt_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- WeChat's access token (stable_token) of an appid, shared by the replicas: one refreshes
-- it (under the lease 'paylane.wechat_token'), the others read it. expires_at is the
-- database's clock plus the token's expires_in; refresh_after, when it is refreshed (five
-- minutes before it expires, or halfway through a shorter life).
CREATE TABLE IF NOT EXISTS paylane_wechat_tokens (
    appid VARCHAR(32) NOT NULL PRIMARY KEY,
    access_token VARCHAR(512) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    refresh_after DATETIME(6) NOT NULL,
    refreshed_at DATETIME(6) NOT NULL,
    -- Set when WeChat refused the token (40001): the next refresh, by any replica, forces
    -- a new one (force_refresh).
    invalidated_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The uploader's lease (one replica uploads at a time) and the token refresh's.
INSERT IGNORE INTO paylane_locks (name) VALUES ('paylane.shipping'), ('paylane.wechat_token');
