-- depends: 0016_records
-- The notifier's pushes to clients (docs/console.md, issue 30), for the operators'
-- console's timeline: each event pushed about an order, on which channel, to how many of
-- the user's connections (0: nobody was connected to this replica). Written by the
-- notifier in one multi-row INSERT at most once a second (paylane_notifier.push_log): its
-- database user may INSERT here and nothing else. Pruned after RETENTION_DAYS by the order
-- service (lease 'paylane.records', migration 0016).
CREATE TABLE IF NOT EXISTS notifier_pushes (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    out_trade_no VARCHAR(64) NOT NULL,
    event_type VARCHAR(32) NOT NULL,
    channel ENUM('ws', 'sse') NOT NULL,
    connections INT UNSIGNED NOT NULL,
    pushed_at DATETIME(6) NOT NULL,
    KEY ix_notifier_pushes_order (out_trade_no, pushed_at),
    KEY ix_notifier_pushes_pushed (pushed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
