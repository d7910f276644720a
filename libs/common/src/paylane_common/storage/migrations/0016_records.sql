-- depends: 0014_operators 0015_cloudhosting_pay_params
-- Records for the operators' console's timeline (docs/console.md, issue 30): what paylane
-- was told and asked that no table kept. paylane's own tables, the shared ones untouched;
-- both pruned after RETENTION_DAYS by the order service (retention.py, lease
-- 'paylane.records').
--
-- notifications_rejected: every notification ingress refused, with the reason and the
-- status it answered. Ingress has no database: it publishes a `notification.rejected`
-- record and the order service writes it here (paylane_order.rejections). Only what could
-- be read without trusting the body: the notification id, the order and transaction
-- numbers when the resource decrypted, the serial; never the body or payer data.
-- out_trade_no is NULL for most (an unverified body is not decrypted): the health page
-- lists the latest.
CREATE TABLE IF NOT EXISTS notifications_rejected (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    record_id VARCHAR(128) NOT NULL,
    route VARCHAR(16) NOT NULL,
    reason VARCHAR(32) NOT NULL,
    status SMALLINT UNSIGNED NOT NULL,
    event_id VARCHAR(64) NULL,
    event_type VARCHAR(64) NULL,
    out_trade_no VARCHAR(64) NULL,
    transaction_id VARCHAR(64) NULL,
    serial VARCHAR(128) NULL,
    received_at DATETIME(6) NOT NULL,
    recorded_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    UNIQUE KEY uq_notifications_rejected_record (record_id),
    KEY ix_notifications_rejected_order (out_trade_no, received_at),
    KEY ix_notifications_rejected_received (received_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- wechatpay_queries: every query paylane made to WeChat Pay about an order or a refund
-- (paylane_order.query_log): who asked (source: reconciler, on_demand, console,
-- payment_check, bills, refund_remedy), and WeChat Pay's answer (trade_state or the
-- refund's status) or the error code when it gave none.
CREATE TABLE IF NOT EXISTS wechatpay_queries (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    kind ENUM('order', 'refund') NOT NULL,
    out_trade_no VARCHAR(64) NULL,
    out_refund_no VARCHAR(64) NULL,
    source VARCHAR(16) NOT NULL,
    answer VARCHAR(32) NULL,
    error VARCHAR(64) NULL,
    asked_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY ix_wechatpay_queries_order (out_trade_no, asked_at),
    KEY ix_wechatpay_queries_asked (asked_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The order service prunes these records (and the notifier's pushes, 0017) under a lease
-- of its own: retention's ('paylane.retention') is taken by entitlement too, which may
-- not touch them.
INSERT IGNORE INTO paylane_retention_lock (name) VALUES ('paylane.records');
