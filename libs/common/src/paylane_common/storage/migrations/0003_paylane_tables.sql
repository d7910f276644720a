-- depends: 0002_paylane_additions
-- paylane's own tables. IF NOT EXISTS: `paylane migrate` may meet a database where an
-- earlier run made them before its history was recorded.

CREATE TABLE IF NOT EXISTS inbox (
    consumer VARCHAR(64) NOT NULL,
    event_id VARCHAR(128) NOT NULL,
    processed_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (consumer, event_id),
    KEY ix_inbox_processed (processed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS outbox (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    producer VARCHAR(32) NOT NULL,
    event_id VARCHAR(128) NOT NULL,
    routing_key VARCHAR(64) NOT NULL,
    payload MEDIUMTEXT NOT NULL,
    headers TEXT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    published_at DATETIME(6) NULL,
    KEY ix_outbox_pending (producer, published_at, id),
    KEY ix_outbox_published (published_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- What each order granted, so a grant happens once and a full refund revokes exactly it.
CREATE TABLE IF NOT EXISTS entitlement_grants (
    out_trade_no VARCHAR(100) NOT NULL PRIMARY KEY,
    user_id VARCHAR(36) NOT NULL,
    package_type VARCHAR(32) NOT NULL,
    regenerate_granted INT NOT NULL,
    status_before ENUM('free', 'basic', 'premium') NOT NULL,
    status_after ENUM('free', 'basic', 'premium') NOT NULL,
    granted_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    revoked_at DATETIME(6) NULL,
    KEY ix_grants_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- installed_at: when the first `paylane migrate` ran. effects_since: from when paylane
-- applies the effects of orders another writer settled (effects.py); only `paylane
-- cutover` sets it, to the moment the cloud function starts calling paylane, so the
-- orders the backend before paylane already granted are never granted again.
CREATE TABLE IF NOT EXISTS paylane_meta (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    value VARCHAR(255) NOT NULL,
    created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

INSERT IGNORE INTO paylane_meta (name, value)
VALUES ('installed_at', DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%d %H:%i:%s.%f'));
